//! Raw serde types of the operator files, exactly as written: `config/*.toml` ([`ConfigSpec`])
//! and `connectors/*.toml` ([`FileConnectorSpec`], one type per transport `kind`). Mapping
//! files have their own raw types in [`crate::mapper::spec`].
//!
//! Every struct denies unknown fields. Values that later checks may reject (names that
//! cross-reference other files, expressions, durations) are [`toml::Spanned`] so an error can
//! point at their line and column. No I/O and no validation happens here.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// `config/<id>.toml`: one deployment — store, feed, identity and profile rules, jobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    /// Names this deployment in the events' `source` (`urn:conflux:<instance>`); defaults to
    /// the file stem.
    pub instance: Option<String>,
    /// Directory that relative paths resolve against; relative to the config file's directory.
    /// Defaults to `..` (the project root when the file sits in `config/`).
    pub root: Option<String>,
    /// Defaults to `connectors` under the root.
    pub connectors_dir: Option<String>,
    /// Defaults to `mappings` under the root.
    pub mappings_dir: Option<String>,
    pub store: StoreSpec,
    pub feed: FeedSpec,
    #[serde(default)]
    pub identity: IdentitySpec,
    #[serde(default)]
    pub profile: ProfileSpec,
    #[serde(default, rename = "job")]
    pub jobs: Vec<JobSpec>,
    /// The daemon's operations endpoints (`/healthz`, `/readyz`, `/metrics`).
    #[serde(default)]
    pub ops: OpsSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsSpec {
    /// The socket address the daemon serves its operations endpoints on, e.g.
    /// `127.0.0.1:9464` (the default).
    pub listen: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSpec {
    /// `sqlite://<path>` (relative to the root) or `postgres://user@host:5432/db` (usually
    /// `${CONFLUX_STORE_URL}`, since it may carry a password).
    pub url: Spanned<String>,
    /// PostgreSQL only: the schema conflux's tables live in (created if missing); default
    /// the connection's `search_path`.
    pub schema: Option<Spanned<String>>,
    /// PostgreSQL only: connections per store handle; default 8.
    pub pool_size: Option<Spanned<u32>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedSpec {
    /// `file` (NDJSON, the default) or `amqp`.
    pub sink: Spanned<String>,
    /// For `sink = "file"`: the NDJSON file events are appended to (relative to the root).
    pub path: Option<Spanned<String>>,
    /// For `sink = "amqp"`.
    pub amqp: Option<AmqpSpec>,
    /// How long the relay keeps retrying an unreachable destination before the run gives up
    /// (e.g. "30s", "5m"). Undelivered events stay in the outbox either way.
    pub retry_budget: Option<Spanned<String>>,
    /// Events sent per round trip; default 500.
    pub batch_size: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSpec {
    /// `amqp://user:pass@host:5672/vhost`; usually `${CONFLUX_AMQP_URL}`.
    pub url: Spanned<String>,
    /// Durable topic exchange, declared on start; default `conflux.customers`.
    pub exchange: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySpec {
    /// Strong keys that link customer records outright: `email`, `phone`, or
    /// `identifier:<scheme>` (e.g. `identifier:vat`). Default: `["email", "identifier:vat"]`.
    pub match_on: Option<Vec<Spanned<String>>>,
    /// Probabilistic matching next to the strong keys; default true.
    pub probabilistic: Option<bool>,
    /// Blocking rules (`family_phonetic+postcode`, `email`, ...); default: the built-in set.
    pub blocking: Option<Vec<Spanned<String>>>,
    /// Match probability from which a pair links; default 0.9.
    pub threshold: Option<Spanned<f64>>,
    /// Match probability from which a pair is a possible match for review; default 0.5.
    pub review_from: Option<Spanned<f64>>,
    /// No model link grows an identity beyond this many records; default 50.
    pub max_cluster_size: Option<Spanned<i64>>,
    /// Blocking keys shared by more records than this yield no candidates; default 200.
    pub max_block_size: Option<Spanned<i64>>,
    /// ISO 3166-1 region of phone numbers written without a country code; default `DE`.
    pub phone_region: Option<Spanned<String>>,
    /// Overrides of the match model's m and u values, which win over estimation.
    pub model: Option<crate::resolver::scoring::ModelOverrides>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    /// ISO 4217 code all metrics are expressed in; default `EUR`.
    pub base_currency: Option<Spanned<String>>,
    /// Units of base currency per one unit of the keyed currency, as decimal strings:
    /// `{ USD = "0.92" }`.
    #[serde(default)]
    pub fx: BTreeMap<String, Spanned<String>>,
    /// Systems in descending trust; a golden-record field takes the value of the first system
    /// in this list that has one, then the most recently updated value.
    #[serde(default)]
    pub source_priority: Vec<Spanned<String>>,
    /// The date recency, lifecycle stages and projected dates are relative to, `YYYY-MM-DD`;
    /// default: the current date in UTC. Set it to make runs reproducible.
    pub today: Option<Spanned<String>>,
    /// Survivorship rule per golden-record field (`kind`, `full_name`, `given_name`,
    /// `family_name`, `company`, `birth_date`), and `default` for the others:
    /// `source_priority` (the default), `most_recent`, `most_complete`, `most_frequent`.
    #[serde(default)]
    pub survivorship: BTreeMap<String, Spanned<String>>,
    /// Order statuses counted in neither order count nor value; default
    /// `["cancelled", "returned"]`.
    pub exclude_from_value: Option<Vec<Spanned<String>>>,
    pub tiers: Option<TierSpec>,
    pub lifecycle: Option<LifecycleSpec>,
}

/// `[profile.tiers]`: the customer-value pyramid.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    /// `percentile` (the default: thresholds are percentile ranks of lifetime value, 0-100)
    /// or `value` (thresholds are lifetime values in the base currency).
    pub basis: Option<Spanned<String>>,
    /// Decimal strings; default 99 / 95 / 80 (percentile). Required with `basis = "value"`.
    pub diamond: Option<Spanned<String>>,
    pub gold: Option<Spanned<String>>,
    pub silver: Option<Spanned<String>>,
}

/// `[profile.lifecycle]`: the loyalty ladder's limits, in orders and days.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleSpec {
    /// Default 5.
    pub loyal_orders: Option<Spanned<i64>>,
    /// Days since the first order; default 365.
    pub loyal_tenure_days: Option<Spanned<i64>>,
    /// Days since the last order; default 180.
    pub at_risk_days: Option<Spanned<i64>>,
    /// Days since the last order; default 365.
    pub lapsed_days: Option<Spanned<i64>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: Spanned<String>,
    /// Cron expression: 5 fields, or 6 with seconds first.
    pub schedule: Option<Spanned<String>>,
    /// IANA time zone of the schedule; default UTC.
    pub timezone: Option<Spanned<String>>,
    /// `<connector>` (all its streams) or `<connector>.<stream>`, run in this order.
    pub sync: Vec<Spanned<String>>,
}

/// `connectors/<id>.toml` with `kind = "file"`: files dropped into a directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConnectorSpec {
    pub kind: Spanned<String>,
    /// The system name in source refs; defaults to the connector id.
    pub system: Option<String>,
    /// Directory the streams' patterns are matched in (relative to the root).
    pub dir: Spanned<String>,
    /// When set, files are moved here once their records are committed.
    pub archive_dir: Option<Spanned<String>>,
    /// Values that mean "absent" in this system, e.g. `["", "NULL"]` or `[false]` (Odoo).
    /// Default: `[""]`.
    pub empty_values: Option<Vec<toml::Value>>,
    #[serde(rename = "stream")]
    pub streams: Vec<FileStreamSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStreamSpec {
    pub name: Spanned<String>,
    /// Glob relative to the connector's `dir`, e.g. `DEBMAS*.xml` or `exports/*.csv`.
    pub pattern: Spanned<String>,
    /// `csv`, `json`, `ndjson` or `xml`.
    pub format: Spanned<String>,
    /// JSON: dotted path to the record array (`d.results`; default: the document is the
    /// array). XML: slash path of the record elements from the root (`DEBMAS07/IDOC`).
    pub records: Option<Spanned<String>>,
    /// The mapping id (a file stem under `mappings/`).
    pub mapping: Spanned<String>,
    /// CSV only: one character, default `,`.
    pub delimiter: Option<Spanned<String>>,
    /// CSV only: one character, default `"`.
    pub quote: Option<Spanned<String>>,
    /// `utf-8` (default) or `windows-1252` (CSV and NDJSON; XML declares its own).
    pub encoding: Option<Spanned<String>>,
    /// Records per committed batch; default 1000.
    pub batch_size: Option<usize>,
}

/// `connectors/<id>.toml` with `kind = "http"`: a REST, OData or JSON-RPC API. The
/// connection (base URL, auth, retries, limits) is shared by its streams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConnectorSpec {
    pub kind: Spanned<String>,
    /// The system name in source refs; defaults to the connector id.
    pub system: Option<String>,
    /// `https://host[:port]`; usually `${ERP_BASE_URL}`.
    pub base_url: Spanned<String>,
    pub auth: Option<Spanned<AuthSpec>>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    pub retry: Option<RetrySpec>,
    /// At most this many requests per second.
    pub rate_limit: Option<f64>,
    /// Largest accepted response body in MiB; default 64.
    pub max_response_mb: Option<u64>,
    /// Per-request timeout, e.g. "30s"; default 30 s.
    pub timeout: Option<Spanned<String>>,
    /// TLS settings for `https://` base URLs.
    pub tls: Option<TlsSpec>,
    /// As for file connectors.
    pub empty_values: Option<Vec<toml::Value>>,
    #[serde(rename = "stream")]
    pub streams: Vec<HttpStreamSpec>,
}

/// `tls = { ca_file = "certs/erp-ca.pem" }`: PEM certificates trusted in addition to the
/// system's roots, for an ERP behind a company CA. Relative to the project root.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    pub ca_file: Spanned<String>,
}

