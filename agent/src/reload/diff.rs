//! What a new invariant set changes against the invariants running now.
//!
//! Invariants are matched by name. One whose spec is the same (see
//! [`Invariant::same_spec`]) is kept: it runs on with its state, schedule and series. One
//! whose spec differs is changed: its entry is retired and a new one starts with fresh
//! state. Names only in the new set are added; names only in the running set are removed.

use crate::config::{Invariant, InvariantSet};

/// The changes between the running invariants and a new set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Diff {
    /// Running invariants the new set declares unchanged: (index, declaration as now
    /// written, whose `source` may have moved).
    pub kept: Vec<(usize, Invariant)>,
    /// Invariants new to the set, in file order.
    pub added: Vec<Invariant>,
    /// Running invariants whose spec changed: (index of the running one, new spec), in
    /// file order.
    pub changed: Vec<(usize, Invariant)>,
    /// Running invariants the new set no longer declares, by index.
    pub removed: Vec<usize>,
}

impl Diff {
    /// Whether nothing starts or stops (the files may still differ in comments, layout or
    /// order).
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }

    /// The invariants that start: added, then changed, in file order each.
    pub fn starting(&self) -> impl Iterator<Item = &Invariant> {
        self.added.iter().chain(self.changed.iter().map(|(_, i)| i))
    }
}

/// Compares `running` (index and declaration of each invariant running now) with `new`.
pub fn diff(running: &[(usize, Invariant)], new: &InvariantSet) -> Diff {
    let mut d = Diff::default();
    for invariant in &new.invariants {
        match running.iter().find(|(_, r)| r.name == invariant.name) {
            Some((index, r)) if r.same_spec(invariant) => {
                d.kept.push((*index, invariant.clone()));
            }
            Some((index, _)) => d.changed.push((*index, invariant.clone())),
            None => d.added.push(invariant.clone()),
        }
    }
    d.removed = running
        .iter()
        .filter(|(_, r)| !new.invariants.iter().any(|i| i.name == r.name))
        .map(|(index, _)| *index)
        .collect();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(invariants: &[(&str, &str)]) -> InvariantSet {
        let mut text =
            "apiVersion: invariant-agent/v1alpha1\nkind: InvariantSet\ninvariants:\n".to_string();
        for (name, interval) in invariants {
            text.push_str(&format!(
                "  - name: {name}\n    description: d\n    owner: o\n    interval: {interval}\n    \
                 probe: {{http: {{url: \"http://127.0.0.1:1/\"}}}}\n    \
                 condition: {{availability: {{target: 100, window: 1m}}}}\n"
            ));
        }
        crate::config::parse_str("f.yaml", &text).unwrap()
    }

    fn running(set: &InvariantSet, first_index: usize) -> Vec<(usize, Invariant)> {
        set.invariants
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, inv)| (first_index + i, inv))
            .collect()
    }

    #[test]
    fn same_names_and_specs_are_kept_even_when_moved_in_the_file() {
        let old = set(&[("a", "1s"), ("b", "1s")]);
        let new = set(&[("b", "1s"), ("a", "1s")]);
        let d = diff(&running(&old, 0), &new);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(
            d.kept
                .iter()
                .map(|(i, inv)| (*i, inv.name.as_str()))
                .collect::<Vec<_>>(),
            [(1, "b"), (0, "a")]
        );
        assert_eq!(d.kept[0].1.source, "f.yaml:4:5", "the new position is kept");
    }

    #[test]
    fn added_changed_and_removed_are_told_apart_by_name_and_spec() {
        let old = set(&[("a", "1s"), ("b", "1s"), ("c", "1s")]);
        let new = set(&[("a", "1s"), ("b", "2s"), ("d", "1s")]);
        let d = diff(&running(&old, 10), &new);
        assert_eq!(d.kept.len(), 1);
        assert_eq!(d.kept[0].0, 10);
        assert_eq!(
            d.added.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            ["d"]
        );
        assert_eq!(d.changed.len(), 1);
        assert_eq!(d.changed[0].0, 11);
        assert_eq!(d.changed[0].1.interval, std::time::Duration::from_secs(2));
        assert_eq!(d.removed, [12]);
        assert_eq!(
            d.starting().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            ["d", "b"]
        );
    }
}
