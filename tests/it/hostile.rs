//! Hostile and broken input (the corpus in tests/fixtures/hostile/, the huge cases generated
//! here): every case ends in a quarantine entry naming its file and line, or a clear error,
//! never a crash, a hang or unbounded memory, and the good records of the same run still flow,
//! counted exactly.

use std::path::Path;
use std::time::Duration;

use conflux::pipeline::{self, RunSummary};
use conflux::store::QuarantineRow;

use crate::common::{load, postgres_url, project_with, read_feed, repo_root};

const CONFIG: &str = r#"
[store]
url = "sqlite://.conflux/hostile.db"

[feed]
sink = "file"
path = ".conflux/feed.ndjson"

[identity]
match_on = ["email"]

[[job]]
name = "drops"
sync = ["drops"]
"#;

const MAPPING: &str = r#"
entity = "customer"

[fields]
source_id = "id"
name = { path = "name", transforms = ["trim"] }
email = { path = "email", transforms = ["email"] }
"#;

/// What one run over hostile files left behind.
struct Outcome {
    summary: RunSummary,
    quarantine: Vec<QuarantineRow>,
    /// Source ids of the published profiles, sorted.
    published: Vec<String>,
}

impl Outcome {
    /// The single quarantine entry, with a readable failure when there is not exactly one.
    fn only_entry(&self) -> &QuarantineRow {
        assert_eq!(self.quarantine.len(), 1, "{:#?}", self.quarantine);
        &self.quarantine[0]
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repo_root().join("tests/fixtures/hostile").join(name)).unwrap()
}

fn connector(format: &str, records: Option<&str>) -> String {
    let records = records.map_or_else(String::new, |r| format!("records = \"{r}\"\n"));
    format!(
        "kind = \"file\"\ndir = \"drops\"\n\n[[stream]]\nname = \"customers\"\npattern = \"*\"\n\
         format = \"{format}\"\n{records}mapping = \"drops.customer\"\n"
    )
}

/// Runs the `drops` job once over `files` (written into the connector's directory), with a
/// time limit so a hang fails the test instead of stalling the suite.
async fn run_files(format: &str, records: Option<&str>, files: &[(&str, &[u8])]) -> Outcome {
    let connector = connector(format, records);
    let mut all: Vec<(String, &[u8])> = vec![
        ("config/hostile.toml".into(), CONFIG.as_bytes()),
        ("connectors/drops.toml".into(), connector.as_bytes()),
        ("mappings/drops.customer.toml".into(), MAPPING.as_bytes()),
    ];
    all.extend(files.iter().map(|(n, c)| (format!("drops/{n}"), *c)));
    let borrowed: Vec<(&str, &[u8])> = all.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    let project = project_with(&borrowed);
    run_project(project.path()).await
}

