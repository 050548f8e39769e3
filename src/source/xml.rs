//! XML documents: [`XmlRecords`] streams the elements at a slash path (`DEBMAS07/IDOC`: the
//! `IDOC` children of the root `DEBMAS07`) as records, one element tree at a time, so memory is
//! bounded by the largest record, not the document. [`parse_xml_records`] is the entry point
//! for any byte stream (files here, SOAP bodies in HTTP sources).
//!
//! A record element becomes a JSON tree: attributes are `"@name"` keys, child elements are keys
//! by tag name (a single value, turned into an array when the tag repeats), a text-only element
//! is its trimmed text, and text next to attributes or children is `"#text"`. An empty element
//! is `""`. Tag names keep their namespace prefix as written (`ns0:Order`).
//!
//! Security invariants: entities are never expanded. A DTD is skipped unread; a reference to
//! any entity other than the five predefined ones and character references makes its record a
//! [`RawItem::Broken`], so neither external entities (`SYSTEM "file:///etc/passwd"`) nor
//! entity bombs can have any effect. Nesting beyond [`MAX_DEPTH`] and records above
//! [`MAX_RECORD_BYTES`] are broken records too.
//!
//! Error handling: a record that breaks a rule above is reported and reading resumes after it.
//! Malformed XML cannot be resynchronised, so it is reported once, naming its line, and the
//! rest of the document is not read; a document cut off mid-record yields the records
//! completed before the cut and one broken item for the partial record.
//!
//! The document's declared encoding is honoured (UTF-8, ISO-8859-1/Windows-1252 and the other
//! ASCII-compatible encodings of `encoding_rs`), decoded in chunks by [`DecodingReader`].

use std::io::{self, BufRead, Cursor, Read};
use std::sync::Arc;

use encoding_rs::Encoding;
use quick_xml::Reader;
use quick_xml::errors::{Error as XmlError, IllFormedError};
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};
use serde_json::{Map, Value};

use super::file::{DecodingReader, TrackingReader, capped_raw};
use super::{BrokenRecord, Origin, RawItem, RawRecord};

/// Deepest element nesting accepted, counted from the root.
pub const MAX_DEPTH: usize = 256;
/// Largest record accepted, in bytes of (decoded) XML text.
pub const MAX_RECORD_BYTES: u64 = 16 * 1024 * 1024;

/// How much of the document is read ahead to find the encoding in the XML declaration.
const DECLARATION_WINDOW: u64 = 1024;
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

type Input<R> = TrackingReader<DecodingReader<io::Chain<Cursor<Vec<u8>>, R>>>;

/// The records at `record_path` of the XML document read from `reader`; `location` names the
/// document in origins. A document without an encoding declaration is read as UTF-8.
pub fn parse_xml_records<R: BufRead>(
    reader: R,
    record_path: &str,
    location: &str,
) -> XmlRecords<R> {
    XmlRecords::with_default_encoding(reader, record_path, location, encoding_rs::UTF_8)
}

/// A streaming iterator over the records of one XML document. An `Err` item is an I/O error
/// of the underlying reader and ends the iteration; everything wrong with the document itself
/// is a [`RawItem::Broken`].
pub struct XmlRecords<R: BufRead> {
    reader: Reader<Input<R>>,
    /// A failure found before parsing started (unreadable or unsupported encoding).
    setup_failure: Option<io::Result<RawItem>>,
    path: Vec<String>,
    location: String,
    /// Open elements above the records.
    outer: Vec<String>,
    buf: Vec<u8>,
    index: u64,
    done: bool,
    /// [`MAX_RECORD_BYTES`]; a field so tests can exercise the limit with small documents.
    max_record_bytes: u64,
}

/// One open element of the record being built.
struct Frame {
    name: String,
    fields: Map<String, Value>,
    text: String,
}

