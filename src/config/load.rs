//! File I/O of a load: the config file, the connector and mapping directories, and
//! error-tolerant parsing.
//!
//! [`load`] is the public entry; [`load_with`] takes the environment and the mapping compiler
//! as parameters so tests control both. [`parse_all`] deserializes one file and keeps going
//! after the first serde error (by blanking the offending line and parsing again), so one run
//! reports several mistakes per file. Everything read is handed to `validate`, which does no
//! I/O of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Spanned;

use super::diagnostic::{Diagnostic, Diagnostics, SourceFile, file_level, suggestion};
use super::env::{Env, expand};
use super::spec::{ConfigSpec, FileConnectorSpec, HttpConnectorSpec, SqlConnectorSpec};
use super::validate::{ConnectorFile, ConnectorSpec, Loaded, validate};
use super::{Config, Transport};
use crate::mapper::{Mapping, SpecError};

/// Compiles one mapping file: `(id, text)`.
pub(crate) type Compile<'a> = &'a dyn Fn(&str, &str) -> Result<Mapping, Vec<SpecError>>;

/// How many times one file is re-parsed after blanking an offending line.
const MAX_PASSES: usize = 20;

/// Loads and validates a deployment: the config file at `config_path`, every connector and
/// every mapping file. `${VAR}` references resolve from the process environment,
/// `${file:/path}` ones from secret files.
pub fn load(config_path: &Path) -> Result<Config, Diagnostics> {
    load_with(config_path, &super::env::lookup, &Mapping::parse)
}

/// [`load`] with the environment and the mapping compiler given.
pub(crate) fn load_with(
    config_path: &Path,
    env: Env<'_>,
    compile: Compile<'_>,
) -> Result<Config, Diagnostics> {
    let shown = Shown::from_current_dir();
    let text = std::fs::read_to_string(config_path).map_err(|error| {
        Diagnostics(vec![file_level(
            config_path,
            format!("cannot read config file: {error}"),
        )])
    })?;
    let file = SourceFile::new(config_path.to_path_buf(), text);
    let mut diagnostics = Vec::new();
    let spec = parse_all::<ConfigSpec>(&file, &mut diagnostics);
    let dirs = locate_dirs(&file, config_path, env, &shown, &mut diagnostics);

    let mut mapping_ids = BTreeSet::new();
    let mut mappings = BTreeMap::new();
    let mut connectors = Vec::new();
    let mut broken_connectors = BTreeSet::new();
    if let Some(dirs) = &dirs {
        for (id, path) in toml_files(&dirs.mappings, "mappings", &shown, &mut diagnostics) {
            let Some(file) = read_source(&path, &shown, &mut diagnostics) else {
                continue;
            };
            mapping_ids.insert(id.clone());
            match compile(&id, &file.text) {
                Ok(mapping) => {
                    mappings.insert(id, Arc::new(mapping));
                }
                Err(errors) => diagnostics.extend(
                    errors
                        .into_iter()
                        .map(|error| file.at_span(error.span, error.message)),
                ),
            }
        }
        for (id, path) in toml_files(&dirs.connectors, "connectors", &shown, &mut diagnostics) {
            let parsed = read_source(&path, &shown, &mut diagnostics)
                .and_then(|file| parse_connector(file, &mut diagnostics));
            match parsed {
                Some((file, spec)) => connectors.push(ConnectorFile {
                    id,
                    path,
                    file,
                    spec,
                }),
                None => {
                    broken_connectors.insert(id);
                }
            }
        }
    }

    let id = config_path
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    let loaded = Loaded {
        id,
        config_path: config_path.to_path_buf(),
        file,
        spec,
        root: dirs.map(|dirs| dirs.root),
        connectors,
        broken_connectors,
        mapping_ids,
        mappings,
    };
    let config = validate(loaded, env, &mut diagnostics);
    match config {
        Some(config) if diagnostics.is_empty() => Ok(config),
        _ => Err(Diagnostics::sorted(diagnostics)),
    }
}

