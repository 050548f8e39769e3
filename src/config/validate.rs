//! Pure checks that turn parsed files into the typed [`Config`].
//!
//! [`validate`] receives everything `load` read ([`Loaded`]: the config spec, every
//! [`ConnectorFile`], the mapping ids and compiled mappings) and an environment lookup; it does
//! no file, network or clock access. Each check reports a [`Diagnostic`] at the offending
//! value and carries on, so one run lists every problem; a [`Config`] is returned only when
//! the caller's diagnostics stay empty. [`Checker`] resolves `${VAR}` references value by
//! value, strictly in the config file and in connectors a job uses, leniently elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use jiff::SignedDuration;
use rust_decimal::Decimal;
use toml::Spanned;

use super::diagnostic::{Diagnostic, SourceFile, did_you_mean, suggestion};
use super::env::{Env, expand};
use super::spec::{
    AmqpSpec, AuthSpec, ConfigSpec, FeedSpec, FileConnectorSpec, FileStreamSpec, HttpConnectorSpec,
    IdentitySpec, JobSpec, OpsSpec, PagingSpec, ProfileSpec, SqlConnectorSpec, StoreSpec,
};
use super::{
    Config, ConnectorConfig, FeedConfig, FileConnector, FileStream, HttpConnector, HttpStream,
    IdentityConfig, JobConfig, MatchKey, ProfileConfig, SinkConfig, SqlConnector, SqlStream,
    StoreConfig, StreamRef, Transport,
};
use crate::mapper::Mapping;

const SINKS: [&str; 2] = ["file", "amqp"];
const FORMATS: [&str; 4] = ["csv", "json", "ndjson", "xml"];
const ENCODINGS: [&str; 2] = ["utf-8", "windows-1252"];
const DEFAULT_EXCHANGE: &str = "conflux.customers";
const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(30);
const DEFAULT_FEED_BATCH: usize = 500;
const DEFAULT_STREAM_BATCH: usize = 10_000;

/// Everything a load read, before any check.
pub(crate) struct Loaded {
    pub id: String,
    pub config_path: PathBuf,
    pub file: SourceFile,
    /// `None` when the config file did not parse (its errors are already reported).
    pub spec: Option<ConfigSpec>,
    /// `None` when the root could not be resolved (already reported).
    pub root: Option<PathBuf>,
    pub connectors: Vec<ConnectorFile>,
    /// Connector files that exist but did not parse: references to them are not reported
    /// again as unknown.
    pub broken_connectors: BTreeSet<String>,
    /// Every mapping file found, compiled or not.
    pub mapping_ids: BTreeSet<String>,
    pub mappings: BTreeMap<String, Arc<Mapping>>,
}

/// One parsed connector file.
pub(crate) struct ConnectorFile {
    pub id: String,
    /// Absolute.
    pub path: PathBuf,
    pub file: SourceFile,
    pub spec: ConnectorSpec,
}

/// A connector file's raw spec, by `kind`; mirrors [`Transport`].
pub(crate) enum ConnectorSpec {
    File(FileConnectorSpec),
    Http(Box<HttpConnectorSpec>),
    Sql(SqlConnectorSpec),
}

/// Checks everything and builds the [`Config`]; problems go to `diagnostics`. The result is
/// only meaningful when `diagnostics` is empty afterwards.
pub(crate) fn validate(
    loaded: Loaded,
    env: Env<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Config> {
    let Loaded {
        id,
        config_path,
        file,
        spec,
        root,
        connectors: connector_files,
        broken_connectors,
        mapping_ids,
        mappings,
    } = loaded;
    // Without a root the config's paths cannot resolve; a placeholder keeps the checks going
    // so that every other problem is still reported (no Config is returned in that case).
    let root_for_checks = root.clone().unwrap_or_default();

    let mut config_checker = Checker::new(&file, env, true, diagnostics);
    let parts = spec
        .as_ref()
        .map(|spec| check_config(spec, &id, &root_for_checks, &mut config_checker));
    let sync_entries: Vec<Vec<Text>> = match &spec {
        Some(spec) => spec
            .jobs
            .iter()
            .map(|job| {
                job.sync
                    .iter()
                    .filter_map(|entry| config_checker.text(entry))
                    .collect()
            })
            .collect(),
        None => Vec::new(),
    };

    let used: BTreeSet<&str> = sync_entries
        .iter()
        .flatten()
        .flat_map(|entry| connector_candidates(&entry.value))
        .collect();
    let mut connectors = BTreeMap::new();
    for connector in &connector_files {
        let mut checker = Checker::new(
            &connector.file,
            env,
            used.contains(connector.id.as_str()),
            diagnostics,
        );
        let checked = check_connector(connector, &root_for_checks, &mapping_ids, &mut checker);
        connectors.insert(connector.id.clone(), checked);
    }

    let (spec, parts) = (spec?, parts?);
    let mut checker = Checker::new(&file, env, true, diagnostics);
    let source_priority =
        check_source_priority(&spec.profile, &connectors, &broken_connectors, &mut checker);
    let jobs = check_jobs(
        &spec.jobs,
        sync_entries,
        &connectors,
        &broken_connectors,
        &mut checker,
    );

    let root = root?;
    let connectors = connectors
        .into_iter()
        .map(|(id, connector)| Some((id, connector?)))
        .collect::<Option<BTreeMap<_, _>>>()?;
    Some(Config {
        id,
        path: config_path,
        root,
        instance: parts.instance,
        store: parts.store?,
        feed: parts.feed?,
        identity: parts.identity?,
        profile: ProfileConfig {
            source_priority: source_priority?,
            ..parts.profile?
        },
        jobs: jobs?,
        ops_listen: parts.ops_listen?,
        connectors,
        mappings,
    })
}

/// A string value after `${VAR}` resolution, with the span of the value as written.
#[derive(Debug, Clone)]
struct Text {
    value: String,
    span: Range<usize>,
    from_env: bool,
}

impl Text {
    /// The value for a message: quoted, unless it came from the environment (and so may be a
    /// secret).
    fn shown(&self) -> String {
        if self.from_env {
            "(the value from the environment)".to_string()
        } else {
            format!("\"{}\"", self.value)
        }
    }
}

/// Resolves and checks the values of one file, collecting diagnostics positioned in it.
struct Checker<'a> {
    file: &'a SourceFile,
    env: Env<'a>,
    /// Whether unset variables are errors.
    required: bool,
    diagnostics: &'a mut Vec<Diagnostic>,
    /// Set by any error reported through this checker.
    failed: bool,
}

