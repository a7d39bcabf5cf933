//! Rate limiting: local token buckets enforced in-process ([`local`]) and global limits
//! shared by every process through Redis ([`global`]), as Envoy's `local_ratelimit` and
//! `ratelimit` filters (with Envoy's rate-limit service) enforce them for Istio. The
//! global filters ask the runtime's limiter as [`filter`] describes.

pub(crate) mod filter;
pub mod global;
pub mod local;
