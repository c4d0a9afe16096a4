//! Validated configuration: what the rest of cio-sync runs from.
//!
//! Owns: the checked shapes ([`Settings`], [`JobSpec`]) built by `validate.rs`, where every
//! cross-field rule already holds (one identifier kind, one action, paths resolved).
//! Must not: parse files or know about serde (the serde shapes stay private in `raw.rs`;
//! `convert.rs` turns them into these); nothing here does I/O.

use std::path::PathBuf;
use std::time::Duration;

use super::secret::{ApiUrl, DatabaseUrl, Secret};

/// Which Customer.io data centre the workspace lives in; picks the default hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Region {
    #[default]
    Us,
    Eu,
}

/// How operations go on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// `POST /api/v2/batch`, many operations a request.
    #[default]
    V2,
    /// One `/api/v1/...` request per operation.
    V1,
}

/// How big one v2 batch may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLimits {
    /// Operations per v2 batch at most.
    pub max_items: usize,
    /// Bytes per v2 batch body at most, envelope included (Customer.io's limit is 500 KB).
    pub max_bytes: usize,
}

impl Default for BatchLimits {
    /// `track.batch` as it is when config.yaml leaves it out.
    fn default() -> Self {
        let raw = super::raw::BatchSection::default();
        Self {
            max_items: raw.max_items,
            max_bytes: raw.max_bytes,
        }
    }
}

/// What an empty cell means for an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmptyPolicy {
    /// An empty cell is left out of the call (never blanks an attribute by accident).
    #[default]
    Skip,
    /// An empty cell is sent as `null`, clearing the attribute.
    Null,
}

/// The JSON type a value is sent as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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

/// How a timestamp cell is written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TimestampFormat {
    /// RFC 3339 / ISO-8601 date-time (no offset = UTC), `YYYY-MM-DD`, or integer Unix seconds.
    #[default]
    Auto,
    Rfc3339,
    Date,
    Unix,
    UnixMs,
    /// A strftime pattern (`"%m/%d/%Y %H:%M"`), checked when the file was loaded.
    Pattern(String),
}

impl From<&TimestampFormat> for TimestampFormat {
    fn from(f: &TimestampFormat) -> Self {
        f.clone()
    }
}

/// The kind of a Track event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventType {
    #[default]
    Event,
    Page,
    Screen,
}

/// `delete` removes the person; `suppress` also blocks the identifier for good;
/// `unsuppress` lifts that block (it does not bring the profile back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeleteAction {
    #[default]
    Delete,
    Suppress,
    Unsuppress,
}

/// What an object job does to each object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ObjectAction {
    #[default]
    Identify,
    Delete,
}

/// Whether a relationship or device job adds or removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AddOrDelete {
    #[default]
    Add,
    Delete,
}

/// How an object job names each object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectIdentSpec {
    /// `object_type_id` (always a string) and the column with `object_id`.
    Typed { type_id: String, column: String },
    /// The column with Customer.io's `cio_object_id` (updates only).
    CioObjectId { column: String },
}

/// A push device's platform: fixed in the job, or read per row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlatformSpec {
    Fixed(Platform),
    Column(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Ios,
    Android,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Ios => "ios",
            Platform::Android => "android",
        }
    }

    /// `ios` / `android`, any case and surrounding spaces.
    pub fn parse(s: &str) -> Option<Platform> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ios" => Some(Platform::Ios),
            "android" => Some(Platform::Android),
            _ => None,
        }
    }
}

/// Whether a segment job adds people to the manual segment or removes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SegmentAction {
    #[default]
    Add,
    Remove,
}

/// Which segments' members a pull job brings back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipSelection {
    All,
    Ids(Vec<i64>),
}

/// The period of campaign metrics series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetricsPeriod {
    Hours,
    #[default]
    Days,
    Weeks,
    Months,
}

/// Which campaign metrics a pull job asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSelection {
    pub period: MetricsPeriod,
    /// Periods back from now (the API's `steps`).
    pub steps: u32,
}

/// A CSV source, its path resolved against the job file's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvSource {
    /// Absolute, or relative to the working directory only when the job file's own path was.
    /// `.gz` is decompressed.
    pub path: PathBuf,
    /// Single ASCII characters (checked by validation).
    pub delimiter: char,
    pub quote: char,
    /// `true`: `""` inside quotes is a quote; `false`: use `escape`.
    pub double_quote: bool,
    pub escape: Option<char>,
    /// `false` to treat quote characters as ordinary text.
    pub quoting: bool,
    /// Trim spaces around fields.
    pub trim: bool,
    /// A file modified more recently than this is not read (`source.csv.min_age_secs`).
    pub min_age: Option<std::time::Duration>,
}

