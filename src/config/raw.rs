//! The configuration files exactly as written: `config.yaml` and `jobs/*.yaml`.
//!
//! Owns: the serde shapes of both files, strict (`deny_unknown_fields`, no `flatten`), with
//! their defaults. Must not: check cross-field rules or touch the file system; that is
//! `validate.rs`, which turns these into the runtime types of `job.rs`. Private to `config`:
//! nothing outside it sees serde shapes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::secret::{DatabaseUrl, Secret};

/// `config.yaml`: the daemon's settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DaemonFile {
    pub state: StateSection,
    pub customerio: CustomerIoSection,
    /// Folder of job files, relative to `config.yaml`.
    #[serde(default = "default_jobs_dir")]
    pub jobs_dir: PathBuf,
    #[serde(default)]
    pub track: TrackSection,
    #[serde(default)]
    pub app: AppSection,
    #[serde(default)]
    pub retry: RetrySection,
    #[serde(default)]
    pub shutdown: ShutdownSection,
    /// Further Customer.io workspaces by name; a job picks one with `workspace:`, the others
    /// use `customerio`.
    #[serde(default)]
    pub workspaces: BTreeMap<String, WorkspaceSection>,
    #[serde(default)]
    pub daemon: DaemonSection,
    #[serde(default)]
    pub http: HttpSection,
    /// The reporting-webhook receiver; absent: none.
    #[serde(default)]
    pub webhooks: Option<WebhooksSection>,
}

fn default_jobs_dir() -> PathBuf {
    PathBuf::from("jobs")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StateSection {
    /// `sqlite://path` (created on first use) or `postgres://…`.
    pub url: DatabaseUrl,
    /// How long opening a PostgreSQL state database may wait for the server, in seconds.
    #[serde(default = "default_state_connect_timeout")]
    pub connect_timeout_secs: u64,
}

fn default_state_connect_timeout() -> u64 {
    10
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    #[default]
    Us,
    Eu,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CustomerIoSection {
    #[serde(default)]
    pub region: Region,
    pub site_id: Option<Secret>,
    pub track_api_key: Option<Secret>,
    pub app_api_key: Option<Secret>,
    /// Overrides the region's Track host (simulator, proxy).
    pub track_url: Option<String>,
    /// Overrides the region's App host.
    pub app_url: Option<String>,
}

/// One of `workspaces:`: the `customerio` keys, and the workspace's own rate limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WorkspaceSection {
    #[serde(default)]
    pub region: Region,
    pub site_id: Option<Secret>,
    pub track_api_key: Option<Secret>,
    pub app_api_key: Option<Secret>,
    pub track_url: Option<String>,
    pub app_url: Option<String>,
    /// Track requests per second for this workspace; default `track.rate_limit_per_sec`.
    pub track_rate_limit_per_sec: Option<u32>,
    /// App requests per second for this workspace; default `app.rate_limit_per_sec`.
    pub app_rate_limit_per_sec: Option<u32>,
}

/// `daemon:`: how replicas of `cio-sync daemon` find each other.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DaemonSection {
    /// Seconds between a daemon's heartbeats in the state database; a replica silent for
    /// three of them no longer counts when the rate limits are shared out.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
}

impl Default for DaemonSection {
    fn default() -> Self {
        Self {
            heartbeat_secs: default_heartbeat(),
        }
    }
}

