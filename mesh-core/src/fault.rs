//! Fault injection and shares of requests, compiled: Envoy's fault filter as Istio
//! configures it (a fixed delay and an abort with an HTTP or gRPC status, each applied to
//! its own share of requests, drawn independently), and the [`Fraction`] that mirrors
//! use too. Randomness is passed in.

use std::time::Duration;

use mesh_config::model::{FaultAbort, FaultDelay, HttpFaultInjection, Percent};
use rand_core::Rng;

use crate::balance::below;

/// A share of requests, in millionths (Envoy's `FractionalPercent` with a million).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fraction(u32);

impl Fraction {
    /// Every request.
    pub const ALL: Fraction = Fraction(1_000_000);
    /// No request.
    pub const NONE: Fraction = Fraction(0);

    /// From a percentage (0-100, clamped).
    pub fn from_percent(p: f64) -> Self {
        Fraction((p.clamp(0.0, 100.0) * 10_000.0).round() as u32)
    }

    /// The percentage.
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }

    /// Draws: true for this share of calls.
    #[inline]
    pub fn draw(self, rng: &mut dyn Rng) -> bool {
        match self.0 {
            0 => false,
            1_000_000 => true,
            n => below(rng.next_u64(), 1_000_000) < u64::from(n),
        }
    }
}

/// The share a fault applies to: `percentage`, else the deprecated `percent`, else none
/// (Istio: "if not specified, no request" is delayed or aborted).
fn fault_share(percentage: Option<Percent>, percent: Option<i32>) -> Fraction {
    match (percentage, percent) {
        (Some(p), _) => Fraction::from_percent(p.value),
        (None, Some(p)) => Fraction::from_percent(f64::from(p)),
        (None, None) => Fraction::NONE,
    }
}

/// How an injected abort answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortWith {
    /// An HTTP status.
    Http(u16),
    /// A gRPC status (HTTP 200 with `grpc-status`).
    Grpc(u32),
}

/// A compiled fault.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultInjection {
    /// Delay and its share.
    pub delay: Option<(Duration, Fraction)>,
    /// Abort and its share.
    pub abort: Option<(AbortWith, Fraction)>,
}

/// What the fault does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultDecision {
    /// Wait this long first.
    pub delay: Option<Duration>,
    /// Then answer this instead of forwarding.
    pub abort: Option<AbortWith>,
}

impl FaultInjection {
    /// Compiles a route's `fault`.
    pub fn compile(f: &HttpFaultInjection) -> Self {
        let delay = f.delay.as_ref().and_then(|d: &FaultDelay| {
            d.fixed_delay
                .map(|fd| (fd.get(), fault_share(d.percentage, d.percent)))
        });
        let abort = f.abort.as_ref().and_then(|a: &FaultAbort| {
            let with = match (&a.http_status, &a.grpc_status) {
                (Some(s), _) => AbortWith::Http(u16::try_from(*s).ok()?),
                (None, Some(g)) => AbortWith::Grpc(grpc_code(g)?),
                (None, None) => return None,
            };
            Some((with, fault_share(a.percentage, a.percent)))
        });
        FaultInjection { delay, abort }
    }

    /// Draws the fault for one request (delay and abort independently, as Envoy does).
    pub fn decide(&self, rng: &mut dyn Rng) -> FaultDecision {
        FaultDecision {
            delay: self.delay.and_then(|(d, f)| f.draw(rng).then_some(d)),
            abort: self.abort.and_then(|(a, f)| f.draw(rng).then_some(a)),
        }
    }
}

/// The numeric code of a gRPC status name (its position in gRPC's list of codes).
pub fn grpc_code(name: &str) -> Option<u32> {
    mesh_config::validate::GRPC_STATUS
        .iter()
        .position(|n| *n == name)
        .and_then(|i| u32::try_from(i).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_config::duration::Duration as CfgDuration;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn faults_draw_their_share() {
        let f = HttpFaultInjection {
            delay: Some(FaultDelay {
                fixed_delay: Some(CfgDuration(Duration::from_secs(7))),
                percent: Some(100),
                ..FaultDelay::default()
            }),
            abort: Some(FaultAbort {
                http_status: Some(555),
                percentage: Some(Percent { value: 10.0 }),
                ..FaultAbort::default()
            }),
        };
        let p = FaultInjection::compile(&f);
        let mut rng = StdRng::seed_from_u64(5);
        let mut aborts = 0;
        for _ in 0..20_000 {
            let d = p.decide(&mut rng);
            assert_eq!(d.delay, Some(Duration::from_secs(7)));
            if let Some(a) = d.abort {
                assert_eq!(a, AbortWith::Http(555));
                aborts += 1;
            }
        }
        let share = f64::from(aborts) / 20_000.0;
        assert!((share - 0.10).abs() < 0.01, "{share}");
        // no percentage: no request (Istio's documented default)
        let none = FaultInjection::compile(&HttpFaultInjection {
            abort: Some(FaultAbort {
                grpc_status: Some("UNAVAILABLE".into()),
                ..FaultAbort::default()
            }),
            ..HttpFaultInjection::default()
        });
        assert_eq!(none.abort, Some((AbortWith::Grpc(14), Fraction::NONE)));
        assert_eq!(none.decide(&mut rng), FaultDecision::default());
    }
}
