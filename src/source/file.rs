//! File drops: [`FileSource`] reads CSV, JSON, NDJSON and XML files matching a glob in one
//! directory, one [`Batch`] of at most [`FileStreamSettings::batch_size`] items at a time.
//!
//! Files are listed once, when the source is built, and sorted by their `/`-separated path
//! relative to the directory so every run reads them in the same order. A file whose
//! `(path, size, blake3)` is already in the store's [`IngestedFile`] list is skipped; a file
//! with a known path but different content was replaced and is read again. The last batch of
//! every file, and only that one, carries [`Checkpoint::FileDone`]; acknowledging it moves the
//! file to the archive directory when one is configured.
//!
//! Invariants: no path outside the configured directory is ever opened ([`check_pattern`]
//! rejects escaping patterns; matched paths are canonicalised and must stay under the canonical
//! directory); memory stays bounded by the batch size for CSV, NDJSON and XML, which are parsed
//! streaming through [`DecodingReader`] (text decoding in chunks) and [`TrackingReader`] (line
//! numbers and the raw text of broken parts); JSON documents are streamed too, by a parser
//! thread at most [`super::json::CHANNEL_CAPACITY`] records ahead, each record at most
//! [`super::json::MAX_JSON_RECORD`] bytes.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use encoding_rs::Encoding;
use globset::{GlobBuilder, GlobMatcher};

use super::{Batch, Checkpoint, IngestedFile, RawItem, Source, SourceError};

/// The raw text kept with a broken item is capped so one huge broken record cannot bloat the
/// quarantine.
pub(crate) const RAW_CAP: usize = 64 * 1024;

const READ_BUFFER: usize = 64 * 1024;
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The wire format of the files of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Csv,
    Json,
    Ndjson,
    Xml,
}

impl FileFormat {
    pub const NAMES: [&'static str; 4] = ["csv", "json", "ndjson", "xml"];

    pub fn parse(name: &str) -> Option<FileFormat> {
        Some(match name {
            "csv" => FileFormat::Csv,
            "json" => FileFormat::Json,
            "ndjson" => FileFormat::Ndjson,
            "xml" => FileFormat::Xml,
            _ => return None,
        })
    }
}

/// The character encoding of text files. XML documents declare their own encoding, which wins
/// over this setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoding {
    Utf8,
    Windows1252,
}

impl TextEncoding {
    pub const NAMES: [&'static str; 5] =
        ["utf-8", "windows-1252", "cp1252", "latin1", "iso-8859-1"];

    /// Case-insensitive. `latin1` and `iso-8859-1` mean Windows-1252, as in every browser and
    /// in `encoding_rs`: real "Latin-1" exports are almost always Windows-1252 in practice.
    pub fn parse(name: &str) -> Option<TextEncoding> {
        match name.to_ascii_lowercase().as_str() {
            "utf-8" | "utf8" => Some(TextEncoding::Utf8),
            "windows-1252" | "cp1252" | "latin1" | "iso-8859-1" => Some(TextEncoding::Windows1252),
            _ => None,
        }
    }

    pub fn encoding(self) -> &'static Encoding {
        match self {
            TextEncoding::Utf8 => encoding_rs::UTF_8,
            TextEncoding::Windows1252 => encoding_rs::WINDOWS_1252,
        }
    }
}

/// How the files of one stream are parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStreamSettings {
    pub format: FileFormat,
    /// JSON: dotted path to the record array (`d.results`); `None` means the document itself
    /// is the array (or a single object, one record). XML: slash path from the root element
    /// inclusive (`DEBMAS07/IDOC`); required for XML.
    pub records: Option<String>,
    pub delimiter: u8,
    pub quote: u8,
    pub encoding: TextEncoding,
    /// Items per batch; at least 1.
    pub batch_size: usize,
}

impl FileStreamSettings {
    /// Settings with the defaults of a connector file: `,` delimiter, `"` quote, UTF-8, 1000
    /// records per batch.
    pub fn new(format: FileFormat) -> FileStreamSettings {
        FileStreamSettings {
            format,
            records: None,
            delimiter: b',',
            quote: b'"',
            encoding: TextEncoding::Utf8,
            batch_size: 1000,
        }
    }
}

/// Checks a glob pattern stays inside its directory: not absolute, no `..` component, valid
/// glob syntax. Used by config validation too.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("file pattern is empty".to_string());
    }
    let bytes = pattern.as_bytes();
    let drive = bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':';
    if pattern.starts_with('/') || pattern.starts_with('\\') || drive {
        return Err(format!(
            "file pattern {pattern:?} is absolute; it must be relative to the connector directory"
        ));
    }
    if pattern.split(['/', '\\']).any(|part| part == "..") {
        return Err(format!(
            "file pattern {pattern:?} contains `..`; it must stay inside the connector directory"
        ));
    }
    build_matcher(pattern).map(|_| ())
}

