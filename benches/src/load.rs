//! The load loops. A closed loop keeps a fixed number of requests in flight (each task
//! sends its next request when the previous one is answered), which measures capacity
//! but hides queueing: a slow answer delays the requests behind it, which are then never
//! sent at the moment they should have been (coordinated omission). An open loop sends
//! request i at t0 + i/rate whatever happened before, each as its own task, and measures
//! its latency from that scheduled time, so queueing shows up in the percentiles. The
//! open loop's clock is a plain thread sleeping with 1 ns timer slack rather than
//! tokio's timer, whose 1 ms granularity would add up to a millisecond to every latency.
//!
//! Every loop is bounded: closed loops by time and by a request count, open loops by
//! time (and so count), in-flight open-loop requests by [`MAX_IN_FLIGHT`], and every
//! request by [`REQUEST_TIMEOUT`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::backend::Backend;
use crate::measure::{Cost, Meter};
use crate::paths::Sender;

/// A request not answered within this time counts as an error.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Open loop: a request due while this many are in flight is not sent (and counted as
/// not sent on time), so an overloaded path cannot pile up tasks without bound.
pub(crate) const MAX_IN_FLIGHT: usize = 4096;

/// Open loop: a request sent later than this after its scheduled time counts as late.
pub(crate) const LATE_AFTER: Duration = Duration::from_millis(1);

/// Closed loops stop after this many requests per second of phase, if not stopped by
/// the clock first.
const MAX_RPS: f64 = 1_000_000.0;

/// A way of loading a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// A closed loop with this many requests in flight.
    Closed {
        /// Requests in flight (tasks, each looping).
        in_flight: usize,
    },
    /// An open loop at this many requests per second.
    Open {
        /// Requests per second.
        rate: u64,
    },
}

impl Phase {
    /// A title for the phase's table.
    pub(crate) fn title(self) -> String {
        match self {
            Phase::Closed { in_flight: 1 } => "closed loop, 1 request in flight".into(),
            Phase::Closed { in_flight } => format!("closed loop, {in_flight} requests in flight"),
            Phase::Open { rate } => format!("open loop at {rate} requests/s"),
        }
    }

    /// A short name, for progress lines and JSON.
    pub(crate) fn short(self) -> String {
        match self {
            Phase::Closed { in_flight } => format!("closed-{in_flight}"),
            Phase::Open { rate } => format!("open-{rate}"),
        }
    }
}

/// Outcomes of requests: a latency histogram (nanoseconds) and counts.
pub(crate) struct Tally {
    /// Latency of every answered or failed request, in nanoseconds.
    pub(crate) hist: Histogram<u64>,
    /// Requests answered `200` with the expected body.
    pub(crate) ok: u64,
    /// Requests that failed, timed out or had another answer.
    pub(crate) errors: u64,
    /// The first error, for the report.
    pub(crate) first_error: Option<String>,
}

impl Tally {
    /// An empty tally; its histogram covers 1 ns to a minute with 3 significant digits.
    pub(crate) fn new() -> Result<Self> {
        Ok(Tally {
            hist: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .map_err(|e| anyhow!("histogram: {e:?}"))?,
            ok: 0,
            errors: 0,
            first_error: None,
        })
    }

    fn record(
        &mut self,
        latency: Duration,
        outcome: Result<Result<()>, tokio::time::error::Elapsed>,
    ) {
        self.hist
            .saturating_record(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1));
        let err = match outcome {
            Ok(Ok(())) => {
                self.ok += 1;
                return;
            }
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => format!("no answer within {REQUEST_TIMEOUT:?}"),
        };
        self.errors += 1;
        self.first_error.get_or_insert(err);
    }

    fn merge(&mut self, other: Tally) -> Result<()> {
        self.hist
            .add(&other.hist)
            .map_err(|e| anyhow!("merging histograms: {e:?}"))?;
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }
}

/// One phase on one path in one round.
pub(crate) struct Sample {
    /// Latencies and outcomes.
    pub(crate) tally: Tally,
    /// Open loop: requests sent more than [`LATE_AFTER`] after their scheduled time,
    /// plus those not sent at all.
    pub(crate) late: u64,
    /// Open loop: requests not sent because [`MAX_IN_FLIGHT`] were in flight.
    pub(crate) dropped: u64,
    /// Open loop: how long after its due time each request was spawned, in nanoseconds
    /// (the load generator's own error, included in the latencies).
    pub(crate) send_lag: Option<Histogram<u64>>,
    /// CPU, allocations, memory.
    pub(crate) cost: Cost,
    /// Connections the backend accepted during the phase (0 when nothing churns).
    pub(crate) new_connections: u64,
}

