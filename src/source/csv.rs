//! CSV files: streaming reads with byte-exact resume.
//!
//! Owns: reading a CSV (or `.csv.gz`) file record by record on a blocking thread, the file's
//! fingerprint (size, modification time, SHA-256 of its head), and seeking to a checkpoint
//! when the file is unchanged. Must not: buffer the file, interpret values (every field is
//! text), or stop at a bad record: an unreadable record is reported as that row's error.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::error::SourceError;
use super::row::{Checkpoint, ResumePoint, RowSender, SourceRow, SourceStream, Value, row_channel};
use crate::config::CsvSource as CsvSection;

/// Bytes of the file's head hashed into its fingerprint.
const HEAD_BYTES: usize = 64 * 1024;

/// What makes a file "the same file" for resume purposes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFingerprint {
    pub path: String,
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
    /// SHA-256 (hex) of the first 64 KiB.
    pub head_sha256: String,
    /// SHA-256 (hex) of the last 4 KiB (uncompressed files): with the head, it tells a file
    /// that only grew (rows appended) from one rewritten, so a grown file resumes where the
    /// checkpoint stands instead of being read again. Absent in checkpoints from before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail_sha256: Option<String>,
}

impl FileFingerprint {
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        let mtime_ns = mtime_ns(&meta);
        let mut head = Vec::with_capacity(HEAD_BYTES);
        // Only bytes within the size just taken: a file that grows is hashed as it was.
        File::open(path)?
            .take((HEAD_BYTES as u64).min(meta.len()))
            .read_to_end(&mut head)?;
        let tail_sha256 = if is_gzip(path) {
            None
        } else {
            Some(range_sha256(
                path,
                meta.len().saturating_sub(TAIL_BYTES),
                meta.len(),
            )?)
        };
        Ok(Self {
            path: path.display().to_string(),
            size: meta.len(),
            mtime_ns,
            head_sha256: hex(&Sha256::digest(&head)),
            tail_sha256,
        })
    }

    /// Whether `self` (the file now) is `old` with bytes appended: larger, and the same
    /// bytes where `old` took its head and tail hashes. Cheap (two short reads); a file
    /// rewritten with other content in between is not caught, but a re-export is (its tail
    /// moves).
    fn grew_from(&self, old: &FileFingerprint, path: &Path) -> bool {
        let Some(old_tail) = &old.tail_sha256 else {
            return false;
        };
        if old.path != self.path || self.size <= old.size || self.tail_sha256.is_none() {
            return false;
        }
        let head_len = (HEAD_BYTES as u64).min(old.size);
        let head = range_sha256(path, 0, head_len);
        let tail = range_sha256(path, old.size.saturating_sub(TAIL_BYTES), old.size);
        matches!((head, tail), (Ok(h), Ok(t)) if h == old.head_sha256 && &t == old_tail)
    }

    /// The fingerprint as a checkpoint stores it. A JSON number holds at most `u64`, so a
    /// modification time past the year 2554 cannot be stored; resuming from a `null` would
    /// never match and would silently re-send the whole file, so that is an error.
    fn identity(&self) -> Result<serde_json::Value, SourceError> {
        serde_json::to_value(self).map_err(|e| SourceError::Identity {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }

    /// Short identity of this exact file (size, time and head together), used in dead-letter
    /// row references so line 5000 of tonight's export never overwrites line 5000 of last
    /// night's, even when their first 64 KiB are the same.
    fn short(&self) -> String {
        let d = Sha256::digest(
            format!("{}:{}:{}", self.size, self.mtime_ns, self.head_sha256).as_bytes(),
        );
        hex(&d[..8])
    }
}

/// Bytes at the end of a file its tail hash covers.
const TAIL_BYTES: u64 = 4096;

/// SHA-256 (hex) of bytes `from..to` of a file.
fn range_sha256(path: &Path, from: u64, to: u64) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::with_capacity(to.saturating_sub(from) as usize);
    f.take(to.saturating_sub(from)).read_to_end(&mut buf)?;
    Ok(hex(&Sha256::digest(&buf)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_gzip(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

fn builder(cfg: &CsvSection) -> csv::ReaderBuilder {
    let mut b = csv::ReaderBuilder::new();
    b.delimiter(cfg.delimiter as u8)
        .quote(cfg.quote as u8)
        .double_quote(cfg.double_quote)
        .escape(cfg.escape.map(|c| c as u8))
        .quoting(cfg.quoting)
        .trim(if cfg.trim {
            csv::Trim::All
        } else {
            csv::Trim::None
        })
        // Lines end at `\n`; a `\r` before it is dropped from the last field (see `decode`).
        // csv's default CRLF mode ends records at the `\r` and counts lines one short.
        .terminator(csv::Terminator::Any(b'\n'))
        // Records with the wrong number of fields are reported per row, not as a fatal error.
        .flexible(true);
    b
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// 3 when the (decompressed) file starts with a UTF-8 byte-order mark, else 0.
fn bom_len(path: &Path, size: u64) -> std::io::Result<u64> {
    let mut head = Vec::with_capacity(3);
    open_at(path, 0, size)?.take(3).read_to_end(&mut head)?;
    Ok(if head == BOM { 3 } else { 0 })
}

/// The file as a byte stream, decompressed when it ends in `.gz`, starting at `offset` and
/// ending at `size` bytes of the file on disk: what was fingerprinted, never what an exporter
/// appended since.
fn open_at(path: &Path, offset: u64, size: u64) -> std::io::Result<Box<dyn Read + Send>> {
    let mut file = File::open(path)?;
    if is_gzip(path) {
        let mut decoder = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
            256 * 1024,
            file.take(size),
        ));
        // A gzip stream cannot seek: decompress and discard up to the checkpoint.
        std::io::copy(&mut (&mut decoder).take(offset), &mut std::io::sink())?;
        Ok(Box::new(decoder))
    } else {
        file.seek(SeekFrom::Start(offset))?;
        let rest = size.saturating_sub(offset);
        Ok(Box::new(BufReader::with_capacity(
            256 * 1024,
            file.take(rest),
        )))
    }
}

/// What a reader has seen of its byte stream, shared with the loop that reads records, so it
/// can tell a final record that ended with a newline from one cut off at the end of the data.
#[derive(Default)]
struct Seen {
    /// Bytes handed to the CSV parser (of the decompressed stream, from where it was opened).
    bytes: AtomicU64,
    /// The last byte handed out, or `NONE` before the first.
    last: AtomicU16,
}

impl Seen {
    const NONE: u16 = u16::MAX;

    fn new() -> Arc<Self> {
        Arc::new(Self {
            bytes: AtomicU64::new(0),
            last: AtomicU16::new(Self::NONE),
        })
    }

    /// `true` when a record ending at `end` (reader-relative) is the stream's last bytes and
    /// no newline closes it.
    fn ends_unterminated(&self, end: u64) -> bool {
        end == self.bytes.load(Ordering::Relaxed)
            && self.last.load(Ordering::Relaxed) != u16::from(b'\n')
    }
}

/// A byte stream that records what it handed out in a [`Seen`].
struct Watched<R> {
    inner: R,
    seen: Arc<Seen>,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(&b) = buf[..n].last() {
            self.seen.bytes.fetch_add(n as u64, Ordering::Relaxed);
            self.seen.last.store(u16::from(b), Ordering::Relaxed);
        }
        Ok(n)
    }
}

pub async fn open(
    cfg: &CsvSection,
    checkpoint: Option<&Checkpoint>,
    cancel: CancellationToken,
) -> Result<SourceStream, SourceError> {
    let cfg = cfg.clone();
    let checkpoint = checkpoint.cloned();
    let path = cfg.path.clone();
    let describe = path.display().to_string();
    // Opening touches the disk: keep it off the async workers.
    let opened =
        tokio::task::spawn_blocking(move || prepare(&cfg, checkpoint.as_ref(), SystemTime::now()))
            .await
            .map_err(|e| SourceError::Read {
                path: describe.clone(),
                line: 0,
                message: e.to_string(),
            })??;
    Ok(opened.stream(cancel))
}

#[derive(Clone, Copy)]
struct Start {
    byte: u64,
    line: u64,
    row: u64,
}

/// An opened file: its header read, its reader positioned where the read starts.
struct Prepared {
    columns: Vec<String>,
    fingerprint: FileFingerprint,
    /// The fingerprint as stored in checkpoints.
    identity: serde_json::Value,
    start: Start,
    reader: csv::Reader<Box<dyn Read + Send>>,
    seen: Arc<Seen>,
    cfg_path: PathBuf,
}

impl Prepared {
    /// Starts reading on a blocking thread.
    fn stream(self, cancel: CancellationToken) -> SourceStream {
        let (mut tx, rx) = row_channel();
        let resumed_at = (self.start.row > 0).then(|| ResumePoint::Csv {
            byte: self.start.byte,
            line: self.start.line,
            row: self.start.row,
        });
        let columns = Arc::new(self.columns.clone());
        let identity = self.identity.clone();
        let describe = self.cfg_path.display().to_string();
        tokio::task::spawn_blocking(move || {
            self.read_rows(&mut tx, &cancel);
            // Whatever ended the read, the rows read so far still go.
            let _ = tx.blocking_flush();
        });
        SourceStream {
            columns,
            identity,
            resumed_at,
            rows: rx,
            describe,
        }
    }

    fn read_rows(mut self, tx: &mut RowSender, cancel: &CancellationToken) {
        let shown = self.cfg_path.display().to_string();
        let ncols = self.columns.len();
        let start = self.start;
        let mut record = csv::ByteRecord::new();
        let mut row = start.row;
        let short = self.fingerprint.short();
        let mut since_check = 63u32;
        loop {
            // The token takes a lock: asked every 64 records, not every record.
            since_check += 1;
            if since_check >= 64 {
                since_check = 0;
                if cancel.is_cancelled() {
                    return;
                }
            }
            match self.reader.read_byte_record(&mut record) {
                Ok(false) => return,
                Ok(true) => {
                    // A blank line (CRLF files: just the `\r`) is not a row.
                    if record.len() == 1 && matches!(record.get(0), Some(b"" | b"\r")) {
                        continue;
                    }
                    // Positions from this reader count from where it was opened.
                    let rec_line =
                        record.position().map(|p| p.line()).unwrap_or(1) + start.line - 1;
                    let next = self.reader.position();
                    if self.seen.ends_unterminated(next.byte())
                        && let Some(why) = changed_since(&self.cfg_path, &self.fingerprint)
                    {
                        // An exporter is still writing: the last line may be half of a row.
                        // Its bytes stay unread, so the next run reads the whole line.
                        tracing::warn!(
                            file = %shown,
                            line = rec_line,
                            change = %why,
                            "The file changed while it was read and its last line has no newline yet; that line was not sent. The next run reads it once it is complete (or set `source.csv.min_age_secs`)."
                        );
                        return;
                    }
                    row += 1;
                    let resume = ResumePoint::Csv {
                        byte: start.byte + next.byte(),
                        line: start.line + next.line() - 1,
                        row,
                    };
                    let values = decode(&record, ncols);
                    let raw = values
                        .is_err()
                        .then(|| String::from_utf8_lossy(&join(&record)).into_owned());
                    let item = SourceRow {
                        line: rec_line,
                        row_ref: format!("{short}#L{rec_line}"),
                        resume,
                        values,
                        raw,
                    };
                    if tx.blocking_send(Ok(item)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let line = e.position().map(|p| p.line() + start.line - 1).unwrap_or(0);
                    // Nobody listens any more when this fails: the run already stopped.
                    let _ = tx.blocking_send(Err(SourceError::Read {
                        path: shown,
                        line,
                        message: e.to_string(),
                    }));
                    return;
                }
            }
        }
    }
}

/// How the file differs now from its fingerprint (size or modification time), if it does.
fn changed_since(path: &Path, fingerprint: &FileFingerprint) -> Option<String> {
    match std::fs::metadata(path) {
        Err(e) => Some(format!("it can no longer be read: {e}")),
        Ok(meta) if meta.len() != fingerprint.size => Some(format!(
            "its size went from {} to {} bytes",
            fingerprint.size,
            meta.len()
        )),
        Ok(meta) if mtime_ns(&meta) != fingerprint.mtime_ns => {
            Some("its modification time changed".into())
        }
        Ok(_) => None,
    }
}

fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    // A file system without modification times: every file looks unchanged, as before.
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// Column names the header repeats (empty names, from trailing delimiters, are not names).
fn repeated_column(columns: &[String]) -> Option<(&str, usize, usize)> {
    let mut first = std::collections::HashMap::new();
    for (i, c) in columns.iter().enumerate() {
        if c.is_empty() {
            continue;
        }
        if let Some(&at) = first.get(c.as_str()) {
            return Some((c.as_str(), at + 1, i + 1));
        }
        first.insert(c.as_str(), i);
    }
    None
}

fn prepare(
    cfg: &CsvSection,
    checkpoint: Option<&Checkpoint>,
    now: SystemTime,
) -> Result<Prepared, SourceError> {
    let path = &cfg.path;
    let shown = path.display().to_string();
    let open_err = |source| SourceError::Open {
        path: shown.clone(),
        source,
    };
    let fingerprint = FileFingerprint::of(path).map_err(open_err)?;
    if let Some(min_age) = cfg.min_age.map(|d| d.as_secs()) {
        let modified = std::time::UNIX_EPOCH
            + std::time::Duration::from_nanos(fingerprint.mtime_ns.max(0) as u64);
        // A modification time in the future counts as "just now".
        let age = now.duration_since(modified).unwrap_or_default();
        if age.as_secs() < min_age {
            return Err(SourceError::TooRecent {
                path: shown,
                age_secs: age.as_secs(),
                min_age_secs: min_age,
            });
        }
    }
    let identity = fingerprint.identity()?;
    let size = fingerprint.size;

    // The header, always from the top of the file (after a byte-order mark, which would
    // otherwise stick to the first column's name).
    let bom = bom_len(path, size).map_err(open_err)?;
    let mut head = builder(cfg)
        .has_headers(true)
        .from_reader(open_at(path, bom, size).map_err(open_err)?);
    let columns: Vec<String> = head
        .headers()
        .map_err(|e| SourceError::Header {
            path: shown.clone(),
            message: e.to_string(),
        })?
        .iter()
        .map(|h| h.trim_end_matches('\r').to_string())
        .collect();
    if columns.is_empty() || columns.iter().all(|c| c.is_empty()) {
        return Err(SourceError::Header {
            path: shown,
            message: "the file is empty; the first line must name the columns".into(),
        });
    }
    if let Some((name, first, again)) = repeated_column(&columns) {
        return Err(SourceError::Header {
            path: shown,
            message: format!(
                "column `{name}` is named twice (columns {first} and {again}), so it is unclear which one the mapping means; rename or remove one in the file"
            ),
        });
    }
    let data_start = Start {
        byte: bom + head.position().byte(),
        line: head.position().line(),
        row: 0,
    };
    drop(head);

    let start = match checkpoint {
        Some(Checkpoint {
            source,
            resume: ResumePoint::Csv { byte, line, row },
            ..
        }) if serde_json::from_value::<FileFingerprint>(source.clone())
            .ok()
            .as_ref()
            == Some(&fingerprint) =>
        {
            Start {
                byte: *byte,
                line: *line,
                row: *row,
            }
        }
        Some(Checkpoint {
            source,
            resume: ResumePoint::Csv { byte, line, row },
            ..
        }) if serde_json::from_value::<FileFingerprint>(source.clone())
            .ok()
            .is_some_and(|old| fingerprint.grew_from(&old, path)) =>
        {
            tracing::info!(file = %shown, "The file grew since the last checkpoint; reading only what was appended.");
            Start {
                byte: *byte,
                line: *line,
                row: *row,
            }
        }
        Some(_) => {
            tracing::info!(file = %shown, "The file changed since the last checkpoint; reading it from the start.");
            data_start
        }
        None => data_start,
    };
    let seen = Seen::new();
    let watched = Watched {
        inner: open_at(path, start.byte, size).map_err(open_err)?,
        seen: seen.clone(),
    };
    let reader = builder(cfg)
        .has_headers(false)
        .from_reader(Box::new(watched) as Box<dyn Read + Send>);
    Ok(Prepared {
        columns,
        fingerprint,
        identity,
        start,
        reader,
        seen,
        cfg_path: path.clone(),
    })
}

fn join(record: &csv::ByteRecord) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, f) in record.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(f);
    }
    out
}

