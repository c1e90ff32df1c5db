//! The invariant file loader: YAML text through parsing and every validation the agent
//! runs before it starts (`run` and `validate` both go through `load_files`, which is
//! `parse_str` per file after the UTF-8 check). Any input must end in a set or in
//! errors, never a panic or an allocation out of proportion to the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // load_files refuses non-UTF-8 files before parsing; only text reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match invariant_agent::config::parse_str("fuzz.yaml", text) {
        // The docs page is rendered from any valid set (`invariant-agent docs`).
        Ok(set) => drop(invariant_agent::config::markdown_docs(&set)),
        Err(errors) => drop(errors.to_string()),
    }
});