impl<'a> Checker<'a> {
    fn new(
        file: &'a SourceFile,
        env: Env<'a>,
        required: bool,
        diagnostics: &'a mut Vec<Diagnostic>,
    ) -> Checker<'a> {
        Checker {
            file,
            env,
            required,
            diagnostics,
            failed: false,
        }
    }

    fn error(&mut self, offset: usize, message: impl Into<String>) {
        self.failed = true;
        self.diagnostics.push(self.file.at(offset, message));
    }

    /// Resolves a spanned value; `None` (with diagnostics) when a reference cannot be.
    fn text(&mut self, value: &Spanned<String>) -> Option<Text> {
        let span = value.span();
        self.resolve(value.get_ref(), span.start)
            .map(|(value, from_env)| Text {
                value,
                span,
                from_env,
            })
    }

    fn optional_text(&mut self, value: Option<&Spanned<String>>) -> Option<Option<Text>> {
        match value {
            Some(value) => self.text(value).map(Some),
            None => Some(None),
        }
    }

    /// Resolves a value whose type keeps no span: errors point at its first occurrence in the
    /// text, or at the start of the file.
    fn plain(&mut self, value: &str) -> Option<String> {
        let offset = self.file.text.find(value).unwrap_or(0);
        self.resolve(value, offset).map(|(value, _)| value)
    }

    fn resolve(&mut self, raw: &str, offset: usize) -> Option<(String, bool)> {
        match expand(raw, self.env, self.required) {
            Ok(expanded) => Some((expanded.value, expanded.from_env)),
            Err(errors) => {
                for error in errors {
                    self.error(offset, error.to_string());
                }
                None
            }
        }
    }

    /// `unknown <what> "x"; did you mean "y"?` or the list of accepted names.
    fn unknown(&mut self, what: &str, text: &Text, accepted: &[&str]) {
        let hint = match (
            text.from_env,
            did_you_mean(&text.value, accepted.iter().copied()),
        ) {
            (false, Some(candidate)) => format!("; did you mean \"{candidate}\"?"),
            _ => format!("; expected {}", alternatives(accepted)),
        };
        self.error(
            text.span.start,
            format!("unknown {what} {}{hint}", text.shown()),
        );
    }
}

/// `"a"`, `"a" or "b"`, `one of "a", "b", "c"`.
fn alternatives(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("\"{name}\"")).collect();
    match quoted.as_slice() {
        [one] => one.clone(),
        [a, b] => format!("{a} or {b}"),
        _ => format!("one of {}", quoted.join(", ")),
    }
}

/// The parts of a [`Config`] that come from the config file alone.
struct ConfigParts {
    instance: String,
    store: Option<StoreConfig>,
    feed: Option<FeedConfig>,
    identity: Option<IdentityConfig>,
    profile: Option<ProfileConfig>,
    /// `Some(None)` when `[ops] listen` is not set; `None` when it is invalid.
    ops_listen: Option<Option<SocketAddr>>,
}

fn check_config(spec: &ConfigSpec, id: &str, root: &Path, checker: &mut Checker) -> ConfigParts {
    let instance = match &spec.instance {
        Some(instance) => checker.plain(instance).unwrap_or_default(),
        None => id.to_string(),
    };
    ConfigParts {
        instance,
        store: check_store(&spec.store, root, checker),
        feed: check_feed(&spec.feed, root, checker),
        identity: check_identity(&spec.identity, checker),
        profile: check_profile(&spec.profile, checker),
        ops_listen: check_ops(&spec.ops, checker),
    }
}

fn check_store(spec: &StoreSpec, root: &Path, checker: &mut Checker) -> Option<StoreConfig> {
    let url = checker.text(&spec.url)?;
    let at = url.span.start;
    let schema = checker.optional_text(spec.schema.as_ref())?;
    let pool_size = spec
        .pool_size
        .as_ref()
        .map(|size| (*size.get_ref(), size.span().start));
    if let Some(path) = url.value.strip_prefix("sqlite://") {
        if path.is_empty() {
            checker.error(at, "store.url needs a database file after sqlite://");
            return None;
        }
        if let Some(schema) = &schema {
            checker.error(
                schema.span.start,
                "store.schema applies to PostgreSQL stores only",
            );
            return None;
        }
        if let Some((_, at)) = pool_size {
            checker.error(at, "store.pool_size applies to PostgreSQL stores only");
            return None;
        }
        return Some(StoreConfig::Sqlite {
            path: root.join(path),
        });
    }
    let message = match url.value.split_once("://") {
        Some(("postgres" | "postgresql", rest)) => {
            if rest.is_empty() {
                "store.url needs a host and database after postgres://".to_string()
            } else if let Some((0, at)) = pool_size {
                checker.error(at, "store.pool_size must be at least 1");
                return None;
            } else if let Some(schema) = schema.as_ref().filter(|s| s.value.is_empty()) {
                checker.error(schema.span.start, "store.schema must not be empty");
                return None;
            } else {
                return Some(StoreConfig::Postgres {
                    url: url.value,
                    schema: schema.map(|s| s.value),
                    pool_size: pool_size.map_or(crate::store::postgres::DEFAULT_POOL_SIZE, |p| p.0),
                });
            }
        }
        Some((scheme, _)) => {
            format!(
                "unsupported store scheme \"{scheme}\"; use sqlite://<path> or \
                 postgres://<host>/<database>"
            )
        }
        None => {
            "store.url must look like sqlite://<path> or postgres://<host>/<database>".to_string()
        }
    };
    checker.error(at, message);
    None
}

fn check_feed(spec: &FeedSpec, root: &Path, checker: &mut Checker) -> Option<FeedConfig> {
    let sink_text = checker.text(&spec.sink);
    let path = checker.optional_text(spec.path.as_ref());
    let retry_budget = match checker.optional_text(spec.retry_budget.as_ref()) {
        Some(Some(text)) => parse_duration(&text, "retry_budget", checker),
        Some(None) => Some(DEFAULT_RETRY_BUDGET),
        None => None,
    };
    let batch_size = match spec.batch_size {
        Some(0) => {
            checker.error(spec.sink.span().start, "feed.batch_size must be at least 1");
            None
        }
        Some(size) => Some(size),
        None => Some(DEFAULT_FEED_BATCH),
    };
    let amqp = spec.amqp.as_ref().map(|amqp| check_amqp(amqp, checker));

    let sink_text = sink_text?;
    let sink = match sink_text.value.as_str() {
        "file" => match path? {
            Some(path) if !path.value.is_empty() => Some(SinkConfig::File {
                path: root.join(&path.value),
            }),
            Some(path) => {
                checker.error(path.span.start, "feed.path must not be empty");
                None
            }
            None => {
                checker.error(
                    sink_text.span.start,
                    "sink \"file\" needs feed.path (the NDJSON file events are appended to)",
                );
                None
            }
        },
        "amqp" => match amqp {
            Some(amqp) => amqp,
            None => {
                checker.error(
                    sink_text.span.start,
                    "sink \"amqp\" needs a [feed.amqp] table with the broker url",
                );
                None
            }
        },
        _ => {
            checker.unknown("sink", &sink_text, &SINKS);
            None
        }
    };
    Some(FeedConfig {
        sink: sink?,
        retry_budget: retry_budget?,
        batch_size: batch_size?,
    })
}

fn check_amqp(spec: &AmqpSpec, checker: &mut Checker) -> Option<SinkConfig> {
    let url = checker.text(&spec.url);
    let exchange = match &spec.exchange {
        Some(exchange) => checker.plain(exchange),
        None => Some(DEFAULT_EXCHANGE.to_string()),
    };
    let url = url?;
    if !(url.value.starts_with("amqp://") || url.value.starts_with("amqps://")) {
        // The URL is not echoed: it normally carries the broker password.
        checker.error(
            url.span.start,
            "feed.amqp.url must start with amqp:// or amqps://",
        );
        return None;
    }
    let exchange = exchange?;
    if exchange.is_empty() {
        let at = checker.file.text.find("exchange").unwrap_or(url.span.start);
        checker.error(at, "feed.amqp.exchange must not be empty");
        return None;
    }
    Some(SinkConfig::Amqp {
        url: url.value,
        exchange,
    })
}

