//! The command line: `run`, `daemon`, `runs`, `validate`, `test`, `preview`,
//! `profiles show`, `quarantine list`, `review`, `identities`, `feed tail`, `generate
//! customers` (needs no config). Each subcommand loads the config through
//! [`crate::config::load`] and
//! maps its outcome onto the exit codes of [`crate::error`]. Human output goes to stdout,
//! logs to stderr.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use uuid::Uuid;

use crate::config::{self, Config, Transport};
use crate::error::{EXIT_INVALID, EXIT_OK, EXIT_RUNTIME};
use crate::mapper::MapContext;
use crate::pipeline::{self, PipelineError};
use crate::schedule;
use crate::source::RawItem;
use crate::source::file::{FileFormat, FileStreamSettings, TextEncoding, read_file};

/// `println!` with every registered secret masked ([`crate::redact`]): operator output may
/// quote a value that came from a secret.
macro_rules! println_redacted {
    ($($arg:tt)*) => {
        println!("{}", crate::redact::redact(&format!($($arg)*)))
    };
}

/// `eprintln!` with every registered secret masked, for errors that may quote a secret.
macro_rules! eprintln_redacted {
    ($($arg:tt)*) => {
        eprintln!("{}", crate::redact::redact(&format!($($arg)*)))
    };
}

mod identity;

