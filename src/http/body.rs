//! What is read of an answer: at most a cap per API ([`MAX_TRACK_ANSWER_BYTES`],
//! [`MAX_APP_ANSWER_BYTES`]), and for a 2xx, only JSON.
//!
//! Owns: the size cap (an announced `Content-Length` is refused before reading; otherwise the
//! decoded body is counted as it streams in and reading stops at the cap, so neither an endless
//! body nor a gzip bomb can grow the process), and the rule that a 2xx must be a JSON document
//! (a proxy's or captive portal's HTML page is not Customer.io's answer).
//! Must not: interpret the JSON (`track/` and `app_api/` do) or decide about retries.

use bytes::{Bytes, BytesMut};

use super::HttpError;

/// The most cio-sync reads of a Track answer. Track answers `{}`, the region, or a 207 listing
/// one error (about 200 bytes) per failed item of a batch of at most 500 KB: a few MB at the
/// very worst.
pub const MAX_TRACK_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// The most cio-sync reads of an App API answer. The largest are membership pages of 30,000
/// members (the API's maximum and our default): typically 3–5 MB, and about 18 MB if every
/// member had a 150-byte id and a 254-byte email (each member is listed in `identifiers` and
/// again in `ids`). Segment and campaign listings are smaller.
pub const MAX_APP_ANSWER_BYTES: usize = 32 * 1024 * 1024;

/// What a 2xx answer must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A JSON document (v2 batch, the region self-check, every App API call).
    Json,
    /// A JSON document, or nothing: the Track v1 operations document no 200 body.
    JsonOrEmpty,
}

/// Reads the body of `resp`, stopping with [`HttpError::TooLarge`] past `limit` bytes. A body
/// that stops early is dropped with its connection, which the pool then does not reuse.
pub(super) async fn read_capped(
    resp: &mut reqwest::Response,
    limit: usize,
) -> Result<Bytes, HttpError> {
    let status = resp.status().as_u16();
    let too_large = HttpError::TooLarge { status, limit };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large);
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(super::HttpError::transport)? {
        if buf.len() + chunk.len() > limit {
            return Err(too_large);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Checks a 2xx body against what the API answers; other statuses pass (their bodies are
/// read leniently where they are interpreted).
pub(super) fn check_answer(
    answer: Answer,
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(), HttpError> {
    if !(200..300).contains(&status) {
        return Ok(());
    }
    if answer == Answer::JsonOrEmpty && body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        return Ok(());
    }
    Err(HttpError::NotJson {
        status,
        content_type: content_type.unwrap_or("none").to_string(),
        body: super::excerpt(&String::from_utf8_lossy(body)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_2xx_must_be_json_and_only_v1_may_be_empty() {
        let ok = |a, s, b: &str| check_answer(a, s, None, b.as_bytes()).is_ok();
        assert!(ok(Answer::Json, 200, "{}"));
        assert!(ok(Answer::Json, 207, r#"{"errors":[]}"#));
        assert!(ok(Answer::JsonOrEmpty, 200, ""));
        assert!(ok(Answer::JsonOrEmpty, 200, " \n"));
        assert!(!ok(Answer::Json, 200, ""));
        assert!(!ok(
            Answer::Json,
            200,
            "<html><body>Welcome to the hotel wifi</body></html>"
        ));
        assert!(!ok(Answer::JsonOrEmpty, 200, "<html></html>"));
        assert!(!ok(Answer::Json, 200, "{\"truncated\": "));
        // Non-2xx bodies are judged where they are read.
        assert!(ok(Answer::Json, 502, "<html>Bad Gateway</html>"));
        let e = check_answer(Answer::Json, 200, Some("text/html"), b"<html>portal</html>")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("text/html") && e.contains("<html>portal</html>"),
            "{e}"
        );
    }
}
