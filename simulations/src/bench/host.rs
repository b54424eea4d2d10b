//! What the benchmark reads from the operating system: a process's memory
//! from `/proc/PID/status`, the open-files limit, and a description of the
//! machine.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use serde::Serialize;

/// Memory figures of one process, from `/proc/PID/status`, in KiB.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    /// Resident set size (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size (`VmHWM`).
    pub hwm_kib: u64,
    /// Resident anonymous memory: heap, stacks (`RssAnon`).
    pub rss_anon_kib: u64,
    /// Resident file-backed memory: the binary, mapped files (`RssFile`).
    pub rss_file_kib: u64,
    /// Threads of the process.
    pub threads: u64,
}

/// The machine the benchmark ran on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs available to this process.
    pub cpus: usize,
    /// The CPU model, from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Physical memory, KiB.
    pub mem_total_kib: u64,
    /// Kernel release.
    pub kernel: String,
}

/// Reads the memory of process `pid`.
pub fn memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let mut m = Memory::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let number = value.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        match key {
            "VmRSS" => m.rss_kib = number,
            "VmHWM" => m.hwm_kib = number,
            "RssAnon" => m.rss_anon_kib = number,
            "RssFile" => m.rss_file_kib = number,
            "Threads" => m.threads = number,
            _ => {}
        }
    }
    if m.rss_kib == 0 {
        anyhow::bail!("no VmRSS in {path}");
    }
    Ok(m)
}

/// CPU time (user + system, every thread) process `pid` has used so far,
/// from `/proc/PID/stat` (clock-tick resolution, normally 10 ms).
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name (which may hold spaces) start at `state`.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after `)`.
    let ticks = tick(11) + tick(12);
    let per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100).max(1);
    Ok(Duration::from_secs_f64(ticks as f64 / per_sec as f64))
}

/// CPU time used by the node and by this process over a stretch of work.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuUse {
    /// The node's CPU time, milliseconds.
    pub node_ms: f64,
    /// This (the client) process's CPU time, milliseconds.
    pub bench_ms: f64,
    /// Wall time of the stretch, milliseconds.
    pub wall_ms: f64,
}

/// Starts measuring [`CpuUse`] for node `pid`.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    pid: u32,
    node: Duration,
    bench: Duration,
    at: std::time::Instant,
}

impl CpuMeter {
    /// Reads the counters now.
    pub fn start(node_pid: u32) -> Self {
        Self {
            pid: node_pid,
            node: cpu_time(node_pid).unwrap_or_default(),
            bench: cpu_time(std::process::id()).unwrap_or_default(),
            at: std::time::Instant::now(),
        }
    }

    /// What was used since [`CpuMeter::start`].
    pub fn stop(&self) -> CpuUse {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        CpuUse {
            node_ms: ms(cpu_time(self.pid).unwrap_or_default().saturating_sub(self.node)),
            bench_ms: ms(cpu_time(std::process::id()).unwrap_or_default().saturating_sub(self.bench)),
            wall_ms: ms(self.at.elapsed()),
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit (child
/// processes inherit it). Returns the new soft limit.
pub fn raise_open_files_limit() -> Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(RLIMIT_NOFILE)")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit(RLIMIT_NOFILE)")?;
    }
    Ok(hard.max(soft))
}

/// Describes this machine.
pub fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(Path::new(p)).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into());
    let mem_total_kib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get),
        cpu_model,
        mem_total_kib,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory() {
        let m = memory(std::process::id()).expect("own status");
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib && m.threads >= 1);
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {}
        assert!(cpu_time(std::process::id()).expect("own stat") > Duration::ZERO);
    }
}
