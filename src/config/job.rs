//! Validated configuration: what the rest of cio-sync runs from.
//!
//! Owns: the checked shapes ([`Settings`], [`JobSpec`]) built by `validate.rs`, where every
//! cross-field rule already holds (one identifier kind, one action, paths resolved).
//! Must not: parse files or know about serde; nothing here does I/O.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::{
    BatchSection, CsvSection, DeleteAction, EmptyPolicy, EventType, MetricsSection, PullSection,
    Region, SegmentAction, SqlSection, TimestampFormat, Transport, ValueType,
};
use super::secret::{DatabaseUrl, Secret};

#[derive(Debug, Clone)]
pub struct Settings {
    /// The `config.yaml` these came from (for error messages).
    pub config_file: PathBuf,
    pub state_url: DatabaseUrl,
    pub customerio: CustomerIo,
    /// Absolute or relative to the working directory (resolved against config.yaml).
    pub jobs_dir: PathBuf,
    pub track: TrackSettings,
    pub app: AppSettings,
    pub retry: RetrySettings,
    pub grace: Duration,
}

#[derive(Debug, Clone)]
pub struct CustomerIo {
    pub region: Region,
    pub site_id: Option<Secret>,
    pub track_api_key: Option<Secret>,
    pub app_api_key: Option<Secret>,
    /// The Track API base URL (region host, or the override).
    pub track_url: String,
    /// `true` when `track_url` was set by hand (a proxy or the simulator).
    pub track_url_overridden: bool,
    /// The App API base URL (region host, or the override).
    pub app_url: String,
}

#[derive(Debug, Clone)]
pub struct TrackSettings {
    pub rate_limit_per_sec: u32,
    pub concurrency: usize,
    pub timeout: Duration,
    pub batch: BatchSection,
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
    /// Cron with seconds, already checked to parse.
    pub schedule: Option<String>,
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
    pub batch: Option<BatchSection>,
    pub concurrency: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct PullJob {
    pub segments: bool,
    pub membership: Option<super::raw::MembershipSelection>,
    pub campaigns: bool,
    pub metrics: Option<MetricsSection>,
    pub into: Option<DatabaseUrl>,
    pub page_size: u32,
}

impl From<PullSection> for PullJob {
    fn from(p: PullSection) -> Self {
        Self {
            segments: p.segments,
            membership: p.segment_membership,
            campaigns: p.campaigns,
            metrics: p.campaign_metrics,
            into: p.into,
            page_size: p.page_size,
        }
    }
}

#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// `path` is resolved against the job file's folder.
    Csv(CsvSection),
    Sql(SqlSection),
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
}

impl IdentifierKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            IdentifierKind::Id => "id",
            IdentifierKind::Email => "email",
            IdentifierKind::CioId => "cio_id",
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