#[derive(Debug, Parser)]
#[command(
    name = "conflux",
    version,
    about = "ERP/SCM integration daemon: connectors → mapping → identity → customer profiles → AMQP feed"
)]
pub struct Cli {
    /// The deployment's config file.
    #[arg(
        long,
        short,
        global = true,
        env = "CONFLUX_CONFIG",
        default_value = "config/conflux.toml"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a job once (all jobs when none is named) and delivers the feed.
    Run {
        /// The job to run.
        #[arg(long)]
        job: Option<String>,
    },
    /// Runs every scheduled job on its schedule and serves /healthz, /readyz and /metrics
    /// until SIGTERM or SIGINT.
    Daemon {
        /// How long runs in flight may take to finish after a stop signal before they are
        /// aborted (their open batch rolls back).
        #[arg(long, default_value = "30s", value_parser = parse_grace)]
        grace: Duration,
    },
    /// Lists recent job runs, newest first.
    Runs {
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Checks the config, every connector and every mapping; reports all errors at once.
    Validate {
        /// Also probe every source and the bus (read-only: one page per HTTP stream, a
        /// directory listing per file connector, an AMQP connection without declarations).
        #[arg(long)]
        check_connections: bool,
    },
    /// Runs the `[[test]]` cases of every mapping (or of the named ones).
    Test {
        /// Mapping ids to test; all when empty.
        mappings: Vec<String>,
    },
    /// Maps a sample file with a mapping and prints canonical records or the failing field.
    Preview {
        /// The mapping id, e.g. `demo_sap.customer`.
        mapping: String,
        /// A sample file in the format of a stream that uses the mapping.
        sample: PathBuf,
        /// Print at most this many records.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Looks at published profiles.
    Profiles {
        #[command(subcommand)]
        command: ProfilesCommand,
    },
    /// Looks at quarantined records.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
    /// Reviews possible matches: pairs the match model was unsure about.
    Review {
        #[command(subcommand)]
        command: identity::ReviewCommand,
    },
    /// Manual identity decisions, which win over the match model.
    Identities {
        #[command(subcommand)]
        command: identity::IdentitiesCommand,
    },
    /// Looks at the published feed.
    Feed {
        #[command(subcommand)]
        command: FeedCommand,
    },
    /// Writes synthetic labelled data with a ready deployment (needs no config).
    Generate {
        #[command(subcommand)]
        command: GenerateCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum FeedCommand {
    /// Binds a temporary queue to the feed's exchange and prints events as they arrive, one
    /// JSON line each, until interrupted.
    Tail {
        /// The broker, `amqp://user:pass@host:5672/vhost`; default: the config's feed.
        #[arg(long, env = "CONFLUX_AMQP_URL")]
        amqp: Option<String>,
        /// The topic exchange; default: the config's, else `conflux.customers`.
        #[arg(long)]
        exchange: Option<String>,
        /// The binding pattern, e.g. `customer.profile.merged`.
        #[arg(long, default_value = crate::sink::tail::ALL_EVENTS)]
        binding: String,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
}

#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// Synthetic customers over three source systems, `truth.csv` and a deployment under
    /// `config/`, `connectors/`, `mappings/` of the output directory.
    Customers {
        /// Records to write (over all systems).
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Extra records of the same customers written under `delta/`.
        #[arg(long, default_value_t = 0)]
        delta: usize,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProfilesCommand {
    /// Prints the latest version of a profile, by profile id or e-mail address.
    Show { key: String },
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// Lists the newest quarantined records with their reasons.
    List {
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

/// A duration like `30s`, `2m` or `500ms`.
fn parse_grace(text: &str) -> Result<Duration, String> {
    jiff::SignedDuration::from_str(text)
        .ok()
        .and_then(|duration| Duration::try_from(duration).ok())
        .ok_or_else(|| {
            format!("invalid duration {text:?}; write one like \"30s\", \"2m\" or \"500ms\"")
        })
}

/// Parses the arguments, runs the command and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln_redacted!("error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    ExitCode::from(runtime.block_on(execute(cli)))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONFLUX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::redact::RedactingWriter::new(std::io::stderr))
        .with_target(false)
        .try_init();
}

/// Runs one parsed command; returns the exit code.
pub async fn execute(cli: Cli) -> u8 {
    if let Command::Feed {
        command:
            FeedCommand::Tail {
                amqp,
                exchange,
                binding,
                count,
            },
    } = &cli.command
    {
        return feed_tail(&cli.config, amqp.clone(), exchange.clone(), binding, *count).await;
    }
    if let Command::Generate {
        command:
            GenerateCommand::Customers {
                count,
                seed,
                delta,
                out,
            },
    } = &cli.command
    {
        return generate_customers(out, *count, *seed, *delta);
    }
    let config = match config::load(&cli.config) {
        Ok(config) => config,
        Err(diagnostics) => {
            eprintln_redacted!("{diagnostics}");
            eprintln_redacted!("{} error(s); nothing was run", diagnostics.0.len());
            return EXIT_INVALID;
        }
    };
    match cli.command {
        Command::Validate { check_connections } => {
            println_redacted!(
                "{}: ok ({} connectors, {} mappings, {} jobs)",
                cli.config.display(),
                config.connectors.len(),
                config.mappings.len(),
                config.jobs.len()
            );
            if check_connections {
                check_connections_of(&config).await
            } else {
                EXIT_OK
            }
        }
        Command::Run { job } => run(&config, job.as_deref()).await,
        Command::Daemon { grace } => daemon(&config, grace).await,
        Command::Runs { limit } => list_runs(&config, limit).await,
        Command::Test { mappings } => test(&config, &mappings),
        Command::Preview {
            mapping,
            sample,
            limit,
        } => preview(&config, &mapping, &sample, limit),
        Command::Profiles {
            command: ProfilesCommand::Show { key },
        } => show_profile(&config, &key).await,
        Command::Quarantine {
            command: QuarantineCommand::List { limit },
        } => list_quarantine(&config, limit).await,
        Command::Review { command } => identity::review(&config, command).await,
        Command::Identities { command } => identity::identities(&config, command).await,
        Command::Feed { .. } | Command::Generate { .. } => {
            unreachable!("feed and generate commands are handled before loading")
        }
    }
}

/// `feed tail`: the broker and exchange from the flags, else from the config's AMQP feed.
async fn feed_tail(
    config_path: &Path,
    amqp: Option<String>,
    exchange: Option<String>,
    binding: &str,
    count: Option<usize>,
) -> u8 {
    let configured = if amqp.is_none() || exchange.is_none() {
        match config::load(config_path) {
            Ok(config) => match config.feed.sink {
                crate::config::SinkConfig::Amqp { url, exchange } => Some((url, exchange)),
                crate::config::SinkConfig::File { .. } => None,
            },
            Err(_) if amqp.is_some() => None,
            Err(diagnostics) => {
                eprintln_redacted!("{diagnostics}");
                eprintln_redacted!("give --amqp <url> or a config whose feed is AMQP");
                return EXIT_INVALID;
            }
        }
    } else {
        None
    };
    let Some(url) = amqp.or_else(|| configured.as_ref().map(|(url, _)| url.clone())) else {
        eprintln_redacted!(
            "error: {} has no AMQP feed; give --amqp <url>",
            config_path.display()
        );
        return EXIT_INVALID;
    };
    let exchange = exchange
        .or_else(|| configured.map(|(_, exchange)| exchange))
        .unwrap_or_else(|| "conflux.customers".to_string());
    let mut stdout = std::io::stdout();
    let tail = crate::sink::tail::tail(&url, &exchange, binding, count, &mut stdout, |queue| {
        eprintln_redacted!(
            "tailing exchange {exchange:?} ({binding}) on {} through temporary queue {queue}",
            crate::sink::amqp::redact_url(&url)
        );
    });
    tokio::select! {
        outcome = tail => match outcome {
            Ok(_) => EXIT_OK,
            Err(error) => {
                eprintln_redacted!("error: {error}");
                EXIT_RUNTIME
            }
        },
        _ = tokio::signal::ctrl_c() => EXIT_OK,
    }
}

/// The configured store, or `None` after printing why it cannot be opened.
async fn open_store_reporting(config: &Config) -> Option<std::sync::Arc<dyn crate::store::Store>> {
    match pipeline::open_store(config).await {
        Ok(store) => Some(store),
        Err(error) => {
            eprintln_redacted!("error: {error}");
            None
        }
    }
}

/// Probes every source a job syncs and the bus; prints one line each and fails (exit 2) when
/// any is unreachable. Connectors no job uses are skipped: they are validated leniently, so
/// their `${VAR}` references may be unset (shipped presets waiting for their credentials).
async fn check_connections_of(config: &Config) -> u8 {
    use crate::source::Source;
    let mut failed = 0usize;
    let mut report = |what: String, outcome: Result<String, String>| match outcome {
        Ok(detail) => println_redacted!("ok     {what}: {detail}"),
        Err(error) => {
            failed += 1;
            println_redacted!("FAILED {what}: {error}");
        }
    };
    let used: std::collections::BTreeSet<&str> = config
        .jobs
        .iter()
        .flat_map(|job| job.streams.iter().map(|stream| stream.connector.as_str()))
        .collect();
    for connector in config.connectors.values() {
        if !used.contains(connector.id.as_str()) {
            println_redacted!("skip   connector {}: no job syncs it", connector.id);
            continue;
        }
        match &connector.transport {
            Transport::File(file) => {
                let outcome = match std::fs::read_dir(&file.dir) {
                    Ok(entries) => Ok(format!(
                        "{} readable ({} entries)",
                        file.dir.display(),
                        entries.count()
                    )),
                    Err(error) => Err(format!("{}: {error}", file.dir.display())),
                };
                report(format!("connector {}", connector.id), outcome);
            }
            Transport::Http(http) => {
                for stream in &http.streams {
                    let location = format!("{}/{}", connector.id, stream.name);
                    let outcome = match crate::source::http::HttpSource::new(
                        stream.settings.clone(),
                        None,
                        &location,
                    ) {
                        Err(error) => Err(error.to_string()),
                        Ok(mut source) => match source.next_batch().await {
                            Ok(Some(batch)) => {
                                Ok(format!("first page has {} records", batch.items.len()))
                            }
                            Ok(None) => Ok("no records".to_string()),
                            Err(error) => Err(error.to_string()),
                        },
                    };
                    report(format!("stream {location}"), outcome);
                }
            }
            Transport::Sql(sql) => {
                for stream in &sql.streams {
                    let location = format!("{}/{}", connector.id, stream.name);
                    let outcome = match crate::source::sql::SqlSource::new(
                        stream.settings.clone(),
                        None,
                        &location,
                    )
                    .await
                    {
                        Err(error) => Err(error.to_string()),
                        Ok(mut source) => match source.next_batch().await {
                            Ok(Some(batch)) => {
                                Ok(format!("first batch has {} rows", batch.items.len()))
                            }
                            Ok(None) => Ok("no rows".to_string()),
                            Err(error) => Err(error.to_string()),
                        },
                    };
                    report(format!("stream {location}"), outcome);
                }
            }
        }
    }
    match &config.feed.sink {
        crate::config::SinkConfig::Amqp { url, exchange } => {
            let sink = crate::sink::amqp::AmqpSink::new(url.clone(), exchange.clone());
            let outcome = sink
                .probe()
                .await
                .map(|()| "connected".to_string())
                .map_err(|e| e.to_string());
            report(
                format!("feed {}", crate::sink::amqp::redact_url(url)),
                outcome,
            );
        }
        crate::config::SinkConfig::File { path } => {
            let parent = path.parent().unwrap_or(path);
            report(
                format!("feed {}", path.display()),
                Ok(if parent.is_dir() {
                    "directory exists".to_string()
                } else {
                    "directory is created on the first run".to_string()
                }),
            );
        }
    }
    if failed > 0 {
        eprintln_redacted!("{failed} connection check(s) failed");
        EXIT_RUNTIME
    } else {
        EXIT_OK
    }
}

async fn run(config: &Config, job: Option<&str>) -> u8 {
    match pipeline::run(config, job).await {
        Ok(summary) => {
            println_redacted!("{summary}");
            EXIT_OK
        }
        Err(PipelineError::Undelivered {
            pending,
            destination,
            error,
            summary,
        }) => {
            println_redacted!("{summary}");
            eprintln_redacted!(
                "error: {pending} events undelivered to {destination}: {error}; they stay in the outbox and the next run delivers them"
            );
            EXIT_RUNTIME
        }
        Err(error) => {
            eprintln_redacted!("error: {error}");
            EXIT_RUNTIME
        }
    }
}

async fn daemon(config: &Config, grace: Duration) -> u8 {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut terminate, mut interrupt) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(terminate), Ok(interrupt)) => (terminate, interrupt),
        (Err(error), _) | (_, Err(error)) => {
            eprintln_redacted!("error: cannot listen for stop signals: {error}");
            return EXIT_RUNTIME;
        }
    };
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received."),
            _ = interrupt.recv() => tracing::info!("SIGINT received."),
        }
    };
    match schedule::run_daemon(config, shutdown, grace).await {
        Ok(()) => EXIT_OK,
        Err(error) => {
            eprintln_redacted!("error: {error}");
            EXIT_RUNTIME
        }
    }
}

async fn list_runs(config: &Config, limit: i64) -> u8 {
    let runs = match pipeline::open_store(config).await {
        Ok(store) => store.recent_runs(limit).await,
        Err(error) => Err(error),
    };
    match runs {
        Ok(runs) => {
            for run in &runs {
                let finished = run
                    .finished_at
                    .map_or_else(|| "-".to_string(), |at| at.to_string());
                println_redacted!(
                    "#{} {} {} .. {} {} {}",
                    run.id,
                    run.job,
                    run.started_at,
                    finished,
                    run.status,
                    run.summary.as_deref().unwrap_or("-")
                );
            }
            println_redacted!("{} job runs shown", runs.len());
            EXIT_OK
        }
        Err(error) => {
            eprintln_redacted!("error: {error}");
            EXIT_RUNTIME
        }
    }
}

/// The system and empty-value convention a mapping is used with (the first stream that
/// names it), so tests and previews see values the way production does.
fn mapping_context(config: &Config, mapping: &str) -> (String, String, Vec<serde_json::Value>) {
    for connector in config.connectors.values() {
        if let Some((stream, _)) = connector
            .stream_mappings()
            .into_iter()
            .find(|(_, m)| *m == mapping)
        {
            return (
                connector.system.clone(),
                stream.to_string(),
                connector.empty_values.clone(),
            );
        }
    }
    (
        "test".into(),
        "test".into(),
        vec![serde_json::Value::String(String::new())],
    )
}

fn test(config: &Config, only: &[String]) -> u8 {
    if let Some(unknown) = only.iter().find(|m| !config.mappings.contains_key(*m)) {
        eprintln_redacted!("error: no mapping named {unknown:?}");
        return EXIT_INVALID;
    }
    let (mut passed, mut failed) = (0usize, 0usize);
    for (id, mapping) in &config.mappings {
        if !only.is_empty() && !only.contains(id) {
            continue;
        }
        let (system, stream, empty_values) = mapping_context(config, id);
        let ctx = MapContext {
            system: &system,
            stream: &stream,
            empty_values: &empty_values,
        };
        for outcome in mapping.run_tests(&ctx) {
            let name = outcome
                .name
                .clone()
                .unwrap_or_else(|| format!("case {}", outcome.case));
            match &outcome.failure {
                None => {
                    passed += 1;
                    println_redacted!("ok     {id} [{name}]");
                }
                Some(failure) => {
                    failed += 1;
                    println_redacted!("FAILED {id} [{name}]: {failure}");
                }
            }
        }
    }
    println_redacted!("mappings: {passed} passed, {failed} failed");
    if failed > 0 { EXIT_INVALID } else { EXIT_OK }
}

fn preview(config: &Config, mapping_id: &str, sample: &Path, limit: usize) -> u8 {
    let Some(mapping) = config.mappings.get(mapping_id) else {
        eprintln_redacted!("error: no mapping named {mapping_id:?}");
        return EXIT_INVALID;
    };
    let settings = match preview_settings(config, mapping_id, sample) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln_redacted!("error: {message}");
            return EXIT_INVALID;
        }
    };
    let items = match read_file(sample, &settings) {
        Ok(items) => items,
        Err(error) => {
            eprintln_redacted!("error: {error}");
            return EXIT_RUNTIME;
        }
    };
    let (system, stream, empty_values) = mapping_context(config, mapping_id);
    let ctx = MapContext {
        system: &system,
        stream: &stream,
        empty_values: &empty_values,
    };
    let (mut ok, mut failed) = (0usize, 0usize);
    for item in &items {
        let shown = ok + failed < limit;
        match item {
            RawItem::Broken(broken) => {
                failed += 1;
                if shown {
                    println_redacted!("ERROR {}: {}", broken.origin, broken.reason);
                }
            }
            RawItem::Record(raw) => match mapping.apply(&raw.value, &ctx) {
                Ok(record) => {
                    ok += 1;
                    if shown {
                        let json = serde_json::to_string_pretty(&record).unwrap_or_default();
                        println_redacted!("{}:\n{json}", raw.origin);
                    }
                }
                Err(error) => {
                    failed += 1;
                    if shown {
                        println_redacted!("ERROR {}: {error}", raw.origin);
                    }
                }
            },
        }
    }
    println_redacted!("{} records: {ok} mapped, {failed} failed", items.len());
    if failed > 0 { EXIT_INVALID } else { EXIT_OK }
}

