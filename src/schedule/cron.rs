//! Cron expressions: reading one (5 fields, or 6 with seconds first), naming the field that
//! is wrong and the range it takes, and the fire times around a moment in a job's time zone.
//!
//! Owns: the one cron dialect of cio-sync (croner's parser; day-of-month and day-of-week
//! AND-ed, as the 6-field form always was), and DST: a time the clocks skip fires once at the
//! first moment after the gap, a time they pass twice fires once, at the first pass.
//! Must not: read the clock (every function is given "now"), or know about jobs or config
//! files (config validation and the daemon both call in here).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A field of a cron expression: its name and what it takes.
struct Field {
    name: &'static str,
    takes: &'static str,
}

const SECOND: Field = Field {
    name: "second",
    takes: "0-59",
};
const FIVE: [Field; 5] = [
    Field {
        name: "minute",
        takes: "0-59",
    },
    Field {
        name: "hour",
        takes: "0-23",
    },
    Field {
        name: "day-of-month",
        takes: "1-31 (or L for the last day)",
    },
    Field {
        name: "month",
        takes: "1-12 or JAN-DEC",
    },
    Field {
        name: "day-of-week",
        takes: "0-7 or SUN-SAT (0 and 7 are Sunday)",
    },
];

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .dom_and_dow(true)
        .build()
}

/// Parses `expr`, or says what is wrong with it: the number of fields, or the first field
/// that does not parse with its name and allowed range.
pub(crate) fn parse(expr: &str) -> Result<Cron, String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let names: Vec<&Field> = match fields.len() {
        5 => FIVE.iter().collect(),
        6 => std::iter::once(&SECOND).chain(FIVE.iter()).collect(),
        n => {
            return Err(format!(
                "`{expr}` has {n} field{}; use 5 (`minute hour day-of-month month day-of-week`, e.g. \"0 2 * * *\" for 02:00 every day) or 6 with seconds first (\"0 0 2 * * *\")",
                if n == 1 { "" } else { "s" }
            ));
        }
    };
    let whole = match parser().parse(expr) {
        Ok(cron) => return Ok(cron),
        Err(e) => e,
    };
    // croner says only "Number out of bounds": find the field by parsing each one alone,
    // every other field a wildcard.
    for (i, field) in fields.iter().enumerate() {
        let probe: Vec<&str> = (0..fields.len())
            .map(|j| if j == i { *field } else { "*" })
            .collect();
        if parser().parse(&probe.join(" ")).is_err() {
            let f = names[i];
            return Err(format!(
                "`{expr}`: the {} field `{field}` is not valid: it takes {}, lists (1,15), ranges (1-5), steps (*/10) or *",
                f.name, f.takes
            ));
        }
    }
    Err(format!("`{expr}` is not a valid schedule: {whole}"))
}

