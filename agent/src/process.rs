//! What the agent adjusts about its own process: the open-file limit at start, and the
//! code it ran only to start, released once the run is under way.
//!
//! **Open files.** Every `host:port` that `http` probes with `connection: reused` reach
//! keeps a socket open (more while requests overlap), every `metrics` probe and Tail
//! subscriber holds one, and watches, the API and the collector add more: a file of 2,000
//! invariants on as many servers needs more than the 1,024 open files many systems give a
//! process by default (the *soft* limit), while the *hard* limit the administrator set is
//! usually far higher. As Go programs do since Go 1.19, the agent raises its soft limit to
//! the hard one, so the limit that applies is the one someone chose, not a historical
//! default. It never tries to go above the hard limit.
//!
//! **Start-up code.** Most of the binary's code runs once: argument parsing, the YAML and
//! CEL front ends, validation, building probes and clients. The kernel maps the pages of
//! a binary into the process as they are first executed, plus the pages around them
//! (fault-around: 64 KiB around each one touched), and counts them in the process's RSS
//! for as long as it lives, even if never executed again: about 8 MiB of this binary's
//! code, four times what a steady run executes. [`release_startup_code`] unmaps the
//! binary's read-only pages once the run is under way (`MADV_DONTNEED`); the pages the
//! run keeps executing come back on their next use, from the page cache (a minor fault,
//! no disk read), and the rest stay out of the RSS. The page cache itself is not
//! touched: those pages stay cached, shared and reclaimable, as they were.

/// Raises the soft limit on open files to the hard limit. Returns `(before, after)` when
/// it changed, `None` when it was already there or could not be read or changed (the
/// agent then runs with what it has; probes that cannot open a socket fail with the
/// system's error).
pub fn raise_open_file_limit() -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct we pass, which lives on our stack.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return None;
        }
        if limit.rlim_cur >= limit.rlim_max {
            return None;
        }
        let before = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return None;
        }
        #[allow(clippy::useless_conversion)] // rlim_t is u64 on Linux, not everywhere
        Some((u64::from(before), u64::from(limit.rlim_max)))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Unmaps the pages of the agent's own binary that are never written (its code and
/// read-only data), so that only what runs from now on is mapped back in. Returns the
/// bytes that were resident in those mappings, or 0 where there is nothing to do (not
/// Linux, `/proc` unreadable). Safe at any time and from any thread: the kernel maps a
/// page back in when it is next used.
///
/// A mapping that holds anonymous pages (a relocated RELRO segment, or code patched by a
/// debugger's or uprobe's breakpoint) is left alone: unmapping would throw those
/// changes away.
pub fn release_startup_code() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
            return 0;
        };
        let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
            return 0;
        };
        let mut released = 0;
        for mapping in read_only_mappings_of(&smaps, &exe) {
            // SAFETY: the range is a whole mapping of our own executable, read-only and
            // with no anonymous (private, changed) pages, as /proc/self/smaps says: its
            // content is the file's, so MADV_DONTNEED only drops page-table entries and
            // the next access maps the same bytes back in from the page cache.
            let done = unsafe {
                libc::madvise(
                    mapping.start as *mut libc::c_void,
                    mapping.len,
                    libc::MADV_DONTNEED,
                )
            };
            if done == 0 {
                released += mapping.resident_bytes;
            }
        }
        released
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// One mapping [`release_startup_code`] may release.
#[derive(Debug, PartialEq)]
struct ReleasableMapping {
    start: usize,
    len: usize,
    resident_bytes: u64,
}

