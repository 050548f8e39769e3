//! JSON and NDJSON files.
//!
//! [`NdjsonRecords`] streams one JSON value per line: blank lines are skipped, a malformed
//! line is a [`RawItem::Broken`] naming its line, and the next lines continue. Lines longer
//! than [`MAX_NDJSON_LINE`] are broken items too, so one runaway line cannot exhaust memory.
//!
//! [`json_records`] parses a whole document (at most [`MAX_JSON_DOCUMENT`] bytes; larger files
//! are one broken item pointing to NDJSON) and yields the elements of the array at a dotted
//! records path (`d.results`), or of the document itself. A document that does not parse is one
//! broken item with serde_json's line and column: nothing after a syntax error can be trusted.
//! JSON records carry no line number, since the parsed tree no longer knows it.

use std::io::{self, BufRead, Read};

use serde_json::Value;

use super::file::{TrackingReader, capped_raw};
use super::{BrokenRecord, Origin, RawItem, RawRecord};

/// Documents above this size are refused rather than parsed into memory.
pub const MAX_JSON_DOCUMENT: u64 = 256 * 1024 * 1024;
/// Longest NDJSON line accepted.
pub const MAX_NDJSON_LINE: usize = 16 * 1024 * 1024;

/// serde_json's message without the ` at line L column C` it appends, so callers can place
/// the position themselves.
fn message(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    text.strip_suffix(&suffix).unwrap_or(&text).to_string()
}

fn broken(location: &str, line: Option<u64>, index: u64, raw: String, reason: String) -> RawItem {
    RawItem::Broken(BrokenRecord {
        origin: Origin {
            location: location.to_string(),
            line,
            index,
        },
        raw,
        reason,
    })
}

pub(crate) struct NdjsonRecords<R> {
    input: R,
    location: String,
    line: u64,
    index: u64,
    buffer: Vec<u8>,
    done: bool,
}

impl<R: BufRead> NdjsonRecords<R> {
    pub(crate) fn new(input: R, location: &str) -> NdjsonRecords<R> {
        NdjsonRecords {
            input,
            location: location.to_string(),
            line: 0,
            index: 0,
            buffer: Vec::new(),
            done: false,
        }
    }

    /// Discards the rest of an over-long line, in buffer-sized steps.
    fn skip_line(&mut self) -> io::Result<()> {
        loop {
            let available = self.input.fill_buf()?;
            if available.is_empty() {
                return Ok(());
            }
            if let Some(end) = available.iter().position(|&b| b == b'\n') {
                self.input.consume(end + 1);
                return Ok(());
            }
            let n = available.len();
            self.input.consume(n);
        }
    }

    fn next_item(&mut self) -> io::Result<Option<RawItem>> {
        loop {
            self.buffer.clear();
            let limit = MAX_NDJSON_LINE as u64 + 1;
            let read = (&mut self.input)
                .take(limit)
                .read_until(b'\n', &mut self.buffer)?;
            if read == 0 {
                return Ok(None);
            }
            self.line += 1;
            let index = self.index;
            if self.buffer.len() > MAX_NDJSON_LINE && self.buffer.last() != Some(&b'\n') {
                self.skip_line()?;
                self.index += 1;
                return Ok(Some(broken(
                    &self.location,
                    Some(self.line),
                    index,
                    capped_raw(&self.buffer),
                    format!("line {}: longer than {} bytes", self.line, MAX_NDJSON_LINE),
                )));
            }
            if self.buffer.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.index += 1;
            return Ok(Some(match serde_json::from_slice::<Value>(&self.buffer) {
                Ok(value) => RawItem::Record(RawRecord {
                    value,
                    origin: Origin {
                        location: self.location.clone(),
                        line: Some(self.line),
                        index,
                    },
                }),
                Err(error) => broken(
                    &self.location,
                    Some(self.line),
                    index,
                    capped_raw(self.buffer.trim_ascii_end()),
                    format!(
                        "line {} column {}: {}",
                        self.line,
                        error.column(),
                        message(&error)
                    ),
                ),
            }));
        }
    }
}

