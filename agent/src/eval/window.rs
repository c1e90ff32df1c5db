//! A time-ordered rolling window with bounded memory, shared by the windowed conditions.
//!
//! Entries are kept sorted by sample time. Samples normally arrive in time order, so an
//! entry is pushed at the back and old ones are popped from the front: O(1) per sample.
//! A late sample (probes run concurrently, so a slow request can finish after a later one)
//! is inserted at its place so window ratios stay exact; that costs O(distance), which is
//! small because late samples are late by at most one timeout.
//!
//! The window never holds more than [`MAX_WINDOW_ENTRIES`] entries: with a tiny interval
//! and a long window (100 ms over a day would be 864 000 samples) the oldest entries are
//! dropped early, so the window then covers the most recent `MAX_WINDOW_ENTRIES` samples
//! rather than the whole span. Memory stays below ~1.6 MiB per window.

use std::collections::VecDeque;
use std::time::Duration;

/// Most entries one window keeps; beyond it the oldest entries are dropped early.
pub const MAX_WINDOW_ENTRIES: usize = 100_000;

/// A duration in whole milliseconds, saturating at `i64::MAX` (timestamps are `i64` ms).
pub(crate) fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// Entries `(time in ms, value)` whose time lies within `span` of the newest time seen.
#[derive(Clone, Debug)]
pub(crate) struct RollingWindow<T> {
    span_ms: i64,
    cap: usize,
    entries: VecDeque<(i64, T)>,
}

impl<T: Copy> RollingWindow<T> {
    /// An empty window covering `span`, capped at [`MAX_WINDOW_ENTRIES`].
    pub(crate) fn new(span: Duration) -> Self {
        Self::with_cap(span, MAX_WINDOW_ENTRIES)
    }

    /// An empty window covering `span` that keeps at most `cap` entries (at least one).
    pub(crate) fn with_cap(span: Duration, cap: usize) -> Self {
        RollingWindow {
            span_ms: millis(span),
            cap: cap.max(1),
            entries: VecDeque::new(),
        }
    }

    /// The span in milliseconds.
    pub(crate) fn span_ms(&self) -> i64 {
        self.span_ms
    }

    /// The oldest time still inside a window that ends at `end` (the window is the
    /// closed range `[end - span, end]`).
    pub(crate) fn cutoff(&self, end: i64) -> i64 {
        end.saturating_sub(self.span_ms)
    }

    /// Drops entries older than `cutoff(end)`, handing each dropped value to `evicted` so
    /// the owner can keep its running aggregates in step.
    #[inline]
    pub(crate) fn expire(&mut self, end: i64, mut evicted: impl FnMut(T)) {
        let cutoff = self.cutoff(end);
        while let Some(&(at, value)) = self.entries.front() {
            if at >= cutoff {
                break;
            }
            self.entries.pop_front();
            evicted(value);
        }
    }

    /// Adds an entry at its place in time. At the cap the oldest entry is dropped first
    /// (handed to `evicted`); an entry older than everything in a full window is not
    /// kept. Returns whether the entry was kept, so the owner counts only kept entries.
    #[inline]
    pub(crate) fn insert(&mut self, at: i64, value: T, mut evicted: impl FnMut(T)) -> bool {
        if self.entries.len() >= self.cap {
            match self.entries.front() {
                Some(&(oldest, _)) if at < oldest => return false,
                _ => {}
            }
            if let Some((_, old)) = self.entries.pop_front() {
                evicted(old);
            }
        }
        match self.entries.back() {
            Some(&(newest, _)) if at < newest => {
                // Late entry: after every entry with the same or an earlier time, so ties
                // keep arrival order.
                let pos = self.entries.partition_point(|e| e.0 <= at);
                self.entries.insert(pos, (at, value));
            }
            _ => self.entries.push_back((at, value)),
        }
        true
    }

    /// Values of entries older than `cutoff` (a prefix, since entries are sorted). Used to
    /// read a window ending later than the last eviction without mutating it.
    pub(crate) fn older_than(&self, cutoff: i64) -> impl Iterator<Item = T> + '_ {
        self.entries
            .iter()
            .take_while(move |e| e.0 < cutoff)
            .map(|e| e.1)
    }

    /// Values of entries at or after `cutoff`.
    pub(crate) fn since(&self, cutoff: i64) -> impl Iterator<Item = T> + '_ {
        self.entries
            .iter()
            .skip_while(move |e| e.0 < cutoff)
            .map(|e| e.1)
    }

    /// Number of entries held.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the window holds no entries.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_and_keeps_order_for_late_entries() {
        let mut w = RollingWindow::new(Duration::from_secs(10));
        let mut gone = Vec::new();
        for at in [0, 5_000, 9_000, 7_000, 9_000] {
            assert!(w.insert(at, at, |v| gone.push(v)));
        }
        let times: Vec<i64> = w.since(i64::MIN).collect();
        assert_eq!(times, vec![0, 5_000, 7_000, 9_000, 9_000]);
        w.expire(15_500, |v| gone.push(v));
        assert_eq!(gone, vec![0, 5_000]);
        assert_eq!(w.len(), 3);
        assert_eq!(w.older_than(8_000).collect::<Vec<_>>(), vec![7_000]);
    }

    #[test]
    fn cap_drops_oldest_and_refuses_older_entries() {
        let mut w = RollingWindow::with_cap(Duration::from_secs(1000), 3);
        let mut gone = Vec::new();
        for at in 0..5 {
            assert!(w.insert(at, at, |v| gone.push(v)));
        }
        assert_eq!(gone, vec![0, 1]);
        assert!(!w.insert(1, 1, |v| gone.push(v)));
        assert_eq!(w.since(i64::MIN).collect::<Vec<_>>(), vec![2, 3, 4]);
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let mut w = RollingWindow::new(Duration::MAX);
        assert!(w.insert(i64::MIN, 1u8, |_| {}));
        assert!(w.insert(i64::MAX, 2u8, |_| {}));
        // The span is clamped to i64::MAX ms, so the far past falls out but nothing panics.
        w.expire(i64::MAX, |_| {});
        assert_eq!(w.len(), 1);
        assert!(!w.is_empty());
        assert_eq!(w.cutoff(i64::MIN), i64::MIN);
    }
}
