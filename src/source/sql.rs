//! Relational databases: [`SqlSource`] runs one operator-written `SELECT` described by
//! [`SqlStreamSettings`] against PostgreSQL, MySQL/MariaDB or SQLite and yields its rows in
//! batches of [`SqlStreamSettings::batch_size`].
//!
//! The query is checked by [`check_query`] before anything connects: it must start with
//! `SELECT` or `WITH`, and it holds exactly one `:cursor` placeholder when the stream is
//! incremental (a [`SqlStreamSettings::cursor_column`] is set) and none in snapshot mode.
//! `:cursor` is rewritten to the driver's own placeholder (`$1` on PostgreSQL and SQLite, `?` on
//! MySQL) and the cursor is always bound as a text parameter, never spliced into the SQL; on
//! PostgreSQL a non-text cursor column therefore needs a cast in the query
//! (`WHERE changed_at > CAST(:cursor AS timestamp)`). Occurrences inside string literals,
//! quoted identifiers and comments are not placeholders.
//!
//! Rows are streamed from the database by a background task over a bounded channel, so at most
//! about two batches are held in memory. Every row becomes a JSON object of column name → value:
//! text as strings, integers and floats as numbers (non-finite floats as null), booleans as
//! booleans, decimals and numerics as strings so no digit is lost (`"12.30"`), timestamps, dates
//! and times as ISO 8601 strings (`2024-01-02T03:04:05`, with `Z` for zoned timestamps), UUIDs as
//! strings, JSON columns as JSON, and bytes as lowercase hex without prefix. SQLite values are
//! read by their storage class (integer, real, text, blob). A column whose type cannot be decoded
//! reads as null, with one warning per column and run.
//!
//! Cursor rule: the query must `ORDER BY` the cursor column ascending; the run's new cursor is
//! the rendered value of the cursor column in the last row that has a non-null one. The last
//! batch of an incremental run carries [`Checkpoint::Cursor`] with it (the bound cursor when no
//! row came back), every other batch [`Checkpoint::None`], so a crash mid-stream re-reads from
//! the old cursor.
//!
//! Invariants: connection URLs appear in errors only with their password masked; an incremental
//! stream never starts without a cursor (the stored one, else
//! [`SqlStreamSettings::initial`]); a stream that ends abnormally ends with an error, never with a
//! checkpoint.

use std::collections::HashSet;
use std::future::poll_fn;
use std::task::{Context, Poll};

use async_trait::async_trait;
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use sqlx::mysql::{MySqlConnection, MySqlRow};
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::types::chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use sqlx::{AssertSqlSafe, Column, Connection, Row, TypeInfo, ValueRef};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Batch, Checkpoint, Origin, RawItem, RawRecord, Source, SourceError};
use crate::sink::amqp::redact_url;

const PLACEHOLDER: &str = ":cursor";

/// Everything one SQL stream needs; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlStreamSettings {
    /// `postgres://…`, `postgresql://…`, `mysql://…`, `mariadb://…` or `sqlite://…`.
    pub url: String,
    /// A `SELECT` (or `WITH … SELECT`) with `:cursor` where the watermark goes.
    pub query: String,
    /// The result column whose last value becomes the next cursor; `None` is snapshot mode.
    pub cursor_column: Option<String>,
    /// Cursor of the first run, required when incremental.
    pub initial: Option<String>,
    /// Rows per batch, at least 1.
    pub batch_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    Postgres,
    MySql,
    Sqlite,
}

impl Driver {
    fn of(url: &str) -> Result<Driver, String> {
        let scheme = url.split_once(':').map(|(scheme, _)| scheme).unwrap_or("");
        match scheme.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => Ok(Driver::Postgres),
            "mysql" | "mariadb" => Ok(Driver::MySql),
            "sqlite" => Ok(Driver::Sqlite),
            _ => Err(format!(
                "unsupported database URL scheme `{scheme}`; expected postgres, mysql, mariadb or sqlite"
            )),
        }
    }

    fn placeholder(self) -> &'static str {
        match self {
            Driver::Postgres | Driver::Sqlite => "$1",
            Driver::MySql => "?",
        }
    }
}

/// Checks the shape of an operator's query without touching a database; see the module
/// documentation for the rules. The error is a sentence for a config diagnostic.
pub fn check_query(query: &str, incremental: bool) -> Result<(), String> {
    if !starts_with_select(query) {
        return Err("the query must start with SELECT or WITH".to_string());
    }
    let placeholders = placeholder_positions(query).len();
    match (incremental, placeholders) {
        (true, 1) | (false, 0) => Ok(()),
        (true, 0) => Err(format!(
            "the query has no `{PLACEHOLDER}` placeholder; an incremental stream binds its cursor there"
        )),
        (true, n) => Err(format!(
            "the query has {n} `{PLACEHOLDER}` placeholders; an incremental stream needs exactly one"
        )),
        (false, _) => Err(format!(
            "the query has a `{PLACEHOLDER}` placeholder but the stream has no cursor column"
        )),
    }
}

/// Whether the first word after whitespace and comments is `SELECT` or `WITH`.
fn starts_with_select(query: &str) -> bool {
    let mut rest = query;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map(|(_, next)| next).unwrap_or("");
        } else if let Some(after) = rest.strip_prefix("/*") {
            match after.split_once("*/") {
                Some((_, next)) => rest = next,
                None => return false,
            }
        } else {
            break;
        }
    }
    let word: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    word.eq_ignore_ascii_case("select") || word.eq_ignore_ascii_case("with")
}

