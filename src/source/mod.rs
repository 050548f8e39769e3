//! Sources pull raw records out of source systems, one [`Batch`] at a time.
//!
//! A [`Source`] yields batches of [`RawItem`]s: either a [`RawRecord`] (a JSON-like tree the
//! mapper reads, whatever the wire format was) or a [`BrokenRecord`] that could not even be
//! parsed and goes to quarantine with its reason. Each batch carries a [`Checkpoint`]; the
//! pipeline commits the batch and only then calls [`Source::acknowledge`], so a source's
//! position never runs ahead of what is durably stored.
//!
//! Transports: [`file::FileSource`] (CSV, JSON, NDJSON, XML drops in a directory) and
//! [`http::HttpSource`] (paged REST, OData and JSON-RPC APIs, JSON or XML bodies) and
//! [`sql::SqlSource`] (a SELECT against PostgreSQL, MySQL/MariaDB or SQLite).

pub mod csv;
pub mod file;
pub mod http;
pub mod json;
pub mod sql;
pub mod xml;

use async_trait::async_trait;

/// Where a raw record was found, for error messages and quarantine entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file (relative to the connector directory) or request the record came from.
    pub location: String,
    /// 1-based line in that file where the record starts, when known.
    pub line: Option<u64>,
    /// 0-based position of the record in its file or response.
    pub index: u64,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{} (record {})", self.location, line, self.index + 1),
            None => write!(f, "{} (record {})", self.location, self.index + 1),
        }
    }
}

/// One parsed source record. XML elements become objects: attributes as `@name` keys,
/// child elements by name (an array when repeated), text as a string (or `#text` when the
/// element also has attributes or children).
#[derive(Debug, Clone, PartialEq)]
pub struct RawRecord {
    pub value: serde_json::Value,
    pub origin: Origin,
}

/// Input that could not be parsed into a record at all.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokenRecord {
    pub origin: Origin,
    /// The raw bytes of the broken part (lossily decoded, capped at 64 KiB).
    pub raw: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RawItem {
    Record(RawRecord),
    Broken(BrokenRecord),
}

/// A file that has been read completely; stored so it is never ingested twice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IngestedFile {
    /// Path relative to the connector directory, `/`-separated.
    pub path: String,
    pub size: u64,
    /// blake3 of the file's bytes, hex.
    pub hash: String,
}

/// What committing a batch means for the source's position.
#[derive(Debug, Clone, PartialEq)]
pub enum Checkpoint {
    /// Mid-file or mid-stream: nothing to record yet.
    None,
    /// The batch ends a file; store it as ingested and then archive it.
    FileDone(IngestedFile),
    /// The batch ends the stream for this run; store this incremental cursor with it.
    Cursor(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub items: Vec<RawItem>,
    pub checkpoint: Checkpoint,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    /// A request failed for good. `url` never contains credentials; `status` is absent when
    /// no response arrived.
    #[error("{url}: {}", http_failure(*.status, .message))]
    Http {
        url: String,
        status: Option<u16>,
        message: String,
    },
    /// Connecting to a database or running its query failed. `url` has its password masked.
    #[error("{url}: {message}")]
    Database { url: String, message: String },
}

fn http_failure(status: Option<u16>, message: &str) -> String {
    match status {
        Some(status) => format!("HTTP {status}: {message}"),
        None => message.to_string(),
    }
}

#[async_trait]
pub trait Source: Send {
    /// The next batch, or `None` when the stream has nothing more for this run.
    async fn next_batch(&mut self) -> Result<Option<Batch>, SourceError>;

    /// Called after the batch carrying `checkpoint` has been committed to the store.
    async fn acknowledge(&mut self, checkpoint: &Checkpoint) -> Result<(), SourceError> {
        let _ = checkpoint;
        Ok(())
    }
}

/// Test helpers shared by the readers' tests.
#[cfg(test)]
pub(crate) mod test_items {
    use super::{BrokenRecord, RawItem, RawRecord};

    pub(crate) fn record(item: &RawItem) -> &RawRecord {
        match item {
            RawItem::Record(record) => record,
            RawItem::Broken(broken) => panic!("unexpected broken item: {broken:?}"),
        }
    }

    pub(crate) fn broken(item: &RawItem) -> &BrokenRecord {
        match item {
            RawItem::Broken(broken) => broken,
            RawItem::Record(record) => panic!("unexpected record: {record:?}"),
        }
    }
}
