//! Playing Customer.io's reporting-webhook sender (customerio-objects.md §4): events in its
//! payload shapes, signed as it signs them, posted to a URL with its retry rule.
//!
//! Owns: sample events ([`sample_events`]), signing (`X-CIO-Timestamp`, `X-CIO-Signature` =
//! hex HMAC-SHA256 of `v0:<ts>:<body>`; written here again, not borrowed from the receiver,
//! so the two check each other), the deliberately wrong variants ([`Signing`]), and the
//! sender's order and retry rule: events go one at a time, in order; a failed one is retried
//! and every later one waits behind it; after one of [`LONG_WAIT_STATUSES`] (or a transport
//! error) the wait is the long one (an hour at Customer.io), otherwise exponential backoff;
//! each attempt has a 4-second timeout. Durations are parameters, so tests and the demo run
//! the rule in milliseconds.
//! Must not: depend on other cio-sync modules, or post anywhere but the URL it is given.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// Statuses after which Customer.io waits an hour before retrying (customerio-objects.md §4.3).
pub const LONG_WAIT_STATUSES: [u16; 11] = [400, 401, 402, 403, 404, 405, 410, 429, 500, 502, 521];

/// Customer.io's timeout for one delivery attempt.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(4);

/// How a request is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    /// As Customer.io signs: now, with the key.
    Valid,
    /// A signature made with another key.
    BadSignature,
    /// Signed correctly, but with a timestamp `secs` in the past.
    Stale { secs: i64 },
    /// No `X-CIO-Signature` header.
    Unsigned,
}

/// The sender's retry rule, with its waits scaled by the caller.
#[derive(Debug, Clone)]
pub struct RetryRule {
    /// The first backoff; each later one doubles, up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The wait after a [`LONG_WAIT_STATUSES`] answer or a transport error (1 h at Customer.io).
    pub long_wait: Duration,
    /// Attempts per event before the sender gives up on it (Customer.io: seven days' worth).
    pub max_attempts: u32,
}

impl Default for RetryRule {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            long_wait: Duration::from_secs(1),
            max_attempts: 10,
        }
    }
}

/// What happened to one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub event_id: String,
    /// Each attempt's status; 0 when no HTTP answer came (refused, reset, timed out).
    pub attempts: Vec<u16>,
    /// The last attempt was a 2xx.
    pub delivered: bool,
}

/// Posts reporting-webhook events to one URL.
#[derive(Clone)]
pub struct WebhookPoster {
    url: String,
    key: String,
    client: reqwest::Client,
}

