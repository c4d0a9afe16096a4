//! SQL sources against the real PostgreSQL, MariaDB and SQLite: typed values, streaming,
//! incremental keyset reads, ties across chunk edges, lost connections, errors, and SQL jobs
//! through the pipeline to the simulator.
//!
//! Each test creates its own database (`cio_test_<ulid>`) or SQLite file, and drops it at the
//! end; a failing test leaves its database behind for inspection. A server that is not running
//! fails the test: point `CIO_SYNC_TEST_PG` / `CIO_SYNC_TEST_MYSQL` at one.

use std::collections::HashSet;
use std::time::Duration;

use cio_sync::config::DatabaseUrl;
use cio_sync::config::{SqlCursor as CursorSection, SqlSource as SqlSection};
use cio_sync::source::{Checkpoint, SourceError, SourceRow, SourceStream, Value, sql};
use cio_sync::state::Outcome;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestEnv, assert_exit, wait_until_held};
use cio_sync::testing::{Server, TestDb as ServerDb};

const JOB: &str = "crm_people";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Pg,
    Maria,
    Lite,
}

/// Runs `$body(Kind)` as one test per backend: `<scenario>::postgres`, `::mariadb`, `::sqlite`.
macro_rules! each_backend {
    ($($scenario:ident => $body:ident;)*) => {$(
        mod $scenario {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $body(Kind::Pg).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mariadb() {
                $body(Kind::Maria).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $body(Kind::Lite).await
            }
        }
    )*};
}

each_backend! {
    every_supported_type_reads_as_its_exact_value_and_null_as_null => types_read_exactly;
    a_full_read_of_50000_rows_streams_them_all_in_order_and_resumes_after_the_settled_ones => full_read_streams_in_order;
    an_incremental_read_returns_exactly_the_rows_inserted_or_updated_since_the_checkpoint => incremental_picks_up_changes;
    rows_tied_on_the_cursor_across_chunk_edges_are_neither_lost_nor_repeated => ties_across_chunks;
    every_cursor_type_pages_through_ties_and_resumes_exactly => every_cursor_type_pages_exactly;
    an_unsupported_column_type_is_refused_naming_the_column_and_its_type => unsupported_types_are_named;
    an_unreachable_database_or_a_bad_query_fails_with_the_job_and_the_database_message => errors_name_job_and_database_message;
    a_sql_job_sends_changed_rows_only_through_the_pipeline => sql_job_through_the_pipeline;
    an_unreadable_value_or_a_null_cursor_is_that_rows_error_and_the_read_goes_on => bad_rows_are_row_errors;
    a_sql_job_killed_twice_mid_run_then_restarted_loses_nothing => killed_sql_job_resumes;
}

mod a_lost_connection_is_retried_without_skipping_or_repeating_rows {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_full() {
        lost_connection_is_retried(Kind::Pg, false).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_incremental() {
        lost_connection_is_retried(Kind::Pg, true).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mariadb_full() {
        lost_connection_is_retried(Kind::Maria, false).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mariadb_incremental() {
        lost_connection_is_retried(Kind::Maria, true).await
    }
}

// ---------------------------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------------------------

/// The server a kind runs on (SQLite has none).
fn server(kind: Kind) -> Server {
    match kind {
        Kind::Pg => Server::Postgres,
        Kind::Maria => Server::MariaDb,
        Kind::Lite => unreachable!("SQLite needs no server"),
    }
}

/// A fresh database for one test.
struct TestDb {
    kind: Kind,
    url: String,
    name: String,
    /// The server database, dropped when a test passes and kept when it fails.
    _server: Option<ServerDb>,
    /// The SQLite file's folder.
    _dir: Option<tempfile::TempDir>,
}

enum Conn {
    Pg(sqlx::PgConnection),
    My(sqlx::MySqlConnection),
    Lite(sqlx::SqliteConnection),
}

#[track_caller]
fn server_missing(kind: Kind, url: &str, e: sqlx::Error) -> ! {
    panic!(
        "{kind:?} is not reachable at {}: {e}. These tests need the real server: start it, or set {} to its URL",
        cio_sync::testing::masked(url),
        server(kind).env_var()
    )
}

impl TestDb {
    async fn new(kind: Kind) -> TestDb {
        match kind {
            Kind::Pg | Kind::Maria => {
                let db = ServerDb::create(server(kind)).await;
                TestDb {
                    kind,
                    url: db.url().to_string(),
                    name: db.name().to_string(),
                    _server: Some(db),
                    _dir: None,
                }
            }
            Kind::Lite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let path = dir.path().join("source.db");
                let opts = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true);
                opts.connect()
                    .await
                    .expect("create the SQLite file")
                    .close()
                    .await
                    .expect("close");
                TestDb {
                    kind,
                    url: format!("sqlite://{}", path.display()),
                    name: String::new(),
                    _server: None,
                    _dir: Some(dir),
                }
            }
        }
    }

    /// The server's own database, for statements about a test database.
    fn admin(kind: Kind) -> TestDb {
        TestDb {
            kind,
            url: server(kind).url(),
            name: String::new(),
            _server: None,
            _dir: None,
        }
    }

    async fn connect(&self) -> Conn {
        match self.kind {
            Kind::Pg => Conn::Pg(
                sqlx::PgConnection::connect(&self.url)
                    .await
                    .unwrap_or_else(|e| server_missing(self.kind, &self.url, e)),
            ),
            Kind::Maria => Conn::My(
                sqlx::MySqlConnection::connect(&self.url)
                    .await
                    .unwrap_or_else(|e| server_missing(self.kind, &self.url, e)),
            ),
            Kind::Lite => Conn::Lite(
                sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .expect("open the SQLite file"),
            ),
        }
    }

    /// Runs one or more statements (no results).
    async fn exec(&self, sql: &str) {
        if let Err(e) = self.try_exec(sql).await {
            panic!("{sql}: {e}");
        }
    }

    /// [`exec`](Self::exec) for statements that may fail for a reason the caller expects.
    async fn try_exec(&self, sql: &str) -> Result<(), sqlx::Error> {
        let q = || sqlx::raw_sql(AssertSqlSafe(sql.to_string()));
        match &mut self.connect().await {
            Conn::Pg(c) => q().execute(c).await.map(|_| ()),
            Conn::My(c) => q().execute(c).await.map(|_| ()),
            Conn::Lite(c) => q().execute(c).await.map(|_| ()),
        }
    }

