//! Fuzzes the whole loader: YAML parsing, decoding, validation, registry and analysis.
//! Any input must end in diagnostics or a snapshot, never in a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_config::ConfigSet;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut set = ConfigSet::new();
    set.add_str("fuzz.yaml", &text);
    let checked = set.check();
    let _ = mesh_config::diag::render(&checked.diagnostics, Default::default());
    assert_eq!(checked.snapshot.is_some(), !checked.has_errors());
});
