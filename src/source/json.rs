//! JSON and NDJSON files.
//!
//! [`NdjsonRecords`] streams one JSON value per line: blank lines are skipped, a malformed
//! line is a [`RawItem::Broken`] naming its line, and the next lines continue. Lines longer
//! than [`MAX_NDJSON_LINE`] are broken items too, so one runaway line cannot exhaust memory.
//!
//! [`json_records`] streams the records of one JSON document. A parser thread walks the
//! document with serde's [`Visitor`]s: it descends a dotted records path (`d.results`) through
//! object keys, skipping every other value without keeping it, and at the target array builds
//! one element at a time as a [`Value`], handed over through a bounded channel of
//! [`CHANNEL_CAPACITY`] items. Memory is therefore bounded by the channel capacity times the
//! record size, never by the document, and dropping the iterator stops the thread at its next
//! send. The target is the document itself when there is no records path: an array yields its
//! elements in order, an object is one record, anything else is one broken item, as is a
//! records path that does not exist (reported once the document has been read, since a key may
//! come last). When a path key occurs twice in one object, the first occurrence is the one read.
//!
//! Invariants: a syntax error lets the records completed before it flow and then ends the
//! document with one broken item carrying serde_json's line and column (JSON cannot
//! resynchronise, so nothing after it is trusted); a record longer than [`MAX_JSON_RECORD`]
//! bytes is refused while it is being read and ends the document the same way. JSON records
//! carry no line number; broken ones carry the line where the trouble is.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io::{self, BufRead, Read};
use std::rc::Rc;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::{self, JoinHandle};

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::file::{TrackingReader, capped_raw};
use super::{BrokenRecord, Origin, RawItem, RawRecord};

/// Longest NDJSON line accepted.
pub const MAX_NDJSON_LINE: usize = 16 * 1024 * 1024;
/// Longest single record of a JSON document, counted from the end of the previous one.
pub const MAX_JSON_RECORD: u64 = 16 * 1024 * 1024;
/// Records parsed ahead of the consumer; the parser thread waits when this many are unread.
pub const CHANNEL_CAPACITY: usize = 256;

/// serde_json's message without the ` at line L column C` it appends, so callers can place
/// the position themselves.
fn message(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    let text = text.strip_suffix(&suffix).unwrap_or(&text);
    match text {
        // serde_json's wording for bytes that are not UTF-8, which operators would not
        // recognise as an encoding problem.
        "invalid unicode code point" => {
            "bytes that are not valid UTF-8 (invalid unicode code point); \
             is the file encoded as Windows-1252?"
                .to_string()
        }
        "recursion limit exceeded" => {
            "values nest deeper than 128 levels (recursion limit exceeded)".to_string()
        }
        other => other.to_string(),
    }
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

/// The records of one JSON document, streamed; see the module documentation.
pub(crate) fn json_records<R: BufRead + Send + 'static>(
    input: R,
    records: Option<&str>,
    location: &str,
) -> impl Iterator<Item = io::Result<RawItem>> + Send + 'static {
    JsonRecords::spawn(input, records, location, MAX_JSON_RECORD)
}

/// What the parser thread hands over: a record or broken item, or the I/O failure that ended it.
type Delivery = io::Result<RawItem>;

/// The consuming end of one document's parser thread.
struct JsonRecords {
    receiver: Receiver<Delivery>,
    parser: Option<JoinHandle<()>>,
    /// The thread could not be started; reported by the first `next`.
    failed: Option<io::Error>,
}

impl JsonRecords {
    fn spawn<R: BufRead + Send + 'static>(
        input: R,
        records: Option<&str>,
        location: &str,
        limit: u64,
    ) -> JsonRecords {
        let (sender, receiver) = mpsc::sync_channel(CHANNEL_CAPACITY);
        let records = records.map(str::to_string);
        let location = location.to_string();
        let spawned = thread::Builder::new()
            .name("json-records".to_string())
            .spawn(move || parse_document(input, records.as_deref(), &location, limit, &sender));
        match spawned {
            Ok(parser) => JsonRecords {
                receiver,
                parser: Some(parser),
                failed: None,
            },
            Err(error) => JsonRecords {
                receiver,
                parser: None,
                failed: Some(error),
            },
        }
    }
}

impl Iterator for JsonRecords {
    type Item = Delivery;