impl Frame {
    fn open(start: &BytesStart<'_>) -> Result<Frame, String> {
        let name = start.name().0.to_string();
        let mut fields = Map::new();
        for attribute in start.attributes() {
            let attribute = attribute
                .map_err(|error| format!("element <{name}> has a malformed attribute: {error}"))?;
            let key = attribute.key.0;
            let value = attribute
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|error| match error {
                    XmlError::Escape(quick_xml::escape::EscapeError::UnrecognizedEntity(
                        _,
                        entity,
                    )) => not_expanded(&entity),
                    other => format!("attribute {key:?} of <{name}>: {other}"),
                })?;
            fields.insert(format!("@{key}"), Value::String(value.into_owned()));
        }
        Ok(Frame {
            name,
            fields,
            text: String::new(),
        })
    }

    fn into_value(mut self) -> Value {
        let text = self.text.trim();
        if self.fields.is_empty() {
            return Value::String(text.to_string());
        }
        if !text.is_empty() {
            self.fields
                .insert("#text".to_string(), Value::String(text.to_string()));
        }
        Value::Object(self.fields)
    }

    /// Adds a child element; the second child with a tag turns that key into an array.
    fn attach(&mut self, name: String, value: Value) {
        match self.fields.get_mut(&name) {
            None => {
                self.fields.insert(name, value);
            }
            // Element values are strings or objects, so an array here is one built by an
            // earlier repetition of the tag.
            Some(Value::Array(items)) => items.push(value),
            Some(first) => {
                let first = first.take();
                self.fields.insert(name, Value::Array(vec![first, value]));
            }
        }
    }
}

fn not_expanded(entity: &str) -> String {
    format!(
        "reference to entity &{entity}; is not expanded: only the predefined XML entities \
         and character references are allowed"
    )
}

/// The encoding named in the XML declaration at the start of `prefix`, if any.
fn declared_encoding(prefix: &[u8]) -> Result<Option<&'static Encoding>, String> {
    let text = prefix.strip_prefix(UTF8_BOM).unwrap_or(prefix);
    if !text.starts_with(b"<?xml") {
        return Ok(None);
    }
    let Some(end) = text.windows(2).position(|pair| pair == b"?>") else {
        return Ok(None);
    };
    let declaration = &text[..end];
    let Some(at) = declaration.windows(8).position(|w| w == b"encoding") else {
        return Ok(None);
    };
    let rest = declaration[at + 8..].trim_ascii_start();
    let Some(rest) = rest.strip_prefix(b"=").map(<[u8]>::trim_ascii_start) else {
        return Ok(None);
    };
    let Some((&quote, rest)) = rest.split_first() else {
        return Ok(None);
    };
    let Some(close) = rest.iter().position(|&b| b == quote) else {
        return Ok(None);
    };
    let label = String::from_utf8_lossy(&rest[..close]).into_owned();
    match Encoding::for_label(label.as_bytes()) {
        Some(encoding) if encoding.is_ascii_compatible() => Ok(Some(encoding)),
        _ => Err(format!(
            "the document declares encoding {label:?}, which is not supported \
             (UTF-8, ISO-8859-1 and windows-1252 are)"
        )),
    }
}

fn is_end_of_input(error: &XmlError) -> bool {
    // Every syntax error of quick-xml means the input ended inside some markup.
    matches!(
        error,
        XmlError::Syntax(_) | XmlError::IllFormed(IllFormedError::MissingEndTag(_))
    )
}

impl<R: BufRead> XmlRecords<R> {
    /// Like [`parse_xml_records`], reading a document without an encoding declaration in
    /// `default_encoding` instead of UTF-8.
    pub fn with_default_encoding(
        mut input: R,
        record_path: &str,
        location: &str,
        default_encoding: &'static Encoding,
    ) -> XmlRecords<R> {
        let mut prefix = Vec::new();
        let mut setup_failure = None;
        let mut encoding = default_encoding;
        match (&mut input)
            .take(DECLARATION_WINDOW)
            .read_to_end(&mut prefix)
        {
            Err(error) => setup_failure = Some(Err(error)),
            Ok(_) => match declared_encoding(&prefix) {
                Ok(Some(declared)) => encoding = declared,
                Ok(None) => {}
                Err(reason) => setup_failure = Some(Ok((reason, capped_raw(&prefix)))),
            },
        }
        let mut reader = Reader::from_reader(TrackingReader::new(DecodingReader::new(
            Cursor::new(prefix).chain(input),
            encoding,
        )));
        let config = reader.config_mut();
        config.check_end_names = true;
        config.expand_empty_elements = false;
        config.allow_dangling_amp = false;
        let mut records = XmlRecords {
            reader,
            setup_failure: None,
            path: record_path
                .trim_matches('/')
                .split('/')
                .filter(|part| !part.is_empty())
                .map(str::to_string)
                .collect(),
            location: location.to_string(),
            outer: Vec::new(),
            buf: Vec::new(),
            index: 0,
            done: false,
            max_record_bytes: MAX_RECORD_BYTES,
        };
        records.setup_failure = match setup_failure {
            None => None,
            Some(Err(error)) => Some(Err(error)),
            Some(Ok((reason, raw))) => Some(Ok(records.broken(Some(1), raw, reason))),
        };
        if records.path.is_empty() {
            let reason = "no records path: name the record elements, such as \"DEBMAS07/IDOC\"";
            records.setup_failure = Some(Ok(records.broken(None, String::new(), reason.into())));
        }
        records
    }

