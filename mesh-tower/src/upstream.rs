//! Sending a request to the endpoint the balancer chose, over pooled connections.
//!
//! The request keeps its logical authority (`reviews:9080`) in its URI, so HTTP/2's
//! `:authority` and HTTP/1.1's `Host` say what the caller (or a rewrite) asked for; the
//! endpoint to dial travels beside it as an [`Endpoint`] extension. Each endpoint and
//! protocol gets its own hyper-util client, whose connector always dials that endpoint,
//! so its connection pool is the endpoint's pool. The codec is the one the balancer
//! chose ([`Protocol`]): the request's version is set to match it, as Envoy translates
//! between downstream and upstream codecs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tower::Service;

use crate::{BoxError, BoxFuture, ReqBody, ResBody};

/// The protocol to speak to an endpoint, set by the balancer as a request extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
}

impl Protocol {
    /// The request version the codec speaks.
    pub fn version(self) -> Version {
        match self {
            Protocol::Http1 => Version::HTTP_11,
            Protocol::Http2 => Version::HTTP_2,
        }
    }
}

/// The endpoint (`address:port`) a request is sent to, set by the balancer as a request
/// extension. Without it the URI's authority is dialled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint(pub Arc<str>);

/// Beyond this many endpoint clients the least recently used quarter is forgotten (their
/// connections finish the requests they carry, and their idle ones close), bounding
/// memory when requests go to ever new passthrough destinations.
const MAX_CLIENTS: usize = 4096;

type EndpointClient = Client<FixedConnector, ReqBody>;

struct Entry {
    client: EndpointClient,
    /// When it was last used, in milliseconds since the pools were made.
    used: AtomicU64,
}

struct Pools {
    clients: RwLock<HashMap<(Endpoint, Protocol), Entry>>,
    epoch: Instant,
}

impl Pools {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// The connection pools of the process: one hyper-util client per endpoint and
/// protocol.
#[derive(Clone)]
pub struct UpstreamService {
    pools: Arc<Pools>,
}

impl std::fmt::Debug for UpstreamService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.pools.clients.read().map_or(0, |c| c.len());
        f.debug_struct("UpstreamService")
            .field("endpoints", &n)
            .finish()
    }
}

impl Default for UpstreamService {
    fn default() -> Self {
        Self::new()
    }
}

impl UpstreamService {
    /// Empty pools (Envoy's default connect timeout, 10 s; idle connections kept 90 s).
    pub fn new() -> Self {
        UpstreamService {
            pools: Arc::new(Pools {
                clients: RwLock::new(HashMap::new()),
                epoch: Instant::now(),
            }),
        }
    }

    fn client(&self, endpoint: &Endpoint, protocol: Protocol) -> Result<EndpointClient, BoxError> {
        let key = (endpoint.clone(), protocol);
        let now = self.pools.now();
        if let Ok(clients) = self.pools.clients.read()
            && let Some(e) = clients.get(&key)
        {
            e.used.store(now, Ordering::Relaxed);
            return Ok(e.client.clone());
        }
        let target: Uri = format!("http://{}/", endpoint.0).parse()?;
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new());
        if protocol == Protocol::Http2 {
            b.http2_only(true);
        }
        let client = b.build(FixedConnector { http, target });
        let mut clients = self
            .pools
            .clients
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if clients.len() >= MAX_CLIENTS {
            let mut by_age: Vec<(u64, (Endpoint, Protocol))> = clients
                .iter()
                .map(|(k, e)| (e.used.load(Ordering::Relaxed), k.clone()))
                .collect();
            by_age.sort_unstable_by_key(|(used, _)| *used);
            for (_, k) in by_age.iter().take(clients.len() / 4) {
                clients.remove(k);
            }
        }
        let entry = clients.entry(key).or_insert(Entry {
            client,
            used: AtomicU64::new(now),
        });
        Ok(entry.client.clone())
    }
}

impl Service<Request<ReqBody>> for UpstreamService {
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<ResBody>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let protocol = req.extensions().get::<Protocol>().copied().unwrap_or(
            if req.version() == Version::HTTP_2 {
                Protocol::Http2
            } else {
                Protocol::Http1
            },
        );
        let endpoint = match req.extensions().get::<Endpoint>() {
            Some(e) => e.clone(),
            None => match req.uri().authority() {
                Some(a) if a.port().is_some() => Endpoint(a.as_str().into()),
                Some(a) => Endpoint(format!("{}:80", a.host()).into()),
                None => {
                    return Box::pin(async {
                        Err::<Response<ResBody>, BoxError>("request without authority".into())
                    });
                }
            },
        };
        *req.version_mut() = protocol.version();
        let client = self.client(&endpoint, protocol);
        Box::pin(async move {
            let resp = client?.request(req).await?;
            Ok(resp.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed()))
        })
    }
}

/// A connector that dials one endpoint whatever the request's authority says.
#[derive(Clone)]
struct FixedConnector {
    http: HttpConnector,
    target: Uri,
}

impl Service<Uri> for FixedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = BoxFuture<Result<TokioIo<TcpStream>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, _logical: Uri) -> Self::Future {
        let connecting = self.http.call(self.target.clone());
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn past_the_limit_the_least_recently_used_quarter_is_forgotten() {
        let up = UpstreamService::new();
        let ep = |i: usize| Endpoint(format!("10.0.{}.{}:80", i / 256, i % 256).into());
        for i in 0..MAX_CLIENTS {
            up.client(&ep(i), Protocol::Http1).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        // A hot endpoint, used after all the others.
        up.client(&ep(0), Protocol::Http1).unwrap();
        up.client(&ep(MAX_CLIENTS), Protocol::Http1).unwrap();
        let clients = up.pools.clients.read().unwrap();
        assert_eq!(clients.len(), MAX_CLIENTS - MAX_CLIENTS / 4 + 1);
        assert!(
            clients.contains_key(&(ep(0), Protocol::Http1)),
            "the hot pool stays"
        );
        assert!(clients.contains_key(&(ep(MAX_CLIENTS), Protocol::Http1)));
    }
}