    fn next(&mut self) -> Option<Delivery> {
        if let Some(error) = self.failed.take() {
            return Some(Err(error));
        }
        match self.receiver.recv() {
            Ok(item) => Some(item),
            // The sender is gone, so the thread has finished or is unwinding: joining cannot
            // wait long, and tells a finished document from a parser that died half-way.
            Err(mpsc::RecvError) => match self.parser.take()?.join() {
                Ok(()) => None,
                Err(_) => Some(Err(io::Error::other(
                    "the JSON parser stopped unexpectedly; the rest of the document is not read",
                ))),
            },
        }
    }
}

/// What the parser thread shares between the reader serde_json pulls from and the visitors.
struct Shared {
    input: TrackingReader<Box<dyn BufRead>>,
    /// While a record is read, the most bytes it may take since the mark.
    limit: Option<u64>,
    exceeded: bool,
    /// The line of the mark, where the separator before the current record begins.
    mark_line: u64,
}

/// serde_json's view of the input: bytes from [`Shared::input`], refused past the record limit.
struct SharedReader(Rc<RefCell<Shared>>);

impl Read for SharedReader {
    fn read(&mut self, target: &mut [u8]) -> io::Result<usize> {
        // The visitors borrow the shared state only between calls into the deserializer and
        // never across one, so this borrow is the only one while serde_json reads.
        let mut shared = self.0.borrow_mut();
        if let Some(limit) = shared.limit
            && shared.input.since_mark() >= limit
        {
            shared.exceeded = true;
            return Err(io::Error::other(format!(
                "a JSON record is longer than {limit} bytes"
            )));
        }
        shared.input.read(target)
    }
}

/// The parser thread's state while it walks one document.
struct Context<'a> {
    shared: Rc<RefCell<Shared>>,
    sender: &'a SyncSender<Delivery>,
    location: &'a str,
    /// The records path as configured, for messages; empty when there is none.
    path: &'a str,
    keys: Vec<&'a str>,
    limit: u64,
    sent: Cell<u64>,
    /// The consumer dropped the iterator; the parse unwinds without reporting anything.
    stopped: Cell<bool>,
    /// A broken item about the document's shape, sent once the whole document proved valid.
    problem: Cell<Option<RawItem>>,
}

fn parse_document<R: BufRead + 'static>(
    input: R,
    records: Option<&str>,
    location: &str,
    limit: u64,
    sender: &SyncSender<Delivery>,
) {
    let shared = Rc::new(RefCell::new(Shared {
        input: TrackingReader::new(Box::new(input)),
        limit: None,
        exceeded: false,
        mark_line: 1,
    }));
    let context = Context {
        shared: Rc::clone(&shared),
        sender,
        location,
        path: records.unwrap_or_default(),
        keys: records
            .map(|path| path.split('.').collect())
            .unwrap_or_default(),
        limit,
        sent: Cell::new(0),
        stopped: Cell::new(false),
        problem: Cell::new(None),
    };
    let mut deserializer = serde_json::Deserializer::from_reader(SharedReader(shared));
    let outcome = Walk {
        context: &context,
        depth: 0,
    }
    .deserialize(&mut deserializer)
    .and_then(|()| deserializer.end());
    context.finish(outcome);
}

