//! When each point of a v1 campaign-metrics series starts.
//!
//! Owns: the calendar arithmetic for `cio_campaign_metrics.period_start`. The last point of a
//! series is the current period and index 0 the oldest (customerio-api.md §9), so point `i` of
//! `n` starts `n - 1 - i` periods before the current one. Customer.io counts days in US Eastern
//! time, so days, weeks and months start at midnight America/New_York (US daylight-saving rule
//! since 2007: second Sunday of March to first Sunday of November, 02:00 local); hours are whole
//! UTC hours, which are whole Eastern hours too. Weeks start on Sunday (US convention; which day
//! Customer.io uses is unverified).
//! Must not: know about HTTP or databases.

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, Utc, Weekday};

use crate::config::MetricsPeriod;

/// Unix seconds at which the period `back` periods before the one holding `now` starts;
/// `None` only for dates chrono cannot represent.
pub fn period_start(now: DateTime<Utc>, period: MetricsPeriod, back: u32) -> Option<i64> {
    if period == MetricsPeriod::Hours {
        let hour = now.timestamp().div_euclid(3600);
        return Some((hour - i64::from(back)) * 3600);
    }
    let today = eastern_date(now)?;
    let first = match period {
        MetricsPeriod::Hours | MetricsPeriod::Days => {
            today.checked_sub_days(Days::new(u64::from(back)))?
        }
        MetricsPeriod::Weeks => {
            let sunday = today
                .checked_sub_days(Days::new(u64::from(today.weekday().num_days_from_sunday())))?;
            sunday.checked_sub_days(Days::new(7 * u64::from(back)))?
        }
        MetricsPeriod::Months => today.with_day(1)?.checked_sub_months(Months::new(back))?,
    };
    eastern_midnight(first)
}

/// The start of every point of a series of `len` points, oldest first.
pub fn series_starts(now: DateTime<Utc>, period: MetricsPeriod, len: usize) -> Option<Vec<i64>> {
    (0..len)
        .map(|i| period_start(now, period, u32::try_from(len - 1 - i).ok()?))
        .collect()
}

/// Daylight saving in `year`, as UTC instants: [second Sunday of March 07:00 UTC (02:00 EST),
/// first Sunday of November 06:00 UTC (02:00 EDT)).
fn dst_bounds(year: i32) -> Option<(NaiveDate, NaiveDate)> {
    Some((
        NaiveDate::from_weekday_of_month_opt(year, 3, Weekday::Sun, 2)?,
        NaiveDate::from_weekday_of_month_opt(year, 11, Weekday::Sun, 1)?,
    ))
}

const EST: i64 = -5 * 3600;
const EDT: i64 = -4 * 3600;

/// The calendar date in New York at `now`.
fn eastern_date(now: DateTime<Utc>) -> Option<NaiveDate> {
    let (start, end) = dst_bounds(now.year())?;
    let t = now.timestamp();
    let dst_from = start.and_hms_opt(7, 0, 0)?.and_utc().timestamp();
    let dst_until = end.and_hms_opt(6, 0, 0)?.and_utc().timestamp();
    let offset = if (dst_from..dst_until).contains(&t) {
        EDT
    } else {
        EST
    };
    DateTime::from_timestamp(t + offset, 0).map(|d| d.date_naive())
}

/// Unix seconds of midnight in New York on `date`. Midnight is never inside a transition
/// (they happen at 02:00), so the offset is that of the date: EDT from the day after the
/// March change to the November change day itself.
fn eastern_midnight(date: NaiveDate) -> Option<i64> {
    let (start, end) = dst_bounds(date.year())?;
    let offset = if date > start && date <= end {
        EDT
    } else {
        EST
    };
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp() - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn ts(s: &str) -> i64 {
        at(s).timestamp()
    }

    #[test]
    fn days_start_at_new_york_midnight_across_daylight_saving() {
        // 2026-03-08 is the spring change (02:00 EST → 03:00 EDT).
        let now = at("2026-03-08T12:00:00Z");
        assert_eq!(
            period_start(now, MetricsPeriod::Days, 0),
            Some(ts("2026-03-08T05:00:00Z"))
        );
        assert_eq!(
            period_start(now, MetricsPeriod::Days, 1),
            Some(ts("2026-03-07T05:00:00Z"))
        );
        let after = at("2026-03-09T12:00:00Z");
        assert_eq!(
            period_start(after, MetricsPeriod::Days, 0),
            Some(ts("2026-03-09T04:00:00Z"))
        );
        // 2026-11-01 is the autumn change; its midnight is still EDT.
        let nov = at("2026-11-02T03:00:00Z"); // 22:00 EST on Nov 1
        assert_eq!(
            period_start(nov, MetricsPeriod::Days, 0),
            Some(ts("2026-11-01T04:00:00Z"))
        );
        assert_eq!(
            period_start(at("2026-11-02T06:00:00Z"), MetricsPeriod::Days, 0),
            Some(ts("2026-11-02T05:00:00Z"))
        );
        // Before New York's midnight it is still the previous day there.
        assert_eq!(
            period_start(at("2026-01-10T03:00:00Z"), MetricsPeriod::Days, 0),
            Some(ts("2026-01-09T05:00:00Z"))
        );
    }

    #[test]
    fn hours_weeks_and_months_count_back_whole_periods() {
        let now = at("2026-07-15T13:45:10Z"); // a Wednesday, 09:45 EDT
        assert_eq!(
            period_start(now, MetricsPeriod::Hours, 0),
            Some(ts("2026-07-15T13:00:00Z"))
        );
        assert_eq!(
            period_start(now, MetricsPeriod::Hours, 25),
            Some(ts("2026-07-14T12:00:00Z"))
        );
        assert_eq!(
            period_start(now, MetricsPeriod::Weeks, 0),
            Some(ts("2026-07-12T04:00:00Z"))
        );
        assert_eq!(
            period_start(now, MetricsPeriod::Weeks, 2),
            Some(ts("2026-06-28T04:00:00Z"))
        );
        assert_eq!(
            period_start(now, MetricsPeriod::Months, 0),
            Some(ts("2026-07-01T04:00:00Z"))
        );
        assert_eq!(
            period_start(now, MetricsPeriod::Months, 7),
            Some(ts("2025-12-01T05:00:00Z"))
        );
    }

    #[test]
    fn a_series_ends_with_the_current_period() {
        let now = at("2026-07-15T13:45:10Z");
        let starts = series_starts(now, MetricsPeriod::Days, 3).unwrap();
        assert_eq!(
            starts,
            [
                ts("2026-07-13T04:00:00Z"),
                ts("2026-07-14T04:00:00Z"),
                ts("2026-07-15T04:00:00Z")
            ]
        );
        assert!(
            series_starts(now, MetricsPeriod::Days, 0)
                .unwrap()
                .is_empty()
        );
    }
}
