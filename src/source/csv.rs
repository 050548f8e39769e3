//! CSV files: [`CsvRecords`] turns each row after the header into one record whose keys are
//! the header's column names and whose values are all JSON strings (the mapper coerces types;
//! guessing here would turn `0010034884` into a number).
//!
//! Input is decoded to UTF-8 in chunks by [`DecodingReader`], so Windows-1252 exports stream
//! like UTF-8 ones. A row with the wrong number of fields or with bytes that are not UTF-8 is a
//! [`RawItem::Broken`] naming its line; the rows after it still flow. A header that cannot be
//! read (not UTF-8, duplicate column names) makes the whole file one broken item, since no row
//! could be keyed reliably.
//!
//! Memory is bounded per record: [`RecordLimit`] cuts any record longer than
//! [`MAX_CSV_RECORD`] bytes, which becomes one broken item naming its line, and the rows after
//! it still flow with their true line numbers. A quote that is never closed swallows the rest
//! of the file into one record (the csv format has no other reading of it); that record is
//! broken with a reason that says so.
//!
//! Line endings are normalised to `\n` before parsing ([`LfLines`]): the csv crate counts
//! the line of a record that follows a `\r\n` one too low, and reported lines must match
//! what an editor shows. A `\r\n` inside a quoted field becomes `\n` as well.

use std::collections::{HashSet, VecDeque};
use std::io::{self, BufRead};

use serde_json::{Map, Value};

use super::file::{DecodingReader, FileStreamSettings, RAW_CAP, capped_raw};
use super::{BrokenRecord, Origin, RawItem, RawRecord};

pub(crate) struct CsvRecords<R: BufRead> {
    reader: ::csv::Reader<RecordLimit<LfLines<DecodingReader<R>>>>,
    headers: Option<Vec<String>>,
    /// Line breaks dropped by [`RecordLimit`] cuts so far, added to the parser's line numbers.
    lines_dropped: u64,
    location: String,
    delimiter: u8,
    row: ::csv::ByteRecord,
    index: u64,
    done: bool,
}

impl<R: BufRead> CsvRecords<R> {
    pub(crate) fn new(input: R, settings: &FileStreamSettings, location: &str) -> CsvRecords<R> {
        CsvRecords::with_limit(input, settings, location, MAX_CSV_RECORD)
    }

    /// [`CsvRecords::new`] with records cut at `max_record` bytes instead of
    /// [`MAX_CSV_RECORD`], so tests can exercise the limit with small inputs.
    fn with_limit(
        input: R,
        settings: &FileStreamSettings,
        location: &str,
        max_record: u64,
    ) -> CsvRecords<R> {
        let reader = ::csv::ReaderBuilder::new()
            .delimiter(settings.delimiter)
            .quote(settings.quote)
            .has_headers(true)
            // Field counts are checked here, so a short row becomes one broken item instead of
            // an error that would end the file.
            .flexible(true)
            .from_reader(RecordLimit::new(
                LfLines::new(DecodingReader::new(input, settings.encoding.encoding())),
                settings.delimiter,
                settings.quote,
                max_record,
            ));
        CsvRecords {
            reader,
            headers: None,
            lines_dropped: 0,
            location: location.to_string(),
            delimiter: settings.delimiter,
            row: ::csv::ByteRecord::new(),
            index: 0,
            done: false,
        }
    }

    fn broken(&mut self, line: Option<u64>, raw: String, reason: String) -> RawItem {
        let item = RawItem::Broken(BrokenRecord {
            origin: Origin {
                location: self.location.clone(),
                line,
                index: self.index,
            },
            raw,
            reason,
        });
        self.index += 1;
        item
    }

    fn raw_row(&self, row: &::csv::ByteRecord) -> String {
        // Joined only up to the cap: a record may be many megabytes long.
        let mut joined = Vec::new();
        for (column, field) in row.iter().enumerate() {
            if column > 0 {
                joined.push(self.delimiter);
            }
            let room = RAW_CAP.saturating_sub(joined.len());
            joined.extend_from_slice(&field[..field.len().min(room)]);
            if joined.len() >= RAW_CAP {
                break;
            }
        }
        capped_raw(&joined)
    }

