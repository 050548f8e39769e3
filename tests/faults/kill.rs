//! The daemon killed with SIGKILL in the middle of a run and started again: no record,
//! profile version or event is lost, and the final state equals an uninterrupted run's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use conflux::pipeline;

use crate::common::{load, project_copy, read_feed};
use crate::{SERIAL, final_profiles, write_bulk_shop_export};

const CUSTOMERS: usize = 30_000;

fn daemon(project: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_conflux"))
        .args(["--config", "config/demo.toml", "daemon", "--grace", "60s"])
        .current_dir(project)
        .env_remove("CONFLUX_CONFIG")
        .env("CONFLUX_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// How many records the store holds, or 0 while it cannot be read.
async fn stored_records(db: &Path) -> i64 {
    let Ok(pool) = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display())).await
    else {
        return 0;
    };
    let count = sqlx::query_scalar("SELECT count(*) FROM records")
        .fetch_one(&pool)
        .await
        .unwrap_or(0);
    pool.close().await;
    count
}

async fn table_counts(db: &Path) -> BTreeMap<&'static str, i64> {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for (name, sql) in [
        ("records", "SELECT count(*) FROM records"),
        ("quarantine", "SELECT count(*) FROM quarantine"),
        ("profile_versions", "SELECT count(*) FROM profile_versions"),
        ("outbox", "SELECT count(*) FROM outbox"),
        (
            "undelivered",
            "SELECT count(*) FROM outbox WHERE delivered_at IS NULL",
        ),
    ] {
        out.insert(
            name,
            sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap(),
        );
    }
    pool.close().await;
    out
}

/// The event ids of the outbox.
async fn outbox_ids(db: &Path) -> BTreeSet<String> {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .unwrap();
    let ids: Vec<String> = sqlx::query_scalar("SELECT event_id FROM outbox")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    ids.into_iter().collect()
}

/// The project with its job every second and a large shop export.
fn project() -> tempfile::TempDir {
    let project = project_copy();
    let path = project.path().join("config/demo.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("schedule = \"*/15 * * * *\""));
    std::fs::write(
        &path,
        text.replace("schedule = \"*/15 * * * *\"", "schedule = \"* * * * * *\""),
    )
    .unwrap();
    write_bulk_shop_export(project.path(), CUSTOMERS);
    project
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_run_loses_nothing_and_ends_like_an_uninterrupted_run() {
    let _serial = SERIAL.lock().await;

    // The reference: one uninterrupted run over the same input.
    let reference = project();
    let config = load(reference.path(), "config/demo.toml");
    let summary = pipeline::run(&config, None).await.unwrap();
    assert_eq!(summary.records_read as usize, CUSTOMERS + 66);
    let reference_db = reference.path().join(".conflux/demo.db");
    let expected_counts = table_counts(&reference_db).await;
    let expected_profiles =
        final_profiles(&read_feed(&reference.path().join(".conflux/feed.ndjson")));

    let killed = project();
    let db = killed.path().join(".conflux/demo.db");
    let mut child = daemon(killed.path());
    let started = Instant::now();
    loop {
        let stored = stored_records(&db).await;
        if stored > 2_000 {
            assert!(
                (stored as usize) < CUSTOMERS,
                "the first run got too far ({stored} records) before the kill"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the daemon never started storing"
        );
        assert!(child.try_wait().unwrap().is_none(), "the daemon exited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let at_kill = table_counts(&db).await;

    // Restarted, the daemon's next run finishes ingesting; killed again while it delivers.
    let mut child = daemon(killed.path());
    let feed_path = killed.path().join(".conflux/feed.ndjson");
    let started = Instant::now();
    loop {
        let lines = std::fs::read(&feed_path)
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .unwrap_or(0);
        if lines > 1_000 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the restarted daemon never delivered"
        );
        assert!(child.try_wait().unwrap().is_none(), "the daemon exited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let at_second_kill = table_counts(&db).await;
    assert!(
        at_second_kill["undelivered"] > 0,
        "killed while delivering: {at_second_kill:?}"
    );

    // Restarted once more, the daemon's next scheduled run finishes the work.
    let mut child = daemon(killed.path());
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let counts = table_counts(&db).await;
        if counts["records"] == expected_counts["records"] && counts["undelivered"] == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the restarted daemon did not catch up: {counts:?} (at the kill: {at_kill:?})"
        );
    }
    // Let the run in flight finish and a quiet one follow, then stop by SIGTERM.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");

    assert_eq!(table_counts(&db).await, expected_counts);
    let feed = read_feed(&killed.path().join(".conflux/feed.ndjson"));
    let delivered: BTreeSet<String> = feed
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        delivered,
        outbox_ids(&db).await,
        "every outbox event is in the feed, and nothing else"
    );
    assert_eq!(final_profiles(&feed), expected_profiles);
    eprintln!(
        "killed at {at_kill:?}, then at {at_second_kill:?}; final {expected_counts:?}; {} feed lines for {} events",
        feed.len(),
        delivered.len()
    );
}
