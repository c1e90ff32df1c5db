//! CEL expressions of `resource` probes: compiled when the invariant file is loaded, then
//! evaluated on each watched object. The input is the expression, optionally followed by
//! a NUL byte and the object as JSON; without one (or with JSON that does not parse) the
//! expression is evaluated on a small Node.
#![no_main]

use invariant_agent::kube::cel::CelExpression;
use libfuzzer_sys::fuzz_target;

const NODE: &str = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1","labels":{"a":"b"}},
"status":{"conditions":[{"type":"Ready","status":"True"},{"type":"DiskPressure","status":"False"}],
"capacity":{"cpu":"4","pods":110},"allocatable":{"cpu":"3.5"},"replicas":3,"readyReplicas":2}}"#;

fuzz_target!(|data: &[u8]| {
    let (expression, object) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(expression) = std::str::from_utf8(expression) else {
        return;
    };
    let Ok(compiled) = CelExpression::compile(expression) else {
        return;
    };
    let object = serde_json::from_slice(object)
        .unwrap_or_else(|_| serde_json::from_str(NODE).expect("the fixed Node is JSON"));
    let _ = std::hint::black_box(compiled.evaluate(&object));
});
