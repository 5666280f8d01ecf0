//! CPU time and resident memory of a process from /proc, to tell the relay's cost apart
//! from the generator's.

use std::time::Instant;

/// One reading of a process's CPU time and RSS.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// stime alone: time in the kernel on the process's behalf (its syscalls).
    pub sys_ticks: u64,
    pub rss_bytes: u64,
}

pub fn ticks_per_second() -> f64 {
    // SAFETY-free: sysconf has no preconditions; 100 is the Linux default if it fails.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Read /proc/PID/stat and /proc/PID/status ("self" for this process).
pub fn sample(pid: &str) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may contain spaces, in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(Sample {
        at: Instant::now(),
        cpu_ticks: utime + stime,
        sys_ticks: stime,
        rss_bytes: rss_kb * 1024,
    })
}

/// CPU use between two samples, in percent of one core.
pub fn cpu_percent(a: &Sample, b: &Sample) -> f64 {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    (b.cpu_ticks.saturating_sub(a.cpu_ticks)) as f64 / ticks_per_second() / secs * 100.0
}

/// Busy and total jiffies of one CPU from /proc/stat: busy counts user, nice, system,
/// irq, softirq and steal, so the kernel's packet work on that core is included whatever
/// the kernel charges to processes (with tick accounting, as here, softirq work done in a
/// process's syscalls counts in its stime; with CONFIG_IRQ_TIME_ACCOUNTING it does not).
pub fn cpu_jiffies(cpu: usize) -> Option<(u64, u64)> {
    let v = cpu_fields(cpu)?;
    // user nice system idle iowait irq softirq steal
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    let total = busy + get(3) + get(4);
    Some((busy, total))
}

/// Idle and iowait jiffies of one CPU. On a tickless kernel the kernel measures these
/// (its idle clock), where it samples the busy fields at each tick, which misjudges load
/// that comes in bursts shorter than a tick: wall time minus idle is the core's busy time
/// to trust then.
pub fn cpu_idle_jiffies(cpu: usize) -> Option<u64> {
    let v = cpu_fields(cpu)?;
    Some(v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0))
}

/// The numbers on `cpuN`'s line of /proc/stat.
fn cpu_fields(cpu: usize) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    Some(
        line.split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect(),
    )
}

/// Percentage of the time a CPU was busy between two [`cpu_jiffies`] readings.
pub fn core_busy_percent(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> f64 {
    match (a, b) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            (b1.saturating_sub(b0)) as f64 / (t1 - t0) as f64 * 100.0
        }
        _ => f64::NAN,
    }
}

/// Context switches of all of a process's threads: (voluntary, involuntary).
pub fn context_switches(pid: &str) -> (u64, u64) {
    let mut v = 0;
    let mut n = 0;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    for t in tasks.flatten() {
        let Ok(s) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        for l in s.lines() {
            let num = |l: &str| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|x| x.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            if l.starts_with("voluntary_ctxt_switches:") {
                v += num(l);
            } else if l.starts_with("nonvoluntary_ctxt_switches:") {
                n += num(l);
            }
        }
    }
    (v, n)
}