/// The reader settings of the stream that uses the mapping, or ones inferred from the
/// sample's extension.
fn preview_settings(
    config: &Config,
    mapping: &str,
    sample: &Path,
) -> Result<FileStreamSettings, String> {
    for connector in config.connectors.values() {
        match &connector.transport {
            Transport::File(file) => {
                if let Some(stream) = file.streams.iter().find(|s| s.mapping == mapping) {
                    return Ok(pipeline::file_settings(stream));
                }
            }
            // A saved response body of the stream, read like a file of its format.
            Transport::Http(http) => {
                if let Some(stream) = http.streams.iter().find(|s| s.mapping == mapping) {
                    let format = match stream.settings.format {
                        crate::source::http::BodyFormat::Json => FileFormat::Json,
                        crate::source::http::BodyFormat::Xml => FileFormat::Xml,
                    };
                    let mut settings = FileStreamSettings::new(format);
                    settings.records = stream.settings.records.clone();
                    return Ok(settings);
                }
            }
            // Rows of an SQL stream are previewed from an export, told by its extension.
            Transport::Sql(_) => {}
        }
    }
    let extension = sample
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    let format = match extension {
        "jsonl" => Some(FileFormat::Ndjson),
        other => FileFormat::parse(other),
    }
    .ok_or_else(|| {
        format!(
            "no stream uses mapping {mapping:?} and the format of {} cannot be told from its extension",
            sample.display()
        )
    })?;
    if format == FileFormat::Xml {
        return Err(format!(
            "no stream uses mapping {mapping:?}, so the XML record path is unknown; add the mapping to a stream"
        ));
    }
    Ok(FileStreamSettings {
        format,
        records: None,
        delimiter: b',',
        quote: b'"',
        encoding: TextEncoding::Utf8,
        batch_size: 1000,
    })
}

