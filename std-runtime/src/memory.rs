//! How much memory this process may use: the machine's (Linux's `/proc/meminfo`), bounded by
//! the memory limit of its control group where one is set (cgroup v2's `memory.max`, v1's
//! `memory.limit_in_bytes`, on the process's group or any group above it). In a container
//! the out-of-memory killer acts at that limit, not at the machine's memory, so the checks
//! that refuse what would not fit (an arena, gzip data unpacked) compare with the smaller.

/// The memory this process may hold in all: the machine's (`MemTotal`), or its cgroup's
/// limit where that is lower; `None` where neither can be read (not Linux).
pub(crate) fn total_bytes() -> Option<u64> {
    limits(&read_file).total
}

/// The memory this process may still take: the machine's available memory (`MemAvailable`),
/// or what its cgroup's limits leave above their groups' use (less the file cache the kernel
/// can reclaim, as `MemAvailable` leaves it out) where that is lower; `None` where neither can
/// be read.
pub(crate) fn available_bytes() -> Option<u64> {
    limits(&read_file).available
}

fn read_file(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// What [`total_bytes`] and [`available_bytes`] give.
#[derive(Debug, PartialEq)]
struct Limits {
    total: Option<u64>,
    available: Option<u64>,
}

/// The limits, with `read` for reading a file of the system (a test passes its own).
fn limits(read: &dyn Fn(&str) -> Option<String>) -> Limits {
    let meminfo = read("/proc/meminfo");
    let field = |key: &str| -> Option<u64> {
        let line = meminfo.as_deref()?.lines().find(|l| l.starts_with(key))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kb.checked_mul(1024)
    };
    let (mut total, mut available) = (field("MemTotal:"), field("MemAvailable:"));
    if let Some((limit, left)) = cgroup_limit(read) {
        total = Some(total.map_or(limit, |t| t.min(limit)));
        available = Some(available.map_or(left, |a| a.min(left)));
    }
    Limits { total, available }
}

/// Over the process's cgroup and the groups above it, the lowest memory limit and the least
/// room left under one (a group's limit less its use, the reclaimable file cache not counted):
/// from `/proc/self/cgroup`, the v2 line (`0::/path`) or v1's `memory` line.
fn cgroup_limit(read: &dyn Fn(&str) -> Option<String>) -> Option<(u64, u64)> {
    let groups = read("/proc/self/cgroup")?;
    let mut lowest: Option<(u64, u64)> = None;
    for line in groups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (root, limit_file, use_file, cache_key) = if controllers.is_empty() {
            (
                "/sys/fs/cgroup",
                "memory.max",
                "memory.current",
                "inactive_file",
            )
        } else if controllers.split(',').any(|c| c == "memory") {
            (
                "/sys/fs/cgroup/memory",
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                "total_inactive_file",
            )
        } else {
            continue;
        };
        // The group, then each group above it, up to the root (a container's own root where
        // the group's path is not visible in it).
        let mut dir = path.trim_end_matches('/').to_string();
        loop {
            let at = format!("{root}{dir}");
            if let Some(limit) = read(&format!("{at}/{limit_file}")).and_then(|s| parse_limit(&s)) {
                let used: u64 = read(&format!("{at}/{use_file}"))
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0);
                // The group's file cache that the kernel drops under pressure (its working
                // set is the rest, as container runtimes count it).
                let cache = read(&format!("{at}/memory.stat")).and_then(|stat| {
                    let line = stat
                        .lines()
                        .find(|l| l.split_whitespace().next() == Some(cache_key))?;
                    line.split_whitespace().nth(1)?.parse::<u64>().ok()
                });
                let left = limit.saturating_sub(used.saturating_sub(cache.unwrap_or(0)));
                lowest = Some(match lowest {
                    None => (limit, left),
                    Some((l, r)) => (l.min(limit), r.min(left)),
                });
            }
            match dir.rfind('/') {
                Some(i) => dir.truncate(i),
                None => break,
            }
        }
    }
    lowest
}