async fn run_project(project: &Path) -> Outcome {
    let config = load(project, "config/hostile.toml");
    let summary = tokio::time::timeout(Duration::from_secs(120), pipeline::run(&config, None))
        .await
        .expect("the run finishes")
        .expect("the run succeeds");
    let store = pipeline::open_store(&config).await.unwrap();
    let mut quarantine = store.quarantine_rows(100).await.unwrap();
    quarantine.sort_by(|a, b| a.source_ref.cmp(&b.source_ref));
    let mut published: Vec<String> = read_feed(&project.join(".conflux/feed.ndjson"))
        .iter()
        .map(|event| {
            event["data"]["sources"][0]["source_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    published.sort();
    Outcome {
        summary,
        quarantine,
        published,
    }
}

fn counts(summary: &RunSummary) -> (u64, u64, u64) {
    (
        summary.records_read,
        summary.records_mapped,
        summary.records_quarantined,
    )
}

#[tokio::test]
async fn csv_with_an_unbalanced_quote_quarantines_the_rest_of_the_file_as_one_record() {
    let file = fixture("unbalanced_quote.csv");
    let out = run_files("csv", None, &[("in.csv", &file)]).await;
    assert_eq!(counts(&out.summary), (3, 2, 1));
    assert_eq!(out.published, ["h1", "h2"]);
    let entry = out.only_entry();
    assert_eq!(entry.source_ref, "in.csv:4 (record 3)");
    assert!(
        entry.reason.contains("line 4") && entry.reason.contains("never closed"),
        "{}",
        entry.reason
    );
    assert!(entry.raw.contains("Jonas Weber"), "{}", entry.raw);
}

#[tokio::test]
async fn ragged_csv_rows_are_quarantined_with_their_lines() {
    let file = fixture("ragged_rows.csv");
    let out = run_files("csv", None, &[("in.csv", &file)]).await;
    assert_eq!(counts(&out.summary), (4, 2, 2));
    assert_eq!(out.published, ["r1", "r4"]);
    let reasons: Vec<(&str, &str)> = out
        .quarantine
        .iter()
        .map(|r| (r.source_ref.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("in.csv:3 (record 2)", "line 3: expected 3 fields, found 2"),
            ("in.csv:4 (record 3)", "line 4: expected 3 fields, found 5"),
        ]
    );
}

#[tokio::test]
async fn a_csv_row_with_invalid_utf8_is_quarantined() {
    let file = fixture("invalid_utf8.csv");
    let out = run_files("csv", None, &[("in.csv", &file)]).await;
    assert_eq!(counts(&out.summary), (3, 2, 1));
    assert_eq!(out.published, ["u1", "u3"]);
    let entry = out.only_entry();
    assert_eq!(entry.source_ref, "in.csv:3 (record 2)");
    assert!(
        entry.reason.contains("\"name\" is not valid UTF-8"),
        "{}",
        entry.reason
    );
}

#[tokio::test]
async fn truncated_json_keeps_the_complete_records() {
    let file = fixture("truncated.json");
    let out = run_files("json", None, &[("in.json", &file)]).await;
    assert_eq!(counts(&out.summary), (3, 2, 1));
    assert_eq!(out.published, ["t1", "t2"]);
    let entry = out.only_entry();
    assert!(entry.source_ref.starts_with("in.json:4"), "{entry:?}");
    assert!(entry.reason.contains("EOF"), "{}", entry.reason);
}

#[tokio::test]
async fn json_with_trailing_garbage_keeps_the_array_and_quarantines_the_garbage() {
    let file = fixture("trailing_garbage.json");
    let out = run_files("json", None, &[("in.json", &file)]).await;
    assert_eq!(counts(&out.summary), (3, 2, 1));
    assert_eq!(out.published, ["g1", "g2"]);
    let entry = out.only_entry();
    assert!(entry.source_ref.starts_with("in.json:4"), "{entry:?}");
    assert!(entry.reason.contains("trailing"), "{}", entry.reason);
}

#[tokio::test]
async fn a_json_record_with_invalid_utf8_is_quarantined() {
    let file = fixture("invalid_utf8.json");
    let out = run_files("json", None, &[("in.json", &file)]).await;
    // JSON cannot be resynchronised after a parse error, so the rest of the document goes to
    // quarantine with the broken record, and the reason says so.
    assert_eq!(counts(&out.summary), (2, 1, 1));
    assert_eq!(out.published, ["v1"]);
    let entry = out.only_entry();
    assert_eq!(entry.source_ref, "in.json:3 (record 2)");
    assert_eq!(
        entry.reason,
        "line 3 column 30: bytes that are not valid UTF-8 (invalid unicode code point); is the \
         file encoded as Windows-1252?; the rest of the document is not read"
    );
}

#[tokio::test]
async fn broken_ndjson_lines_are_quarantined_line_by_line() {
    let file = fixture("broken.ndjson");
    let out = run_files("ndjson", None, &[("in.ndjson", &file)]).await;
    assert_eq!(counts(&out.summary), (4, 2, 2));
    assert_eq!(out.published, ["n1", "n4"]);
    let refs: Vec<&str> = out
        .quarantine
        .iter()
        .map(|r| r.source_ref.as_str())
        .collect();
    assert_eq!(refs, ["in.ndjson:2 (record 2)", "in.ndjson:3 (record 3)"]);
    assert_eq!(
        out.quarantine[0].reason,
        "line 2 column 28: bytes that are not valid UTF-8 (invalid unicode code point); is the \
         file encoded as Windows-1252?"
    );
}

#[tokio::test]
async fn malformed_xml_keeps_the_records_before_the_damage() {
    let file = fixture("malformed.xml");
    let out = run_files("xml", Some("CUSTOMERS/CUSTOMER"), &[("in.xml", &file)]).await;
    assert_eq!(counts(&out.summary), (2, 1, 1));
    assert_eq!(out.published, ["x1"]);
    let entry = out.only_entry();
    assert!(entry.source_ref.starts_with("in.xml:4"), "{entry:?}");
    assert!(entry.reason.contains("nam"), "{}", entry.reason);
}

#[tokio::test]
async fn an_xml_record_with_invalid_utf8_is_quarantined() {
    let file = fixture("invalid_utf8.xml");
    let out = run_files("xml", Some("CUSTOMERS/CUSTOMER"), &[("in.xml", &file)]).await;
    // XML cannot be resynchronised after a decoding error either: the rest of the file is
    // not read, and the reason says so.
    assert_eq!(counts(&out.summary), (2, 1, 1));
    assert_eq!(out.published, ["y1"]);
    let entry = out.only_entry();
    assert_eq!(entry.source_ref, "in.xml:4 (record 2)");
    assert!(
        entry.reason.contains("cannot decode input using UTF-8")
            && entry.reason.contains("the rest of the file is not read"),
        "{}",
        entry.reason
    );
}

#[tokio::test]
async fn an_xml_entity_bomb_is_never_expanded() {
    let file = fixture("entity_bomb.xml");
    let out = run_files("xml", Some("CUSTOMERS/CUSTOMER"), &[("in.xml", &file)]).await;
    assert_eq!(counts(&out.summary), (3, 2, 1));
    assert_eq!(out.published, ["b1", "b3"]);
    let entry = out.only_entry();
    assert!(entry.source_ref.starts_with("in.xml:16"), "{entry:?}");
    assert!(
        entry.reason.contains("&lol9; is not expanded"),
        "{}",
        entry.reason
    );
    assert!(
        entry.raw.len() < 1000,
        "nothing was expanded: {}",
        entry.raw
    );
}

#[tokio::test]
async fn an_xml_external_entity_is_never_resolved() {
    let file = fixture("external_entity.xml");
    let out = run_files("xml", Some("CUSTOMERS/CUSTOMER"), &[("in.xml", &file)]).await;
    assert_eq!(counts(&out.summary), (3, 2, 1));
    assert_eq!(out.published, ["e1", "e3"]);
    let entry = out.only_entry();
    assert!(entry.source_ref.starts_with("in.xml:7"), "{entry:?}");
    assert!(
        entry.reason.contains("&xxe; is not expanded"),
        "{}",
        entry.reason
    );
    assert!(!entry.raw.contains("root:"), "{}", entry.raw);
}

#[tokio::test]
async fn json_nested_a_hundred_thousand_levels_deep_is_quarantined_without_a_stack_overflow() {
    let depth = 100_000;
    let mut file = br#"[{"id": "d1", "name": "Anna Berg", "email": "anna@example.com"},
{"id": "d2", "name": "Otto Kranz", "email": "otto@example.com", "deep": "#
        .to_vec();
    file.extend(std::iter::repeat_n(b'[', depth));
    file.extend(std::iter::repeat_n(b']', depth));
    file.extend(
        br#"},
{"id": "d3", "name": "Eva Lind", "email": "eva@example.com"}]
"#,
    );
    let out = run_files("json", None, &[("in.json", &file)]).await;
    // The parser stops at 128 levels (no stack overflow, no allocation per level beyond
    // that); the document cannot be resynchronised, so `d3` is part of the quarantined rest.
    assert_eq!(counts(&out.summary), (2, 1, 1));
    assert_eq!(out.published, ["d1"]);
    let entry = out.only_entry();
    assert_eq!(entry.source_ref, "in.json:2 (record 2)");
    assert_eq!(
        entry.reason,
        "line 2 column 198: values nest deeper than 128 levels (recursion limit exceeded); the \
         rest of the document is not read"
    );
    assert!(entry.raw.len() <= 64 * 1024);
}

#[tokio::test]
async fn a_file_pattern_with_dotdot_is_a_validation_error() {
    let connector = connector("csv", None).replace("pattern = \"*\"", "pattern = \"../*.csv\"");
    let project = project_with(&[
        ("config/hostile.toml", CONFIG.as_bytes()),
        ("connectors/drops.toml", connector.as_bytes()),
        ("mappings/drops.customer.toml", MAPPING.as_bytes()),
        ("in.csv", b"id,name,email\n"),
        ("secret.csv", b"id,name,email\ns1,Secret,s@example.com\n"),
    ]);
    let diagnostics = conflux::config::load(&project.path().join("config/hostile.toml"))
        .expect_err("a pattern leaving the directory does not load")
        .to_string();
    assert!(
        diagnostics.contains("connectors/drops.toml:")
            && diagnostics.contains("contains `..`; it must stay inside the connector directory"),
        "{diagnostics}"
    );
}

/// A file named `a..b.csv` is not an escape and still reads: only a `..` path component is.
#[tokio::test]
async fn dots_inside_a_file_name_are_not_an_escape() {
    let out = run_files(
        "csv",
        None,
        &[(
            "a..b.csv",
            b"id,name,email\nk1,Anna Berg,anna@example.com\n",
        )],
    )
    .await;
    assert_eq!(counts(&out.summary), (1, 1, 0));
}

const HOSTILE_CURSOR: &str = "'; DROP TABLE hostile_people; --";

fn sql_connector(url: &str, table: &str) -> String {
    format!(
        r#"
kind = "sql"
url = "{url}"

[[stream]]
name = "customers"
query = "SELECT id, name, email, stamp FROM {table} WHERE stamp > :cursor ORDER BY stamp"
cursor_column = "stamp"
initial = "{}"
mapping = "drops.customer"
"#,
        HOSTILE_CURSOR.replace('"', "\\\"")
    )
}

/// Runs one incremental SQL stream whose initial cursor is an injection attempt; the table
/// has two rows whose stamps sort after it (`a…` > `'…`) and one that sorts before.
async fn hostile_cursor_run(url: &str, table: &str, project_dir: &Path) -> Outcome {
    let connector = sql_connector(url, table);
    std::fs::write(project_dir.join("connectors/drops.toml"), connector).unwrap();
    run_project(project_dir).await
}

fn sql_project() -> tempfile::TempDir {
    project_with(&[
        ("config/hostile.toml", CONFIG.as_bytes()),
        ("mappings/drops.customer.toml", MAPPING.as_bytes()),
    ])
}

const PEOPLE: [(&str, &str, &str, &str); 3] = [
    ("q1", "Anna Berg", "anna@example.com", "a-2024-05-01"),
    ("q2", "Otto Kranz", "otto@example.com", "b-2024-05-02"),
    // `!` sorts before `'`, so the cursor excludes it.
    ("q0", "Old Row", "old@example.com", "!old"),
];

#[tokio::test]
async fn a_cursor_with_sql_metacharacters_is_bound_on_sqlite() {
    let project = sql_project();
    let db = project.path().join("erp.db");
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let table = "hostile_people";
    {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("CREATE TABLE hostile_people (id TEXT, name TEXT, email TEXT, stamp TEXT)")
            .execute(&mut conn)
            .await
            .unwrap();
        for (id, name, email, stamp) in PEOPLE {
            sqlx::query("INSERT INTO hostile_people VALUES ($1, $2, $3, $4)")
                .bind(id)
                .bind(name)
                .bind(email)
                .bind(stamp)
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
    let out = hostile_cursor_run(&url, table, project.path()).await;
    assert_eq!(counts(&out.summary), (2, 2, 0));
    assert_eq!(out.published, ["q1", "q2"]);

    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM hostile_people")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, 3, "the table is still there, untouched");
}

#[tokio::test]
async fn a_cursor_with_sql_metacharacters_is_bound_on_postgres() {
    let Some(url) = postgres_url() else { return };
    let table = format!("hostile_{}", uuid::Uuid::now_v7().simple());
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let create =
        format!("CREATE TABLE {table} (id TEXT, name TEXT, email TEXT, stamp TEXT COLLATE \"C\")");
    sqlx::query(sqlx::AssertSqlSafe(create))
        .execute(&pool)
        .await
        .unwrap();
    for (id, name, email, stamp) in PEOPLE {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} VALUES ($1, $2, $3, $4)"
        )))
        .bind(id)
        .bind(name)
        .bind(email)
        .bind(stamp)
        .execute(&pool)
        .await
        .unwrap();
    }
    let project = sql_project();
    let out = hostile_cursor_run(&url, &table, project.path()).await;
    assert_eq!(counts(&out.summary), (2, 2, 0));
    assert_eq!(out.published, ["q1", "q2"]);
    let (rows,): (i64,) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(rows, 3, "the table is still there, untouched");
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await
        .unwrap();
}

const HUNDRED_MB: usize = 100 * 1024 * 1024;

/// Writes `head`, then `size` bytes of `x`, then `tail` to `path`, a chunk at a time.
fn write_huge(path: &Path, head: &[u8], size: usize, tail: &[u8]) {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    file.write_all(head).unwrap();
    let chunk = vec![b'x'; 1024 * 1024];
    for _ in 0..size / chunk.len() {
        file.write_all(&chunk).unwrap();
    }
    file.write_all(tail).unwrap();
    file.flush().unwrap();
}

/// Runs `conflux run` on the project in a child process and returns its peak resident set
/// size in KiB (the kernel's `ru_maxrss` for exactly that child, collected by `wait4`).
#[expect(
    clippy::zombie_processes,
    reason = "the child is reaped by wait4 below, which also reports its peak memory"
)]
fn peak_rss_of_run(project: &Path) -> u64 {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_conflux"))
        .args(["run", "--config", "config/hostile.toml"])
        .current_dir(project)
        .env("CONFLUX_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let mut status = 0;
        // SAFETY: plain FFI call with valid pointers to locals; the child is ours and is
        // reaped here, never through `Child::wait`.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if reaped == pid {
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "conflux run failed: status {status}"
            );
            return usage.ru_maxrss as u64;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "conflux run hangs on a 100 MB field"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn huge_project(format: &str) -> tempfile::TempDir {
    let connector = connector(format, None);
    let project = project_with(&[
        ("config/hostile.toml", CONFIG.as_bytes()),
        ("connectors/drops.toml", connector.as_bytes()),
        ("mappings/drops.customer.toml", MAPPING.as_bytes()),
    ]);
    std::fs::create_dir(project.path().join("drops")).unwrap();
    project
}

/// The run's memory with the huge file next to the same run on a small file: the difference
/// must stay below three copies of the 16 MiB record cap, far below the 100 MB of the field, so
/// the field is never held whole. (Measured: about +32 MiB for CSV, +13 MiB for JSON.)
fn assert_bounded(format: &str, project: &Path, small: &[u8]) -> u64 {
    let huge_peak = peak_rss_of_run(project);
    let control = huge_project(format);
    std::fs::write(control.path().join(format!("drops/in.{format}")), small).unwrap();
    let small_peak = peak_rss_of_run(control.path());
    eprintln!("{format}: peak RSS {huge_peak} KiB with a 100 MB field, {small_peak} KiB without");
    assert!(
        huge_peak < small_peak + 48 * 1024,
        "peak RSS {huge_peak} KiB with the 100 MB field vs {small_peak} KiB without"
    );
    huge_peak
}

#[tokio::test]
async fn a_100_mb_csv_field_is_quarantined_in_bounded_memory() {
    let project = huge_project("csv");
    write_huge(
        &project.path().join("drops/in.csv"),
        b"id,name,email\nb1,Anna Berg,anna@example.com\nb2,",
        HUNDRED_MB,
        b",otto@example.com\nb3,Eva Lind,eva@example.com\n",
    );
    assert_bounded(
        "csv",
        project.path(),
        b"id,name,email\nb1,Anna Berg,anna@example.com\nb3,Eva Lind,eva@example.com\n",
    );
    let out = run_project(project.path()).await;
    assert_eq!(
        counts(&out.summary),
        (0, 0, 0),
        "the child run already read the file"
    );
    assert_eq!(out.published, ["b1", "b3"]);
    let entry = out.only_entry();
    assert_eq!(entry.source_ref, "in.csv:3 (record 2)");
    assert_eq!(entry.reason, "line 3: record longer than 16777216 bytes");
    assert!(entry.raw.len() <= 64 * 1024, "{}", entry.raw.len());
}

#[tokio::test]
async fn a_100_mb_json_field_is_quarantined_in_bounded_memory() {
    let project = huge_project("json");
    write_huge(
        &project.path().join("drops/in.json"),
        b"[{\"id\": \"b1\", \"name\": \"Anna Berg\", \"email\": \"anna@example.com\"},\n{\"id\": \"b2\", \"name\": \"",
        HUNDRED_MB,
        b"\", \"email\": \"otto@example.com\"},\n{\"id\": \"b3\", \"name\": \"Eva Lind\", \"email\": \"eva@example.com\"}]\n",
    );
    assert_bounded(
        "json",
        project.path(),
        b"[{\"id\": \"b1\", \"name\": \"Anna Berg\", \"email\": \"anna@example.com\"}]",
    );
    let out = run_project(project.path()).await;
    assert_eq!(out.published, ["b1"], "{:#?}", out.quarantine);
    let entry = out.only_entry();
    assert!(entry.source_ref.starts_with("in.json:2"), "{entry:?}");
    assert!(entry.reason.contains("16777216 bytes"), "{}", entry.reason);
    assert!(entry.raw.len() <= 64 * 1024, "{}", entry.raw.len());
}

/// A small deterministic generator (xorshift64*), so a failure reproduces from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that matter to the parsers, so mutations reach the interesting states.
const SPICE: &[u8] = b"<>/&;\"',\n\r[]{}:=\\#$%.-+0123456789\xff\xfe\xc3\x00 ";

/// `seed`'s mutation of `input`: a few byte flips, inserts, deletes, duplicated slices.
fn mutate(input: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(out.len() + 1);
        match rng.below(5) {
            0 if at < out.len() => out[at] = SPICE[rng.below(SPICE.len())],
            1 => out.insert(at, SPICE[rng.below(SPICE.len())]),
            2 if at < out.len() => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                out.drain(at..end);
            }
            3 if at < out.len() => {
                let end = (at + 1 + rng.below(64)).min(out.len());
                let slice = out[at..end].to_vec();
                let to = rng.below(out.len() + 1);
                out.splice(to..to, slice);
            }
            _ => out.truncate(at),
        }
    }
    out
}

