//! The Track API client: sends batches of operations and says, row by row, what happened.
//!
//! Owns: Track endpoints and auth (HTTP Basic site id : key), v2 batch and v1 per-operation
//! requests, percent-encoded path identifiers, and turning each final response into a
//! [`BatchOutcome`] (delivered, rejected rows with Customer.io's reason, or failed).
//! Must not: read sources, map rows or touch the state database; the HTTP client, retries,
//! rate limits and answer caps come from `http/`.

pub mod plan;
pub mod request;

pub use plan::{Wire, WirePlan};

use std::sync::Arc;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, v2_wire};
use crate::config::Secret;
use crate::http::{
    self, Answer, ApiClient, Auth, MAX_TRACK_ANSWER_BYTES, RateGate, Request, RetriesExhausted,
    RetryPolicy, RunCounters,
};

/// The Track API on [`ApiClient`] with HTTP Basic auth; `Debug` shows no credential.
#[derive(Clone, Debug)]
pub struct TrackClient {
    api: ApiClient,
}

/// What became of one batch.
#[derive(Debug)]
pub enum BatchOutcome {
    /// Customer.io answered for every item: all delivered except `rejected`
    /// (index into the batch, reason).
    Settled { rejected: Vec<(usize, String)> },
    /// No final answer (retries exhausted, or stopped while waiting): the rows are unsettled.
    Failed(RetriesExhausted),
    /// Customer.io refused the whole request (400, 413, 422, …) for `reason`: nothing of it
    /// was applied, and the same body would be refused again, so every row is dead-lettered.
    Rejected { reason: String },
    /// The batch could not be put on the wire (an internal error): nothing was sent.
    Unsendable(request::RequestError),
    /// The run cannot go on (credentials, region): stop everything.
    Fatal(TrackError),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TrackError {
    #[error(
        "Customer.io refused the Track credentials (HTTP {status}): check CIO_SITE_ID and CIO_TRACK_API_KEY (customerio.site_id / track_api_key in config.yaml) and that they belong to this workspace"
    )]
    Unauthorized { status: u16 },
    #[error(
        "the Track API redirected the request (HTTP {status}{}): the workspace is in another region; set `customerio.region` in config.yaml to match it",
        location.as_deref().map(|l| format!(" to {l}")).unwrap_or_default()
    )]
    WrongRegion {
        status: u16,
        /// Where it pointed: scheme and host only (`https://track-eu.customer.io`).
        location: Option<String>,
    },
    /// The self-check got no final answer (network, or Customer.io failing).
    #[error(
        "the Track API did not answer: {0}; check `customerio.track_url` and the network, or try again later"
    )]
    Unanswered(RetriesExhausted),
    #[error("unexpected answer from the Track API: {0}")]
    Unexpected(String),
    #[error("the HTTP client could not be built: {0}")]
    Client(String),
    #[error(
        "Track credentials are missing: set customerio.site_id and customerio.track_api_key in config.yaml (e.g. from ${{CIO_SITE_ID}} and ${{CIO_TRACK_API_KEY}})"
    )]
    MissingCredentials,
}

/// `GET /api/v1/accounts/region`.
#[derive(Debug, Deserialize)]
pub struct RegionInfo {
    pub region: String,
    #[serde(default)]
    pub url: String,
    pub environment_id: Option<i64>,
}

impl TrackClient {
    pub fn new(
        base: &str,
        site_id: Secret,
        api_key: Secret,
        gate: Arc<RateGate>,
        policy: RetryPolicy,
        timeout: std::time::Duration,
    ) -> Result<Self, TrackError> {
        let auth = Auth::Basic {
            user: site_id,
            password: api_key,
        };
        let api = ApiClient::new(
            base,
            auth,
            gate,
            policy,
            timeout,
            MAX_TRACK_ANSWER_BYTES,
            crate::observe::Api::Track,
        )
        .map_err(|e| TrackError::Client(e.to_string()))?;
        Ok(Self { api })
    }

