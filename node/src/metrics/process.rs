//! The `process_*` series Prometheus's own client libraries export, read
//! from `/proc/self` (prometheus-client has no process collector; the
//! `procfs` crate would be a large dependency for four numbers).

use std::time::Duration;

/// One reading of this process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Process {
    pub resident_memory_bytes: u64,
    pub cpu_seconds: f64,
    pub open_fds: u64,
    /// Unix seconds.
    pub start_time_seconds: f64,
}

/// Read `/proc/self`; `None` where there is no procfs (the series are
/// then left out rather than exported as zeros).
pub fn read() -> Option<Process> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    // SAFETY: sysconf only reads a constant of the C library.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let mut p = parse_stat(&stat, ticks as f64, page as u64, boot)?;
    // read_dir's own descriptor is counted in; not the process's.
    p.open_fds = open_fds.saturating_sub(1);
    Some(p)
}

/// `btime` of `/proc/stat`: boot time, unix seconds.
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// `/proc/self/stat` (proc(5)): after the `(comm)` field, which may hold
/// spaces and parentheses, fields 3.. are space separated; utime (14),
/// stime (15) and starttime (22) are in clock ticks, rss (24) in pages.
fn parse_stat(stat: &str, ticks_per_sec: f64, page: u64, boot: u64) -> Option<Process> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state).
    let field = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    if ticks_per_sec <= 0.0 {
        return None;
    }
    let cpu_ticks = field(14)? + field(15)?;
    let start = Duration::from_secs_f64(field(22)? as f64 / ticks_per_sec);
    Some(Process {
        resident_memory_bytes: field(24)? * page,
        cpu_seconds: cpu_ticks as f64 / ticks_per_sec,
        open_fds: 0,
        start_time_seconds: boot as f64 + start.as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_taken_after_the_command_name() {
        // A command name with a space and a ')' must not shift the fields.
        let stat = "4242 (fleet sync) x) S 1 4242 4242 0 -1 4194304 100 0 0 0 \
                    250 50 0 0 20 0 8 0 1000 123456789 300 18446744073709551615";
        let p = parse_stat(stat, 100.0, 4096, 1_700_000_000).expect("parses");
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.start_time_seconds, 1_700_000_010.0);
        assert_eq!(p.resident_memory_bytes, 300 * 4096);
    }

    #[test]
    fn boot_time_line() {
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
        assert_eq!(boot_time("cpu 1 2 3\n"), None);
    }

    #[test]
    fn this_process_reads() {
        let p = read().expect("procfs on Linux");
        assert!(p.resident_memory_bytes > 0);
        assert!(p.open_fds >= 3, "{p:?}");
        assert!(p.start_time_seconds > 1_600_000_000.0, "{p:?}");
    }
}
