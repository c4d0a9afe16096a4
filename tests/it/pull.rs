//! Pull jobs end to end: the real runner against the in-process simulator, writing to SQLite
//! (a file in a temp dir) and to the real PostgreSQL server (`CIO_SYNC_TEST_PG`, default
//! `postgres://postgres@127.0.0.1:5432/test`; a fresh database per test, dropped after a pass
//! and kept after a failure). A missing PostgreSQL server fails the test: it is never skipped.

use std::collections::BTreeMap;
use std::time::Duration;

use cio_sync::config::{Config, JobSpec};
use cio_sync::pipeline::{RunMode, RunReport, StopSignal};
use cio_sync::pull::period;
use cio_sync::runner::Runner;
use cio_sync::simulator::{Api, AppFault, Faults, Member};
use cio_sync::state::Outcome;
use serde_json::{Value, json};
use sqlx::{AnyPool, Row};

use crate::helpers::{StateDb, TestEnv};

/// Settings knobs a test changes.
struct Opts {
    app_rate: u32,
    app_key: &'static str,
    max_attempts: u32,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            app_rate: 200,
            app_key: "demo-app-key",
            max_attempts: 3,
        }
    }
}

/// Writes config.yaml (App settings only) and `jobs/<job>.yaml`, and loads them as the daemon
/// would.
fn load_job(env: &TestEnv, job: &str, job_yaml: &str, opts: &Opts) -> (Config, JobSpec) {
    std::fs::write(
        env.config_path(),
        format!(
            "state:\n  url: \"{state}\"\n\
             customerio:\n  region: us\n  app_api_key: \"${{CIO_APP_API_KEY}}\"\n  app_url: \"{url}\"\n  track_url: \"{url}\"\n\
             app:\n  rate_limit_per_sec: {rate}\n  timeout_secs: 10\n\
             retry:\n  max_attempts: {attempts}\n  base_delay_ms: 20\n  max_wait_secs: 5\n  max_total_wait_secs: 60\n",
            state = env.state_url(),
            url = env.sim.url(),
            rate = opts.app_rate,
            attempts = opts.max_attempts,
        ),
    )
    .expect("config.yaml");
    env.write_job(job, job_yaml);
    let key = opts.app_key.to_string();
    let cfg = env.load_with(&|name| (name == "CIO_APP_API_KEY").then(|| key.clone()));
    let spec = cfg.job(job).expect("job loaded").clone();
    (cfg, spec)
}