/// Renders absolute paths relative to the current directory when they lie under it, so
/// diagnostics read `connectors/sap.toml:3:1`.
struct Shown {
    cwd: Option<PathBuf>,
}

impl Shown {
    fn from_current_dir() -> Shown {
        let cwd = std::env::current_dir()
            .ok()
            .and_then(|cwd| cwd.canonicalize().ok());
        Shown { cwd }
    }

    fn path(&self, path: &Path) -> PathBuf {
        self.cwd
            .as_deref()
            .and_then(|cwd| path.strip_prefix(cwd).ok())
            .map_or_else(|| path.to_path_buf(), Path::to_path_buf)
    }
}

/// The directories a config points at, resolved.
struct Dirs {
    root: PathBuf,
    connectors: PathBuf,
    mappings: PathBuf,
}

/// Just the directory settings of a config file, read leniently (no unknown-field check) so
/// the connector and mapping files are found even when the rest of the config is wrong.
#[derive(Deserialize)]
struct DirsProbe {
    root: Option<Spanned<String>>,
    connectors_dir: Option<Spanned<String>>,
    mappings_dir: Option<Spanned<String>>,
}

/// A directory setting: the value as written (resolved) and where it was written, if it was.
struct DirSetting {
    value: String,
    span: Option<Range<usize>>,
    from_env: bool,
}