fn decode(record: &csv::ByteRecord, ncols: usize) -> Result<Vec<Value>, String> {
    if record.len() != ncols {
        return Err(format!(
            "has {} fields, but the header has {ncols}",
            record.len()
        ));
    }
    let last = record.len().saturating_sub(1);
    record
        .iter()
        .enumerate()
        .map(|(i, f)| {
            // The `\r` of a CRLF line ending stays with the last field: drop it.
            let f = if i == last {
                f.strip_suffix(b"\r").unwrap_or(f)
            } else {
                f
            };
            std::str::from_utf8(f)
                .map(|s| Value::Text(s.to_string()))
                .map_err(|e| {
                    format!(
                        "field {} is not valid UTF-8 ({e}); re-export the file as UTF-8",
                        i + 1
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn cfg(path: &Path) -> CsvSection {
        CsvSection {
            path: path.to_path_buf(),
            delimiter: ',',
            quote: '"',
            double_quote: true,
            escape: None,
            quoting: true,
            trim: false,
            min_age: None,
        }
    }

    async fn collect(s: &mut SourceStream) -> Vec<SourceRow> {
        let mut out = Vec::new();
        while let Some(r) = s.rows.recv().await {
            out.push(r.expect("row"));
        }
        out
    }

    fn text(r: &SourceRow) -> Vec<String> {
        r.values
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| v.to_text().unwrap_or_default())
            .collect()
    }

    #[tokio::test]
    async fn reads_bom_quotes_and_reports_bad_rows_with_their_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.csv");
        let mut f = File::create(&p).unwrap();
        f.write_all(
            b"\xEF\xBB\xBFid,name\n1,\"Ann, \"\"A\"\"\"\n2\n3,\"multi\nline\"\n4,\xff\n5,e\n",
        )
        .unwrap();
        drop(f);
        let mut s = open(&cfg(&p), None, CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(*s.columns, vec!["id".to_string(), "name".to_string()]);
        let rows = collect(&mut s).await;
        assert_eq!(rows.len(), 5);
        assert_eq!(text(&rows[0]), vec!["1", "Ann, \"A\""]);
        assert_eq!(rows[0].line, 2);
        assert!(rows[1].values.as_ref().unwrap_err().contains("1 fields"));
        assert_eq!(rows[1].line, 3);
        assert_eq!(text(&rows[2]), vec!["3", "multi\nline"]);
        assert_eq!(rows[3].line, 6);
        assert!(rows[3].values.as_ref().unwrap_err().contains("UTF-8"));
        assert_eq!(rows[4].line, 7);
    }

    #[tokio::test]
    async fn resumes_at_the_checkpoint_when_unchanged_and_restarts_when_changed() {
        for gz in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join(if gz { "a.csv.gz" } else { "a.csv" });
            let body: String = std::iter::once("id,v\n".to_string())
                .chain((1..=100).map(|i| format!("{i},x{i}\n")))
                .collect();
            let write = |body: &str| {
                if gz {
                    let mut e = flate2::write::GzEncoder::new(
                        File::create(&p).unwrap(),
                        flate2::Compression::fast(),
                    );
                    e.write_all(body.as_bytes()).unwrap();
                    e.finish().unwrap();
                } else {
                    std::fs::write(&p, body).unwrap();
                }
            };
            write(&body);
            let mut s = open(&cfg(&p), None, CancellationToken::new())
                .await
                .unwrap();
            let rows = collect(&mut s).await;
            assert_eq!(rows.len(), 100);
            let cp = Checkpoint {
                source: s.identity.clone(),
                resume: rows[41].resume.clone(),
                complete: false,
            };
            let mut s2 = open(&cfg(&p), Some(&cp), CancellationToken::new())
                .await
                .unwrap();
            let rest = collect(&mut s2).await;
            assert_eq!(rest.len(), 58, "gz={gz}");
            assert_eq!(text(&rest[0]), vec!["43", "x43"]);
            assert_eq!(rest[0].line, 44);
            assert_eq!(rest[0].resume, rows[42].resume);

            // A different file at the same path starts over.
            write("id,v\n1,y\n");
            let mut s3 = open(&cfg(&p), Some(&cp), CancellationToken::new())
                .await
                .unwrap();
            assert_eq!(collect(&mut s3).await.len(), 1);
        }
    }

    #[tokio::test]
    async fn crlf_files_and_a_bom_before_a_quoted_header_keep_lines_and_names_right() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.csv");
        std::fs::write(
            &p,
            b"\xEF\xBB\xBF\"id\",\"name\"\r\n1,a\r\n2,\"b\r\nc\"\r\n3,d\r\n",
        )
        .unwrap();
        let mut s = open(&cfg(&p), None, CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(*s.columns, vec!["id".to_string(), "name".to_string()]);
        let rows = collect(&mut s).await;
        assert_eq!(
            rows.iter().map(|r| r.line).collect::<Vec<_>>(),
            vec![2, 3, 5]
        );
        assert_eq!(text(&rows[1]), vec!["2", "b\r\nc"]);
        // Resuming after the second row continues at the third, on its line.
        let cp = Checkpoint {
            source: s.identity.clone(),
            resume: rows[1].resume.clone(),
            complete: false,
        };
        let rest = collect(
            &mut open(&cfg(&p), Some(&cp), CancellationToken::new())
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(rest.len(), 1);
        assert_eq!(text(&rest[0]), vec!["3", "d"]);
        assert_eq!(rest[0].line, 5);
    }

    #[tokio::test]
    async fn honours_delimiter_and_quote_settings() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.tsv");
        std::fs::write(&p, "id;name\n1;'a;b'\n").unwrap();
        let mut c = cfg(&p);
        c.delimiter = ';';
        c.quote = '\'';
        let mut s = open(&c, None, CancellationToken::new()).await.unwrap();
        assert_eq!(text(&collect(&mut s).await[0]), vec!["1", "a;b"]);
    }

    fn append(p: &Path, bytes: &[u8]) {
        std::fs::OpenOptions::new()
            .append(true)
            .open(p)
            .unwrap()
            .write_all(bytes)
            .unwrap();
    }

    /// Opens like `open`, lets the test change the file between opening and reading.
    async fn open_then(p: &Path, between: impl FnOnce()) -> (Vec<SourceRow>, FileFingerprint) {
        let prepared = prepare(&cfg(p), None, SystemTime::now()).unwrap();
        let fingerprint = prepared.fingerprint.clone();
        between();
        let mut s = prepared.stream(CancellationToken::new());
        (collect(&mut s).await, fingerprint)
    }

    #[tokio::test]
    async fn rows_appended_after_the_file_was_opened_are_left_for_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.csv");
        std::fs::write(&p, "id,v\n1,a\n").unwrap();
        let (rows, fp) = open_then(&p, || append(&p, b"2,b\n3,c\n")).await;
        assert_eq!(
            rows.iter().map(text).collect::<Vec<_>>(),
            vec![vec!["1", "a"]]
        );
        let ResumePoint::Csv { byte, .. } = rows[0].resume else {
            panic!("a CSV position")
        };
        assert_eq!(
            byte, fp.size,
            "the checkpoint ends where the fingerprint does"
        );
    }

    #[tokio::test]
    async fn a_half_written_last_line_is_not_sent_while_the_exporter_appends() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.csv");
        std::fs::write(&p, "id,v\n1,a\n2,b").unwrap();
        let (rows, fp) = open_then(&p, || append(&p, b"b\n3,c\n")).await;
        assert_eq!(
            rows.iter().map(text).collect::<Vec<_>>(),
            vec![vec!["1", "a"]]
        );
        let ResumePoint::Csv { byte, .. } = rows[0].resume else {
            panic!("a CSV position")
        };
        assert!(byte <= fp.size);

        // Once complete, the next run reads the whole row, never the half one.
        let mut s = open(&cfg(&p), None, CancellationToken::new())
            .await
            .unwrap();
        let all: Vec<_> = collect(&mut s).await.iter().map(text).collect();
        assert_eq!(all, vec![vec!["1", "a"], vec!["2", "bb"], vec!["3", "c"]]);
    }

    #[tokio::test]
    async fn a_half_written_quoted_line_is_not_sent_when_the_file_is_rewritten_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.csv");
        std::fs::write(&p, "id,v\n1,a\n2,\"multi\nli").unwrap();
        let (rows, _) = open_then(&p, || {
            // Same size, new content and time: only the modification time tells.
            let f = File::options().write(true).open(&p).unwrap();
            f.set_modified(SystemTime::now() + std::time::Duration::from_secs(5))
                .unwrap();
        })
        .await;
        assert_eq!(
            rows.iter().map(text).collect::<Vec<_>>(),
            vec![vec!["1", "a"]]
        );
    }

    #[tokio::test]
    async fn a_last_line_without_newline_is_sent_when_the_file_did_not_change() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.csv");
        std::fs::write(&p, "id,v\n1,a\n2,b").unwrap();
        let (rows, _) = open_then(&p, || {}).await;
        assert_eq!(
            rows.iter().map(text).collect::<Vec<_>>(),
            vec![vec!["1", "a"], vec!["2", "b"]]
        );
    }

    #[test]
    fn a_file_younger_than_min_age_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.csv");
        std::fs::write(&p, "id,v\n1,a\n").unwrap();
        let modified = std::fs::metadata(&p).unwrap().modified().unwrap();
        let mut c = cfg(&p);
        c.min_age = Some(std::time::Duration::from_secs(60));
        let err = prepare(&c, None, modified + std::time::Duration::from_secs(10))
            .err()
            .expect("too recent");
        assert_eq!(
            err.to_string(),
            format!(
                "{}: modified 10 s ago, less than `source.csv.min_age_secs` (60 s), so it may still be being written; nothing was read and the checkpoint is unchanged; the next run reads it once it is older",
                p.display()
            )
        );
        assert!(prepare(&c, None, modified + std::time::Duration::from_secs(60)).is_ok());
    }

    #[tokio::test]
    async fn a_header_naming_a_column_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.csv");
        std::fs::write(&p, "id,email,name,email\n1,a@x,A,b@x\n").unwrap();
        let err = open(&cfg(&p), None, CancellationToken::new())
            .await
            .err()
            .expect("refused");
        assert_eq!(
            err.to_string(),
            format!(
                "{}: the header row is missing or unreadable: column `email` is named twice (columns 2 and 4), so it is unclear which one the mapping means; rename or remove one in the file",
                p.display()
            )
        );
        // Empty names from trailing delimiters are not names.
        std::fs::write(&p, "id,,\n1,,\n").unwrap();
        assert!(open(&cfg(&p), None, CancellationToken::new()).await.is_ok());
    }

    #[test]
    fn a_file_whose_identity_cannot_be_stored_is_an_error_not_a_null_identity() {
        let fp = FileFingerprint {
            path: "exports/a.csv".into(),
            size: 5,
            mtime_ns: i128::MAX,
            head_sha256: String::new(),
            tail_sha256: None,
        };
        let err = fp.identity().expect_err("an identity error");
        assert!(matches!(err, SourceError::Identity { .. }), "{err}");
        assert!(err.to_string().starts_with("exports/a.csv: "), "{err}");
        assert!(err.to_string().contains("`touch` it"), "{err}");
        let ok = FileFingerprint { mtime_ns: 1, ..fp };
        assert!(ok.identity().unwrap().is_object());
    }
}
