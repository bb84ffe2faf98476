//! A description of the machine and the filesystem under test, for the report's header.

use std::path::Path;

use keel_engine::filesystem::mount_description;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: u64,
    pub kernel: String,
    /// Filesystem type and device of the directory measured, from /proc/mounts.
    pub filesystem: String,
}

impl Machine {
    pub fn describe(dir: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        Self {
            cpu: field(&cpuinfo, "model name").unwrap_or_else(|| "unknown CPU".into()),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: field(&meminfo, "MemTotal")
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .map_or(0, |kib| (kib + (1 << 19)) >> 20),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".into(), |s| s.trim().to_string()),
            filesystem: mount_description(&mounts, &dir)
                .unwrap_or_else(|| "unknown filesystem".into()),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{} x {}, {} GiB, Linux {}, {}",
            self.cores, self.cpu, self.memory_gib, self.kernel, self.filesystem
        )
    }
}

/// The value of the first `name : value` line.
fn field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_by_name() {
        let text = "processor\t: 0\nmodel name\t: AMD EPYC\nMemTotal:  24000000 kB\n";
        assert_eq!(field(text, "model name").as_deref(), Some("AMD EPYC"));
        assert_eq!(field(text, "MemTotal").as_deref(), Some("24000000 kB"));
        assert_eq!(field(text, "flags"), None);
    }
}
