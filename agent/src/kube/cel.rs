//! CEL expressions of `resource` probes: compiled once when the invariant file is
//! loaded, evaluated on each object when the watch sees it change.
//!
//! The environment is the CEL standard library plus the extensions Kubernetes users know
//! from ValidatingAdmissionPolicy: the cel-go `strings`, `lists` and `math` extensions,
//! and Kubernetes' list functions `sum()`, `min()` and `max()`. The object is bound to
//! the variable `object`, as in admission policies, converted from its JSON form (without
//! `metadata.managedFields`): integers are `int`, other numbers `double`.
//!
//! A result is a number or a boolean (`true` counts as 1, `false` as 0); anything else,
//! and any evaluation error (a missing field is the usual one), is an error for that
//! object, which the probe reports instead of a value.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use cel::common::types::{CelDouble, CelInt, CelUInt, LIST_TYPE};
use cel::common::value::CowVal;
use cel::objects::{Key, Map};
use cel::{Context, Env, ExecutionError, Program, Value};

/// A compiled CEL expression, kept with its source text.
#[derive(Clone)]
pub struct CelExpression {
    source: String,
    program: Arc<Program>,
}

impl fmt::Debug for CelExpression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CelExpression").field(&self.source).finish()
    }
}

impl PartialEq for CelExpression {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// The environment every expression is compiled and evaluated in, built once.
fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Env::stdlib();
        // These only fail on a name declared twice, which a fixed set cannot do; a
        // failure would leave the functions out and every use of them an error.
        let added = env
            .add_extension(cel::extensions::strings)
            .and_then(|()| env.add_extension(cel::extensions::lists))
            .and_then(|()| env.add_extension(cel::extensions::math))
            .and_then(|()| kubernetes_lists(&mut env));
        if let Err(e) = added {
            tracing::error!(error = %e, "CEL extensions could not be registered (a bug)");
        }
        Arc::new(env)
    })
}

impl CelExpression {
    /// Compiles `source`; the error names the position inside the expression.
    pub fn compile(source: &str) -> Result<Self, String> {
        let program = env().compile(source).map_err(|errors| {
            let multiline = source.contains('\n');
            let problems: Vec<String> = errors
                .errors
                .iter()
                .map(|e| {
                    let (line, column) = e.pos;
                    let at = if multiline {
                        format!("line {line}, column {column}")
                    } else {
                        format!("character {column}")
                    };
                    format!("{} at {at}", e.msg)
                })
                .collect();
            format!("invalid CEL expression: {}", problems.join("; "))
        })?;
        Ok(CelExpression {
            source: source.to_string(),
            program: Arc::new(program),
        })
    }

    /// The expression as written in the invariant file.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Evaluates the expression with `object` bound to `object`: a number, or 1/0 for
    /// a boolean.
    pub fn evaluate(&self, object: &serde_json::Value) -> Result<f64, String> {
        self.evaluate_value(json_to_cel(object))
    }

    /// As [`Self::evaluate`], for an object already converted to CEL.
    pub fn evaluate_value(&self, object: Value) -> Result<f64, String> {
        let mut context = Context::with_env(env().clone());
        context.add_variable_from_value("object", object);
        let result = self.program.execute(&context).map_err(execution_message)?;
        match result {
            Value::Bool(b) => Ok(if b { 1.0 } else { 0.0 }),
            Value::Int(i) => Ok(i as f64),
            Value::UInt(u) => Ok(u as f64),
            Value::Float(f) if f.is_finite() => Ok(f),
            Value::Float(f) => Err(format!("the expression yields {f}, not a finite number")),
            other => Err(format!(
                "the expression yields a {}, not a number or boolean",
                other.type_of()
            )),
        }
    }
}

/// A short message for an evaluation error, with a hint for the common mistakes.
fn execution_message(error: ExecutionError) -> String {
    match error {
        ExecutionError::NoSuchKey(key) => format!(
            "no such key: {key} (guard optional fields with has(), e.g. \
             has(object.status.x) && ...)"
        ),
        other => other.to_string(),
    }
}

/// Converts a JSON value to CEL: integers that fit are `int`, larger ones `uint`, other
/// numbers `double`.
pub fn json_to_cel(value: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match value {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        J::String(s) => Value::String(Arc::new(s.clone())),
        J::Array(items) => Value::List(Arc::new(items.iter().map(json_to_cel).collect())),
        J::Object(fields) => {
            let map: HashMap<Key, Value> = fields
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v)))
                .collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

// ----- Kubernetes' list library: sum(), min(), max() -----------------------------------