/// A limit file's bytes; `None` for no limit (v2's `max`, or v1's page-rounded `i64::MAX`).
fn parse_limit(s: &str) -> Option<u64> {
    let v: u64 = s.trim().parse().ok()?;
    (v < 1 << 62).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn system(files: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = files
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |p: &str| map.get(p).cloned()
    }

    const MEMINFO: (&str, &str) = (
        "/proc/meminfo",
        "MemTotal:       16000000 kB\nMemFree:         1000 kB\nMemAvailable:   12000000 kB\n",
    );

    #[test]
    fn the_machine_alone() {
        let l = limits(&system(&[MEMINFO]));
        assert_eq!(l.total, Some(16_000_000 * 1024));
        assert_eq!(l.available, Some(12_000_000 * 1024));
        assert_eq!(
            limits(&system(&[])),
            Limits {
                total: None,
                available: None
            }
        );
    }

    // A cgroup v2 container of 2 GB using 0.7 GB, 0.2 GB of it reclaimable file cache: 2 GB in
    // all, 1.5 GB left; `max` above it is no limit.
    #[test]
    fn a_cgroup_v2_limit_bounds_both() {
        let l = limits(&system(&[
            MEMINFO,
            ("/proc/self/cgroup", "0::/jobs/run7\n"),
            ("/sys/fs/cgroup/jobs/run7/memory.max", "2000000000\n"),
            ("/sys/fs/cgroup/jobs/run7/memory.current", "700000000\n"),
            (
                "/sys/fs/cgroup/jobs/run7/memory.stat",
                "anon 500000000\nfile 200000000\ninactive_file 200000000\n",
            ),
            ("/sys/fs/cgroup/jobs/memory.max", "max\n"),
        ]));
        assert_eq!(l.total, Some(2_000_000_000));
        assert_eq!(l.available, Some(1_500_000_000));
    }

    // cgroup v1: the group's own limit is "unlimited" (i64::MAX rounded to a page), a group
    // above it has 1 GB; other controllers' lines are skipped. The machine's available memory
    // is the lower where the group has room.
    #[test]
    fn a_cgroup_v1_limit_above_the_group_counts() {
        let l = limits(&system(&[
            MEMINFO,
            (
                "/proc/self/cgroup",
                "4:memory:/outer/inner\n3:cpuset:/\n0::/\n",
            ),
            (
                "/sys/fs/cgroup/memory/outer/inner/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
            (
                "/sys/fs/cgroup/memory/outer/memory.limit_in_bytes",
                "1000000000",
            ),
            ("/sys/fs/cgroup/memory/outer/memory.usage_in_bytes", "100"),
        ]));
        assert_eq!(l.total, Some(1_000_000_000));
        assert_eq!(l.available, Some(1_000_000_000 - 100));
        let roomy = limits(&system(&[
            MEMINFO,
            ("/proc/self/cgroup", "4:memory:/\n"),
            ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "64000000000"),
        ]));
        assert_eq!(roomy.total, Some(16_000_000 * 1024));
        assert_eq!(roomy.available, Some(12_000_000 * 1024));
    }

    // The room left is the least over the groups, not the room of the lowest limit's group: a
    // parent of 4 GB with 3.9 GB used leaves 0.1 GB to a child of 2 GB using 0.5 GB. In the
    // container's own root ("0::/", trailing slashes) the limit there counts.
    #[test]
    fn the_least_room_over_the_groups_counts() {
        let l = limits(&system(&[
            ("/proc/self/cgroup", "0::/a/b/\n"),
            ("/sys/fs/cgroup/a/b/memory.max", "2000000000"),
            ("/sys/fs/cgroup/a/b/memory.current", "500000000"),
            ("/sys/fs/cgroup/a/memory.max", "4000000000"),
            ("/sys/fs/cgroup/a/memory.current", "3900000000"),
        ]));
        assert_eq!(l.total, Some(2_000_000_000));
        assert_eq!(l.available, Some(100_000_000));
        let own = limits(&system(&[
            MEMINFO,
            ("/proc/self/cgroup", "0::/\n"),
            ("/sys/fs/cgroup/memory.max", "1000000000\n"),
            ("/sys/fs/cgroup/memory.current", "1000000000\n"),
        ]));
        assert_eq!((own.total, own.available), (Some(1_000_000_000), Some(0)));
    }
}