/// A SQL source; a relative `sqlite://` path is already resolved against the job file's folder.
#[derive(Debug, Clone)]
pub struct SqlSource {
    pub url: DatabaseUrl,
    pub query: String,
    pub cursor: Option<SqlCursor>,
    /// Rows per chunk of the query; at least 1.
    pub batch_rows: u32,
    /// How long opening a connection may take before the run fails.
    pub connect_timeout: Duration,
}

/// The columns an incremental SQL read orders and resumes by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlCursor {
    pub column: String,
    pub tiebreak: String,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// The `config.yaml` these came from (for error messages).
    pub config_file: PathBuf,
    pub state_url: DatabaseUrl,
    /// `state.connect_timeout_secs`: how long opening the state database may wait.
    pub state_connect_timeout: Duration,
    pub customerio: CustomerIo,
    /// Absolute or relative to the working directory (resolved against config.yaml).
    pub jobs_dir: PathBuf,
    pub track: TrackSettings,
    pub app: AppSettings,
    pub retry: RetrySettings,
    pub grace: Duration,
    /// `http.listen`: where `/metrics`, `/healthz` and `/readyz` are served; `None`: nowhere.
    pub http_listen: Option<std::net::SocketAddr>,
    /// `workspaces:` by name; jobs without `workspace:` use `customerio` and `track`/`app`.
    pub workspaces: std::collections::BTreeMap<String, Workspace>,
    /// `daemon.heartbeat_secs`: how often a daemon tells the state database it is alive.
    pub heartbeat: Duration,
    /// `webhooks:`: the reporting-webhook receiver; `None`: not configured.
    pub webhooks: Option<WebhookSettings>,
}

/// `webhooks:` in config.yaml, checked: the receiver of Customer.io's reporting webhooks.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// `webhooks.listen`.
    pub listen: std::net::SocketAddr,
    /// `webhooks.path`: starts with `/`.
    pub path: String,
    /// `webhooks.signing_key` and `webhooks.signing_keys`, at least one, none empty; any of
    /// them verifies a request (key rotation).
    pub signing_keys: Vec<Secret>,
    /// `webhooks.tolerance_secs`: how far `X-CIO-Timestamp` may be from now.
    pub tolerance: Duration,
    /// `webhooks.max_body_bytes`.
    pub max_body_bytes: usize,
    /// `webhooks.database`: where `cio_message_events` lives; `None`: the state database.
    pub database: Option<DatabaseUrl>,
}

/// A named Customer.io workspace of `workspaces:`, with its own rate limits.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub customerio: CustomerIo,
    /// Track requests per second for this workspace, shared by its jobs.
    pub track_rate_limit_per_sec: u32,
    /// App requests per second for this workspace.
    pub app_rate_limit_per_sec: u32,
}

impl Settings {
    /// These settings as a job of `workspace` sees them: its credentials, hosts and rate
    /// limits in `customerio`, `track` and `app`. `None` (the default workspace) is `self`;
    /// an unknown name is `None` (validation already refused it).
    pub fn for_workspace(&self, workspace: Option<&str>) -> Option<Settings> {
        let Some(name) = workspace else {
            return Some(self.clone());
        };
        let w = self.workspaces.get(name)?;
        let mut s = self.clone();
        s.customerio = w.customerio.clone();
        s.track.rate_limit_per_sec = w.track_rate_limit_per_sec;
        s.app.rate_limit_per_sec = w.app_rate_limit_per_sec;
        Some(s)
    }
}

#[derive(Debug, Clone)]
pub struct CustomerIo {
    /// Where this block is in config.yaml (`customerio`, or `workspaces.eu`), so messages
    /// name the key to change.
    pub key: String,
    pub region: Region,
    pub site_id: Option<Secret>,
    pub track_api_key: Option<Secret>,
    pub app_api_key: Option<Secret>,
    /// The Track API base URL (region host, or the override), no trailing slash; masked when
    /// shown, since an override may carry `user:pass@`.
    pub track_url: ApiUrl,
    /// `true` when `track_url` was set by hand (a proxy or the simulator).
    pub track_url_overridden: bool,
    /// The App API base URL (region host, or the override), no trailing slash; masked when shown.
    pub app_url: ApiUrl,
}