    /// Reads the header row; `Ok(None)` for an empty file, `Err(item)` for an unusable header.
    fn read_headers(&mut self) -> io::Result<Result<Option<Vec<String>>, RawItem>> {
        let header = self.reader.byte_headers().map_err(into_io)?.clone();
        if header.is_empty() {
            return Ok(Ok(None));
        }
        let end = self.reader.position().byte();
        if !self.reader.get_mut().cuts_until(end).is_empty() {
            let raw = self.raw_row(&header);
            return Ok(Err(self.broken(
                Some(1),
                raw,
                format!(
                    "line 1: the header is longer than {} bytes",
                    self.reader.get_ref().max
                ),
            )));
        }
        let mut names = Vec::with_capacity(header.len());
        let mut seen = HashSet::new();
        for (column, field) in header.iter().enumerate() {
            let Ok(name) = std::str::from_utf8(field) else {
                let raw = self.raw_row(&header);
                return Ok(Err(self.broken(
                    Some(1),
                    raw,
                    format!(
                        "line 1: column {} of the header is not valid UTF-8; \
                         is the file encoded as Windows-1252?",
                        column + 1
                    ),
                )));
            };
            if !seen.insert(name.to_string()) {
                let raw = self.raw_row(&header);
                return Ok(Err(self.broken(
                    Some(1),
                    raw,
                    format!("line 1: column name {name:?} appears twice in the header"),
                )));
            }
            names.push(name.to_string());
        }
        Ok(Ok(Some(names)))
    }

    fn next_item(&mut self) -> io::Result<Option<RawItem>> {
        if self.done {
            return Ok(None);
        }
        if self.headers.is_none() {
            match self.read_headers()? {
                Ok(Some(names)) => self.headers = Some(names),
                Ok(None) => {
                    self.done = true;
                    return Ok(None);
                }
                Err(item) => {
                    self.done = true;
                    return Ok(Some(item));
                }
            }
        }
        let mut row = std::mem::take(&mut self.row);
        let found = self.reader.read_byte_record(&mut row).map_err(into_io)?;
        let item = if found {
            Some(self.row_item(&row))
        } else {
            self.done = true;
            None
        };
        self.row = row;
        Ok(item)
    }

    fn row_item(&mut self, row: &::csv::ByteRecord) -> RawItem {
        let line = row.position().map(|p| p.line() + self.lines_dropped);
        let shown = line.map_or_else(|| "?".to_string(), |l| l.to_string());
        let end = self.reader.position().byte();
        let limit = self.reader.get_mut();
        let open_quote = limit.ended_in_open_quote() == Some(end);
        let cuts = limit.cuts_until(end);
        let dropped: u64 = cuts.iter().map(|cut| cut.lines_dropped).sum();
        self.lines_dropped += dropped;
        if !cuts.is_empty() {
            let raw = self.raw_row(row);
            let max = self.reader.get_ref().max;
            let reason = format!(
                "line {shown}: record longer than {max} bytes{}",
                if open_quote {
                    "; a quoted field in it is never closed"
                } else {
                    ""
                }
            );
            return self.broken(line, raw, reason);
        }
        if open_quote {
            let raw = self.raw_row(row);
            let reason = format!(
                "line {shown}: a quoted field is never closed, so everything from line {shown} \
                 to the end of the file was read as this one record"
            );
            return self.broken(line, raw, reason);
        }
        let headers = self.headers.as_deref().unwrap_or_default();
        if row.len() != headers.len() {
            let raw = self.raw_row(row);
            let reason = format!(
                "line {shown}: expected {} fields, found {}",
                headers.len(),
                row.len()
            );
            return self.broken(line, raw, reason);
        }
        let mut value = Map::with_capacity(headers.len());
        for (column, field) in row.iter().enumerate() {
            match std::str::from_utf8(field) {
                Ok(text) => {
                    value.insert(headers[column].clone(), Value::String(text.to_string()));
                }
                Err(_) => {
                    let name = headers[column].clone();
                    let raw = self.raw_row(row);
                    let reason = format!(
                        "line {shown}: field {name:?} is not valid UTF-8; \
                         is the file encoded as Windows-1252?"
                    );
                    return self.broken(line, raw, reason);
                }
            }
        }
        let item = RawItem::Record(RawRecord {
            value: Value::Object(value),
            origin: Origin {
                location: self.location.clone(),
                line,
                index: self.index,
            },
        });
        self.index += 1;
        item
    }
}

