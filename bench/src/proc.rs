//! Figures of this process from /proc: CPU time, memory, threads.

/// CPU time (user + system) this process used so far, in seconds.
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux we run on.
    100.0
}

fn status_field(name: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Resident memory now, in MiB.
pub fn rss_mib() -> f64 {
    status_field("VmRSS") as f64 / 1024.0
}

/// Peak resident memory so far, in MiB.
pub fn peak_rss_mib() -> f64 {
    status_field("VmHWM") as f64 / 1024.0
}

/// Threads of this process.
pub fn threads() -> u64 {
    status_field("Threads")
}
