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
//! Line endings are normalised to `\n` before parsing ([`LfLines`]): the csv crate counts
//! the line of a record that follows a `\r\n` one too low, and reported lines must match
//! what an editor shows. A `\r\n` inside a quoted field becomes `\n` as well.

use std::collections::HashSet;
use std::io::{self, BufRead};

use serde_json::{Map, Value};

use super::file::{DecodingReader, FileStreamSettings, capped_raw};
use super::{BrokenRecord, Origin, RawItem, RawRecord};

pub(crate) struct CsvRecords<R: BufRead> {
    reader: ::csv::Reader<LfLines<DecodingReader<R>>>,
    headers: Option<Vec<String>>,
    location: String,
    delimiter: u8,
    row: ::csv::ByteRecord,
    index: u64,
    done: bool,
}

impl<R: BufRead> CsvRecords<R> {
    pub(crate) fn new(input: R, settings: &FileStreamSettings, location: &str) -> CsvRecords<R> {
        let reader = ::csv::ReaderBuilder::new()
            .delimiter(settings.delimiter)
            .quote(settings.quote)
            .has_headers(true)
            // Field counts are checked here, so a short row becomes one broken item instead of
            // an error that would end the file.
            .flexible(true)
            .from_reader(LfLines::new(DecodingReader::new(
                input,
                settings.encoding.encoding(),
            )));
        CsvRecords {
            reader,
            headers: None,
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
        let joined = row.iter().collect::<Vec<_>>().join(&[self.delimiter][..]);
        capped_raw(&joined)
    }

    /// Reads the header row; `Ok(None)` for an empty file, `Err(item)` for an unusable header.
    fn read_headers(&mut self) -> io::Result<Result<Option<Vec<String>>, RawItem>> {
        let header = self.reader.byte_headers().map_err(into_io)?.clone();
        if header.is_empty() {
            return Ok(Ok(None));
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
        let line = row.position().map(|p| p.line());
        let shown = line.map_or_else(|| "?".to_string(), |l| l.to_string());
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