/// Drops the `\r` of every `\r\n`, holding back a `\r` that ends a read until the next
/// byte is known. A lone `\r` is kept.
pub(crate) struct LfLines<R> {
    inner: R,
    buffer: Vec<u8>,
    start: usize,
    pending_cr: bool,
}

impl<R: io::Read> LfLines<R> {
    pub(crate) fn new(inner: R) -> LfLines<R> {
        LfLines {
            inner,
            buffer: Vec::new(),
            start: 0,
            pending_cr: false,
        }
    }

    fn refill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let read = self.inner.read(&mut chunk)?;
            self.buffer.clear();
            self.start = 0;
            if read == 0 {
                if std::mem::take(&mut self.pending_cr) {
                    self.buffer.push(b'\r');
                }
                return Ok(());
            }
            let mut bytes = chunk[..read].iter().copied().peekable();
            if std::mem::take(&mut self.pending_cr) && bytes.peek() != Some(&b'\n') {
                self.buffer.push(b'\r');
            }
            while let Some(byte) = bytes.next() {
                match (byte, bytes.peek()) {
                    (b'\r', Some(b'\n')) => {}
                    (b'\r', None) => self.pending_cr = true,
                    _ => self.buffer.push(byte),
                }
            }
            if !self.buffer.is_empty() {
                return Ok(());
            }
        }
    }
}

impl<R: io::Read> io::Read for LfLines<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.start == self.buffer.len() {
            self.refill()?;
        }
        let available = &self.buffer[self.start..];
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.start += n;
        Ok(n)
    }
}

/// The longest CSV record kept whole. A longer one (a runaway field, or an unbalanced quote
/// that swallows the rest of a huge file) is cut at this size by [`RecordLimit`] and becomes
/// one broken item, so memory stays bounded whatever the input.
pub const MAX_CSV_RECORD: u64 = 16 * 1024 * 1024;

/// A cut made by [`RecordLimit`]: where in its output the record was cut, and how many line
/// breaks it dropped while skipping the rest of that record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cut {
    at: u64,
    lines_dropped: u64,
}

/// Caps every record the csv parser sees at `max` bytes without knowing the parser's state:
/// it follows quoting itself (a quote opens a field only at the start of a field, `""` inside
/// one is an escaped quote, as in `csv_core`), counts the bytes since the last line break
/// outside quotes, and past `max` drops everything up to the next one. The parser then sees
/// the record's first `max` bytes, a closing quote if the cut fell inside a quoted field, and
/// the line break, so it stays in step with the real input. Each [`Cut`] is logged for
/// [`CsvRecords`] to mark the record broken and to correct the line numbers after it.
pub(crate) struct RecordLimit<R> {
    inner: R,
    quote: u8,
    delimiter: u8,
    max: u64,
    out: Vec<u8>,
    start: usize,
    /// Bytes handed to the parser so far.
    written: u64,
    in_quotes: bool,
    field_start: bool,
    just_closed: bool,
    record_bytes: u64,
    /// While skipping: whether the parser was left inside a quoted field at the cut.
    skipping: Option<bool>,
    cuts: VecDeque<Cut>,
    eof: bool,
}

impl<R: io::Read> RecordLimit<R> {
    pub(crate) fn new(inner: R, delimiter: u8, quote: u8, max: u64) -> RecordLimit<R> {
        RecordLimit {
            inner,
            quote,
            delimiter,
            max,
            out: Vec::new(),
            start: 0,
            written: 0,
            in_quotes: false,
            field_start: true,
            just_closed: false,
            record_bytes: 0,
            skipping: None,
            cuts: VecDeque::new(),
            eof: false,
        }
    }