fn check_ops(spec: &OpsSpec, checker: &mut Checker) -> Option<Option<SocketAddr>> {
    let Some(listen) = checker.optional_text(spec.listen.as_ref())? else {
        return Some(None);
    };
    match listen.value.parse::<SocketAddr>() {
        Ok(addr) => Some(Some(addr)),
        Err(_) => {
            checker.error(
                listen.span.start,
                format!(
                    "ops.listen {} is not a socket address; write an IP address and a port, \
                     like \"127.0.0.1:9464\" or \"[::1]:9464\"",
                    listen.shown()
                ),
            );
            None
        }
    }
}

/// A positive duration written like `30s`, `5m`, `1h` or `500ms` (jiff's friendly format;
/// ISO 8601 `PT30S` is accepted too).
fn parse_duration(text: &Text, what: &str, checker: &mut Checker) -> Option<Duration> {
    let parsed = SignedDuration::from_str(&text.value)
        .ok()
        .and_then(|duration| Duration::try_from(duration).ok());
    match parsed {
        Some(duration) if !duration.is_zero() => Some(duration),
        Some(_) => {
            checker.error(text.span.start, format!("{what} must be longer than zero"));
            None
        }
        None => {
            checker.error(
                text.span.start,
                format!(
                    "invalid duration {}; write a positive duration like \"30s\", \"5m\", \
                     \"1h\" or \"500ms\"",
                    text.shown()
                ),
            );
            None
        }
    }
}

fn check_identity(spec: &IdentitySpec, checker: &mut Checker) -> Option<IdentityConfig> {
    let matching = check_matching(spec, checker);
    let match_on = check_match_on(spec, checker)?;
    Some(IdentityConfig {
        match_on,
        matching: matching?,
    })
}

/// The probabilistic matcher's settings: `Some(None)` when it is switched off, `None` on an
/// error (reported).
fn check_matching(
    spec: &IdentitySpec,
    checker: &mut Checker,
) -> Option<Option<crate::resolver::matcher::MatchSettings>> {
    use crate::resolver::blocking::BlockingRule;
    use crate::resolver::matcher::MatchSettings;
    if spec.probabilistic == Some(false) {
        return Some(None);
    }
    let mut settings = MatchSettings::default();
    let mut ok = true;
    if let Some(rules) = &spec.blocking {
        settings.blocking.clear();
        for rule in rules {
            match rule.get_ref().parse::<BlockingRule>() {
                Ok(parsed) => settings.blocking.push(parsed),
                Err(error) => {
                    checker.error(rule.span().start, error.to_string());
                    ok = false;
                }
            }
        }
    }
    let mut probability = |value: &Option<Spanned<f64>>, what: &str, into: &mut f64| {
        if let Some(value) = value {
            let v = *value.get_ref();
            if (0.0..=1.0).contains(&v) {
                *into = v;
            } else {
                checker.error(
                    value.span().start,
                    format!("{what} must be a probability between 0 and 1, found {v}"),
                );
                ok = false;
            }
        }
    };
    probability(
        &spec.threshold,
        "threshold",
        &mut settings.cluster.threshold,
    );
    probability(
        &spec.review_from,
        "review_from",
        &mut settings.cluster.review_from,
    );
    if settings.cluster.review_from > settings.cluster.threshold {
        let span = spec
            .review_from
            .as_ref()
            .map_or(0, |value| value.span().start);
        checker.error(span, "review_from must not exceed threshold");
        ok = false;
    }
    let mut count = |value: &Option<Spanned<i64>>, what: &str, into: &mut usize| {
        if let Some(value) = value {
            match usize::try_from(*value.get_ref()) {
                Ok(v) if v >= 2 => *into = v,
                _ => {
                    checker.error(
                        value.span().start,
                        format!("{what} must be at least 2, found {}", value.get_ref()),
                    );
                    ok = false;
                }
            }
        }
    };
    count(
        &spec.max_cluster_size,
        "max_cluster_size",
        &mut settings.cluster.max_cluster_size,
    );
    count(
        &spec.max_block_size,
        "max_block_size",
        &mut settings.max_block_size,
    );
    if let Some(region) = &spec.phone_region {
        let code = region.get_ref();
        if code.parse::<phonenumber::country::Id>().is_ok() {
            settings.normalise.phone_region = code.clone();
        } else {
            checker.error(
                region.span().start,
                format!("phone_region {code:?} is not an ISO 3166-1 region such as \"DE\""),
            );
            ok = false;
        }
    }
    if let Some(overrides) = &spec.model {
        let mut model = settings.model.clone();
        match model.apply(overrides) {
            Ok(()) => settings.overrides = overrides.clone(),
            Err(errors) => {
                for error in errors {
                    checker.error(0, error.to_string());
                }
                ok = false;
            }
        }
    }
    ok.then_some(Some(settings))
}

fn check_match_on(spec: &IdentitySpec, checker: &mut Checker) -> Option<Vec<MatchKey>> {
    let Some(entries) = &spec.match_on else {
        return Some(vec![MatchKey::Email, MatchKey::Identifier("vat".into())]);
    };
    let mut match_on = Vec::new();
    let mut ok = true;
    for entry in entries {
        let Some(text) = checker.text(entry) else {
            ok = false;
            continue;
        };
        let key = match text.value.as_str() {
            "email" => Some(MatchKey::Email),
            "phone" => Some(MatchKey::Phone),
            other => match other.strip_prefix("identifier:") {
                Some(scheme) if is_scheme(scheme) => Some(MatchKey::Identifier(scheme.into())),
                Some(_) => {
                    checker.error(
                        text.span.start,
                        format!(
                            "invalid identifier scheme in {}; write identifier:<scheme> with \
                             a lower-case scheme such as identifier:vat",
                            text.shown()
                        ),
                    );
                    None
                }
                None => {
                    let hint = suggestion(other, ["email", "phone", "identifier:vat"]);
                    checker.error(
                        text.span.start,
                        format!(
                            "unknown match key {}{hint}; expected \"email\", \"phone\" or \
                             \"identifier:<scheme>\"",
                            text.shown()
                        ),
                    );
                    None
                }
            },
        };
        match key {
            Some(key) if match_on.contains(&key) => {
                checker.error(text.span.start, format!("duplicate match key \"{key}\""));
                ok = false;
            }
            Some(key) => match_on.push(key),
            None => ok = false,
        }
    }
    ok.then_some(match_on)
}

