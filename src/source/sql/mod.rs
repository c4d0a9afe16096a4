//! SQL sources (PostgreSQL, MySQL/MariaDB, SQLite): streaming and keyset-incremental reads.
//!
//! Owns: opening a job's query on its database, checking its columns, deciding where the
//! read starts from the checkpoint, and streaming typed rows with their positions. Must not:
//! splice values into SQL, load a whole result into memory, write to the source database,
//! or know about Customer.io or the state database.
//!
//! # Layout
//!
//! - `plan`: SQL text and the start position (pure).
//! - `key`: the typed (cursor, tiebreak) values stored in checkpoints.
//! - `pool`: one connection pool per URL, errors in the database's words.
//! - `read`: the fetch loops, retry after a lost connection.
//! - `pg`, `mysql`, `sqlite`: each backend's types → values.
//!
//! # Writing the query (README)
//!
//! `source.sql.url` picks the database by scheme: `postgres://` (or `postgresql://`),
//! `mysql://` (or `mariadb://`) or `sqlite://path/to/file.db` (opened read-only; a missing
//! file is an error). `source.sql.query` is one `SELECT` (a `WITH … SELECT` is fine):
//!
//! - **No trailing semicolon** (trailing semicolons and whitespace are removed), and a single
//!   statement only.
//! - **Every column needs a unique name.** Name computed columns with `AS`; the names are
//!   what the mapping refers to.
//! - **Values are typed.** Integers, floats, NUMERIC/DECIMAL (exact text), text, booleans,
//!   dates, times, timestamps, JSON and UUIDs (as text) are read; NULL is NULL. Any other
//!   type (binary data, geometry, ranges, intervals, arrays…) is refused up front, naming the
//!   column and its type: cast it in the query (`col::text`, `CAST(col AS CHAR)`).
//!   Timestamps without a time zone are taken as UTC. On MySQL/MariaDB, `TINYINT(1)` reads as
//!   true/false (`col + 0` gives the number) and MariaDB's `JSON` arrives as text. SQLite
//!   values are read as stored; columns declared `BOOLEAN`, `DATE`, `TIME`, `DATETIME` or
//!   `TIMESTAMP` are read as such.
//!
//! `cio-sync validate --connect` runs the query as
//! `SELECT * FROM (<query>) AS cio_src LIMIT 0` to check its columns without reading a row.
//!
//! ## Full reads (no `cursor`)
//!
//! The query runs exactly as written and its rows are streamed. Every run that starts after
//! a completed run reads **and sends every row again**: a full sync re-sends all rows (event
//! ids stay the same, so Customer.io drops repeated events; identify calls simply repeat).
//! If a run is interrupted, the next run runs the query again and **skips the rows the
//! interrupted run settled**. That is only correct when the query returns its rows in the
//! same order every time: give it an `ORDER BY` on a unique key. Changing the query text
//! starts over from the first row.
//!
//! ## Incremental reads (`cursor: { column, tiebreak }`)
//!
//! `column` is what grows when a row is inserted or changed (typically `updated_at`);
//! `tiebreak` is unique (typically the primary key) and orders rows that share a cursor
//! value. The query is read in chunks of `batch_rows`:
//!
//! ```sql
//! -- first run
//! SELECT * FROM (<query>) AS cio_src
//! ORDER BY "updated_at", "id" LIMIT 5000
//! -- every later chunk and run, with the last row's values bound as parameters
//! -- PostgreSQL:
//! SELECT * FROM (<query>) AS cio_src
//! WHERE ("updated_at", "id") > ($1, $2)
//! ORDER BY "updated_at", "id" LIMIT 5000
//! -- MySQL/MariaDB (backticks) and SQLite:
//! SELECT * FROM (<query>) AS cio_src
//! WHERE ("updated_at" > ? OR ("updated_at" = ? AND "id" > ?))
//! ORDER BY "updated_at", "id" LIMIT 5000
//! ```
//!
//! The two conditions mean the same (rows strictly after the last one read); each is the
//! form its database turns into an index range. So the query:
//!
//! - must have both columns in its select list (under those names), and neither may be NULL
//!   (a row with a NULL cursor or tiebreak has no position: it is dead-lettered when read,
//!   and later chunks never select it);
//! - must not have its own `ORDER BY` or `LIMIT` (they would apply before the chunking);
//! - needs a **unique** tiebreak, or rows sharing a cursor value can be lost at chunk edges;
//! - should be backed by an index on `(cursor, tiebreak)` for large tables.
//!
//! Cursor and tiebreak columns may be integers, text, dates, timestamps, NUMERIC/DECIMAL,
//! floats or UUIDs. The checkpoint stores the last settled row's exact values with their type
//! (e.g. `{"type": "timestamptz", "value": "2024-05-01T10:00:00.123456Z"}`), and each run
//! continues strictly after them, including after a run that read everything: that is how
//! rows inserted or updated since are picked up. A row is sent again when its cursor moves
//! past the checkpoint (e.g. `updated_at` bumped). Changing `column` or `tiebreak` starts
//! over from the first row; editing the rest of the query keeps the position. To send
//! everything again, run the job with `--full`.
//!
//! If the connection drops during a read (connection reset, server restart, no connection
//! within the timeout), the read is retried up to 3 times (after 1, 2 and 4 s) from the last
//! row handed out, so no row is skipped or repeated; then the run fails with the database's
//! message.
//!
//! Dead letters name a row by its tiebreak (`id=42`) in incremental reads, by its position
//! in the result and a hash of its content (`row 17 #9f2c…`) in full reads.

