//! The daemon: scheduled runs that never overlap, the operations endpoints while it runs,
//! shutdown within the grace period (in-process and by SIGTERM to the binary), `conflux runs`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use conflux::pipeline;
use conflux::schedule::run_daemon;

use crate::common::{load, project_copy};

/// A port nobody listens on right now.
fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// GET over a fresh HTTP/1.1 connection; `None` while nothing listens.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The demo project with its job on a one-second schedule, the operations endpoints on
/// `addr`, and a shop export large enough that the first run takes a while.
fn every_second_project(addr: SocketAddr) -> tempfile::TempDir {
    let project = project_copy();
    let config_path = project.path().join("config/demo.toml");
    let text = std::fs::read_to_string(&config_path).unwrap();
    assert!(text.contains("schedule = \"*/15 * * * *\""));
    let text = text.replace("schedule = \"*/15 * * * *\"", "schedule = \"* * * * * *\"")
        + &format!("\n[ops]\nlisten = \"{addr}\"\n");
    std::fs::write(&config_path, text).unwrap();

    let mut csv = String::from(
        "Kundennr;Kundengruppe;Vorname;Nachname;Firma;E-Mail;Telefon;Strasse;PLZ;Ort;Land;Anmeldedatum\n",
    );
    for i in 0..3000 {
        csv.push_str(&format!(
            "B-{i};Privatkunde;Vor{i};Nach{i};;kunde{i}@example.com;;Weg {i};10115;Berlin;Deutschland;02.05.2022\n"
        ));
    }
    std::fs::write(project.path().join("demo/shop/customers_bulk.csv"), csv).unwrap();
    project
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_job_runs_repeatedly_without_overlap_and_stops_within_the_grace() {
    let addr = free_port();
    let project = every_second_project(addr);
    let config = load(project.path(), "config/demo.toml");
    assert_eq!(config.ops_listen, Some(addr));

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let grace = Duration::from_secs(20);
    let daemon_config = config.clone();
    let daemon = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        run_daemon(&daemon_config, shutdown, grace).await
    });

    // Every metric is exported once the first run has finished; on a busy machine that can
    // take a while, so poll instead of guessing a fixed delay.
    let mut scraped = None;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got = tokio::task::spawn_blocking(move || {
            (
                http_get(addr, "/healthz"),
                http_get(addr, "/readyz"),
                http_get(addr, "/metrics"),
            )
        })
        .await
        .unwrap();
        let complete = got
            .2
            .as_ref()
            .is_some_and(|(_, text)| conflux::metrics::ALL.iter().all(|name| text.contains(name)));
        scraped = Some(got);
        if complete {
            break;
        }
    }
    let (health, ready, metrics) = scraped.unwrap();
    assert_eq!(health, Some((200, "ok".to_string())));
    assert_eq!(ready, Some((200, "ready".to_string())));
    let (status, metrics) = metrics.unwrap();
    assert_eq!(status, 200);
    for name in conflux::metrics::ALL {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    assert!(
        metrics.contains("conflux_records_read_total{job=\"demo\"}"),
        "{metrics}"
    );

    tokio::time::sleep(Duration::from_millis(1000)).await;
    let stopping = Instant::now();
    stop.send(()).unwrap();
    let outcome = tokio::time::timeout(grace, daemon).await;
    let took = stopping.elapsed();
    outcome.unwrap().unwrap().unwrap();
    assert!(took < grace, "shutdown took {took:?}");

    let store = pipeline::open_store(&config).await.unwrap();
    let mut runs = store.recent_runs(100).await.unwrap();
    runs.reverse();
    assert!(runs.len() >= 2, "{runs:?}");
    for run in &runs {
        assert_eq!(
            (run.job.as_str(), run.status.as_str()),
            ("demo", "ok"),
            "{run:?}"
        );
    }
    for pair in runs.windows(2) {
        let previous_end = pair[0].finished_at.unwrap();
        assert!(
            pair[1].started_at >= previous_end,
            "runs overlap: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    // Scheduled runs start at their fire time (a whole second), not when the run before
    // them ended: fire times that passed during a long run are skipped, not queued.
    for run in &runs[1..] {
        let into_second = run.started_at.subsec_nanosecond();
        assert!(
            into_second < 500_000_000,
            "not started at a fire time: {run:?}"
        );
    }
    // The first run read the bulk export; it is ingested once, whatever the schedule.
    let first: serde_json::Value =
        serde_json::from_str(runs[0].summary.as_deref().unwrap()).unwrap();
    assert!(first["records_read"].as_u64().unwrap() > 3000, "{first}");
    let second: serde_json::Value =
        serde_json::from_str(runs[1].summary.as_deref().unwrap()).unwrap();
    assert_eq!(second["records_read"], 0, "{second}");
}

fn conflux(project: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_conflux"))
        .args(args)
        .current_dir(project)
        .env_remove("CONFLUX_CONFIG")
        .env("CONFLUX_LOG", "warn")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn sigterm_stops_the_daemon_binary_with_exit_0_within_the_grace() {
    let addr = free_port();
    let project = every_second_project(addr);
    let mut child = Command::new(env!("CARGO_BIN_EXE_conflux"))
        .args(["daemon", "--config", "config/demo.toml", "--grace", "10s"])
        .current_dir(project.path())
        .env_remove("CONFLUX_CONFIG")
        .env("CONFLUX_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let started = Instant::now();
    while http_get(addr, "/healthz").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the daemon never served /healthz"
        );
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            panic!("the daemon exited early with {status}: {stderr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let it get into its first run, so the signal meets work in flight.
    std::thread::sleep(Duration::from_millis(500));

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "the daemon did not stop within its grace period"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");

    // Whatever was in flight finished or was recorded as aborted; nothing is left running.
    let runs = conflux(project.path(), &["runs", "--config", "config/demo.toml"]);
    let stdout = text(&runs.stdout);
    assert_eq!(runs.status.code(), Some(0), "{}", text(&runs.stderr));
    assert!(!stdout.contains(" running "), "{stdout}");
}

#[test]
fn runs_lists_recorded_runs_newest_first() {
    let project = project_copy();
    let empty = conflux(project.path(), &["runs", "--config", "config/demo.toml"]);
    assert_eq!(empty.status.code(), Some(0), "{}", text(&empty.stderr));
    assert_eq!(text(&empty.stdout), "0 job runs shown\n");

    for args in [
        &["run", "--config", "config/demo.toml"][..],
        &["run", "--config", "config/demo.toml", "--job", "demo"][..],
    ] {
        let run = conflux(project.path(), args);
        assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    }

    let listed = conflux(
        project.path(),
        &["runs", "--config", "config/demo.toml", "--limit", "5"],
    );
    let stdout = text(&listed.stdout);
    assert_eq!(listed.status.code(), Some(0), "{}", text(&listed.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].starts_with("#2 demo "), "{stdout}");
    assert!(lines[1].starts_with("#1 * "), "{stdout}");
    for line in &lines[..2] {
        assert!(line.contains(" ok {\"records_read\":"), "{stdout}");
        assert!(
            !line.contains(" .. - "),
            "a finished run shows its end: {stdout}"
        );
    }
    assert_eq!(lines[2], "2 job runs shown");

    let one = conflux(
        project.path(),
        &["runs", "--config", "config/demo.toml", "--limit", "1"],
    );
    assert_eq!(text(&one.stdout).lines().count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_still_going_after_the_grace_is_aborted_and_recorded_so() {
    let addr = free_port();
    let project = every_second_project(addr);
    let config = load(project.path(), "config/demo.toml");

    let grace = Duration::from_millis(200);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon_config = config.clone();
    let daemon = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        run_daemon(&daemon_config, shutdown, grace).await
    });
    // The catch-up run starts at once and reads the bulk export for over a second.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), daemon)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "{:?}",
        stopping.elapsed()
    );

    let store = pipeline::open_store(&config).await.unwrap();
    let runs = store.recent_runs(10).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].status, "aborted");
    assert_eq!(
        runs[0].summary.as_deref(),
        Some("{\"error\":\"aborted at shutdown after the grace period\"}")
    );
    assert!(runs[0].finished_at.is_some());
}