fn default_heartbeat() -> u64 {
    10
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TrackSection {
    /// Requests per second, shared by every job of this process (Customer.io fair use).
    #[serde(default = "default_track_rate")]
    pub rate_limit_per_sec: u32,
    /// Requests in flight at once per job.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_track_timeout")]
    pub timeout_secs: u64,
    #[serde(default)]
    pub batch: BatchSection,
    #[serde(default)]
    pub transport: Transport,
}

impl Default for TrackSection {
    fn default() -> Self {
        Self {
            rate_limit_per_sec: default_track_rate(),
            concurrency: default_concurrency(),
            timeout_secs: default_track_timeout(),
            batch: BatchSection::default(),
            transport: Transport::default(),
        }
    }
}

fn default_track_rate() -> u32 {
    100
}
fn default_concurrency() -> usize {
    4
}
fn default_track_timeout() -> u64 {
    30
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// `POST /api/v2/batch`, many operations a request.
    #[default]
    V2,
    /// One `/api/v1/...` request per operation.
    V1,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSection {
    /// Operations per v2 batch at most. Customer.io documents no item limit for v2 batches,
    /// so the default only bounds memory: batches close by `max_bytes` for any real row.
    #[serde(default = "default_batch_items")]
    pub max_items: usize,
    /// Bytes per v2 batch body at most, envelope included (Customer.io's limit is 500 KB).
    #[serde(default = "default_batch_bytes")]
    pub max_bytes: usize,
}

impl Default for BatchSection {
    fn default() -> Self {
        Self {
            max_items: default_batch_items(),
            max_bytes: default_batch_bytes(),
        }
    }
}

fn default_batch_items() -> usize {
    10_000
}
fn default_batch_bytes() -> usize {
    480_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AppSection {
    #[serde(default = "default_app_rate")]
    pub rate_limit_per_sec: u32,
    #[serde(default = "default_app_timeout")]
    pub timeout_secs: u64,
}

impl Default for AppSection {
    fn default() -> Self {
        Self {
            rate_limit_per_sec: default_app_rate(),
            timeout_secs: default_app_timeout(),
        }
    }
}

fn default_app_rate() -> u32 {
    10
}
fn default_app_timeout() -> u64 {
    30
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RetrySection {
    /// Attempts per request, the first included.
    #[serde(default = "default_attempts")]
    pub max_attempts: usize,
    /// First backoff ceiling; full jitter picks a wait in [0, ceiling].
    #[serde(default = "default_base_ms")]
    pub base_delay_ms: u64,
    /// Longest single wait, backoff or `Retry-After`.
    #[serde(default = "default_max_wait")]
    pub max_wait_secs: u64,
    /// Total time one run may spend waiting between retries before it gives up.
    #[serde(default = "default_run_wait")]
    pub max_total_wait_secs: u64,
}

impl Default for RetrySection {
    fn default() -> Self {
        Self {
            max_attempts: default_attempts(),
            base_delay_ms: default_base_ms(),
            max_wait_secs: default_max_wait(),
            max_total_wait_secs: default_run_wait(),
        }
    }
}

fn default_attempts() -> usize {
    8
}
fn default_base_ms() -> u64 {
    500
}
fn default_max_wait() -> u64 {
    60
}
fn default_run_wait() -> u64 {
    1800
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShutdownSection {
    /// How long a stopping run waits for requests in flight (keep it below systemd's
    /// `TimeoutStopSec`).
    #[serde(default = "default_grace")]
    pub grace_secs: u64,
}

impl Default for ShutdownSection {
    fn default() -> Self {
        Self {
            grace_secs: default_grace(),
        }
    }
}

fn default_grace() -> u64 {
    60
}

/// `http:`: the optional listener for `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HttpSection {
    /// `IP:PORT` to listen on, or a bare port for `127.0.0.1:PORT`; absent: no listener.
    pub listen: Option<String>,
}

/// `webhooks:`: the optional receiver for Customer.io's reporting webhooks (`webhooks/`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WebhooksSection {
    /// `IP:PORT` to listen on, or a bare port for `127.0.0.1:PORT`.
    pub listen: String,
    /// The URL path Customer.io posts to.
    #[serde(default = "default_webhooks_path")]
    pub path: String,
    /// One signing secret (the usual case).
    pub signing_key: Option<Secret>,
    /// Several signing secrets, all accepted: the old and the new one while rotating.
    #[serde(default)]
    pub signing_keys: Vec<Secret>,
    /// How far `X-CIO-Timestamp` may be from now, in seconds.
    #[serde(default = "default_webhooks_tolerance")]
    pub tolerance_secs: u64,
    /// The largest body accepted, in bytes; larger ones get 413 before being read.
    #[serde(default = "default_webhooks_max_body")]
    pub max_body_bytes: u64,
    /// Where `cio_message_events` lives; default the state database.
    pub database: Option<DatabaseUrl>,
}

fn default_webhooks_path() -> String {
    "/cio/webhook".to_string()
}
fn default_webhooks_tolerance() -> u64 {
    300
}
fn default_webhooks_max_body() -> u64 {
    8 * 1024 * 1024
}

/// One `jobs/<name>.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JobFile {
    /// Cron: `min hour day-of-month month day-of-week`, or with seconds first.
    pub schedule: Option<String>,
    /// The IANA zone `schedule` is read in; UTC when absent.
    #[serde(default, deserialize_with = "time_zone")]
    pub timezone: Option<chrono_tz::Tz>,
    /// Run once at daemon start when the last scheduled tick was missed.
    #[serde(default)]
    pub catch_up: bool,
    /// `false` pauses the job: the daemon does not schedule it.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A name under config.yaml's `workspaces`; absent = the `customerio` block.
    pub workspace: Option<String>,
    pub source: Option<SourceSection>,
    pub identify: Option<IdentifySection>,
    pub track: Option<TrackJobSection>,
    pub delete: Option<DeleteSection>,
    pub segment: Option<SegmentSection>,
    pub object: Option<ObjectSection>,
    pub relationship: Option<RelationshipSection>,
    pub device: Option<DeviceSection>,
    pub merge: Option<MergeSection>,
    pub pull: Option<PullSection>,
    /// Overrides `track.transport` of config.yaml for this job.
    pub transport: Option<Transport>,
    pub batch: Option<BatchSection>,
    pub concurrency: Option<usize>,
    /// Limits of mirror mode (`on_missing`, `segment.mirror`, `relationship.mirror`).
    pub guard: Option<GuardSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SourceSection {
    pub csv: Option<CsvSection>,
    pub sql: Option<SqlSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvSection {
    /// Relative paths resolve against the job file's folder. `.gz` is decompressed.
    pub path: PathBuf,
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    #[serde(default = "default_quote")]
    pub quote: char,
    /// `true`: `""` inside quotes is a quote; `false`: use `escape`.
    #[serde(default = "default_true")]
    pub double_quote: bool,
    pub escape: Option<char>,
    /// `false` to treat quote characters as ordinary text.
    #[serde(default = "default_true")]
    pub quoting: bool,
    /// Trim spaces around fields.
    #[serde(default)]
    pub trim: bool,
    /// Seconds: a file modified more recently than this is not read (the run fails with a
    /// message, the checkpoint unchanged), for exporters that write the file in place.
    #[serde(default)]
    pub min_age_secs: Option<u64>,
}

fn default_delimiter() -> char {
    ','
}
fn default_quote() -> char {
    '"'
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSection {
    pub url: DatabaseUrl,
    pub query: String,
    pub cursor: Option<CursorSection>,
    #[serde(default = "default_batch_rows")]
    pub batch_rows: u32,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
}

fn default_batch_rows() -> u32 {
    5000
}
fn default_connect_timeout() -> u64 {
    10
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CursorSection {
    pub column: String,
    pub tiebreak: String,
}

/// `identifier: { id: col }`: exactly one key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IdentifierSection {
    pub id: Option<String>,
    pub email: Option<String>,
    pub cio_id: Option<String>,
    /// v2 only, and not for merges, relationships or segments (validation says why).
    pub phone: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum EmptyPolicy {
    /// An empty cell is left out of the call (never blanks an attribute by accident).
    #[default]
    Skip,
    /// An empty cell is sent as `null`, clearing the attribute.
    Null,
}

/// `empty: null` is YAML's null, not the string "null": accept both spellings.
fn empty_policy<'de, D: serde::Deserializer<'de>>(d: D) -> Result<EmptyPolicy, D::Error> {
    match Option::<String>::deserialize(d)?.as_deref() {
        None | Some("null") => Ok(EmptyPolicy::Null),
        Some("skip") => Ok(EmptyPolicy::Skip),
        Some(other) => Err(serde::de::Error::invalid_value(
            serde::de::Unexpected::Str(other),
            &"`skip` (leave the attribute out) or `null` (send null to clear it)",
        )),
    }
}

fn empty_policy_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<EmptyPolicy>, D::Error> {
    empty_policy(d).map(Some)
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// Text stays text; typed database values keep their natural JSON form.
    #[default]
    Auto,
    String,
    Number,
    Bool,
    Timestamp,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TimestampFormat {
    /// RFC 3339 / ISO-8601 date-time (no offset = UTC), `YYYY-MM-DD`, or integer Unix seconds.
    #[default]
    Auto,
    Rfc3339,
    Date,
    Unix,
    UnixMs,
    /// A strftime pattern (`"%m/%d/%Y %H:%M"`), checked when the file is loaded.
    Pattern(String),
}

impl<'de> Deserialize<'de> for TimestampFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "auto" => Self::Auto,
            "rfc3339" => Self::Rfc3339,
            "date" => Self::Date,
            "unix" => Self::Unix,
            "unix_ms" => Self::UnixMs,
            p if p.contains('%') => {
                if chrono::format::StrftimeItems::new(p).parse().is_err() {
                    return Err(serde::de::Error::custom(format!(
                        "`{p}` is not a valid strftime pattern; see https://docs.rs/chrono/latest/chrono/format/strftime/ (e.g. \"%m/%d/%Y %H:%M\")"
                    )));
                }
                Self::Pattern(p.to_string())
            }
            other => {
                return Err(serde::de::Error::custom(format!(
                    "unknown timestamp format `{other}`; use auto, rfc3339, date, unix, unix_ms or a strftime pattern such as \"%m/%d/%Y %H:%M\""
                )));
            }
        })
    }
}

/// `timezone: Europe/Paris`: an IANA name, checked when the file is loaded.
fn time_zone<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<chrono_tz::Tz>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse::<chrono_tz::Tz>().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "unknown time zone `{s}`; use an IANA name such as `Europe/Paris`, `America/New_York` or `UTC`"
        ))
    })
}

