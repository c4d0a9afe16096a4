//! Checkpoint lag: how far a job's checkpoint is behind its source, where the source can tell.
//!
//! Owns: reading the lag off a checkpoint: a plain CSV file's bytes past the checkpoint's offset,
//! or, for a SQL cursor holding a timestamp, the time between it and now. Must not: read the
//! source itself beyond the file's size, or guess: a `.gz` file (whose offset counts
//! decompressed bytes) or a cursor that is not a timestamp (an id) has no lag to report.

use std::path::Path;

use crate::config::SourceSpec;
use crate::observe::CheckpointLag;
use crate::source::{Checkpoint, ResumePoint};

/// The lag of `checkpoint` (none yet: the whole source is behind) for the job's source.
pub(crate) fn lag<'a>(
    job: &'a str,
    source: &SourceSpec,
    checkpoint: Option<&Checkpoint>,
    now_unix_secs: f64,
) -> Option<CheckpointLag<'a>> {
    match source {
        SourceSpec::Csv(csv) => {
            if is_gzip(&csv.path) {
                return None;
            }
            let size = std::fs::metadata(&csv.path).ok()?.len();
            let read = match checkpoint.map(|c| &c.resume) {
                Some(ResumePoint::Csv { byte, .. }) => *byte,
                _ => 0,
            };
            Some(CheckpointLag::Bytes {
                job,
                bytes: size.saturating_sub(read),
            })
        }
        SourceSpec::Sql(_) => {
            let Some(ResumePoint::Sql {
                cursor: Some(cursor),
                ..
            }) = checkpoint.map(|c| &c.resume)
            else {
                return None;
            };
            let at = timestamp_secs(cursor)?;
            Some(CheckpointLag::Seconds {
                job,
                seconds: (now_unix_secs - at).max(0.0),
            })
        }
    }
}

fn is_gzip(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

/// A cursor value that is a timestamp, as Unix seconds: RFC 3339 text, or a naive
/// `YYYY-MM-DD HH:MM:SS[.fff]` (read as UTC, as the SQL decoder writes it). Numbers are not
/// taken for timestamps: an integer cursor is usually an id.
fn timestamp_secs(v: &serde_json::Value) -> Option<f64> {
    let text = v.as_str()?;
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_millis() as f64 / 1000.0);
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc().timestamp_millis() as f64 / 1000.0);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_cursor_has_a_lag_and_an_id_cursor_none() {
        assert_eq!(
            timestamp_secs(&serde_json::json!("1970-01-01T00:01:40Z")),
            Some(100.0)
        );
        assert_eq!(
            timestamp_secs(&serde_json::json!("1970-01-01 00:01:40.5")),
            Some(100.5)
        );
        assert_eq!(timestamp_secs(&serde_json::json!(12345)), None);
        assert_eq!(timestamp_secs(&serde_json::json!("u-000001")), None);
    }
}