fn build_matcher(pattern: &str) -> Result<GlobMatcher, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|glob| glob.compile_matcher())
        .map_err(|error| format!("file pattern {pattern:?} is not a valid glob: {error}"))
}

/// Reads one file completely into items (for `conflux preview` and tests), with the same
/// parsers the source uses. Origins name the path as given.
pub fn read_file(path: &Path, settings: &FileStreamSettings) -> Result<Vec<RawItem>, SourceError> {
    let location = path.display().to_string();
    let file = File::open(path).map_err(|source| io_error(&location, source))?;
    open_items(file, settings, &location)
        .map(|item| item.map_err(|source| io_error(&location, source)))
        .collect()
}

fn io_error(path: &str, source: io::Error) -> SourceError {
    SourceError::Io {
        path: path.to_string(),
        source,
    }
}

/// The items of one file, in order. An `Err` is an I/O failure (the file cannot be read any
/// further); anything wrong with the content is a [`RawItem::Broken`] instead.
pub(crate) type Items = Box<dyn Iterator<Item = io::Result<RawItem>> + Send>;

fn open_items(file: File, settings: &FileStreamSettings, location: &str) -> Items {
    let input = BufReader::with_capacity(READ_BUFFER, file);
    match settings.format {
        FileFormat::Csv => Box::new(super::csv::CsvRecords::new(input, settings, location)),
        FileFormat::Ndjson => Box::new(super::json::NdjsonRecords::new(
            DecodingReader::new(input, settings.encoding.encoding()),
            location,
        )),
        FileFormat::Json => Box::new(super::json::json_records(
            DecodingReader::new(input, settings.encoding.encoding()),
            settings.records.as_deref(),
            location,
        )),
        FileFormat::Xml => Box::new(super::xml::XmlRecords::with_default_encoding(
            input,
            settings.records.as_deref().unwrap_or_default(),
            location,
            settings.encoding.encoding(),
        )),
    }
}

/// Lossy UTF-8 of at most [`RAW_CAP`] bytes, for [`super::BrokenRecord::raw`].
pub(crate) fn capped_raw(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(RAW_CAP)]).into_owned()
}

/// A [`BufRead`] adapter that yields UTF-8 whatever the input encoding, decoding in chunks of
/// at most 16 KiB so a file is never decoded whole.
///
/// A byte order mark decides over the configured encoding: a UTF-8 BOM is stripped and the
/// rest passed through; a UTF-16 BOM switches to UTF-16 decoding. UTF-8 input is passed
/// through unvalidated, so the parsers can report invalid bytes with their position.
pub(crate) struct DecodingReader<R> {
    inner: R,
    encoding: &'static Encoding,
    mode: Option<Mode>,
}

enum Mode {
    Passthrough,
    Decode {
        decoder: encoding_rs::Decoder,
        out: Box<[u8]>,
        pos: usize,
        len: usize,
        finished: bool,
    },
}

impl<R: BufRead> DecodingReader<R> {
    pub(crate) fn new(inner: R, encoding: &'static Encoding) -> DecodingReader<R> {
        DecodingReader {
            inner,
            encoding,
            mode: None,
        }
    }

    fn choose_mode(&mut self) -> io::Result<Mode> {
        let head = self.inner.fill_buf()?;
        if head.starts_with(UTF8_BOM) {
            self.inner.consume(UTF8_BOM.len());
            return Ok(Mode::Passthrough);
        }
        let decoder = if head.starts_with(b"\xFF\xFE") || head.starts_with(b"\xFE\xFF") {
            // `new_decoder` sniffs the BOM and picks the right UTF-16 variant.
            encoding_rs::UTF_16LE.new_decoder()
        } else if self.encoding == encoding_rs::UTF_8 {
            return Ok(Mode::Passthrough);
        } else {
            self.encoding.new_decoder_without_bom_handling()
        };
        Ok(Mode::Decode {
            decoder,
            out: vec![0; 16 * 1024].into_boxed_slice(),
            pos: 0,
            len: 0,
            finished: false,
        })
    }
}