async fn run(runner: &Runner, job: &JobSpec) -> RunReport {
    runner
        .run(job, RunMode::Normal { full: false }, StopSignal::never())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn segment(id: i64, name: &str, tags: Value) -> Value {
    json!({
        "id": id, "deduplicate_id": format!("{id}:1552341937"), "name": name,
        "description": format!("{name} description"), "state": "finished", "progress": null,
        "type": if id % 2 == 0 { "manual" } else { "dynamic" }, "tags": tags,
        "created_at": 1552341900 + id, "updated_at": 1552341937 + id, "unknown_future_field": {"x": [1, 2]}
    })
}

fn campaign(id: i64, name: &str, tags: Value) -> Value {
    json!({
        "id": id, "deduplicate_id": format!("{id}:1552341937"), "name": name, "description": "", "type": "segment",
        "created": 1552341000 + id, "updated": 1552341937, "active": id % 2 == 1, "state": "running",
        "actions": [{"id": 259, "type": "email"}], "first_started": null, "tags": tags,
        "trigger_segment_ids": [90], "filter_segment_ids": null, "msg_templates": [{"id": 43, "type": "email"}]
    })
}

/// Member `i` of a generated membership: some lack an id or an email, as in Customer.io.
fn member(prefix: &str, i: usize) -> Member {
    Member {
        id: (i % 10 != 3).then(|| format!("{prefix}{i}")),
        email: (i % 7 != 2).then(|| format!("{prefix}{i}@example.com")),
        cio_id: format!("{prefix}c{i:06}"),
    }
}

fn members(prefix: &str, n: usize) -> Vec<Member> {
    (0..n).map(|i| member(prefix, i)).collect()
}

#[derive(Debug, PartialEq)]
struct SegmentRow {
    id: i64,
    name: Option<String>,
    description: Option<String>,
    segment_type: Option<String>,
    state: Option<String>,
    tags: Value,
    created_at: Option<i64>,
    updated_at: Option<i64>,
    raw: Value,
    deleted_at: Option<i64>,
    pulled_run_id: String,
}

async fn segment_rows(pool: &AnyPool) -> Vec<SegmentRow> {
    sqlx::query(
        "SELECT id, name, description, type, state, tags, created_at, updated_at, raw, deleted_at, pulled_run_id FROM cio_segments ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .expect("read cio_segments")
    .iter()
    .map(|r| SegmentRow {
        id: r.get(0),
        name: r.get(1),
        description: r.get(2),
        segment_type: r.get(3),
        state: r.get(4),
        tags: serde_json::from_str(&r.get::<String, _>(5)).expect("tags JSON"),
        created_at: r.get(6),
        updated_at: r.get(7),
        raw: serde_json::from_str(&r.get::<String, _>(8)).expect("raw JSON"),
        deleted_at: r.get(9),
        pulled_run_id: r.get(10),
    })
    .collect()
}

/// The row a pull should write for a segment fixture.
fn expected_segment(raw: &Value, tags: Value, deleted_at: Option<i64>, run_id: &str) -> SegmentRow {
    let s = |k: &str| raw[k].as_str().map(str::to_string);
    SegmentRow {
        id: raw["id"].as_i64().unwrap(),
        name: s("name"),
        description: s("description"),
        segment_type: s("type"),
        state: s("state"),
        tags,
        created_at: raw["created_at"].as_i64(),
        updated_at: raw["updated_at"].as_i64(),
        raw: raw.clone(),
        deleted_at,
        pulled_run_id: run_id.to_string(),
    }
}

#[derive(Debug, PartialEq)]
struct CampaignRow {
    id: i64,
    deduplicate_id: Option<String>,
    name: Option<String>,
    description: Option<String>,
    campaign_type: Option<String>,
    state: Option<String>,
    active: Option<i64>,
    tags: Value,
    created_at: Option<i64>,
    updated_at: Option<i64>,
    first_started_at: Option<i64>,
    raw: Value,
    deleted_at: Option<i64>,
    pulled_run_id: String,
}

async fn campaign_rows(pool: &AnyPool) -> Vec<CampaignRow> {
    sqlx::query(
        "SELECT id, deduplicate_id, name, description, type, state, CAST(active AS INTEGER), tags, created_at, updated_at, \
         first_started_at, raw, deleted_at, pulled_run_id FROM cio_campaigns ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .expect("read cio_campaigns")
    .iter()
    .map(|r| CampaignRow {
        id: r.get(0),
        deduplicate_id: r.get(1),
        name: r.get(2),
        description: r.get(3),
        campaign_type: r.get(4),
        state: r.get(5),
        active: r.get(6),
        tags: serde_json::from_str(&r.get::<String, _>(7)).expect("tags JSON"),
        created_at: r.get(8),
        updated_at: r.get(9),
        first_started_at: r.get(10),
        raw: serde_json::from_str(&r.get::<String, _>(11)).expect("raw JSON"),
        deleted_at: r.get(12),
        pulled_run_id: r.get(13),
    })
    .collect()
}

fn expected_campaign(
    raw: &Value,
    tags: Value,
    deleted_at: Option<i64>,
    run_id: &str,
) -> CampaignRow {
    let s = |k: &str| {
        raw[k]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    CampaignRow {
        id: raw["id"].as_i64().unwrap(),
        deduplicate_id: s("deduplicate_id"),
        name: s("name"),
        description: s("description"),
        campaign_type: s("type"),
        state: s("state"),
        active: raw["active"].as_bool().map(i64::from),
        tags,
        created_at: raw["created"].as_i64(),
        updated_at: raw["updated"].as_i64(),
        first_started_at: raw["first_started"].as_i64(),
        raw: raw.clone(),
        deleted_at,
        pulled_run_id: run_id.to_string(),
    }
}

type MemberRow = (i64, Option<String>, Option<String>, String, String);

async fn member_rows(pool: &AnyPool) -> Vec<MemberRow> {
    sqlx::query("SELECT segment_id, customer_id, email, cio_id, pulled_run_id FROM cio_segment_members ORDER BY segment_id, cio_id")
        .fetch_all(pool)
        .await
        .expect("read cio_segment_members")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

fn expected_members(segment_id: i64, members: &[Member], run_id: &str) -> Vec<MemberRow> {
    let mut rows: Vec<MemberRow> = members
        .iter()
        .filter(|m| !m.cio_id.is_empty())
        .map(|m| {
            (
                segment_id,
                m.id.clone(),
                m.email.clone(),
                m.cio_id.clone(),
                run_id.to_string(),
            )
        })
        .collect();
    rows.sort_by(|a, b| a.3.cmp(&b.3));
    rows
}

async fn count(pool: &AnyPool, table: &'static str) -> i64 {
    let sql: &'static str = match table {
        "cio_segment_members_staging" => "SELECT COUNT(*) FROM cio_segment_members_staging",
        "cio_segment_members" => "SELECT COUNT(*) FROM cio_segment_members",
        "cio_segments" => "SELECT COUNT(*) FROM cio_segments",
        "cio_campaigns" => "SELECT COUNT(*) FROM cio_campaigns",
        "cio_campaign_metrics" => "SELECT COUNT(*) FROM cio_campaign_metrics",
        other => panic!("no count query for {other}"),
    };
    sqlx::query(sql)
        .fetch_one(pool)
        .await
        .expect("count")
        .get(0)
}

type MetricRow = (i64, String, String, i64, i64, String);

async fn metric_rows(pool: &AnyPool) -> Vec<MetricRow> {
    sqlx::query(
        "SELECT campaign_id, metric, period, period_start, value, pulled_run_id FROM cio_campaign_metrics \
         ORDER BY campaign_id, metric, period, period_start",
    )
    .fetch_all(pool)
    .await
    .expect("read cio_campaign_metrics")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
    .collect()
}

/// The metric rows for `series` as returned with `steps`, the last point being the current day.
fn expected_metrics(
    campaign_id: i64,
    series: &BTreeMap<String, Vec<i64>>,
    steps: usize,
    now: chrono::DateTime<chrono::Utc>,
    run_id: &str,
) -> Vec<MetricRow> {
    let mut rows = Vec::new();
    for (metric, values) in series {
        let tail = &values[values.len() - (steps + 1).min(values.len())..];
        let starts =
            period::series_starts(now, cio_sync::config::MetricsPeriod::Days, tail.len())
                .unwrap();
        for (start, v) in starts.into_iter().zip(tail) {
            rows.push((
                campaign_id,
                metric.clone(),
                "days".to_string(),
                start,
                *v,
                run_id.to_string(),
            ));
        }
    }
    rows.sort();
    rows
}

async fn run_record(runner: &Runner, job: &str, run_id: &str) -> cio_sync::state::RunRecord {
    runner
        .state
        .runs(Some(job), 100)
        .await
        .expect("runs")
        .into_iter()
        .find(|r| r.id == run_id)
        .expect("the run is recorded")
}

// ---------------------------------------------------------------------------------------------

const FULL_JOB: &str = "pull:\n  segments: true\n  segment_membership: all\n  campaigns: true\n  campaign_metrics:\n    period: days\n    steps: 3\n  page_size: 30000\n";

async fn a_pull_writes_every_table_exactly(db: StateDb) {
    let env = TestEnv::with_state(db).await;
    let seg7 = segment(7, "Big dynamic", json!(["vip", "eu"]));
    let seg8 = segment(8, "Small manual", Value::Null);
    let seg9 = segment(9, "Empty", json!([]));
    env.sim
        .set_segments(vec![seg7.clone(), seg8.clone(), seg9.clone()]);
    let big = members("a", 100_000);
    env.sim.set_membership(7, big.clone());
    let mut small = members("b", 4);
    // Without a cio_id a member cannot be keyed: listed, not stored.
    small.push(Member {
        id: Some("no-cio".into()),
        email: None,
        cio_id: String::new(),
    });
    env.sim.set_membership(8, small.clone());
    let camp5 = campaign(5, "Welcome series", json!(["new", "welcome"]));
    let camp6 = campaign(6, "Win-back", Value::Null);
    env.sim.set_campaigns(vec![camp5.clone(), camp6.clone()]);
    let series: BTreeMap<String, Vec<i64>> = [
        ("sent".to_string(), (1..=10).collect()),
        ("opened".to_string(), (0..10).map(|i| i * 2).collect()),
    ]
    .into();
    env.sim.set_campaign_metrics(5, series.clone());
    // App request 3 is the second membership page of segment 7: one 429 with Retry-After.
    env.sim.app_fault(AppFault::RateLimitOnRequest {
        n: 3,
        retry_after_secs: 1,
    });

    let (cfg, job) = load_job(&env, "pulled", FULL_JOB, &Opts::default());
    let runner = Runner::new(cfg.settings.clone()).await.expect("runner");
    let before = chrono::Utc::now();
    let t = std::time::Instant::now();
    let report = run(&runner, &job).await;
    let after = chrono::Utc::now();
    eprintln!("{db:?}: pulled 100k members in {:?}", t.elapsed());
    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
    let run_id = report.run_id.clone();
    let pool = runner.state.pool();

    assert_eq!(
        segment_rows(pool).await,
        vec![
            expected_segment(&seg7, json!(["vip", "eu"]), None, &run_id),
            expected_segment(&seg8, json!([]), None, &run_id),
            expected_segment(&seg9, json!([]), None, &run_id),
        ]
    );
    let mut want = expected_members(7, &big, &run_id);
    want.extend(expected_members(8, &small, &run_id));
    assert_eq!(member_rows(pool).await, want);
    assert_eq!(count(pool, "cio_segment_members_staging").await, 0);
    assert_eq!(
        campaign_rows(pool).await,
        vec![
            expected_campaign(&camp5, json!(["new", "welcome"]), None, &run_id),
            expected_campaign(&camp6, json!([]), None, &run_id),
        ]
    );
    let got = metric_rows(pool).await;
    let want_before = expected_metrics(5, &series, 3, before, &run_id);
    let want_after = expected_metrics(5, &series, 3, after, &run_id);
    assert!(
        got == want_before || got == want_after,
        "metrics {got:?}\nwant {want_before:?}"
    );
    assert_eq!(got.len(), 8);

    // Paging: 4 pages of segment 7 (plus the retried 429), one each for 8 and 9.
    let app: Vec<_> = env
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.api == Api::App)
        .collect();
    let seg7_pages: Vec<_> = app
        .iter()
        .filter(|r| r.path == "/v1/segments/7/membership")
        .collect();
    assert_eq!(
        seg7_pages.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 429, 200, 200, 200]
    );
    assert!(
        seg7_pages[2].at - seg7_pages[1].at >= Duration::from_millis(950),
        "Retry-After honoured"
    );
    assert_eq!(app.len(), 11, "{app:?}");

    let expected_summary = json!({
        "segments": 3, "segments_deleted": 0, "membership_segments": 3, "members": 100_004,
        "members_skipped": 1, "membership_pages": 6, "gone_segments": [], "campaigns": 2,
        "campaigns_deleted": 0, "metric_points": 8, "requests": 11, "retries": 1
    });
    assert_eq!(report.summary.as_ref(), Some(&expected_summary));
    let rec = run_record(&runner, "pulled", &run_id).await;
    assert_eq!(
        (rec.kind.as_str(), rec.outcome.as_str(), rec.error),
        ("pull", "succeeded", None)
    );
    assert_eq!(rec.summary, Some(expected_summary));
    assert_eq!((rec.counts.requests, rec.counts.retries), (11, 1));
    assert_eq!(rec.counts.rows_delivered, 3 + 100_004 + 2 + 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_writes_every_table_exactly_on_sqlite() {
    a_pull_writes_every_table_exactly(StateDb::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_writes_every_table_exactly_on_postgres() {
    a_pull_writes_every_table_exactly(StateDb::Postgres).await;
}

// ---------------------------------------------------------------------------------------------

async fn a_failed_last_page_keeps_the_previous_membership(db: StateDb) {
    let env = TestEnv::with_state(db).await;
    env.sim.set_segments(vec![segment(7, "Seven", Value::Null)]);
    let old = members("old", 2_500);
    env.sim.set_membership(7, old.clone());
    let job_yaml = "pull:\n  segment_membership: [7]\n  page_size: 1000\n";
    let (cfg, job) = load_job(&env, "members", job_yaml, &Opts::default());
    let runner = Runner::new(cfg.settings.clone()).await.expect("runner");
    let first = run(&runner, &job).await;
    assert_eq!(first.outcome, Outcome::Succeeded, "{first:?}");
    let pool = runner.state.pool();
    let before = member_rows(pool).await;
    assert_eq!(before, expected_members(7, &old, &first.run_id));

    // New members; the last page (offset 2000) fails every time.
    env.sim.set_membership(7, members("new", 2_500));
    env.sim.app_fault(AppFault::FailMembershipPage {
        segment_id: 7,
        page_start_offset: 2_000,
        status: 500,
    });
    let second = run(&runner, &job).await;
    assert_eq!(second.outcome, Outcome::Failed, "{second:?}");
    let error = second.error.clone().unwrap_or_default();
    assert!(
        error.contains("members") && error.contains("/v1/segments/7/membership"),
        "{error}"
    );
    assert_eq!(
        member_rows(pool).await,
        before,
        "the previous membership is intact"
    );
    assert_eq!(
        count(pool, "cio_segment_members_staging").await,
        0,
        "staging is cleaned"
    );
    let rec = run_record(&runner, "members", &second.run_id).await;
    assert_eq!(rec.outcome, "failed");
    assert_eq!(rec.error.as_deref(), Some(error.as_str()));
    let last_page: Vec<u16> = env
        .sim
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/segments/7/membership")
        .map(|r| r.status)
        .collect();
    // Run 1: 3 pages; run 2: 2 pages, then the last page tried max_attempts (3) times.
    assert_eq!(last_page, [200, 200, 200, 200, 200, 500, 500, 500]);

    // Once the fault is gone the new membership replaces the old one.
    env.sim.clear_app_faults();
    let third = run(&runner, &job).await;
    assert_eq!(third.outcome, Outcome::Succeeded, "{third:?}");
    assert_eq!(
        member_rows(pool).await,
        expected_members(7, &members("new", 2_500), &third.run_id)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_last_page_keeps_the_previous_membership_on_sqlite() {
    a_failed_last_page_keeps_the_previous_membership(StateDb::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_last_page_keeps_the_previous_membership_on_postgres() {
    a_failed_last_page_keeps_the_previous_membership(StateDb::Postgres).await;
}

// ---------------------------------------------------------------------------------------------

async fn removed_segments_and_campaigns_are_marked_deleted(db: StateDb) {
    let env = TestEnv::with_state(db).await;
    let (seg7, seg8) = (
        segment(7, "Seven", json!(["a"])),
        segment(8, "Eight", Value::Null),
    );
    let (camp5, camp6) = (
        campaign(5, "Five", Value::Null),
        campaign(6, "Six", json!(["x"])),
    );
    env.sim.set_segments(vec![seg7.clone(), seg8.clone()]);
    env.sim.set_membership(7, members("s", 3));
    env.sim.set_membership(8, members("e", 2));
    env.sim.set_campaigns(vec![camp5.clone(), camp6.clone()]);
    let job_yaml = "pull:\n  segments: true\n  segment_membership: all\n  campaigns: true\n";
    let (cfg, job) = load_job(&env, "catalog", job_yaml, &Opts::default());
    let runner = Runner::new(cfg.settings.clone()).await.expect("runner");
    let pool = runner.state.pool();
    let first = run(&runner, &job).await;
    assert_eq!(first.outcome, Outcome::Succeeded, "{first:?}");

    env.sim.set_segments(vec![seg7.clone()]);
    env.sim.set_campaigns(vec![camp6.clone()]);
    let t0 = cio_sync::state::now_ms();
    let second = run(&runner, &job).await;
    let t1 = cio_sync::state::now_ms();
    assert_eq!(second.outcome, Outcome::Succeeded, "{second:?}");
    let segs = segment_rows(pool).await;
    let deleted_at = segs[1].deleted_at.expect("segment 8 is marked deleted");
    assert!(
        (t0..=t1).contains(&deleted_at),
        "{deleted_at} in {t0}..={t1}"
    );
    assert_eq!(
        segs,
        vec![
            expected_segment(&seg7, json!(["a"]), None, &second.run_id),
            expected_segment(&seg8, json!([]), Some(deleted_at), &first.run_id),
        ]
    );
    let camps = campaign_rows(pool).await;
    let camp_deleted_at = camps[0].deleted_at.expect("campaign 5 is marked deleted");
    assert!((t0..=t1).contains(&camp_deleted_at));
    assert_eq!(
        camps,
        vec![
            expected_campaign(&camp5, json!([]), Some(camp_deleted_at), &first.run_id),
            expected_campaign(&camp6, json!(["x"]), None, &second.run_id),
        ]
    );
    // `segment_membership: all` holds exactly the segments listed now.
    assert_eq!(
        member_rows(pool).await,
        expected_members(7, &members("s", 3), &second.run_id)
    );
    let summary = second.summary.clone().unwrap();
    assert_eq!(
        (
            summary["segments_deleted"].as_u64(),
            summary["campaigns_deleted"].as_u64()
        ),
        (Some(1), Some(1))
    );

    // Segment 8 comes back: current again.
    env.sim.set_segments(vec![seg7.clone(), seg8.clone()]);
    let third = run(&runner, &job).await;
    assert_eq!(third.outcome, Outcome::Succeeded, "{third:?}");
    assert_eq!(
        segment_rows(pool).await,
        vec![
            expected_segment(&seg7, json!(["a"]), None, &third.run_id),
            expected_segment(&seg8, json!([]), None, &third.run_id),
        ]
    );
    let mut want = expected_members(7, &members("s", 3), &third.run_id);
    want.extend(expected_members(8, &members("e", 2), &third.run_id));
    assert_eq!(member_rows(pool).await, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn removed_segments_and_campaigns_are_marked_deleted_on_sqlite() {
    removed_segments_and_campaigns_are_marked_deleted(StateDb::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn removed_segments_and_campaigns_are_marked_deleted_on_postgres() {
    removed_segments_and_campaigns_are_marked_deleted(StateDb::Postgres).await;
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn the_app_rate_limit_holds_the_observed_request_rate() {
    let env = TestEnv::with_state(StateDb::Sqlite).await;
    // The simulator enforces the same 5/s: any excess would show up as a 429.
    env.sim.set_faults(Faults {
        rate_limit_per_sec: Some(5),
        ..Faults::default()
    });
    env.sim.set_segments(
        (1..=29)
            .map(|id| segment(id, &format!("S{id}"), Value::Null))
            .collect(),
    );
    let job_yaml = "pull:\n  segments: true\n  segment_membership: all\n";
    let (cfg, job) = load_job(
        &env,
        "rate",
        job_yaml,
        &Opts {
            app_rate: 5,
            ..Opts::default()
        },
    );
    let runner = Runner::new(cfg.settings.clone()).await.expect("runner");
    let report = run(&runner, &job).await;
    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");

    let times: Vec<Duration> = env
        .sim
        .requests()
        .iter()
        .filter(|r| r.api == Api::App)
        .map(|r| r.at)
        .collect();
    assert_eq!(times.len(), 30);
    assert!(
        env.sim.requests().iter().all(|r| r.status == 200),
        "no request was refused for rate"
    );
    // RateGate::per_second(5) allows a burst of max(5 / 10, 1) = 1 on top of the rate.
    let limit = 5 + 1;
    for (i, start) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|t| **t < *start + Duration::from_secs(1))
            .count();
        assert!(
            in_window <= limit,
            "{in_window} App requests within 1 s of request {i}: {times:?}"
        );
    }
    let span = times[29] - times[0];
    assert!(
        span >= Duration::from_millis(5_000),
        "30 requests at 5/s take about 6 s, took {span:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_app_key_fails_the_run_and_names_cio_app_api_key() {
    let env = TestEnv::with_state(StateDb::Sqlite).await;
    env.sim.set_segments(vec![segment(7, "Seven", Value::Null)]);
    let (cfg, job) = load_job(
        &env,
        "badkey",
        "pull:\n  segments: true\n",
        &Opts {
            app_key: "wrong",
            ..Opts::default()
        },
    );
    let runner = Runner::new(cfg.settings.clone()).await.expect("runner");
    let report = run(&runner, &job).await;
    assert_eq!(report.outcome, Outcome::Failed);
    let error = report.error.unwrap_or_default();
    assert!(
        error.contains("CIO_APP_API_KEY") && error.contains("HTTP 401"),
        "{error}"
    );
    assert!(!error.contains("wrong"), "the key never shows: {error}");
    assert_eq!(env.sim.requests().len(), 1, "a refused key is not retried");
    assert_eq!(count(runner.state.pool(), "cio_segments").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listed_segment_that_is_gone_ends_with_no_members_and_into_writes_elsewhere() {
    let env = TestEnv::with_state(StateDb::Sqlite).await;
    env.sim.set_segments(vec![segment(7, "Seven", Value::Null)]);
    env.sim.set_membership(7, members("m", 5));
    let target = format!("sqlite://{}", env.path().join("pulled.db").display());
    let job_yaml = format!("pull:\n  segment_membership: [7, 99]\n  into: \"{target}\"\n");
    let (cfg, job) = load_job(&env, "gone", &job_yaml, &Opts::default());
    let runner = Runner::new(cfg.settings.clone()).await.expect("runner");
    let report = run(&runner, &job).await;
    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
    assert_eq!(
        report.summary.as_ref().unwrap()["gone_segments"],
        json!([99])
    );
    let (pool, _) = cio_sync::state::connect(&cio_sync::config::DatabaseUrl::new(target), 1)
        .await
        .expect("target");
    assert_eq!(
        member_rows(&pool).await,
        expected_members(7, &members("m", 5), &report.run_id)
    );
    assert_eq!(
        count(runner.state.pool(), "cio_segment_members").await,
        0,
        "the state database is not the target"
    );
    // The run itself is recorded in the state database.
    assert_eq!(
        run_record(&runner, "gone", &report.run_id).await.outcome,
        "succeeded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_fetches_and_counts_but_writes_nothing() {
    let env = TestEnv::with_state(StateDb::Sqlite).await;
    env.sim.set_segments(vec![
        segment(7, "Seven", Value::Null),
        segment(8, "Eight", Value::Null),
    ]);
    env.sim.set_membership(7, members("d", 2_500));
    env.sim
        .set_campaigns(vec![campaign(5, "Five", Value::Null)]);
    env.sim
        .set_campaign_metrics(5, [("sent".to_string(), vec![1, 2, 3, 4, 5])].into());
    let job_yaml = "pull:\n  segments: true\n  segment_membership: all\n  campaigns: true\n  campaign_metrics:\n    steps: 2\n  page_size: 1000\n";
    let (cfg, job) = load_job(&env, "dry", job_yaml, &Opts::default());
    let cio_sync::config::JobKind::Pull(pull) = &job.kind else {
        panic!("a pull job")
    };
    let report = cio_sync::pull::dry_run(&cfg.settings, &job, pull)
        .await
        .expect("dry run");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["segments"], 2);
    assert_eq!(json["members"], 2_500);
    assert_eq!(json["membership_pages"], 4);
    assert_eq!(json["campaigns"], 1);
    assert_eq!(json["metric_points"], 3);
    assert_eq!(json["requests"], 1 + 3 + 1 + 1 + 1);
    assert!(
        !env.path().join("state.db").exists(),
        "a dry run opens no database"
    );
}