    /// Whether the input ended inside a quoted field, once all of it was handed out.
    fn ended_in_open_quote(&self) -> Option<u64> {
        (self.eof && self.in_quotes && self.start == self.out.len()).then_some(self.written)
    }

    /// Removes and returns the cuts made at or before output offset `end`.
    fn cuts_until(&mut self, end: u64) -> Vec<Cut> {
        let mut cuts = Vec::new();
        while self.cuts.front().is_some_and(|cut| cut.at <= end) {
            cuts.extend(self.cuts.pop_front());
        }
        cuts
    }

    fn track_quotes(&mut self, byte: u8) {
        if self.in_quotes {
            if byte == self.quote {
                self.in_quotes = false;
                self.just_closed = true;
            }
        } else if byte == self.quote && (self.field_start || self.just_closed) {
            self.in_quotes = true;
            self.just_closed = false;
        } else {
            self.just_closed = false;
        }
        self.field_start = !self.in_quotes && (byte == self.delimiter || byte == b'\n');
    }

    fn push(&mut self, byte: u8) {
        self.out.push(byte);
        self.written += 1;
    }

    fn process(&mut self, byte: u8) {
        self.track_quotes(byte);
        let record_ends = byte == b'\n' && !self.in_quotes;
        match self.skipping {
            None => {
                self.push(byte);
                self.record_bytes = if record_ends {
                    0
                } else {
                    self.record_bytes + 1
                };
                if self.record_bytes > self.max {
                    self.skipping = Some(self.in_quotes);
                    self.cuts.push_back(Cut {
                        at: self.written,
                        lines_dropped: 0,
                    });
                }
            }
            Some(open) => {
                if record_ends {
                    if open {
                        self.push(self.quote);
                    }
                    self.push(b'\n');
                    self.skipping = None;
                    self.record_bytes = 0;
                } else if byte == b'\n'
                    && let Some(cut) = self.cuts.back_mut()
                {
                    cut.lines_dropped += 1;
                }
            }
        }
    }
}

impl<R: io::Read> io::Read for RecordLimit<R> {
    fn read(&mut self, target: &mut [u8]) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        while self.start == self.out.len() && !self.eof {
            self.out.clear();
            self.start = 0;
            let read = self.inner.read(&mut chunk)?;
            if read == 0 {
                self.eof = true;
                if self.skipping.take() == Some(true) {
                    self.push(self.quote);
                }
            }
            for &byte in &chunk[..read] {
                self.process(byte);
            }
        }
        let available = &self.out[self.start..];
        let n = available.len().min(target.len());
        target[..n].copy_from_slice(&available[..n]);
        self.start += n;
        Ok(n)
    }
}

/// Byte records with flexible field counts fail only on I/O, so every csv error is one.
fn into_io(error: ::csv::Error) -> io::Error {
    match error.into_kind() {
        ::csv::ErrorKind::Io(error) => error,
        other => io::Error::other(format!("{other:?}")),
    }
}

impl<R: BufRead> Iterator for CsvRecords<R> {
    type Item = io::Result<RawItem>;

