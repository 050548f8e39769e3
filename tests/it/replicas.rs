//! conflux on PostgreSQL end to end: the demo gives the SQLite counts, killed connections
//! fail a run cleanly and the next one catches up, and two daemon
//! processes (the real binary) sharing one schema run a frequent job without ever
//! overlapping or skipping a fire time, delivering each event exactly once.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use conflux::pipeline;
use conflux::schedule::JobSchedule;
use jiff::Timestamp;

use crate::common::drop_schema;
use crate::common::{load, postgres_url, project_copy, read_feed};
use crate::store_contract::fresh_schema;

/// Drops the test's schema when the test ends, passed or failed.
struct SchemaGuard {
    url: String,
    schema: String,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        drop_schema(&self.url, &self.schema);
    }
}

/// Points the demo config at a PostgreSQL schema and the given feed file; returns its path
/// relative to the project.
fn demo_config_on(
    project: &Path,
    name: &str,
    url: &str,
    schema: &str,
    feed: &str,
    extra: &str,
) -> String {
    let text = std::fs::read_to_string(project.join("config/demo.toml")).unwrap();
    let sqlite = "url = \"sqlite://.conflux/demo.db\"";
    assert!(text.contains(sqlite));
    let text = text
        .replace(sqlite, &format!("url = \"{url}\"\nschema = \"{schema}\""))
        .replace(
            "path = \".conflux/feed.ndjson\"",
            &format!("path = \"{feed}\""),
        )
        + extra;
    let file = format!("config/{name}.toml");
    std::fs::write(project.join(&file), text).unwrap();
    file
}