#[derive(Debug, Clone)]
pub struct TrackSettings {
    pub rate_limit_per_sec: u32,
    pub concurrency: usize,
    pub timeout: Duration,
    pub batch: BatchLimits,
    pub transport: Transport,
}

#[derive(Debug, Clone)]
pub struct AppSettings {
    pub rate_limit_per_sec: u32,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct RetrySettings {
    pub max_attempts: usize,
    pub base_delay: Duration,
    pub max_wait: Duration,
    pub max_total_wait: Duration,
}

/// One job, ready to run.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The job file's stem: `jobs/orders.yaml` is `orders`.
    pub name: String,
    pub file: PathBuf,
    /// Cron, 5 fields or 6 with seconds first, already checked to parse.
    pub schedule: Option<String>,
    /// The zone `schedule` is read in (DST included); `None` = UTC.
    pub timezone: Option<chrono_tz::Tz>,
    /// `catch_up: true`: at daemon start, run once if the last scheduled tick was missed.
    pub catch_up: bool,
    /// `enabled: false` pauses the job in the daemon (`run JOB` still runs it by hand).
    pub enabled: bool,
    /// The `workspaces:` entry the job talks to; `None` = the `customerio` block.
    pub workspace: Option<String>,
    pub kind: JobKind,
}

#[derive(Debug, Clone)]
pub enum JobKind {
    Push(Box<PushJob>),
    Pull(PullJob),
}

#[derive(Debug, Clone)]
pub struct PushJob {
    pub source: SourceSpec,
    pub mapping: MappingSpec,
    /// Job-level overrides of config.yaml's `track` section.
    pub transport: Option<Transport>,
    pub batch: Option<BatchLimits>,
    pub concurrency: Option<usize>,
    /// `send` / `diff`: change detection (identify, object, relationship and segment jobs).
    pub change: ChangePolicy,
    /// Mirror mode, when the job has it.
    pub mirror: Option<MirrorSpec>,
}

/// Mirror mode: what a complete full read does to the identities it no longer has.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorSpec {
    pub on_missing: OnMissing,
    /// Refuse when more than this share (0..=1) of the known identities vanished.
    pub max_missing_share: f64,
    /// Refuse when the read returned fewer rows than this.
    pub min_rows: u64,
}

/// What happens to a vanished identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnMissing {
    /// Delete the person or object.
    Delete,
    /// Suppress the person.
    Suppress,
    /// Clear these attributes.
    Unset(Vec<String>),
    /// Remove the segment membership or the relationship (`mirror: true`).
    Remove,
}

#[derive(Debug, Clone)]
pub struct PullJob {
    pub segments: bool,
    pub membership: Option<MembershipSelection>,
    pub campaigns: bool,
    pub metrics: Option<MetricsSelection>,
    pub into: Option<DatabaseUrl>,
    pub page_size: u32,
}

#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// `path` is resolved against the job file's folder.
    Csv(CsvSource),
    Sql(SqlSource),
}