/// An attribute's source: a bare column name, or a column with a type.
#[derive(Debug, Clone)]
pub(super) enum FieldSpec {
    Column(String),
    Typed(TypedField),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TypedField {
    pub column: Option<String>,
    /// A constant value instead of a column.
    pub value: Option<serde_json::Value>,
    #[serde(default, rename = "as")]
    pub as_type: ValueType,
    #[serde(default)]
    pub format: TimestampFormat,
    /// The zone of times that carry no offset (IANA name); default UTC.
    #[serde(default, deserialize_with = "time_zone")]
    pub timezone: Option<chrono_tz::Tz>,
    #[serde(default, deserialize_with = "empty_policy_opt")]
    pub empty: Option<EmptyPolicy>,
}

/// `data: [a, b]` or `data: { key: spec }`.
#[derive(Debug, Clone)]
pub(super) enum FieldsSpec {
    List(Vec<String>),
    Map(BTreeMap<String, FieldSpec>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IdentifySection {
    pub identifier: IdentifierSection,
    /// Omitted: every other non-empty column, as strings.
    pub attributes: Option<FieldsSpec>,
    /// Column with the row's change time: orders updates (`_timestamp` / v2 `timestamp`).
    pub timestamp: Option<TimestampSpec>,
    #[serde(default, deserialize_with = "empty_policy")]
    pub empty: EmptyPolicy,
    /// `true`: never create people, only update existing ones (`_update`).
    #[serde(default)]
    pub update_only: bool,
    /// `changed` (default): skip rows Customer.io already has; `all`: send every row.
    pub send: Option<SendSpec>,
    /// `attributes` (default): a changed row sends only its changed attributes; `row`: all.
    pub diff: Option<DiffSpec>,
    /// Mirror mode: what happens to people gone from a complete full read.
    pub on_missing: Option<OnMissingSpec>,
}

/// `timestamp: col` or `timestamp: { column: col, format: unix_ms }`.
#[derive(Debug, Clone)]
pub(super) enum TimestampSpec {
    Column(String),
    Typed(TimestampField),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TimestampField {
    pub column: String,
    #[serde(default)]
    pub format: TimestampFormat,
    /// The zone of times that carry no offset (IANA name); default UTC.
    #[serde(default, deserialize_with = "time_zone")]
    pub timezone: Option<chrono_tz::Tz>,
}

/// `name: purchase` or `name: { column: event_name }`.
#[derive(Debug, Clone)]
pub(super) enum NameSpec {
    Fixed(String),
    Column(ColumnRef),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ColumnRef {
    pub column: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    #[default]
    Event,
    Page,
    Screen,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TrackJobSection {
    pub identifier: Option<IdentifierSection>,
    /// Column holding an anonymous id, for events not tied to a known person.
    pub anonymous_id: Option<String>,
    pub name: NameSpec,
    #[serde(default, rename = "type")]
    pub event_type: EventType,
    pub timestamp: Option<TimestampSpec>,
    /// Column(s) forming the row's key; the event id is derived from it.
    pub event_id: Option<EventKeySpec>,
    /// Omitted: every other non-empty column, as strings.
    pub data: Option<FieldsSpec>,
    #[serde(default, deserialize_with = "empty_policy")]
    pub empty: EmptyPolicy,
}

#[derive(Debug, Clone)]
pub(super) enum EventKeySpec {
    Column(String),
    Columns(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeleteSection {
    pub identifier: IdentifierSection,
    /// `delete` removes the person; `suppress` also blocks the identifier for good.
    #[serde(default)]
    pub action: DeleteAction,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeleteAction {
    #[default]
    Delete,
    Suppress,
    Unsuppress,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SegmentSection {
    /// The manual segment's id in Customer.io.
    pub id: i64,
    pub identifier: IdentifierSection,
    /// `add` (default) or `remove`.
    #[serde(default)]
    pub action: SegmentAction,
    /// Membership becomes exactly the rows of the last complete full read.
    #[serde(default)]
    pub mirror: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SegmentAction {
    #[default]
    Add,
    Remove,
}

/// `object_type_id`: Customer.io sends it as a string; YAML may hold `1` or `"1"`.
fn type_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object type id such as 1 or \"1\" (Settings › Custom Objects)")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    d.deserialize_any(V)
}

fn type_id_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    type_id(d).map(Some)
}

/// `object:`: create, update or delete custom objects (accounts, companies, …).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ObjectSection {
    /// The object type's id in the workspace (a string-formatted integer).
    #[serde(default, deserialize_with = "type_id_opt")]
    pub type_id: Option<String>,
    /// Column with the object's id (with `type_id`).
    pub id: Option<String>,
    /// Column with Customer.io's `cio_object_id` instead (updates only).
    pub cio_object_id: Option<String>,
    /// Omitted: every other non-empty column, as strings.
    pub attributes: Option<FieldsSpec>,
    #[serde(default, deserialize_with = "empty_policy")]
    pub empty: EmptyPolicy,
    #[serde(default)]
    pub action: ObjectAction,
    /// As `identify.send`.
    pub send: Option<SendSpec>,
    /// As `identify.diff`.
    pub diff: Option<DiffSpec>,
    /// Mirror mode: `delete`, `unset: [attr…]` or `ignore` for objects gone from a full read.
    pub on_missing: Option<OnMissingSpec>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ObjectAction {
    #[default]
    Identify,
    Delete,
}

/// `relationship.object`: which object the person is related to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ObjectRefSection {
    #[serde(deserialize_with = "type_id")]
    pub type_id: String,
    /// Column with the object's id.
    pub id: String,
}

/// `relationship:`: one row per (object, person) pair.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RelationshipSection {
    pub object: ObjectRefSection,
    pub person: IdentifierSection,
    /// Relationship attributes; omitted: none.
    pub attributes: Option<FieldsSpec>,
    #[serde(default, deserialize_with = "empty_policy")]
    pub empty: EmptyPolicy,
    #[serde(default)]
    pub action: AddOrDelete,
    /// Pairs gone from the last complete full read are removed.
    #[serde(default)]
    pub mirror: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AddOrDelete {
    #[default]
    Add,
    Delete,
}

/// `device:`: a person's push device.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeviceSection {
    pub identifier: IdentifierSection,
    /// Column with the device token.
    pub token: String,
    /// `ios`, `android`, or a column holding one of them (needed to add).
    pub platform: Option<String>,
    /// Column with the last use time (sent as integer Unix seconds).
    pub last_used: Option<TimestampSpec>,
    /// Device attributes; omitted: none.
    pub attributes: Option<FieldsSpec>,
    #[serde(default, deserialize_with = "empty_policy")]
    pub empty: EmptyPolicy,
    #[serde(default)]
    pub action: AddOrDelete,
}

/// `merge:`: merges `secondary` into `primary` (irreversible).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MergeSection {
    pub primary: IdentifierSection,
    pub secondary: IdentifierSection,
}

/// `pull:`: what to bring back from the App API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullSection {
    #[serde(default)]
    pub segments: bool,
    pub segment_membership: Option<MembershipSelection>,
    #[serde(default)]
    pub campaigns: bool,
    pub campaign_metrics: Option<MetricsSection>,
    /// Database for the pulled tables; defaults to the state database.
    pub into: Option<DatabaseUrl>,
    /// Members per membership page (the API allows up to 30000).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
}

fn default_page_size() -> u32 {
    30_000
}

/// `segment_membership: all` or a list of segment ids.
#[derive(Debug, Clone)]
pub enum MembershipSelection {
    All,
    Ids(Vec<i64>),
}

impl<'de> Deserialize<'de> for MembershipSelection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = MembershipSelection;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`all` or a list of segment ids, e.g. [7, 12]")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == "all" {
                    Ok(MembershipSelection::All)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Self::Value, A::Error> {
                Vec::<i64>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(MembershipSelection::Ids)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    #[serde(default)]
    pub period: MetricsPeriod,
    /// Periods back from now (the API's `steps`).
    #[serde(default = "default_steps")]
    pub steps: u32,
}

fn default_steps() -> u32 {
    30
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MetricsPeriod {
    Hours,
    #[default]
    Days,
    Weeks,
    Months,
}

/// A value written either as a bare string or as a map: the map keeps its own strict
/// errors (an untagged enum would say only "did not match any variant").
macro_rules! string_or_map {
    ($ty:ident, $str_variant:ident, $map_variant:ident, $map_ty:ty, $expecting:literal) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        Ok($ty::$str_variant(v.to_string()))
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        map: A,
                    ) -> Result<$ty, A::Error> {
                        <$map_ty>::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                            .map($ty::$map_variant)
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

string_or_map!(
    FieldSpec,
    Column,
    Typed,
    TypedField,
    "a column name or { column, as, format, empty }"
);
string_or_map!(
    TimestampSpec,
    Column,
    Typed,
    TimestampField,
    "a column name or { column, format }"
);
string_or_map!(
    NameSpec,
    Fixed,
    Column,
    ColumnRef,
    "an event name or { column: name_column }"
);

impl<'de> Deserialize<'de> for FieldsSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = FieldsSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of columns or a map of attribute name to column")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<FieldsSpec, A::Error> {
                Vec::<String>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(FieldsSpec::List)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<FieldsSpec, A::Error> {
                BTreeMap::<String, FieldSpec>::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )
                .map(FieldsSpec::Map)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for EventKeySpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = EventKeySpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a column name or a list of column names")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EventKeySpec, E> {
                Ok(EventKeySpec::Column(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<EventKeySpec, A::Error> {
                Vec::<String>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(EventKeySpec::Columns)
            }
        }
        d.deserialize_any(V)
    }
}

/// `send: changed | all`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum SendSpec {
    Changed,
    All,
}

/// `diff: attributes | row`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum DiffSpec {
    Attributes,
    Row,
}

/// `on_missing: delete | suppress | ignore` or `on_missing: { unset: [attr…] }`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(
    untagged,
    expecting = "`delete`, `suppress`, `ignore` or `{ unset: [attribute, …] }`"
)]
pub(super) enum OnMissingSpec {
    Word(OnMissingWord),
    Unset(UnsetSection),
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum OnMissingWord {
    Delete,
    Suppress,
    Ignore,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(super) struct UnsetSection {
    pub unset: Vec<String>,
}

/// `guard:`: when mirror mode refuses to remove anything.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GuardSection {
    /// Refuse when more than this share (0..=1) of the known identities vanished.
    pub max_missing_share: Option<f64>,
    /// Refuse when the read returned fewer rows than this.
    pub min_rows: Option<u64>,
}
