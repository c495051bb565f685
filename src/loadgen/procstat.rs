//! CPU time and resident memory of another process, read from `/proc` (Linux only).

use std::io;
use std::sync::OnceLock;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    /// User plus system CPU time, in microseconds.
    pub cpu_us: u64,
    /// Resident set size (`VmRSS`), in KiB.
    pub rss_kib: u64,
}

/// Clock ticks per second of `/proc/PID/stat` CPU times: `getconf CLK_TCK`, read once;
/// 100 (the Linux value on every common architecture) if `getconf` cannot be run.
pub fn clock_ticks_per_sec() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// Read the CPU time (`utime + stime` of `/proc/PID/stat`) and `VmRSS` of `/proc/PID/status`.
///
/// CPU time has the resolution of one clock tick (10 ms at 100 ticks per second), so a
/// per-request figure needs a run that burns at least a few hundred milliseconds of CPU.
pub fn sample(pid: u32) -> io::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let ticks = parse_cpu_ticks(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc stat line"))?;
    let rss_kib = parse_vm_rss_kib(&status)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS in /proc status"))?;
    let cpu_us = ticks.saturating_mul(1_000_000) / clock_ticks_per_sec();
    Ok(ProcSample { cpu_us, rss_kib })
}

/// `utime + stime` in clock ticks. The command name (field 2) may hold spaces and parentheses,
/// so fields are counted from the last `)`: after it come field 3 (state) onwards, and
/// utime and stime are fields 14 and 15.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_ascii_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => Some(value),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_cpu_ticks_skips_odd_command_names() {
        let stat = "1234 (we ird) proc)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 1 0 100 1000 50";
        assert_eq!(parse_cpu_ticks(stat), Some(287));
        assert_eq!(parse_cpu_ticks("1234 (x) S 1"), None);
        assert_eq!(parse_cpu_ticks("no paren"), None);
    }

    #[test]
    fn parse_vm_rss_reads_kib() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t    4321 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss_kib(status), Some(4321));
        assert_eq!(parse_vm_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn sample_reads_own_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
    }
}