impl SourceSpec {
    /// How errors and dead letters name the source: the file path, or the database URL
    /// with its password masked.
    pub fn describe(&self) -> String {
        match self {
            SourceSpec::Csv(c) => c.path.display().to_string(),
            SourceSpec::Sql(s) => s.url.masked(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentifierKind {
    Id,
    Email,
    CioId,
    /// v2 person operations only.
    Phone,
}

impl IdentifierKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            IdentifierKind::Id => "id",
            IdentifierKind::Email => "email",
            IdentifierKind::CioId => "cio_id",
            IdentifierKind::Phone => "phone",
        }
    }
}

/// Which column identifies the person, and as what.
#[derive(Debug, Clone)]
pub struct IdentifierSpec {
    pub kind: IdentifierKind,
    pub column: String,
}

/// Where one attribute or data value comes from.
#[derive(Debug, Clone)]
pub struct FieldMapping {
    /// The key sent to Customer.io.
    pub name: String,
    pub source: FieldSource,
    pub as_type: ValueType,
    pub format: TimestampFormat,
    /// The zone of times without an offset; `None` = UTC.
    pub timezone: Option<chrono_tz::Tz>,
    pub empty: EmptyPolicy,
}

#[derive(Debug, Clone)]
pub enum FieldSource {
    Column(String),
    Constant(serde_json::Value),
}

/// Explicit fields, or "every other non-empty column, as strings".
#[derive(Debug, Clone)]
pub enum FieldSet {
    Explicit(Vec<FieldMapping>),
    AllOtherColumns { empty: EmptyPolicy },
}

#[derive(Debug, Clone)]
pub struct TimestampColumn {
    pub column: String,
    pub format: TimestampFormat,
    /// The zone of times without an offset; `None` = UTC.
    pub timezone: Option<chrono_tz::Tz>,
}

#[derive(Debug, Clone)]
pub enum MappingSpec {
    Identify {
        identifier: IdentifierSpec,
        attributes: FieldSet,
        timestamp: Option<TimestampColumn>,
        update_only: bool,
    },
    Track {
        who: EventSubject,
        name: EventName,
        event_type: EventType,
        timestamp: Option<TimestampColumn>,
        /// Columns forming the row's key; empty = the whole row's content.
        key_columns: Vec<String>,
        data: FieldSet,
    },
    Delete {
        identifier: IdentifierSpec,
        action: DeleteAction,
    },
    Segment {
        segment_id: i64,
        identifier: IdentifierSpec,
        action: SegmentAction,
    },
    /// Custom objects (v2 only).
    Object {
        object: ObjectIdentSpec,
        attributes: FieldSet,
        action: ObjectAction,
    },
    /// Person ↔ object relationships, one row per pair (v2 only).
    Relationship {
        type_id: String,
        object_column: String,
        person: IdentifierSpec,
        attributes: FieldSet,
        action: AddOrDelete,
    },
    /// Push devices (v2 only).
    Device {
        identifier: IdentifierSpec,
        token: String,
        /// `None` only for deletes.
        platform: Option<PlatformSpec>,
        last_used: Option<TimestampColumn>,
        attributes: FieldSet,
        action: AddOrDelete,
    },
    /// Merges `secondary` into `primary`, then deletes `secondary`.
    Merge {
        primary: IdentifierSpec,
        secondary: IdentifierSpec,
    },
}

impl MappingSpec {
    /// `true` for jobs Track v1 has no request for (objects, relationships, devices).
    pub fn needs_v2(&self) -> bool {
        matches!(
            self,
            MappingSpec::Object { .. }
                | MappingSpec::Relationship { .. }
                | MappingSpec::Device { .. }
        )
    }

    /// The YAML key of the job kind, for error messages.
    pub fn key(&self) -> &'static str {
        match self {
            MappingSpec::Identify { .. } => "identify",
            MappingSpec::Track { .. } => "track",
            MappingSpec::Delete { .. } => "delete",
            MappingSpec::Segment { .. } => "segment",
            MappingSpec::Object { .. } => "object",
            MappingSpec::Relationship { .. } => "relationship",
            MappingSpec::Device { .. } => "device",
            MappingSpec::Merge { .. } => "merge",
        }
    }

    /// The person identifier of the job, if it names one (for the v1 phone check).
    pub fn person_identifiers(&self) -> Vec<(&'static str, &IdentifierSpec)> {
        match self {
            MappingSpec::Identify { identifier, .. } => vec![("identify.identifier", identifier)],
            MappingSpec::Track {
                who: EventSubject::Person(i),
                ..
            } => vec![("track.identifier", i)],
            MappingSpec::Delete { identifier, .. } => vec![("delete.identifier", identifier)],
            MappingSpec::Segment { identifier, .. } => vec![("segment.identifier", identifier)],
            MappingSpec::Device { identifier, .. } => vec![("device.identifier", identifier)],
            MappingSpec::Relationship { person, .. } => vec![("relationship.person", person)],
            MappingSpec::Merge { primary, secondary } => {
                vec![("merge.primary", primary), ("merge.secondary", secondary)]
            }
            MappingSpec::Track { .. } | MappingSpec::Object { .. } => Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum EventSubject {
    Person(IdentifierSpec),
    Anonymous { column: String },
}

#[derive(Debug, Clone)]
pub enum EventName {
    Fixed(String),
    Column(String),
}

/// `send:` of a job: whether unchanged rows are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SendPolicy {
    /// Skip rows whose attributes Customer.io already has (default).
    #[default]
    Changed,
    /// Send every row.
    All,
}

/// `diff:` of a job: what a changed row sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiffPolicy {
    /// Only the attributes that changed (default).
    #[default]
    Attributes,
    /// The whole row.
    Row,
}

/// A job's change-detection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChangePolicy {
    pub send: SendPolicy,
    pub diff: DiffPolicy,
}