    fn origin(&self, line: Option<u64>) -> Origin {
        Origin {
            location: self.location.clone(),
            line,
            index: self.index,
        }
    }

    fn broken(&mut self, line: Option<u64>, raw: String, reason: String) -> RawItem {
        let item = RawItem::Broken(BrokenRecord {
            origin: self.origin(line),
            raw,
            reason,
        });
        self.index += 1;
        item
    }

    /// A broken item after which nothing more is read from the document.
    fn fatal(&mut self, line: Option<u64>, reason: String) -> RawItem {
        self.done = true;
        let raw = capped_raw(self.reader.get_ref().captured());
        self.broken(line, raw, reason)
    }

    fn read(&mut self) -> Result<Event<'static>, XmlError> {
        self.buf.clear();
        self.reader
            .read_event_into(&mut self.buf)
            .map(Event::into_owned)
    }

    /// Turns a parser error into the item that ends the document.
    fn failure(&mut self, error: XmlError, inside: Option<(&str, u64)>) -> io::Result<RawItem> {
        let line = self.reader.get_ref().line();
        match error {
            XmlError::Io(error) => Err(Arc::try_unwrap(error)
                .unwrap_or_else(|shared| io::Error::new(shared.kind(), shared.to_string()))),
            error if is_end_of_input(&error) => {
                let reason = match inside {
                    Some((record, start)) => {
                        format!("unexpected end of file inside <{record}> started at line {start}")
                    }
                    None => {
                        format!("unexpected end of file at line {line}: the document is incomplete")
                    }
                };
                Ok(self.fatal(inside.map(|(_, start)| start).or(Some(line)), reason))
            }
            error => {
                let reason = format!(
                    "line {line}: malformed XML: {error}; the rest of the file is not read \
                     because XML cannot be resynchronised after an error"
                );
                Ok(self.fatal(inside.map(|(_, start)| start).or(Some(line)), reason))
            }
        }
    }

    fn is_record(&self, name: &str) -> bool {
        let (last, parents) = match self.path.split_last() {
            Some(split) => split,
            None => return false,
        };
        last == name && self.outer == parents
    }

    fn next_item(&mut self) -> io::Result<Option<RawItem>> {
        loop {
            self.reader.get_mut().mark();
            let line = self.reader.get_ref().line();
            let event = match self.read() {
                Ok(event) => event,
                Err(error) => return self.failure(error, None).map(Some),
            };
            let (start, empty) = match event {
                Event::Start(start) => (start, false),
                Event::Empty(start) => (start, true),
                Event::End(_) => {
                    self.outer.pop();
                    continue;
                }
                Event::Eof => {
                    if let Some(open) = self.outer.last() {
                        let reason = format!(
                            "unexpected end of file inside <{open}>: the document is incomplete"
                        );
                        return Ok(Some(self.fatal(Some(line), reason)));
                    }
                    self.done = true;
                    return Ok(None);
                }
                // DTDs are skipped unread: nothing they declare is ever used.
                _ => continue,
            };
            let name = start.name().0.to_string();
            if self.outer.is_empty() && self.path.first() != Some(&name) {
                let reason = format!(
                    "the root element is <{name}>, but the records path {:?} starts at <{}>",
                    self.path.join("/"),
                    self.path.first().map_or("", String::as_str)
                );
                return Ok(Some(self.fatal(Some(line), reason)));
            }
            if self.is_record(&name) {
                return self.read_record(&start, empty, line).map(Some);
            }
            if !empty {
                if self.outer.len() >= MAX_DEPTH {
                    let reason = format!("elements nest deeper than {MAX_DEPTH} levels");
                    return Ok(Some(self.fatal(Some(line), reason)));
                }
                self.outer.push(name);
            }
        }
    }

    /// Reads one record element whose start tag (at `line`) was just consumed.
    fn read_record(
        &mut self,
        start: &BytesStart<'_>,
        empty: bool,
        line: u64,
    ) -> io::Result<RawItem> {
        let record_name = start.name().0.to_string();
        // Once a rule is broken the rest of the record is read only to find its end, so
        // reading can resume with the next record.
        let mut problem = None;
        let mut stack = Vec::new();
        match Frame::open(start) {
            Ok(frame) => stack.push(frame),
            Err(reason) => problem = Some(reason),
        }
        let mut depth = 1usize;
        if empty {
            depth = 0;
        }
        while depth > 0 {
            if problem.is_none() && self.reader.get_ref().since_mark() > self.max_record_bytes {
                problem = Some(format!(
                    "the record is larger than {} bytes",
                    self.max_record_bytes
                ));
            }
            let event = match self.read() {
                Ok(event) => event,
                Err(error) => return self.failure(error, Some((&record_name, line))),
            };
            match event {
                Event::Start(child) => {
                    depth += 1;
                    if problem.is_none() {
                        if self.outer.len() + depth > MAX_DEPTH {
                            problem = Some(format!("elements nest deeper than {MAX_DEPTH} levels"));
                        } else {
                            match Frame::open(&child) {
                                Ok(frame) => stack.push(frame),
                                Err(reason) => problem = Some(reason),
                            }
                        }
                    }
                }
                Event::Empty(child) => {
                    if problem.is_none() {
                        match (Frame::open(&child), stack.last_mut()) {
                            (Ok(frame), Some(parent)) => {
                                parent.attach(frame.name.clone(), frame.into_value());
                            }
                            (Ok(_), None) => {}
                            (Err(reason), _) => problem = Some(reason),
                        }
                    }
                }
                Event::End(_) => {
                    depth -= 1;
                    // The record's own frame stays on the stack to become the record.
                    if problem.is_none()
                        && depth > 0
                        && let Some(frame) = stack.pop()
                        && let Some(parent) = stack.last_mut()
                    {
                        parent.attach(frame.name.clone(), frame.into_value());
                    }
                }
                Event::Text(text) => {
                    if let (None, Some(frame)) = (&problem, stack.last_mut()) {
                        frame.text.push_str(&text.xml10_content());
                    }
                }
                Event::CData(data) => {
                    if let (None, Some(frame)) = (&problem, stack.last_mut()) {
                        frame.text.push_str(&data.xml10_content());
                    }
                }
                Event::GeneralRef(reference) => {
                    if problem.is_none() {
                        let resolved = match reference.resolve_char_ref() {
                            Ok(Some(ch)) => Ok(ch.to_string()),
                            Ok(None) => resolve_predefined_entity(&reference)
                                .map(str::to_string)
                                .ok_or_else(|| not_expanded(&reference)),
                            Err(error) => Err(format!("invalid character reference: {error}")),
                        };
                        match (resolved, stack.last_mut()) {
                            (Ok(text), Some(frame)) => frame.text.push_str(&text),
                            (Ok(_), None) => {}
                            (Err(reason), _) => problem = Some(reason),
                        }
                    }
                }
                Event::Eof => {
                    let reason = format!(
                        "unexpected end of file inside <{record_name}> started at line {line}"
                    );
                    return Ok(self.fatal(Some(line), reason));
                }
                Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
            }
        }
        let raw = capped_raw(self.reader.get_ref().captured());
        if let Some(reason) = problem {
            return Ok(self.broken(Some(line), raw, format!("<{record_name}>: {reason}")));
        }
        let value = stack.pop().map_or(Value::Null, Frame::into_value);
        let item = RawItem::Record(RawRecord {
            value,
            origin: self.origin(Some(line)),
        });
        self.index += 1;
        Ok(item)
    }
}

