//! The example's greeter: one [`Greeter`] per version, answering with its version and
//! the caller's principal — the verified identity the mesh hands the application as the
//! [`PeerIdentity`] request extension when the call came over mutual TLS.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use mesh_tower::identity::PeerIdentity;
use tonic::{Request, Response, Status};

use crate::pb::{HelloReply, HelloRequest, SetGreetingRequest};
use crate::server::Greeter;

/// One version of the greeter. Counts the calls it receives, and can be told to fail its
/// first calls with `UNAVAILABLE` (a version warming up), for the mesh to retry.
#[derive(Debug)]
pub struct GreeterService {
    version: String,
    greeting: Mutex<String>,
    calls: AtomicU32,
    unavailable: AtomicU32,
}

impl GreeterService {
    /// Version `version` (`v1`), greeting with "Hello".
    pub fn new(version: impl Into<String>) -> Self {
        GreeterService {
            version: version.into(),
            greeting: Mutex::new("Hello".into()),
            calls: AtomicU32::new(0),
            unavailable: AtomicU32::new(0),
        }
    }

    /// Fails the next `n` calls with `UNAVAILABLE`.
    pub fn fail_next(&self, n: u32) {
        self.unavailable.store(n, Ordering::SeqCst);
    }

    /// The version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The calls received so far, those that failed included.
    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Counts a call; `UNAVAILABLE` if it is one of those to fail.
    fn arrive(&self) -> Result<(), Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let failing = self
            .unavailable
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(Status::unavailable(format!(
                "greeter {} is warming up",
                self.version
            )));
        }
        Ok(())
    }

    fn greeting(&self) -> String {
        self.greeting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// `<text> (greeter <version>, caller <principal or "unauthenticated">)`.
    fn reply<T>(&self, request: &Request<T>, text: String) -> Response<HelloReply> {
        let caller = request
            .extensions()
            .get::<PeerIdentity>()
            .map_or("unauthenticated", PeerIdentity::principal);
        Response::new(HelloReply {
            message: format!("{text} (greeter {}, caller {caller})", self.version),
        })
    }
}

impl Greeter for GreeterService {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.arrive()?;
        let text = format!("{}, {}!", self.greeting(), request.get_ref().name);
        Ok(self.reply(&request, text))
    }

    async fn say_goodbye(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.arrive()?;
        let text = format!("Goodbye, {}!", request.get_ref().name);
        Ok(self.reply(&request, text))
    }

    async fn set_greeting(
        &self,
        request: Request<SetGreetingRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.arrive()?;
        let greeting = request.get_ref().greeting.trim().to_string();
        if greeting.is_empty() {
            return Err(Status::invalid_argument("the greeting is empty"));
        }
        *self
            .greeting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = greeting.clone();
        Ok(self.reply(&request, format!("The greeting is now {greeting:?}.")))
    }
}