/// Byte offsets of every `:cursor` placeholder outside literals, quoted identifiers and
/// comments. `::cursor` (a PostgreSQL cast) and `:cursor_x` are not placeholders.
fn placeholder_positions(query: &str) -> Vec<usize> {
    let bytes = query.as_bytes();
    let mut positions = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"' | b'`') => {
                // A doubled quote inside the literal is an escaped quote; both halves are
                // skipped as the literal closes and immediately reopens. A backslash escapes the
                // next character as MySQL reads it; where it does not (standard PostgreSQL
                // strings) the worst case is a miscounted placeholder, reported by check_query.
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    if bytes[i] == b'\\' && quote == b'\'' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < bytes.len() && !(bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i += 2;
            }
            b':' if query[i..].starts_with(PLACEHOLDER)
                && (i == 0 || bytes[i - 1] != b':')
                && !bytes
                    .get(i + PLACEHOLDER.len())
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_') =>
            {
                positions.push(i);
                i += PLACEHOLDER.len();
            }
            _ => i += 1,
        }
    }
    positions
}

/// `query` with its placeholder replaced by the driver's.
fn translate(query: &str, driver: Driver) -> String {
    let mut translated = String::with_capacity(query.len());
    let mut copied = 0;
    for position in placeholder_positions(query) {
        translated.push_str(&query[copied..position]);
        translated.push_str(driver.placeholder());
        copied = position + PLACEHOLDER.len();
    }
    translated.push_str(&query[copied..]);
    translated
}

/// What the background task reports; `Done` tells a finished query from a task that died.
enum Message {
    Row(Map<String, Value>),
    Failed(SourceError),
    Done,
}

/// One SQL stream for one run; see the module documentation.
pub struct SqlSource {
    location: String,
    batch_size: usize,
    cursor_column: Option<String>,
    /// The bound cursor, raised to each row's cursor value as rows arrive.
    cursor: Option<String>,
    rows: mpsc::Receiver<Message>,
    /// A row read ahead to learn whether the batch before it was the last.
    pending: Option<Map<String, Value>>,
    task: JoinHandle<()>,
    index: u64,
    finished: bool,
}

impl SqlSource {
    /// Checks the settings, connects and starts the query. `cursor` is the stored cursor of the
    /// stream; `location` names the stream in origins, warnings and errors.
    pub async fn new(
        settings: SqlStreamSettings,
        cursor: Option<String>,
        location: &str,
    ) -> Result<SqlSource, SourceError> {
        let redacted = redact_url(&settings.url);
        let config = |message: String| SourceError::Config(format!("{location}: {message}"));
        if settings.batch_size == 0 {
            return Err(config("batch_size must be at least 1".to_string()));
        }
        let driver = Driver::of(&settings.url).map_err(config)?;
        let incremental = settings.cursor_column.is_some();
        check_query(&settings.query, incremental).map_err(config)?;
        let cursor = match (incremental, cursor.or(settings.initial)) {
            (true, None) => {
                return Err(config(
                    "an incremental stream needs an initial cursor for its first run".to_string(),
                ));
            }
            (true, cursor) => cursor,
            (false, _) => None,
        };
        let sql = translate(&settings.query, driver);
        let connection = Connected::open(driver, &settings.url)
            .await
            .map_err(|error| database_error(&redacted, "cannot connect", &error))?;
        // One row of slack beyond a batch keeps the database busy while a batch is handed on.
        let (sender, rows) = mpsc::channel(settings.batch_size + 1);
        let task = tokio::spawn(connection.pump(Pump {
            sql,
            cursor: cursor.clone(),
            sender,
            url: redacted,
            columns: ColumnDecoder::new(location),
        }));
        Ok(SqlSource {
            location: location.to_string(),
            batch_size: settings.batch_size,
            cursor_column: settings.cursor_column,
            cursor,
            rows,
            pending: None,
            task,
            index: 0,
            finished: false,
        })
    }

    async fn next_row(&mut self) -> Result<Option<Map<String, Value>>, SourceError> {
        if let Some(row) = self.pending.take() {
            return Ok(Some(row));
        }
        match self.rows.recv().await {
            Some(Message::Row(row)) => Ok(Some(row)),
            Some(Message::Done) => Ok(None),
            Some(Message::Failed(error)) => Err(error),
            None => Err(SourceError::Config(format!(
                "{}: the query task stopped before the result was complete",
                self.location
            ))),
        }
    }

    /// Raises the run's cursor to `row`'s cursor value, when it has a non-null one.
    fn track_cursor(&mut self, row: &Map<String, Value>) -> Result<(), SourceError> {
        let Some(column) = &self.cursor_column else {
            return Ok(());
        };
        let value = row.get(column).ok_or_else(|| {
            SourceError::Config(format!(
                "{}: the query result has no column `{column}` (the cursor column)",
                self.location
            ))
        })?;
        match value {
            Value::Null => {}
            Value::String(text) => self.cursor = Some(text.clone()),
            other => self.cursor = Some(other.to_string()),
        }
        Ok(())
    }
}

impl Drop for SqlSource {
    fn drop(&mut self) {
        // A source dropped mid-stream must not leave a query running on the server.
        self.task.abort();
    }
}