impl Context<'_> {
    /// Marks the start of a record and bounds the bytes it may take.
    fn start_record(&self) {
        let mut shared = self.shared.borrow_mut();
        shared.input.mark();
        shared.limit = Some(self.limit);
        shared.mark_line = shared.input.line();
    }

    fn end_records(&self) {
        self.shared.borrow_mut().limit = None;
    }

    fn send_record<E: de::Error>(&self, value: Value) -> Result<(), E> {
        let index = self.sent.get();
        self.sent.set(index + 1);
        let record = RawItem::Record(RawRecord {
            value,
            origin: Origin {
                location: self.location.to_string(),
                line: None,
                index,
            },
        });
        self.sender.send(Ok(record)).map_err(|_| {
            self.stopped.set(true);
            E::custom("the records are no longer wanted")
        })
    }

    /// A record found where the records are: an object is one, an array's elements are each
    /// one, anything else is a broken item.
    fn take_target<E: de::Error>(&self, value: Value) -> Result<(), E> {
        match value {
            object @ Value::Object(_) => self.send_record(object),
            Value::Array(elements) => elements
                .into_iter()
                .try_for_each(|element| self.send_record(element)),
            other => {
                let holder = if self.keys.is_empty() {
                    "the document".to_string()
                } else {
                    format!("records path {:?}", self.path)
                };
                self.report(
                    format!(
                        "{holder} holds {}, not an array or object of records",
                        kind(&other)
                    ),
                    capped_raw(other.to_string().as_bytes()),
                );
                Ok(())
            }
        }
    }

    fn report(&self, reason: String, raw: String) {
        let item = broken(self.location, None, self.sent.get(), raw, reason);
        self.problem.set(Some(item));
    }

    /// The line where the current record starts and its text so far, without the separator
    /// read before it.
    fn current_record(&self) -> (u64, String) {
        let shared = self.shared.borrow();
        let captured = shared.input.captured();
        let start = captured
            .iter()
            .position(|&b| !b.is_ascii_whitespace() && b != b',')
            .unwrap_or(captured.len());
        let newlines = captured[..start].iter().filter(|&&b| b == b'\n').count();
        (
            shared.mark_line + newlines as u64,
            capped_raw(&captured[start..]),
        )
    }

    fn finish(&self, outcome: Result<(), serde_json::Error>) {
        let last = match outcome {
            Ok(()) => match self.problem.take() {
                Some(problem) => Ok(problem),
                None => return,
            },
            Err(_) if self.stopped.get() => return,
            Err(_) if self.shared.borrow().exceeded => {
                let (line, raw) = self.current_record();
                Ok(broken(
                    self.location,
                    Some(line),
                    self.sent.get(),
                    raw,
                    format!(
                        "line {line}: a record longer than {} bytes, the limit for one JSON \
                         record; the rest of the document is not read",
                        self.limit
                    ),
                ))
            }
            Err(error) if error.is_io() => Err(io::Error::from(error)),
            Err(error) => {
                let (_, raw) = self.current_record();
                let consequence = if self.sent.get() == 0 {
                    "no record of this document is read"
                } else {
                    "the rest of the document is not read"
                };
                Ok(broken(
                    self.location,
                    Some(error.line() as u64),
                    self.sent.get(),
                    raw,
                    format!(
                        "line {} column {}: {}; {consequence}",
                        error.line(),
                        error.column(),
                        message(&error)
                    ),
                ))
            }
        };
        // A consumer that has gone away has nothing left to be told.
        let _ = self.sender.send(last);
    }
}

/// One level of the records path, `depth` keys down; at the end of the path, the target.
#[derive(Clone, Copy)]
struct Walk<'c, 'a> {
    context: &'c Context<'a>,
    depth: usize,
}

impl Walk<'_, '_> {
    /// The part of the path walked so far, for messages.
    fn here(&self) -> String {
        if self.depth == 0 {
            "the document".to_string()
        } else {
            format!("{:?}", self.context.keys[..self.depth].join("."))
        }
    }

    fn not_an_object(&self, kind: &str) {
        self.context.report(
            format!(
                "records path {:?}: {} is {kind}, not an object",
                self.context.path,
                self.here()
            ),
            String::new(),
        );
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        if self.depth < self.context.keys.len() {
            return deserializer.deserialize_any(self);
        }
        self.context.start_record();
        let outcome = deserializer.deserialize_any(Target(self.context));
        self.context.end_records();
        outcome
    }
}