/// `(type, golden full name)` of every event, counted: what a run published, independent
/// of the random profile ids.
fn published(feed: &[serde_json::Value]) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    for event in feed {
        let key = (
            event["type"].as_str().unwrap().to_string(),
            event["data"]["golden"]["full_name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        *out.entry(key).or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_on_postgres_publishes_what_it_publishes_on_sqlite() {
    let Some(url) = postgres_url() else { return };
    let schema = fresh_schema("demo");
    let _guard = SchemaGuard {
        url: url.clone(),
        schema: schema.clone(),
    };
    let on_sqlite = project_copy();
    let sqlite = pipeline::run(&load(on_sqlite.path(), "config/demo.toml"), None)
        .await
        .unwrap();

    let project = project_copy();
    let file = demo_config_on(
        project.path(),
        "pg",
        &url,
        &schema,
        ".conflux/pg.ndjson",
        "",
    );
    let config = load(project.path(), &file);
    let summary = pipeline::run(&config, None).await.unwrap();
    assert_eq!(summary.records_read, 66);
    assert_eq!(summary.records_mapped, 65);
    assert_eq!(summary.records_inserted, 65);
    assert_eq!(summary.records_quarantined, 1);
    assert_eq!(summary.profiles_created, 18);
    assert_eq!(summary.profiles_updated, 0);
    assert_eq!(summary.profiles_resegmented, 11);
    assert_eq!(summary.profiles_merged, 0);
    assert_eq!(summary.events_delivered, 29);
    assert_eq!(summary.events_pending, 0);
    // Every count equals the SQLite run's (the feed's description names its own file).
    let without_feed = |summary: &pipeline::RunSummary| {
        let mut value = serde_json::to_value(summary).unwrap();
        value.as_object_mut().unwrap().remove("feed");
        value.as_object_mut().unwrap().remove("stages");
        value
    };
    assert_eq!(without_feed(&summary), without_feed(&sqlite));
    let feed = read_feed(&project.path().join(".conflux/pg.ndjson"));
    let sqlite_feed = read_feed(&on_sqlite.path().join(".conflux/feed.ndjson"));
    assert_eq!(feed.len(), 29);
    assert_eq!(published(&feed), published(&sqlite_feed));

    // A second run over unchanged input writes nothing, as on SQLite.
    let second = pipeline::run(&config, None).await.unwrap();
    assert_eq!(second.records_read, 0);
    assert_eq!(second.events_delivered, 0);
    assert_eq!(
        read_feed(&project.path().join(".conflux/pg.ndjson")).len(),
        29
    );
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn start_daemon(project: &Path, config: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_conflux"))
        .args(["daemon", "--config", config, "--grace", "20s"])
        .current_dir(project)
        .env_remove("CONFLUX_CONFIG")
        .env("CONFLUX_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// SIGTERM, then the exit status and stderr.
fn stop_daemon(child: Child) -> (Option<i32>, String) {
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `count` new shop customers in a new export file.
fn drop_shop_file(project: &Path, name: &str, first: usize, count: usize) {
    let mut csv = String::from(
        "Kundennr;Kundengruppe;Vorname;Nachname;Firma;E-Mail;Telefon;Strasse;PLZ;Ort;Land;Anmeldedatum\n",
    );
    // Clearly different people: names, streets and postcodes all differ.
    const GIVEN: [&str; 9] = [
        "Anton", "Berta", "Carl", "Dora", "Emil", "Frieda", "Gustav", "Hanna", "Ida",
    ];
    const FAMILY: [&str; 8] = [
        "Albrecht",
        "Brandt",
        "Christiansen",
        "Dietrich",
        "Engel",
        "Fuchs",
        "Graf",
        "Haas",
    ];
    const STREETS: [&str; 5] = [
        "Lindenweg",
        "Ahornallee",
        "Birkenweg",
        "Eichenring",
        "Ulmenpfad",
    ];
    for i in first..first + count {
        let (given, family) = (GIVEN[i % 9], FAMILY[i / 9 % 8]);
        let (street, number, postcode) = (STREETS[i % 5], 3 + i * 7, 20000 + i * 713);
        csv.push_str(&format!(
            "R-{i};Privatkunde;{given};{family};;{}.{}.{i}@mail{i}.example;;{street} {number};{postcode};Hamburg;Deutschland;02.05.2022\n",
            given.to_lowercase(),
            family.to_lowercase(),
        ));
    }
    // Written aside and renamed, so a run never sees half a file.
    let partial = project.join(format!("demo/shop/.{name}.partial"));
    std::fs::write(&partial, csv).unwrap();
    std::fs::rename(&partial, project.join("demo/shop").join(name)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_one_schema_run_every_fire_time_once_and_deliver_each_event_once() {
    let Some(url) = postgres_url() else { return };
    let schema = fresh_schema("replicas");
    let _guard = SchemaGuard {
        url: url.clone(),
        schema: schema.clone(),
    };
    let project = project_copy();
    let every = "*/3 * * * * *";
    let demo = std::fs::read_to_string(project.path().join("config/demo.toml")).unwrap();
    std::fs::write(
        project.path().join("config/demo.toml"),
        demo.replace(
            "schedule = \"*/15 * * * *\"",
            &format!("schedule = \"{every}\""),
        ),
    )
    .unwrap();
    let configs: Vec<String> = ["a", "b"]
        .iter()
        .map(|name| {
            let ops = format!("\n[ops]\nlisten = \"{}\"\n", free_port());
            demo_config_on(
                project.path(),
                name,
                &url,
                &schema,
                &format!(".conflux/feed-{name}.ndjson"),
                &ops,
            )
        })
        .collect();

    let started = Timestamp::now();
    let daemons: Vec<Child> = configs
        .iter()
        .map(|config| start_daemon(project.path(), config))
        .collect();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let runs_sql = format!(
        "SELECT id, status, \
                (extract(epoch from started_at) * 1000000)::bigint, \
                (extract(epoch from finished_at) * 1000000)::bigint \
         FROM \"{schema}\".job_runs ORDER BY id"
    );
    type RunRow = (i64, String, i64, Option<i64>);
    let runs = async |pool: &sqlx::PgPool| -> Vec<RunRow> {
        sqlx::query_as(sqlx::AssertSqlSafe(runs_sql.as_str()))
            .fetch_all(pool)
            .await
            .unwrap_or_default()
    };
    // Wait for the first (catch-up) run to finish, then feed new files while they run.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !runs(&pool).await.iter().any(|r| r.3.is_some()) {
        assert!(
            Instant::now() < deadline,
            "no run finished within 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop_shop_file(project.path(), "customers_replicas_1.csv", 0, 40);
    tokio::time::sleep(Duration::from_secs(7)).await;
    drop_shop_file(project.path(), "customers_replicas_2.csv", 40, 25);
    tokio::time::sleep(Duration::from_secs(10)).await;

    let stopped_at = Timestamp::now();
    let outcomes: Vec<(Option<i32>, String)> = daemons.into_iter().map(stop_daemon).collect();
    for (code, stderr) in &outcomes {
        assert_eq!(*code, Some(0), "{stderr}");
        assert!(!stderr.contains("ERROR"), "{stderr}");
    }

    let runs = runs(&pool).await;
    assert!(runs.len() >= 5, "{runs:?}");
    let at = |micros: i64| Timestamp::from_microsecond(micros).unwrap();
    for run in &runs {
        assert_eq!(run.1, "ok", "{runs:?}");
    }
    // Never two runs of the job at a time, across both daemons.
    for pair in runs.windows(2) {
        let finished = pair[0].3.expect("every run finished");
        assert!(
            finished <= pair[1].2,
            "runs {} and {} overlap",
            pair[0].0,
            pair[1].0
        );
    }
    // No fire time skipped: after the first run, every fire time up to the shutdown has a
    // run that started at it (within scheduling slack).
    let schedule = JobSchedule::parse("demo", every, Some("Europe/Berlin")).unwrap();
    let slack = jiff::SignedDuration::from_millis(2500);
    let mut fire = schedule.next_after(at(runs[0].3.unwrap())).unwrap();
    let last = stopped_at
        .checked_sub(jiff::SignedDuration::from_secs(2))
        .unwrap();
    let mut checked = 0;
    while fire < last {
        let hit = runs
            .iter()
            .filter(|r| at(r.2) >= fire && at(r.2) < fire.checked_add(slack).unwrap())
            .count();
        assert_eq!(hit, 1, "fire time {fire} has {hit} runs: {runs:?}");
        checked += 1;
        fire = schedule.next_after(fire).unwrap();
    }
    assert!(checked >= 4, "only {checked} fire times checked");
    assert!(at(runs[0].2) >= started);

    // Every event reached exactly one of the two feeds, exactly once.
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    for name in ["a", "b"] {
        let feed = read_feed(&project.path().join(format!(".conflux/feed-{name}.ndjson")));
        for event in feed {
            *ids.entry(event["id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    let (outbox, undelivered): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT (SELECT COUNT(*) FROM \"{schema}\".outbox), \
                (SELECT COUNT(*) FROM \"{schema}\".outbox_pending)"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(undelivered, 0);
    // Both new files were read (65 demo records, then 40 and 25 customers) and published.
    let records: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM \"{schema}\".records"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(records, 65 + 40 + 25);
    assert!(
        outbox >= 29 + 65,
        "the demo's 29 events and one per new customer: {outbox} events"
    );
    assert_eq!(ids.len() as i64, outbox);
    let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
}

/// What a schema holds in the end, free of the random profile ids: every record with its
/// content hash, and the content of every live profile's latest version.
async fn final_state(pool: &sqlx::PgPool, schema: &str) -> (Vec<(String, String)>, Vec<String>) {
    let records: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT system || '/' || stream || '/' || source_id, content_hash \
         FROM \"{schema}\".records ORDER BY 1"
    )))
    .fetch_all(pool)
    .await
    .unwrap();
    let bodies: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT v.body FROM \"{schema}\".profiles p \
         JOIN \"{schema}\".profile_versions v \
           ON v.profile_id = p.profile_id AND v.version = p.latest_version \
         WHERE p.retired_into IS NULL"
    )))
    .fetch_all(pool)
    .await
    .unwrap();
    let mut profiles: Vec<String> = bodies
        .iter()
        .map(|body| {
            let mut profile: serde_json::Value = serde_json::from_str(body).unwrap();
            let object = profile.as_object_mut().unwrap();
            for volatile in ["profile_id", "version", "merged_ids"] {
                object.remove(volatile);
            }
            profile.to_string()
        })
        .collect();
    profiles.sort();
    (records, profiles)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_killed_mid_run_fail_it_cleanly_and_the_next_run_ends_in_the_same_state()
 {
    let Some(url) = postgres_url() else { return };
    let (reference, faulty) = (fresh_schema("ref"), fresh_schema("killed"));
    let _guards = [&reference, &faulty].map(|schema| SchemaGuard {
        url: url.clone(),
        schema: schema.clone(),
    });
    let project = project_copy();
    drop_shop_file(project.path(), "customers_bulk.csv", 0, 4000);
    let reference_config = load(
        project.path(),
        &demo_config_on(
            project.path(),
            "ref",
            &url,
            &reference,
            ".conflux/ref.ndjson",
            "",
        ),
    );
    let faulty_config = load(
        project.path(),
        &demo_config_on(
            project.path(),
            "killed",
            &url,
            &faulty,
            ".conflux/killed.ndjson",
            "",
        ),
    );
    let uninterrupted = pipeline::run(&reference_config, None).await.unwrap();

    let run = tokio::spawn(async move { pipeline::run(&faulty_config, None).await });
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    // Once the run has committed its first batch, every session of the store is killed.
    let count_sql = format!("SELECT COUNT(*) FROM \"{faulty}\".records");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count_sql.as_str()))
            .fetch_one(&pool)
            .await
            .unwrap_or(0);
        if count > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no batch committed within a minute"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(format!("conflux:{faulty}"))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(!killed.is_empty(), "the run had sessions to kill");
    // A batch whose session died fails the run with a store error; sessions killed while
    // idle in the pool are replaced before use, and then the run completes.
    let failed = match run.await.unwrap() {
        Err(error) => {
            assert!(error.to_string().starts_with("store: "), "{error}");
            true
        }
        Ok(summary) => {
            assert_eq!(summary.events_pending, 0);
            false
        }
    };

    // The next run reconnects and catches up; the store ends as after one clean run.
    let config = load(project.path(), "config/killed.toml");
    let next = pipeline::run(&config, None).await.unwrap();
    assert_eq!(next.events_pending, 0);
    if !failed {
        assert_eq!(next.records_read, 0, "the first run completed: {next:?}");
    }
    assert_eq!(
        final_state(&pool, &faulty).await,
        final_state(&pool, &reference).await
    );
    let (records, profiles) = final_state(&pool, &faulty).await;
    assert_eq!(records.len() as u64, uninterrupted.records_inserted);
    assert!(profiles.len() > 18);
    // Every event the store holds was delivered, once.
    let feed = read_feed(&project.path().join(".conflux/killed.ndjson"));
    let ids: std::collections::BTreeSet<&str> =
        feed.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), feed.len(), "no event delivered twice");
    let outbox: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM \"{faulty}\".outbox o WHERE NOT EXISTS \
         (SELECT 1 FROM \"{faulty}\".outbox_pending p WHERE p.seq = o.seq)"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(outbox as usize, feed.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_run_loses_its_lease_and_the_other_finishes_the_work() {
    let Some(url) = postgres_url() else { return };
    let (reference, shared) = (fresh_schema("ref"), fresh_schema("takeover"));
    let _guards = [&reference, &shared].map(|schema| SchemaGuard {
        url: url.clone(),
        schema: schema.clone(),
    });
    let project = project_copy();
    drop_shop_file(project.path(), "customers_bulk.csv", 0, 4000);
    let every = "*/3 * * * * *";
    let demo = std::fs::read_to_string(project.path().join("config/demo.toml")).unwrap();
    std::fs::write(
        project.path().join("config/demo.toml"),
        demo.replace(
            "schedule = \"*/15 * * * *\"",
            &format!("schedule = \"{every}\""),
        ),
    )
    .unwrap();
    let reference_config = demo_config_on(
        project.path(),
        "ref",
        &url,
        &reference,
        ".conflux/ref.ndjson",
        "",
    );
    pipeline::run(&load(project.path(), &reference_config), None)
        .await
        .unwrap();
    let configs: Vec<String> = ["a", "b"]
        .iter()
        .map(|name| {
            let ops = format!("\n[ops]\nlisten = \"{}\"\n", free_port());
            let feed = format!(".conflux/feed-{name}.ndjson");
            demo_config_on(project.path(), name, &url, &shared, &feed, &ops)
        })
        .collect();

    // The first replica starts its (catch-up) run and is killed once a batch is committed.
    let mut first = start_daemon(project.path(), &configs[0]);
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let count_sql = format!("SELECT COUNT(*) FROM \"{shared}\".records");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count_sql.as_str()))
            .fetch_one(&pool)
            .await
            .unwrap_or(0);
        if count > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no batch committed within a minute"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let killed_at = Timestamp::now();

    // The second replica waits out the dead one's lease, then runs and finishes the work.
    let second = start_daemon(project.path(), &configs[1]);
    let runs_sql = format!(
        "SELECT status, (extract(epoch from started_at) * 1000000)::bigint \
         FROM \"{shared}\".job_runs ORDER BY id"
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let runs: Vec<(String, i64)> = loop {
        let runs: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(runs_sql.as_str()))
            .fetch_all(&pool)
            .await
            .unwrap();
        if runs.iter().any(|(status, _)| status == "ok") {
            break runs;
        }
        assert!(Instant::now() < deadline, "no run completed: {runs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (code, stderr) = stop_daemon(second);
    assert_eq!(code, Some(0), "{stderr}");

    // The killed run never finished; the takeover waited for the lease, not much longer.
    assert_eq!(runs[0].0, "running", "{runs:?}");
    let took_over = Timestamp::from_microsecond(runs[1].1).unwrap();
    let waited = took_over.duration_since(killed_at).as_secs_f64();
    assert!(
        (0.0..=conflux::schedule::LEASE_TTL.as_secs_f64() + 6.0).contains(&waited),
        "the second replica ran {waited} s after the kill"
    );
    assert!(
        waited >= conflux::schedule::LEASE_TTL.as_secs_f64() / 3.0 * 2.0 - 1.0,
        "the lease was taken before it could have expired: {waited} s"
    );
    assert_eq!(
        final_state(&pool, &shared).await,
        final_state(&pool, &reference).await
    );
    let undelivered: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM \"{shared}\".outbox_pending"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(undelivered, 0);
}
