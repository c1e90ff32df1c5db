//! The `resource` probe: objects of one kind, each reduced to a number by a CEL
//! expression when the watch sees it change, aggregated to the sample's value.
//!
//! Values are computed when objects change, not when samples are taken, so a sample
//! costs one pass over a number per object however complex the expression, and an
//! unchanged cluster costs nothing. An object whose expression fails (most often a
//! missing field) fails the sample, naming the object: a value computed without it would
//! be silently wrong.
//!
//! `cumulativeSum` makes a counter kept on objects (restart counts) a counter of the run:
//! an object deleted, or replaced by one of the same name (a new uid), keeps counting at
//! its last value, so deleting a pod does not look like a counter reset.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;

use super::KubeContext;
use super::cel::CelExpression;
use super::watch::{Change, Consumer, ObjectKey, SharedWatch, WatchKey, WatchedObject, lock};
use crate::config::spec::{ResourceAggregation, ResourceProbeSpec};
use crate::probe::{Probe, ProbeFuture};
use crate::sample::{ErrorClass, Observation, ProbeError};

/// The `resource` probe.
#[derive(Debug)]
pub struct ResourceProbe {
    watch: Arc<SharedWatch>,
    values: Arc<ObjectValues>,
    aggregation: ResourceAggregation,
}

impl ResourceProbe {
    /// Subscribes to the watch of `spec`'s objects (shared with every other probe of
    /// the same objects).
    pub fn new(spec: &ResourceProbeSpec, kube: &KubeContext) -> Self {
        let key = WatchKey {
            api_version: spec.api_version.clone(),
            kind: spec.kind.clone(),
            namespace: spec.namespace.clone(),
            label_selector: spec.label_selector.clone(),
            field_selector: spec.field_selector.clone(),
        };
        let watch = kube.watches().watch(key);
        let values = Arc::new(ObjectValues::new(
            spec.expression.clone(),
            spec.kind.clone(),
        ));
        watch.subscribe(values.clone());
        ResourceProbe {
            watch,
            values,
            aggregation: spec.aggregation,
        }
    }

    async fn run(&self) -> Observation {
        if let Err(e) = self.watch.wait_synced().await {
            return Observation::Failed(e);
        }
        self.values.aggregate(self.aggregation)
    }
}

impl Probe for ResourceProbe {
    fn observe(&self) -> ProbeFuture<'_> {
        self.run().boxed()
    }
}

/// One invariant's value per object, kept current by the watch.
pub struct ObjectValues {
    expression: CelExpression,
    kind: String,
    state: Mutex<ValuesState>,
}

impl std::fmt::Debug for ObjectValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectValues")
            .field("expression", &self.expression)
            .field("objects", &lock(&self.state).current.len())
            .finish()
    }
}

/// The value (or evaluation error) of each object, sorted so the first failing object
/// named in a message is stable.
type Values = BTreeMap<ObjectKey, ObjectValue>;

/// One object's value, with the uid that tells a replaced object from a changed one.
#[derive(Debug)]
struct ObjectValue {
    uid: String,
    value: Result<f64, String>,
}

#[derive(Default)]
struct ValuesState {
    current: Values,
    /// Values of a list in progress; they replace `current` when the list completes.
    relist: Option<Values>,
    /// Last values of the objects deleted or replaced during the run (`cumulativeSum`).
    gone: f64,
}

impl ValuesState {
    /// Counts the value of an object that is gone (deleted, or replaced by a new uid).
    fn gone(&mut self, old: &ObjectValue) {
        if let Ok(v) = old.value {
            self.gone += v;
        }
    }
}

impl ObjectValues {
    /// Values of `expression` on objects of `kind` (the kind names objects in messages).
    pub fn new(expression: CelExpression, kind: String) -> Self {
        ObjectValues {
            expression,
            kind,
            state: Mutex::new(ValuesState::default()),
        }
    }

    /// Reduces the current values: `sum` (0 for no objects), `max`/`min` (absent for no
    /// objects), `count` (objects whose value is non-zero). Any object whose expression
    /// failed fails the sample.
    pub fn aggregate(&self, aggregation: ResourceAggregation) -> Observation {
        let state = lock(&self.state);
        aggregate(&state.current, state.gone, aggregation, &self.kind)
    }

