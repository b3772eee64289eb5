//! CPU and memory of the processes and threads doing the work, from /proc.
//!
//! - A contender in its own process (the worker binary, a Python peer) is charged with that
//!   process and every live descendant (utime + stime of all their threads), plus the children
//!   it has already reaped (cutime + cstime).
//! - A contender on threads of the bench process (the passthrough) is charged with the threads
//!   that appeared after a snapshot taken just before it started: its own thread and the
//!   librdkafka threads of the clients it created. The offset probe, the leaked clients of earlier
//!   steps and the main thread are left out.

use std::collections::HashSet;

/// Clock ticks per second of utime/stime in /proc (USER_HZ).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// The fields of a /proc stat file after the command name, which may contain spaces.
fn stat_fields(path: &str) -> Vec<String> {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    stat.rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Sum of the fields `range` of proc(5)'s stat (counted from 1), in seconds of CPU.
fn ticks(fields: &[String], range: std::ops::RangeInclusive<usize>) -> f64 {
    // Field 3 (state) is the first one after the command name.
    let (start, end) = (range.start() - 3, range.end() - 3);
    fields.get(start..=end).map_or(0.0, |f| {
        f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    }) / ticks_per_second()
}

/// CPU seconds (user + system, all threads) of one process.
pub fn cpu_seconds(pid: u32) -> f64 {
    // utime (14) and stime (15).
    ticks(&stat_fields(&format!("/proc/{pid}/stat")), 14..=15)
}

/// CPU seconds of a process, its live descendants, and the children they have reaped.
pub fn tree_cpu_seconds(pid: u32) -> f64 {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.filter_map(Result::ok) {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let fields = stat_fields(&format!("/proc/{child}/stat"));
            // ppid is field 4.
            if let Some(parent) = fields.get(1).and_then(|p| p.parse().ok()) {
                parents.push((child, parent));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(parents.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    // utime, stime, cutime, cstime (14..17).
    tree.iter()
        .map(|p| ticks(&stat_fields(&format!("/proc/{p}/stat")), 14..=17))
        .sum()
}

/// Ids of the threads of this process now.
pub fn thread_ids() -> HashSet<u32> {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// CPU seconds of the threads of this process that are not in `before`.
pub fn new_threads_cpu_seconds(before: &HashSet<u32>) -> f64 {
    thread_ids()
        .difference(before)
        .map(|tid| {
            ticks(
                &stat_fields(&format!("/proc/self/task/{tid}/stat")),
                14..=15,
            )
        })
        .sum()
}

/// Peak resident memory (VmHWM) of a process in MiB.
pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
