//! Shared simulator state: credentials, fault knobs and their RNG, rate buckets, fixtures, and
//! the records tests read back.
//!
//! Owns every mutable thing behind one std `Mutex`; the lock is never held across an `.await`.
//! Must not build HTTP bodies beyond the canned ones in `respond.rs`, and must not parse requests.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use base64::Engine as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use super::{AppFault, Faults, Member, RecordedOp, Region, RequestRecord, SimConfig};

/// Everything the handlers share.
pub(crate) struct Shared {
    pub(crate) site_id: String,
    pub(crate) track_api_key: String,
    pub(crate) app_api_key: String,
    pub(crate) region: Region,
    /// Origin of `RequestRecord::at`.
    pub(crate) started: Instant,
    /// Woken whenever a test changes or lifts the hold, so waiting requests look again.
    pub(crate) hold_changed: tokio::sync::Notify,
    state: Mutex<State>,
}

impl Shared {
    pub(crate) fn new(config: SimConfig) -> Shared {
        let now = Instant::now();
        Shared {
            site_id: config.site_id,
            track_api_key: config.track_api_key,
            app_api_key: config.app_api_key,
            region: config.region,
            started: now,
            hold_changed: tokio::sync::Notify::new(),
            state: Mutex::new(State::new(config.faults, now)),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not take every later assertion down with it: the state
        // stays consistent between statements, so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checks `Authorization: Basic base64(site_id:track_api_key)`.
    pub(crate) fn track_auth_ok(&self, header: Option<&str>) -> bool {
        let Some(encoded) = header.and_then(|h| strip_scheme(h, "basic")) else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Ok(decoded) = std::str::from_utf8(&decoded) else {
            return false;
        };
        match decoded.split_once(':') {
            Some((site, key)) => site == self.site_id && key == self.track_api_key,
            None => false,
        }
    }

    /// Checks `Authorization: Bearer app_api_key`.
    pub(crate) fn app_auth_ok(&self, header: Option<&str>) -> bool {
        header
            .and_then(|h| strip_scheme(h, "bearer"))
            .is_some_and(|token| token.trim() == self.app_api_key)
    }
}

/// Returns the credentials after a case-insensitive auth scheme, e.g. `Basic xyz` → `xyz`.
fn strip_scheme<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    let (got, rest) = header.split_once(' ')?;
    got.eq_ignore_ascii_case(scheme).then_some(rest)
}

/// Token bucket for the server-side rate limit: refilled at `rate` per second, holding a tenth
/// of a second's worth (at least one) plus one.
///
/// A whole second's worth let a client burst to twice the limit in a one-second window without
/// ever seeing a 429, so a client ignoring the limit went unnoticed. A client sending evenly at
/// the same rate leaves the tenth of a second for the jitter between its clock and ours; one
/// that bursts a tenth of a second at start leaves a single token, and a request that then
/// arrives a few milliseconds early is refused (as cio-sync's own did under load).
pub(crate) struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn capacity(rate: u32) -> f64 {
        f64::from((rate / 10).max(1)) + 1.0
    }

    fn full(rate: Option<u32>, now: Instant) -> Bucket {
        Bucket {
            tokens: rate.map_or(0.0, Bucket::capacity),
            last: now,
        }
    }