impl<R: BufRead> Iterator for XmlRecords<R> {
    type Item = io::Result<RawItem>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(failure) = self.setup_failure.take() {
            self.done = true;
            return Some(failure);
        }
        if self.done {
            return None;
        }
        match self.next_item() {
            Ok(item) => item.map(Ok),
            Err(error) => {
                self.done = true;
                Some(Err(error))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::test_items::{broken, record};
    use serde_json::json;

    fn parse(document: &[u8], path: &str) -> Vec<RawItem> {
        parse_xml_records(document, path, "in.xml")
            .collect::<io::Result<Vec<_>>>()
            .unwrap()
    }

    fn fixture() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/files/debmas07.xml"
        );
        std::fs::read(path).unwrap()
    }

    #[test]
    fn debmas07_idocs_become_trees_with_attributes_and_arrays() {
        let items = parse(&fixture(), "DEBMAS07/IDOC");
        assert_eq!(items.len(), 2);
        let first = record(&items[0]);
        assert_eq!(first.origin.line, Some(3));
        assert_eq!(first.origin.index, 0);
        let idoc = &first.value;
        assert_eq!(idoc["@BEGIN"], "1");
        assert_eq!(idoc["EDI_DC40"]["@SEGMENT"], "1");
        assert_eq!(idoc["EDI_DC40"]["DOCNUM"], "0000000000481516");
        assert_eq!(idoc["EDI_DC40"]["SNDPRT"], "");
        let kna1 = &idoc["E1KNA1M"];
        assert_eq!(kna1["KUNNR"], "0010034884");
        assert_eq!(kna1["NAME1"], "Müller & Söhne GmbH");
        assert_eq!(kna1["ORT01"], "München");
        assert_eq!(kna1["STCEG"], "");
        assert_eq!(
            kna1["E1KNVKM"],
            json!([
                {"@SEGMENT": "1", "MSGFN": "005", "PARNR": "0000004711", "NAMEV": "Anna", "NAME1": "Schmidt"},
                {"@SEGMENT": "1", "MSGFN": "005", "PARNR": "0000004712", "NAMEV": "Jörg", "NAME1": "Weber"}
            ])
        );
        assert_eq!(
            kna1["E1KNB1M"],
            json!({"@SEGMENT": "1", "MSGFN": "005", "BUKRS": "1010", "AKONT": "0012100000"})
        );
        let second = record(&items[1]);
        assert_eq!(second.origin.line, Some(44));
        assert_eq!(second.origin.index, 1);
        assert_eq!(second.value["E1KNA1M"]["NAME1"], "Tradingpartner AT <Wien>");
    }

