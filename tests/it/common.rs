//! Shared helpers: temporary project trees and service availability.

use std::path::{Path, PathBuf};

use conflux::config::{self, Config};
use tempfile::TempDir;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A temporary copy of the shipped project files (config, connectors, mappings, demo data),
/// so a test can run and modify them without touching the repository.
pub fn project_copy() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["config", "connectors", "mappings", "demo"] {
        copy_dir(&repo_root().join(sub), &dir.path().join(sub));
    }
    dir
}

/// An empty project tree with the given files written into it.
pub fn project_with(files: &[(&str, &[u8])]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["config", "connectors", "mappings"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    for (path, content) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    dir
}

pub fn load(project: &Path, config_file: &str) -> Config {
    match config::load(&project.join(config_file)) {
        Ok(config) => config,
        Err(diagnostics) => panic!("config does not load:\n{diagnostics}"),
    }
}

/// The RabbitMQ URL for tests, or `None` (with a message) when the broker is unreachable
/// and services are not required. With `CONFLUX_REQUIRE_SERVICES=1` (set by CI) an
/// unreachable broker fails the test.
pub fn amqp_url() -> Option<String> {
    let url = std::env::var("CONFLUX_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let reachable = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:5672".parse().unwrap(),
        std::time::Duration::from_secs(2),
    )
    .is_ok();
    if reachable {
        return Some(url);
    }
    if std::env::var("CONFLUX_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!(
            "RabbitMQ is required (CONFLUX_REQUIRE_SERVICES=1) but 127.0.0.1:5672 is unreachable"
        );
    }
    eprintln!("skipping: RabbitMQ not reachable at 127.0.0.1:5672");
    None
}

/// Reads an NDJSON feed file into JSON values.
pub fn read_feed(path: &Path) -> Vec<serde_json::Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The PostgreSQL URL for tests, or `None` (with a message) when the server is unreachable
/// and services are not required (see [`amqp_url`]).
pub fn postgres_url() -> Option<String> {
    let url = std::env::var("CONFLUX_TEST_PG_URL")
        .or_else(|_| std::env::var("CONFLUX_TEST_POSTGRES_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let reachable = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:5432".parse().unwrap(),
        std::time::Duration::from_secs(2),
    )
    .is_ok();
    if reachable {
        return Some(url);
    }
    if std::env::var("CONFLUX_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!(
            "PostgreSQL is required (CONFLUX_REQUIRE_SERVICES=1) but 127.0.0.1:5432 is unreachable"
        );
    }
    eprintln!("skipping: PostgreSQL not reachable at 127.0.0.1:5432");
    None
}