#[async_trait]
impl Source for SqlSource {
    async fn next_batch(&mut self) -> Result<Option<Batch>, SourceError> {
        if self.finished {
            return Ok(None);
        }
        let mut items = Vec::new();
        loop {
            let row = match self.next_row().await {
                Ok(Some(row)) => row,
                Ok(None) => {
                    self.finished = true;
                    break;
                }
                Err(error) => {
                    self.finished = true;
                    return Err(error);
                }
            };
            if items.len() == self.batch_size {
                self.pending = Some(row);
                break;
            }
            if let Err(error) = self.track_cursor(&row) {
                self.finished = true;
                return Err(error);
            }
            items.push(RawItem::Record(RawRecord {
                value: Value::Object(row),
                origin: Origin {
                    location: self.location.clone(),
                    line: None,
                    index: self.index,
                },
            }));
            self.index += 1;
        }
        let checkpoint = match (&self.cursor_column, &self.cursor) {
            (Some(_), Some(cursor)) if self.finished => Checkpoint::Cursor(cursor.clone()),
            _ => Checkpoint::None,
        };
        if items.is_empty() && checkpoint == Checkpoint::None {
            return Ok(None);
        }
        Ok(Some(Batch { items, checkpoint }))
    }
}

fn database_error(url: &str, doing: &str, error: &sqlx::Error) -> SourceError {
    SourceError::Database {
        url: url.to_string(),
        message: format!("{doing}: {error}"),
    }
}

enum Connected {
    Postgres(PgConnection),
    MySql(MySqlConnection),
    Sqlite(SqliteConnection),
}

/// What the background task needs besides its connection.
struct Pump {
    sql: String,
    cursor: Option<String>,
    sender: mpsc::Sender<Message>,
    url: String,
    columns: ColumnDecoder,
}

impl Connected {
    async fn open(driver: Driver, url: &str) -> Result<Connected, sqlx::Error> {
        Ok(match driver {
            Driver::Postgres => Connected::Postgres(PgConnection::connect(url).await?),
            Driver::MySql => Connected::MySql(MySqlConnection::connect(url).await?),
            Driver::Sqlite => Connected::Sqlite(SqliteConnection::connect(url).await?),
        })
    }

    /// Runs the query and sends its rows, then `Done`, or the first error.
    async fn pump(self, job: Pump) {
        let Pump {
            sql,
            cursor,
            sender,
            url,
            mut columns,
        } = job;
        // The SQL comes from the operator's configuration, never from data; the cursor, which
        // does come from data, is bound as a parameter.
        let sql = AssertSqlSafe(sql);
        match self {
            Connected::Postgres(mut connection) => {
                let mut query = sqlx::query(sql);
                if let Some(cursor) = cursor {
                    query = query.bind(cursor);
                }
                let mut rows = query.fetch(&mut connection);
                drain(
                    |context| rows.as_mut().poll_next(context),
                    &sender,
                    &url,
                    |row| columns.row(row, postgres_value),
                )
                .await;
                drop(rows);
                let _ = connection.close().await;
            }
            Connected::MySql(mut connection) => {
                let mut query = sqlx::query(sql);
                if let Some(cursor) = cursor {
                    query = query.bind(cursor);
                }
                let mut rows = query.fetch(&mut connection);
                drain(
                    |context| rows.as_mut().poll_next(context),
                    &sender,
                    &url,
                    |row| columns.row(row, mysql_value),
                )
                .await;
                drop(rows);
                let _ = connection.close().await;
            }
            Connected::Sqlite(mut connection) => {
                let mut query = sqlx::query(sql);
                if let Some(cursor) = cursor {
                    query = query.bind(cursor);
                }
                let mut rows = query.fetch(&mut connection);
                drain(
                    |context| rows.as_mut().poll_next(context),
                    &sender,
                    &url,
                    |row| columns.row(row, sqlite_value),
                )
                .await;
                drop(rows);
                let _ = connection.close().await;
            }
        }
    }
}

/// Sends the rows `poll` yields; `poll` is the row stream's `poll_next`, passed as a closure
/// so this function need not name the stream type.
async fn drain<R>(
    mut poll: impl FnMut(&mut Context<'_>) -> Poll<Option<Result<R, sqlx::Error>>>,
    sender: &mpsc::Sender<Message>,
    url: &str,
    mut convert: impl FnMut(&R) -> Map<String, Value>,
) {
    loop {
        let message = match poll_fn(&mut poll).await {
            Some(Ok(row)) => Message::Row(convert(&row)),
            Some(Err(error)) => Message::Failed(database_error(url, "query failed", &error)),
            None => Message::Done,
        };
        let last = !matches!(message, Message::Row(_));
        // A closed channel means the source was dropped: nobody wants more rows.
        if sender.send(message).await.is_err() || last {
            return;
        }
    }
}

/// Turns rows into JSON objects and remembers which columns it has warned about.
struct ColumnDecoder {
    location: String,
    warned: HashSet<String>,
}

type ValueDecoder<R> = fn(&R, usize, &str) -> Result<Value, String>;

impl ColumnDecoder {
    fn new(location: &str) -> ColumnDecoder {
        ColumnDecoder {
            location: location.to_string(),
            warned: HashSet::new(),
        }
    }

    fn row<R>(&mut self, row: &R, decode: ValueDecoder<R>) -> Map<String, Value>
    where
        R: Row,
        usize: sqlx::ColumnIndex<R>,
    {
        let mut object = Map::with_capacity(row.len());
        for (index, column) in row.columns().iter().enumerate() {
            let name = column.name();
            let type_name = match row.try_get_raw(index) {
                Ok(raw) if raw.is_null() => {
                    object.insert(name.to_string(), Value::Null);
                    continue;
                }
                Ok(raw) => raw.type_info().name().to_string(),
                Err(error) => {
                    self.warn(name, "?", &error.to_string());
                    object.insert(name.to_string(), Value::Null);
                    continue;
                }
            };
            let value = decode(row, index, &type_name).unwrap_or_else(|reason| {
                self.warn(name, &type_name, &reason);
                Value::Null
            });
            object.insert(name.to_string(), value);
        }
        object
    }

    fn warn(&mut self, column: &str, sql_type: &str, reason: &str) {
        if self.warned.insert(column.to_string()) {
            tracing::warn!(
                stream = %self.location,
                column,
                sql_type,
                error = reason,
                "a column cannot be decoded; its values are read as null"
            );
        }
    }
}

fn get<'r, R, T>(row: &'r R, index: usize) -> Result<T, String>
where
    R: Row,
    T: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    row.try_get::<T, usize>(index)
        .map_err(|error| error.to_string())
}