    #[test]
    fn leading_slash_in_the_path_is_optional_and_a_root_record_works() {
        assert_eq!(parse(&fixture(), "/DEBMAS07/IDOC").len(), 2);
        let items = parse(b"<Order id=\"7\">text<Line/></Order>", "Order");
        assert_eq!(
            record(&items[0]).value,
            json!({"@id": "7", "Line": "", "#text": "text"})
        );
    }

    #[test]
    fn text_rules_trim_and_mixed_content() {
        let items = parse(
            b"<r><x a=\"1\">  hello  </x><y>   </y><z><![CDATA[<raw> & ]]></z><w>1<v/>2</w></r>",
            "r",
        );
        assert_eq!(
            record(&items[0]).value,
            json!({"x": {"@a": "1", "#text": "hello"}, "y": "", "z": "<raw> &", "w": {"v": "", "#text": "12"}})
        );
    }

    #[test]
    fn namespace_prefixes_are_kept_as_written() {
        let document = br#"<ns0:Orders xmlns:ns0="urn:x"><ns0:Order><ns0:Id>1</ns0:Id></ns0:Order><ns0:Order><ns0:Id>2</ns0:Id></ns0:Order></ns0:Orders>"#;
        let items = parse(document, "ns0:Orders/ns0:Order");
        assert_eq!(items.len(), 2);
        assert_eq!(record(&items[1]).value, json!({"ns0:Id": "2"}));
    }