mod decode;
mod key;
mod mysql;
mod pg;
mod plan;
mod pool;
mod read;
mod sqlite;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::plan::{Backend, BadCheckpoint, CursorPlan, Start};
use self::pool::Db;
use self::read::{ColumnInfo, Conn, Reader};
use crate::config::SqlSource as SqlSection;
use crate::source::error::SourceError;
use crate::source::row::{Checkpoint, SourceStream, row_channel};

/// Opens the job's query, continuing after `checkpoint` when it belongs to this query
/// (see the module documentation for what that means in each mode).
pub async fn open(
    cfg: &SqlSection,
    job: &str,
    checkpoint: Option<&Checkpoint>,
    cancel: CancellationToken,
) -> Result<SourceStream, SourceError> {
    let backend = backend_of(cfg)?;
    let db = pool::connect(cfg, backend).await?;
    let mut conn = acquire(&db, cfg).await?;
    let columns = describe(&mut conn, cfg).await?;
    let cursor = cursor_plan(cfg, backend, &columns)?;
    let identity = plan::identity(
        &cfg.query,
        cfg.cursor
            .as_ref()
            .map(|c| (c.column.as_str(), c.tiebreak.as_str())),
    );
    let start = plan::start(&identity, checkpoint, cursor.is_some()).map_err(|BadCheckpoint(why)| SourceError::Database {
        describe: cfg.url.masked(),
        message: format!("the stored checkpoint does not fit this source: {why}; run the job once with `--full` to read from the first row"),
    })?;
    if checkpoint.is_some_and(|cp| cp.source != identity) {
        tracing::info!(job, source = %cfg.url.masked(), "The checkpoint belongs to another query or cursor; reading from the first row.");
    }
    let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
    let (tx, rx) = row_channel();
    let reader = Reader {
        db,
        conn: Some(conn),
        backend,
        job: job.to_string(),
        describe: cfg.url.masked(),
        query: cfg.query.clone(),
        batch_rows: cfg.batch_rows.max(1),
        cursor,
        ncols: names.len(),
        tx,
        cancel,
    };
    let resumed_at = start.resumed_at();
    let incremental = reader.cursor.is_some();
    let task = async move {
        match start {
            Start::Fresh if incremental => reader.incremental(None, 0).await,
            Start::Fresh => reader.full(0).await,
            Start::SkipRows(n) => reader.full(n).await,
            Start::After {
                cursor,
                tiebreak,
                row,
            } => reader.incremental(Some((cursor, tiebreak)), row).await,
        }
    };
    tokio::spawn(task.instrument(tracing::Span::current()));
    Ok(SourceStream {
        columns: Arc::new(names),
        identity,
        resumed_at,
        rows: rx,
        describe: cfg.url.masked(),
    })
}