impl<'de> Visitor<'de> for Walk<'_, '_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // `deserialize` only visits with this walker while keys remain.
        let wanted = self.context.keys[self.depth];
        let mut found = false;
        while let Some(key) = map.next_key::<String>()? {
            if !found && key == wanted {
                found = true;
                map.next_value_seed(Walk {
                    depth: self.depth + 1,
                    ..self
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        if !found {
            self.context.report(
                format!(
                    "records path {:?}: {} has no key {wanted:?}",
                    self.context.path,
                    self.here()
                ),
                String::new(),
            );
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.not_an_object("an array");
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.not_an_object("a boolean");
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.not_an_object("a number");
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.not_an_object("a number");
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.not_an_object("a number");
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.not_an_object("a string");
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.not_an_object("null");
        Ok(())
    }
}

/// The value at the end of the records path: an array is streamed one element at a time.
struct Target<'c, 'a>(&'c Context<'a>);

impl<'de> Visitor<'de> for Target<'_, '_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an array or object of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            self.0.start_record();
            match seq.next_element::<Value>()? {
                Some(value) => self.0.send_record(value)?,
                None => return Ok(()),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let value = Value::deserialize(MapAccessDeserializer::new(map))?;
        self.0.take_target(value)
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<(), E> {
        self.0.take_target(Value::Bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<(), E> {
        self.0.take_target(Value::from(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<(), E> {
        self.0.take_target(Value::from(value))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<(), E> {
        self.0.take_target(Value::from(value))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        self.0.take_target(Value::from(value))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.take_target(Value::Null)
    }
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

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

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
    fn json_syntax_error_before_any_record_is_one_broken_item_with_position() {
        let items = json(b"{\"d\":\n {\"results\" [{\"id\": 1}]}}", Some("d.results"));
        assert_eq!(items.len(), 1);
        let bad = broken_item(&items[0]);
        assert_eq!(
            bad.reason,
            "line 2 column 13: expected `:`; no record of this document is read"
        );
        assert_eq!(bad.origin.line, Some(2));
        assert_eq!(bad.origin.index, 0);
        assert_eq!(bad.raw, "{\"d\":\n {\"results\" [");
    }

    #[test]
    fn json_syntax_error_after_two_records_yields_them_then_one_broken_item() {
        let items = json(
            b"[\n{\"id\": 1},\n{\"id\": 2},\n{\"id\" 3},\n{\"id\": 4}\n]",
            None,
        );
        assert_eq!(items.len(), 3);
        assert_eq!(record(&items[0]).value, serde_json::json!({"id": 1}));
        assert_eq!(record(&items[1]).value, serde_json::json!({"id": 2}));
        let bad = broken_item(&items[2]);
        assert_eq!(
            bad.reason,
            "line 4 column 7: expected `:`; the rest of the document is not read"
        );
        assert_eq!(bad.origin.line, Some(4));
        assert_eq!(bad.origin.index, 2);
        assert_eq!(bad.raw, "{\"id\" 3");
    }

    #[test]
    fn json_syntax_error_after_the_records_still_ends_the_document() {
        let items = json(
            br#"{"d": {"results": [{"id": 1}]}, "x" 1}"#,
            Some("d.results"),
        );
        assert_eq!(items.len(), 2);
        assert_eq!(record(&items[0]).value, serde_json::json!({"id": 1}));
        assert_eq!(
            broken_item(&items[1]).reason,
            "line 1 column 37: expected `:`; the rest of the document is not read"
        );
    }

    #[test]
    fn json_record_over_the_size_limit_ends_the_document() {
        let input = b"[{\"id\": 1}, {\"id\": 2},\n {\"name\": \"far too long\"}, {\"id\": 4}]";
        let items = JsonRecords::spawn(&input[..], None, "in.json", 12)
            .collect::<io::Result<Vec<_>>>()
            .unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(record(&items[1]).value, serde_json::json!({"id": 2}));
        let bad = broken_item(&items[2]);
        assert_eq!(
            bad.reason,
            "line 2: a record longer than 12 bytes, the limit for one JSON record; \
             the rest of the document is not read"
        );
        assert_eq!(bad.origin.line, Some(2));
        assert_eq!(bad.origin.index, 2);
        assert_eq!(bad.raw, "{\"name\": ");
        let whole = JsonRecords::spawn(&input[..], None, "in.json", 30)
            .collect::<io::Result<Vec<_>>>()
            .unwrap();
        assert_eq!(whole.len(), 4);
        assert_eq!(record(&whole[3]).value, serde_json::json!({"id": 4}));
    }

    #[test]
    fn json_single_object_over_the_size_limit_is_one_broken_item() {
        let items = JsonRecords::spawn(&br#"{"name": "far too long"}"#[..], None, "in.json", 8)
            .collect::<io::Result<Vec<_>>>()
            .unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(
            broken_item(&items[0]).reason,
            "line 1: a record longer than 8 bytes, the limit for one JSON record; \
             the rest of the document is not read"
        );
        assert_eq!(broken_item(&items[0]).raw, "{\"name\":");
    }

    #[test]
    fn json_skips_other_keys_at_every_level_of_the_path() {
        let input = br#"{"meta": {"results": [{"id": 0}]}, "d": {"__next": [1, {"results": 2}], "results": [{"id": 1}], "results": [{"id": 9}]}, "z": null}"#;
        let items = json(input, Some("d.results"));
        assert_eq!(items.len(), 1);
        assert_eq!(record(&items[0]).value, serde_json::json!({"id": 1}));
        let items = json(br#"{"d": {"results": {"id": 5}}}"#, Some("d.results"));
        assert_eq!(items.len(), 1);
        assert_eq!(record(&items[0]).value, serde_json::json!({"id": 5}));
    }

    #[test]
    fn json_io_error_follows_the_records_read_before_it() {
        let items = json_records(
            FailsAfter::new(many(1_000), 4096),
            Some("d.results"),
            "in.json",
        )
        .collect::<Vec<_>>();
        let (last, records) = items.split_last().unwrap();
        assert!(records.len() > 10, "{}", records.len());
        assert!(records.len() < 1_000, "{}", records.len());
        assert_eq!(record(records[5].as_ref().unwrap()).origin.index, 5);
        let error = last.as_ref().unwrap_err();
        assert_eq!(error.to_string(), "the disk went away");
    }

    /// A document of `count` records under `d.results`.
    fn many(count: usize) -> Vec<u8> {
        let mut document = b"{\"d\": {\"results\": [".to_vec();
        for id in 0..count {
            if id > 0 {
                document.push(b',');
            }
            document.extend_from_slice(
                format!("{{\"id\":{id},\"name\":\"customer {id}\"}}").as_bytes(),
            );
        }
        document.extend_from_slice(b"]}}");
        document
    }

    /// Serves `left` bytes of a document, then fails as a vanished disk would.
    struct FailsAfter {
        inner: Cursor<Vec<u8>>,
        left: usize,
    }

    impl FailsAfter {
        fn new(document: Vec<u8>, left: usize) -> FailsAfter {
            FailsAfter {
                inner: Cursor::new(document),
                left,
            }
        }
    }

    impl Read for FailsAfter {
        fn read(&mut self, target: &mut [u8]) -> io::Result<usize> {
            let available = self.fill_buf()?;
            let n = available.len().min(target.len());
            target[..n].copy_from_slice(&available[..n]);
            self.consume(n);
            Ok(n)
        }
    }

    impl BufRead for FailsAfter {
        fn fill_buf(&mut self) -> io::Result<&[u8]> {
            if self.left == 0 {
                return Err(io::Error::other("the disk went away"));
            }
            let left = self.left;
            let available = self.inner.fill_buf()?;
            Ok(&available[..available.len().min(left)])
        }

        fn consume(&mut self, amount: usize) {
            self.left -= amount;
            self.inner.consume(amount);
        }
    }

    #[test]
    fn json_large_document_streams_every_record() {
        let count = 200_000;
        let mut items = json_records(Cursor::new(many(count)), Some("d.results"), "in.json");
        let mut seen = 0;
        for item in &mut items {
            let item = item.unwrap();
            assert_eq!(record(&item).origin.index, seen);
            seen += 1;
        }
        assert_eq!(seen, count as u64);
        assert!(items.next().is_none());
    }

    #[test]
    fn json_first_record_arrives_before_the_document_ends() {
        // The input fails after 64 KiB of a document ten times that size: a parser that read
        // the whole document before yielding would produce nothing but the error.
        let document = many(50_000);
        assert!(document.len() > 640 * 1024, "{}", document.len());
        let mut items = json_records(
            FailsAfter::new(document, 64 * 1024),
            Some("d.results"),
            "in.json",
        );
        let first = items.next().unwrap().unwrap();
        assert_eq!(
            record(&first).value,
            serde_json::json!({"id": 0, "name": "customer 0"})
        );
    }

    /// Serves a document and records when it is dropped, which happens when the parser thread
    /// that owns it ends.
    struct Watched {
        inner: Cursor<Vec<u8>>,
        dropped: Arc<AtomicBool>,
    }

    impl Read for Watched {
        fn read(&mut self, target: &mut [u8]) -> io::Result<usize> {
            self.inner.read(target)
        }
    }

    impl BufRead for Watched {
        fn fill_buf(&mut self) -> io::Result<&[u8]> {
            self.inner.fill_buf()
        }

        fn consume(&mut self, amount: usize) {
            self.inner.consume(amount);
        }
    }

    impl Drop for Watched {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn json_dropping_the_iterator_ends_the_parser_thread() {
        let dropped = Arc::new(AtomicBool::new(false));
        let input = Watched {
            inner: Cursor::new(many(10_000)),
            dropped: Arc::clone(&dropped),
        };
        let mut items = json_records(input, Some("d.results"), "in.json");
        assert_eq!(record(&items.next().unwrap().unwrap()).origin.index, 0);
        drop(items);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dropped.load(Ordering::SeqCst) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        assert!(
            dropped.load(Ordering::SeqCst),
            "the parser thread is still running"
        );
        let again = json_records(Cursor::new(many(300)), Some("d.results"), "in.json");
        assert_eq!(again.count(), 300);
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