    #[test]
    fn records_only_match_the_full_path() {
        let document =
            b"<A><IDOC><n>1</n></IDOC><B><IDOC><n>2</n></IDOC></B><IDOC><n>3</n></IDOC></A>";
        let items = parse(document, "A/IDOC");
        let numbers: Vec<_> = items.iter().map(|i| record(i).value["n"].clone()).collect();
        assert_eq!(numbers, vec![json!("1"), json!("3")]);
        assert_eq!(parse(document, "A/B/IDOC").len(), 1);
    }

    #[test]
    fn file_cut_off_mid_element_yields_completed_records_then_the_partial_one() {
        let document = fixture();
        let text = String::from_utf8(document).unwrap();
        let cut = text.find("<NAME1>Tradingpartner").unwrap() + 10;
        let items = parse(&text.as_bytes()[..cut], "DEBMAS07/IDOC");
        assert_eq!(items.len(), 2);
        assert_eq!(record(&items[0]).value["E1KNA1M"]["KUNNR"], "0010034884");
        let partial = broken(&items[1]);
        assert_eq!(
            partial.reason,
            "unexpected end of file inside <IDOC> started at line 44"
        );
        assert_eq!(partial.origin.line, Some(44));
        assert!(
            partial.raw.starts_with("<IDOC BEGIN=\"1\">"),
            "{}",
            partial.raw
        );
        assert!(partial.raw.ends_with("<NAME1>Tra"), "{}", partial.raw);
        // Cut inside a tag is the same end of input.
        let cut = text.find("<LAND1>AT").unwrap() + 4;
        let items = parse(&text.as_bytes()[..cut], "DEBMAS07/IDOC");
        assert_eq!(
            broken(&items[1]).reason,
            "unexpected end of file inside <IDOC> started at line 44"
        );
    }

    #[test]
    fn file_cut_off_between_records_is_reported() {
        let items = parse(b"<A>\n<R>1</R>\n<R>2</R>\n", "A/R");
        assert_eq!(items.len(), 3);
        assert_eq!(
            broken(&items[2]).reason,
            "unexpected end of file inside <A>: the document is incomplete"
        );
    }

    #[test]
    fn malformed_xml_stops_the_document_after_one_broken_item() {
        let document = b"<A>\n<R><x>1</x></R>\n<R><x>2</y></R>\n<R><x>3</x></R>\n</A>\n";
        let items = parse(document, "A/R");
        assert_eq!(items.len(), 2);
        assert_eq!(record(&items[0]).value, json!({"x": "1"}));
        let bad = broken(&items[1]);
        assert_eq!(
            bad.reason,
            "line 3: malformed XML: ill-formed document: expected `</x>`, but `</y>` was found; \
             the rest of the file is not read because XML cannot be resynchronised after an error"
        );
        assert_eq!(bad.origin.line, Some(3));
        assert_eq!(bad.raw, "<R><x>2</y>");
    }

    #[test]
    fn external_entity_is_never_expanded() {
        let document = br#"<?xml version="1.0"?>
<!DOCTYPE DEBMAS07 [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>
<DEBMAS07>
<IDOC><NAME1>&xxe;</NAME1></IDOC>
<IDOC><NAME1>safe</NAME1></IDOC>
</DEBMAS07>"#;
        let items = parse(document, "DEBMAS07/IDOC");
        assert_eq!(items.len(), 2);
        let bad = broken(&items[0]);
        assert_eq!(
            bad.reason,
            "<IDOC>: reference to entity &xxe; is not expanded: only the predefined XML \
             entities and character references are allowed"
        );
        assert_eq!(bad.raw, "<IDOC><NAME1>&xxe;</NAME1></IDOC>");
        assert!(!format!("{items:?}").contains("root:"));
        assert_eq!(record(&items[1]).value, json!({"NAME1": "safe"}));
    }

    #[test]
    fn entity_bomb_is_never_expanded() {
        let mut document =
            String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n<!ENTITY lol \"lol\">\n");
        for level in 1..10 {
            let previous = if level == 1 {
                "lol".to_string()
            } else {
                format!("lol{}", level - 1)
            };
            let body = format!("&{previous};").repeat(10);
            document.push_str(&format!("<!ENTITY lol{level} \"{body}\">\n"));
        }
        document.push_str("]>\n<lolz><r a=\"&lol9;\"/><r>&lol9;</r><r>ok</r></lolz>");
        let items = parse(document.as_bytes(), "lolz/r");
        assert_eq!(items.len(), 3);
        assert_eq!(
            broken(&items[0]).reason,
            "<r>: reference to entity &lol9; is not expanded: only the predefined XML \
             entities and character references are allowed"
        );
        assert_eq!(
            broken(&items[1]).reason,
            "<r>: reference to entity &lol9; is not expanded: only the predefined XML \
             entities and character references are allowed"
        );
        assert_eq!(record(&items[2]).value, json!("ok"));
    }

