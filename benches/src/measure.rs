//! What a phase costs beyond its latencies, read from the operating system and from the
//! counting allocator: CPU time (getrusage for this process, `/proc/<pid>/stat` for the
//! nginx processes), allocations (every allocation in the process, via `stats_alloc`),
//! and peak resident memory (VmHWM, reset before each phase through
//! `/proc/<pid>/clear_refs`). Everything in the process counts, the in-process backend
//! and the load generator included: they do the same work on every path, so differences
//! between paths are the paths' own.

use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};
use nix::unistd::{SysconfVar, sysconf};
use stats_alloc::INSTRUMENTED_SYSTEM;

/// Clock ticks per second for `/proc/<pid>/stat` times, and whether it was read from
/// `sysconf(_SC_CLK_TCK)` (`false`: assumed to be 100).
pub(crate) fn clock_ticks() -> (u64, bool) {
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => (t as u64, true),
        _ => (100, false),
    }
}

/// A measurement in progress: the counters at its start.
pub(crate) struct Meter {
    start: Instant,
    cpu: Duration,
    other_cpu_ticks: u64,
    allocs: usize,
    machine: MachineTicks,
    pids: Vec<u32>,
    /// Whether the peak RSS was reset at the start (else it is the peak since start).
    pub(crate) rss_reset: bool,
}

/// What a phase cost.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cost {
    /// Wall time.
    pub(crate) elapsed: Duration,
    /// CPU time (user + system) of this process.
    pub(crate) cpu_self: Duration,
    /// CPU time (user + system) of the other processes (the nginx sidecars).
    pub(crate) cpu_other: Duration,
    /// Allocations in this process.
    pub(crate) allocs: u64,
    /// Peak resident memory in bytes: this process plus the other processes.
    pub(crate) peak_rss: u64,
    /// Whether the peak was reset at the start of the phase.
    pub(crate) rss_reset: bool,
    /// CPU time that the rest of the machine used (other processes, the kernel's own
    /// work), as a share of all its CPUs over the phase: background noise.
    pub(crate) others_share: f64,
    /// CPU time the hypervisor took (steal), as a share of all the machine's CPUs.
    pub(crate) steal_share: f64,
}

/// The machine's CPU ticks so far, from the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy, Default)]
struct MachineTicks {
    /// user + nice + system + irq + softirq, all CPUs.
    busy: u64,
    /// steal, all CPUs.
    steal: u64,
}

impl MachineTicks {
    fn read() -> Self {
        let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
            return MachineTicks::default();
        };
        let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
            return MachineTicks::default();
        };
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        MachineTicks {
            busy: at(0) + at(1) + at(2) + at(5) + at(6),
            steal: at(7),
        }
    }
}

impl Meter {
    /// Resets the peak RSS of this process and of `pids` (the nginx processes whose cost
    /// counts too) and reads the counters.
    pub(crate) fn start(pids: Vec<u32>) -> Self {
        let mut rss_reset = reset_peak("self");
        for pid in &pids {
            rss_reset &= reset_peak(&pid.to_string());
        }
        Meter {
            other_cpu_ticks: pids.iter().map(|p| cpu_ticks(*p)).sum(),
            cpu: own_cpu(),
            allocs: INSTRUMENTED_SYSTEM.stats().allocations,
            machine: MachineTicks::read(),
            pids,
            rss_reset,
            start: Instant::now(),
        }
    }

    /// Reads the counters again and returns the differences.
    pub(crate) fn stop(self) -> Cost {
        let elapsed = self.start.elapsed();
        let allocs = INSTRUMENTED_SYSTEM
            .stats()
            .allocations
            .saturating_sub(self.allocs) as u64;
        let cpu_self = own_cpu().saturating_sub(self.cpu);
        let ticks = self
            .pids
            .iter()
            .map(|p| cpu_ticks(*p))
            .sum::<u64>()
            .saturating_sub(self.other_cpu_ticks);
        let (hz, _) = clock_ticks();
        let cpu_other = Duration::from_micros(ticks * 1_000_000 / hz);
        let machine = MachineTicks::read();
        let ticks_s = |t: u64| t as f64 / hz as f64;
        let capacity = elapsed.as_secs_f64()
            * std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let busy = ticks_s(machine.busy.saturating_sub(self.machine.busy));
        let ours = cpu_self.as_secs_f64() + cpu_other.as_secs_f64();
        let others_share = ((busy - ours).max(0.0) / capacity).min(1.0);
        let steal_share =
            (ticks_s(machine.steal.saturating_sub(self.machine.steal)) / capacity).min(1.0);
        let peak_rss = peak_rss("self")
            + self
                .pids
                .iter()
                .map(|p| peak_rss(&p.to_string()))
                .sum::<u64>();
        Cost {
            elapsed,
            cpu_self,
            cpu_other,
            allocs,
            peak_rss,
            rss_reset: self.rss_reset,
            others_share,
            steal_share,
        }
    }
}

/// User + system CPU time of this process, all threads.
fn own_cpu() -> Duration {
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| {
                Duration::from_secs(tv.tv_sec().max(0) as u64)
                    + Duration::from_micros(tv.tv_usec().max(0) as u64)
            };
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces):
/// index 0 is field 3 (state), 1 is the parent pid, 11 and 12 are utime and stime.
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// User + system CPU time of process `pid` in clock ticks (0 if it is gone).
fn cpu_ticks(pid: u32) -> u64 {
    let Some(f) = stat_fields(&pid.to_string()) else {
        return 0;
    };
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// The processes whose parent is `ppid`, found by scanning `/proc`.
pub(crate) fn children(ppid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parent = ppid.to_string();
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| stat_fields(&pid.to_string()).is_some_and(|f| f.get(1) == Some(&parent)))
        .collect()
}

/// Resets the peak RSS (VmHWM) of `/proc/<who>` to its current RSS; `false` if the
/// kernel refused.
fn reset_peak(who: &str) -> bool {
    std::fs::write(format!("/proc/{who}/clear_refs"), "5").is_ok()
}

/// The peak RSS (VmHWM) of `/proc/<who>` in bytes (0 if unknown).
fn peak_rss(who: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{who}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