impl<R: BufRead> BufRead for DecodingReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.mode.is_none() {
            self.mode = Some(self.choose_mode()?);
        }
        match &mut self.mode {
            None | Some(Mode::Passthrough) => self.inner.fill_buf(),
            Some(Mode::Decode {
                decoder,
                out,
                pos,
                len,
                finished,
            }) => {
                while *pos >= *len && !*finished {
                    let input = self.inner.fill_buf()?;
                    let last = input.is_empty();
                    let (_, read, written, _) = decoder.decode_to_utf8(input, out, last);
                    self.inner.consume(read);
                    *pos = 0;
                    *len = written;
                    *finished = last;
                }
                Ok(&out[*pos..*len])
            }
        }
    }

    fn consume(&mut self, amount: usize) {
        match &mut self.mode {
            None | Some(Mode::Passthrough) => self.inner.consume(amount),
            Some(Mode::Decode { pos, len, .. }) => *pos = (*pos + amount).min(*len),
        }
    }
}

impl<R: BufRead> Read for DecodingReader<R> {
    fn read(&mut self, target: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(target.len());
        target[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// A [`BufRead`] adapter that counts the lines consumed so far and keeps the bytes consumed
/// since the last [`TrackingReader::mark`] (up to [`RAW_CAP`]), so parsers can say where a
/// record started and quote a broken one.
pub(crate) struct TrackingReader<R> {
    inner: R,
    newlines: u64,
    consumed: u64,
    mark: u64,
    captured: Vec<u8>,
}

impl<R: BufRead> TrackingReader<R> {
    pub(crate) fn new(inner: R) -> TrackingReader<R> {
        TrackingReader {
            inner,
            newlines: 0,
            consumed: 0,
            mark: 0,
            captured: Vec::new(),
        }
    }

    /// The 1-based line of the next unconsumed byte.
    pub(crate) fn line(&self) -> u64 {
        self.newlines + 1
    }

    /// Starts a new capture at the current position.
    pub(crate) fn mark(&mut self) {
        self.mark = self.consumed;
        self.captured.clear();
    }

    /// Bytes consumed since the last mark (not capped).
    pub(crate) fn since_mark(&self) -> u64 {
        self.consumed - self.mark
    }

    /// The first [`RAW_CAP`] bytes consumed since the last mark.
    pub(crate) fn captured(&self) -> &[u8] {
        &self.captured
    }
}

impl<R: BufRead> BufRead for TrackingReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        // `consume` may only follow a `fill_buf` that returned at least `amount` bytes, and
        // those bytes stay buffered until consumed, so asking again does no I/O and cannot
        // fail in any reader of this module; an error would only lose line counts.
        if let Ok(buffer) = self.inner.fill_buf() {
            let done = &buffer[..amount.min(buffer.len())];
            self.newlines += done.iter().filter(|&&b| b == b'\n').count() as u64;
            let room = RAW_CAP.saturating_sub(self.captured.len());
            self.captured
                .extend_from_slice(&done[..room.min(done.len())]);
        }
        self.consumed += amount as u64;
        self.inner.consume(amount);
    }
}

impl<R: BufRead> Read for TrackingReader<R> {
    fn read(&mut self, target: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(target.len());
        target[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// A directory of file drops read as one stream.
pub struct FileSource {
    archive_dir: Option<PathBuf>,
    /// Moved into a blocking task for every batch: all file I/O happens off the async
    /// runtime. `None` only if such a task was cancelled.
    cursor: Option<Box<FileCursor>>,
    dir: PathBuf,
}

struct FileCursor {
    dir: PathBuf,
    settings: FileStreamSettings,
    pending: VecDeque<String>,
    ingested: HashSet<IngestedFile>,
    current: Option<OpenFile>,
}

struct OpenFile {
    file: IngestedFile,
    items: std::iter::Peekable<Items>,
}

impl FileSource {
    pub fn new(
        dir: PathBuf,
        archive_dir: Option<PathBuf>,
        pattern: &str,
        settings: FileStreamSettings,
        ingested: Vec<IngestedFile>,
    ) -> Result<FileSource, SourceError> {
        check_pattern(pattern).map_err(SourceError::Config)?;
        if settings.batch_size == 0 {
            return Err(SourceError::Config(
                "batch_size must be at least 1".to_string(),
            ));
        }
        if settings.format == FileFormat::Xml
            && settings
                .records
                .as_deref()
                .is_none_or(|path| path.trim_matches('/').is_empty())
        {
            return Err(SourceError::Config(
                "XML files need a records path such as \"DEBMAS07/IDOC\"".to_string(),
            ));
        }
        let matcher = build_matcher(pattern).map_err(SourceError::Config)?;
        let canonical = dir
            .canonicalize()
            .map_err(|source| io_error(&dir.display().to_string(), source))?;
        let listing = Listing {
            matcher,
            recursive: pattern.contains('/') || pattern.contains("**"),
            skip_dir: archive_dir
                .as_deref()
                .and_then(|archive| archive.canonicalize().ok())
                .filter(|archive| archive.starts_with(&canonical)),
            root: canonical.clone(),
        };
        let mut files = Vec::new();
        listing.collect(&canonical, "", &mut files)?;
        files.sort();
        Ok(FileSource {
            archive_dir,
            cursor: Some(Box::new(FileCursor {
                dir: canonical.clone(),
                settings,
                pending: files.into(),
                ingested: ingested.into_iter().collect(),
                current: None,
            })),
            dir: canonical,
        })
    }

    /// Relative paths of the files still to be read (or skipped), in reading order.
    pub fn pending_files(&self) -> Vec<String> {
        let Some(cursor) = &self.cursor else {
            return Vec::new();
        };
        cursor
            .current
            .iter()
            .map(|open| open.file.path.clone())
            .chain(cursor.pending.iter().cloned())
            .collect()
    }
}

/// What [`FileSource::new`] lists: files under `root` whose relative path matches.
struct Listing {
    root: PathBuf,
    matcher: GlobMatcher,
    recursive: bool,
    /// The archive directory when it lies inside `root`: archived files must not be read
    /// again under their new name.
    skip_dir: Option<PathBuf>,
}

impl Listing {
    fn collect(
        &self,
        dir: &Path,
        prefix: &str,
        found: &mut Vec<String>,
    ) -> Result<(), SourceError> {
        let entries =
            std::fs::read_dir(dir).map_err(|e| io_error(&dir.display().to_string(), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&dir.display().to_string(), e))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                tracing::warn!(path = %path.display(), "Skipping a file whose name is not UTF-8.");
                continue;
            };
            let relative = format!("{prefix}{name}");
            let kind = entry
                .file_type()
                .map_err(|e| io_error(&path.display().to_string(), e))?;
            if kind.is_dir() {
                if self.recursive && self.skip_dir.as_deref() != Some(path.as_path()) {
                    self.collect(&path, &format!("{relative}/"), found)?;
                }
                continue;
            }
            if !self.matcher.is_match(&relative) {
                continue;
            }
            // Symbolic links are resolved and must land inside the directory; linked
            // directories are not descended into, so a link cycle cannot make the listing loop.
            match path.canonicalize() {
                Ok(target) if target.starts_with(&self.root) && target.is_file() => {
                    found.push(relative);
                }
                Ok(target) if target.starts_with(&self.root) => {}
                Ok(target) => tracing::warn!(
                    path = %path.display(),
                    target = %target.display(),
                    "Skipping a file that resolves outside the connector directory."
                ),
                Err(error) => tracing::warn!(
                    path = %path.display(),
                    error = %error,
                    "Skipping a file that cannot be resolved."
                ),
            }
        }
        Ok(())
    }
}

/// Size and blake3 of a file, read in fixed-size chunks.
fn fingerprint(path: &Path) -> io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let size = io::copy(&mut file, &mut hasher)?;
    Ok((size, hasher.finalize().to_hex().to_string()))
}

impl FileCursor {
    fn next_batch(&mut self) -> Result<Option<Batch>, SourceError> {
        loop {
            if self.current.is_none() && !self.open_next()? {
                return Ok(None);
            }
            let Some(open) = self.current.as_mut() else {
                continue;
            };
            let mut items = Vec::new();
            while items.len() < self.settings.batch_size {
                match open.items.next() {
                    Some(Ok(item)) => items.push(item),
                    Some(Err(source)) => return Err(io_error(&open.file.path, source)),
                    None => break,
                }
            }
            if open.items.peek().is_some() {
                return Ok(Some(Batch {
                    items,
                    checkpoint: Checkpoint::None,
                }));
            }
            let file = open.file.clone();
            self.current = None;
            return Ok(Some(Batch {
                items,
                checkpoint: Checkpoint::FileDone(file),
            }));
        }
    }