/// Sends `sequential` requests one after the other, then `concurrent` tasks × 10
/// requests, so pools hold enough connections for the concurrent phases.
pub(crate) async fn warm_up(
    sender: &Sender,
    sequential: usize,
    concurrent: usize,
) -> Result<Tally> {
    let mut tally = Tally::new()?;
    for _ in 0..sequential {
        let start = Instant::now();
        let r = tokio::time::timeout(REQUEST_TIMEOUT, sender.send()).await;
        tally.record(start.elapsed(), r);
    }
    let tasks: Vec<_> = (0..concurrent)
        .map(|_| {
            let sender = sender.clone();
            tokio::spawn(async move {
                let mut t = Tally::new()?;
                for _ in 0..10 {
                    let start = Instant::now();
                    let r = tokio::time::timeout(REQUEST_TIMEOUT, sender.send()).await;
                    t.record(start.elapsed(), r);
                }
                Ok::<_, anyhow::Error>(t)
            })
        })
        .collect();
    for t in tasks {
        tally.merge(t.await??)?;
    }
    Ok(tally)
}

/// Runs `phase` on the path of `sender` for `duration`, charging it the CPU and memory
/// of this process and of the processes `pids`.
pub(crate) async fn run(
    sender: &Sender,
    phase: Phase,
    duration: Duration,
    pids: Vec<u32>,
    backend: &Backend,
) -> Result<Sample> {
    let connections = backend.connections();
    let (tally, late, dropped, send_lag, cost) = match phase {
        Phase::Closed { in_flight } => {
            // Histograms are allocated before the meter starts.
            let tallies = (0..in_flight)
                .map(|_| Tally::new())
                .collect::<Result<Vec<_>>>()?;
            let meter = Meter::start(pids);
            let tally = closed(sender, tallies, duration).await?;
            (tally, 0, 0, None, meter.stop())
        }
        Phase::Open { rate } => {
            let tally = Arc::new(Mutex::new(Tally::new()?));
            let lag = Tally::new()?.hist;
            let meter = Meter::start(pids);
            let (late, dropped, lag) = open(sender, rate, duration, tally.clone(), lag).await?;
            let cost = meter.stop();
            let tally = Arc::into_inner(tally)
                .ok_or_else(|| anyhow!("open loop: a request outlived its phase"))?
                .into_inner()
                .map_err(|_| anyhow!("open loop: a request task panicked"))?;
            (tally, late, dropped, Some(lag), cost)
        }
    };
    Ok(Sample {
        tally,
        late,
        dropped,
        send_lag,
        cost,
        new_connections: backend.connections() - connections,
    })
}

/// One task per tally, each sending its next request when the previous one is answered,
/// until `duration` has passed or the request budget is spent.
async fn closed(sender: &Sender, tallies: Vec<Tally>, duration: Duration) -> Result<Tally> {
    let deadline = Instant::now() + duration;
    let budget = (duration.as_secs_f64() * MAX_RPS) as u64;
    let issued = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = tallies
        .into_iter()
        .map(|mut tally| {
            let (sender, issued) = (sender.clone(), issued.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < budget {
                    let start = Instant::now();
                    let r = tokio::time::timeout(REQUEST_TIMEOUT, sender.send()).await;
                    tally.record(start.elapsed(), r);
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::new()?;
    for t in tasks {
        total.merge(t.await?)?;
    }
    Ok(total)
}

/// Request i is due at t0 + i/`rate`; a thread sleeps until then and spawns it as its own
/// task, which records its latency from the due time. Returns (late, dropped, `lag` with
/// every request's send lag) once every request has finished.
async fn open(
    sender: &Sender,
    rate: u64,
    duration: Duration,
    tally: Arc<Mutex<Tally>>,
    mut lag: Histogram<u64>,
) -> Result<(u64, u64, Histogram<u64>)> {
    let count = (duration.as_secs_f64() * rate as f64).round() as u64;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let runtime = tokio::runtime::Handle::current();
    let (sender, gauge) = (sender.clone(), in_flight.clone());
    let generator = tokio::task::spawn_blocking(move || {
        // Without this, each sleep may end up to 50 µs late (the default timer slack).
        let _ = nix::sys::prctl::set_timerslack(1);
        let (mut late, mut dropped) = (0, 0);
        let t0 = Instant::now();
        for i in 0..count {
            let due = t0 + Duration::from_nanos(i.saturating_mul(1_000_000_000) / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if gauge.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                dropped += 1;
                late += 1;
                continue;
            }
            let behind = due.elapsed();
            lag.saturating_record(u64::try_from(behind.as_nanos()).unwrap_or(u64::MAX).max(1));
            if behind > LATE_AFTER {
                late += 1;
            }
            gauge.fetch_add(1, Ordering::Relaxed);
            let (sender, tally, gauge) = (sender.clone(), tally.clone(), gauge.clone());
            runtime.spawn(async move {
                let r = tokio::time::timeout(REQUEST_TIMEOUT, sender.send()).await;
                let latency = due.elapsed();
                if let Ok(mut t) = tally.lock() {
                    t.record(latency, r);
                }
                drop(tally);
                gauge.fetch_sub(1, Ordering::Release);
            });
        }
        (late, dropped, lag)
    });
    let (late, dropped, lag) = generator.await?;
    // Every request ends within its timeout; wait for the last ones.
    let deadline = Instant::now() + REQUEST_TIMEOUT + Duration::from_secs(1);
    while in_flight.load(Ordering::Acquire) > 0 {
        if Instant::now() > deadline {
            return Err(anyhow!(
                "open loop: requests still in flight after their timeout"
            ));
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    Ok((late, dropped, lag))
}