/// The deterministic stand-in for the cargo-fuzz targets in `fuzz/` that CI runs: thousands
/// of seeded mutations of the corpus through the XML, CSV, JSON and NDJSON readers and the
/// mapping engine. Any panic fails the test and names the seed.
#[test]
fn seeded_mutations_of_the_corpus_never_panic() {
    use conflux::mapper::{MapContext, Mapping};
    use conflux::source::file::{FileFormat, FileStreamSettings, read_file};

    let dir = tempfile::tempdir().unwrap();
    let fixtures = repo_root().join("tests/fixtures/hostile");
    let mut seeds: Vec<(FileFormat, Vec<u8>)> = Vec::new();
    for entry in std::fs::read_dir(&fixtures).unwrap() {
        let path = entry.unwrap().path();
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("xml") => FileFormat::Xml,
            Some("csv") => FileFormat::Csv,
            Some("json") => FileFormat::Json,
            Some("ndjson") => FileFormat::Ndjson,
            _ => continue,
        };
        seeds.push((format, std::fs::read(&path).unwrap()));
    }
    assert!(seeds.len() >= 10, "the corpus is there");
    let mut rng = Rng(0x5EED_0FC0_FFEE);
    for round in 0..3000 {
        let (format, seed) = &seeds[round % seeds.len()];
        let input = mutate(seed, &mut rng);
        let mut settings = FileStreamSettings::new(*format);
        if *format == FileFormat::Xml {
            settings.records = Some("CUSTOMERS/CUSTOMER".into());
        }
        let path = dir.path().join("input");
        std::fs::write(&path, &input).unwrap();
        let outcome = std::panic::catch_unwind(|| read_file(&path, &settings));
        assert!(
            outcome.is_ok(),
            "round {round}: {format:?} reader panicked on {:?}",
            String::from_utf8_lossy(&input)
        );
    }

    let empty = [serde_json::Value::String(String::new())];
    let ctx = MapContext {
        system: "fuzz",
        stream: "customers",
        empty_values: &empty,
    };
    let record = br#"{"id": "0010", "name": " Anna ", "email": "A@x.de", "Country": "de", "lines": [{"qty": "1.5-", "price": 2}], "date": "/Date(1714521600000)/"}"#;
    let mappings: Vec<Vec<u8>> = std::fs::read_dir(repo_root().join("mappings"))
        .unwrap()
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    for round in 0..2000 {
        let mapping = if round % 2 == 0 {
            mutate(&mappings[round % mappings.len()], &mut rng)
        } else {
            mappings[round % mappings.len()].clone()
        };
        let record = mutate(record, &mut rng);
        let outcome = std::panic::catch_unwind(|| {
            let Ok(text) = std::str::from_utf8(&mapping) else {
                return;
            };
            let Ok(mapping) = Mapping::parse("fuzz.customer", text) else {
                return;
            };
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&record) {
                let _ = mapping.apply(&value, &ctx);
            }
            let _ = mapping.run_tests(&ctx);
        });
        assert!(
            outcome.is_ok(),
            "round {round}: the mapping engine panicked on {:?} with {:?}",
            String::from_utf8_lossy(&mapping),
            String::from_utf8_lossy(&record)
        );
    }
}
