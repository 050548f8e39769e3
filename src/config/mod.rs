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
use std::net::SocketAddr;
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
    /// `[ops] listen`: where the daemon serves its operations endpoints; `None` means
    /// [`DEFAULT_OPS_LISTEN`].
    pub ops_listen: Option<SocketAddr>,
    /// Every connector file found, by id, whether or not a job uses it.
    pub connectors: BTreeMap<String, ConnectorConfig>,
    /// Every mapping file found, compiled, by id.
    pub mappings: BTreeMap<String, Arc<Mapping>>,
}

/// Where the daemon serves `/healthz`, `/readyz` and `/metrics` unless `[ops] listen` says
/// otherwise: loopback only, so the endpoints are not exposed by accident.
pub const DEFAULT_OPS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

impl Config {
    /// The job called `name`.
    pub fn job(&self, name: &str) -> Option<&JobConfig> {
        self.jobs.iter().find(|job| job.name == name)
    }
}

#[derive(Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// The SQLite database file (absolute).
    Sqlite { path: PathBuf },
    /// A PostgreSQL database, optionally one schema of it.
    Postgres {
        url: String,
        schema: Option<String>,
        pool_size: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedConfig {
    pub sink: SinkConfig,
    /// How long the relay keeps retrying an unreachable destination; default 30 s.
    pub retry_budget: Duration,
    /// Events per round trip; default 500.
    pub batch_size: usize,
}

impl fmt::Debug for StoreConfig {
    // A PostgreSQL URL may carry the database password: `Debug` output ends up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreConfig::Sqlite { path } => f.debug_struct("Sqlite").field("path", path).finish(),
            StoreConfig::Postgres {
                schema, pool_size, ..
            } => f
                .debug_struct("Postgres")
                .field("url", &"<redacted>")
                .field("schema", schema)
                .field("pool_size", pool_size)
                .finish(),
        }
    }
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

#[derive(Debug, Clone, PartialEq)]
pub struct IdentityConfig {
    /// Strong keys that link customer records outright; default `[Email, Identifier("vat")]`.
    pub match_on: Vec<MatchKey>,
    /// The probabilistic matcher's settings; `None` when `probabilistic = false`.
    pub matching: Option<crate::resolver::matcher::MatchSettings>,
}

/// The strong-key rules are the resolver's own type.
pub use crate::resolver::MatchKey;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileConfig {
    /// ISO 4217 code metrics are expressed in; default `EUR`.
    pub base_currency: String,
    /// Units of base currency per unit of the keyed currency; every rate is positive.
    pub fx: BTreeMap<String, Decimal>,
    /// Connector systems in descending trust; each names the system of a loaded connector.
    pub source_priority: Vec<String>,
    /// `today`; `None` means the current UTC date at the start of each run.
    pub today: Option<jiff::civil::Date>,
    /// Survivorship rules of the fields that do not use `default_rule`.
    pub survivorship: BTreeMap<String, crate::profile::Rule>,
    pub default_rule: crate::profile::Rule,
    pub value_excludes: Vec<crate::model::OrderStatus>,
    pub tiers: crate::profile::TierSettings,
    pub lifecycle: crate::profile::LifecycleSettings,
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
#[derive(Debug, Clone, PartialEq)]
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
    /// The file stream called `name` (`None` for other transports).
    pub fn stream(&self, name: &str) -> Option<&FileStream> {
        match &self.transport {
            Transport::File(file) => file.streams.iter().find(|stream| stream.name == name),
            Transport::Http(_) | Transport::Sql(_) => None,
        }
    }

    /// Every stream as `(name, mapping id)`, in file order.
    pub fn stream_mappings(&self) -> Vec<(&str, &str)> {
        match &self.transport {
            Transport::File(file) => file
                .streams
                .iter()
                .map(|s| (s.name.as_str(), s.mapping.as_str()))
                .collect(),
            Transport::Http(http) => http
                .streams
                .iter()
                .map(|s| (s.name.as_str(), s.mapping.as_str()))
                .collect(),
            Transport::Sql(sql) => sql
                .streams
                .iter()
                .map(|s| (s.name.as_str(), s.mapping.as_str()))
                .collect(),
        }
    }

    /// The names of all streams, in file order.
    pub fn stream_names(&self) -> Vec<&str> {
        self.stream_mappings()
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    }
}