    /// The self-check: which region the credentials belong to.
    pub async fn region(
        &self,
        counters: &Arc<RunCounters>,
        cancel: &CancellationToken,
    ) -> Result<RegionInfo, TrackError> {
        let resp = self
            .api
            .send(&Request::get("/api/v1/accounts/region"), counters, cancel)
            .await
            .map_err(TrackError::Unanswered)?;
        check_fatal(&resp)?;
        if resp.status != 200 {
            return Err(TrackError::Unexpected(format!(
                "HTTP {}: {}",
                resp.status,
                resp.body_excerpt()
            )));
        }
        serde_json::from_slice(&resp.body)
            .map_err(|e| TrackError::Unexpected(format!("region answer: {e}")))
    }

    /// Sends one batch and reports what happened to each of its rows.
    pub async fn send(
        &self,
        batch: &Batch,
        wire: Wire,
        counters: &Arc<RunCounters>,
        cancel: &CancellationToken,
    ) -> BatchOutcome {
        match wire {
            Wire::V2Batch => self.send_v2(batch, counters, cancel).await,
            Wire::Segment => self.send_segment(batch, counters, cancel).await,
            Wire::V1 => {
                let mut rejected = Vec::new();
                for (i, item) in batch.items.iter().enumerate() {
                    let req = match request::v1(&item.mapped.op) {
                        Ok(req) => req,
                        // Nothing sent, nothing counted: the row is dead-lettered.
                        Err(e) => {
                            rejected.push((i, e.to_string()));
                            continue;
                        }
                    };
                    let request = Request {
                        method: req.method.clone(),
                        path: &req.path,
                        query: &[],
                        body: req.body.map(bytes::Bytes::from),
                        answer: Answer::JsonOrEmpty,
                    };
                    let resp = self.api.send(&request, counters, cancel).await;
                    match resp {
                        Err(e) => return BatchOutcome::Failed(e),
                        Ok(resp) => {
                            if let Err(e) = check_fatal(&resp) {
                                return BatchOutcome::Fatal(e);
                            }
                            if !(200..300).contains(&resp.status) {
                                rejected.push((i, rejection_reason(&resp)));
                            }
                        }
                    }
                }
                BatchOutcome::Settled { rejected }
            }
        }
    }

    /// One v2 batch. Relationship rows of one object go as one item ([`crate::batch::wire_items`]);
    /// an answer's `batch_index` points at an item, and so at all of its rows. A 400 that
    /// names items by `batch_index` (Customer.io sends that too) rejected the whole request:
    /// those rows are dead-lettered and the rest are sent again without them, so one bad row
    /// never dead-letters its neighbours.
    async fn send_v2(
        &self,
        batch: &Batch,
        counters: &Arc<RunCounters>,
        cancel: &CancellationToken,
    ) -> BatchOutcome {
        let mut live: Vec<usize> = (0..batch.items.len()).collect();
        let mut rejected: Vec<(usize, String)> = Vec::new();
        loop {
            let (body, items) = v2_wire(batch, &live);
            let request = Request::post("/api/v2/batch").json_body(bytes::Bytes::from(body));
            let resp = match self.api.send(&request, counters, cancel).await {
                Ok(r) => r,
                Err(e) => return BatchOutcome::Failed(e),
            };
            if let Err(e) = check_fatal(&resp) {
                return BatchOutcome::Fatal(e);
            }
            let rows_of = |errors: Vec<(usize, String)>| -> Vec<(usize, String)> {
                errors
                    .into_iter()
                    .flat_map(|(item, reason)| {
                        items
                            .get(item)
                            .unwrap_or_default()
                            .iter()
                            .map(move |row| (*row, reason.clone()))
                    })
                    .collect()
            };
            match resp.status {
                207 => {
                    rejected.extend(rows_of(partial_errors(&resp, items.len())));
                    return settled(rejected);
                }
                200..=299 => return settled(rejected),
                400 if matches!(indexed_errors(&resp, items.len()), Ok(ref e) if !e.is_empty()) => {
                    let bad = rows_of(indexed_errors(&resp, items.len()).unwrap_or_default());
                    tracing::warn!(
                        rows = bad.len(),
                        "Customer.io refused the batch (HTTP 400) naming items by batch_index; dead-lettering those rows and sending the rest again."
                    );
                    live.retain(|row| !bad.iter().any(|(b, _)| b == row));
                    rejected.extend(bad);
                    if live.is_empty() {
                        return settled(rejected);
                    }
                }
                _ => {
                    // The whole request was refused (400, 413, 422, …) without saying which
                    // item: nothing was applied, and the same body would be refused again, so
                    // every row still unsettled is dead-lettered.
                    let reason = format!(
                        "Customer.io rejected the whole batch: {}",
                        rejection_reason(&resp)
                    );
                    if rejected.is_empty() {
                        return BatchOutcome::Rejected { reason };
                    }
                    rejected.extend(live.iter().map(|row| (*row, reason.clone())));
                    return settled(rejected);
                }
            }
        }
    }