/// The first fire time strictly after `after`, reading the schedule in `tz`.
pub(crate) fn next_after(cron: &Cron, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&after.with_timezone(&tz), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The last fire time at or before `at`, reading the schedule in `tz`.
pub(crate) fn last_at_or_before(cron: &Cron, tz: Tz, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_previous_occurrence(&at.with_timezone(&tz), true)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// When `schedule` (in `tz`, UTC when `None`) fires next after `now`; `None` when it does not
/// parse or never fires again. For `status` and the daemon alike.
pub(crate) fn next_run(
    schedule: &str,
    tz: Option<Tz>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    next_after(&parse(schedule).ok()?, tz.unwrap_or(chrono_tz::UTC), now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// Every fire time in (from, to].
    fn fires(expr: &str, tz: Tz, from: &str, to: &str) -> Vec<DateTime<Utc>> {
        let cron = parse(expr).unwrap();
        let (mut t, end) = (utc(from), utc(to));
        let mut out = Vec::new();
        while let Some(next) = next_after(&cron, tz, t) {
            if next > end {
                break;
            }
            out.push(next);
            t = next;
        }
        out
    }

    #[test]
    fn five_fields_are_minute_hour_dom_month_dow_and_six_start_with_seconds() {
        let five = fires(
            "30 2 * * *",
            chrono_tz::UTC,
            "2026-06-01T00:00:00Z",
            "2026-06-03T00:00:00Z",
        );
        assert_eq!(
            five,
            vec![utc("2026-06-01T02:30:00Z"), utc("2026-06-02T02:30:00Z")]
        );
        let six = fires(
            "15 30 2 * * *",
            chrono_tz::UTC,
            "2026-06-01T00:00:00Z",
            "2026-06-02T00:00:00Z",
        );
        assert_eq!(six, vec![utc("2026-06-01T02:30:15Z")]);
    }

    #[test]
    fn a_timezone_job_fires_at_local_time_across_the_summer_change() {
        // 02:00 in Paris is 01:00 UTC in winter and 00:00 UTC in summer (change on 29 March).
        let paris = fires(
            "0 2 * * *",
            chrono_tz::Europe::Paris,
            "2026-03-27T12:00:00Z",
            "2026-03-31T12:00:00Z",
        );
        assert_eq!(
            paris,
            vec![
                utc("2026-03-28T01:00:00Z"),
                utc("2026-03-29T01:00:00Z"), // 03:00 CEST: 02:00 does not exist that night
                utc("2026-03-30T00:00:00Z"),
                utc("2026-03-31T00:00:00Z"),
            ]
        );
    }

    #[test]
    fn a_time_the_clocks_skip_fires_once_and_a_time_they_repeat_fires_once() {
        let ny = chrono_tz::America::New_York;
        // Spring forward, 8 March 2026: 02:00 → 03:00, so 02:30 does not exist.
        let spring = fires(
            "30 2 * * *",
            ny,
            "2026-03-07T12:00:00Z",
            "2026-03-09T12:00:00Z",
        );
        let on_the_night: Vec<_> = spring
            .iter()
            .filter(|t| {
                t.with_timezone(&ny).date_naive()
                    == chrono::NaiveDate::from_ymd_opt(2026, 3, 8).unwrap()
            })
            .collect();
        assert_eq!(
            on_the_night.len(),
            1,
            "once on the spring-forward night: {spring:?}"
        );
        assert_eq!(
            *on_the_night[0],
            ny.with_ymd_and_hms(2026, 3, 8, 3, 0, 0).unwrap()
        );
        // Fall back, 1 November 2026: 01:30 happens twice.
        let autumn = fires(
            "30 1 * * *",
            ny,
            "2026-10-31T12:00:00Z",
            "2026-11-01T12:00:00Z",
        );
        assert_eq!(
            autumn,
            vec![utc("2026-11-01T05:30:00Z")],
            "once, at the first 01:30 (EDT)"
        );
    }

    #[test]
    fn the_last_tick_at_or_before_a_moment_is_found_for_catch_up() {
        let cron = parse("0 2 * * *").unwrap();
        let tz = chrono_tz::UTC;
        assert_eq!(
            last_at_or_before(&cron, tz, utc("2026-06-02T01:59:59Z")),
            Some(utc("2026-06-01T02:00:00Z"))
        );
        assert_eq!(
            last_at_or_before(&cron, tz, utc("2026-06-02T02:00:00Z")),
            Some(utc("2026-06-02T02:00:00Z"))
        );
    }

    #[test]
    fn a_bad_field_is_named_with_the_range_it_takes() {
        let e = parse("0 25 * * *").unwrap_err();
        assert!(
            e.contains("the hour field `25` is not valid: it takes 0-23"),
            "{e}"
        );
        let e = parse("61 0 2 * * *").unwrap_err();
        assert!(e.contains("the second field `61`"), "{e}");
        let e = parse("0 2 * 13 *").unwrap_err();
        assert!(
            e.contains("the month field `13`") && e.contains("1-12 or JAN-DEC"),
            "{e}"
        );
        let e = parse("0 2 * * 9").unwrap_err();
        assert!(e.contains("the day-of-week field `9`"), "{e}");
        let e = parse("0 2 *").unwrap_err();
        assert!(e.contains("has 3 fields; use 5"), "{e}");
        assert!(!e.contains("Number out of bounds"));
    }
}