    /// Opens the next file that is not ingested yet; `false` when none is left.
    fn open_next(&mut self) -> Result<bool, SourceError> {
        while let Some(relative) = self.pending.pop_front() {
            let path = self.dir.join(&relative);
            let (size, hash) = match fingerprint(&path) {
                Ok(fingerprint) => fingerprint,
                // Another process may take a file away between listing and reading (an
                // operator, or a second replica archiving it); it is simply no longer there.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    tracing::warn!(path = %relative, "Skipping a file that disappeared after listing.");
                    continue;
                }
                Err(error) => return Err(io_error(&relative, error)),
            };
            let file = IngestedFile {
                path: relative,
                size,
                hash,
            };
            if self.ingested.contains(&file) {
                tracing::debug!(path = %file.path, "Skipping a file that is already ingested.");
                continue;
            }
            let handle = File::open(&path).map_err(|e| io_error(&file.path, e))?;
            let items = open_items(handle, &self.settings, &file.path).peekable();
            self.current = Some(OpenFile { file, items });
            return Ok(true);
        }
        Ok(false)
    }
}

/// Moves an ingested file under the archive directory, keeping its relative path and adding
/// `.1`, `.2`, ... before the extension when that name is taken.
fn archive(dir: &Path, archive_dir: &Path, relative: &str) -> io::Result<PathBuf> {
    let relative = Path::new(relative);
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a plain relative path",
        ));
    }
    let source = dir.join(relative);
    let mut target = archive_dir.join(relative);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let stem = target
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let extension = target
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let mut suffix = 0;
    while target.symlink_metadata().is_ok() {
        suffix += 1;
        target.set_file_name(format!("{stem}.{suffix}{extension}"));
    }
    if std::fs::rename(&source, &target).is_err() {
        // Renaming fails across file systems; copying then removing is the portable fallback.
        std::fs::copy(&source, &target)?;
        std::fs::remove_file(&source)?;
    }
    Ok(target)
}