async fn show_profile(config: &Config, key: &str) -> u8 {
    let Some(store) = open_store_reporting(config).await else {
        return EXIT_RUNTIME;
    };
    let ids = match Uuid::parse_str(key) {
        Ok(id) => Ok(vec![id]),
        Err(_) => store.profiles_by_email(&key.trim().to_lowercase()).await,
    };
    let ids = match ids {
        Ok(ids) => ids,
        Err(error) => {
            eprintln_redacted!("error: {error}");
            return EXIT_RUNTIME;
        }
    };
    let mut found = 0;
    for id in ids {
        match store.profile(id).await {
            Ok(Some(profile)) => {
                found += 1;
                println_redacted!(
                    "{}",
                    serde_json::to_string_pretty(&profile).unwrap_or_default()
                );
            }
            Ok(None) => {}
            Err(error) => {
                eprintln_redacted!("error: {error}");
                return EXIT_RUNTIME;
            }
        }
    }
    if found == 0 {
        eprintln_redacted!("no profile found for {key:?}");
        return EXIT_INVALID;
    }
    EXIT_OK
}

async fn list_quarantine(config: &Config, limit: i64) -> u8 {
    let rows = match pipeline::open_store(config).await {
        Ok(store) => store.quarantine_rows(limit).await,
        Err(error) => Err(error),
    };
    match rows {
        Ok(rows) => {
            for row in &rows {
                println_redacted!(
                    "#{} run {} {}/{} {}: {}",
                    row.id,
                    row.run_id.map_or("-".into(), |r| r.to_string()),
                    row.connector,
                    row.stream,
                    row.source_ref,
                    row.reason
                );
            }
            println_redacted!("{} quarantined records shown", rows.len());
            EXIT_OK
        }
        Err(error) => {
            eprintln_redacted!("error: {error}");
            EXIT_RUNTIME
        }
    }
}