impl std::fmt::Debug for WebhookPoster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookPoster")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// `hex(HMAC-SHA256(key, "v0:<timestamp>:<body>"))`.
pub fn signature(key: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl WebhookPoster {
    /// A poster to `url` signing with `key`.
    pub fn new(url: impl Into<String>, key: impl Into<String>) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Self {
            url: url.into(),
            key: key.into(),
            client,
        })
    }

    /// One attempt: the status, or the transport error's text.
    pub async fn post(&self, body: &[u8], signing: Signing) -> Result<u16, String> {
        let mut ts = now_secs();
        let mut key = self.key.clone();
        match signing {
            Signing::Valid | Signing::Unsigned => {}
            Signing::BadSignature => key.push_str("-not-the-key"),
            Signing::Stale { secs } => ts -= secs,
        }
        let ts = ts.to_string();
        let mut req = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("x-cio-timestamp", &ts)
            .body(body.to_vec());
        if signing != Signing::Unsigned {
            req = req.header("x-cio-signature", signature(&key, &ts, body));
        }
        match req.send().await {
            Ok(resp) => Ok(resp.status().as_u16()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Delivers `events` as Customer.io does: in order, each until a 2xx or `max_attempts`,
    /// the later ones waiting behind it; every attempt signed afresh.
    pub async fn deliver(&self, events: &[Value], rule: &RetryRule) -> Vec<Delivery> {
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            let body = event.to_string().into_bytes();
            let event_id = event
                .get("event_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let mut attempts = Vec::new();
            let mut backoff = rule.backoff_base;
            let mut delivered = false;
            while (attempts.len() as u32) < rule.max_attempts.max(1) {
                let status = self.post(&body, Signing::Valid).await.unwrap_or(0);
                attempts.push(status);
                if (200..300).contains(&status) {
                    delivered = true;
                    break;
                }
                if (attempts.len() as u32) >= rule.max_attempts.max(1) {
                    break;
                }
                let wait = if status == 0 || LONG_WAIT_STATUSES.contains(&status) {
                    rule.long_wait
                } else {
                    let w = backoff;
                    backoff = (backoff * 2).min(rule.backoff_max);
                    w
                };
                tokio::time::sleep(wait).await;
            }
            out.push(Delivery {
                event_id,
                attempts,
                delivered,
            });
        }
        out
    }
}

/// `n` events in Customer.io's shapes, ids `<prefix>-<i>`: email, sms, push and customer
/// events from campaigns, broadcasts and newsletters, and every seventh one a metric no
/// published schema lists (receivers must store it, not refuse it).
pub fn sample_events(prefix: &str, n: usize) -> Vec<Value> {
    let ts = now_secs();
    (0..n)
        .map(|i| {
            let person = format!("{}", 1000 + i % 50);
            let email = format!("person{}@example.com", i % 50);
            let ids = json!({"id": person, "email": email, "cio_id": format!("cio{person}")});
            let event_id = format!("{prefix}-{i:06}");
            let delivery = format!("dlv{i:08}");
            let (object_type, metric, data) = match i % 7 {
                0 => ("email", "sent", json!({"campaign_id": 7, "action_id": 42, "delivery_id": delivery, "identifiers": ids, "customer_id": person, "recipient": email, "subject": "Welcome"})),
                1 => ("email", "opened", json!({"campaign_id": 7, "action_id": 42, "delivery_id": delivery, "identifiers": ids, "recipient": email, "prefetched": false, "proxied": false})),
                2 => ("email", "clicked", json!({"broadcast_id": 3, "trigger_id": 11, "action_id": 9, "delivery_id": delivery, "identifiers": ids, "recipient": email, "href": "https://example.com/x", "link_id": 1})),
                3 => ("sms", "delivered", json!({"newsletter_id": 5, "content_id": 2, "delivery_id": delivery, "identifiers": ids, "recipient": "+15555550100"})),
                4 => ("push", "sent", json!({"transactional_message_id": 8, "delivery_id": delivery, "identifiers": ids, "recipients": [{"device_id": "dev1", "device_platform": "ios"}]})),
                5 => ("customer", "subscribed", json!({"customer_id": person, "email_address": email, "identifiers": ids})),
                _ => ("email", "teleported", json!({"campaign_id": 7, "delivery_id": delivery, "identifiers": ids, "novel_field": {"nested": [1, 2]}})),
            };
            json!({"event_id": event_id, "object_type": object_type, "metric": metric, "timestamp": ts, "data": data})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_a_vector_computed_elsewhere() {
        // Python: hmac.new(b"secret", b'v0:1613063089:{"a":1}', hashlib.sha256).hexdigest()
        assert_eq!(
            signature("secret", "1613063089", br#"{"a":1}"#),
            "31fdc34cec1c943db81930583dc72c6271d2c41e8664bd17cce30d6d5ef708c9"
        );
    }

    #[test]
    fn sample_events_have_unique_ids_and_the_payload_fields() {
        let events = sample_events("t", 14);
        let ids: std::collections::HashSet<_> = events
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids.len(), 14);
        assert!(
            events
                .iter()
                .all(|e| e["data"]["identifiers"]["id"].is_string())
        );
        assert!(events.iter().any(|e| e["metric"] == "teleported"));
    }
}