#[async_trait]
impl Source for FileSource {
    async fn next_batch(&mut self) -> Result<Option<Batch>, SourceError> {
        let Some(mut cursor) = self.cursor.take() else {
            return Err(io_error(
                &self.dir.display().to_string(),
                io::Error::other("an earlier read of this file source was cancelled"),
            ));
        };
        let joined = tokio::task::spawn_blocking(move || {
            let result = cursor.next_batch();
            (cursor, result)
        })
        .await;
        match joined {
            Ok((cursor, result)) => {
                self.cursor = Some(cursor);
                result
            }
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => Err(io_error(
                &self.dir.display().to_string(),
                io::Error::other(error.to_string()),
            )),
        }
    }

    async fn acknowledge(&mut self, checkpoint: &Checkpoint) -> Result<(), SourceError> {
        let (Checkpoint::FileDone(file), Some(archive_dir)) = (checkpoint, &self.archive_dir)
        else {
            return Ok(());
        };
        let dir = self.dir.clone();
        let archive_dir = archive_dir.clone();
        let relative = file.path.clone();
        let moved = tokio::task::spawn_blocking(move || archive(&dir, &archive_dir, &relative))
            .await
            .map_err(|error| io::Error::other(error.to_string()))
            .and_then(|result| result);
        match moved {
            Ok(target) => {
                tracing::debug!(path = %file.path, archived = %target.display(), "Archived an ingested file.");
                Ok(())
            }
            Err(source) => Err(io_error(&file.path, source)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::test_items::{broken, record};
    use serde_json::json;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/files")
            .join(name)
    }

    fn csv_settings(batch_size: usize) -> FileStreamSettings {
        let mut settings = FileStreamSettings::new(FileFormat::Csv);
        settings.batch_size = batch_size;
        settings
    }

    fn write(dir: &Path, relative: &str, content: &str) {
        let path = dir.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    async fn drain(source: &mut FileSource) -> Vec<Batch> {
        let mut batches = Vec::new();
        while let Some(batch) = source.next_batch().await.unwrap() {
            batches.push(batch);
        }
        batches
    }

    fn done(batch: &Batch) -> Option<&IngestedFile> {
        match &batch.checkpoint {
            Checkpoint::FileDone(file) => Some(file),
            Checkpoint::None | Checkpoint::Cursor(_) => None,
        }
    }

    #[test]
    fn patterns_that_leave_the_directory_are_rejected() {
        assert_eq!(check_pattern("*.csv"), Ok(()));
        assert_eq!(check_pattern("in/**/*.xml"), Ok(()));
        assert_eq!(
            check_pattern("../*.csv"),
            Err("file pattern \"../*.csv\" contains `..`; it must stay inside the connector directory".to_string())
        );
        assert_eq!(
            check_pattern("in/../../x.csv"),
            Err("file pattern \"in/../../x.csv\" contains `..`; it must stay inside the connector directory".to_string())
        );
        assert_eq!(
            check_pattern("/etc/*.csv"),
            Err("file pattern \"/etc/*.csv\" is absolute; it must be relative to the connector directory".to_string())
        );
        assert_eq!(
            check_pattern("C:\\data\\*.csv"),
            Err("file pattern \"C:\\\\data\\\\*.csv\" is absolute; it must be relative to the connector directory".to_string())
        );
        assert_eq!(check_pattern(""), Err("file pattern is empty".to_string()));
        assert_eq!(
            check_pattern("[a.csv"),
            Err("file pattern \"[a.csv\" is not a valid glob: error parsing glob '[a.csv': unclosed character class; missing ']'".to_string())
        );
    }

    #[test]
    fn format_and_encoding_names() {
        assert_eq!(FileFormat::parse("ndjson"), Some(FileFormat::Ndjson));
        assert_eq!(FileFormat::parse("tsv"), None);
        assert_eq!(TextEncoding::parse("UTF-8"), Some(TextEncoding::Utf8));
        assert_eq!(
            TextEncoding::parse("cp1252"),
            Some(TextEncoding::Windows1252)
        );
        assert_eq!(
            TextEncoding::parse("latin1"),
            Some(TextEncoding::Windows1252)
        );
        assert_eq!(TextEncoding::parse("ebcdic"), None);
    }

    #[test]
    fn missing_directory_is_an_io_error_naming_it() {
        let error = FileSource::new(
            PathBuf::from("/nonexistent/conflux-drop"),
            None,
            "*.csv",
            csv_settings(10),
            Vec::new(),
        )
        .err()
        .unwrap();
        assert_eq!(
            error.to_string(),
            "/nonexistent/conflux-drop: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn escaping_pattern_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let error = FileSource::new(
            dir.path().into(),
            None,
            "../*",
            csv_settings(10),
            Vec::new(),
        )
        .err()
        .unwrap();
        assert_eq!(
            error.to_string(),
            "file pattern \"../*\" contains `..`; it must stay inside the connector directory"
        );
    }

    #[test]
    fn files_are_listed_sorted_and_recursively_only_when_the_pattern_asks() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.csv", "a.csv", "c.txt", "sub/d.csv", "sub/deeper/e.csv"] {
            write(dir.path(), name, "x\n");
        }
        let flat = FileSource::new(
            dir.path().into(),
            None,
            "*.csv",
            csv_settings(10),
            Vec::new(),
        )
        .unwrap();
        assert_eq!(flat.pending_files(), vec!["a.csv", "b.csv"]);
        let deep = FileSource::new(
            dir.path().into(),
            None,
            "**/*.csv",
            csv_settings(10),
            Vec::new(),
        )
        .unwrap();
        assert_eq!(
            deep.pending_files(),
            vec!["a.csv", "b.csv", "sub/d.csv", "sub/deeper/e.csv"]
        );
        let one_level = FileSource::new(
            dir.path().into(),
            None,
            "sub/*.csv",
            csv_settings(10),
            Vec::new(),
        )
        .unwrap();
        assert_eq!(one_level.pending_files(), vec!["sub/d.csv"]);
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_escaping_the_directory_are_skipped() {
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "secret.csv", "a\n1\n");
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "real.csv", "a\n1\n");
        std::os::unix::fs::symlink(
            outside.path().join("secret.csv"),
            dir.path().join("link.csv"),
        )
        .unwrap();
        std::os::unix::fs::symlink(dir.path().join("real.csv"), dir.path().join("inner.csv"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        let source = FileSource::new(
            dir.path().into(),
            None,
            "**/*.csv",
            csv_settings(10),
            Vec::new(),
        )
        .unwrap();
        assert_eq!(source.pending_files(), vec!["inner.csv", "real.csv"]);
    }

    #[tokio::test]
    async fn batches_hold_batch_size_items_and_only_the_last_of_a_file_is_done() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.csv", "id\n1\n2\n3\n4\n5\n");
        write(dir.path(), "b.csv", "id\n6\n7\n");
        write(dir.path(), "c.csv", "");
        let mut source = FileSource::new(
            dir.path().into(),
            None,
            "*.csv",
            csv_settings(2),
            Vec::new(),
        )
        .unwrap();
        let batches = drain(&mut source).await;
        let shape: Vec<_> = batches
            .iter()
            .map(|b| (b.items.len(), done(b).map(|f| f.path.as_str())))
            .collect();
        assert_eq!(
            shape,
            vec![
                (2, None),
                (2, None),
                (1, Some("a.csv")),
                (2, Some("b.csv")),
                (0, Some("c.csv")),
            ]
        );
        let ids: Vec<_> = batches
            .iter()
            .flat_map(|b| b.items.iter().map(|i| record(i).value["id"].clone()))
            .collect();
        assert_eq!(
            ids,
            (1..=7).map(|n| json!(n.to_string())).collect::<Vec<_>>()
        );
        let last_of_a = record(&batches[2].items[0]);
        assert_eq!(last_of_a.origin.location, "a.csv");
        assert_eq!(last_of_a.origin.line, Some(6));
        assert_eq!(last_of_a.origin.index, 4);
        let empty = done(&batches[4]).unwrap();
        assert_eq!(empty.size, 0);
        assert_eq!(empty.hash, blake3::hash(b"").to_hex().to_string());
    }

    #[tokio::test]
    async fn ingested_files_are_skipped_and_replaced_files_read_again() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.csv", "id\n1\n");
        write(dir.path(), "b.csv", "id\n2\n");
        let mut first = FileSource::new(
            dir.path().into(),
            None,
            "*.csv",
            csv_settings(10),
            Vec::new(),
        )
        .unwrap();
        let ingested: Vec<IngestedFile> = drain(&mut first)
            .await
            .iter()
            .filter_map(|b| done(b).cloned())
            .collect();
        assert_eq!(ingested.len(), 2);
        assert_eq!(ingested[0].size, 5);
        assert_eq!(
            ingested[0].hash,
            blake3::hash(b"id\n1\n").to_hex().to_string()
        );

        let mut again = FileSource::new(
            dir.path().into(),
            None,
            "*.csv",
            csv_settings(10),
            ingested.clone(),
        )
        .unwrap();
        assert!(drain(&mut again).await.is_empty());

        write(dir.path(), "b.csv", "id\n3\n");
        let mut replaced =
            FileSource::new(dir.path().into(), None, "*.csv", csv_settings(10), ingested).unwrap();
        let batches = drain(&mut replaced).await;
        assert_eq!(batches.len(), 1);
        assert_eq!(done(&batches[0]).unwrap().path, "b.csv");
        assert_eq!(record(&batches[0].items[0]).value, json!({"id": "3"}));
    }