fn locate_dirs(
    file: &SourceFile,
    config_path: &Path,
    env: Env<'_>,
    shown: &Shown,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Dirs> {
    // A syntax error is already reported by the full parse; without the directory settings
    // the other files cannot be found.
    let probe: DirsProbe = toml::from_str(&file.text).ok()?;
    let mut setting = |value: Option<Spanned<String>>, default: &str| {
        let Some(value) = value else {
            return Some(DirSetting {
                value: default.to_string(),
                span: None,
                from_env: false,
            });
        };
        let span = value.span();
        match expand(value.get_ref(), env, true) {
            Ok(expanded) => Some(DirSetting {
                value: expanded.value,
                span: Some(span),
                from_env: expanded.from_env,
            }),
            Err(errors) => {
                for error in errors {
                    diagnostics.push(file.at(span.start, error.to_string()));
                }
                None
            }
        }
    };
    let root = setting(probe.root, "..");
    let connectors = setting(probe.connectors_dir, "connectors");
    let mappings = setting(probe.mappings_dir, "mappings");
    let (root, connectors, mappings) = (root?, connectors?, mappings?);

    let config_dir = match config_path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let root_path = match config_dir.join(&root.value).canonicalize() {
        Ok(path) => path,
        Err(error) => {
            let what = if root.from_env {
                "the root directory given by the environment".to_string()
            } else {
                format!("root directory \"{}\"", root.value)
            };
            diagnostics.push(file.at_span(root.span, format!("cannot resolve {what}: {error}")));
            return None;
        }
    };
    let mut dir = |setting: DirSetting| -> PathBuf {
        let path = root_path.join(&setting.value);
        // A missing default directory is an empty one; one named explicitly must exist.
        if setting.span.is_some() && !path.is_dir() {
            let what = if setting.from_env {
                "the directory given by the environment".to_string()
            } else {
                format!("\"{}\"", shown.path(&path).display())
            };
            diagnostics.push(file.at_span(setting.span, format!("{what} is not a directory")));
        }
        path
    };
    Some(Dirs {
        connectors: dir(connectors),
        mappings: dir(mappings),
        root: root_path,
    })
}

/// The `*.toml` files of a directory as `(id, path)`, sorted by id; ids are file stems and
/// must be `[a-z0-9_.-]+`. A missing directory has no files.
fn toml_files(
    dir: &Path,
    what: &str,
    shown: &Shown,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<(String, PathBuf)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(error) => {
            diagnostics.push(file_level(
                &shown.path(dir),
                format!("cannot read {what} directory: {error}"),
            ));
            return Vec::new();
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = match entry {
            Ok(entry) => entry.path(),
            Err(error) => {
                diagnostics.push(file_level(
                    &shown.path(dir),
                    format!("cannot read {what} directory: {error}"),
                ));
                continue;
            }
        };
        if path.extension().is_none_or(|ext| ext != "toml") || path.is_dir() {
            continue;
        }
        let id = path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !is_valid_id(&id) {
            diagnostics.push(file_level(
                &shown.path(&path),
                format!(
                    "invalid file name: the id \"{id}\" may use only a-z, 0-9, `_`, `.` and `-`"
                ),
            ));
            continue;
        }
        files.push((id, path));
    }
    files.sort();
    files
}

fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

fn read_source(
    path: &Path,
    shown: &Shown,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<SourceFile> {
    let display = shown.path(path);
    match std::fs::read_to_string(path) {
        Ok(text) => Some(SourceFile::new(display, text)),
        Err(error) => {
            diagnostics.push(file_level(&display, format!("cannot read file: {error}")));
            None
        }
    }
}

/// Only the `kind` of a connector file, read first: it decides the schema of the rest.
#[derive(Deserialize)]
struct KindProbe {
    kind: Option<Spanned<String>>,
}

/// Parses a connector file into its kind's spec type; this `match` is where a connector
/// `kind` meets its [`Transport`].
fn parse_connector(
    file: SourceFile,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<(SourceFile, ConnectorSpec)> {
    let probe = match toml::from_str::<KindProbe>(&file.text) {
        Ok(probe) => probe,
        Err(_) => {
            // The full parse below would report the same error; run it for its diagnostics.
            parse_all::<FileConnectorSpec>(&file, diagnostics);
            return None;
        }
    };
    let Some(kind) = probe.kind else {
        diagnostics.push(file.whole(format!(
            "missing field `kind` (the connector's transport: {})",
            quoted_list(&Transport::KINDS)
        )));
        return None;
    };
    let spec = match kind.get_ref().as_str() {
        "file" => ConnectorSpec::File(parse_all::<FileConnectorSpec>(&file, diagnostics)?),
        "http" => ConnectorSpec::Http(Box::new(parse_all::<HttpConnectorSpec>(
            &file,
            diagnostics,
        )?)),
        "sql" => ConnectorSpec::Sql(parse_all::<SqlConnectorSpec>(&file, diagnostics)?),
        other => {
            let hint = match suggestion(other, Transport::KINDS) {
                hint if hint.is_empty() => {
                    format!("; supported kinds: {}", quoted_list(&Transport::KINDS))
                }
                hint => hint,
            };
            diagnostics.push(file.at(
                kind.span().start,
                format!("unknown connector kind \"{other}\"{hint}"),
            ));
            return None;
        }
    };
    Some((file, spec))
}

fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| format!("\"{name}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A line blanked to get past an error: where it started and the key it assigned.
struct Blanked {
    start: usize,
    key: String,
}

/// Deserializes a whole file, reporting as many errors as can be found: serde stops at the
/// first error, so after an error confined to one line that line is blanked (its bytes
/// replaced by spaces, offsets unchanged) and the text parsed again, up to [`MAX_PASSES`]
/// times. Returns the value when the file had no error, or when every error was an unknown
/// field: removing those changes no meaning, so later checks can still run on the rest.
pub(crate) fn parse_all<T: DeserializeOwned>(
    file: &SourceFile,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<T> {
    let mut text = file.text.clone();
    let mut blanked: Vec<Blanked> = Vec::new();
    let mut only_unknown_fields = true;
    for _ in 0..MAX_PASSES {
        let error = match toml::from_str::<T>(&text) {
            Ok(value) => return only_unknown_fields.then_some(value),
            Err(error) => error,
        };
        let message = error
            .message()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        let span = error.span();
        if let Some(field) = missing_field(&message)
            && caused_by_blanking(field, span.clone(), &blanked, &text)
        {
            break;
        }
        only_unknown_fields &= message.starts_with("unknown field");
        let message = with_field_suggestion(message);
        diagnostics.push(file.at_span(span.clone(), &message));
        let recoverable = [
            "unknown field",
            "invalid type",
            "invalid value",
            "invalid length",
            "unknown variant",
        ]
        .iter()
        .any(|prefix| message.starts_with(prefix));
        let Some(span) = span.filter(|_| recoverable) else {
            break;
        };
        match blank(&mut text, span) {
            Some(line) => blanked.push(line),
            None => break,
        }
    }
    None
}

/// The field of a `missing field `k`` message.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.strip_suffix('`')
}

/// Whether a missing field is one this parse blanked itself: a blanked line assigning it
/// that sits in the table the error is about (no table header between them).
fn caused_by_blanking(
    field: &str,
    span: Option<Range<usize>>,
    blanked: &[Blanked],
    text: &str,
) -> bool {
    let table = span.unwrap_or(0..0);
    blanked.iter().any(|line| {
        line.key == field
            && line.start >= table.start
            && text
                .get(table.end.min(line.start)..line.start)
                .is_some_and(|between| {
                    !between
                        .lines()
                        .skip(1)
                        .any(|l| l.trim_start().starts_with('['))
                })
    })
}

/// Blanks the line holding `span` (or, for a table header, the whole table up to the next
/// header, so its keys do not fall into the previous table). `None` when the span crosses
/// lines and cannot be blanked safely.
fn blank(text: &mut String, span: Range<usize>) -> Option<Blanked> {
    let start = text.get(..span.start)?.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[span.start..]
        .find('\n')
        .map_or(text.len(), |i| span.start + i);
    if span.end > line_end {
        return None;
    }
    let line = &text[start..line_end];
    let trimmed = line.trim_start();
    let (key, end) = if trimmed.starts_with('[') {
        let name = trimmed.trim_matches(|c| c == '[' || c == ']' || c == ' ');
        let next_header = text[line_end..]
            .match_indices('\n')
            .map(|(i, _)| line_end + i + 1)
            .find(|&i| text[i..].trim_start_matches([' ', '\t']).starts_with('['))
            .unwrap_or(text.len());
        (last_key_segment(name), next_header)
    } else {
        let name = line.split('=').next().unwrap_or_default();
        (last_key_segment(name), line_end)
    };
    // Every replaced byte becomes an ASCII space and newlines stay, so offsets and line
    // numbers of the rest of the text do not move and the text stays valid UTF-8.
    let blanked: String = text[start..end]
        .chars()
        .flat_map(|c| {
            let width = if c == '\n' { 0 } else { c.len_utf8() };
            std::iter::repeat_n(' ', width).chain((c == '\n').then_some('\n'))
        })
        .collect();
    text.replace_range(start..end, &blanked);
    Some(Blanked { start, key })
}

fn last_key_segment(key: &str) -> String {
    key.rsplit('.')
        .next()
        .unwrap_or_default()
        .trim()
        .trim_matches(['"', '\''])
        .to_string()
}

/// Adds `; did you mean `x`?` to an unknown-field (or -variant) message when one of the
/// expected names is close to the unknown one.
fn with_field_suggestion(message: String) -> String {
    if !(message.starts_with("unknown field") || message.starts_with("unknown variant")) {
        return message;
    }
    let mut quoted = message.split('`').skip(1).step_by(2);
    let Some(unknown) = quoted.next() else {
        return message;
    };
    let expected: Vec<&str> = quoted.collect();
    match super::diagnostic::did_you_mean(unknown, expected.iter().copied()) {
        Some(candidate) => format!("{message}; did you mean `{candidate}`?"),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: DeserializeOwned>(text: &str) -> (Option<T>, Vec<String>) {
        let file = SourceFile::new(PathBuf::from("c.toml"), text.to_string());
        let mut diagnostics = Vec::new();
        let value = parse_all::<T>(&file, &mut diagnostics);
        (value, diagnostics.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn three_mistakes_in_one_file_are_all_reported() {
        let text = "instance = \"x\"\n\
                    [store]\n\
                    ulr = \"sqlite://a.db\"\n\
                    url = \"sqlite://a.db\"\n\
                    [feed]\n\
                    sinc = \"file\"\n\
                    sink = \"file\"\n\
                    batch_size = \"many\"\n";
        let (value, messages) = parse::<ConfigSpec>(text);
        assert!(value.is_none());
        assert_eq!(
            messages,
            [
                "c.toml:3:1: unknown field `ulr`, expected one of `url`, `schema`, `pool_size`; did you \
                 mean `url`?",
                "c.toml:6:1: unknown field `sinc`, expected one of `sink`, `path`, `amqp`, \
                 `retry_budget`, `batch_size`; did you mean `sink`?",
                "c.toml:8:14: invalid type: string \"many\", expected usize",
            ]
        );
    }

    #[test]
    fn blanking_a_required_field_does_not_report_it_missing() {
        let text = "[store]\nurl = 5\n[feed]\nsink = \"file\"\n";
        let (_, messages) = parse::<ConfigSpec>(text);
        assert_eq!(
            messages,
            ["c.toml:2:7: invalid type: integer `5`, expected a string"]
        );
    }

    #[test]
    fn a_file_whose_only_mistakes_are_unknown_fields_still_yields_its_value() {
        let text = "[store]\nurl = \"sqlite://a.db\"\nnope = 1\n[feed]\nsink = \"file\"\n";
        let (value, messages) = parse::<ConfigSpec>(text);
        assert_eq!(
            messages,
            ["c.toml:3:1: unknown field `nope`, expected one of `url`, `schema`, `pool_size`"]
        );
        assert_eq!(value.unwrap().feed.sink.into_inner(), "file");

        let (value, _) = parse::<ConfigSpec>("[store]\nurl = 1\n[feed]\nsink = \"file\"\n");
        assert!(value.is_none());
    }

    #[test]
    fn a_genuinely_missing_field_is_still_reported() {
        let text = "[store]\nurl = \"sqlite://a.db\"\nnope = 1\n";
        let (_, messages) = parse::<ConfigSpec>(text);
        assert_eq!(
            messages,
            [
                "c.toml:3:1: unknown field `nope`, expected one of `url`, `schema`, `pool_size`",
                "c.toml:1:1: missing field `feed`",
            ]
        );
    }

    #[test]
    fn a_misspelt_table_header_blanks_its_whole_table() {
        let text = "[store]\nurl = \"sqlite://a.db\"\n[feeed]\nsink = \"file\"\n";
        let (_, messages) = parse::<ConfigSpec>(text);
        assert_eq!(
            messages,
            [
                "c.toml:3:2: unknown field `feeed`, expected one of `instance`, `root`, \
                 `connectors_dir`, `mappings_dir`, `store`, `feed`, `identity`, `profile`, \
                 `job`, `ops`; did you mean `feed`?",
                "c.toml:1:1: missing field `feed`",
            ]
        );
    }

    #[test]
    fn syntax_errors_stop_at_the_first() {
        let (_, messages) = parse::<ConfigSpec>("[store]\nurl = \"x\"\n[feed\nsinc = 1\n");
        assert_eq!(messages, ["c.toml:3:6: unclosed table, expected `]`"]);
    }

    #[test]
    fn blanking_keeps_offsets_and_multibyte_text_valid() {
        let mut text = String::from("a = 1\nnäme = 2\nb = 3\n");
        let line = blank(&mut text, 6..11).unwrap();
        assert_eq!(text, "a = 1\n         \nb = 3\n");
        assert_eq!((line.start, line.key.as_str()), (6, "näme"));
    }

    #[test]
    fn ids_are_lower_case_names_with_dots() {
        assert!(is_valid_id("sap_idoc.customer"));
        assert!(is_valid_id("demo-2"));
        assert!(!is_valid_id("SAP"));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id(""));
    }
}