fn generate_customers(out: &Path, count: usize, seed: u64, delta: usize) -> u8 {
    let settings = crate::generate::GenerateSettings { count, seed, delta };
    match crate::generate::generate_customers(out, &settings) {
        Ok(summary) => {
            println!("{}: {summary}", out.display());
            println!(
                "run it: conflux run --config {}",
                out.join("config/customers.toml").display()
            );
            EXIT_OK
        }
        Err(error) => {
            eprintln!("error: {}: {error}", out.display());
            EXIT_RUNTIME
        }
    }
}

pub(crate) async fn evaluate_identities(config: &Config, truth: &Path, examples: usize) -> u8 {
    let truth = match crate::evaluate::Truth::read(truth) {
        Ok(truth) => truth,
        Err(error) => {
            eprintln_redacted!("error: {error}");
            return EXIT_INVALID;
        }
    };
    let Some(store) = open_store_reporting(config).await else {
        return EXIT_RUNTIME;
    };
    match crate::evaluate::evaluate_store(store.as_ref(), &truth, examples).await {
        Ok(evaluation) => {
            print!("{evaluation}");
            EXIT_OK
        }
        Err(error) => {
            eprintln_redacted!("error: {error}");
            EXIT_RUNTIME
        }
    }
}

pub(crate) async fn train_model(config: &Config) -> u8 {
    let Some(store) = open_store_reporting(config).await else {
        return EXIT_RUNTIME;
    };
    match pipeline::train(config, store.as_ref()).await {
        Ok(report) => {
            println_redacted!("{report}");
            EXIT_OK
        }
        Err(error) => {
            eprintln_redacted!("error: {error}");
            EXIT_RUNTIME
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_periods_are_friendly_durations() {
        assert_eq!(parse_grace("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_grace("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_grace("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(
            parse_grace("soon"),
            Err("invalid duration \"soon\"; write one like \"30s\", \"2m\" or \"500ms\"".into())
        );
        assert!(parse_grace("-5s").is_err());
    }

    #[test]
    fn daemon_and_runs_parse_their_options() {
        let cli = Cli::try_parse_from(["conflux", "daemon", "--grace", "10s"]).unwrap();
        assert!(
            matches!(cli.command, Command::Daemon { grace } if grace == Duration::from_secs(10))
        );
        let cli = Cli::try_parse_from(["conflux", "daemon"]).unwrap();
        assert!(
            matches!(cli.command, Command::Daemon { grace } if grace == Duration::from_secs(30))
        );
        let cli = Cli::try_parse_from(["conflux", "runs", "--limit", "3"]).unwrap();
        assert!(matches!(cli.command, Command::Runs { limit: 3 }));
    }
}