    async fn send_segment(
        &self,
        batch: &Batch,
        counters: &Arc<RunCounters>,
        cancel: &CancellationToken,
    ) -> BatchOutcome {
        let req = match request::segment(batch) {
            Ok(req) => req,
            Err(e) => return BatchOutcome::Unsendable(e),
        };
        let query = [("id_type", req.id_type.to_string())];
        let request = Request::post(&req.path)
            .query(&query)
            .json_body(bytes::Bytes::from(req.body))
            .answer(Answer::JsonOrEmpty);
        let resp = self.api.send(&request, counters, cancel).await;
        match resp {
            Err(e) => BatchOutcome::Failed(e),
            Ok(resp) => {
                if let Err(e) = check_fatal(&resp) {
                    return BatchOutcome::Fatal(e);
                }
                if (200..300).contains(&resp.status) {
                    BatchOutcome::Settled {
                        rejected: Vec::new(),
                    }
                } else {
                    BatchOutcome::Rejected {
                        reason: format!(
                            "Customer.io rejected the segment update: {}",
                            rejection_reason(&resp)
                        ),
                    }
                }
            }
        }
    }
}

/// 401/403 (credentials), 3xx (wrong region) and statuses that say nothing about the rows
/// end the run; only 400, 404, 413 and 422 reject rows.
fn check_fatal(resp: &http::Response) -> Result<(), TrackError> {
    match resp.status {
        401 | 403 => Err(TrackError::Unauthorized {
            status: resp.status,
        }),
        300..=399 => Err(TrackError::WrongRegion {
            status: resp.status,
            location: resp.redirect_to.clone(),
        }),
        // Only these say something about the rows (rejected or accepted).
        200..=299 | 400 | 404 | 413 | 422 => Ok(()),
        // A status that says nothing about the rows (405, 409, 415, …, or an unretried 5xx
        // left over when retries ran out) is a proxy or URL problem: stop, reject nothing.
        s => Err(TrackError::Unexpected(format!(
            "HTTP {s}: {}; check `customerio.track_url` and any proxy in between",
            resp.body_excerpt()
        ))),
    }
}

/// Customer.io's error text, read leniently: `meta.error`, `meta.errors[]`, `errors[]`, raw.
pub fn rejection_reason(resp: &http::Response) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&resp.body).ok();
    let text = parsed.as_ref().and_then(|v| {
        if let Some(e) = v.pointer("/meta/error").and_then(|e| e.as_str()) {
            return Some(e.to_string());
        }
        let list = v
            .pointer("/meta/errors")
            .or_else(|| v.get("errors"))?
            .as_array()?;
        let parts: Vec<String> = list
            .iter()
            .map(|e| match e {
                serde_json::Value::String(s) => s.clone(),
                other => describe_error_item(other),
            })
            .collect();
        Some(parts.join("; "))
    });
    let text = text.unwrap_or_else(|| resp.body_excerpt());
    http::excerpt(&format!("HTTP {}: {text}", resp.status))
}

fn describe_error_item(e: &serde_json::Value) -> String {
    let get = |k: &str| e.get(k).and_then(|v| v.as_str()).filter(|s| !s.is_empty());
    let mut s = String::new();
    for (k, label) in [
        ("reason", ""),
        ("field", "field "),
        ("message", ""),
        ("detail", ""),
    ] {
        if let Some(v) = get(k) {
            if !s.is_empty() {
                s.push_str(", ");
            }
            s.push_str(label);
            s.push_str(v);
        }
    }
    if s.is_empty() { e.to_string() } else { s }
}