/// Registers `list.sum()`, `list.min()` and `list.max()` as Kubernetes defines them:
/// the elements are all `int`, all `uint` or all `double`; `sum()` of an empty list is
/// 0, `min()` and `max()` of one are errors.
fn kubernetes_lists(env: &mut Env) -> Result<(), cel::DeclarationError> {
    env.add_member_overload("sum", "list.sum()", LIST_TYPE, vec![], list_sum)?;
    env.add_member_overload("min", "list.min()", LIST_TYPE, vec![], list_min)?;
    env.add_member_overload("max", "list.max()", LIST_TYPE, vec![], list_max)?;
    Ok(())
}

/// The numbers of a list, all of one type.
enum Numbers {
    Int(Vec<i64>),
    UInt(Vec<u64>),
    Double(Vec<f64>),
}

fn numbers(function: &str, args: &[CowVal<'_, '_>]) -> Result<Numbers, ExecutionError> {
    let [list] = args else {
        return Err(ExecutionError::invalid_argument_count(1, args.len()));
    };
    let Value::List(items) = Value::try_from(list.as_ref())? else {
        return Err(ExecutionError::function_error(function, "expects a list"));
    };
    let mixed = || {
        ExecutionError::function_error(
            function,
            "the list must hold numbers of one type (all int, all uint or all double)",
        )
    };
    Ok(match items.first() {
        None | Some(Value::Int(_)) => Numbers::Int(
            items
                .iter()
                .map(|v| match v {
                    Value::Int(i) => Ok(*i),
                    _ => Err(mixed()),
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(Value::UInt(_)) => Numbers::UInt(
            items
                .iter()
                .map(|v| match v {
                    Value::UInt(u) => Ok(*u),
                    _ => Err(mixed()),
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(Value::Float(_)) => Numbers::Double(
            items
                .iter()
                .map(|v| match v {
                    Value::Float(f) => Ok(*f),
                    _ => Err(mixed()),
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(_) => return Err(mixed()),
    })
}

fn list_sum<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let overflow = || ExecutionError::function_error("sum", "integer overflow");
    Ok(match numbers("sum", &args)? {
        Numbers::Int(v) => CowVal::owned(CelInt::from(
            v.iter()
                .try_fold(0i64, |acc, x| acc.checked_add(*x))
                .ok_or_else(overflow)?,
        )),
        Numbers::UInt(v) => CowVal::owned(CelUInt::from(
            v.iter()
                .try_fold(0u64, |acc, x| acc.checked_add(*x))
                .ok_or_else(overflow)?,
        )),
        Numbers::Double(v) => CowVal::owned(CelDouble::from(v.iter().sum::<f64>())),
    })
}

fn list_min<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    extreme("min", args, false)
}

fn list_max<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    extreme("max", args, true)
}

/// The smallest (or, with `largest`, the largest) element; the first of equal ones.
fn extreme<'b, 'v>(
    function: &str,
    args: Vec<CowVal<'b, 'v>>,
    largest: bool,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    fn pick<T: Copy + PartialOrd>(v: &[T], largest: bool) -> Option<T> {
        v.iter().copied().reduce(|a, b| {
            if (largest && b > a) || (!largest && b < a) {
                b
            } else {
                a
            }
        })
    }
    let empty = || ExecutionError::function_error(function, "the list is empty");
    Ok(match numbers(function, &args)? {
        Numbers::Int(v) => CowVal::owned(CelInt::from(pick(&v, largest).ok_or_else(empty)?)),
        Numbers::UInt(v) => CowVal::owned(CelUInt::from(pick(&v, largest).ok_or_else(empty)?)),
        Numbers::Double(v) => CowVal::owned(CelDouble::from(pick(&v, largest).ok_or_else(empty)?)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(expression: &str, object: serde_json::Value) -> Result<f64, String> {
        CelExpression::compile(expression)
            .unwrap()
            .evaluate(&object)
    }

    #[test]
    fn booleans_count_as_one_and_zero() {
        let node = json!({"status": {"conditions": [
            {"type": "Ready", "status": "False"},
            {"type": "DiskPressure", "status": "False"},
        ]}});
        let not_ready =
            r#"!object.status.conditions.exists(c, c.type == "Ready" && c.status == "True")"#;
        assert_eq!(eval(not_ready, node.clone()), Ok(1.0));
        assert_eq!(eval("object.status.conditions.size() == 2", node), Ok(1.0));
        assert_eq!(eval("false", json!({})), Ok(0.0));
    }

    #[test]
    fn numbers_from_json_are_int_or_double() {
        let pod = json!({"status": {"containerStatuses": [
            {"restartCount": 3}, {"restartCount": 4}
        ], "ratio": 0.25}});
        assert_eq!(
            eval(
                "object.status.containerStatuses.map(s, s.restartCount).sum()",
                pod.clone()
            ),
            Ok(7.0)
        );
        assert_eq!(
            eval(
                "object.status.containerStatuses[0].restartCount > 2",
                pod.clone()
            ),
            Ok(1.0)
        );
        assert_eq!(eval("object.status.ratio * 2.0", pod.clone()), Ok(0.5));
        assert_eq!(
            eval(
                "object.status.containerStatuses.map(s, s.restartCount).max()",
                pod
            ),
            Ok(4.0)
        );
        assert_eq!(
            eval("18446744073709551615u", json!({})),
            Ok(u64::MAX as f64)
        );
    }

    #[test]
    fn kubernetes_list_functions() {
        let cases = [
            ("[].sum()", Ok(0.0)),
            ("[1.5, 2.5].sum()", Ok(4.0)),
            ("[3u, 1u].min()", Ok(1.0)),
            ("[2, -7, 5].min()", Ok(-7.0)),
            ("[2, 9, 5].max()", Ok(9.0)),
        ];
        for (expression, expected) in cases {
            assert_eq!(eval(expression, json!({})), expected, "{expression}");
        }
        for (expression, message) in [
            ("[].max()", "the list is empty"),
            ("[1, 2.0].sum()", "numbers of one type"),
            ("['a'].sum()", "numbers of one type"),
            ("[9223372036854775807, 1].sum()", "integer overflow"),
        ] {
            let e = eval(expression, json!({})).unwrap_err();
            assert!(e.contains(message), "{expression}: {e}");
        }
    }

    #[test]
    fn extensions_kubernetes_users_expect() {
        let o = json!({"metadata": {"name": "kube-dns-7c9f", "labels": {"tier": "node"}}});
        assert_eq!(
            eval("object.metadata.name.startsWith('kube-dns')", o.clone()),
            Ok(1.0)
        );
        assert_eq!(
            eval("object.metadata.name.matches('^kube-.*$')", o.clone()),
            Ok(1.0)
        );
        assert_eq!(
            eval("object.metadata.name.lowerAscii().size()", o.clone()),
            Ok(13.0)
        );
        assert_eq!(eval("'tier' in object.metadata.labels", o.clone()), Ok(1.0));
        assert_eq!(eval("math.greatest(1, 5, 3)", o), Ok(5.0));
    }

    #[test]
    fn results_that_are_not_numbers_are_errors() {
        let o = json!({"metadata": {"name": "a"}});
        assert_eq!(
            eval("object.metadata.name", o.clone()),
            Err("the expression yields a string, not a number or boolean".to_string())
        );
        assert_eq!(
            eval("1.0 / 0.0", o.clone()),
            Err("the expression yields inf, not a finite number".to_string())
        );
        let missing = eval("object.status.phase == 'Running'", o).unwrap_err();
        assert!(
            missing.starts_with("no such key: status (guard optional fields with has()"),
            "{missing}"
        );
    }

    #[test]
    fn compile_errors_name_the_position() {
        let e = CelExpression::compile("object.status.x ==").unwrap_err();
        assert!(e.starts_with("invalid CEL expression: "), "{e}");
        assert!(e.contains("at character 19"), "{e}");
        let e = CelExpression::compile("object.a &&\n  (").unwrap_err();
        assert!(e.contains("at line 2, column"), "{e}");
    }

    /// The examples of docs/invariant-file.md do what the table says.
    #[test]
    fn documented_examples() {
        let restarts = "has(object.status.containerStatuses) ? \
                        object.status.containerStatuses.map(s, s.restartCount).sum() : 0";
        assert_eq!(
            eval(
                restarts,
                json!({"status": {"containerStatuses": [{"restartCount": 2}]}})
            ),
            Ok(2.0)
        );
        assert_eq!(
            eval(restarts, json!({"status": {"phase": "Pending"}})),
            Ok(0.0)
        );
        let no_ready = "has(object.endpoints) && object.endpoints.exists(e, \
                        has(e.conditions.ready) && e.conditions.ready) ? 0 : 1";
        let slice = |ready: serde_json::Value| json!({"endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": ready}}]});
        assert_eq!(eval(no_ready, slice(json!(true))), Ok(0.0));
        assert_eq!(eval(no_ready, slice(json!(false))), Ok(1.0));
        assert_eq!(
            eval(no_ready, json!({"endpoints": [{"conditions": {}}]})),
            Ok(1.0)
        );
        assert_eq!(eval(no_ready, json!({"addressType": "IPv4"})), Ok(1.0));
        let short = "object.spec.replicas - \
                     (has(object.status.readyReplicas) ? object.status.readyReplicas : 0)";
        assert_eq!(
            eval(
                short,
                json!({"spec": {"replicas": 3}, "status": {"readyReplicas": 1}})
            ),
            Ok(2.0)
        );
        assert_eq!(
            eval(short, json!({"spec": {"replicas": 2}, "status": {}})),
            Ok(2.0)
        );
    }

    #[test]
    fn expressions_compare_by_source() {
        let a = CelExpression::compile("1 + 1").unwrap();
        assert_eq!(a, CelExpression::compile("1 + 1").unwrap());
        assert_ne!(a, CelExpression::compile("2").unwrap());
        assert_eq!(a.as_str(), "1 + 1");
    }
}
