//! [`FileSink`]: the embedded default destination, an append-only NDJSON file.
//!
//! Each event body becomes exactly one line. A send writes its whole slice in one append,
//! then `sync_data()`s the file; only after the sync returns are the events reported
//! confirmed, so a confirmed event survives a crash or power loss. Invariants: a line never
//! contains a raw newline (bodies carrying one are re-serialised compactly), and a torn last
//! line left by an earlier failed write is terminated before new lines are appended, so it can
//! never swallow the next event.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::{OutboxEvent, SendReport, Sink, SinkError};

/// Appends events as NDJSON lines to one file, creating the file and its parents on demand.
#[derive(Debug, Clone)]
pub struct FileSink {
    path: PathBuf,
}

impl FileSink {
    pub fn new(path: PathBuf) -> FileSink {
        FileSink { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl Sink for FileSink {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    async fn send(&mut self, events: &[OutboxEvent]) -> SendReport {
        if events.is_empty() {
            return SendReport::default();
        }
        let destination = self.describe();
        let (lines, written, rejected) = encode_lines(events, &destination);
        if written == 0 {
            return SendReport {
                confirmed: Vec::new(),
                error: rejected,
            };
        }
        let path = self.path.clone();
        // File I/O blocks; keeping it off the async workers keeps the relay's timers honest.
        let outcome = tokio::task::spawn_blocking(move || append_synced(&path, &lines)).await;
        let io_error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(reason)) => Some(reason),
            Err(join) => Some(format!("the writer task failed: {join}")),
        };
        match io_error {
            Some(reason) => SendReport {
                confirmed: Vec::new(),
                error: Some(SinkError::Io {
                    destination,
                    reason,
                }),
            },
            None => SendReport {
                confirmed: events[..written].iter().map(|e| e.seq).collect(),
                error: rejected,
            },
        }
    }
}

/// Encodes the longest prefix of `events` that can be written as single lines.
///
/// Returns the bytes to append, how many events they hold, and the rejection of the first
/// event that cannot be a line (a body with a newline that is not valid JSON).
fn encode_lines(events: &[OutboxEvent], destination: &str) -> (Vec<u8>, usize, Option<SinkError>) {
    let mut lines = Vec::new();
    for (index, event) in events.iter().enumerate() {
        match one_line(&event.body) {
            Ok(line) => {
                lines.extend_from_slice(line.as_bytes());
                lines.push(b'\n');
            }
            Err(reason) => {
                let error = SinkError::Rejected {
                    destination: destination.to_string(),
                    event_id: event.event_id.clone(),
                    reason,
                };
                return (lines, index, Some(error));
            }
        }
    }
    (lines, events.len(), None)
}

/// The body as one line: unchanged when it has no line break, else re-serialised compactly.
fn one_line(body: &str) -> Result<std::borrow::Cow<'_, str>, String> {
    if !body.contains(['\n', '\r']) {
        return Ok(std::borrow::Cow::Borrowed(body));
    }
    // JSON forbids raw line breaks inside strings, so in valid JSON they are only whitespace
    // and a compact re-serialisation (key order preserved) removes them without changing data.
    let value: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| format!("the body spans several lines and is not valid JSON: {e}"))?;
    Ok(std::borrow::Cow::Owned(value.to_string()))
}

/// Appends `lines` to `path` and syncs the data to disk.
fn append_synced(path: &Path, lines: &[u8]) -> Result<(), String> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create directory {}: {e}", parent.display()))?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| format!("cannot open for appending: {e}"))?;
    let start = file
        .metadata()
        .map_err(|e| format!("cannot read file metadata: {e}"))?
        .len();
    let torn = ends_without_newline(&mut file, start)
        .map_err(|e| format!("cannot read the last line: {e}"))?;
    let result = (|| {
        if torn {
            file.write_all(b"\n")?;
        }
        file.write_all(lines)?;
        file.sync_data()
    })();
    if let Err(e) = result {
        // Best effort: cut a partial write back so the file keeps whole lines only. If this
        // fails too, the torn-line check on the next send still protects the next event.
        let _ = file.set_len(start).and_then(|()| file.sync_data());
        return Err(format!("cannot append: {e}"));
    }
    Ok(())
}

