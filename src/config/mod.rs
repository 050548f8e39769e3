//! Operator files: loading, `${VAR}` resolution, pure validation and the typed [`Config`].
//!
//! [`load`] reads `config/<id>.toml`, every connector file and every mapping file of the
//! deployment, and returns either a [`Config`] in which every cross-reference holds (job →
//! connector → stream → mapping) or [`Diagnostics`]: every problem in every file at once, as
//! `file:line:column: message`. The stages are separate modules: `spec` (raw serde types, as
//! written), `load` (file I/O and error-tolerant parsing), `env` (`${VAR}` resolution) and
//! `validate` (pure checks that build the typed values below).
//!
//! Invariants of a loaded [`Config`]: every path is absolute; every job stream names an
//! existing connector stream whose mapping compiled; every string value has had its `${VAR}`
//! references resolved, except in connector files no job uses (their unset references stay
//! verbatim); secrets read from the environment are never printed, including by `Debug`.

mod diagnostic;
mod env;
mod load;
pub mod spec;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rust_decimal::Decimal;

use crate::mapper::Mapping;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use load::load;

/// One deployment, validated: where data is stored, where events go, how identities and
/// profiles are built, which jobs run, and every connector and mapping of the tree.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file's stem.
    pub id: String,
    /// The config file, as given to [`load`].
    pub path: PathBuf,
    /// Absolute, canonical directory relative paths resolve against.
    pub root: PathBuf,
    /// `instance` from the file, or the id.
    pub instance: String,
    pub store: StoreConfig,
    pub feed: FeedConfig,
    pub identity: IdentityConfig,
    pub profile: ProfileConfig,
    pub jobs: Vec<JobConfig>,
    /// Every connector file found, by id, whether or not a job uses it.
    pub connectors: BTreeMap<String, ConnectorConfig>,
    /// Every mapping file found, compiled, by id.
    pub mappings: BTreeMap<String, Arc<Mapping>>,
}

impl Config {
    /// The job called `name`.
    pub fn job(&self, name: &str) -> Option<&JobConfig> {
        self.jobs.iter().find(|job| job.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// The SQLite database file (absolute).
    Sqlite { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedConfig {
    pub sink: SinkConfig,
    /// How long the relay keeps retrying an unreachable destination; default 30 s.
    pub retry_budget: Duration,
    /// Events per round trip; default 500.
    pub batch_size: usize,
}

/// Where events are published.
#[derive(Clone, PartialEq, Eq)]
pub enum SinkConfig {
    /// Append NDJSON to this file (absolute).
    File { path: PathBuf },
    /// Publish to a topic exchange; `url` usually carries credentials.
    Amqp { url: String, exchange: String },
}

impl fmt::Debug for SinkConfig {
    // The AMQP URL carries the broker password: `Debug` output ends up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkConfig::File { path } => f.debug_struct("File").field("path", path).finish(),
            SinkConfig::Amqp { exchange, .. } => f
                .debug_struct("Amqp")
                .field("url", &"<redacted>")
                .field("exchange", exchange)
                .finish(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    /// Strong keys that link customer records outright; default `[Email, Identifier("vat")]`.
    pub match_on: Vec<MatchKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MatchKey {
    Email,
    Phone,
    /// An identifier scheme such as `vat` or `duns`.
    Identifier(String),
}

impl fmt::Display for MatchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MatchKey::Email => f.write_str("email"),
            MatchKey::Phone => f.write_str("phone"),
            MatchKey::Identifier(scheme) => write!(f, "identifier:{scheme}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileConfig {
    /// ISO 4217 code metrics are expressed in; default `EUR`.
    pub base_currency: String,
    /// Units of base currency per unit of the keyed currency; every rate is positive.
    pub fx: BTreeMap<String, Decimal>,
    /// Connector systems in descending trust; each names the system of a loaded connector.
    pub source_priority: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobConfig {
    pub name: String,
    /// A cron expression known to parse (5 fields, or 6 with seconds first).
    pub schedule: Option<String>,
    /// A valid IANA time zone name; `None` means UTC.
    pub timezone: Option<String>,
    /// The streams to run, in order; a bare connector in `sync` expands to all its streams in
    /// file order.
    pub streams: Vec<StreamRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamRef {
    pub connector: String,
    pub stream: String,
}

/// One source system: its connector file's common settings and its transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorConfig {
    /// The file stem.
    pub id: String,
    /// The connector file (absolute).
    pub path: PathBuf,
    /// The system name in source refs; defaults to the id.
    pub system: String,
    /// Values that mean "absent" in this system (strings or booleans); default `[""]`.
    pub empty_values: Vec<serde_json::Value>,
    pub transport: Transport,
}

impl ConnectorConfig {
    /// The stream called `name`.
    pub fn stream(&self, name: &str) -> Option<&FileStream> {
        match &self.transport {
            Transport::File(file) => file.streams.iter().find(|stream| stream.name == name),
        }
    }

    /// The names of all streams, in file order.
    pub fn stream_names(&self) -> Vec<&str> {
        match &self.transport {
            Transport::File(file) => file.streams.iter().map(|s| s.name.as_str()).collect(),
        }
    }
}

/// The registry of transports: one variant per connector `kind`. Adding a transport means a
/// variant here, its spec type in `spec`, and one arm in each `match` the compiler then
/// points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// `kind = "file"`: files dropped into a directory.
    File(FileConnector),
}

impl Transport {
    /// Every supported `kind`, in the order messages list them.
    pub const KINDS: [&'static str; 1] = ["file"];

    /// The `kind` this transport is written as.
    pub fn kind(&self) -> &'static str {
        match self {
            Transport::File(_) => "file",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileConnector {
    /// The directory streams' patterns match in (absolute).
    pub dir: PathBuf,
    /// Where files move once committed (absolute).
    pub archive_dir: Option<PathBuf>,
    pub streams: Vec<FileStream>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStream {
    pub name: String,
    /// A valid glob, relative, without `..`.
    pub pattern: String,
    /// `csv`, `json`, `ndjson` or `xml`.
    pub format: String,
    /// Where records sit in a document; always set for `xml`.
    pub records: Option<String>,
    /// The id of a compiled mapping in [`Config::mappings`].
    pub mapping: String,
    pub delimiter: u8,
    pub quote: u8,
    /// `utf-8` or `windows-1252`.
    pub encoding: String,
    pub batch_size: usize,
}
