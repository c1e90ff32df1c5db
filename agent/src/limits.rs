//! Process limits the agent adjusts for itself at start.
//!
//! Every `http` probe with `connection: reused` keeps one socket open, every Tail
//! subscriber holds one, and watches, the API and the collector add more: a file of
//! 2,000 invariants needs more than the 1,024 open files many systems give a process by
//! default (the *soft* limit), while the *hard* limit the administrator set is usually
//! far higher. As Go programs do since Go 1.19, the agent raises its soft limit to the
//! hard one, so the limit that applies is the one someone chose, not a historical
//! default. It never tries to go above the hard limit.

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
}