    #[tokio::test]
    async fn acknowledge_archives_keeping_the_relative_path_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let archive_dir = tempfile::tempdir().unwrap();
        write(dir.path(), "in/orders.csv", "id\n1\n");
        write(archive_dir.path(), "in/orders.csv", "older\n");
        write(archive_dir.path(), "in/orders.1.csv", "oldest\n");
        let mut source = FileSource::new(
            dir.path().into(),
            Some(archive_dir.path().into()),
            "in/*.csv",
            csv_settings(10),
            Vec::new(),
        )
        .unwrap();
        let batch = source.next_batch().await.unwrap().unwrap();
        assert!(dir.path().join("in/orders.csv").exists());
        source.acknowledge(&Checkpoint::None).await.unwrap();
        assert!(dir.path().join("in/orders.csv").exists());
        source.acknowledge(&batch.checkpoint).await.unwrap();
        assert!(!dir.path().join("in/orders.csv").exists());
        let archived = std::fs::read_to_string(archive_dir.path().join("in/orders.2.csv")).unwrap();
        assert_eq!(archived, "id\n1\n");
        assert_eq!(
            std::fs::read_to_string(archive_dir.path().join("in/orders.csv")).unwrap(),
            "older\n"
        );
    }

    #[tokio::test]
    async fn an_archive_inside_the_directory_is_not_listed_and_vanished_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.csv", "id\n1\n");
        write(dir.path(), "b.csv", "id\n2\n");
        write(dir.path(), "done/old.csv", "id\n0\n");
        let mut source = FileSource::new(
            dir.path().into(),
            Some(dir.path().join("done")),
            "**/*.csv",
            csv_settings(10),
            Vec::new(),
        )
        .unwrap();
        assert_eq!(source.pending_files(), vec!["a.csv", "b.csv"]);
        std::fs::remove_file(dir.path().join("a.csv")).unwrap();
        let batches = drain(&mut source).await;
        assert_eq!(batches.len(), 1);
        assert_eq!(done(&batches[0]).unwrap().path, "b.csv");
        source.acknowledge(&batches[0].checkpoint).await.unwrap();
        assert!(dir.path().join("done/b.csv").exists());
    }

    #[tokio::test]
    async fn without_archive_dir_acknowledge_leaves_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.csv", "id\n1\n");
        let mut source = FileSource::new(
            dir.path().into(),
            None,
            "*.csv",
            csv_settings(10),
            Vec::new(),
        )
        .unwrap();
        let batch = source.next_batch().await.unwrap().unwrap();
        source.acknowledge(&batch.checkpoint).await.unwrap();
        assert!(dir.path().join("a.csv").exists());
    }

    #[tokio::test]
    async fn ndjson_and_xml_streams_flow_through_the_source() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.ndjson", "{\"id\":1}\nnot json\n{\"id\":2}\n");
        let mut settings = FileStreamSettings::new(FileFormat::Ndjson);
        settings.batch_size = 2;
        let mut source =
            FileSource::new(dir.path().into(), None, "*.ndjson", settings, Vec::new()).unwrap();
        let batches = drain(&mut source).await;
        assert_eq!(batches.len(), 2);
        assert_eq!(
            broken(&batches[0].items[1]).reason,
            "line 2 column 2: expected ident"
        );
        assert_eq!(broken(&batches[0].items[1]).origin.location, "a.ndjson");
        assert_eq!(record(&batches[1].items[0]).value, json!({"id": 2}));

        std::fs::copy(fixture("debmas07.xml"), dir.path().join("debmas.xml")).unwrap();
        let mut settings = FileStreamSettings::new(FileFormat::Xml);
        settings.records = Some("DEBMAS07/IDOC".to_string());
        settings.batch_size = 1;
        let mut source =
            FileSource::new(dir.path().into(), None, "*.xml", settings, Vec::new()).unwrap();
        let batches = drain(&mut source).await;
        assert_eq!(batches.len(), 2);
        assert!(done(&batches[0]).is_none());
        assert_eq!(done(&batches[1]).unwrap().path, "debmas.xml");
        assert_eq!(
            record(&batches[1].items[0]).value["E1KNA1M"]["KUNNR"],
            "0010034885"
        );
    }

    #[test]
    fn xml_without_records_path_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let error = FileSource::new(
            dir.path().into(),
            None,
            "*.xml",
            FileStreamSettings::new(FileFormat::Xml),
            Vec::new(),
        )
        .err()
        .unwrap();
        assert_eq!(
            error.to_string(),
            "XML files need a records path such as \"DEBMAS07/IDOC\""
        );
    }

    #[test]
    fn read_file_parses_csv_fixtures() {
        let mut settings = FileStreamSettings::new(FileFormat::Csv);
        settings.delimiter = b';';
        let items = read_file(&fixture("customers_semicolon.csv"), &settings).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(
            record(&items[0]).value,
            json!({"KUNNR": "0010034884", "NAME1": "Müller; Söhne GmbH", "ORT01": "München", "LAND1": "DE"})
        );
        assert_eq!(record(&items[1]).value["NAME1"], "Tradingpartner \"AT\"");
        assert!(
            record(&items[1])
                .origin
                .location
                .ends_with("customers_semicolon.csv")
        );

        settings.encoding = TextEncoding::Windows1252;
        let items = read_file(&fixture("customers_cp1252.csv"), &settings).unwrap();
        assert_eq!(
            record(&items[0]).value,
            json!({"KUNNR": "0010034886", "NAME1": "Jürgen Weiß", "ORT01": "Köln"})
        );
    }

    #[test]
    fn read_file_of_a_missing_file_names_it() {
        let error = read_file(
            Path::new("/nonexistent/x.csv"),
            &FileStreamSettings::new(FileFormat::Csv),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "/nonexistent/x.csv: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn decoding_reader_decodes_across_chunk_boundaries() {
        // Every byte becomes two UTF-8 bytes, so the 16 KiB output buffer fills many times.
        let input = vec![0xFCu8; 50_000];
        let mut decoded = String::new();
        DecodingReader::new(&input[..], encoding_rs::WINDOWS_1252)
            .read_to_string(&mut decoded)
            .unwrap();
        assert_eq!(decoded.chars().count(), 50_000);
        assert!(decoded.chars().all(|c| c == 'ü'));
    }

    #[test]
    fn decoding_reader_honours_byte_order_marks() {
        let mut text = String::new();
        DecodingReader::new(&b"\xEF\xBB\xBFabc"[..], encoding_rs::WINDOWS_1252)
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "abc");
        let mut text = String::new();
        DecodingReader::new(&b"\xFF\xFEa\x00\xFC\x00"[..], encoding_rs::UTF_8)
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "aü");
    }

    #[test]
    fn tracking_reader_counts_lines_and_caps_the_capture() {
        let input = format!("a\nb\n{}", "x".repeat(RAW_CAP + 10));
        let mut reader = TrackingReader::new(BufReader::with_capacity(7, input.as_bytes()));
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(reader.line(), 2);
        reader.mark();
        let mut rest = String::new();
        reader.read_to_string(&mut rest).unwrap();
        assert_eq!(reader.line(), 3);
        assert_eq!(reader.since_mark(), (RAW_CAP + 12) as u64);
        assert_eq!(reader.captured().len(), RAW_CAP);
        assert!(reader.captured().starts_with(b"b\nxxx"));
    }
}
