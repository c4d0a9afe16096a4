//! The signature check of a reporting-webhook request (customerio-api.md §10).
//!
//! Owns: `X-CIO-Signature` = lowercase hex of HMAC-SHA256(key, `v0:<X-CIO-Timestamp>:<raw
//! body>`), compared in constant time (`Mac::verify_slice`) against every configured key (so a
//! key can be rotated without refusing events), and the timestamp tolerance. Pure: the clock is
//! a parameter. Must not: read the body, parse JSON or answer HTTP (`server.rs` does).

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::config::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Why a request was refused with 401. The names are the `reason` label of the refusal metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the X-CIO-Signature header is missing")]
    MissingSignature,
    #[error("the X-CIO-Timestamp header is missing")]
    MissingTimestamp,
    #[error("X-CIO-Timestamp is not Unix seconds")]
    BadTimestamp,
    #[error(
        "X-CIO-Timestamp is {skew_secs}s away from this machine's clock, beyond `webhooks.tolerance_secs`: check the clock (NTP), or raise the tolerance"
    )]
    Stale { skew_secs: i64 },
    #[error("X-CIO-Signature is not hex")]
    MalformedSignature,
    #[error(
        "X-CIO-Signature matches no configured key: check `webhooks.signing_key(s)` against the key on Customer.io's Reporting Webhooks page"
    )]
    BadSignature,
}

impl Refusal {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::MissingSignature => "missing_signature",
            Refusal::MissingTimestamp => "missing_timestamp",
            Refusal::BadTimestamp => "bad_timestamp",
            Refusal::Stale { .. } => "stale_timestamp",
            Refusal::MalformedSignature => "malformed_signature",
            Refusal::BadSignature => "bad_signature",
        }
    }
}

/// Checks one request: the headers as received (`None` when absent), the raw body, the keys,
/// and `now` in Unix seconds. `Ok` when some key signed exactly these bytes within `tolerance`.
pub fn verify(
    keys: &[Secret],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
    tolerance: Duration,
) -> Result<(), Refusal> {
    let signature = signature.ok_or(Refusal::MissingSignature)?;
    let timestamp = timestamp.ok_or(Refusal::MissingTimestamp)?.trim();
    let ts: i64 = timestamp.parse().map_err(|_| Refusal::BadTimestamp)?;
    let skew = now_secs.saturating_sub(ts);
    let limit = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if skew.unsigned_abs() > limit.unsigned_abs() {
        return Err(Refusal::Stale { skew_secs: skew });
    }
    let given = hex::decode(signature.trim()).map_err(|_| Refusal::MalformedSignature)?;
    for key in keys {
        if mac(key.expose().as_bytes(), timestamp, body)
            .verify_slice(&given)
            .is_ok()
        {
            return Ok(());
        }
    }
    Err(Refusal::BadSignature)
}

/// `hex(HMAC-SHA256(key, "v0:<timestamp>:<body>"))`: what Customer.io puts in
/// `X-CIO-Signature` (for tests and benchmarks that play Customer.io).
pub fn sign(key: &str, timestamp: &str, body: &[u8]) -> String {
    hex::encode(mac(key.as_bytes(), timestamp, body).finalize().into_bytes())
}

fn mac(key: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length (longer ones are hashed first), so this never fails; an
    // empty key is refused by config validation before it gets here.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: Duration = Duration::from_secs(300);

    fn keys(k: &[&str]) -> Vec<Secret> {
        k.iter().map(|k| Secret::new(*k)).collect()
    }

    #[test]
    fn the_signature_is_lowercase_hex_hmac_sha256_of_v0_timestamp_body() {
        let sig = sign("key", "1", b"{}");
        assert_eq!(sig.len(), 64);
        assert!(
            sig.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        // The same input signed twice is the same; a different body or timestamp is not.
        assert_eq!(sig, sign("key", "1", b"{}"));
        assert_ne!(sig, sign("key", "2", b"{}"));
        assert_ne!(sig, sign("key", "1", b"{ }"));
    }

    #[test]
    fn a_vector_computed_elsewhere_matches() {
        // Python: hmac.new(b"secret", b'v0:1613063089:{"a":1}', hashlib.sha256).hexdigest()
        assert_eq!(
            sign("secret", "1613063089", br#"{"a":1}"#),
            "31fdc34cec1c943db81930583dc72c6271d2c41e8664bd17cce30d6d5ef708c9"
        );
    }

    #[test]
    fn any_configured_key_verifies_and_others_do_not() {
        let body = br#"{"event_id":"x"}"#;
        let sig = sign("new", "1000", body);
        assert_eq!(
            verify(
                &keys(&["old", "new"]),
                Some("1000"),
                Some(&sig),
                body,
                1000,
                TOL
            ),
            Ok(())
        );
        assert_eq!(
            verify(&keys(&["old"]), Some("1000"), Some(&sig), body, 1000, TOL),
            Err(Refusal::BadSignature)
        );
        // Upper-case hex of the right digest still decodes to the same bytes.
        assert_eq!(
            verify(
                &keys(&["new"]),
                Some("1000"),
                Some(&sig.to_uppercase()),
                body,
                1000,
                TOL
            ),
            Ok(())
        );
    }

    #[test]
    fn missing_malformed_and_stale_headers_are_refused_by_name() {
        let body = b"{}";
        let sig = sign("k", "1000", body);
        let k = keys(&["k"]);
        assert_eq!(
            verify(&k, Some("1000"), None, body, 1000, TOL),
            Err(Refusal::MissingSignature)
        );
        assert_eq!(
            verify(&k, None, Some(&sig), body, 1000, TOL),
            Err(Refusal::MissingTimestamp)
        );
        assert_eq!(
            verify(&k, Some("soon"), Some(&sig), body, 1000, TOL),
            Err(Refusal::BadTimestamp)
        );
        assert_eq!(
            verify(&k, Some("1000"), Some("zz"), body, 1000, TOL),
            Err(Refusal::MalformedSignature)
        );
        assert_eq!(
            verify(&k, Some("1000"), Some(&sig), body, 1301, TOL),
            Err(Refusal::Stale { skew_secs: 301 })
        );
        assert_eq!(
            verify(&k, Some("1000"), Some(&sig), body, 699, TOL),
            Err(Refusal::Stale { skew_secs: -301 })
        );
        assert_eq!(
            verify(&k, Some("1000"), Some(&sig), body, 1300, TOL),
            Ok(())
        );
        // A tampered body fails even with a fresh timestamp.
        assert_eq!(
            verify(&k, Some("1000"), Some(&sig), b"{ }", 1000, TOL),
            Err(Refusal::BadSignature)
        );
    }
}