/// The mappings of `exe` in a `/proc/PID/smaps` text that are not writable and hold no
/// anonymous pages. A mapping whose `Anonymous` line is missing or unreadable is skipped.
fn read_only_mappings_of(smaps: &str, exe: &std::path::Path) -> Vec<ReleasableMapping> {
    let exe = exe.to_string_lossy();
    let mut found = Vec::new();
    // (start, len, resident bytes, anonymous bytes) of the mapping being read, when it
    // is a candidate.
    let mut current: Option<(usize, usize, Option<u64>, Option<u64>)> = None;
    let mut finish = |current: &mut Option<(usize, usize, Option<u64>, Option<u64>)>| {
        if let Some((start, len, Some(resident), Some(0))) = current.take() {
            found.push(ReleasableMapping {
                start,
                len,
                resident_bytes: resident,
            });
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-') {
            // A mapping header: "start-end perms offset dev inode path".
            finish(&mut current);
            let perms = fields.next().unwrap_or("");
            // After offset, device and inode; a path may hold spaces.
            let path = fields.skip(3).collect::<Vec<_>>().join(" ");
            let range = usize::from_str_radix(start, 16)
                .ok()
                .zip(usize::from_str_radix(end, 16).ok());
            if let Some((start, end)) = range
                && path == *exe
                && perms.starts_with('r')
                && !perms.contains('w')
                && end > start
            {
                current = Some((start, end - start, None, None));
            }
            continue;
        }
        let Some((_, _, resident, anonymous)) = current.as_mut() else {
            continue;
        };
        let kib = fields
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .map(|k| k * 1024);
        match first {
            "Rss:" => *resident = kib,
            "Anonymous:" => *anonymous = kib,
            _ => {}
        }
    }
    finish(&mut current);
    found
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        super::raise_open_file_limit();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(limit.rlim_cur, limit.rlim_max);
        assert_eq!(
            super::raise_open_file_limit(),
            None,
            "nothing left to raise"
        );
    }

    const SMAPS: &str = "\
5600000000-5600001000 r--p 00000000 fe:00 42                         /opt/my agent/bin
Size:                  4 kB
Rss:                   4 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
5600001000-5600003000 r-xp 00001000 fe:00 42                         /opt/my agent/bin
Size:                  8 kB
Rss:                   8 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me
5600003000-5600004000 r--p 00003000 fe:00 42                         /opt/my agent/bin
Size:                  4 kB
Rss:                   4 kB
Anonymous:             4 kB
VmFlags: rd mr mw me ac
5600004000-5600005000 rw-p 00004000 fe:00 42                         /opt/my agent/bin
Rss:                   4 kB
Anonymous:             0 kB
5600005000-5600006000 r-xp 00000000 fe:00 43                         /usr/lib/libc.so.6
Rss:                   4 kB
Anonymous:             0 kB
5600006000-5600007000 r-xp 00001000 fe:00 42                         /opt/my agent/bin
Rss:                   4 kB
";

    #[test]
    fn only_unchanged_read_only_mappings_of_the_binary_are_released() {
        let found = super::read_only_mappings_of(SMAPS, std::path::Path::new("/opt/my agent/bin"));
        assert_eq!(
            found,
            vec![
                super::ReleasableMapping {
                    start: 0x5600000000,
                    len: 0x1000,
                    resident_bytes: 4096,
                },
                super::ReleasableMapping {
                    start: 0x5600001000,
                    len: 0x2000,
                    resident_bytes: 8192,
                },
            ],
            "not the relocated segment (anonymous pages), the writable one, libc's, or one \
             whose Anonymous line is missing"
        );
    }

    /// Resident bytes of this test binary's read-only mappings.
    #[cfg(target_os = "linux")]
    fn resident_read_only_bytes() -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        super::read_only_mappings_of(&smaps, &exe)
            .iter()
            .map(|m| m.resident_bytes)
            .sum()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn released_code_leaves_the_rss_and_comes_back_when_it_runs() {
        let before = resident_read_only_bytes();
        assert!(
            before > 0,
            "the test binary's code is resident while it runs"
        );
        let released = super::release_startup_code();
        assert!(released > 0, "the resident code was released");
        let after = resident_read_only_bytes();
        assert!(
            after < before,
            "resident code went down ({before} -> {after} bytes)"
        );
        // Code that runs again is mapped back in: this formats, parses and sorts, which
        // needs pages that were just released.
        let mut words: Vec<String> = (0..100).map(|i| format!("{:x}", i * 7919)).collect();
        words.sort();
        assert_eq!(words.first().map(String::as_str), Some("0"));
        assert!(resident_read_only_bytes() > after);
    }
}