fn float(value: f64) -> Value {
    serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

fn datetime(value: NaiveDateTime) -> String {
    value.format("%Y-%m-%dT%H:%M:%S%.f").to_string()
}

fn zoned(value: DateTime<Utc>) -> String {
    value.format("%Y-%m-%dT%H:%M:%S%.fZ").to_string()
}

fn time(value: NaiveTime) -> String {
    value.format("%H:%M:%S%.f").to_string()
}

fn date(value: NaiveDate) -> String {
    value.format("%Y-%m-%d").to_string()
}

fn unsupported(type_name: &str) -> Result<Value, String> {
    Err(format!("unsupported column type {type_name}"))
}

fn postgres_value(row: &PgRow, index: usize, type_name: &str) -> Result<Value, String> {
    Ok(match type_name {
        "BOOL" => Value::Bool(get(row, index)?),
        "INT2" => Value::from(get::<_, i16>(row, index)?),
        "INT4" => Value::from(get::<_, i32>(row, index)?),
        "INT8" => Value::from(get::<_, i64>(row, index)?),
        "FLOAT4" => float(f64::from(get::<_, f32>(row, index)?)),
        "FLOAT8" => float(get(row, index)?),
        "NUMERIC" => Value::String(get::<_, Decimal>(row, index)?.to_string()),
        "TEXT" | "VARCHAR" | "CHAR" | "NAME" | "citext" | "CITEXT" | "UNKNOWN" => {
            Value::String(get(row, index)?)
        }
        "UUID" => Value::String(get::<_, uuid::Uuid>(row, index)?.to_string()),
        "JSON" | "JSONB" => get::<_, Value>(row, index)?,
        "TIMESTAMP" => Value::String(datetime(get(row, index)?)),
        "TIMESTAMPTZ" => Value::String(zoned(get(row, index)?)),
        "DATE" => Value::String(date(get(row, index)?)),
        "TIME" => Value::String(time(get(row, index)?)),
        "BYTEA" => Value::String(hex(&get::<_, Vec<u8>>(row, index)?)),
        other => return unsupported(other),
    })
}

fn mysql_value(row: &MySqlRow, index: usize, type_name: &str) -> Result<Value, String> {
    Ok(match type_name {
        "BOOLEAN" => Value::Bool(get(row, index)?),
        "TINYINT" | "SMALLINT" | "INT" | "MEDIUMINT" | "BIGINT" => {
            Value::from(get::<_, i64>(row, index)?)
        }
        "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "INT UNSIGNED" | "MEDIUMINT UNSIGNED"
        | "BIGINT UNSIGNED" => Value::from(get::<_, u64>(row, index)?),
        "FLOAT" => float(f64::from(get::<_, f32>(row, index)?)),
        "DOUBLE" => float(get(row, index)?),
        "DECIMAL" => Value::String(get::<_, Decimal>(row, index)?.to_string()),
        "CHAR" | "VARCHAR" | "TINYTEXT" | "TEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM" | "SET" => {
            Value::String(get(row, index)?)
        }
        "JSON" => get::<_, Value>(row, index)?,
        "DATETIME" => Value::String(datetime(get(row, index)?)),
        "TIMESTAMP" => Value::String(zoned(get(row, index)?)),
        "DATE" => Value::String(date(get(row, index)?)),
        "TIME" => Value::String(time(get(row, index)?)),
        "BINARY" | "VARBINARY" | "TINYBLOB" | "BLOB" | "MEDIUMBLOB" | "LONGBLOB" => {
            Value::String(hex(&get::<_, Vec<u8>>(row, index)?))
        }
        other => return unsupported(other),
    })
}

fn sqlite_value(row: &SqliteRow, index: usize, type_name: &str) -> Result<Value, String> {
    Ok(match type_name {
        "INTEGER" => Value::from(get::<_, i64>(row, index)?),
        "REAL" => float(get(row, index)?),
        "TEXT" => Value::String(get(row, index)?),
        "BLOB" => Value::String(hex(&get::<_, Vec<u8>>(row, index)?)),
        other => return unsupported(other),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
    const MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";

    /// A database to test against, with the column types its dialect spells differently.
    struct Backend {
        url: String,
        /// Keeps a SQLite file alive for the test.
        _dir: Option<tempfile::TempDir>,
    }

    fn sqlite() -> Backend {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("erp.db").display());
        Backend {
            url,
            _dir: Some(dir),
        }
    }

    /// The service at `env` or `default`, or `None` (after saying so) when it does not answer.
    /// With `CONFLUX_REQUIRE_SERVICES=1` an unreachable service fails the test instead.
    async fn service(name: &str, env: &str, default: &str) -> Option<Backend> {
        let url = std::env::var(env).unwrap_or_else(|_| default.to_string());
        let driver = Driver::of(&url).expect("test URL scheme");
        let probe = tokio::time::timeout(Duration::from_secs(5), Connected::open(driver, &url));
        let reason = match probe.await {
            Ok(Ok(_)) => return Some(Backend { url, _dir: None }),
            Ok(Err(error)) => error.to_string(),
            Err(_) => "timed out".to_string(),
        };
        let redacted = redact_url(&url);
        if std::env::var("CONFLUX_REQUIRE_SERVICES").as_deref() == Ok("1") {
            panic!("{name} not reachable at {redacted} ({reason}) but required");
        }
        eprintln!("skipping: {name} not reachable at {redacted} ({reason})");
        None
    }

    async fn postgres() -> Option<Backend> {
        service("PostgreSQL", "CONFLUX_TEST_POSTGRES_URL", POSTGRES_URL).await
    }

    async fn mysql() -> Option<Backend> {
        service("MariaDB", "CONFLUX_TEST_MYSQL_URL", MYSQL_URL).await
    }

    impl Backend {
        fn driver(&self) -> Driver {
            Driver::of(&self.url).expect("test URL scheme")
        }

        /// Runs statements that return no rows, each on its own.
        async fn execute(&self, statements: &[String]) {
            let url = match self.driver() {
                Driver::Sqlite => format!("{}?mode=rwc", self.url),
                _ => self.url.clone(),
            };
            let connected = Connected::open(self.driver(), &url).await.expect("connect");
            match connected {
                Connected::Postgres(mut c) => {
                    for statement in statements {
                        let sql = AssertSqlSafe(statement.clone());
                        sqlx::query(sql).execute(&mut c).await.expect(statement);
                    }
                }
                Connected::MySql(mut c) => {
                    for statement in statements {
                        let sql = AssertSqlSafe(statement.clone());
                        sqlx::query(sql).execute(&mut c).await.expect(statement);
                    }
                }
                Connected::Sqlite(mut c) => {
                    for statement in statements {
                        let sql = AssertSqlSafe(statement.clone());
                        sqlx::query(sql).execute(&mut c).await.expect(statement);
                    }
                }
            }
        }

        /// A fresh table named after the test, created from `columns`, filled with `rows`.
        async fn table(&self, columns: &str, rows: &[&str]) -> String {
            let name = format!("t_{}", uuid::Uuid::now_v7().simple());
            let mut statements = vec![format!("CREATE TABLE {name} ({columns})")];
            statements.extend(
                rows.iter()
                    .map(|row| format!("INSERT INTO {name} VALUES ({row})")),
            );
            self.execute(&statements).await;
            name
        }

        async fn drop_table(&self, name: &str) {
            self.execute(&[format!("DROP TABLE {name}")]).await;
        }

        fn settings(&self, query: String, cursor_column: Option<&str>) -> SqlStreamSettings {
            SqlStreamSettings {
                url: self.url.clone(),
                query,
                cursor_column: cursor_column.map(str::to_string),
                initial: cursor_column.map(|_| "2024-01-01".to_string()),
                batch_size: 2,
            }
        }
    }

    /// Every batch of a run: the records' values and the checkpoint.
    async fn run(
        settings: SqlStreamSettings,
        cursor: Option<&str>,
    ) -> Vec<(Vec<Value>, Checkpoint)> {
        let mut source = SqlSource::new(settings, cursor.map(str::to_string), "erp.orders")
            .await
            .expect("source");
        let mut batches = Vec::new();
        while let Some(batch) = source.next_batch().await.expect("batch") {
            let values = batch
                .items
                .iter()
                .map(|item| super::super::test_items::record(item).value.clone())
                .collect();
            batches.push((values, batch.checkpoint));
        }
        batches
    }

    fn column(batches: &[(Vec<Value>, Checkpoint)], name: &str) -> Vec<Vec<Value>> {
        batches
            .iter()
            .map(|(rows, _)| rows.iter().map(|row| row[name].clone()).collect())
            .collect()
    }

    fn checkpoints(batches: &[(Vec<Value>, Checkpoint)]) -> Vec<Checkpoint> {
        batches
            .iter()
            .map(|(_, checkpoint)| checkpoint.clone())
            .collect()
    }

    fn cursor(value: &str) -> Checkpoint {
        Checkpoint::Cursor(value.to_string())
    }

    const CHANGES: &str = "id INT, changed VARCHAR(40), note VARCHAR(40)";

    fn changes_query(table: &str) -> String {
        format!(
            "-- newest changes\nSELECT id, changed, note FROM {table} WHERE changed > :cursor ORDER BY changed"
        )
    }

    async fn incremental_runs_read_only_newer_rows_in_batches(backend: Backend) {
        let table = backend
            .table(
                CHANGES,
                &[
                    "1, '2024-01-01', 'old'",
                    "2, '2024-01-02', NULL",
                    "3, '2024-01-03', 'c'",
                    "4, '2024-01-04', 'd'",
                    "5, '2024-01-05', 'e'",
                    "6, '2024-01-06', 'f'",
                ],
            )
            .await;
        let settings = backend.settings(changes_query(&table), Some("changed"));

        let first = run(settings.clone(), None).await;
        assert_eq!(
            column(&first, "id"),
            vec![
                vec![Value::from(2), Value::from(3)],
                vec![Value::from(4), Value::from(5)],
                vec![Value::from(6)],
            ]
        );
        assert_eq!(first[0].0[0]["note"], Value::Null);
        assert_eq!(
            checkpoints(&first),
            vec![Checkpoint::None, Checkpoint::None, cursor("2024-01-06")]
        );

        backend
            .execute(&[format!("INSERT INTO {table} VALUES (7, '2024-01-07', 'g')")])
            .await;
        let second = run(settings.clone(), Some("2024-01-06")).await;
        assert_eq!(column(&second, "id"), vec![vec![Value::from(7)]]);
        assert_eq!(checkpoints(&second), vec![cursor("2024-01-07")]);

        let idle = run(settings, Some("2024-01-07")).await;
        assert_eq!(idle, vec![(vec![], cursor("2024-01-07"))]);
        backend.drop_table(&table).await;
    }

    async fn a_quoted_watermark_is_bound_not_spliced(backend: Backend) {
        let table = backend
            .table(
                CHANGES,
                &[
                    "1, '2024-01-01', 'a'",
                    "2, '2024-01-02', 'b'",
                    "3, 'O''Brien', 'c'",
                ],
            )
            .await;
        let settings = backend.settings(changes_query(&table), Some("changed"));
        let hostile = format!("2024-01-01' OR '1'='1'; DROP TABLE {table}; --");

        let batches = run(settings.clone(), Some(&hostile)).await;
        assert_eq!(
            column(&batches, "id"),
            vec![vec![Value::from(2), Value::from(3)]]
        );
        assert_eq!(checkpoints(&batches), vec![cursor("O'Brien")]);

        let after_quote = run(settings, Some("O'Brie")).await;
        assert_eq!(column(&after_quote, "id"), vec![vec![Value::from(3)]]);
        // The table is still there and whole.
        let count = run(
            backend.settings(format!("SELECT COUNT(*) AS n FROM {table}"), None),
            None,
        )
        .await;
        assert_eq!(column(&count, "n"), vec![vec![Value::from(3)]]);
        backend.drop_table(&table).await;
    }

    async fn snapshot_mode_reads_every_row_without_a_cursor(backend: Backend) {
        let table = backend
            .table(CHANGES, &["1, 'x', 'a'", "2, 'y', NULL", "3, 'z', 'c'"])
            .await;
        let mut settings = backend.settings(
            format!("/* all */ SELECT id, note FROM {table} WHERE note <> ':cursor' OR note IS NULL ORDER BY id"),
            None,
        );
        settings.batch_size = 3;

        let batches = run(settings.clone(), None).await;
        assert_eq!(
            batches,
            vec![(
                vec![
                    serde_json::json!({"id": 1, "note": "a"}),
                    serde_json::json!({"id": 2, "note": null}),
                    serde_json::json!({"id": 3, "note": "c"}),
                ],
                Checkpoint::None
            )]
        );

        backend.execute(&[format!("DELETE FROM {table}")]).await;
        assert_eq!(run(settings, None).await, vec![]);
        backend.drop_table(&table).await;
    }

    async fn a_missing_cursor_column_and_a_failing_query_are_errors(backend: Backend) {
        let table = backend.table(CHANGES, &["1, '2024-01-02', 'a'"]).await;
        let settings = backend.settings(
            format!("SELECT id FROM {table} WHERE changed > :cursor"),
            Some("changed"),
        );
        let mut source = SqlSource::new(settings, None, "erp.orders")
            .await
            .expect("source");
        let error = source.next_batch().await.expect_err("no cursor column");
        assert_eq!(
            error.to_string(),
            "erp.orders: the query result has no column `changed` (the cursor column)"
        );
        assert!(source.next_batch().await.expect("after error").is_none());

        backend.drop_table(&table).await;
        let settings = backend.settings(changes_query(&table), Some("changed"));
        let mut source = SqlSource::new(settings, None, "erp.orders")
            .await
            .expect("source");
        let error = source.next_batch().await.expect_err("no table");
        let SourceError::Database { url, message } = &error else {
            panic!("unexpected error {error:?}");
        };
        assert_eq!(url, &backend.url);
        assert!(message.starts_with("query failed: "), "{message}");
        assert!(message.contains(&table), "{message}");
    }

    #[test]
    fn check_query_accepts_one_placeholder_when_incremental_and_none_otherwise() {
        let incremental = "SELECT * FROM orders WHERE changed > :cursor ORDER BY changed";
        assert_eq!(check_query(incremental, true), Ok(()));
        assert_eq!(
            check_query(
                "  -- orders\n/* all */ with x AS (SELECT 1) SELECT * FROM x",
                false
            ),
            Ok(())
        );
        assert_eq!(
            check_query("SELECT ':cursor', a::cursor, :cursor_at -- :cursor", false),
            Ok(())
        );
        assert_eq!(check_query("select 1", false), Ok(()));
    }

    #[test]
    fn check_query_rejects_wrong_placeholder_counts_and_other_statements() {
        assert_eq!(
            check_query("SELECT * FROM t WHERE a > :cursor OR b > :cursor", true),
            Err(
                "the query has 2 `:cursor` placeholders; an incremental stream needs exactly one"
                    .to_string()
            )
        );
        assert_eq!(
            check_query("SELECT * FROM t WHERE a > ':cursor'", true),
            Err("the query has no `:cursor` placeholder; an incremental stream binds its cursor there"
                .to_string())
        );
        assert_eq!(
            check_query("SELECT * FROM t WHERE a > :cursor", false),
            Err(
                "the query has a `:cursor` placeholder but the stream has no cursor column"
                    .to_string()
            )
        );
        for statement in [
            "DELETE FROM t WHERE a > :cursor",
            "-- SELECT\nUPDATE t SET a = 1",
            "/* SELECT",
            "SELECTED",
            "",
        ] {
            assert_eq!(
                check_query(statement, false),
                Err("the query must start with SELECT or WITH".to_string()),
                "{statement}"
            );
        }
    }

    #[test]
    fn the_placeholder_becomes_the_drivers_own() {
        let query = "SELECT ':cursor' AS l, x::text FROM t WHERE a > :cursor -- :cursor";
        assert_eq!(
            translate(query, Driver::Postgres),
            "SELECT ':cursor' AS l, x::text FROM t WHERE a > $1 -- :cursor"
        );
        assert_eq!(
            translate("SELECT 'it''s :cursor' WHERE a>:cursor", Driver::MySql),
            "SELECT 'it''s :cursor' WHERE a>?"
        );
        assert_eq!(
            translate("SELECT \"a:cursor\" WHERE a > :cursor", Driver::Sqlite),
            "SELECT \"a:cursor\" WHERE a > $1"
        );
    }

    #[test]
    fn bytes_render_as_lowercase_hex() {
        assert_eq!(hex(&[0xde, 0xad, 0x01, 0x00]), "dead0100");
        assert_eq!(hex(&[]), "");
    }

    fn sqlite_settings(query: &str) -> SqlStreamSettings {
        SqlStreamSettings {
            url: "sqlite::memory:".to_string(),
            query: query.to_string(),
            cursor_column: Some("changed".to_string()),
            initial: None,
            batch_size: 10,
        }
    }

    async fn new_error(settings: SqlStreamSettings, cursor: Option<&str>) -> String {
        match SqlSource::new(settings, cursor.map(str::to_string), "erp.orders").await {
            Ok(_) => panic!("the source should not start"),
            Err(error) => error.to_string(),
        }
    }

    #[tokio::test]
    async fn an_incremental_stream_needs_a_cursor_to_start_from() {
        let settings = sqlite_settings("SELECT :cursor AS changed");
        assert_eq!(
            new_error(settings.clone(), None).await,
            "erp.orders: an incremental stream needs an initial cursor for its first run"
        );
        let stored = run(settings.clone(), Some("2024-05-01")).await;
        assert_eq!(
            stored,
            vec![(
                vec![serde_json::json!({"changed": "2024-05-01"})],
                cursor("2024-05-01")
            )]
        );
        let initial = SqlStreamSettings {
            initial: Some("2024-01-01".to_string()),
            ..settings
        };
        assert_eq!(
            checkpoints(&run(initial, None).await),
            vec![cursor("2024-01-01")]
        );
    }

    #[tokio::test]
    async fn bad_settings_fail_before_connecting() {
        let settings = sqlite_settings("SELECT :cursor AS changed");
        assert_eq!(
            new_error(
                SqlStreamSettings {
                    batch_size: 0,
                    ..settings.clone()
                },
                Some("x")
            )
            .await,
            "erp.orders: batch_size must be at least 1"
        );
        assert_eq!(
            new_error(
                SqlStreamSettings {
                    url: "oracle://erp/orders".to_string(),
                    ..settings.clone()
                },
                Some("x")
            )
            .await,
            "erp.orders: unsupported database URL scheme `oracle`; expected postgres, mysql, mariadb or sqlite"
        );
        assert_eq!(
            new_error(
                SqlStreamSettings {
                    cursor_column: None,
                    ..settings
                },
                None
            )
            .await,
            "erp.orders: the query has a `:cursor` placeholder but the stream has no cursor column"
        );
    }

    #[tokio::test]
    async fn a_connection_failure_names_the_url_without_its_password() {
        let settings = SqlStreamSettings {
            url: "postgres://erp:s3cret@127.0.0.1:1/erp".to_string(),
            query: "SELECT 1 AS one".to_string(),
            cursor_column: None,
            initial: None,
            batch_size: 10,
        };
        let error = new_error(settings, None).await;
        assert!(
            error.starts_with("postgres://erp:***@127.0.0.1:1/erp: cannot connect: "),
            "{error}"
        );
        assert!(!error.contains("s3cret"), "{error}");
    }

    #[tokio::test]
    async fn sqlite_values_come_by_storage_class() {
        let backend = sqlite();
        let table = backend
            .table(
                "n INTEGER, r REAL, amount TEXT, b BLOB, z TEXT",
                &["-7, 1.5, '12.30', x'de00ff', NULL"],
            )
            .await;
        let batches = run(
            backend.settings(format!("SELECT * FROM {table}"), None),
            None,
        )
        .await;
        assert_eq!(
            batches,
            vec![(
                vec![serde_json::json!({
                    "n": -7, "r": 1.5, "amount": "12.30", "b": "de00ff", "z": null
                })],
                Checkpoint::None
            )]
        );
        backend.drop_table(&table).await;
    }

    #[tokio::test]
    async fn postgres_values_keep_their_exact_form() {
        let Some(backend) = postgres().await else {
            return;
        };
        let table = backend
            .table(
                "amount NUMERIC(10,2), note TEXT, at TIMESTAMP, zoned TIMESTAMPTZ, day DATE, \
                 clock TIME, raw BYTEA, flag BOOLEAN, small INT2, big INT8, ratio FLOAT8, \
                 id UUID, doc JSONB, padded CHAR(3)",
                &[
                    "12.30, NULL, '2024-01-02 03:04:05.25', '2024-01-02 03:04:05+02', \
                   '2024-01-02', '03:04:05', '\\xdead01', true, 42, 9007199254740993, 0.5, \
                   '0190a5c2-0000-7000-8000-000000000001', '{\"a\": [1]}', 'ab'",
                ],
            )
            .await;
        let batches = run(
            backend.settings(
                format!("SELECT *, point '(1,2)' AS spot FROM {table}"),
                None,
            ),
            None,
        )
        .await;
        assert_eq!(
            batches,
            vec![(
                vec![serde_json::json!({
                    "amount": "12.30",
                    "note": null,
                    "at": "2024-01-02T03:04:05.250",
                    "zoned": "2024-01-02T01:04:05Z",
                    "day": "2024-01-02",
                    "clock": "03:04:05",
                    "raw": "dead01",
                    "flag": true,
                    "small": 42,
                    "big": 9007199254740993_i64,
                    "ratio": 0.5,
                    "id": "0190a5c2-0000-7000-8000-000000000001",
                    "doc": {"a": [1]},
                    "padded": "ab ",
                    "spot": null,
                })],
                Checkpoint::None
            )]
        );
        backend.drop_table(&table).await;
    }

    #[tokio::test]
    async fn mysql_values_keep_their_exact_form() {
        let Some(backend) = mysql().await else {
            return;
        };
        let table = backend
            .table(
                "amount DECIMAL(10,2), note VARCHAR(10), at DATETIME(3), stamp TIMESTAMP NULL, \
                 day DATE, clock TIME, raw VARBINARY(8), flag BOOLEAN, big BIGINT UNSIGNED, \
                 ratio DOUBLE, small TINYINT",
                &[
                    "12.30, NULL, '2024-01-02 03:04:05.250', '2024-01-02 03:04:05', \
                   '2024-01-02', '03:04:05', x'dead01', true, 18446744073709551615, 0.5, -3",
                ],
            )
            .await;
        let batches = run(
            backend.settings(format!("SELECT * FROM {table}"), None),
            None,
        )
        .await;
        assert_eq!(
            batches,
            vec![(
                vec![serde_json::json!({
                    "amount": "12.30",
                    "note": null,
                    "at": "2024-01-02T03:04:05.250",
                    "stamp": "2024-01-02T03:04:05Z",
                    "day": "2024-01-02",
                    "clock": "03:04:05",
                    "raw": "dead01",
                    "flag": true,
                    "big": 18446744073709551615_u64,
                    "ratio": 0.5,
                    "small": -3,
                })],
                Checkpoint::None
            )]
        );
        backend.drop_table(&table).await;
    }

    /// Log lines written while a test runs, for asserting on warnings.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
        }
    }

    #[tokio::test]
    async fn an_undecodable_column_reads_as_null_with_one_warning() {
        let Some(backend) = postgres().await else {
            return;
        };
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        // The test runtime is single-threaded, so the query task logs through this default too.
        let _guard = tracing::subscriber::set_default(subscriber);
        let table = backend
            .table(
                "id INT, spot POINT",
                &["1, '(1,2)'", "2, '(3,4)'", "3, NULL"],
            )
            .await;
        let batches = run(
            backend.settings(format!("SELECT id, spot FROM {table} ORDER BY id"), None),
            None,
        )
        .await;
        assert_eq!(
            column(&batches, "spot"),
            vec![vec![Value::Null, Value::Null], vec![Value::Null]]
        );
        assert_eq!(
            column(&batches, "id"),
            vec![vec![Value::from(1), Value::from(2)], vec![Value::from(3)]]
        );
        let logs = captured.text();
        assert_eq!(
            logs.matches("a column cannot be decoded; its values are read as null")
                .count(),
            1,
            "{logs}"
        );
        assert!(logs.contains("column=\"spot\""), "{logs}");
        assert!(logs.contains("unsupported column type POINT"), "{logs}");
        backend.drop_table(&table).await;
    }

    /// A timestamp cursor goes round trip: rendered as ISO text, bound as text, compared as a
    /// timestamp again on the next run.
    async fn timestamp_cursor_round_trip(backend: Backend, query: &str) {
        let table = backend
            .table(
                "id INT, changed TIMESTAMP(3) NULL",
                &["1, '2024-01-01 10:00:00'", "2, '2024-01-02 03:04:05.500'"],
            )
            .await;
        let mut settings = backend.settings(query.replace("{table}", &table), Some("changed"));
        settings.initial = Some("2024-01-01 10:00:00".to_string());
        let first = run(settings.clone(), None).await;
        assert_eq!(column(&first, "id"), vec![vec![Value::from(2)]]);
        let Checkpoint::Cursor(next) = first[0].1.clone() else {
            panic!("no cursor in {first:?}");
        };
        backend
            .execute(&[format!(
                "INSERT INTO {table} VALUES (3, '2024-01-02 03:04:05.501')"
            )])
            .await;
        let second = run(settings, Some(&next)).await;
        assert_eq!(column(&second, "id"), vec![vec![Value::from(3)]]);
        backend.drop_table(&table).await;
    }

    #[tokio::test]
    async fn postgres_timestamp_cursors_round_trip_through_a_cast() {
        let Some(backend) = postgres().await else {
            return;
        };
        timestamp_cursor_round_trip(
            backend,
            "SELECT id, changed FROM {table} WHERE changed > CAST(:cursor AS timestamp) ORDER BY changed",
        )
        .await;
    }

    #[tokio::test]
    async fn mysql_timestamp_cursors_round_trip() {
        let Some(backend) = mysql().await else {
            return;
        };
        timestamp_cursor_round_trip(
            backend,
            "SELECT id, changed FROM {table} WHERE changed > :cursor ORDER BY changed",
        )
        .await;
    }

    macro_rules! on_every_backend {
        ($($scenario:ident),* $(,)?) => {
            mod sqlite_backend {
                $(
                    #[tokio::test]
                    async fn $scenario() {
                        super::$scenario(super::sqlite()).await;
                    }
                )*
            }
            mod postgres_backend {
                $(
                    #[tokio::test]
                    async fn $scenario() {
                        if let Some(backend) = super::postgres().await {
                            super::$scenario(backend).await;
                        }
                    }
                )*
            }
            mod mysql_backend {
                $(
                    #[tokio::test]
                    async fn $scenario() {
                        if let Some(backend) = super::mysql().await {
                            super::$scenario(backend).await;
                        }
                    }
                )*
            }
        };
    }

    on_every_backend!(
        incremental_runs_read_only_newer_rows_in_batches,
        a_quoted_watermark_is_bound_not_spliced,
        snapshot_mode_reads_every_row_without_a_cursor,
        a_missing_cursor_column_and_a_failing_query_are_errors,
    );
}
