//! The config loader: a config file and a connector file, separated by a line `---`, in a
//! fresh project tree. Loading may report diagnostics; it must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (config, connector) = match data.windows(5).position(|w| w == b"\n---\n") {
        Some(at) => (&data[..at], &data[at + 5..]),
        None => (data, &b""[..]),
    };
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let root = dir.path();
    for sub in ["config", "connectors", "mappings"] {
        if std::fs::create_dir(root.join(sub)).is_err() {
            return;
        }
    }
    let written = std::fs::write(root.join("config/fuzz.toml"), config).and_then(|()| {
        std::fs::write(root.join("connectors/erp.toml"), connector)
    });
    if written.is_ok() {
        let _ = conflux::config::load(&root.join("config/fuzz.toml"));
    }
});