fn is_scheme(scheme: &str) -> bool {
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn is_currency(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// Everything of the profile section except `source_priority`, which needs the connectors.
fn check_profile(spec: &ProfileSpec, checker: &mut Checker) -> Option<ProfileConfig> {
    let base_currency = match checker.optional_text(spec.base_currency.as_ref()) {
        Some(Some(text)) if is_currency(&text.value) => Some(text.value),
        Some(Some(text)) => {
            checker.error(
                text.span.start,
                format!(
                    "base_currency must be a 3-letter upper-case ISO 4217 code, got {}",
                    text.shown()
                ),
            );
            None
        }
        Some(None) => Some("EUR".to_string()),
        None => None,
    };
    let mut fx = BTreeMap::new();
    let mut ok = true;
    for (currency, rate) in &spec.fx {
        let at = rate.span().start;
        if !is_currency(currency) {
            checker.error(
                at,
                format!("fx key \"{currency}\" must be a 3-letter upper-case ISO 4217 code"),
            );
            ok = false;
        }
        let Some(text) = checker.text(rate) else {
            ok = false;
            continue;
        };
        match Decimal::from_str(text.value.trim()) {
            Ok(value) if value > Decimal::ZERO => {
                fx.insert(currency.clone(), value);
            }
            _ => {
                checker.error(
                    at,
                    format!(
                        "fx rate for {currency} must be a positive decimal such as \"0.92\", \
                         got {}",
                        text.shown()
                    ),
                );
                ok = false;
            }
        }
    }
    let rules = check_profile_rules(spec, checker);
    let (today, survivorship, default_rule, value_excludes, tiers, lifecycle) = rules?;
    Some(ProfileConfig {
        base_currency: base_currency?,
        fx: ok.then_some(fx)?,
        source_priority: Vec::new(),
        today,
        survivorship,
        default_rule,
        value_excludes,
        tiers,
        lifecycle,
    })
}

type ProfileRules = (
    Option<jiff::civil::Date>,
    BTreeMap<String, crate::profile::Rule>,
    crate::profile::Rule,
    Vec<crate::model::OrderStatus>,
    crate::profile::TierSettings,
    crate::profile::LifecycleSettings,
);

/// `today`, `[profile.survivorship]`, `exclude_from_value`, `[profile.tiers]` and
/// `[profile.lifecycle]`.
fn check_profile_rules(spec: &ProfileSpec, checker: &mut Checker) -> Option<ProfileRules> {
    use crate::model::OrderStatus;
    use crate::profile::{LifecycleSettings, Rule, SURVIVORSHIP_FIELDS, TierBasis, TierSettings};
    let mut ok = true;
    let today = match checker.optional_text(spec.today.as_ref()) {
        Some(Some(text)) => match jiff::civil::Date::from_str(text.value.trim()) {
            Ok(date) => Some(date),
            Err(_) => {
                checker.error(
                    text.span.start,
                    format!(
                        "today must be a date like \"2026-11-23\", got {}",
                        text.shown()
                    ),
                );
                ok = false;
                None
            }
        },
        Some(None) => None,
        None => {
            ok = false;
            None
        }
    };
    let mut survivorship = BTreeMap::new();
    let mut default_rule = Rule::SourcePriority;
    for (field, rule) in &spec.survivorship {
        let Some(text) = checker.text(rule) else {
            ok = false;
            continue;
        };
        if field != "default" && !SURVIVORSHIP_FIELDS.contains(&field.as_str()) {
            let accepted: Vec<&str> = std::iter::once("default")
                .chain(SURVIVORSHIP_FIELDS)
                .collect();
            checker.unknown(
                "survivorship field",
                &Text {
                    value: field.clone(),
                    span: text.span.clone(),
                    from_env: false,
                },
                &accepted,
            );
            ok = false;
            continue;
        }
        match Rule::parse(text.value.trim()) {
            Some(parsed) if field == "default" => default_rule = parsed,
            Some(parsed) => {
                survivorship.insert(field.clone(), parsed);
            }
            None => {
                checker.unknown("survivorship rule", &text, &Rule::NAMES);
                ok = false;
            }
        }
    }
    let mut value_excludes = vec![OrderStatus::Cancelled, OrderStatus::Returned];
    if let Some(statuses) = &spec.exclude_from_value {
        value_excludes.clear();
        for status in statuses {
            let Some(text) = checker.text(status) else {
                ok = false;
                continue;
            };
            match OrderStatus::parse(text.value.trim()) {
                Some(parsed) => value_excludes.push(parsed),
                None => {
                    checker.unknown("order status", &text, &OrderStatus::NAMES);
                    ok = false;
                }
            }
        }
    }
    let mut tiers = TierSettings::default();
    if let Some(spec) = &spec.tiers {
        match checker.optional_text(spec.basis.as_ref()) {
            Some(Some(text)) => match text.value.trim() {
                "percentile" => {}
                "value" => tiers.basis = TierBasis::Value,
                _ => {
                    checker.unknown("tier basis", &text, &["percentile", "value"]);
                    ok = false;
                }
            },
            Some(None) => {}
            None => ok = false,
        }
        let mut thresholds = Vec::new();
        for (name, value, slot) in [
            ("diamond", &spec.diamond, &mut tiers.diamond),
            ("gold", &spec.gold, &mut tiers.gold),
            ("silver", &spec.silver, &mut tiers.silver),
        ] {
            match checker.optional_text(value.as_ref()) {
                Some(Some(text)) => match Decimal::from_str(text.value.trim()) {
                    Ok(parsed) if parsed >= Decimal::ZERO => {
                        *slot = parsed;
                        thresholds.push((text.span.start, parsed));
                    }
                    _ => {
                        checker.error(
                            text.span.start,
                            format!(
                                "tiers.{name} must be a non-negative decimal such as \"5000\", got {}",
                                text.shown()
                            ),
                        );
                        ok = false;
                    }
                },
                Some(None) if tiers.basis == TierBasis::Value => {
                    let at = spec.basis.as_ref().map_or(0, |b| b.span().start);
                    checker.error(
                        at,
                        format!("tiers.{name} is required with basis = \"value\""),
                    );
                    ok = false;
                }
                Some(None) => {}
                None => ok = false,
            }
        }
        if ok && !(tiers.diamond >= tiers.gold && tiers.gold >= tiers.silver) {
            let at = thresholds.first().map_or(0, |(at, _)| *at);
            checker.error(
                at,
                "tiers must satisfy diamond >= gold >= silver".to_string(),
            );
            ok = false;
        }
    }
    let mut lifecycle = LifecycleSettings::default();
    if let Some(spec) = &spec.lifecycle {
        for (name, value) in [
            ("loyal_orders", &spec.loyal_orders),
            ("loyal_tenure_days", &spec.loyal_tenure_days),
            ("at_risk_days", &spec.at_risk_days),
            ("lapsed_days", &spec.lapsed_days),
        ] {
            let Some(value) = value else { continue };
            let number = *value.get_ref();
            if number < 0 || (name == "loyal_orders" && number < 2) {
                checker.error(
                    value.span().start,
                    format!(
                        "lifecycle.{name} must be {}, got {number}",
                        if name == "loyal_orders" {
                            "at least 2"
                        } else {
                            "zero or more"
                        }
                    ),
                );
                ok = false;
                continue;
            }
            match name {
                "loyal_orders" => lifecycle.loyal_orders = number as u64,
                "loyal_tenure_days" => lifecycle.loyal_tenure_days = number,
                "at_risk_days" => lifecycle.at_risk_days = number,
                _ => lifecycle.lapsed_days = number,
            }
        }
        if ok && lifecycle.at_risk_days > lifecycle.lapsed_days {
            let at = spec.at_risk_days.as_ref().map_or(0, |v| v.span().start);
            checker.error(
                at,
                format!(
                    "lifecycle.at_risk_days ({}) must not exceed lapsed_days ({})",
                    lifecycle.at_risk_days, lifecycle.lapsed_days
                ),
            );
            ok = false;
        }
    }
    ok.then_some((
        today,
        survivorship,
        default_rule,
        value_excludes,
        tiers,
        lifecycle,
    ))
}

fn check_source_priority(
    spec: &ProfileSpec,
    connectors: &BTreeMap<String, Option<ConnectorConfig>>,
    broken: &BTreeSet<String>,
    checker: &mut Checker,
) -> Option<Vec<String>> {
    // Systems of connectors that failed their own checks are unknown; their ids (the
    // default system) are accepted so that one mistake is not reported twice.
    let systems: BTreeSet<&str> = connectors
        .iter()
        .map(|(id, connector)| {
            connector
                .as_ref()
                .map_or(id.as_str(), |c| c.system.as_str())
        })
        .chain(broken.iter().map(String::as_str))
        .collect();
    let mut priority = Vec::new();
    let mut ok = true;
    for entry in &spec.source_priority {
        let Some(text) = checker.text(entry) else {
            ok = false;
            continue;
        };
        if !systems.contains(text.value.as_str()) {
            let hint = suggestion(&text.value, systems.iter().copied());
            checker.error(
                text.span.start,
                format!(
                    "source_priority names system {}, which no connector has{hint}",
                    text.shown()
                ),
            );
            ok = false;
        } else if priority.contains(&text.value) {
            checker.error(
                text.span.start,
                format!("system {} is listed twice", text.shown()),
            );
            ok = false;
        } else {
            priority.push(text.value);
        }
    }
    ok.then_some(priority)
}

/// The connector ids a `sync` entry may refer to: itself, and every prefix before a `.`.
fn connector_candidates(entry: &str) -> impl Iterator<Item = &str> {
    std::iter::once(entry).chain(entry.match_indices('.').map(|(i, _)| &entry[..i]))
}

fn check_jobs(
    specs: &[JobSpec],
    sync_entries: Vec<Vec<Text>>,
    connectors: &BTreeMap<String, Option<ConnectorConfig>>,
    broken: &BTreeSet<String>,
    checker: &mut Checker,
) -> Option<Vec<JobConfig>> {
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .year(croner::parser::Year::Disallowed)
        .build();
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut jobs = Vec::new();
    let mut ok = true;
    for (spec, entries) in specs.iter().zip(sync_entries) {
        let before = checker.diagnostics.len();
        let name = checker.text(&spec.name);
        if let Some(name) = &name {
            if name.value.is_empty() {
                checker.error(name.span.start, "job name must not be empty");
            } else if let Some(&first) = names.get(&name.value) {
                let (line, _) = super::diagnostic::position(&checker.file.text, first);
                checker.error(
                    name.span.start,
                    format!(
                        "duplicate job name {} (first used on line {line})",
                        name.shown()
                    ),
                );
            } else {
                names.insert(name.value.clone(), name.span.start);
            }
            if spec.sync.is_empty() {
                checker.error(
                    name.span.start,
                    format!(
                        "job {} syncs nothing; list connectors or connector.stream entries in \
                         sync",
                        name.shown()
                    ),
                );
            }
        }
        let schedule = checker.optional_text(spec.schedule.as_ref()).flatten();
        if let Some(schedule) = &schedule
            && let Err(error) = cron.parse(&schedule.value)
        {
            checker.error(
                schedule.span.start,
                format!(
                    "invalid cron schedule {}: {error} (use 5 fields, or 6 with seconds first)",
                    schedule.shown()
                ),
            );
        }
        let timezone = checker.optional_text(spec.timezone.as_ref()).flatten();
        if let Some(timezone) = &timezone
            && jiff::tz::TimeZone::get(&timezone.value).is_err()
        {
            let zones: Vec<String> = jiff::tz::db()
                .available()
                .map(|zone| zone.to_string())
                .collect();
            let hint = suggestion(&timezone.value, zones.iter().map(String::as_str));
            checker.error(
                timezone.span.start,
                format!("unknown time zone {}{hint}", timezone.shown()),
            );
        }
        let streams: Vec<StreamRef> = entries
            .iter()
            .flat_map(|entry| resolve_sync(entry, connectors, broken, checker))
            .collect();
        if checker.diagnostics.len() != before || entries.len() != spec.sync.len() {
            ok = false;
            continue;
        }
        if let Some(name) = name {
            jobs.push(JobConfig {
                name: name.value,
                schedule: schedule.map(|text| text.value),
                timezone: timezone.map(|text| text.value),
                streams,
            });
        }
    }
    ok.then_some(jobs)
}

/// The streams one `sync` entry means: `<connector>` (all its streams, in file order) or
/// `<connector>.<stream>`. Connector ids may contain dots, so the longest matching prefix
/// wins.
fn resolve_sync(
    entry: &Text,
    connectors: &BTreeMap<String, Option<ConnectorConfig>>,
    broken: &BTreeSet<String>,
    checker: &mut Checker,
) -> Vec<StreamRef> {
    let value = entry.value.as_str();
    let at = entry.span.start;
    let mut splits: Vec<(&str, Option<&str>)> = vec![(value, None)];
    splits.extend(
        value
            .match_indices('.')
            .rev()
            .map(|(i, _)| (&value[..i], Some(&value[i + 1..]))),
    );
    for (id, stream) in splits {
        if broken.contains(id) {
            return Vec::new();
        }
        let Some(connector) = connectors.get(id) else {
            continue;
        };
        // A connector with its own errors was reported in its file already.
        let Some(connector) = connector else {
            return Vec::new();
        };
        let names = connector.stream_names();
        return match stream {
            None => names
                .into_iter()
                .map(|stream| StreamRef {
                    connector: id.to_string(),
                    stream: stream.to_string(),
                })
                .collect(),
            Some(stream) if names.contains(&stream) => vec![StreamRef {
                connector: id.to_string(),
                stream: stream.to_string(),
            }],
            Some(stream) => {
                let hint = suggestion(stream, names.iter().copied());
                checker.error(
                    at,
                    format!("connector \"{id}\" has no stream \"{stream}\"{hint}"),
                );
                Vec::new()
            }
        };
    }
    let id = value.split('.').next().unwrap_or(value);
    let hint = suggestion(
        id,
        connectors.keys().chain(broken.iter()).map(String::as_str),
    );
    let shown = if entry.from_env {
        "(the value from the environment)".to_string()
    } else {
        format!("\"{id}\"")
    };
    checker.error(at, format!("unknown connector {shown}{hint}"));
    Vec::new()
}

fn check_connector(
    connector: &ConnectorFile,
    root: &Path,
    mapping_ids: &BTreeSet<String>,
    checker: &mut Checker,
) -> Option<ConnectorConfig> {
    match &connector.spec {
        ConnectorSpec::File(spec) => {
            check_file_connector(connector, spec, root, mapping_ids, checker)
        }
        ConnectorSpec::Http(spec) => {
            check_http_connector(connector, spec, root, mapping_ids, checker)
        }
        ConnectorSpec::Sql(spec) => check_sql_connector(connector, spec, mapping_ids, checker),
    }
}

fn check_file_connector(
    connector: &ConnectorFile,
    spec: &FileConnectorSpec,
    root: &Path,
    mapping_ids: &BTreeSet<String>,
    checker: &mut Checker,
) -> Option<ConnectorConfig> {
    let system = match &spec.system {
        Some(system) => checker.plain(system),
        None => Some(connector.id.clone()),
    };
    let dir = checker.text(&spec.dir).and_then(|dir| {
        if dir.value.trim().is_empty() {
            checker.error(dir.span.start, "dir must not be empty");
            None
        } else {
            Some(root.join(&dir.value))
        }
    });
    let archive_dir = checker
        .optional_text(spec.archive_dir.as_ref())
        .and_then(|dir| match dir {
            Some(dir) if dir.value.trim().is_empty() => {
                checker.error(dir.span.start, "archive_dir must not be empty");
                None
            }
            Some(dir) => Some(Some(root.join(&dir.value))),
            None => Some(None),
        });
    let empty_values = check_empty_values(spec.empty_values.as_deref(), checker);

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut streams = Vec::new();
    for stream in &spec.streams {
        let checked = check_stream(stream, mapping_ids, checker);
        let name = checker.text(&stream.name);
        check_unique_stream(name.as_ref(), &mut seen, checker);
        streams.push(checked);
    }
    if checker.failed {
        return None;
    }
    Some(ConnectorConfig {
        id: connector.id.clone(),
        path: connector.path.clone(),
        system: system?,
        empty_values: empty_values?,
        transport: Transport::File(FileConnector {
            dir: dir?,
            archive_dir: archive_dir?,
            streams: streams.into_iter().collect::<Option<Vec<_>>>()?,
        }),
    })
}

/// Default per-request retry budget of HTTP streams.
const DEFAULT_HTTP_RETRY: Duration = Duration::from_secs(120);
/// Default per-request timeout of HTTP streams.
const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Reports a stream name used twice in one connector file, pointing back at its first use.
fn check_unique_stream(
    name: Option<&Text>,
    seen: &mut BTreeMap<String, usize>,
    checker: &mut Checker,
) {
    let Some(name) = name else {
        return;
    };
    if let Some(&first) = seen.get(&name.value) {
        let (line, _) = super::diagnostic::position(&checker.file.text, first);
        checker.error(
            name.span.start,
            format!(
                "duplicate stream name {} (first used on line {line})",
                name.shown()
            ),
        );
    } else {
        seen.insert(name.value.clone(), name.span.start);
    }
}

fn check_mapping_ref(
    mapping: &Spanned<String>,
    mapping_ids: &BTreeSet<String>,
    checker: &mut Checker,
) -> Option<String> {
    checker.text(mapping).and_then(|mapping| {
        if mapping_ids.contains(&mapping.value) {
            Some(mapping.value)
        } else {
            let hint = suggestion(&mapping.value, mapping_ids.iter().map(String::as_str));
            checker.error(
                mapping.span.start,
                format!("unknown mapping {}{hint}", mapping.shown()),
            );
            None
        }
    })
}

fn check_http_connector(
    connector: &ConnectorFile,
    spec: &HttpConnectorSpec,
    root: &Path,
    mapping_ids: &BTreeSet<String>,
    checker: &mut Checker,
) -> Option<ConnectorConfig> {
    use crate::source::http::{Auth, DEFAULT_MAX_RESPONSE_BYTES, HttpStreamSettings};
    let system = match &spec.system {
        Some(system) => checker.plain(system),
        None => Some(connector.id.clone()),
    };
    let base_url = checker.text(&spec.base_url).and_then(|url| {
        let value = url.value.trim_end_matches('/').to_string();
        // In a connector no job uses, `${VAR}` references stay unresolved: nothing to check.
        let unresolved = !checker.required && value.contains("${");
        let valid = unresolved
            || ((value.starts_with("http://") || value.starts_with("https://"))
                && value.len() > "https://".len());
        if valid {
            Some(value)
        } else {
            checker.error(
                url.span.start,
                format!(
                    "base_url {} must start with http:// or https:// and name a host",
                    url.shown()
                ),
            );
            None
        }
    });
    let auth = match &spec.auth {
        None => Some(Auth::None),
        Some(auth) => check_auth(auth, checker),
    };
    let mut headers = Vec::new();
    for (name, value) in &spec.headers {
        if let Some(value) = checker.text(value) {
            headers.push((name.clone(), value.value));
        }
    }
    let retry = match &spec.retry {
        None => Some(DEFAULT_HTTP_RETRY),
        Some(retry) => checker
            .text(&retry.max_elapsed)
            .and_then(|text| parse_duration(&text, "retry.max_elapsed", checker)),
    };
    let timeout = match checker.optional_text(spec.timeout.as_ref()) {
        Some(Some(text)) => parse_duration(&text, "timeout", checker),
        Some(None) => Some(DEFAULT_HTTP_TIMEOUT),
        None => None,
    };
    let rate_limit = match spec.rate_limit {
        Some(rate) if !(rate.is_finite() && rate > 0.0) => {
            let at = checker.file.key_offset("rate_limit").unwrap_or(0);
            checker.error(
                at,
                format!("rate_limit must be a positive number of requests per second, got {rate}"),
            );
            None
        }
        rate => Some(rate),
    };
    let max_response_bytes = match spec.max_response_mb {
        Some(0) => {
            let at = checker.file.key_offset("max_response_mb").unwrap_or(0);
            checker.error(at, "max_response_mb must be at least 1");
            None
        }
        Some(mb) => Some(mb.saturating_mul(1024 * 1024)),
        None => Some(DEFAULT_MAX_RESPONSE_BYTES),
    };
    let empty_values = check_empty_values(spec.empty_values.as_deref(), checker);
    let ca_file = match &spec.tls {
        None => Some(None),
        Some(tls) => checker.text(&tls.ca_file).and_then(|file| {
            let path = root.join(&file.value);
            // Only a file that exists is accepted; whether it is PEM is checked when the
            // client is built, so `validate` stays free of certificate parsing.
            if path.is_file() || (!checker.required && file.value.contains("${")) {
                Some(Some(path))
            } else {
                checker.error(
                    file.span.start,
                    format!("tls.ca_file {} is not a file", file.shown()),
                );
                None
            }
        }),
    };

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut streams = Vec::new();
    for stream in &spec.streams {
        let name = checker.text(&stream.name);
        check_unique_stream(name.as_ref(), &mut seen, checker);
        let mapping = check_mapping_ref(&stream.mapping, mapping_ids, checker);
        let path = checker.text(&stream.path).and_then(|path| {
            if path.value.starts_with('/') {
                Some(path.value)
            } else {
                checker.error(
                    path.span.start,
                    format!("path {} must start with /", path.shown()),
                );
                None
            }
        });
        let method = match checker.optional_text(stream.method.as_ref()) {
            Some(None) => Some(crate::source::http::HttpMethod::Get),
            Some(Some(text)) => match text.value.to_ascii_lowercase().as_str() {
                "get" => Some(crate::source::http::HttpMethod::Get),
                "post" => Some(crate::source::http::HttpMethod::Post),
                _ => {
                    checker.unknown("method", &text, &["get", "post"]);
                    None
                }
            },
            None => None,
        };
        let format = match checker.optional_text(stream.format.as_ref()) {
            Some(None) => Some(crate::source::http::BodyFormat::Json),
            Some(Some(text)) => match text.value.as_str() {
                "json" => Some(crate::source::http::BodyFormat::Json),
                "xml" => Some(crate::source::http::BodyFormat::Xml),
                _ => {
                    checker.unknown("format", &text, &["json", "xml"]);
                    None
                }
            },
            None => None,
        };
        let records = checker
            .optional_text(stream.records.as_ref())
            .map(|r| r.map(|t| t.value));
        if matches!(format, Some(crate::source::http::BodyFormat::Xml))
            && matches!(records, Some(None))
        {
            checker.error(
                stream.name.span().start,
                "format \"xml\" needs records: the slash path of the record elements, \
                 e.g. \"Envelope/Body/Response/Item\"",
            );
        }
        let mut query = Vec::new();
        for (key, value) in &stream.query {
            if let Some(value) = checker.text(value) {
                query.push((key.clone(), value.value));
            }
        }
        let body = match &stream.body {
            None => Some(None),
            Some(value) => {
                let resolved = resolve_toml(value, checker);
                resolved.map(Some)
            }
        };
        let paging = match &stream.paging {
            None => Some(crate::source::http::Paging::None),
            Some(paging) => Some(paging_of(paging.get_ref())),
        };
        let incremental = match &stream.incremental {
            None => Some(None),
            Some(inc) => {
                if inc.fields.is_empty()
                    || inc.fields.len() > 2
                    || !inc.template.contains("{cursor}")
                {
                    let at = stream.name.span().start;
                    checker.error(
                        at,
                        "incremental needs one or two `fields` and a `template` containing {cursor}",
                    );
                    None
                } else {
                    let lookback = match &inc.lookback {
                        None => Some(None),
                        Some(text) => checker
                            .text(text)
                            .and_then(|text| parse_duration(&text, "lookback", checker))
                            .map(Some),
                    };
                    let format = match &inc.format {
                        Some(format) => {
                            let probe =
                                jiff::Timestamp::UNIX_EPOCH.to_zoned(jiff::tz::TimeZone::UTC);
                            match jiff::fmt::strtime::format(format, &probe) {
                                Ok(_) => Some(Some(format.clone())),
                                Err(error) => {
                                    checker.error(
                                        stream.name.span().start,
                                        format!("incremental format {format:?} is not a strftime format: {error}"),
                                    );
                                    None
                                }
                            }
                        }
                        None => Some(None),
                    };
                    (|| {
                        Some(Some(crate::source::http::Incremental {
                            fields: inc.fields.clone(),
                            param: inc.param.clone(),
                            template: inc.template.clone(),
                            initial: inc.initial.clone(),
                            format: format?,
                            lookback: lookback?,
                        }))
                    })()
                }
            }
        };
        let settings = (|| {
            Some(HttpStreamSettings {
                base_url: base_url.clone()?,
                path: path?,
                method: method?,
                query,
                headers: headers.clone(),
                body: body?,
                format: format?,
                records: records?,
                paging: paging?,
                auth: auth.clone()?,
                incremental: incremental?,
                error_path: stream.error_path.clone(),
                retry_max_elapsed: retry?,
                requests_per_second: rate_limit?,
                max_response_bytes: max_response_bytes?,
                timeout: timeout?,
                ca_file: ca_file.clone()?,
            })
        })();
        streams.push((|| {
            Some(HttpStream {
                name: name?.value,
                mapping: mapping?,
                settings: settings?,
            })
        })());
    }
    if checker.failed {
        return None;
    }
    Some(ConnectorConfig {
        id: connector.id.clone(),
        path: connector.path.clone(),
        system: system?,
        empty_values: empty_values?,
        transport: Transport::Http(HttpConnector {
            streams: streams.into_iter().collect::<Option<Vec<_>>>()?,
        }),
    })
}

const SQL_SCHEMES: [&str; 5] = ["postgres", "postgresql", "mysql", "mariadb", "sqlite"];

fn check_sql_connector(
    connector: &ConnectorFile,
    spec: &SqlConnectorSpec,
    mapping_ids: &BTreeSet<String>,
    checker: &mut Checker,
) -> Option<ConnectorConfig> {
    let system = match &spec.system {
        Some(system) => checker.plain(system),
        None => Some(connector.id.clone()),
    };
    let url = checker.text(&spec.url).and_then(|url| {
        let scheme = url.value.split_once("://").map(|(scheme, _)| scheme);
        let unresolved = !checker.required && url.value.contains("${");
        match scheme {
            _ if unresolved => Some(url.value),
            Some(scheme) if SQL_SCHEMES.contains(&scheme) => Some(url.value),
            _ => {
                // The URL may hold a password: name the accepted schemes, not the value.
                checker.error(
                    url.span.start,
                    format!(
                        "url must start with one of {}",
                        SQL_SCHEMES.map(|s| format!("{s}://")).join(", ")
                    ),
                );
                None
            }
        }
    });
    let empty_values = check_empty_values(spec.empty_values.as_deref(), checker);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut streams = Vec::new();
    for stream in &spec.streams {
        let name = checker.text(&stream.name);
        check_unique_stream(name.as_ref(), &mut seen, checker);
        let mapping = check_mapping_ref(&stream.mapping, mapping_ids, checker);
        let incremental = stream.cursor_column.is_some();
        let query = checker.text(&stream.query).and_then(|query| {
            match crate::source::sql::check_query(&query.value, incremental) {
                Ok(()) => Some(query.value),
                Err(reason) => {
                    checker.error(query.span.start, reason);
                    None
                }
            }
        });
        if incremental && stream.initial.is_none() {
            checker.error(
                stream.name.span().start,
                "a stream with cursor_column needs `initial`, the cursor of its first run",
            );
        }
        let batch_size = match stream.batch_size {
            Some(0) => {
                checker.error(stream.name.span().start, "batch_size must be at least 1");
                None
            }
            Some(size) => Some(size),
            None => Some(DEFAULT_STREAM_BATCH),
        };
        streams.push((|| {
            Some(SqlStream {
                name: name?.value,
                mapping: mapping?,
                settings: crate::source::sql::SqlStreamSettings {
                    url: url.clone()?,
                    query: query?,
                    cursor_column: stream.cursor_column.clone(),
                    initial: stream.initial.clone(),
                    batch_size: batch_size?,
                },
            })
        })());
    }
    if checker.failed {
        return None;
    }
    Some(ConnectorConfig {
        id: connector.id.clone(),
        path: connector.path.clone(),
        system: system?,
        empty_values: empty_values?,
        transport: Transport::Sql(SqlConnector {
            streams: streams.into_iter().collect::<Option<Vec<_>>>()?,
        }),
    })
}

fn paging_of(spec: &PagingSpec) -> crate::source::http::Paging {
    use crate::source::http::Paging;
    match spec.clone() {
        PagingSpec::PageNumber {
            param,
            start,
            size_param,
            size,
        } => Paging::PageNumber {
            param,
            start: start.unwrap_or(1),
            size_param,
            size,
        },
        PagingSpec::OffsetLimit {
            offset_param,
            limit_param,
            limit,
        } => Paging::OffsetLimit {
            offset_param,
            limit_param,
            limit,
        },
        PagingSpec::Cursor { param, next } => Paging::Cursor { param, next },
        PagingSpec::NextLink { next } => Paging::NextLink { next },
        PagingSpec::LinkHeader => Paging::LinkHeader,
    }
}

/// Resolves the `${VAR}` references of an auth table; its values are secrets and never shown.
fn check_auth(
    auth: &Spanned<AuthSpec>,
    checker: &mut Checker,
) -> Option<crate::source::http::Auth> {
    use crate::source::http::{ApiKeyLocation, Auth};
    let at = auth.span().start;
    let plain = |raw: &str, checker: &mut Checker| checker.resolve(raw, at).map(|(v, _)| v);
    // Passwords, tokens, keys and client secrets are masked in everything printed from now
    // on, whatever their variable is called.
    let secret = |raw: &str, checker: &mut Checker| {
        let value = checker.resolve(raw, at).map(|(v, _)| v)?;
        crate::redact::register_secret(&value);
        Some(value)
    };
    match auth.get_ref() {
        AuthSpec::Basic { username, password } => Some(Auth::Basic {
            username: plain(username, checker)?,
            password: secret(password, checker)?,
        }),
        AuthSpec::Bearer { token } => Some(Auth::Bearer {
            token: secret(token, checker)?,
        }),
        AuthSpec::ApiKey {
            name,
            value,
            location,
        } => {
            let location = match location.as_deref() {
                None | Some("header") => ApiKeyLocation::Header,
                Some("query") => ApiKeyLocation::Query,
                Some(other) => {
                    checker.error(
                        at,
                        format!("api_key `in` must be \"header\" or \"query\", got \"{other}\""),
                    );
                    return None;
                }
            };
            Some(Auth::ApiKey {
                name: name.clone(),
                value: secret(value, checker)?,
                location,
            })
        }
        AuthSpec::Oauth2 {
            token_url,
            client_id,
            client_secret,
            scope,
        } => Some(Auth::OAuth2ClientCredentials {
            token_url: plain(token_url, checker)?,
            client_id: plain(client_id, checker)?,
            client_secret: secret(client_secret, checker)?,
            scope: scope.clone(),
        }),
    }
}

/// A TOML body template as JSON, with `${VAR}` resolved in every string.
fn resolve_toml(value: &toml::Value, checker: &mut Checker) -> Option<serde_json::Value> {
    use serde_json::Value as Json;
    Some(match value {
        toml::Value::String(text) => {
            let at = checker.file.text.find(text.as_str()).unwrap_or(0);
            Json::String(checker.resolve(text, at)?.0)
        }
        toml::Value::Integer(n) => Json::from(*n),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        toml::Value::Boolean(b) => Json::Bool(*b),
        toml::Value::Datetime(d) => Json::String(d.to_string()),
        toml::Value::Array(items) => Json::Array(
            items
                .iter()
                .map(|item| resolve_toml(item, checker))
                .collect::<Option<Vec<_>>>()?,
        ),
        toml::Value::Table(table) => {
            let mut object = serde_json::Map::new();
            for (key, item) in table {
                object.insert(key.clone(), resolve_toml(item, checker)?);
            }
            Json::Object(object)
        }
    })
}

fn check_empty_values(
    values: Option<&[toml::Value]>,
    checker: &mut Checker,
) -> Option<Vec<serde_json::Value>> {
    let Some(values) = values else {
        return Some(vec![serde_json::Value::String(String::new())]);
    };
    let at = checker.file.key_offset("empty_values").unwrap_or(0);
    let mut converted = Vec::new();
    for value in values {
        match value {
            toml::Value::String(text) => converted.push(serde_json::Value::String(text.clone())),
            toml::Value::Boolean(flag) => converted.push(serde_json::Value::Bool(*flag)),
            other => {
                checker.error(
                    at,
                    format!(
                        "empty_values entries must be strings or booleans, found {} {other}",
                        other.type_str()
                    ),
                );
                return None;
            }
        }
    }
    Some(converted)
}

fn check_stream(
    spec: &FileStreamSpec,
    mapping_ids: &BTreeSet<String>,
    checker: &mut Checker,
) -> Option<FileStream> {
    let name = checker.text(&spec.name);
    let pattern = checker.text(&spec.pattern).and_then(|pattern| {
        match crate::source::file::check_pattern(&pattern.value) {
            Ok(()) => Some(pattern.value),
            Err(reason) => {
                checker.error(pattern.span.start, reason);
                None
            }
        }
    });
    let format = checker.text(&spec.format);
    let records = checker.optional_text(spec.records.as_ref());
    let format = format.and_then(|format| {
        if !FORMATS.contains(&format.value.as_str()) {
            checker.unknown("format", &format, &FORMATS);
            return None;
        }
        if format.value == "xml" && matches!(records, Some(None)) {
            checker.error(
                format.span.start,
                "format \"xml\" needs records: the slash path of the record elements, \
                 e.g. \"DEBMAS07/IDOC\"",
            );
            return None;
        }
        Some(format.value)
    });
    let mapping = check_mapping_ref(&spec.mapping, mapping_ids, checker);
    let delimiter = one_byte(spec.delimiter.as_ref(), b',', "delimiter", checker);
    let quote = one_byte(spec.quote.as_ref(), b'"', "quote", checker);
    let encoding = match checker.optional_text(spec.encoding.as_ref()) {
        Some(Some(encoding)) if ENCODINGS.contains(&encoding.value.as_str()) => {
            Some(encoding.value)
        }
        Some(Some(encoding)) => {
            checker.unknown("encoding", &encoding, &ENCODINGS);
            None
        }
        Some(None) => Some("utf-8".to_string()),
        None => None,
    };
    let batch_size = match spec.batch_size {
        Some(0) => {
            checker.error(
                spec.name.span().start,
                "batch_size of this stream must be at least 1",
            );
            None
        }
        Some(size) => Some(size),
        None => Some(DEFAULT_STREAM_BATCH),
    };
    Some(FileStream {
        name: name?.value,
        pattern: pattern?,
        format: format?,
        records: records?.map(|text| text.value),
        mapping: mapping?,
        delimiter: delimiter?,
        quote: quote?,
        encoding: encoding?,
        batch_size: batch_size?,
    })
}

fn one_byte(
    value: Option<&Spanned<String>>,
    default: u8,
    what: &str,
    checker: &mut Checker,
) -> Option<u8> {
    let Some(text) = checker.optional_text(value)? else {
        return Some(default);
    };
    match text.value.as_bytes() {
        [byte] if byte.is_ascii() => Some(*byte),
        _ => {
            checker.error(
                text.span.start,
                format!(
                    "{what} must be exactly one ASCII character, got {}",
                    text.shown()
                ),
            );
            None
        }
    }
}

/// A stream's glob must stay inside its connector's directory: relative, no `..`, valid
/// glob syntax.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_stay_inside_their_directory() {
        use crate::source::file::check_pattern;
        assert_eq!(check_pattern("DEBMAS*.xml"), Ok(()));
        assert_eq!(check_pattern("exports/**/*.csv"), Ok(()));
        assert_eq!(
            check_pattern("../secrets/*.csv"),
            Err(
                "file pattern \"../secrets/*.csv\" contains `..`; it must stay inside the \
                 connector directory"
                    .into()
            )
        );
        assert_eq!(
            check_pattern("/etc/*.conf"),
            Err(
                "file pattern \"/etc/*.conf\" is absolute; it must be relative to the connector \
                 directory"
                    .into()
            )
        );
        assert_eq!(
            check_pattern("C:stuff"),
            Err(
                "file pattern \"C:stuff\" is absolute; it must be relative to the connector \
                 directory"
                    .into()
            )
        );
        assert!(
            check_pattern("[a.csv")
                .unwrap_err()
                .starts_with("file pattern \"[a.csv\" is not a valid glob: ")
        );
        assert_eq!(check_pattern(""), Err("file pattern is empty".into()));
    }

    #[test]
    fn alternatives_read_naturally() {
        assert_eq!(alternatives(&["file"]), "\"file\"");
        assert_eq!(alternatives(&["file", "amqp"]), "\"file\" or \"amqp\"");
        assert_eq!(
            alternatives(&FORMATS),
            "one of \"csv\", \"json\", \"ndjson\", \"xml\""
        );
    }

    #[test]
    fn sync_entries_may_name_dotted_connectors() {
        let candidates: Vec<&str> = connector_candidates("sap.idoc.customers").collect();
        assert_eq!(candidates, ["sap.idoc.customers", "sap", "sap.idoc"]);
    }
}