    /// The first column of `sql`'s rows, as text (cast it to text in the query).
    async fn texts(&self, sql: &str) -> Vec<String> {
        let q = AssertSqlSafe(sql.to_string());
        let r = match &mut self.connect().await {
            Conn::Pg(c) => sqlx::query_scalar(q).fetch_all(c).await,
            Conn::My(c) => sqlx::query_scalar(q).fetch_all(c).await,
            Conn::Lite(c) => sqlx::query_scalar(q).fetch_all(c).await,
        };
        r.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn section(&self, query: &str, cursor: Option<(&str, &str)>, batch_rows: u32) -> SqlSection {
        SqlSection {
            url: DatabaseUrl::new(self.url.clone()),
            query: query.to_string(),
            cursor: cursor.map(|(c, t)| CursorSection {
                column: c.to_string(),
                tiebreak: t.to_string(),
            }),
            batch_rows,
            connect_timeout: std::time::Duration::from_secs(5),
        }
    }

    /// The SQL cast of an expression to text, for ordering checks.
    fn as_text(&self, expr: &str) -> String {
        match self.kind {
            Kind::Pg => format!("({expr})::text"),
            Kind::Maria => format!("CAST({expr} AS CHAR)"),
            Kind::Lite => format!("CAST({expr} AS TEXT)"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

async fn open(cfg: &SqlSection, cp: Option<&Checkpoint>) -> SourceStream {
    sql::open(cfg, JOB, cp, CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("opening the source failed: {e}"))
}

async fn next(s: &mut SourceStream) -> Option<SourceRow> {
    match tokio::time::timeout(Duration::from_secs(120), s.rows.recv()).await {
        Ok(Some(Ok(row))) => Some(row),
        Ok(Some(Err(e))) => panic!("the source failed: {e}"),
        Ok(None) => None,
        Err(_) => panic!("no row for 120 s: the source hangs"),
    }
}

async fn drain(s: &mut SourceStream) -> Vec<SourceRow> {
    let mut rows = Vec::new();
    while let Some(r) = next(s).await {
        rows.push(r);
    }
    rows
}

/// Opens and reads everything: (identity, rows).
async fn read(cfg: &SqlSection, cp: Option<&Checkpoint>) -> (serde_json::Value, Vec<SourceRow>) {
    let mut s = open(cfg, cp).await;
    let rows = drain(&mut s).await;
    (s.identity, rows)
}

/// The checkpoint the pipeline would store after settling `row`.
fn checkpoint(identity: &serde_json::Value, row: &SourceRow, complete: bool) -> Checkpoint {
    Checkpoint {
        source: identity.clone(),
        resume: row.resume.clone(),
        complete,
    }
}

#[track_caller]
fn values(row: &SourceRow) -> &[Value] {
    match &row.values {
        Ok(v) => v,
        Err(e) => panic!("row {} ({}) is unreadable: {e}", row.line, row.row_ref),
    }
}

/// Column `i` of each row, as text.
fn col(rows: &[SourceRow], i: usize) -> Vec<String> {
    rows.iter()
        .map(|r| values(r)[i].to_text().unwrap_or_else(|| "NULL".into()))
        .collect()
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        other => panic!("not an integer: {other:?}"),
    }
}

fn ts(s: &str) -> Value {
    Value::Timestamp(
        chrono::DateTime::parse_from_rfc3339(s)
            .expect("timestamp")
            .to_utc(),
    )
}

// ---------------------------------------------------------------------------------------------
// (a) types
// ---------------------------------------------------------------------------------------------

async fn types_read_exactly(kind: Kind) {
    let db = TestDb::new(kind).await;
    let text = |s: &str| Value::Text(s.into());
    let dec = |s: &str| Value::Decimal(s.into());
    let date = Value::Date(chrono::NaiveDate::from_ymd_opt(2024, 2, 29).unwrap());
    let time = |us| Value::Time(chrono::NaiveTime::from_hms_micro_opt(23, 59, 59, us).unwrap());
    let (ddl, query, expected): (&str, &str, Vec<(&str, Value)>) = match kind {
        Kind::Pg => (
            "CREATE TYPE mood AS ENUM ('ok', 'sad');
             CREATE TABLE t (id int PRIMARY KEY, i2 smallint, i4 integer, i8 bigint, f4 real, f8 double precision,
               n numeric(30,10), n_free numeric, txt text, vc varchar(20), ch char(5), b boolean, d date, tm time(6),
               ts timestamp(6), tstz timestamptz(6), j json, jb jsonb, u uuid, m mood, o oid);
             INSERT INTO t VALUES (1, -32768, 2147483647, -9223372036854775808, 0.1, 1.5e300,
               12345678901234567890.0123456789, -0.000001, 'Zoë ✓ \"q\"', 'varchar', 'ab', true, '2024-02-29',
               '23:59:59.123456', '2024-02-29 23:59:59.123456', '2024-02-29 23:59:59.123456+02',
               '{\"a\": [1, 2.5, \"x\"]}', '{\"b\": null}', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', 'sad', 4294967295);
             INSERT INTO t (id) VALUES (2);",
            "SELECT i2, i4, i8, f4, f8, n, n_free, txt, vc, ch, b, d, tm, ts, tstz, j, jb, u, m, o, 1 + 1 AS computed FROM t ORDER BY id",
            vec![
                ("i2", Value::Int(-32768)),
                ("i4", Value::Int(2_147_483_647)),
                ("i8", Value::Int(i64::MIN)),
                ("f4", Value::Float(0.1)),
                ("f8", Value::Float(1.5e300)),
                ("n", dec("12345678901234567890.0123456789")),
                ("n_free", dec("-0.000001")),
                ("txt", text("Zoë ✓ \"q\"")),
                ("vc", text("varchar")),
                ("ch", text("ab   ")),
                ("b", Value::Bool(true)),
                ("d", date.clone()),
                ("tm", time(123_456)),
                ("ts", ts("2024-02-29T23:59:59.123456Z")),
                ("tstz", ts("2024-02-29T21:59:59.123456Z")),
                ("j", Value::Json(serde_json::json!({"a": [1, 2.5, "x"]}))),
                ("jb", Value::Json(serde_json::json!({"b": null}))),
                ("u", text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
                ("m", text("sad")),
                ("o", Value::Int(4_294_967_295)),
                ("computed", Value::Int(2)),
            ],
        ),
        Kind::Maria => (
            "CREATE TABLE t (id INT PRIMARY KEY, ti TINYINT, si SMALLINT, mi MEDIUMINT, i INT, bi BIGINT,
               ubi BIGINT UNSIGNED, uti TINYINT UNSIGNED, f FLOAT, d DOUBLE, n DECIMAL(30,10), txt TEXT, vc VARCHAR(20),
               ch CHAR(5), tb TEXT COLLATE utf8mb4_bin, b BOOLEAN, dt DATE, tm TIME(6), dtm DATETIME(6),
               ts TIMESTAMP(6) NULL DEFAULT NULL, j JSON, u UUID, e ENUM('ok', 'sad'), bt BIT(8), y YEAR);
             INSERT INTO t VALUES (1, -128, -32768, -8388608, 2147483647, -9223372036854775808, 18446744073709551615, 255,
               0.1, 1.5e300, 12345678901234567890.0123456789, 'Zoë ✓ \"q\"', 'varchar', 'ab', 'bin text', TRUE,
               '2024-02-29', '23:59:59.123456', '2024-02-29 23:59:59.123456', '2024-02-29 23:59:59.123456',
               '{\"a\": [1, 2.5, \"x\"]}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'sad', b'10100101', 2024);
             INSERT INTO t (id) VALUES (2);",
            "SELECT ti, si, mi, i, bi, ubi, uti, f, d, n, txt, vc, ch, tb, b, dt, tm, dtm, ts, j, u, e, bt, y, 1 + 1 AS computed FROM t ORDER BY id",
            vec![
                ("ti", Value::Int(-128)),
                ("si", Value::Int(-32768)),
                ("mi", Value::Int(-8_388_608)),
                ("i", Value::Int(2_147_483_647)),
                ("bi", Value::Int(i64::MIN)),
                ("ubi", dec("18446744073709551615")),
                ("uti", Value::Int(255)),
                ("f", Value::Float(0.1)),
                ("d", Value::Float(1.5e300)),
                ("n", dec("12345678901234567890.0123456789")),
                ("txt", text("Zoë ✓ \"q\"")),
                ("vc", text("varchar")),
                ("ch", text("ab")),
                ("tb", text("bin text")),
                ("b", Value::Bool(true)),
                ("dt", date.clone()),
                ("tm", time(123_456)),
                ("dtm", ts("2024-02-29T23:59:59.123456Z")),
                // The session runs in UTC, so TIMESTAMP values are stored and read as UTC.
                ("ts", ts("2024-02-29T23:59:59.123456Z")),
                // MariaDB's JSON is LONGTEXT: it arrives as the text stored.
                ("j", text("{\"a\": [1, 2.5, \"x\"]}")),
                ("u", text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
                ("e", text("sad")),
                ("bt", Value::Int(165)),
                ("y", Value::Int(2024)),
                ("computed", Value::Int(2)),
            ],
        ),
        Kind::Lite => (
            "CREATE TABLE t (id INTEGER PRIMARY KEY, i INTEGER, big BIGINT, r REAL, r_int REAL, n NUMERIC, txt TEXT,
               vc VARCHAR(20), b BOOLEAN, d DATE, tm TIME, dt DATETIME, ts TIMESTAMP, dt_unix DATETIME, j JSON, untyped);
             INSERT INTO t VALUES (1, -9223372036854775808, 9223372036854775807, 0.1, 3, 12.5, 'Zoë ✓ \"q\"', 'varchar', 1,
               '2024-02-29', '23:59:59.123456', '2024-02-29 23:59:59.123456', '2024-02-29T23:59:59.123456+02:00', 1709251199,
               '{\"a\": 1}', 'x');
             INSERT INTO t (id) VALUES (2);",
            "SELECT i, big, r, r_int, n, txt, vc, b, d, tm, dt, ts, dt_unix, j, untyped, 1 + 1 AS computed FROM t ORDER BY id",
            vec![
                ("i", Value::Int(i64::MIN)),
                ("big", Value::Int(i64::MAX)),
                ("r", Value::Float(0.1)),
                ("r_int", Value::Float(3.0)),
                // SQLite has no decimal type: NUMERIC values are read as stored.
                ("n", Value::Float(12.5)),
                ("txt", text("Zoë ✓ \"q\"")),
                ("vc", text("varchar")),
                ("b", Value::Bool(true)),
                ("d", date.clone()),
                ("tm", time(123_456)),
                ("dt", ts("2024-02-29T23:59:59.123456Z")),
                ("ts", ts("2024-02-29T21:59:59.123456Z")),
                ("dt_unix", ts("2024-02-29T23:59:59Z")),
                ("j", text("{\"a\": 1}")),
                ("untyped", text("x")),
                ("computed", Value::Int(2)),
            ],
        ),
    };
    db.exec(ddl).await;
    let cfg = db.section(query, None, 100);
    let names: Vec<String> = expected.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(sql::probe_columns(&cfg, JOB).await.expect("probe"), names);
    let (_, rows) = read(&cfg, None).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(values(&rows[0]).len(), expected.len());
    for ((name, want), got) in expected.iter().zip(values(&rows[0])) {
        assert_eq!(got, want, "column {name}");
    }
    // The second row is NULL everywhere but in the computed column.
    let nulls = values(&rows[1]);
    for (i, name) in names.iter().enumerate() {
        let want = if name == "computed" {
            Value::Int(2)
        } else {
            Value::Null
        };
        assert_eq!(nulls[i], want, "column {name} of the NULL row");
    }
}

// ---------------------------------------------------------------------------------------------
// People: id, email, updated_at (2024-01-01 00:00:00 + id seconds)
// ---------------------------------------------------------------------------------------------

async fn create_people(db: &TestDb, n: u64) {
    let ddl = match db.kind {
        Kind::Pg => {
            "CREATE TABLE people (id BIGINT PRIMARY KEY, email TEXT NOT NULL, updated_at TIMESTAMPTZ(6) NOT NULL)"
        }
        Kind::Maria => {
            "CREATE TABLE people (id BIGINT PRIMARY KEY, email VARCHAR(200) NOT NULL, updated_at DATETIME(6) NOT NULL)"
        }
        // Declared DATETIME: values read as timestamps, positions are the stored text.
        Kind::Lite => {
            "CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT NOT NULL, updated_at DATETIME NOT NULL)"
        }
    };
    db.exec(ddl).await;
    insert_people(db, 1, n).await;
}

async fn insert_people(db: &TestDb, from: u64, to: u64) {
    let sql = match db.kind {
        Kind::Pg => format!(
            "INSERT INTO people SELECT i, 'user' || i || '@example.com', timestamptz '2024-01-01 00:00:00+00' + make_interval(secs => i) FROM generate_series({from}, {to}) AS i"
        ),
        Kind::Maria => format!(
            "INSERT INTO people SELECT seq, CONCAT('user', seq, '@example.com'), TIMESTAMPADD(SECOND, seq, '2024-01-01 00:00:00') FROM seq_{from}_to_{to}"
        ),
        Kind::Lite => format!(
            "WITH RECURSIVE c(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM c WHERE i < {to})
             INSERT INTO people SELECT i, 'user' || i || '@example.com', strftime('%Y-%m-%d %H:%M:%f', '2024-01-01 00:00:00', '+' || i || ' seconds') FROM c"
        ),
    };
    db.exec(&sql).await;
}

/// A timestamp literal (UTC) for `people.updated_at`.
fn ts_literal(kind: Kind, s: &str) -> String {
    match kind {
        Kind::Pg => format!("'{s}+00'"),
        Kind::Maria | Kind::Lite => format!("'{s}'"),
    }
}

async fn full_read_streams_in_order(kind: Kind) {
    const N: u64 = 50_000;
    let db = TestDb::new(kind).await;
    create_people(&db, N).await;
    let cfg = db.section("SELECT id, email FROM people ORDER BY id;", None, 1000);

    let mut s = open(&cfg, None).await;
    assert_eq!(*s.columns, vec!["id".to_string(), "email".to_string()]);
    assert!(s.resumed_at.is_none());
    let mut count = 0u64;
    let mut at_20000 = None;
    while let Some(row) = next(&mut s).await {
        count += 1;
        let v = values(&row);
        assert_eq!(int(&v[0]), count as i64, "rows arrive in the query's order");
        assert_eq!(row.line, count);
        assert_eq!(row.resume.rows(), count);
        if count == 1 {
            assert_eq!(v[1], Value::Text("user1@example.com".into()));
            assert!(row.row_ref.starts_with("row 1 #"), "{}", row.row_ref);
        }
        if count == 20_000 {
            at_20000 = Some(row);
        }
    }
    assert_eq!(count, N);

    // Interrupted after 20,000 settled rows: the next run skips exactly those.
    let settled = at_20000.expect("row 20000");
    let (_, rest) = read(&cfg, Some(&checkpoint(&s.identity, &settled, false))).await;
    assert_eq!(rest.len(), 30_000);
    assert_eq!(int(&values(&rest[0])[0]), 20_001);
    assert_eq!(rest[0].line, 20_001);
    assert!(
        rest[0].row_ref.starts_with("row 20001 #"),
        "{}",
        rest[0].row_ref
    );
    // After a completed run, a full read sends everything again.
    let (_, again) = read(&cfg, Some(&checkpoint(&s.identity, &settled, true))).await;
    assert_eq!(again.len(), N as usize);
    // Another query does not resume the old position.
    let other = db.section(
        "SELECT id, email FROM people WHERE id > 0 ORDER BY id",
        None,
        1000,
    );
    let (_, fresh) = read(&other, Some(&checkpoint(&s.identity, &settled, false))).await;
    assert_eq!(fresh.len(), N as usize);
}

async fn incremental_picks_up_changes(kind: Kind) {
    let db = TestDb::new(kind).await;
    create_people(&db, 1000).await;
    let cfg = db.section(
        "SELECT id, email, updated_at FROM people",
        Some(("updated_at", "id")),
        100,
    );

    let (identity, first) = read(&cfg, None).await;
    assert_eq!(
        identity,
        serde_json::json!({"kind": "sql", "cursor": "updated_at", "tiebreak": "id"})
    );
    assert_eq!(
        col(&first, 0),
        (1..=1000).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(values(&first[0])[2], ts("2024-01-01T00:00:01Z"));
    assert_eq!(first[41].row_ref, "id=42");
    let done = checkpoint(&identity, &first[999], true);

    // Nothing changed: a completed incremental checkpoint reads nothing, and skips nothing.
    let (_, none) = read(&cfg, Some(&done)).await;
    assert!(none.is_empty(), "{} rows re-read", none.len());

    // Three rows updated one microsecond after the newest row, five inserted after them.
    let bumped = ts_literal(kind, "2024-01-01 00:16:40.000001");
    let newer = ts_literal(kind, "2024-01-01 00:16:40.000002");
    let changed = if kind == Kind::Maria {
        "CONCAT('changed', id)"
    } else {
        "'changed' || id"
    };
    db.exec(&format!(
        "UPDATE people SET email = {changed}, updated_at = {bumped} WHERE id IN (999, 3, 500)"
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO people (id, email, updated_at) VALUES (1001, 'a', {newer}), (1002, 'b', {newer}), (1003, 'c', {newer}), (1004, 'd', {newer}), (1005, 'e', {newer})"
    ))
    .await;
    let mut s = open(&cfg, Some(&done)).await;
    assert!(s.resumed_at.is_some());
    let second = drain(&mut s).await;
    assert_eq!(
        col(&second, 0),
        ["3", "500", "999", "1001", "1002", "1003", "1004", "1005"]
    );
    assert_eq!(
        col(&second, 1)[..3],
        ["changed3", "changed500", "changed999"]
    );
    assert_eq!(values(&second[0])[2], ts("2024-01-01T00:16:40.000001Z"));
    // A new pass counts its rows from 1.
    assert_eq!(
        second.iter().map(|r| r.line).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );

    // Interrupted after two of them: the rest, and nothing else.
    let (_, rest) = read(&cfg, Some(&checkpoint(&identity, &second[1], false))).await;
    assert_eq!(
        col(&rest, 0),
        ["999", "1001", "1002", "1003", "1004", "1005"]
    );
    assert_eq!(rest[0].line, 3);
    let (_, none) = read(&cfg, Some(&checkpoint(&identity, &second[7], true))).await;
    assert!(none.is_empty());

    // Another cursor column starts over.
    let by_id = db.section(
        "SELECT id, email, updated_at FROM people",
        Some(("id", "id")),
        100,
    );
    let (_, all) = read(&by_id, Some(&done)).await;
    assert_eq!(all.len(), 1005);
}

// ---------------------------------------------------------------------------------------------
// (d) ties
// ---------------------------------------------------------------------------------------------

async fn ties_across_chunks(kind: Kind) {
    let db = TestDb::new(kind).await;
    // 400 rows: 50 with their own times, 300 (three chunks' worth) sharing one time, 50 later.
    // The tiebreak's order differs from insertion order.
    let (ddl, fill) = match kind {
        Kind::Pg => (
            "CREATE TABLE events (tb UUID PRIMARY KEY, n INT NOT NULL, updated_at TIMESTAMPTZ NOT NULL)",
            "INSERT INTO events SELECT md5(i::text)::uuid, i, timestamptz '2024-01-01 00:00:00+00' + make_interval(secs => CASE WHEN i <= 50 THEN i WHEN i <= 350 THEN 1000 ELSE 1000 + i END) FROM generate_series(1, 400) AS i",
        ),
        Kind::Maria => (
            "CREATE TABLE events (tb VARCHAR(40) PRIMARY KEY, n INT NOT NULL, updated_at DATETIME(6) NOT NULL)",
            "INSERT INTO events SELECT MD5(seq), seq, TIMESTAMPADD(SECOND, CASE WHEN seq <= 50 THEN seq WHEN seq <= 350 THEN 1000 ELSE 1000 + seq END, '2024-01-01 00:00:00') FROM seq_1_to_400",
        ),
        Kind::Lite => (
            "CREATE TABLE events (tb INTEGER PRIMARY KEY, n INTEGER NOT NULL, updated_at TEXT NOT NULL)",
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 400)
             INSERT INTO events SELECT (i * 7919) % 100003, i, strftime('%Y-%m-%d %H:%M:%f', '2024-01-01 00:00:00', '+' || CASE WHEN i <= 50 THEN i WHEN i <= 350 THEN 1000 ELSE 1000 + i END || ' seconds') FROM c",
        ),
    };
    db.exec(ddl).await;
    db.exec(fill).await;
    let expected = db
        .texts(&format!(
            "SELECT {} AS v FROM events ORDER BY updated_at, tb",
            db.as_text("tb")
        ))
        .await;
    assert_eq!(expected.len(), 400);

    let cfg = db.section(
        "SELECT tb, n, updated_at FROM events",
        Some(("updated_at", "tb")),
        100,
    );
    let (identity, rows) = read(&cfg, None).await;
    let got = col(&rows, 0);
    assert_eq!(
        got.iter().collect::<HashSet<_>>().len(),
        400,
        "no row repeated"
    );
    assert_eq!(got, expected, "every row once, in (updated_at, tb) order");

    // Interrupted in the middle of the tie group (after row 170): exactly the remaining 230.
    let (_, rest) = read(&cfg, Some(&checkpoint(&identity, &rows[169], false))).await;
    assert_eq!(col(&rest, 0), expected[170..]);
    assert_eq!(rest[0].line, 171);
    assert_eq!(rest[0].row_ref, format!("tb={}", expected[170]));
}

// ---------------------------------------------------------------------------------------------
// Every cursor type: bound back as a parameter of the right type
// ---------------------------------------------------------------------------------------------

async fn every_cursor_type_pages_exactly(kind: Kind) {
    let db = TestDb::new(kind).await;
    let cases: Vec<(&str, Vec<&str>)> = match kind {
        Kind::Pg => vec![
            ("bigint", vec!["-9007199254740993", "0", "9007199254740993"]),
            ("integer", vec!["-5", "7", "2147483647"]),
            (
                "numeric(30,10)",
                vec!["1.0000000001", "1.0000000002", "12345678901234567890.5"],
            ),
            ("date", vec!["'1999-12-31'", "'2024-02-29'", "'2024-03-01'"]),
            (
                "timestamp(6)",
                vec![
                    "'2024-01-01 00:00:00.000001'",
                    "'2024-01-01 00:00:00.000002'",
                    "'2024-01-01 00:00:01'",
                ],
            ),
            (
                "timestamptz(6)",
                vec![
                    "'2024-01-01 00:00:00.000001+00'",
                    "'2024-01-01 00:00:00.000002+00'",
                    "'2024-01-01 02:00:00+01'",
                ],
            ),
            ("text", vec!["'A'", "'a'", "'Zoë'"]),
            ("varchar(10)", vec!["'x y'", "'x'", "'xy'"]),
            (
                "double precision",
                vec!["0.1", "0.30000000000000004", "1e300"],
            ),
            ("real", vec!["0.1", "0.3", "1e30"]),
            (
                "uuid",
                vec![
                    "'00000000-0000-0000-0000-000000000001'",
                    "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
                    "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
                ],
            ),
        ],
        Kind::Maria => vec![
            ("BIGINT", vec!["-9007199254740993", "0", "9007199254740993"]),
            (
                "BIGINT UNSIGNED",
                vec!["0", "9223372036854775808", "18446744073709551615"],
            ),
            (
                "DECIMAL(30,10)",
                vec!["1.0000000001", "1.0000000002", "12345678901234567890.5"],
            ),
            ("DATE", vec!["'1999-12-31'", "'2024-02-29'", "'2024-03-01'"]),
            (
                "DATETIME(6)",
                vec![
                    "'2024-01-01 00:00:00.000001'",
                    "'2024-01-01 00:00:00.000002'",
                    "'2024-01-01 00:00:01'",
                ],
            ),
            (
                "TIMESTAMP(6) NULL",
                vec![
                    "'2024-01-01 00:00:00.000001'",
                    "'2024-01-01 00:00:00.000002'",
                    "'2038-01-01 00:00:01'",
                ],
            ),
            ("VARCHAR(10)", vec!["'a'", "'b'", "'Zoë'"]),
            ("DOUBLE", vec!["0.1", "0.30000000000000004", "1e300"]),
            ("FLOAT", vec!["0.1", "0.3", "1e30"]),
            (
                "UUID",
                vec![
                    "'00000000-0000-0000-0000-000000000001'",
                    "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
                    "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
                ],
            ),
        ],
        Kind::Lite => vec![
            (
                "INTEGER",
                vec!["-9007199254740993", "0", "9007199254740993"],
            ),
            ("REAL", vec!["0.1", "0.30000000000000004", "1e300"]),
            (
                "TEXT",
                vec![
                    "'2024-01-01 00:00:00.000001'",
                    "'2024-01-01 00:00:00.000002'",
                    "'Zoë'",
                ],
            ),
            // No declared type: integers sort before text, and positions keep their class.
            ("", vec!["1", "20", "'10'"]),
        ],
    };
    for (ty, vals) in cases {
        db.exec("DROP TABLE IF EXISTS k").await;
        db.exec(&format!("CREATE TABLE k (c {ty}, id INT PRIMARY KEY)"))
            .await;
        // Each value three times (ties), inserted out of order.
        let mut rows = Vec::new();
        for (j, v) in vals.iter().enumerate().rev() {
            for r in 0..3 {
                rows.push(format!("({v}, {})", 100 - (j * 3 + r)));
            }
        }
        db.exec(&format!("INSERT INTO k (c, id) VALUES {}", rows.join(", ")))
            .await;
        let expected = db
            .texts(&format!(
                "SELECT {} AS v FROM k ORDER BY c, id",
                db.as_text("id")
            ))
            .await;
        let cfg = db.section("SELECT id, c FROM k", Some(("c", "id")), 2);
        let (identity, got) = read(&cfg, None).await;
        assert_eq!(col(&got, 0), expected, "cursor type {ty}");
        for cut in [0, 4, 7] {
            let (_, rest) = read(&cfg, Some(&checkpoint(&identity, &got[cut], false))).await;
            assert_eq!(
                col(&rest, 0),
                expected[cut + 1..],
                "cursor type {ty}, resumed after row {}",
                cut + 1
            );
        }
        let (_, none) = read(&cfg, Some(&checkpoint(&identity, &got[8], true))).await;
        assert!(
            none.is_empty(),
            "cursor type {ty}: a completed read has nothing new"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Bad rows
// ---------------------------------------------------------------------------------------------

async fn bad_rows_are_row_errors(kind: Kind) {
    let db = TestDb::new(kind).await;
    // Row 2 holds a value cio-sync cannot represent; row 3 has no cursor value.
    let (ddl, bad_type) = match kind {
        Kind::Pg => (
            "CREATE TABLE r (id INT PRIMARY KEY, updated_at TIMESTAMPTZ NULL, v TIMESTAMP NOT NULL);
             INSERT INTO r VALUES (1, '2024-01-01 00:00:01+00', '2024-01-01'), (2, '2024-01-01 00:00:02+00', 'infinity'),
               (3, NULL, '2024-01-01'), (4, '2024-01-01 00:00:04+00', '2024-01-01')",
            "(TIMESTAMP) is 'infinity'",
        ),
        Kind::Maria => (
            "CREATE TABLE r (id INT PRIMARY KEY, updated_at DATETIME(6) NULL, v TIME NOT NULL);
             INSERT INTO r VALUES (1, '2024-01-01 00:00:01', '10:00'), (2, '2024-01-01 00:00:02', '-01:00:00'),
               (3, NULL, '10:00'), (4, '2024-01-01 00:00:04', '10:00')",
            "(TIME)",
        ),
        Kind::Lite => (
            "CREATE TABLE r (id INTEGER PRIMARY KEY, updated_at TEXT NULL, v DATE NOT NULL);
             INSERT INTO r VALUES (1, '2024-01-01 00:00:01', '2024-01-01'), (2, '2024-01-01 00:00:02', 'soon'),
               (3, NULL, '2024-01-01'), (4, '2024-01-01 00:00:04', '2024-01-01')",
            "(DATE) holds \"soon\"",
        ),
    };
    db.exec(ddl).await;

    // A full read: row 2 is an error naming the column, the others are fine.
    let (_, rows) = read(
        &db.section("SELECT id, updated_at, v FROM r ORDER BY id", None, 100),
        None,
    )
    .await;
    assert_eq!(rows.len(), 4);
    let err = rows[1].values.as_ref().expect_err("row 2 is unreadable");
    assert!(
        err.contains("column `v`") && err.contains(bad_type),
        "{err}"
    );
    assert!(
        rows[1]
            .raw
            .as_deref()
            .unwrap_or_default()
            .contains("\"id\":2"),
        "{:?}",
        rows[1].raw
    );
    assert!(
        rows[1].row_ref.starts_with("row 2 #"),
        "{}",
        rows[1].row_ref
    );
    assert!(
        rows.iter()
            .enumerate()
            .all(|(i, r)| i == 1 || r.values.is_ok())
    );

    // An incremental read: the NULL cursor row is an error that does not move the position.
    let cfg = db.section(
        "SELECT id, updated_at, v FROM r",
        Some(("updated_at", "id")),
        100,
    );
    let (identity, rows) = read(&cfg, None).await;
    let ids: Vec<String> = rows
        .iter()
        .map(|r| match &r.values {
            Ok(v) => v[0].to_text().unwrap_or_default(),
            // Keyless rows are `row N #<content hash>`: compare the position only.
            Err(_) => r.row_ref.split(" #").next().unwrap_or_default().to_string(),
        })
        .collect();
    // PostgreSQL sorts NULLs last, MariaDB and SQLite first.
    let (null_at, expected) = match kind {
        Kind::Pg => (3, ["1", "id=2", "4", "row 4"]),
        _ => (0, ["row 1", "1", "id=2", "4"]),
    };
    assert_eq!(ids, expected);
    let null_row = &rows[null_at];
    let err = null_row.values.as_ref().expect_err("NULL cursor");
    assert!(err.contains("`updated_at` is NULL"), "{err}");
    let before = if null_at == 0 {
        None
    } else {
        Some(&rows[null_at - 1].resume)
    };
    match (&null_row.resume, before) {
        (
            cio_sync::source::ResumePoint::Sql {
                cursor, tiebreak, ..
            },
            Some(cio_sync::source::ResumePoint::Sql {
                cursor: c,
                tiebreak: t,
                ..
            }),
        ) => {
            assert_eq!(
                (cursor, tiebreak),
                (c, t),
                "the position stays at the previous row"
            )
        }
        (
            cio_sync::source::ResumePoint::Sql {
                cursor, tiebreak, ..
            },
            None,
        ) => assert_eq!((cursor, tiebreak), (&None, &None)),
        other => panic!("{other:?}"),
    }
    // The unreadable row 2 still moves the position: resuming after it reads only row 4.
    let after_2 = rows.iter().find(|r| r.row_ref == "id=2").expect("row id=2");
    let (_, rest) = read(&cfg, Some(&checkpoint(&identity, after_2, false))).await;
    assert_eq!(col(&rest, 0), ["4"]);
}

// ---------------------------------------------------------------------------------------------
// (e) unsupported types
// ---------------------------------------------------------------------------------------------

#[track_caller]
fn assert_unsupported(e: SourceError, column: &str, db_type: &str) {
    match &e {
        SourceError::UnsupportedType {
            column: c,
            db_type: t,
            ..
        } => {
            assert_eq!((c.as_str(), t.as_str()), (column, db_type), "{e}");
            assert!(
                e.to_string()
                    .contains(&format!("column `{column}` has type {db_type}")),
                "{e}"
            );
        }
        other => panic!("expected UnsupportedType for {column}, got: {other}"),
    }
}

async fn unsupported_types_are_named(kind: Kind) {
    let db = TestDb::new(kind).await;
    let cases: &[(&str, &str, &str)] = match kind {
        Kind::Pg => &[
            ("location point", "location", "POINT"),
            ("span int4range", "span", "INT4RANGE"),
            ("payload bytea", "payload", "BYTEA"),
            ("tags text[]", "tags", "TEXT[]"),
        ],
        Kind::Maria => &[
            ("shape GEOMETRY", "shape", "GEOMETRY"),
            ("payload BLOB", "payload", "BLOB"),
            ("code VARBINARY(8)", "code", "VARBINARY"),
        ],
        Kind::Lite => &[("payload BLOB", "payload", "BLOB")],
    };
    for (column_ddl, column, db_type) in cases {
        db.exec("DROP TABLE IF EXISTS u").await;
        db.exec(&format!(
            "CREATE TABLE u (id INT PRIMARY KEY, {column_ddl})"
        ))
        .await;
        let cfg = db.section(&format!("SELECT id, {column} FROM u"), None, 100);
        assert_unsupported(
            sql::probe_columns(&cfg, JOB)
                .await
                .expect_err("probe must refuse"),
            column,
            db_type,
        );
        let e = sql::open(&cfg, JOB, None, CancellationToken::new())
            .await
            .err()
            .expect("open must refuse");
        assert_unsupported(e, column, db_type);
    }

    // A cursor must be a column that orders rows: a boolean cannot.
    db.exec("CREATE TABLE flags (id INT PRIMARY KEY, active BOOLEAN NOT NULL)")
        .await;
    let cfg = db.section("SELECT id, active FROM flags", Some(("active", "id")), 100);
    let e = sql::probe_columns(&cfg, JOB)
        .await
        .expect_err("a boolean cursor");
    let msg = e.to_string();
    assert!(
        !msg.contains(JOB)
            && msg.contains("`source.sql.cursor.column` is `active`")
            && msg.contains("cannot order"),
        "{msg}"
    );

    if kind == Kind::Lite {
        // SQLite types values, not columns: a BLOB in an undeclared column is that row's error.
        db.exec("CREATE TABLE loose (id INTEGER PRIMARY KEY, v); INSERT INTO loose VALUES (1, 'ok'), (2, x'00ff'), (3, 3)").await;
        let (_, rows) = read(
            &db.section("SELECT id, v FROM loose ORDER BY id", None, 100),
            None,
        )
        .await;
        assert_eq!(values(&rows[0])[1], Value::Text("ok".into()));
        let err = rows[1].values.as_ref().expect_err("a BLOB value");
        assert!(err.contains("column `v`") && err.contains("BLOB"), "{err}");
        assert!(
            rows[1]
                .raw
                .as_deref()
                .unwrap_or_default()
                .contains("\"id\":2"),
            "{:?}",
            rows[1].raw
        );
        assert_eq!(values(&rows[2])[1], Value::Int(3));
    }
}

// ---------------------------------------------------------------------------------------------
// (f) errors
// ---------------------------------------------------------------------------------------------

#[track_caller]
fn assert_database_error(e: &SourceError, needles: &[&str]) {
    let msg = e.to_string();
    assert!(
        matches!(e, SourceError::Database { .. }),
        "not a Database error: {msg}"
    );
    // The source names the database; the caller that knows the job adds it, once.
    assert!(
        !msg.contains(JOB),
        "the source does not name the job: {msg}"
    );
    for n in needles {
        assert!(
            msg.to_lowercase().contains(&n.to_lowercase()),
            "{n:?} missing from: {msg}"
        );
    }
}

async fn errors_name_job_and_database_message(kind: Kind) {
    let db = TestDb::new(kind).await;
    db.exec("CREATE TABLE t (id INT PRIMARY KEY)").await;

    // Unreachable: nothing listens on port 1; the password never appears.
    let (unreachable, refused) = match kind {
        Kind::Pg => (
            "postgres://postgres:hunter2@127.0.0.1:1/test".to_string(),
            "refused",
        ),
        Kind::Maria => (
            "mysql://root:hunter2@127.0.0.1:1/test".to_string(),
            "refused",
        ),
        Kind::Lite => (
            format!(
                "sqlite://{}/missing/hunter2.db",
                std::env::temp_dir().display()
            ),
            "unable to open database file",
        ),
    };
    let cfg = SqlSection {
        url: DatabaseUrl::new(unreachable),
        connect_timeout: std::time::Duration::from_secs(3),
        ..db.section("SELECT 1 AS one", None, 100)
    };
    for e in [
        sql::probe_columns(&cfg, JOB)
            .await
            .expect_err("unreachable"),
        sql::open(&cfg, JOB, None, CancellationToken::new())
            .await
            .err()
            .expect("unreachable"),
    ] {
        assert_database_error(&e, &[refused, "source.sql.url"]);
        if kind != Kind::Lite {
            assert!(
                !e.to_string().contains("hunter2"),
                "the password leaked: {e}"
            );
        }
    }

    // A bad query: the database's own words.
    let missing = match kind {
        Kind::Pg => "relation \"missing_table\" does not exist",
        Kind::Maria => "missing_table' doesn't exist",
        Kind::Lite => "no such table: missing_table",
    };
    let cfg = db.section("SELECT id FROM missing_table", None, 100);
    let e = sql::open(&cfg, JOB, None, CancellationToken::new())
        .await
        .err()
        .expect("bad query");
    assert_database_error(&e, &[missing, "source.sql.query"]);
    assert_database_error(
        &sql::probe_columns(&cfg, JOB).await.expect_err("bad query"),
        &[missing],
    );

    // A cursor column the query does not return.
    let cfg = db.section("SELECT id FROM t", Some(("updated_at", "id")), 100);
    let e = sql::open(&cfg, JOB, None, CancellationToken::new())
        .await
        .err()
        .expect("bad cursor");
    assert_database_error(
        &e,
        &[
            "`source.sql.cursor.column` names `updated_at`",
            "it returns: id",
        ],
    );

    // A column name that would need escaping is refused rather than spliced.
    let cfg = db.section(
        "SELECT id AS \"we\"\"ird\" FROM t",
        Some(("we\"ird", "we\"ird")),
        100,
    );
    if kind != Kind::Maria {
        let e = sql::open(&cfg, JOB, None, CancellationToken::new())
            .await
            .err()
            .expect("quote in a name");
        assert_database_error(&e, &["does not allow"]);
    }

    // An error in the middle of a read (a division by zero at row 3) ends the stream with the
    // database's message, after the rows before it.
    if kind == Kind::Pg {
        let mut s = open(
            &db.section(
                "SELECT i, 10 / (3 - i) AS q FROM generate_series(1, 5) AS i",
                None,
                100,
            ),
            None,
        )
        .await;
        let mut ok = 0;
        let err = loop {
            let row = tokio::time::timeout(crate::helpers::WAIT, s.rows.recv()).await;
            match row.expect("the stream neither ended nor failed: waited for the division by zero")
            {
                Some(Ok(_)) => ok += 1,
                Some(Err(e)) => break e,
                None => panic!("the stream ended without the error"),
            }
        };
        assert_eq!(ok, 2);
        assert_database_error(&err, &["division by zero", "after 2 rows"]);
    }
}

// ---------------------------------------------------------------------------------------------
// Retry after a lost connection
// ---------------------------------------------------------------------------------------------

/// Kills the server side of every busy connection to the test database; how many.
async fn kill_connections(db: &TestDb) -> usize {
    let admin = TestDb::admin(db.kind);
    match db.kind {
        Kind::Pg => admin
            .texts(&format!(
                "SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid() AND state = 'active'",
                db.name
            ))
            .await
            .len(),
        Kind::Maria => {
            let busy = admin
                .texts(&format!(
                    "SELECT CAST(id AS CHAR) FROM information_schema.processlist WHERE db = '{}' AND id <> CONNECTION_ID() AND command <> 'Sleep'",
                    db.name
                ))
                .await;
            let mut killed = 0;
            for id in &busy {
                match admin.try_exec(&format!("KILL CONNECTION {id}")).await {
                    Ok(()) => killed += 1,
                    // It finished its statement and left between the listing and the kill.
                    Err(e) if e.to_string().contains("Unknown thread id") => {}
                    Err(e) => panic!("KILL CONNECTION {id}: {e}"),
                }
            }
            killed
        }
        Kind::Lite => 0,
    }
}

async fn lost_connection_is_retried(kind: Kind, incremental: bool) {
    const N: i64 = 50_000;
    let db = TestDb::new(kind).await;
    // ~1 KB rows: far more than socket buffers hold, so the query is still sending when killed.
    match kind {
        Kind::Pg => db.exec(&format!("CREATE TABLE big (id BIGINT PRIMARY KEY, pad TEXT NOT NULL); INSERT INTO big SELECT i, repeat('x', 1000) FROM generate_series(1, {N}) AS i")).await,
        _ => db.exec(&format!("CREATE TABLE big (id BIGINT PRIMARY KEY, pad TEXT NOT NULL); INSERT INTO big SELECT seq, REPEAT('x', 1000) FROM seq_1_to_{N}")).await,
    }
    let cfg = if incremental {
        db.section("SELECT id, pad FROM big", Some(("id", "id")), 20_000)
    } else {
        db.section("SELECT id, pad FROM big ORDER BY id", None, 100)
    };
    let mut s = open(&cfg, None).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(int(&values(&next(&mut s).await.expect("a row"))[0]));
    }
    // The reader fills the channel and blocks mid-query (it is never done: nothing is
    // consumed); cut its connection as soon as the server shows it busy.
    let deadline = std::time::Instant::now() + crate::helpers::WAIT;
    while kill_connections(&db).await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for the reader's query to be running on the server, to kill it"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while let Some(row) = next(&mut s).await {
        ids.push(int(&values(&row)[0]));
        assert_eq!(row.line, ids.len() as u64);
    }
    assert_eq!(ids, (1..=N).collect::<Vec<_>>(), "every row once, in order");
}

mod a_cancelled_read_stops_promptly_and_the_next_read_starts_cleanly {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        cancelled_read_stops(Kind::Pg).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mariadb() {
        cancelled_read_stops(Kind::Maria).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        cancelled_read_stops(Kind::Lite).await
    }
}

async fn cancelled_read_stops(kind: Kind) {
    let db = TestDb::new(kind).await;
    create_people(&db, 50_000).await;
    let cfg = db.section("SELECT id, email FROM people ORDER BY id", None, 100);
    let cancel = CancellationToken::new();
    let mut s = sql::open(&cfg, JOB, None, cancel.clone())
        .await
        .expect("open");
    for _ in 0..10 {
        next(&mut s).await.expect("a row");
    }
    cancel.cancel();
    // The reader stops: at most what was already queued arrives, then the stream ends.
    let rest = tokio::time::timeout(Duration::from_secs(10), drain(&mut s))
        .await
        .expect("the stream ends after a cancel");
    assert!(
        rest.len() < 50_000 - 10,
        "the read stopped early ({} more rows)",
        rest.len()
    );

    // A read cancelled mid-result must not hand its connection back to the shared pool:
    // testing it on return drains the rest of the result first, and a result that never ends
    // keeps that connection busy for good. Cancel as many endless reads (same URL, so the same
    // pool) as the pool has connections; the next read must still get one.
    let endless = match kind {
        Kind::Pg => "SELECT generate_series(1, 1000000000000) AS id",
        Kind::Maria => "SELECT CAST(seq AS SIGNED) AS id FROM seq_1_to_1000000000000",
        Kind::Lite => {
            "WITH RECURSIVE n(id) AS (SELECT 1 UNION ALL SELECT id + 1 FROM n) SELECT id FROM n"
        }
    };
    for _ in 0..2 {
        let cancel = CancellationToken::new();
        let mut s = sql::open(&db.section(endless, None, 100), JOB, None, cancel.clone())
            .await
            .expect("open the endless read");
        for _ in 0..10 {
            next(&mut s).await.expect("a row of the endless read");
        }
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), drain(&mut s))
            .await
            .expect("the endless stream ends after a cancel");
    }
    // The same pool serves the next read, from the first row.
    let (_, all) = read(&cfg, None).await;
    assert_eq!(all.len(), 50_000);
}

// ---------------------------------------------------------------------------------------------
// Through the pipeline
// ---------------------------------------------------------------------------------------------

async fn sql_job_through_the_pipeline(kind: Kind) {
    let db = TestDb::new(kind).await;
    create_people(&db, 300).await;
    let env = TestEnv::new().await;
    env.write_job(
        "crm",
        &format!(
            "source:\n  sql:\n    url: \"{}\"\n    query: \"SELECT id AS customer_id, email, updated_at FROM people\"\n    cursor: {{ column: updated_at, tiebreak: customer_id }}\n    batch_rows: 100\n\
             identify:\n  identifier: {{ id: customer_id }}\n  attributes:\n    email: email\n    updated: {{ column: updated_at, as: timestamp }}\n",
            db.url
        ),
    );
    let first = env.run("crm").await;
    assert_eq!(first.outcome, Outcome::Succeeded, "{first:?}");
    assert_eq!(
        (first.counts.rows_read, first.counts.rows_delivered),
        (300, 300)
    );
    let ops = env.sim.operations();
    assert_eq!(ops.len(), 300);
    let one = ops
        .iter()
        .find(|o| o.identifiers.get("id").map(String::as_str) == Some("1"))
        .expect("customer 1");
    assert_eq!(one.action, "identify");
    assert_eq!(
        serde_json::Value::Object(one.attributes.clone()),
        serde_json::json!({"email": "user1@example.com", "updated": 1_704_067_201})
    );

    // Nothing changed: nothing read.
    let idle = env.run("crm").await;
    assert_eq!(
        (idle.outcome, idle.counts.rows_read),
        (Outcome::Succeeded, 0)
    );

    // Two rows updated, three inserted: exactly those five are sent.
    env.sim.reset_records();
    let later = ts_literal(kind, "2024-01-02 00:00:00.5");
    db.exec(&format!(
        "UPDATE people SET email = 'new@example.com', updated_at = {later} WHERE id IN (7, 250)"
    ))
    .await;
    insert_people(&db, 301, 303).await;
    db.exec(&format!(
        "UPDATE people SET updated_at = {later} WHERE id > 300"
    ))
    .await;
    let second = env.run("crm").await;
    assert_eq!(
        (
            second.outcome,
            second.counts.rows_read,
            second.counts.rows_delivered
        ),
        (Outcome::Succeeded, 5, 5),
        "{second:?}"
    );
    let mut ids: Vec<String> = env
        .sim
        .operations()
        .iter()
        .map(|o| o.identifiers["id"].clone())
        .collect();
    ids.sort();
    assert_eq!(ids, ["250", "301", "302", "303", "7"]);
    let seven = env
        .sim
        .operations()
        .into_iter()
        .find(|o| o.identifiers["id"] == "7")
        .expect("customer 7");
    assert_eq!(seven.attributes["email"], "new@example.com");
    assert_eq!(seven.attributes["updated"], 1_704_153_600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_connect_probes_each_sql_query_and_names_the_job_and_the_database_message() {
    let db = TestDb::new(Kind::Pg).await;
    create_people(&db, 3).await;
    let env = TestEnv::new().await;
    let job = |query: &str, cursor: &str| {
        format!(
            "source:\n  sql:\n    url: \"{}\"\n    query: \"{query}\"\n{cursor}identify:\n  identifier: {{ id: customer_id }}\n  attributes:\n    email: email\n",
            db.url
        )
    };
    env.write_job(
        "good",
        &job(
            "SELECT id AS customer_id, email, updated_at FROM people",
            "    cursor: { column: updated_at, tiebreak: customer_id }\n",
        ),
    );
    let out = env.cli_output(&["validate", "--connect"]).await;
    assert_exit(&out, 0);

    env.write_job(
        "typo",
        &job("SELECT id AS customer_id, email FROM peeple", ""),
    );
    env.write_job(
        "nocursor",
        &job(
            "SELECT id AS customer_id, email FROM people",
            "    cursor: { column: updated_at, tiebreak: customer_id }\n",
        ),
    );
    let out = env.cli_output(&["validate", "--connect"]).await;
    let err = crate::helpers::stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("job `typo`") && err.contains("relation \"peeple\" does not exist"),
        "{err}"
    );
    assert!(
        err.contains("job `nocursor`")
            && err.contains("`source.sql.cursor.column` names `updated_at`"),
        "{err}"
    );
    assert!(!err.contains("job `good`"), "{err}");
}

/// The real binary reading an incremental SQL job, SIGKILLed twice mid-run and restarted:
/// every row arrives, and only batches in flight at a kill are sent twice.
async fn killed_sql_job_resumes(kind: Kind) {
    const N: usize = 20_000;
    let db = TestDb::new(kind).await;
    create_people(&db, N as u64).await;
    let env = TestEnv::new().await;
    env.write_config("track: { concurrency: 4, batch: { max_items: 100, max_bytes: 480000 } }\n");
    env.write_job(
        "crm",
        &format!(
            "source:\n  sql:\n    url: \"{}\"\n    query: \"SELECT id AS customer_id, email, updated_at FROM people\"\n    cursor: {{ column: updated_at, tiebreak: customer_id }}\n    batch_rows: 1000\n\
             identify:\n  identifier: {{ id: customer_id }}\n  attributes:\n    email: email\n",
            db.url
        ),
    );
    for at in [5_000, 12_000] {
        // The kill lands while rows remain: from `at` operations on, the simulator holds
        // requests until the child is dead.
        env.sim.hold_from(at);
        let mut child = tokio::process::Command::from(env.cli())
            .args(["run", "crm"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn cio-sync");
        wait_until_held(&env, &mut child, at).await;
        child.kill().await.expect("SIGKILL");
        env.sim.release();
    }
    let out = env.cli_output(&["run", "crm"]).await;
    assert_exit(&out, 0);
    let ops = env.sim.operations();
    assert_eq!(crate::helpers::ids_of(&ops).len(), N, "every row arrived");
    // At most the batches in flight (4) and the one being acknowledged, per kill.
    assert!(ops.len() <= N + 2 * 5 * 100, "{} identify calls", ops.len());
}