/// The query's columns, from a `LIMIT 0` probe; every type must be readable, and the cursor
/// (when configured) must name usable columns.
/// Errors name the database, never the job: the caller, which knows the job, adds it.
pub async fn probe_columns(cfg: &SqlSection, job: &str) -> Result<Vec<String>, SourceError> {
    tracing::debug!(job, source = %cfg.url.masked(), "Probing the source query.");
    let backend = backend_of(cfg)?;
    let db = pool::connect(cfg, backend).await?;
    let mut conn = acquire(&db, cfg).await?;
    let columns = describe(&mut conn, cfg).await?;
    cursor_plan(cfg, backend, &columns)?;
    Ok(columns.into_iter().map(|c| c.name).collect())
}

fn backend_of(cfg: &SqlSection) -> Result<Backend, SourceError> {
    let scheme = cfg.url.scheme();
    Backend::from_scheme(&scheme).ok_or_else(|| SourceError::Database {
        describe: cfg.url.masked(),
        message: format!("unsupported scheme `{scheme}` in `source.sql.url`; use postgres://, mysql:// (or mariadb://) or sqlite://"),
    })
}

async fn acquire(db: &Db, cfg: &SqlSection) -> Result<Conn, SourceError> {
    db.acquire().await.map_err(|e| SourceError::Database {
        describe: cfg.url.masked(),
        message: format!(
            "cannot connect to the source database: {}; {}",
            pool::describe_error(&e),
            pool::connect_fix(db.backend())
        ),
    })
}

async fn describe(conn: &mut Conn, cfg: &SqlSection) -> Result<Vec<ColumnInfo>, SourceError> {
    let conn_backend = conn.backend();
    let columns = conn
        .describe(plan::probe_sql(&cfg.query))
        .await
        .map_err(|e| {
            let fix = if pool::is_transient(&e) {
                pool::connect_fix(conn_backend)
            } else {
                pool::QUERY_FIX
            };
            SourceError::Database {
                describe: cfg.url.masked(),
                message: format!("the query failed: {}; {fix}", pool::describe_error(&e)),
            }
        })?;
    if let Some(bad) = columns.iter().find(|c| !c.supported) {
        return Err(SourceError::UnsupportedType {
            describe: cfg.url.masked(),
            column: bad.name.clone(),
            db_type: bad.db_type.clone(),
        });
    }
    Ok(columns)
}

fn cursor_plan(
    cfg: &SqlSection,
    backend: Backend,
    columns: &[ColumnInfo],
) -> Result<Option<CursorPlan>, SourceError> {
    let Some(c) = &cfg.cursor else {
        return Ok(None);
    };
    let fail = |message: String| SourceError::Database {
        describe: cfg.url.masked(),
        message,
    };
    let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
    let plan = CursorPlan::resolve(backend, &names, &c.column, &c.tiebreak).map_err(fail)?;
    for (key, i) in [
        ("column", plan.cursor_index),
        ("tiebreak", plan.tiebreak_index),
    ] {
        let col = &columns[i];
        if col.key_kind.is_none() {
            return Err(fail(format!(
                "`source.sql.cursor.{key}` is `{}`, of type {}, which cannot order an incremental read; use an integer, text, date or timestamp column (or cast it in the query)",
                col.name, col.db_type
            )));
        }
    }
    Ok(Some(plan))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatabaseUrl;
    use crate::pipeline::PipelineError;

    #[tokio::test]
    async fn a_run_failing_on_an_sql_source_names_the_job_once() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = dir.path().join("missing.db");
        let cfg = SqlSection {
            url: DatabaseUrl::new(format!("sqlite://{}", file.display())),
            query: "SELECT id FROM people".into(),
            cursor: None,
            batch_rows: 100,
            connect_timeout: std::time::Duration::from_secs(5),
        };
        let source = open(&cfg, "orders", None, CancellationToken::new())
            .await
            .err()
            .expect("the file does not exist");
        let msg = PipelineError::Source {
            job: "orders".into(),
            source,
        }
        .to_string();
        assert_eq!(
            msg,
            format!(
                "job `orders`: sqlite://{}: cannot connect to the source database: unable to open database file [code 14]; {}",
                file.display(),
                pool::SQLITE_FIX
            )
        );
    }
}