    fn take(&mut self, rate: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(Bucket::capacity(rate));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A `RateLimitOnRequest` fault with its trigger turned into an absolute App request number.
pub(crate) enum ArmedAppFault {
    RateLimitAt {
        request_no: usize,
        retry_after_secs: u64,
    },
    FailMembershipPage {
        segment_id: i64,
        page_start_offset: usize,
        status: u16,
    },
}

/// What the gate decided before running the route.
pub(crate) enum Verdict {
    /// Close the connection without applying anything.
    DropBefore,
    /// Answer with this canned status (and `Retry-After` seconds when set).
    Fail {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Answer 401.
    Unauthorized,
    /// Answer 429 from the server-side limiter.
    RateLimited { limit: u32, retry_after: u64 },
    /// Run the route; then drop the connection instead of answering when `drop_after`.
    Proceed { drop_after: bool },
}

pub(crate) struct State {
    pub(crate) faults: Faults,
    rng: StdRng,
    track_bucket: Bucket,
    app_bucket: Bucket,
    /// `(remaining, status, retry_after)` entries consumed front to back by Track requests.
    pub(crate) fail_next: VecDeque<(usize, u16, Option<u64>)>,
    /// identifiers.id → reason.
    pub(crate) reject_rules: HashMap<String, String>,
    /// identifiers.id → whole-request status.
    pub(crate) fail_batches: HashMap<String, u16>,
    /// identifiers.id / object_id → reason of a 400 naming the item by batch_index.
    pub(crate) refuse_400: HashMap<String, String>,
    /// Raw v2 items of accepted requests (see `Simulator::v2_items`).
    pub(crate) v2_items: Vec<serde_json::Value>,
    /// `GET /v1/object_types` fixtures.
    pub(crate) object_types: Vec<serde_json::Value>,
    pub(crate) app_faults: Vec<ArmedAppFault>,
    /// App requests seen since start (never reset, so armed faults keep their meaning).
    app_requests: usize,

    pub(crate) record_ops: bool,
    pub(crate) op_count: usize,
    pub(crate) ops: Vec<RecordedOp>,
    pub(crate) dups: Vec<RecordedOp>,
    /// Accepted event ids as ULID integers: 16 bytes each instead of a heap string, because
    /// million-event runs keep all of them.
    pub(crate) seen_event_ids: HashSet<u128>,
    pub(crate) requests: Vec<RequestRecord>,
    pub(crate) segment_adds: Vec<(i64, String, String)>,
    pub(crate) segment_removes: Vec<(i64, String, String)>,

    pub(crate) segments: Vec<serde_json::Value>,
    pub(crate) membership: HashMap<i64, Vec<Member>>,
    pub(crate) campaigns: Vec<serde_json::Value>,
    pub(crate) metrics: HashMap<i64, BTreeMap<String, Vec<i64>>>,
    /// Reporting webhooks created through `POST /v1/reporting_webhooks`, in creation order.
    pub(crate) reporting_webhooks: Vec<serde_json::Value>,

    /// The instant the clock stands still at, when a test paused it (`None`: real time).
    /// Rate buckets and request times read [`State::now`], so a paused clock makes them
    /// independent of how fast the machine runs the test.
    paused_at: Option<Instant>,
    /// The operation count from which arriving requests wait at the gate (`None`: no hold).
    pub(crate) hold_from: Option<usize>,
    /// Requests waiting at the hold right now (of the current epoch).
    pub(crate) held: usize,
    /// Bumped by every release: requests released from an earlier hold stop counting in
    /// `held` at once, not only when their tasks next run.
    pub(crate) hold_epoch: u64,
}

/// Why an operation was refused at recording time (rules the tests installed).
pub(crate) enum Refusal {
    /// A `RejectRule` matched `identifiers.id == id`: the item fails with `reason`.
    Rejected { reason: String, id: String },
}

impl State {
    fn new(faults: Faults, now: Instant) -> State {
        State {
            rng: StdRng::seed_from_u64(faults.seed),
            track_bucket: Bucket::full(faults.rate_limit_per_sec, now),
            app_bucket: Bucket::full(faults.rate_limit_per_sec, now),
            faults,
            fail_next: VecDeque::new(),
            reject_rules: HashMap::new(),
            fail_batches: HashMap::new(),
            refuse_400: HashMap::new(),
            v2_items: Vec::new(),
            object_types: Vec::new(),
            app_faults: Vec::new(),
            app_requests: 0,
            record_ops: true,
            op_count: 0,
            ops: Vec::new(),
            dups: Vec::new(),
            seen_event_ids: HashSet::new(),
            requests: Vec::new(),
            segment_adds: Vec::new(),
            segment_removes: Vec::new(),
            segments: Vec::new(),
            membership: HashMap::new(),
            campaigns: Vec::new(),
            metrics: HashMap::new(),
            reporting_webhooks: Vec::new(),
            paused_at: None,
            hold_from: None,
            held: 0,
            hold_epoch: 0,
        }
    }

    /// Now, by the simulator's clock: the paused instant, or real time.
    pub(crate) fn now(&self) -> Instant {
        self.paused_at.unwrap_or_else(Instant::now)
    }

    /// Stops the clock at the current instant (a paused clock stays where it is).
    pub(crate) fn pause_clock(&mut self) {
        self.paused_at = Some(self.now());
    }

    /// Moves a paused clock forward by `by`; a running clock is not touched.
    pub(crate) fn advance_clock(&mut self, by: std::time::Duration) {
        if let Some(at) = self.paused_at {
            self.paused_at = Some(at + by);
        }
    }

    /// Lifts the hold; what waited no longer counts as held.
    pub(crate) fn release(&mut self) {
        self.hold_from = None;
        self.held = 0;
        self.hold_epoch += 1;
    }

    /// Whether a request arriving now must wait at the hold.
    pub(crate) fn holding(&self) -> bool {
        self.hold_from.is_some_and(|n| self.op_count >= n)
    }

    pub(crate) fn set_faults(&mut self, faults: Faults, now: Instant) {
        self.rng = StdRng::seed_from_u64(faults.seed);
        self.track_bucket = Bucket::full(faults.rate_limit_per_sec, now);
        self.app_bucket = Bucket::full(faults.rate_limit_per_sec, now);
        self.faults = faults;
    }

    pub(crate) fn add_app_fault(&mut self, fault: AppFault) {
        let armed = match fault {
            AppFault::RateLimitOnRequest {
                n,
                retry_after_secs,
            } => ArmedAppFault::RateLimitAt {
                request_no: self.app_requests + n.max(1),
                retry_after_secs,
            },
            AppFault::FailMembershipPage {
                segment_id,
                page_start_offset,
                status,
            } => ArmedAppFault::FailMembershipPage {
                segment_id,
                page_start_offset,
                status,
            },
        };
        self.app_faults.push(armed);
    }

    /// The status a `FailMembershipPage` fault sets for this page, if any.
    pub(crate) fn membership_page_fault(&self, segment: i64, offset: usize) -> Option<u16> {
        self.app_faults.iter().find_map(|f| match f {
            ArmedAppFault::FailMembershipPage {
                segment_id,
                page_start_offset,
                status,
            } if *segment_id == segment && *page_start_offset == offset => Some(*status),
            _ => None,
        })
    }

    fn roll(&mut self, rate: f64) -> bool {
        // No draw at rate 0, so enabling one fault does not shift the sequence of another
        // test's unrelated knobs.
        rate > 0.0 && self.rng.random::<f64>() < rate
    }

    /// Decides the fate of one request before its route runs.
    pub(crate) fn verdict(&mut self, is_app: bool, auth_ok: bool, now: Instant) -> Verdict {
        if is_app {
            self.app_requests += 1;
            let n = self.app_requests;
            let hit = self.app_faults.iter().position(
                |f| matches!(f, ArmedAppFault::RateLimitAt { request_no, .. } if *request_no == n),
            );
            if let Some(i) = hit {
                let fault = self.app_faults.remove(i);
                if let ArmedAppFault::RateLimitAt {
                    retry_after_secs, ..
                } = fault
                {
                    return Verdict::Fail {
                        status: 429,
                        retry_after: Some(retry_after_secs),
                    };
                }
            }
        } else if let Some(front) = self.fail_next.front_mut() {
            let (status, retry_after) = (front.1, front.2);
            front.0 -= 1;
            if front.0 == 0 {
                self.fail_next.pop_front();
            }
            return Verdict::Fail {
                status,
                retry_after,
            };
        }

        if self.roll(self.faults.drop_before_rate) {
            return Verdict::DropBefore;
        }
        if self.roll(self.faults.error_5xx_rate) {
            let status = [500, 502, 503][self.rng.random_range(0..3)];
            return Verdict::Fail {
                status,
                retry_after: None,
            };
        }
        if !auth_ok {
            return Verdict::Unauthorized;
        }
        if let Some(limit) = self.faults.rate_limit_per_sec {
            let bucket = if is_app {
                &mut self.app_bucket
            } else {
                &mut self.track_bucket
            };
            if !bucket.take(limit, now) {
                return Verdict::RateLimited {
                    limit,
                    retry_after: self.faults.retry_after_secs.max(1),
                };
            }
        }
        let drop_after = self.roll(self.faults.drop_after_rate);
        Verdict::Proceed { drop_after }
    }

    /// Applies reject rules, then dedupes events by id, then records.
    pub(crate) fn accept(&mut self, op: RecordedOp) -> Result<(), Refusal> {
        if !self.reject_rules.is_empty()
            && let Some(id) = op.identifiers.get("id")
            && let Some(reason) = self.reject_rules.get(id)
        {
            return Err(Refusal::Rejected {
                reason: reason.clone(),
                id: id.clone(),
            });
        }
        if let Some(id) = op.event_id.as_deref()
            && let Ok(ulid) = ulid::Ulid::from_string(id)
            && !self.seen_event_ids.insert(ulid.0)
        {
            self.dups.push(op);
            return Ok(());
        }
        self.op_count += 1;
        if self.record_ops {
            self.ops.push(op);
        }
        Ok(())
    }
}

/// Opaque membership `next` token: base64 of the offset, like Customer.io's `"MDox"`-style
/// strings, so clients cannot get away with treating it as a number.
pub(crate) fn encode_token(offset: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{offset}:1"))
}

/// Reads a `start` token: our own base64 form (padded or not, standard or URL-safe), or a bare
/// integer as the 2022 reference typed it.
pub(crate) fn decode_token(token: &str) -> Option<usize> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        if let Ok(bytes) = engine.decode(token)
            && let Ok(text) = std::str::from_utf8(&bytes)
            && let Some((offset, _)) = text.split_once(':')
            && let Ok(offset) = offset.parse()
        {
            return Some(offset);
        }
    }
    token.parse().ok()
}