fn ends_without_newline(file: &mut File, len: u64) -> std::io::Result<bool> {
    if len == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64, body: &str) -> OutboxEvent {
        OutboxEvent {
            seq,
            event_id: format!("p{seq}:1"),
            event_type: "customer.profile.created".to_string(),
            body: body.to_string(),
        }
    }

    fn lines_of(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[tokio::test]
    async fn appends_one_json_line_per_event_across_sends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feed/nested/events.ndjson");
        let mut sink = FileSink::new(path.clone());

        let first = sink
            .send(&[
                event(1, r#"{"id":"a:1","n":1}"#),
                event(2, r#"{"id":"b:1"}"#),
            ])
            .await;
        assert_eq!(first.confirmed, vec![1, 2]);
        assert!(first.error.is_none());
        let second = sink.send(&[event(3, r#"{"id":"c:1"}"#)]).await;
        assert_eq!(second.confirmed, vec![3]);
        assert!(second.error.is_none());

        let lines = lines_of(&path);
        assert_eq!(
            lines,
            vec![
                r#"{"id":"a:1","n":1}"#,
                r#"{"id":"b:1"}"#,
                r#"{"id":"c:1"}"#
            ]
        );
        let ids: Vec<String> = lines
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["id"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(ids, vec!["a:1", "b:1", "c:1"]);
        assert!(fs::read_to_string(&path).unwrap().ends_with('\n'));
    }

    #[tokio::test]
    async fn multi_line_body_is_written_as_one_line_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        let mut sink = FileSink::new(path.clone());

        let report = sink
            .send(&[event(7, "{\n  \"z\": 1,\r\n  \"a\": \"x y\"\n}")])
            .await;
        assert_eq!(report.confirmed, vec![7]);
        assert_eq!(lines_of(&path), vec![r#"{"z":1,"a":"x y"}"#]);
    }

    #[tokio::test]
    async fn multi_line_non_json_body_stops_the_batch_after_the_good_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        let mut sink = FileSink::new(path.clone());

        let report = sink
            .send(&[
                event(1, r#"{"ok":1}"#),
                event(2, "not\njson"),
                event(3, r#"{"ok":3}"#),
            ])
            .await;
        assert_eq!(report.confirmed, vec![1]);
        let error = report.error.unwrap().to_string();
        assert_eq!(
            error,
            format!(
                "{} rejected event p2:1: the body spans several lines and is not valid JSON: \
                 expected ident at line 1 column 2",
                path.display()
            )
        );
        assert_eq!(lines_of(&path), vec![r#"{"ok":1}"#]);
    }

    #[tokio::test]
    async fn a_torn_last_line_is_terminated_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        fs::write(&path, "{\"whole\":1}\n{\"torn\":").unwrap();
        let mut sink = FileSink::new(path.clone());

        let report = sink.send(&[event(4, r#"{"next":4}"#)]).await;
        assert_eq!(report.confirmed, vec![4]);
        assert_eq!(
            lines_of(&path),
            vec![r#"{"whole":1}"#, r#"{"torn":"#, r#"{"next":4}"#]
        );
    }

    #[tokio::test]
    async fn uncreatable_parent_reports_io_error_and_confirms_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("plain-file");
        fs::write(&blocker, "not a directory").unwrap();
        let path = blocker.join("sub/events.ndjson");
        let mut sink = FileSink::new(path.clone());

        let report = sink.send(&[event(1, "{}"), event(2, "{}")]).await;
        assert!(report.confirmed.is_empty());
        let error = report.error.unwrap();
        assert!(matches!(error, SinkError::Io { .. }), "{error:?}");
        let text = error.to_string();
        let expected_prefix = format!(
            "{}: cannot create directory {}: ",
            path.display(),
            blocker.join("sub").display()
        );
        assert!(text.starts_with(&expected_prefix), "{text}");
        assert!(text.contains("Not a directory"), "{text}");
    }

    #[tokio::test]
    async fn empty_send_touches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        let mut sink = FileSink::new(path.clone());
        let report = sink.send(&[]).await;
        assert!(report.confirmed.is_empty() && report.error.is_none());
        assert!(!path.exists());
        assert_eq!(sink.describe(), path.display().to_string());
    }
}