/// The registry of transports: one variant per connector `kind`. Adding a transport means a
/// variant here, its spec type in `spec`, and one arm in each `match` the compiler then
/// points at.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    /// `kind = "file"`: files dropped into a directory.
    File(FileConnector),
    /// `kind = "http"`: a REST, OData or JSON-RPC API.
    Http(HttpConnector),
    /// `kind = "sql"`: a source database read with the operator's query.
    Sql(SqlConnector),
}

impl Transport {
    /// Every supported `kind`, in the order messages list them.
    pub const KINDS: [&'static str; 3] = ["file", "http", "sql"];

    /// The `kind` this transport is written as.
    pub fn kind(&self) -> &'static str {
        match self {
            Transport::File(_) => "file",
            Transport::Http(_) => "http",
            Transport::Sql(_) => "sql",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpConnector {
    pub streams: Vec<HttpStream>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SqlConnector {
    pub streams: Vec<SqlStream>,
}

/// One SQL stream: its name, its mapping and the source's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlStream {
    pub name: String,
    pub mapping: String,
    pub settings: crate::source::sql::SqlStreamSettings,
}

/// One HTTP stream: its name, its mapping and everything the transport needs per request
/// (the connector's URL, auth and limits are folded in).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpStream {
    pub name: String,
    pub mapping: String,
    pub settings: crate::source::http::HttpStreamSettings,
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::load::load_with;
    use super::*;
    use crate::mapper::SpecError;
    use crate::model::EntityKind;

    /// A deployment tree in a temporary directory: `config/test.toml`, `connectors/`,
    /// `mappings/`.
    struct Tree {
        _dir: tempfile::TempDir,
        root: PathBuf,
    }

    const CONFIG: &str = r#"[store]
url = "sqlite://var/test.db"

[feed]
sink = "file"
path = "out/events.ndjson"

[[job]]
name = "all"
sync = ["shop", "erp.orders"]
"#;

    const SHOP: &str = r#"kind = "file"
dir = "data/shop"

[[stream]]
name = "customers"
pattern = "*.csv"
format = "csv"
mapping = "shop.customer"
delimiter = ";"
encoding = "windows-1252"

[[stream]]
name = "newsletter"
pattern = "news/*.ndjson"
format = "ndjson"
mapping = "shop.customer"
"#;

    const ERP: &str = r#"kind = "file"
system = "sap"
dir = "/srv/erp/outbound"
archive_dir = "archive/erp"
empty_values = ["", false]

[[stream]]
name = "customers"
pattern = "DEBMAS*.xml"
format = "xml"
records = "DEBMAS07/IDOC"
mapping = "erp.customer"

[[stream]]
name = "orders"
pattern = "orders/*.json"
format = "json"
records = "d.results"
mapping = "erp.order"
batch_size = 50
"#;

    impl Tree {
        /// A valid tree; tests overwrite single files to introduce mistakes.
        fn new() -> Tree {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().canonicalize().unwrap();
            let tree = Tree { _dir: dir, root };
            tree.write("config/test.toml", CONFIG);
            tree.write("connectors/shop.toml", SHOP);
            tree.write("connectors/erp.toml", ERP);
            tree.write("mappings/shop.customer.toml", "entity = \"customer\"\n");
            tree.write("mappings/erp.customer.toml", "entity = \"customer\"\n");
            tree.write("mappings/erp.order.toml", "entity = \"order\"\n");
            tree
        }

        fn write(&self, relative: &str, text: &str) {
            let path = self.root.join(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }

        fn load(&self, env: &[(&str, &str)]) -> Result<Config, Diagnostics> {
            let lookup = |name: &str| {
                env.iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| value.to_string())
            };
            load_with(&self.root.join("config/test.toml"), &lookup, &fake_compile)
        }

        /// The diagnostics of a failing load, with paths relative to the tree.
        fn errors(&self, env: &[(&str, &str)]) -> Vec<String> {
            let prefix = format!("{}/", self.root.display());
            match self.load(env) {
                Ok(_) => panic!("the tree loaded without errors"),
                Err(diagnostics) => diagnostics
                    .0
                    .iter()
                    .map(|d| d.to_string().replace(&prefix, ""))
                    .collect(),
            }
        }
    }

    /// Stands in for the mapping engine: `entity = "order"` makes an order mapping, the word
    /// `broken` is a compile error at its position, anything else a customer mapping.
    fn fake_compile(id: &str, text: &str) -> Result<Mapping, Vec<SpecError>> {
        if let Some(at) = text.find("broken") {
            return Err(vec![SpecError {
                span: Some(at..at + 6),
                message: "unknown transform `broken`".into(),
            }]);
        }
        let entity = if text.contains("\"order\"") {
            EntityKind::Order
        } else {
            EntityKind::Customer
        };
        let minimal = format!("entity = \"{entity}\"\n[fields]\nsource_id = \"id\"\n");
        Mapping::parse(id, &minimal)
    }

    #[test]
    fn a_valid_tree_loads_with_paths_resolved_and_defaults_applied() {
        let tree = Tree::new();
        let config = tree.load(&[]).unwrap();
        let root = &tree.root;
        assert_eq!(config.id, "test");
        assert_eq!(config.instance, "test");
        assert_eq!(&config.root, root);
        assert_eq!(
            config.store,
            StoreConfig::Sqlite {
                path: root.join("var/test.db")
            }
        );
        assert_eq!(
            config.feed,
            FeedConfig {
                sink: SinkConfig::File {
                    path: root.join("out/events.ndjson")
                },
                retry_budget: Duration::from_secs(30),
                batch_size: 500,
            }
        );
        assert_eq!(
            config.identity.match_on,
            [MatchKey::Email, MatchKey::Identifier("vat".into())]
        );
        assert_eq!(
            config.profile,
            ProfileConfig {
                base_currency: "EUR".into(),
                fx: BTreeMap::new(),
                source_priority: Vec::new(),
                today: None,
                survivorship: BTreeMap::new(),
                default_rule: crate::profile::Rule::SourcePriority,
                value_excludes: vec![
                    crate::model::OrderStatus::Cancelled,
                    crate::model::OrderStatus::Returned
                ],
                tiers: crate::profile::TierSettings::default(),
                lifecycle: crate::profile::LifecycleSettings::default(),
            }
        );
        let stream = |connector: &str, stream: &str| StreamRef {
            connector: connector.into(),
            stream: stream.into(),
        };
        assert_eq!(
            config.jobs,
            [JobConfig {
                name: "all".into(),
                schedule: None,
                timezone: None,
                streams: vec![
                    stream("shop", "customers"),
                    stream("shop", "newsletter"),
                    stream("erp", "orders"),
                ],
            }]
        );
        assert_eq!(
            config.connectors["erp"],
            ConnectorConfig {
                id: "erp".into(),
                path: root.join("connectors/erp.toml"),
                system: "sap".into(),
                empty_values: vec![serde_json::json!(""), serde_json::json!(false)],
                transport: Transport::File(FileConnector {
                    dir: PathBuf::from("/srv/erp/outbound"),
                    archive_dir: Some(root.join("archive/erp")),
                    streams: vec![
                        FileStream {
                            name: "customers".into(),
                            pattern: "DEBMAS*.xml".into(),
                            format: "xml".into(),
                            records: Some("DEBMAS07/IDOC".into()),
                            mapping: "erp.customer".into(),
                            delimiter: b',',
                            quote: b'"',
                            encoding: "utf-8".into(),
                            batch_size: 10_000,
                        },
                        FileStream {
                            name: "orders".into(),
                            pattern: "orders/*.json".into(),
                            format: "json".into(),
                            records: Some("d.results".into()),
                            mapping: "erp.order".into(),
                            delimiter: b',',
                            quote: b'"',
                            encoding: "utf-8".into(),
                            batch_size: 50,
                        },
                    ],
                }),
            }
        );
        let shop = &config.connectors["shop"];
        assert_eq!(shop.system, "shop");
        assert_eq!(shop.empty_values, [serde_json::json!("")]);
        let customers = shop.stream("customers").unwrap();
        assert_eq!(
            (customers.delimiter, customers.encoding.as_str()),
            (b';', "windows-1252")
        );
        assert!(shop.stream("orders").is_none());
        assert_eq!(
            config.mappings.keys().collect::<Vec<_>>(),
            ["erp.customer", "erp.order", "shop.customer"]
        );
        assert_eq!(config.mappings["erp.order"].entity, EntityKind::Order);
    }

    #[test]
    fn an_unknown_field_is_reported_with_its_position_and_a_suggestion() {
        let tree = Tree::new();
        tree.write(
            "config/test.toml",
            &CONFIG.replace("path = \"out", "paht = \"out"),
        );
        assert_eq!(
            tree.errors(&[]),
            [
                "config/test.toml:5:8: sink \"file\" needs feed.path (the NDJSON file events \
                 are appended to)",
                "config/test.toml:6:1: unknown field `paht`, expected one of `sink`, `path`, \
                 `amqp`, `retry_budget`, `batch_size`; did you mean `path`?",
            ]
        );
    }

    #[test]
    fn three_mistakes_in_one_file_are_reported_together() {
        let tree = Tree::new();
        let connector = SHOP
            .replace("dir = ", "dri = ")
            .replace("delimiter = \";\"", "delimter = \";\"")
            .replace("format = \"ndjson\"", "format = 7");
        tree.write("connectors/shop.toml", &connector);
        assert_eq!(
            tree.errors(&[]),
            [
                "connectors/shop.toml:2:1: unknown field `dri`, expected one of `kind`, \
                 `system`, `dir`, `archive_dir`, `empty_values`, `stream`; did you mean `dir`?",
                "connectors/shop.toml:9:1: unknown field `delimter`, expected one of `name`, \
                 `pattern`, `format`, `records`, `mapping`, `delimiter`, `quote`, `encoding`, \
                 `batch_size`; did you mean `delimiter`?",
                "connectors/shop.toml:15:10: invalid type: integer `7`, expected a string",
            ]
        );
    }

    #[test]
    fn mistakes_across_files_are_reported_together_and_sorted() {
        let tree = Tree::new();
        tree.write(
            "config/test.toml",
            &CONFIG.replace("sqlite://var/test.db", "mysql://db/conflux"),
        );
        tree.write(
            "connectors/shop.toml",
            &SHOP.replace("pattern = \"*.csv\"", "pattern = \"../*.csv\""),
        );
        tree.write(
            "mappings/erp.order.toml",
            "entity = \"order\"\nx = broken\n",
        );
        assert_eq!(
            tree.errors(&[]),
            [
                "config/test.toml:2:7: unsupported store scheme \"mysql\"; use \
                 sqlite://<path> or postgres://<host>/<database>",
                "connectors/shop.toml:6:11: file pattern \"../*.csv\" contains `..`; it must \
                 stay inside the connector directory",
                "mappings/erp.order.toml:2:5: unknown transform `broken`",
            ]
        );
    }

    #[test]
    fn environment_values_are_substituted() {
        let tree = Tree::new();
        tree.write(
            "config/test.toml",
            &CONFIG.replace(
                "sink = \"file\"\npath = \"out/events.ndjson\"",
                "sink = \"amqp\"\n[feed.amqp]\nurl = \"amqps://app:${PASS}@${HOST}/prod\"",
            ),
        );
        tree.write(
            "connectors/erp.toml",
            &ERP.replace("/srv/erp/outbound", "${ERP_DROP}/outbound"),
        );
        let config = tree
            .load(&[("PASS", "pw"), ("HOST", "mq"), ("ERP_DROP", "/mnt/erp")])
            .unwrap();
        assert_eq!(
            config.feed.sink,
            SinkConfig::Amqp {
                url: "amqps://app:pw@mq/prod".into(),
                exchange: "conflux.customers".into(),
            }
        );
        assert_eq!(
            format!("{:?}", config.feed.sink),
            "Amqp { url: \"<redacted>\", exchange: \"conflux.customers\" }"
        );
        let Transport::File(erp) = &config.connectors["erp"].transport else {
            panic!("a file connector")
        };
        assert_eq!(erp.dir, Path::new("/mnt/erp/outbound"));
    }

    #[test]
    fn a_missing_variable_is_named_and_no_value_is_shown() {
        let tree = Tree::new();
        tree.write(
            "config/test.toml",
            &CONFIG.replace(
                "sink = \"file\"\npath = \"out/events.ndjson\"",
                "sink = \"amqp\"\n[feed.amqp]\nurl = \"amqp://app:${PASS}@${CONFLUX_AMQP_HOST}\"",
            ),
        );
        let errors = tree.errors(&[("PASS", "hunter2")]);
        assert_eq!(
            errors,
            ["config/test.toml:7:7: environment variable CONFLUX_AMQP_HOST is not set"]
        );
        assert!(!errors.concat().contains("hunter2"));
    }

    #[test]
    fn values_from_the_environment_are_never_echoed() {
        let tree = Tree::new();
        tree.write(
            "config/test.toml",
            &CONFIG.replace("sink = \"file\"", "sink = \"${SINK}\""),
        );
        assert_eq!(
            tree.errors(&[("SINK", "hunter2")]),
            [
                "config/test.toml:5:8: unknown sink (the value from the environment); expected \
                 \"file\" or \"amqp\""
            ]
        );
    }

    #[test]
    fn double_dollar_writes_a_literal_reference() {
        let tree = Tree::new();
        tree.write(
            "connectors/shop.toml",
            &SHOP.replace("data/shop", "data/$${shop}"),
        );
        let config = tree.load(&[]).unwrap();
        let Transport::File(shop) = &config.connectors["shop"].transport else {
            panic!("a file connector")
        };
        assert_eq!(shop.dir, tree.root.join("data/${shop}"));
    }

    #[test]
    fn only_connectors_used_by_a_job_need_their_variables() {
        let tree = Tree::new();
        tree.write(
            "connectors/spare.toml",
            &SHOP.replace("data/shop", "${SPARE_DIR}"),
        );
        let config = tree.load(&[]).unwrap();
        let Transport::File(spare) = &config.connectors["spare"].transport else {
            panic!("a file connector")
        };
        assert_eq!(spare.dir, tree.root.join("${SPARE_DIR}"));

        tree.write(
            "connectors/shop.toml",
            &SHOP.replace("data/shop", "${SHOP_DIR}"),
        );
        assert_eq!(
            tree.errors(&[]),
            ["connectors/shop.toml:2:7: environment variable SHOP_DIR is not set"]
        );
    }

    #[test]
    fn an_unknown_connector_kind_is_reported_at_the_kind() {
        let tree = Tree::new();
        tree.write("connectors/shop.toml", &SHOP.replace("\"file\"", "\"htp\""));
        tree.write("connectors/erp.toml", &ERP.replace("\"file\"", "\"fiel\""));
        tree.write(
            "connectors/queue.toml",
            &ERP.replace("\"file\"", "\"kafka\""),
        );
        assert_eq!(
            tree.errors(&[]),
            [
                "connectors/erp.toml:1:8: unknown connector kind \"fiel\"; did you mean \
                 \"file\"?",
                "connectors/queue.toml:1:8: unknown connector kind \"kafka\"; supported \
                 kinds: \"file\", \"http\", \"sql\"",
                "connectors/shop.toml:1:8: unknown connector kind \"htp\"; did you mean \
                 \"http\"?",
            ]
        );
    }

    #[test]
    fn a_bad_cron_schedule_and_an_unknown_time_zone_are_reported() {
        let tree = Tree::new();
        tree.write(
            "config/test.toml",
            &CONFIG.replace(
                "name = \"all\"",
                "name = \"all\"\nschedule = \"61 * * * *\"\ntimezone = \"Europe/Berln\"",
            ),
        );
        let errors = tree.errors(&[]);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("config/test.toml:10:12: invalid cron schedule \"61 * * * *\": "),
            "{errors:?}"
        );
        assert!(
            errors[0].ends_with("(use 5 fields, or 6 with seconds first)"),
            "{errors:?}"
        );
        assert_eq!(
            errors[1],
            "config/test.toml:11:12: unknown time zone \"Europe/Berln\"; did you mean \
             \"Europe/Berlin\"?"
        );
    }

    #[test]
    fn valid_schedules_have_five_or_six_fields() {
        let tree = Tree::new();
        let job = |schedule: &str| {
            CONFIG.replace(
                "name = \"all\"",
                &format!("name = \"all\"\nschedule = \"{schedule}\"\ntimezone = \"Europe/Berlin\""),
            )
        };
        tree.write("config/test.toml", &job("30 2 * * MON-FRI"));
        assert!(tree.load(&[]).is_ok());
        tree.write("config/test.toml", &job("0 */15 * * * *"));
        let config = tree.load(&[]).unwrap();
        assert_eq!(config.jobs[0].schedule.as_deref(), Some("0 */15 * * * *"));
        assert_eq!(config.jobs[0].timezone.as_deref(), Some("Europe/Berlin"));
        tree.write("config/test.toml", &job("0 0 2 * * * 2030"));
        assert_eq!(tree.errors(&[]).len(), 1);
    }

    #[test]
    fn job_references_are_checked_with_suggestions() {
        let tree = Tree::new();
        tree.write(
            "config/test.toml",
            &CONFIG.replace(
                "sync = [\"shop\", \"erp.orders\"]",
                "sync = [\"shpo\", \"erp.ordres\", \"crm\"]",
            ),
        );
        assert_eq!(
            tree.errors(&[]),
            [
                "config/test.toml:10:9: unknown connector \"shpo\"; did you mean \"shop\"?",
                "config/test.toml:10:17: connector \"erp\" has no stream \"ordres\"; did you \
                 mean \"orders\"?",
                "config/test.toml:10:31: unknown connector \"crm\"",
            ]
        );
    }

    #[test]
    fn duplicate_jobs_and_empty_syncs_are_reported() {
        let tree = Tree::new();
        tree.write(
            "config/test.toml",
            &format!("{CONFIG}\n[[job]]\nname = \"all\"\nsync = []\n"),
        );
        assert_eq!(
            tree.errors(&[]),
            [
                "config/test.toml:13:8: duplicate job name \"all\" (first used on line 9)",
                "config/test.toml:13:8: job \"all\" syncs nothing; list connectors or \
                 connector.stream entries in sync",
            ]
        );
    }

    #[test]
    fn stream_settings_are_checked() {
        let tree = Tree::new();
        let erp = ERP
            .replace("records = \"DEBMAS07/IDOC\"\n", "")
            .replace("mapping = \"erp.order\"", "mapping = \"erp.ordr\"")
            .replace("format = \"json\"", "format = \"jsn\"\ndelimiter = \"||\"");
        tree.write("connectors/erp.toml", &erp);
        tree.write(
            "connectors/shop.toml",
            &SHOP
                .replace("windows-1252", "latin1")
                .replace("name = \"newsletter\"", "name = \"customers\""),
        );
        assert_eq!(
            tree.errors(&[]),
            [
                "connectors/erp.toml:10:10: format \"xml\" needs records: the slash path of \
                 the record elements, e.g. \"DEBMAS07/IDOC\"",
                "connectors/erp.toml:16:10: unknown format \"jsn\"; did you mean \"json\"?",
                "connectors/erp.toml:17:13: delimiter must be exactly one ASCII character, got \
                 \"||\"",
                "connectors/erp.toml:19:11: unknown mapping \"erp.ordr\"; did you mean \
                 \"erp.order\"?",
                "connectors/shop.toml:10:12: unknown encoding \"latin1\"; expected \"utf-8\" or \
                 \"windows-1252\"",
                "connectors/shop.toml:13:8: duplicate stream name \"customers\" (first used on \
                 line 5)",
            ]
        );
    }

    #[test]
    fn the_operations_endpoints_listen_on_loopback_unless_configured() {
        assert!(
            DEFAULT_OPS_LISTEN.ip().is_loopback(),
            "{DEFAULT_OPS_LISTEN}"
        );
        assert_eq!(DEFAULT_OPS_LISTEN.port(), 9464);
    }

    #[test]
    fn ops_listen_is_a_socket_address() {
        let tree = Tree::new();
        assert_eq!(tree.load(&[]).unwrap().ops_listen, None);

        tree.write(
            "config/test.toml",
            &format!("{CONFIG}\n[ops]\nlisten = \"0.0.0.0:9100\"\n"),
        );
        assert_eq!(
            tree.load(&[]).unwrap().ops_listen,
            Some("0.0.0.0:9100".parse().unwrap())
        );

        tree.write(
            "config/test.toml",
            &format!("{CONFIG}\n[ops]\nlisten = \"localhost\"\n"),
        );
        assert_eq!(
            tree.errors(&[]),
            [
                "config/test.toml:13:10: ops.listen \"localhost\" is not a socket address; write \
              an IP address and a port, like \"127.0.0.1:9464\" or \"[::1]:9464\""
            ]
        );
    }

    #[test]
    fn feed_identity_and_profile_values_are_checked() {
        let tree = Tree::new();
        let config = CONFIG.replace(
            "path = \"out/events.ndjson\"",
            "retry_budget = \"soon\"\n\
             [feed.amqp]\nurl = \"http://mq\"\n\
             [identity]\nmatch_on = [\"emial\", \"identifier:VAT\", \"phone\"]\n\
             [profile]\nbase_currency = \"eur\"\nfx = { USD = \"-1\", usd = \"1\" }\n\
             source_priority = [\"shop\", \"sapp\"]",
        );
        tree.write("config/test.toml", &config);
        assert_eq!(
            tree.errors(&[]),
            [
                "config/test.toml:5:8: sink \"file\" needs feed.path (the NDJSON file events \
                 are appended to)",
                "config/test.toml:6:16: invalid duration \"soon\"; write a positive duration \
                 like \"30s\", \"5m\", \"1h\" or \"500ms\"",
                "config/test.toml:8:7: feed.amqp.url must start with amqp:// or amqps://",
                "config/test.toml:10:13: unknown match key \"emial\"; did you mean \"email\"?; \
                 expected \"email\", \"phone\" or \"identifier:<scheme>\"",
                "config/test.toml:10:22: invalid identifier scheme in \"identifier:VAT\"; \
                 write identifier:<scheme> with a lower-case scheme such as identifier:vat",
                "config/test.toml:12:17: base_currency must be a 3-letter upper-case ISO 4217 \
                 code, got \"eur\"",
                "config/test.toml:13:14: fx rate for USD must be a positive decimal such as \
                 \"0.92\", got \"-1\"",
                "config/test.toml:13:26: fx key \"usd\" must be a 3-letter upper-case ISO 4217 \
                 code",
                "config/test.toml:14:28: source_priority names system \"sapp\", which no \
                 connector has; did you mean \"sap\"?",
            ]
        );
    }

    #[test]
    fn profile_rules_are_checked_and_loaded() {
        let tree = Tree::new();
        let bad = CONFIG.replace(
            "[[job]]",
            "[profile]\ntoday = \"23.11.2026\"\nexclude_from_value = [\"canceled\"]\n\
             [profile.survivorship]\nfull_name = \"newest\"\nnickname = \"most_recent\"\n\
             [profile.tiers]\nbasis = \"value\"\ndiamond = \"100\"\ngold = \"500\"\n\
             [profile.lifecycle]\nloyal_orders = 1\nat_risk_days = 400\n\
             [[job]]",
        );
        tree.write("config/test.toml", &bad);
        assert_eq!(
            tree.errors(&[]),
            [
                "config/test.toml:9:9: today must be a date like \"2026-11-23\", got \"23.11.2026\"",
                "config/test.toml:10:23: unknown order status \"canceled\"; did you mean \
                 \"cancelled\"?",
                "config/test.toml:12:13: unknown survivorship rule \"newest\"; expected one of \
                 \"source_priority\", \"most_recent\", \"most_complete\", \"most_frequent\"",
                "config/test.toml:13:12: unknown survivorship field \"nickname\"; expected one \
                 of \"default\", \"kind\", \"full_name\", \"given_name\", \"family_name\", \
                 \"company\", \"birth_date\"",
                "config/test.toml:15:9: tiers.silver is required with basis = \"value\"",
                "config/test.toml:19:16: lifecycle.loyal_orders must be at least 2, got 1",
            ]
        );

        let good = CONFIG.replace(
            "[[job]]",
            "[profile]\ntoday = \"2026-11-23\"\nexclude_from_value = [\"cancelled\"]\n\
             [profile.survivorship]\ndefault = \"most_recent\"\ncompany = \"source_priority\"\n\
             [profile.tiers]\nbasis = \"value\"\ndiamond = \"10000\"\ngold = \"5000\"\n\
             silver = \"1000\"\n\
             [profile.lifecycle]\nloyal_orders = 3\nat_risk_days = 90\n\
             [[job]]",
        );
        tree.write("config/test.toml", &good);
        let profile = tree.load(&[]).unwrap().profile;
        assert_eq!(
            profile.today,
            Some(jiff::civil::Date::constant(2026, 11, 23))
        );
        assert_eq!(profile.default_rule, crate::profile::Rule::MostRecent);
        assert_eq!(
            profile.survivorship,
            BTreeMap::from([("company".to_string(), crate::profile::Rule::SourcePriority)])
        );
        assert_eq!(
            profile.value_excludes,
            [crate::model::OrderStatus::Cancelled]
        );
        assert_eq!(profile.tiers.basis, crate::profile::TierBasis::Value);
        assert_eq!(profile.tiers.silver, Decimal::from(1000));
        assert_eq!(profile.lifecycle.loyal_orders, 3);
        assert_eq!(profile.lifecycle.at_risk_days, 90);
        assert_eq!(profile.lifecycle.lapsed_days, 365);
    }

    #[test]
    fn mapping_errors_are_positioned_in_the_mapping_file() {
        let tree = Tree::new();
        tree.write(
            "mappings/shop.customer.toml",
            "entity = \"customer\"\n[fields]\nname = { path = \"n\", transforms = [\"broken\"] }\n",
        );
        assert_eq!(
            tree.errors(&[]),
            ["mappings/shop.customer.toml:3:37: unknown transform `broken`"]
        );
    }

    #[test]
    fn badly_named_files_and_unreadable_configs_are_reported() {
        let tree = Tree::new();
        tree.write("mappings/Shop Customer.toml", "entity = \"customer\"\n");
        tree.write("connectors/README.md", "not a connector");
        assert_eq!(
            tree.errors(&[]),
            [
                "mappings/Shop Customer.toml:1:1: invalid file name: the id \"Shop Customer\" \
                 may use only a-z, 0-9, `_`, `.` and `-`"
            ]
        );
        let missing = tree.root.join("config/none.toml");
        let error = load_with(&missing, &|_| None, &fake_compile).unwrap_err();
        assert_eq!(error.0.len(), 1);
        assert!(
            error
                .to_string()
                .ends_with("config/none.toml:1:1: cannot read config file: No such file or directory (os error 2)"),
            "{error}"
        );
    }

    #[test]
    fn the_shipped_config_validates() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/conflux.toml");
        let text = std::fs::read_to_string(&shipped).unwrap();
        let tree = Tree::new();
        tree.write("config/test.toml", &text);
        // The connectors it names, with the systems its source_priority names.
        let spec: spec::ConfigSpec = toml::from_str(&text).unwrap();
        let systems: Vec<String> = spec
            .profile
            .source_priority
            .iter()
            .map(|system| system.get_ref().clone())
            .collect();
        for (i, entry) in spec.jobs.iter().flat_map(|job| &job.sync).enumerate() {
            let id = entry.get_ref().split('.').next().unwrap();
            let system = systems.get(i).cloned().unwrap_or_else(|| id.to_string());
            tree.write(
                &format!("connectors/{id}.toml"),
                &SHOP.replace(
                    "kind = \"file\"",
                    &format!("kind = \"file\"\nsystem = \"{system}\""),
                ),
            );
        }

        assert_eq!(
            tree.errors(&[]),
            ["config/test.toml:26:7: environment variable CONFLUX_AMQP_URL is not set"]
        );
        let config = tree
            .load(&[("CONFLUX_AMQP_URL", "amqps://conflux:pw@mq.example.com/prod")])
            .unwrap();
        assert_eq!(config.instance, "conflux-prod");
        assert!(matches!(config.feed.sink, SinkConfig::Amqp { .. }));
        assert_eq!(config.feed.retry_budget, Duration::from_secs(300));
        assert_eq!(config.profile.fx["USD"], Decimal::new(92, 2));
        assert_eq!(config.profile.source_priority, ["sap", "odoo", "shop"]);
        assert_eq!(config.jobs.len(), 1);
    }
}