    fn next(&mut self) -> Option<Self::Item> {
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
    use crate::source::file::{FileFormat, TextEncoding};
    use crate::source::test_items::{broken, record};

    fn parse_limited(bytes: &[u8], max: u64) -> Vec<RawItem> {
        let settings = FileStreamSettings::new(FileFormat::Csv);
        CsvRecords::with_limit(bytes, &settings, "in.csv", max)
            .collect::<io::Result<Vec<_>>>()
            .unwrap()
    }

    #[test]
    fn an_oversized_record_is_cut_and_the_rows_after_it_keep_their_lines() {
        let long = "x".repeat(500);
        let input = format!(
            "id,name\nc1,Anna\nc2,{long}\nc3,\"quoted\n{long}\nstill quoted\"\nc4,\"a \"\"b\"\" c\"\nc5,Eva\n"
        );
        let items = parse_limited(input.as_bytes(), 100);
        assert_eq!(items.len(), 5, "{items:#?}");
        assert_eq!(record(&items[0]).value["name"], "Anna");
        let cut = broken(&items[1]);
        assert_eq!(cut.origin.line, Some(3));
        assert_eq!(cut.reason, "line 3: record longer than 100 bytes");
        assert!(cut.raw.len() <= 110, "{}", cut.raw);
        let quoted = broken(&items[2]);
        assert_eq!(quoted.origin.line, Some(4));
        assert_eq!(quoted.reason, "line 4: record longer than 100 bytes");
        let escaped = record(&items[3]);
        assert_eq!(
            escaped.origin.line,
            Some(7),
            "dropped line breaks are counted"
        );
        assert_eq!(escaped.value["name"], "a \"b\" c");
        assert_eq!(record(&items[4]).origin.line, Some(8));
    }

    #[test]
    fn an_unclosed_quote_names_its_line() {
        let items = parse_limited(b"id,name\nc1,Anna\nc2,\"Otto\nc3,Eva\n", 1000);
        assert_eq!(items.len(), 2);
        let open = broken(&items[1]);
        assert_eq!(open.origin.line, Some(3));
        assert_eq!(
            open.reason,
            "line 3: a quoted field is never closed, so everything from line 3 to the end of \
             the file was read as this one record"
        );
        assert!(open.raw.contains("c3,Eva"), "{}", open.raw);
    }

    #[test]
    fn an_unclosed_quote_in_a_huge_tail_is_cut() {
        let input = format!("id,name\nc1,\"{}", "y\n".repeat(1000));
        let items = parse_limited(input.as_bytes(), 100);
        assert_eq!(items.len(), 1);
        assert_eq!(
            broken(&items[0]).reason,
            "line 2: record longer than 100 bytes; a quoted field in it is never closed"
        );
    }

    fn parse(bytes: &[u8], settings: &FileStreamSettings) -> Vec<RawItem> {
        CsvRecords::new(bytes, settings, "in.csv")
            .collect::<io::Result<Vec<_>>>()
            .unwrap()
    }

    #[test]
    fn crlf_files_report_the_lines_an_editor_shows() {
        let settings = FileStreamSettings::new(FileFormat::Csv);
        let input = b"id,name,email\r\nc1,Anna,a@x.de\r\nc2,Short\r\nc3,\"Multi\r\nline\",c@x.de\r\nc4,Otto,o@x.de\r\n";
        let items = parse(input, &settings);
        assert_eq!(items.len(), 4);
        assert_eq!(record(&items[0]).origin.line, Some(2));
        assert_eq!(
            broken(&items[1]).reason,
            "line 3: expected 3 fields, found 2"
        );
        let multi = record(&items[2]);
        assert_eq!(multi.origin.line, Some(4));
        assert_eq!(multi.value["name"], "Multi\nline");
        assert_eq!(multi.value["email"], "c@x.de", "no stray carriage return");
        assert_eq!(record(&items[3]).origin.line, Some(6));
    }

    #[test]
    fn a_carriage_return_split_across_reads_is_handled() {
        use std::io::Read;
        struct OneByte<'a>(&'a [u8]);
        impl io::Read for OneByte<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                match self.0.split_first() {
                    Some((byte, rest)) if !out.is_empty() => {
                        out[0] = *byte;
                        self.0 = rest;
                        Ok(1)
                    }
                    _ => Ok(0),
                }
            }
        }
        let mut out = Vec::new();
        LfLines::new(OneByte(b"a\r\nb\rc\r"))
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"a\nb\rc\r");
    }

    #[test]
    fn semicolons_and_quotes_give_string_values_keyed_by_header() {
        let mut settings = FileStreamSettings::new(FileFormat::Csv);
        settings.delimiter = b';';
        let input = b"id;name;note\n0010034884;\"M\xC3\xBCller; Sohn GmbH\";\"said \"\"hi\"\"\nthere\"\n2;Acme;\n";
        let items = parse(input, &settings);
        assert_eq!(items.len(), 2);
        let first = record(&items[0]);
        assert_eq!(
            first.value,
            serde_json::json!({"id": "0010034884", "name": "Müller; Sohn GmbH", "note": "said \"hi\"\nthere"})
        );
        assert_eq!(first.origin.line, Some(2));
        assert_eq!(first.origin.index, 0);
        let second = record(&items[1]);
        assert_eq!(
            second.value,
            serde_json::json!({"id": "2", "name": "Acme", "note": ""})
        );
        assert_eq!(second.origin.line, Some(4));
        assert_eq!(second.origin.index, 1);
    }

    #[test]
    fn custom_quote_character_is_honoured() {
        let mut settings = FileStreamSettings::new(FileFormat::Csv);
        settings.quote = b'\'';
        let items = parse(b"a,b\n'x,y',z\n", &settings);
        assert_eq!(
            record(&items[0]).value,
            serde_json::json!({"a": "x,y", "b": "z"})
        );
    }

    #[test]
    fn windows_1252_bytes_are_decoded() {
        let mut settings = FileStreamSettings::new(FileFormat::Csv);
        settings.encoding = TextEncoding::Windows1252;
        let items = parse(b"name,city\nJ\xFCrgen M\xFCller,K\xF6ln \x80\n", &settings);
        assert_eq!(
            record(&items[0]).value,
            serde_json::json!({"name": "Jürgen Müller", "city": "Köln €"})
        );
    }

    #[test]
    fn utf8_bom_is_stripped_from_the_first_column_name() {
        let settings = FileStreamSettings::new(FileFormat::Csv);
        let items = parse(b"\xEF\xBB\xBFid,name\n1,A\n", &settings);
        assert_eq!(
            record(&items[0]).value,
            serde_json::json!({"id": "1", "name": "A"})
        );
    }

    #[test]
    fn a_short_row_is_quarantined_and_the_rest_flow() {
        let settings = FileStreamSettings::new(FileFormat::Csv);
        let items = parse(
            b"a,b,c,d,e\n1,2,3,4,5\n6,7,8,9,10\n11,12,13\n14,15,16,17,18\n",
            &settings,
        );
        assert_eq!(items.len(), 4);
        let bad = broken(&items[2]);
        assert_eq!(bad.reason, "line 4: expected 5 fields, found 3");
        assert_eq!(bad.raw, "11,12,13");
        assert_eq!(bad.origin.line, Some(4));
        assert_eq!(bad.origin.index, 2);
        assert_eq!(record(&items[3]).value["a"], "14");
        assert_eq!(record(&items[3]).origin.index, 3);
    }

    #[test]
    fn invalid_utf8_in_utf8_mode_is_a_broken_row() {
        let settings = FileStreamSettings::new(FileFormat::Csv);
        let items = parse(b"name,city\nJ\xFCrgen,Berlin\nAnna,Wien\n", &settings);
        assert_eq!(
            broken(&items[0]).reason,
            "line 2: field \"name\" is not valid UTF-8; is the file encoded as Windows-1252?"
        );
        assert_eq!(broken(&items[0]).raw, "J\u{FFFD}rgen,Berlin");
        assert_eq!(record(&items[1]).value["city"], "Wien");
    }

    #[test]
    fn duplicate_header_names_make_the_file_one_broken_item() {
        let settings = FileStreamSettings::new(FileFormat::Csv);
        let items = parse(b"id,name,id\n1,2,3\n", &settings);
        assert_eq!(items.len(), 1);
        assert_eq!(
            broken(&items[0]).reason,
            "line 1: column name \"id\" appears twice in the header"
        );
    }

    #[test]
    fn empty_input_has_no_items() {
        let settings = FileStreamSettings::new(FileFormat::Csv);
        assert!(parse(b"", &settings).is_empty());
        assert!(parse(b"a,b\n", &settings).is_empty());
    }
}