impl<R: BufRead> Iterator for NdjsonRecords<R> {
    type Item = io::Result<RawItem>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.next_item().transpose();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}

/// The records of a whole JSON document; see the module documentation.
pub(crate) fn json_records<R: BufRead + Send + 'static>(
    input: R,
    records: Option<&str>,
    location: &str,
) -> impl Iterator<Item = io::Result<RawItem>> + Send + 'static {
    let items = match read_document(input, records, location, MAX_JSON_DOCUMENT) {
        Ok(items) => items.into_iter().map(Ok).collect::<Vec<_>>(),
        Err(error) => vec![Err(error)],
    };
    items.into_iter()
}

fn read_document<R: BufRead>(
    input: R,
    records: Option<&str>,
    location: &str,
    limit: u64,
) -> io::Result<Vec<RawItem>> {
    let mut tracked = TrackingReader::new(input);
    let mut limited = (&mut tracked).take(limit + 1);
    let parsed = serde_json::from_reader::<_, Value>(&mut limited);
    let exhausted = limited.limit() == 0;
    let document = match parsed {
        Ok(document) => document,
        Err(_) if exhausted => {
            return Ok(vec![broken(
                location,
                None,
                0,
                capped_raw(tracked.captured()),
                format!(
                    "the document is larger than {limit} bytes, the limit for JSON files; \
                     export it as NDJSON instead"
                ),
            )]);
        }
        Err(error) if error.is_io() => return Err(io::Error::other(error.to_string())),
        Err(error) => {
            return Ok(vec![broken(
                location,
                Some(error.line() as u64),
                0,
                capped_raw(tracked.captured()),
                format!(
                    "line {} column {}: {}; no record of this document is read",
                    error.line(),
                    error.column(),
                    message(&error)
                ),
            )]);
        }
    };
    let selected = match records {
        None => document,
        Some(path) => match select(document, path) {
            Ok(value) => value,
            Err(reason) => return Ok(vec![broken(location, None, 0, String::new(), reason)]),
        },
    };
    let record = |index: usize, value: Value| {
        RawItem::Record(RawRecord {
            value,
            origin: Origin {
                location: location.to_string(),
                line: None,
                index: index as u64,
            },
        })
    };
    Ok(match selected {
        Value::Array(elements) => elements
            .into_iter()
            .enumerate()
            .map(|(index, value)| record(index, value))
            .collect(),
        object @ Value::Object(_) => vec![record(0, object)],
        other => vec![broken(
            location,
            None,
            0,
            capped_raw(other.to_string().as_bytes()),
            format!(
                "{} holds {}, not an array or object of records",
                records.map_or_else(
                    || "the document".to_string(),
                    |p| format!("records path {p:?}")
                ),
                kind(&other)
            ),
        )],
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The value at a dotted path of object keys.
fn select(document: Value, path: &str) -> Result<Value, String> {
    let mut current = document;
    let mut walked = String::new();
    for key in path.split('.') {
        let here = if walked.is_empty() {
            "the document".to_string()
        } else {
            format!("{walked:?}")
        };
        current = match current {
            Value::Object(mut object) => object
                .remove(key)
                .ok_or_else(|| format!("records path {path:?}: {here} has no key {key:?}"))?,
            other => {
                return Err(format!(
                    "records path {path:?}: {here} is {}, not an object",
                    kind(&other)
                ));
            }
        };
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(key);
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::test_items::{broken as broken_item, record};

    fn ndjson(input: &[u8]) -> Vec<RawItem> {
        NdjsonRecords::new(input, "in.ndjson")
            .collect::<io::Result<Vec<_>>>()
            .unwrap()
    }

    fn json(input: &'static [u8], records: Option<&str>) -> Vec<RawItem> {
        json_records(input, records, "in.json")
            .collect::<io::Result<Vec<_>>>()
            .unwrap()
    }

    #[test]
    fn ndjson_skips_blank_lines_and_quarantines_a_bad_line() {
        let items = ndjson(b"{\"id\":1}\n\n  \n{\"id\": 2,,}\n{\"id\":3}\r\n");
        assert_eq!(items.len(), 3);
        assert_eq!(record(&items[0]).value, serde_json::json!({"id": 1}));
        assert_eq!(record(&items[0]).origin.line, Some(1));
        let bad = broken_item(&items[1]);
        assert_eq!(bad.reason, "line 4 column 10: key must be a string");
        assert_eq!(bad.raw, "{\"id\": 2,,}");
        assert_eq!(bad.origin.line, Some(4));
        assert_eq!(bad.origin.index, 1);
        assert_eq!(record(&items[2]).value, serde_json::json!({"id": 3}));
        assert_eq!(record(&items[2]).origin.line, Some(5));
        assert_eq!(record(&items[2]).origin.index, 2);
    }

    #[test]
    fn ndjson_last_line_without_newline_is_read() {
        let items = ndjson(b"{\"a\":\"x\"}\n{\"a\":\"y\"}");
        assert_eq!(record(&items[1]).value, serde_json::json!({"a": "y"}));
    }

    #[test]
    fn json_records_at_a_dotted_path() {
        let input = br#"{"d": {"results": [{"BusinessPartner": "1000042"}, {"BusinessPartner": "1000043"}], "__next": "x"}}"#;
        let items = json(input, Some("d.results"));
        assert_eq!(items.len(), 2);
        assert_eq!(
            record(&items[1]).value,
            serde_json::json!({"BusinessPartner": "1000043"})
        );
        assert_eq!(record(&items[1]).origin.index, 1);
        assert_eq!(record(&items[1]).origin.line, None);
    }

    #[test]
    fn json_top_level_array_and_single_object() {
        let items = json(b"[{\"id\": 1}, {\"id\": 2}, {\"id\": 3}]", None);
        assert_eq!(items.len(), 3);
        assert_eq!(record(&items[2]).value, serde_json::json!({"id": 3}));
        let items = json(b"{\"id\": 7}", None);
        assert_eq!(items.len(), 1);
        assert_eq!(record(&items[0]).value, serde_json::json!({"id": 7}));
    }

    #[test]
    fn json_syntax_error_is_one_broken_item_with_position() {
        let items = json(b"[\n{\"id\": 1},\n{\"id\" 2}\n]", None);
        assert_eq!(items.len(), 1);
        let bad = broken_item(&items[0]);
        assert_eq!(
            bad.reason,
            "line 3 column 7: expected `:`; no record of this document is read"
        );
        assert_eq!(bad.origin.line, Some(3));
        assert!(bad.raw.starts_with("[\n{\"id\": 1},"), "{}", bad.raw);
    }

    #[test]
    fn json_over_the_size_limit_is_one_broken_item() {
        let input = br#"[{"id": 1}, {"id": 2}, {"id": 3}]"#;
        let items = read_document(&input[..], None, "in.json", 10).unwrap();
        assert_eq!(items.len(), 1);
        let bad = broken_item(&items[0]);
        assert_eq!(
            bad.reason,
            "the document is larger than 10 bytes, the limit for JSON files; export it as NDJSON instead"
        );
        assert_eq!(bad.raw, "[{\"id\": 1},");
        assert_eq!(
            read_document(&input[..], None, "in.json", 33)
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn json_missing_records_path_is_reported() {
        let items = json(br#"{"d": {"result": []}}"#, Some("d.results"));
        assert_eq!(
            broken_item(&items[0]).reason,
            "records path \"d.results\": \"d\" has no key \"results\""
        );
        let items = json(br#"{"value": 3}"#, Some("value"));
        assert_eq!(
            broken_item(&items[0]).reason,
            "records path \"value\" holds a number, not an array or object of records"
        );
        let items = json(br#"{"d": "x"}"#, Some("d.results"));
        assert_eq!(
            broken_item(&items[0]).reason,
            "records path \"d.results\": \"d\" is a string, not an object"
        );
    }
}