    fn value_of(&self, object: &WatchedObject) -> ObjectValue {
        ObjectValue {
            uid: object.object["metadata"]["uid"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            value: self.expression.evaluate(&object.object),
        }
    }
}

impl Consumer for ObjectValues {
    fn apply(&self, change: Change<'_>) {
        let mut state = lock(&self.state);
        match change {
            Change::Relisting => state.relist = Some(Values::new()),
            Change::Listed(o) => {
                let value = self.value_of(o);
                state
                    .relist
                    .get_or_insert_with(Values::new)
                    .insert(o.key.clone(), value);
            }
            Change::Relisted => {
                if let Some(values) = state.relist.take() {
                    // Objects deleted or replaced while the watch was not looking.
                    let old = std::mem::replace(&mut state.current, values);
                    for (key, old) in old {
                        let same = state
                            .current
                            .get(&key)
                            .is_some_and(|new| new.uid == old.uid);
                        if !same {
                            state.gone(&old);
                        }
                    }
                }
            }
            Change::Applied(o) => {
                let value = self.value_of(o);
                let uid = value.uid.clone();
                if let Some(old) = state.current.insert(o.key.clone(), value)
                    && old.uid != uid
                {
                    state.gone(&old);
                }
            }
            Change::Deleted(o) => {
                if let Some(old) = state.current.remove(&o.key) {
                    state.gone(&old);
                }
            }
        }
    }
}

/// The aggregation of `values`, with `gone` the last values of objects no longer there
/// (see [`ObjectValues::aggregate`]).
fn aggregate(
    values: &Values,
    gone: f64,
    aggregation: ResourceAggregation,
    kind: &str,
) -> Observation {
    let mut failures = values
        .iter()
        .filter_map(|(k, v)| v.value.as_ref().err().map(|e| (k, e)));
    if let Some((key, error)) = failures.next() {
        let more = failures.count();
        let others = match more {
            0 => String::new(),
            1 => " (and on 1 more object)".to_string(),
            n => format!(" (and on {n} more objects)"),
        };
        return Observation::Failed(ProbeError::new(
            ErrorClass::Expression,
            format!("expression failed on {kind} {key}: {error}{others}"),
        ));
    }
    let numbers = values
        .values()
        .filter_map(|v| v.value.as_ref().ok().copied());
    let value = match aggregation {
        ResourceAggregation::Sum => Some(numbers.sum()),
        ResourceAggregation::CumulativeSum => Some(numbers.sum::<f64>() + gone),
        ResourceAggregation::Count => Some(numbers.filter(|v| *v != 0.0).count() as f64),
        ResourceAggregation::Max => numbers.reduce(f64::max),
        ResourceAggregation::Min => numbers.reduce(f64::min),
    };
    match value {
        Some(value) => Observation::Ok { value: Some(value) },
        None => Observation::Absent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(namespace: Option<&str>, name: &str, body: serde_json::Value) -> WatchedObject {
        WatchedObject {
            key: ObjectKey {
                namespace: namespace.map(str::to_string),
                name: name.to_string(),
            },
            object: body,
        }
    }

    fn node(name: &str, ready: &str) -> WatchedObject {
        object(
            None,
            name,
            json!({"kind": "Node", "metadata": {"name": name}, "status": {"conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": ready},
            ]}}),
        )
    }

    fn not_ready() -> ObjectValues {
        let expression = CelExpression::compile(
            r#"!object.status.conditions.exists(c, c.type == "Ready" && c.status == "True")"#,
        )
        .unwrap();
        ObjectValues::new(expression, "Node".into())
    }

    fn value(values: &ObjectValues, aggregation: ResourceAggregation) -> Observation {
        values.aggregate(aggregation)
    }

    #[test]
    fn counts_nodes_that_are_not_ready_as_they_change() {
        let values = not_ready();
        values.apply(Change::Relisting);
        for n in [node("a", "True"), node("b", "False"), node("c", "Unknown")] {
            values.apply(Change::Listed(&n));
        }
        // Nothing is visible until the list completes.
        assert_eq!(
            value(&values, ResourceAggregation::Sum),
            Observation::Ok { value: Some(0.0) }
        );
        values.apply(Change::Relisted);
        assert_eq!(
            value(&values, ResourceAggregation::Sum),
            Observation::Ok { value: Some(2.0) }
        );
        assert_eq!(
            value(&values, ResourceAggregation::Count),
            Observation::Ok { value: Some(2.0) }
        );

        values.apply(Change::Applied(&node("b", "True")));
        assert_eq!(
            value(&values, ResourceAggregation::Sum),
            Observation::Ok { value: Some(1.0) }
        );
        values.apply(Change::Deleted(&node("c", "Unknown")));
        assert_eq!(
            value(&values, ResourceAggregation::Sum),
            Observation::Ok { value: Some(0.0) }
        );
        assert_eq!(
            value(&values, ResourceAggregation::Max),
            Observation::Ok { value: Some(0.0) }
        );

        // A relist replaces the whole set: objects not listed again are gone.
        values.apply(Change::Relisting);
        values.apply(Change::Listed(&node("d", "False")));
        values.apply(Change::Relisted);
        assert_eq!(
            value(&values, ResourceAggregation::Sum),
            Observation::Ok { value: Some(1.0) }
        );
    }

