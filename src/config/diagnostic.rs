//! Problems found in operator files, as `file:line:column: message`.
//!
//! A [`Diagnostic`] is one problem at one position; [`Diagnostics`] is the whole list a load
//! reports, sorted by file, line and column, and is the error type of
//! [`crate::config::load`]. [`SourceFile`] pairs a file's display path with its text and turns
//! byte offsets (TOML spans) into 1-based line and column numbers, so no diagnostic ever
//! carries line or column 0. [`did_you_mean`] picks the close candidate that messages offer.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem at one position of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as the operator knows it: relative to the current directory when possible.
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    /// 1-based, counted in characters.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every problem a load found, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Orders by file, line and column (keeping the discovery order of ties) and drops exact
    /// repeats, which arise when one value is reached through two references.
    pub(crate) fn sorted(mut list: Vec<Diagnostic>) -> Diagnostics {
        list.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        list.dedup();
        Diagnostics(list)
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// A file's display path and text: the unit diagnostics are positioned in.
#[derive(Debug, Clone)]
pub(crate) struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

impl SourceFile {
    pub fn new(path: PathBuf, text: String) -> SourceFile {
        SourceFile { path, text }
    }

    /// A diagnostic at a byte offset of the text.
    pub fn at(&self, offset: usize, message: impl Into<String>) -> Diagnostic {
        let (line, column) = position(&self.text, offset);
        Diagnostic {
            file: self.path.clone(),
            line,
            column,
            message: message.into(),
        }
    }

    /// A diagnostic at the start of a span, or at 1:1 when the problem has no position.
    pub fn at_span(&self, span: Option<Range<usize>>, message: impl Into<String>) -> Diagnostic {
        self.at(span.map_or(0, |span| span.start), message)
    }

    /// A diagnostic about the file as a whole.
    pub fn whole(&self, message: impl Into<String>) -> Diagnostic {
        file_level(&self.path, message)
    }

    /// Offset of the first line that assigns top-level `key` (`key = ...`), for values whose
    /// type carries no span.
    pub fn key_offset(&self, key: &str) -> Option<usize> {
        let mut offset = 0;
        for line in self.text.split_inclusive('\n') {
            let trimmed = line.trim_start();
            if trimmed.starts_with('[') {
                // Past the top-level table: the key cannot be assigned at top level any more.
                return None;
            }
            if let Some(rest) = trimmed.strip_prefix(key)
                && rest.trim_start().starts_with('=')
            {
                return Some(offset + (line.len() - trimmed.len()));
            }
            offset += line.len();
        }
        None
    }
}

/// A diagnostic about a file that has no text to point into (unreadable, misnamed).
pub(crate) fn file_level(path: &Path, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        file: path.to_path_buf(),
        line: 1,
        column: 1,
        message: message.into(),
    }
}

/// 1-based line and character column of a byte offset; offsets past the end or inside a
/// character are clamped to the nearest preceding character boundary.
pub(crate) fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The candidate closest to `name` when it is close enough to be what was meant: Jaro-Winkler
/// similarity of at least 0.8, or at most two edits (a swap of neighbours counting as one, as
/// in `ulr`/`url`) that change less than half of `name`, so that a short name like `crm` is
/// not "close" to `erp`.
pub(crate) fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best: Option<(&'a str, f64)> = None;
    for candidate in candidates {
        if candidate == name {
            continue;
        }
        let similarity = strsim::jaro_winkler(name, candidate);
        let edits = strsim::osa_distance(name, candidate);
        let close = similarity >= 0.8 || (edits <= 2 && edits * 2 < name.chars().count());
        if close && best.is_none_or(|(_, score)| similarity > score) {
            best = Some((candidate, similarity));
        }
    }
    best.map(|(candidate, _)| candidate)
}

/// `; did you mean "x"?` or nothing.
pub(crate) fn suggestion<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    did_you_mean(name, candidates)
        .map(|candidate| format!("; did you mean \"{candidate}\"?"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let text = "a = 1\nname = \"Müller\" x\n";
        assert_eq!(position(text, 0), (1, 1));
        assert_eq!(position(text, 4), (1, 5));
        assert_eq!(position(text, 6), (2, 1));
        let x = text.find(" x").unwrap() + 1;
        assert_eq!(position(text, x), (2, 17));
        assert_eq!(position(text, 10_000), (3, 1));
    }

    #[test]
    fn display_is_file_line_column_message() {
        let file = SourceFile::new(PathBuf::from("config/demo.toml"), "a\nbc = 1\n".into());
        let diagnostics = Diagnostics::sorted(vec![
            file.at(4, "second"),
            file.whole("first"),
            file.at(4, "second"),
        ]);
        assert_eq!(
            diagnostics.to_string(),
            "config/demo.toml:1:1: first\nconfig/demo.toml:2:3: second"
        );
    }

    #[test]
    fn sorting_is_by_file_then_line_then_column() {
        let a = SourceFile::new(PathBuf::from("a.toml"), "x\ny\n".into());
        let b = SourceFile::new(PathBuf::from("b.toml"), "x\ny\n".into());
        let sorted = Diagnostics::sorted(vec![b.at(0, "b1"), a.at(2, "a2"), a.at(0, "a1")]);
        let messages: Vec<_> = sorted.0.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(messages, ["a1", "a2", "b1"]);
    }

    #[test]
    fn did_you_mean_offers_only_close_names() {
        assert_eq!(did_you_mean("fiel", ["file"]), Some("file"));
        assert_eq!(did_you_mean("htp", ["file"]), None);
        assert_eq!(did_you_mean("sinc", ["sink", "path", "amqp"]), Some("sink"));
        assert_eq!(did_you_mean("a", ["xy"]), None);
        assert_eq!(did_you_mean("crm", ["erp", "shop"]), None);
        assert_eq!(did_you_mean("ulr", ["url"]), Some("url"));
        assert_eq!(did_you_mean("htp", ["http"]), Some("http"));
        assert_eq!(did_you_mean("file", ["file"]), None);
        assert_eq!(
            suggestion("utf8", ["utf-8", "windows-1252"]),
            "; did you mean \"utf-8\"?"
        );
    }

    #[test]
    fn key_offset_finds_top_level_assignments_only() {
        let file = SourceFile::new(
            PathBuf::from("c.toml"),
            "kind = \"file\"\n  empty_values = [1]\n[[stream]]\nempty_values = 2\n".into(),
        );
        assert_eq!(file.key_offset("empty_values"), Some(16));
        assert_eq!(file.key_offset("dir"), None);
    }
}
