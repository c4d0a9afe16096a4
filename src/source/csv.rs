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

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Checkpoint, ROW_CHANNEL, ResumePoint, SourceError, SourceRow, SourceStream, Value};
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
}

impl FileFingerprint {
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        let mut head = Vec::with_capacity(HEAD_BYTES);
        File::open(path)?
            .take(HEAD_BYTES as u64)
            .read_to_end(&mut head)?;
        Ok(Self {
            path: path.display().to_string(),
            size: meta.len(),
            mtime_ns,
            head_sha256: hex(&Sha256::digest(&head)),
        })
    }

    /// Short form used in dead-letter row references.
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
fn bom_len(path: &Path) -> std::io::Result<u64> {
    let mut head = Vec::with_capacity(3);
    open_at(path, 0)?.take(3).read_to_end(&mut head)?;
    Ok(if head == BOM { 3 } else { 0 })
}

/// The file as a byte stream, decompressed when it ends in `.gz`, starting at `offset`.
fn open_at(path: &Path, offset: u64) -> std::io::Result<Box<dyn Read + Send>> {
    let mut file = File::open(path)?;
    if is_gzip(path) {
        let mut decoder =
            flate2::read::MultiGzDecoder::new(BufReader::with_capacity(256 * 1024, file));
        // A gzip stream cannot seek: decompress and discard up to the checkpoint.
        std::io::copy(&mut (&mut decoder).take(offset), &mut std::io::sink())?;
        Ok(Box::new(decoder))
    } else {
        file.seek(SeekFrom::Start(offset))?;
        Ok(Box::new(BufReader::with_capacity(256 * 1024, file)))
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
    let opened = tokio::task::spawn_blocking(move || prepare(&cfg, checkpoint.as_ref()))
        .await
        .map_err(|e| SourceError::Read {
            path: describe.clone(),
            line: 0,
            message: e.to_string(),
        })??;
    let (tx, rx) = mpsc::channel(ROW_CHANNEL);
    let Prepared {
        columns,
        fingerprint,
        start,
        reader,
        cfg_path,
    } = opened;
    let resumed_at = (start.row > 0).then(|| ResumePoint::Csv {
        byte: start.byte,
        line: start.line,
        row: start.row,
    });
    let identity = serde_json::to_value(&fingerprint).unwrap_or_default();
    let ncols = columns.len();
    tokio::task::spawn_blocking(move || {
        read_rows(reader, cfg_path, fingerprint, start, ncols, tx, cancel)
    });
    Ok(SourceStream {
        columns: Arc::new(columns),
        identity,
        resumed_at,
        rows: rx,
        describe: path.display().to_string(),
    })
}

#[derive(Clone, Copy)]
struct Start {
    byte: u64,
    line: u64,
    row: u64,
}

struct Prepared {
    columns: Vec<String>,
    fingerprint: FileFingerprint,
    start: Start,
    reader: csv::Reader<Box<dyn Read + Send>>,
    cfg_path: PathBuf,
}

fn prepare(cfg: &CsvSection, checkpoint: Option<&Checkpoint>) -> Result<Prepared, SourceError> {
    let path = &cfg.path;
    let shown = path.display().to_string();
    let open_err = |source| SourceError::Open {
        path: shown.clone(),
        source,
    };
    let fingerprint = FileFingerprint::of(path).map_err(open_err)?;

    // The header, always from the top of the file (after a byte-order mark, which would
    // otherwise stick to the first column's name).
    let bom = bom_len(path).map_err(open_err)?;
    let mut head = builder(cfg)
        .has_headers(true)
        .from_reader(open_at(path, bom).map_err(open_err)?);
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
        Some(_) => {
            tracing::info!(file = %shown, "The file changed since the last checkpoint; reading it from the start.");
            data_start
        }
        None => data_start,
    };
    let reader = builder(cfg)
        .has_headers(false)
        .from_reader(open_at(path, start.byte).map_err(open_err)?);
    Ok(Prepared {
        columns,
        fingerprint,
        start,
        reader,
        cfg_path: path.clone(),
    })
}

fn read_rows(
    mut reader: csv::Reader<Box<dyn Read + Send>>,
    path: PathBuf,
    fingerprint: FileFingerprint,
    start: Start,
    ncols: usize,
    tx: mpsc::Sender<Result<SourceRow, SourceError>>,
    cancel: CancellationToken,
) {
    let shown = path.display().to_string();
    let mut record = csv::ByteRecord::new();
    let mut row = start.row;
    let short = fingerprint.short();
    loop {
        if cancel.is_cancelled() {
            return;
        }
        match reader.read_byte_record(&mut record) {
            Ok(false) => return,
            Ok(true) => {
                // A blank line (CRLF files: just the `\r`) is not a row.
                if record.len() == 1 && matches!(record.get(0), Some(b"" | b"\r")) {
                    continue;
                }
                row += 1;
                // Positions from this reader count from where it was opened.
                let rec_line = record.position().map(|p| p.line()).unwrap_or(1) + start.line - 1;
                let next = reader.position();
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
}
