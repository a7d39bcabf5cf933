//! Envoy's response flags: why a request ended the way it did, beyond its status.
//!
//! A 503 may be an overflowing circuit breaker (`UO`), no healthy endpoint (`UH`), a
//! failed connect (`UF`) or the upstream's own answer: operators tell them apart by
//! these flags in Envoy's access logs and metrics. The mesh records them as a typed
//! value in the response's extensions ([`ResponseFlags`]), which telemetry and access
//! logs read; [`ResponseFlags::of`] reads them from any response. A request the caller
//! gave up on has no response: `DC` is recorded on its telemetry span instead (the
//! `response_flags` field of `mesh.request`, which carries every answer's flags too).

use std::fmt;

use http::Response;

use crate::error::{MeshFailure, ResetReason};

/// A set of Envoy response flags (see the module documentation).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u32);

macro_rules! flags {
    ($($(#[$doc:meta])* $name:ident = $bit:expr, $text:literal;)*) => {
        impl ResponseFlags {
            $($(#[$doc])* pub const $name: ResponseFlags = ResponseFlags(1 << $bit);)*

            /// Every flag with its short name, in Envoy's order.
            const NAMES: &'static [(ResponseFlags, &'static str)] = &[$((ResponseFlags::$name, $text),)*];
        }
    };
}

flags! {
    /// `UH`: no healthy upstream host.
    NO_HEALTHY_UPSTREAM = 0, "UH";
    /// `UF`: the upstream connection failed.
    UPSTREAM_CONNECTION_FAILURE = 1, "UF";
    /// `UO`: upstream overflow (a circuit breaker's limit).
    UPSTREAM_OVERFLOW = 2, "UO";
    /// `NR`: no route for the request.
    NO_ROUTE_FOUND = 3, "NR";
    /// `URX`: the retry limit was reached (attempts, the `maxRetries` circuit breaker or
    /// the retry budget).
    UPSTREAM_RETRY_LIMIT_EXCEEDED = 4, "URX";
    /// `UT`: the upstream request timed out.
    UPSTREAM_REQUEST_TIMEOUT = 5, "UT";
    /// `UC`: the upstream connection was terminated.
    UPSTREAM_CONNECTION_TERMINATION = 6, "UC";
    /// `LR`: the mesh reset the upstream request itself (the caller's request body
    /// failed while it was sent).
    LOCAL_RESET = 7, "LR";
    /// `DC`: the downstream connection was terminated: the caller gave up on the
    /// request (dropped its future, or the client of a served connection went away)
    /// before the answer (recorded on the telemetry span).
    DOWNSTREAM_CONNECTION_TERMINATION = 8, "DC";
    /// `RL`: the request was rate limited (local or global).
    RATE_LIMITED = 9, "RL";
    /// `UAEX`: an external authorization service denied the request.
    UNAUTHORIZED_EXTERNAL_SERVICE = 10, "UAEX";
    /// `RLSE`: the rate-limit service failed and the request was refused.
    RATE_LIMIT_SERVICE_ERROR = 11, "RLSE";
    /// `DI`: an injected fault delayed the request.
    DELAY_INJECTED = 12, "DI";
    /// `FI`: an injected fault aborted the request.
    FAULT_INJECTED = 13, "FI";
    /// `NC`: the route's cluster was not found.
    NO_CLUSTER_FOUND = 14, "NC";
    /// `SI`: the request's stream was idle too long (its body stopped arriving).
    STREAM_IDLE_TIMEOUT = 17, "SI";
    /// `DPE`: the downstream sent something that is not HTTP (a malformed body).
    DOWNSTREAM_PROTOCOL_ERROR = 16, "DPE";
    /// `UPE`: the upstream sent something that is not HTTP.
    UPSTREAM_PROTOCOL_ERROR = 15, "UPE";
}

impl ResponseFlags {
    /// No flag.
    pub const NONE: ResponseFlags = ResponseFlags(0);

    /// The flags as bits (one per flag, each constant's own).
    pub fn bits(self) -> u32 {
        self.0
    }

    /// The flags as Envoy's `response.flags` attribute (an int) numbers them (its `ResponseFlag`
    /// bits: `UH` 0x2, `UT` 0x4, `LR` 0x8, `UF` 0x20, `UC` 0x40, `UO` 0x80, `NR` 0x100,
    /// `DI` 0x200, `FI` 0x400, `RL` 0x800, `UAEX` 0x1000, `RLSE` 0x2000, `DC` 0x4000,
    /// `URX` 0x8000, `SI` 0x10000, `DPE` 0x40000, `UPE` 0x800000, `NC` 0x1000000), for access log
    /// filters.
    pub fn envoy_bits(self) -> u64 {
        const ENVOY: &[(ResponseFlags, u64)] = &[
            (ResponseFlags::NO_HEALTHY_UPSTREAM, 0x2),
            (ResponseFlags::UPSTREAM_REQUEST_TIMEOUT, 0x4),
            (ResponseFlags::LOCAL_RESET, 0x8),
            (ResponseFlags::UPSTREAM_CONNECTION_FAILURE, 0x20),
            (ResponseFlags::UPSTREAM_CONNECTION_TERMINATION, 0x40),
            (ResponseFlags::UPSTREAM_OVERFLOW, 0x80),
            (ResponseFlags::NO_ROUTE_FOUND, 0x100),
            (ResponseFlags::DELAY_INJECTED, 0x200),
            (ResponseFlags::FAULT_INJECTED, 0x400),
            (ResponseFlags::RATE_LIMITED, 0x800),
            (ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE, 0x1000),
            (ResponseFlags::RATE_LIMIT_SERVICE_ERROR, 0x2000),
            (ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION, 0x4000),
            (ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED, 0x8000),
            (ResponseFlags::STREAM_IDLE_TIMEOUT, 0x1_0000),
            (ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR, 0x4_0000),
            (ResponseFlags::UPSTREAM_PROTOCOL_ERROR, 0x80_0000),
            (ResponseFlags::NO_CLUSTER_FOUND, 0x100_0000),
        ];
        ENVOY
            .iter()
            .filter(|(f, _)| self.contains(*f))
            .map(|(_, b)| b)
            .sum()
    }

    /// True when no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// True when every flag of `other` is set.
    pub fn contains(self, other: ResponseFlags) -> bool {
        self.0 & other.0 == other.0 && !other.is_empty()
    }

    /// The flags of a response: those recorded in its extensions, or none.
    pub fn of<B>(resp: &Response<B>) -> ResponseFlags {
        resp.extensions()
            .get::<ResponseFlags>()
            .copied()
            .unwrap_or_default()
    }

    /// Adds `flags` to those recorded in `resp`'s extensions.
    pub fn record<B>(resp: &mut Response<B>, flags: ResponseFlags) {
        if flags.is_empty() {
            return;
        }
        let ext = resp.extensions_mut();
        match ext.get_mut::<ResponseFlags>() {
            Some(f) => *f |= flags,
            None => {
                ext.insert(flags);
            }
        }
    }

    /// The flag a mesh failure answers with.
    pub fn of_failure(failure: &MeshFailure) -> ResponseFlags {
        match failure {
            MeshFailure::NoHealthyUpstream => ResponseFlags::NO_HEALTHY_UPSTREAM,
            MeshFailure::Timeout => ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
            MeshFailure::ConnectOrReset(ResetReason::ConnectionFailure) => {
                ResponseFlags::UPSTREAM_CONNECTION_FAILURE
            }
            MeshFailure::ConnectOrReset(ResetReason::Overflow) => ResponseFlags::UPSTREAM_OVERFLOW,
            MeshFailure::ConnectOrReset(ResetReason::LocalReset) => ResponseFlags::LOCAL_RESET,
            MeshFailure::ConnectOrReset(
                ResetReason::ConnectionTermination | ResetReason::RefusedStream,
            ) => ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
            MeshFailure::NoRoute | MeshFailure::RegistryOnly => ResponseFlags::NO_ROUTE_FOUND,
            MeshFailure::NoAuthority => ResponseFlags::NONE,
            MeshFailure::FaultAbort(_) => ResponseFlags::FAULT_INJECTED,
            MeshFailure::Protocol => ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
            MeshFailure::ClusterNotFound => ResponseFlags::NO_CLUSTER_FOUND,
        }
    }
}

impl std::ops::BitOr for ResponseFlags {
    type Output = ResponseFlags;
    fn bitor(self, rhs: ResponseFlags) -> ResponseFlags {
        ResponseFlags(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for ResponseFlags {
    fn bitor_assign(&mut self, rhs: ResponseFlags) {
        self.0 |= rhs.0;
    }
}

/// Envoy's access-log form: the short names joined by commas, `-` for none.
impl fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(*flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResponseFlags({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_names() {
        let table = [
            (ResponseFlags::NONE, "-"),
            (ResponseFlags::UPSTREAM_OVERFLOW, "UO"),
            (
                ResponseFlags::UPSTREAM_OVERFLOW | ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED,
                "UO,URX",
            ),
            (ResponseFlags::RATE_LIMITED, "RL"),
            (ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE, "UAEX"),
        ];
        for (flags, text) in table {
            assert_eq!(flags.to_string(), text);
        }
    }

    #[test]
    fn failures_map_to_flags() {
        let table = [
            (MeshFailure::NoHealthyUpstream, "UH"),
            (MeshFailure::Timeout, "UT"),
            (
                MeshFailure::ConnectOrReset(ResetReason::ConnectionFailure),
                "UF",
            ),
            (MeshFailure::ConnectOrReset(ResetReason::Overflow), "UO"),
            (
                MeshFailure::ConnectOrReset(ResetReason::ConnectionTermination),
                "UC",
            ),
            (MeshFailure::NoRoute, "NR"),
            (MeshFailure::ClusterNotFound, "NC"),
            (MeshFailure::FaultAbort(500), "FI"),
        ];
        for (failure, text) in table {
            assert_eq!(ResponseFlags::of_failure(&failure).to_string(), text);
            let resp = failure.clone().into_response();
            assert_eq!(ResponseFlags::of(&resp).to_string(), text, "{failure:?}");
        }
    }

    #[test]
    fn record_accumulates() {
        let mut resp = Response::new(());
        ResponseFlags::record(&mut resp, ResponseFlags::UPSTREAM_OVERFLOW);
        ResponseFlags::record(&mut resp, ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        assert_eq!(ResponseFlags::of(&resp).to_string(), "UO,URX");
    }
}
