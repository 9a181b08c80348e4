//! The process's own figures, from `/proc/self` (Linux; `None` elsewhere). Reads only.

#[derive(Debug, Default)]
pub struct Process {
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<usize>,
}

pub fn read() -> Process {
    let resident_bytes = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| vm_rss(&s));
    let open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count());
    Process { resident_bytes, open_fds }
}

/// `VmRSS:   1234 kB` → bytes.
pub fn vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}