/// `auth = { type = "basic" | "bearer" | "api_key" | "oauth2", ... }`. Values may hold
/// `${VAR}` references (they are secrets: they never appear in messages).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthSpec {
    Basic {
        username: String,
        password: String,
    },
    Bearer {
        token: String,
    },
    ApiKey {
        name: String,
        value: String,
        /// `header` (default) or `query`.
        #[serde(rename = "in")]
        location: Option<String>,
    },
    Oauth2 {
        token_url: String,
        client_id: String,
        client_secret: String,
        scope: Option<String>,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Total time one request may spend retrying, e.g. "5m"; default "2m".
    pub max_elapsed: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStreamSpec {
    pub name: Spanned<String>,
    /// Appended to the connector's `base_url`.
    pub path: Spanned<String>,
    /// `get` (default) or `post`.
    pub method: Option<Spanned<String>>,
    /// Query parameters; values may contain `{cursor}`, `{offset}`, `{limit}`, `{page}`.
    #[serde(default)]
    pub query: BTreeMap<String, Spanned<String>>,
    /// POST only: the JSON body template, written as a TOML table.
    pub body: Option<toml::Value>,
    /// `json` (default) or `xml`.
    pub format: Option<Spanned<String>>,
    /// JSON: dotted path of the record array (`d.results`, `value`); XML: element path.
    pub records: Option<Spanned<String>>,
    pub paging: Option<Spanned<PagingSpec>>,
    pub incremental: Option<IncrementalSpec>,
    /// Dotted path of a member that makes a 200 response an error (Odoo: `error`).
    pub error_path: Option<String>,
    /// The mapping id.
    pub mapping: Spanned<String>,
}

/// `paging = { type = "page_number" | "offset_limit" | "cursor" | "next_link" | "link_header", ... }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PagingSpec {
    PageNumber {
        param: String,
        start: Option<u64>,
        size_param: Option<String>,
        size: u64,
    },
    OffsetLimit {
        offset_param: String,
        limit_param: String,
        limit: u64,
    },
    Cursor {
        param: String,
        next: String,
    },
    NextLink {
        next: String,
    },
    LinkHeader,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncrementalSpec {
    /// One field, or two whose values are concatenated (SAP date + time).
    pub fields: Vec<String>,
    /// The query parameter carrying the filter; `""` when the filter lives in the body.
    pub param: String,
    /// The filter with `{cursor}`, e.g. `lastModifiedDateTime gt {cursor}`.
    pub template: String,
    /// The cursor of the very first run; without it the first run is unfiltered.
    pub initial: Option<String>,
    /// Makes the cursor a date-time written into the filter with this strftime format, in
    /// UTC: `"%Y-%m-%dT%H:%M:%S"` (SAP `datetime'…'`), `"%Y-%m-%d %H:%M:%S"` (Odoo).
    pub format: Option<String>,
    /// With a date-time cursor: re-read this far behind it, e.g. "10m".
    pub lookback: Option<Spanned<String>>,
}

/// `connectors/<id>.toml` with `kind = "sql"`: a source database read with the operator's
/// query (PostgreSQL, MySQL/MariaDB or SQLite).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlConnectorSpec {
    pub kind: Spanned<String>,
    /// The system name in source refs; defaults to the connector id.
    pub system: Option<String>,
    /// `postgres://user:${PASSWORD}@host/db`, `mysql://…`, `sqlite://path`.
    pub url: Spanned<String>,
    /// As for file connectors.
    pub empty_values: Option<Vec<toml::Value>>,
    #[serde(rename = "stream")]
    pub streams: Vec<SqlStreamSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlStreamSpec {
    pub name: Spanned<String>,
    /// A SELECT with `:cursor` where the watermark is bound (incremental streams), ordered by
    /// the cursor column.
    pub query: Spanned<String>,
    /// The result column whose last value is the next cursor; without it the stream is a
    /// snapshot and the query has no `:cursor`.
    pub cursor_column: Option<String>,
    /// The cursor of the first run; required when `cursor_column` is set.
    pub initial: Option<String>,
    /// Rows per committed batch; default 1000.
    pub batch_size: Option<usize>,
    pub mapping: Spanned<String>,
}