    #[test]
    fn predefined_and_character_references_are_decoded() {
        let items = parse(
            b"<r a=\"&quot;x&quot; &#252;\">&lt;&amp;&gt;&apos;&#252;&#xFC;</r>",
            "r",
        );
        assert_eq!(
            record(&items[0]).value,
            json!({"@a": "\"x\" ü", "#text": "<&>'üü"})
        );
    }

    #[test]
    fn declared_iso_8859_1_is_decoded() {
        let items = parse(
            b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>\n<A><R n=\"K\xF6ln\">M\xFCller</R></A>",
            "A/R",
        );
        assert_eq!(
            record(&items[0]).value,
            json!({"@n": "Köln", "#text": "Müller"})
        );
        assert_eq!(record(&items[0]).origin.line, Some(2));
    }

    #[test]
    fn default_encoding_applies_without_a_declaration() {
        let items: Vec<_> = XmlRecords::with_default_encoding(
            &b"<A><R>M\xFCller</R></A>"[..],
            "A/R",
            "in.xml",
            encoding_rs::WINDOWS_1252,
        )
        .collect::<io::Result<_>>()
        .unwrap();
        assert_eq!(record(&items[0]).value, json!("Müller"));
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        let items = parse(b"<A><R>M\xFCller</R></A>", "A/R");
        assert_eq!(items.len(), 1);
        assert_eq!(
            broken(&items[0]).reason,
            "line 1: malformed XML: cannot decode input using UTF-8: invalid utf-8 sequence of \
             1 bytes from index 1; the rest of the file is not read because XML cannot be \
             resynchronised after an error"
        );
    }

    #[test]
    fn oversized_record_is_broken_and_reading_resumes() {
        let document = format!(
            "<A><R>{}</R><R>small</R></A>",
            "<x>0123456789</x>".repeat(20)
        );
        let mut records = parse_xml_records(document.as_bytes(), "A/R", "in.xml");
        records.max_record_bytes = 100;
        let items: Vec<_> = records.collect::<io::Result<_>>().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(
            broken(&items[0]).reason,
            "<R>: the record is larger than 100 bytes"
        );
        assert_eq!(record(&items[1]).value, json!("small"));
    }

    #[test]
    fn unsupported_declared_encoding_is_reported() {
        let items = parse(b"<?xml version=\"1.0\" encoding=\"UTF-16\"?><A/>", "A/R");
        assert_eq!(
            broken(&items[0]).reason,
            "the document declares encoding \"UTF-16\", which is not supported \
             (UTF-8, ISO-8859-1 and windows-1252 are)"
        );
    }

    #[test]
    fn wrong_root_is_reported() {
        let items = parse(&fixture(), "MATMAS05/IDOC");
        assert_eq!(items.len(), 1);
        assert_eq!(
            broken(&items[0]).reason,
            "the root element is <DEBMAS07>, but the records path \"MATMAS05/IDOC\" starts at <MATMAS05>"
        );
    }

    #[test]
    fn excessive_nesting_is_a_broken_record_and_reading_resumes() {
        let deep = format!("{}{}", "<d>".repeat(300), "</d>".repeat(300));
        let document = format!("<A><R>{deep}</R><R>after</R></A>");
        let items = parse(document.as_bytes(), "A/R");
        assert_eq!(items.len(), 2);
        assert_eq!(
            broken(&items[0]).reason,
            "<R>: elements nest deeper than 256 levels"
        );
        assert_eq!(record(&items[1]).value, json!("after"));
    }

    #[test]
    fn empty_document_has_no_records() {
        assert!(parse(b"", "A/R").is_empty());
        assert!(parse(b"<?xml version=\"1.0\"?>\n<A></A>\n", "A/R").is_empty());
    }
}
