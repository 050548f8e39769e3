//! The mapping engine: a mapping file and a JSON record, separated by a line `---`. Parsing
//! either may fail; applying a parsed mapping to a parsed record must never panic.
#![no_main]

use conflux::mapper::{MapContext, Mapping};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (mapping, record) = text.split_once("\n---\n").unwrap_or((text, "{}"));
    let Ok(mapping) = Mapping::parse("fuzz.customer", mapping) else {
        return;
    };
    let Ok(record) = serde_json::from_str::<serde_json::Value>(record) else {
        return;
    };
    let empty = [serde_json::Value::String(String::new())];
    let ctx = MapContext {
        system: "fuzz",
        stream: "customers",
        empty_values: &empty,
    };
    let _ = mapping.apply(&record, &ctx);
    let _ = mapping.run_tests(&ctx);
});
