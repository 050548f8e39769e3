//! Shared helpers: temporary project trees and service availability.

use std::path::{Path, PathBuf};

use conflux::config::{self, Config, StoreConfig};
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
        Ok(config) => on_test_store(config),
        Err(diagnostics) => panic!("config does not load:\n{diagnostics}"),
    }
}

/// With `CONFLUX_TEST_STORE=postgres`, a config's SQLite store becomes a PostgreSQL schema
/// named after the database file (so every load of one test's project meets the same
/// schema): the pipeline tests then run on PostgreSQL. Their schemas are named `t_suite_*`
/// and outlive the test (its tempdir has no hook for them); the first load of the next such
/// run drops them all.
fn on_test_store(mut config: Config) -> Config {
    if std::env::var("CONFLUX_TEST_STORE").as_deref() != Ok("postgres") {
        return config;
    }
    let StoreConfig::Sqlite { path } = &config.store else {
        return config;
    };
    let url = postgres_url().expect("CONFLUX_TEST_STORE=postgres needs PostgreSQL");
    static LEFTOVERS_DROPPED: std::sync::Once = std::sync::Once::new();
    LEFTOVERS_DROPPED.call_once(|| drop_suite_schemas(&url));
    let hash = blake3::hash(path.to_string_lossy().as_bytes()).to_hex();
    let schema = format!("t_suite_{}", &hash[..20]);
    config.store = StoreConfig::Postgres {
        url,
        schema: Some(schema),
        pool_size: 4,
    };
    config
}

/// Drops the `t_suite_*` schemas earlier runs of [`load`] on PostgreSQL left behind.
fn drop_suite_schemas(url: &str) {
    let url = url.to_string();
    let names = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let pool = sqlx::PgPool::connect(&url).await.unwrap();
                let names: Vec<String> = sqlx::query_scalar(
                    "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 't\\_suite\\_%'",
                )
                .fetch_all(&pool)
                .await
                .unwrap();
                (url, names)
            })
    })
    .join()
    .unwrap();
    for schema in &names.1 {
        drop_schema(&names.0, schema);
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

/// Drops a test schema and everything in it (on its own thread and runtime, so it works from
/// `Drop`, also while a failed test unwinds).
pub fn drop_schema(url: &str, schema: &str) {
    let (url, schema) = (url.to_string(), schema.to_string());
    let dropped = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let pool = sqlx::PgPool::connect(&url).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                )))
                .execute(&pool)
                .await?;
                pool.close().await;
                Ok::<(), sqlx::Error>(())
            })
    })
    .join();
    if let Ok(Err(error)) = dropped {
        eprintln!("cannot drop test schema: {error}");
    }
}