/// A 207's `errors[].batch_index` → (index, reason). An answer that cannot be read, or an
/// error entry without a usable index, cannot say which rows failed: then every row of the
/// batch is dead-lettered with the raw answer (never counted as delivered on a guess;
/// `dead-letters retry` re-sends them, and identify and event ids make that safe).
fn partial_errors(resp: &http::Response, len: usize) -> Vec<(usize, String)> {
    let whole = |why: &str| -> Vec<(usize, String)> {
        tracing::warn!(body = %resp.body_excerpt(), "{why}; dead-lettering the whole batch.");
        let reason = format!(
            "Customer.io answered 207 but {why}: {}",
            resp.body_excerpt()
        );
        (0..len).map(|i| (i, reason.clone())).collect()
    };
    match indexed_errors(resp, len) {
        Ok(out) if out.is_empty() => whole("it listed no errors"),
        Ok(out) => out,
        Err(why) => whole(why),
    }
}

/// `errors[].batch_index` → (item index, reason), sorted, one entry per item; `Err` says why
/// the answer cannot name the items (unreadable, or an entry without a usable index).
fn indexed_errors(resp: &http::Response, len: usize) -> Result<Vec<(usize, String)>, &'static str> {
    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        errors: Option<Vec<serde_json::Value>>,
    }
    let body =
        serde_json::from_slice::<Body>(&resp.body).map_err(|_| "its answer could not be read")?;
    let errors = body.errors.unwrap_or_default();
    let mut out = Vec::with_capacity(errors.len());
    for e in &errors {
        let index = match e.get("batch_index") {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        match index.map(|i| i as usize).filter(|i| *i < len) {
            Some(i) => out.push((
                i,
                format!("Customer.io rejected this item: {}", describe_error_item(e)),
            )),
            None => return Err("an error entry has no usable batch_index"),
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out.dedup_by_key(|(i, _)| *i);
    Ok(out)
}

/// Every row answered: delivered except `rejected` (sorted by row, one entry per row).
fn settled(mut rejected: Vec<(usize, String)>) -> BatchOutcome {
    rejected.sort_by_key(|(i, _)| *i);
    rejected.dedup_by_key(|(i, _)| *i);
    BatchOutcome::Settled { rejected }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, body: &str) -> http::Response {
        http::Response {
            status,
            body: bytes::Bytes::from(body.to_string()),
            redirect_to: None,
        }
    }

    #[test]
    fn a_207_maps_batch_indexes_back_to_rows() {
        let r = resp(
            207,
            r#"{"errors":[{"batch_index":3,"reason":"invalid","field":"timestamp","message":"bad"},{"batch_index":"1","reason":"x"}]}"#,
        );
        let out = partial_errors(&r, 5);
        assert_eq!(out.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![1, 3]);
        assert!(
            out[1].1.contains("invalid, field timestamp, bad"),
            "{}",
            out[1].1
        );
    }

    #[test]
    fn an_unreadable_207_dead_letters_the_whole_batch_instead_of_guessing() {
        for body in [
            "<html>oops</html>",
            r#"{"errors":[]}"#,
            r#"{"errors":[{"reason":"no index"}]}"#,
            r#"{"errors":[{"batch_index":9}]}"#,
        ] {
            let out = partial_errors(&resp(207, body), 3);
            assert_eq!(out.len(), 3, "{body}");
        }
    }

    #[test]
    fn a_redirect_names_where_it_pointed() {
        let mut r = resp(301, "");
        r.redirect_to = Some("https://track-eu.customer.io".into());
        let e = check_fatal(&r).unwrap_err();
        assert!(
            matches!(&e, TrackError::WrongRegion { status: 301, location: Some(l) } if l == "https://track-eu.customer.io"),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("(HTTP 301 to https://track-eu.customer.io)"),
            "{e}"
        );
        let e = check_fatal(&resp(302, "")).unwrap_err().to_string();
        assert!(e.contains("(HTTP 302)"), "{e}");
    }

    #[test]
    fn error_bodies_are_read_leniently() {
        assert_eq!(
            rejection_reason(&resp(400, r#"{"meta":{"error":"bad id"}}"#)),
            "HTTP 400: bad id"
        );
        assert_eq!(
            rejection_reason(&resp(400, r#"{"meta":{"errors":["a","b"]}}"#)),
            "HTTP 400: a; b"
        );
        assert_eq!(rejection_reason(&resp(422, "plain")), "HTTP 422: plain");
    }
}