    #[test]
    fn sums_container_restarts() {
        let values = ObjectValues::new(
            CelExpression::compile(
                "has(object.status.containerStatuses) ? \
                 object.status.containerStatuses.map(s, s.restartCount).sum() : 0",
            )
            .unwrap(),
            "Pod".into(),
        );
        let pod = |name: &str, restarts: &[i64]| {
            let statuses: Vec<_> = restarts
                .iter()
                .map(|r| json!({"name": "c", "restartCount": r}))
                .collect();
            object(
                Some("kube-system"),
                name,
                json!({"status": {"containerStatuses": statuses}}),
            )
        };
        values.apply(Change::Relisting);
        values.apply(Change::Listed(&pod("dns", &[1, 2])));
        values.apply(Change::Listed(&pod("proxy", &[4])));
        values.apply(Change::Listed(&object(
            Some("kube-system"),
            "pending",
            json!({"status": {}}),
        )));
        values.apply(Change::Relisted);
        assert_eq!(
            value(&values, ResourceAggregation::Sum),
            Observation::Ok { value: Some(7.0) }
        );
        assert_eq!(
            value(&values, ResourceAggregation::Max),
            Observation::Ok { value: Some(4.0) }
        );
        assert_eq!(
            value(&values, ResourceAggregation::Min),
            Observation::Ok { value: Some(0.0) }
        );
        assert_eq!(
            value(&values, ResourceAggregation::Count),
            Observation::Ok { value: Some(2.0) }
        );
    }

    #[test]
    fn cumulative_sums_keep_deleted_and_replaced_objects() {
        let values = ObjectValues::new(
            CelExpression::compile("object.status.restarts").unwrap(),
            "Pod".into(),
        );
        let pod = |name: &str, uid: &str, restarts: i64| {
            object(
                Some("kube-system"),
                name,
                json!({"metadata": {"uid": uid}, "status": {"restarts": restarts}}),
            )
        };
        let total = |values: &ObjectValues| values.aggregate(ResourceAggregation::CumulativeSum);
        values.apply(Change::Relisting);
        values.apply(Change::Listed(&pod("dns", "u1", 3)));
        values.apply(Change::Listed(&pod("proxy", "u2", 1)));
        values.apply(Change::Relisted);
        assert_eq!(total(&values), Observation::Ok { value: Some(4.0) });
        // Deleted: its 3 restarts still count; the plain sum drops.
        values.apply(Change::Deleted(&pod("dns", "u1", 3)));
        assert_eq!(total(&values), Observation::Ok { value: Some(4.0) });
        assert_eq!(
            values.aggregate(ResourceAggregation::Sum),
            Observation::Ok { value: Some(1.0) }
        );
        // Replaced under the same name: the old pod's restarts still count.
        values.apply(Change::Applied(&pod("proxy", "u3", 0)));
        assert_eq!(total(&values), Observation::Ok { value: Some(4.0) });
        values.apply(Change::Applied(&pod("proxy", "u3", 2)));
        assert_eq!(total(&values), Observation::Ok { value: Some(6.0) });
        // A relist after an outage: "proxy" was replaced again and "new" appeared.
        values.apply(Change::Relisting);
        values.apply(Change::Listed(&pod("proxy", "u4", 1)));
        values.apply(Change::Listed(&pod("new", "u5", 0)));
        values.apply(Change::Relisted);
        assert_eq!(total(&values), Observation::Ok { value: Some(7.0) });
    }

    #[test]
    fn no_objects_is_zero_for_sum_and_count_and_absent_for_max_and_min() {
        let values = not_ready();
        values.apply(Change::Relisting);
        values.apply(Change::Relisted);
        assert_eq!(
            value(&values, ResourceAggregation::Sum),
            Observation::Ok { value: Some(0.0) }
        );
        assert_eq!(
            value(&values, ResourceAggregation::Count),
            Observation::Ok { value: Some(0.0) }
        );
        assert_eq!(
            value(&values, ResourceAggregation::Max),
            Observation::Absent
        );
        assert_eq!(
            value(&values, ResourceAggregation::Min),
            Observation::Absent
        );
    }

    #[test]
    fn a_failing_expression_fails_the_sample_naming_the_object() {
        let values = not_ready();
        values.apply(Change::Relisting);
        values.apply(Change::Listed(&node("a", "True")));
        values.apply(Change::Listed(&object(
            None,
            "b",
            json!({"metadata": {"name": "b"}}),
        )));
        values.apply(Change::Listed(&object(
            None,
            "c",
            json!({"metadata": {"name": "c"}}),
        )));
        values.apply(Change::Relisted);
        let Observation::Failed(e) = value(&values, ResourceAggregation::Sum) else {
            panic!("expected a failure");
        };
        assert_eq!(e.class, ErrorClass::Expression);
        assert!(
            e.message
                .starts_with("expression failed on Node b: no such key: status"),
            "{e}"
        );
        assert!(e.message.ends_with("(and on 1 more object)"), "{e}");
        // Fixing the objects fixes the samples.
        values.apply(Change::Applied(&node("b", "True")));
        values.apply(Change::Deleted(&node("c", "True")));
        assert_eq!(
            value(&values, ResourceAggregation::Sum),
            Observation::Ok { value: Some(0.0) }
        );
    }
}
