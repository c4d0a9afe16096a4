//! Raw serde shapes → runtime types: the one place where `raw.rs` values cross into `job.rs`.
//!
//! Owns: the plain `From` conversions that need no rule (enums, number sections).
//! Must not: check anything (that is `validate.rs`) or touch the file system.

use std::time::Duration;

use super::job;
use super::raw;

/// An enum whose raw and runtime spellings have the same variants.
macro_rules! same_variants {
    ($name:ident { $($variant:ident),+ $(,)? }) => {
        impl From<raw::$name> for job::$name {
            fn from(v: raw::$name) -> Self {
                match v {
                    $(raw::$name::$variant => job::$name::$variant,)+
                }
            }
        }
    };
}

same_variants!(Region { Us, Eu });
same_variants!(Transport { V2, V1 });
same_variants!(EmptyPolicy { Skip, Null });
same_variants!(ValueType {
    Auto,
    String,
    Number,
    Bool,
    Timestamp,
    Json
});

impl From<raw::TimestampFormat> for job::TimestampFormat {
    fn from(v: raw::TimestampFormat) -> Self {
        match v {
            raw::TimestampFormat::Auto => Self::Auto,
            raw::TimestampFormat::Rfc3339 => Self::Rfc3339,
            raw::TimestampFormat::Date => Self::Date,
            raw::TimestampFormat::Unix => Self::Unix,
            raw::TimestampFormat::UnixMs => Self::UnixMs,
            raw::TimestampFormat::Pattern(p) => Self::Pattern(p),
        }
    }
}
same_variants!(EventType {
    Event,
    Page,
    Screen
});
same_variants!(DeleteAction {
    Delete,
    Suppress,
    Unsuppress
});
same_variants!(ObjectAction { Identify, Delete });
same_variants!(AddOrDelete { Add, Delete });
same_variants!(SegmentAction { Add, Remove });
same_variants!(MetricsPeriod {
    Hours,
    Days,
    Weeks,
    Months
});

impl From<raw::MembershipSelection> for job::MembershipSelection {
    fn from(v: raw::MembershipSelection) -> Self {
        match v {
            raw::MembershipSelection::All => job::MembershipSelection::All,
            raw::MembershipSelection::Ids(ids) => job::MembershipSelection::Ids(ids),
        }
    }
}

impl From<raw::MetricsSection> for job::MetricsSelection {
    fn from(m: raw::MetricsSection) -> Self {
        Self {
            period: m.period.into(),
            steps: m.steps,
        }
    }
}

impl From<raw::BatchSection> for job::BatchLimits {
    fn from(b: raw::BatchSection) -> Self {
        Self {
            max_items: b.max_items,
            max_bytes: b.max_bytes,
        }
    }
}

impl From<raw::PullSection> for job::PullJob {
    fn from(p: raw::PullSection) -> Self {
        Self {
            segments: p.segments,
            membership: p.segment_membership.map(Into::into),
            campaigns: p.campaigns,
            metrics: p.campaign_metrics.map(Into::into),
            into: p.into,
            page_size: p.page_size,
        }
    }
}

impl From<raw::CursorSection> for job::SqlCursor {
    fn from(c: raw::CursorSection) -> Self {
        Self {
            column: c.column,
            tiebreak: c.tiebreak,
        }
    }
}

impl From<raw::SqlSection> for job::SqlSource {
    /// The URL is taken as written; `validate.rs` resolves a relative `sqlite://` path.
    fn from(s: raw::SqlSection) -> Self {
        Self {
            url: s.url,
            query: s.query,
            cursor: s.cursor.map(Into::into),
            batch_rows: s.batch_rows,
            connect_timeout: Duration::from_secs(s.connect_timeout_secs),
        }
    }
}

impl From<raw::CsvSection> for job::CsvSource {
    /// The path is taken as written; `validate.rs` resolves it.
    fn from(c: raw::CsvSection) -> Self {
        Self {
            path: c.path,
            delimiter: c.delimiter,
            quote: c.quote,
            double_quote: c.double_quote,
            escape: c.escape,
            quoting: c.quoting,
            trim: c.trim,
            min_age: c.min_age_secs.map(Duration::from_secs),
        }
    }
}
