//! A rule's `corsPolicy`, compiled: origin matchers and the `Access-Control-*` header
//! values ready to be sent.

use http::HeaderValue;
use mesh_config::model::CorsPolicy;

use crate::matcher::{MatchError, StrMatcher};

/// A compiled CORS policy; its header values are ready to be sent.
#[derive(Debug, Clone)]
pub struct Cors {
    /// Allowed origins.
    pub origins: Vec<StrMatcher>,
    /// `Access-Control-Allow-Methods`.
    pub methods: Option<HeaderValue>,
    /// `Access-Control-Allow-Headers`.
    pub allow_headers: Option<HeaderValue>,
    /// `Access-Control-Expose-Headers`.
    pub expose_headers: Option<HeaderValue>,
    /// `Access-Control-Max-Age` (seconds).
    pub max_age: Option<HeaderValue>,
    /// `Access-Control-Allow-Credentials: true`.
    pub credentials: bool,
    /// Answer unmatched preflights without forwarding them.
    pub ignore_unmatched_preflights: bool,
}

impl Cors {
    pub(super) fn compile(c: &CorsPolicy) -> Result<Self, MatchError> {
        let mut origins = Vec::new();
        for o in &c.allow_origin {
            origins.push(StrMatcher::Exact(o.as_str().into()));
        }
        for o in &c.allow_origins {
            origins.push(StrMatcher::compile(o, false)?);
        }
        let join = |v: &[String]| {
            (!v.is_empty())
                .then(|| HeaderValue::from_str(&v.join(",")).ok())
                .flatten()
        };
        Ok(Cors {
            origins,
            methods: join(&c.allow_methods),
            allow_headers: join(&c.allow_headers),
            expose_headers: join(&c.expose_headers),
            max_age: c.max_age.map(|d| HeaderValue::from(d.get().as_secs())),
            credentials: c.allow_credentials == Some(true),
            ignore_unmatched_preflights: c.unmatched_preflights
                == Some(mesh_config::model::UnmatchedPreflights::Ignore),
        })
    }

    /// True when `origin` is allowed (`*` allows any).
    pub fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|m| match m {
            StrMatcher::Exact(e) if &**e == "*" => true,
            m => m.matches(origin),
        })
    }
}
