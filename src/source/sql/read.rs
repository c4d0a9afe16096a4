//! Running the query and handing its rows out, one at a time, in order.
//!
//! Owns: the per-backend fetch (always a row stream, never a whole result), turning each row
//! into a [`SourceRow`] with its position, keyset chunks for incremental reads, and retrying
//! a read after a lost connection without skipping or repeating a row. Must not: build SQL
//! text (`plan` does), decide where a read starts (`plan::start`), or know what a row means.

use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Connection, Executor, MySql, Postgres, SqlSafeStr, Sqlite, Statement};
use tokio_util::sync::CancellationToken;

pub(super) use super::decode::ColumnInfo;
use super::decode::{DecodedRow, Decoder, FetchError, column_infos, decoded};
use super::key::Key;
use super::mysql::MyDecoder;
use super::pg::PgDecoder;
use super::plan::{Backend, CursorPlan, clean_query};
use super::pool::{self, Db};
use super::sqlite::LiteDecoder;
use crate::source::error::SourceError;
use crate::source::row::{ResumePoint, RowSender, SourceRow};

/// The one connection a read uses, from its probe to its last chunk.
pub(super) enum Conn {
    Pg(PoolConnection<Postgres>),
    My(PoolConnection<MySql>),
    Lite(PoolConnection<Sqlite>),
}

/// Runs `$body` once per backend, with `$c` the connection and `$D` its [`Decoder`].
macro_rules! on_conn {
    ($conn:expr, $c:ident, $D:ident => $body:expr) => {
        match $conn {
            Conn::Pg($c) => {
                #[allow(dead_code)]
                type $D = PgDecoder;
                $body
            }
            Conn::My($c) => {
                #[allow(dead_code)]
                type $D = MyDecoder;
                $body
            }
            Conn::Lite($c) => {
                #[allow(dead_code)]
                type $D = LiteDecoder;
                $body
            }
        }
    };
}

/// A pooled connection with an empty statement cache.
async fn fresh<DB: sqlx::Database + sqlx::database::HasStatementCache>(
    pool: &sqlx::Pool<DB>,
) -> Result<PoolConnection<DB>, sqlx::Error> {
    let mut c = pool.acquire().await?;
    c.clear_cached_statements().await?;
    Ok(c)
}

impl Db {
    /// A connection with an empty statement cache. sqlx caches prepared statements by their
    /// SQL text, and one cached by an earlier run describes the table as it was then
    /// (PostgreSQL refuses it outright once a column's type changed).
    pub(super) async fn acquire(&self) -> Result<Conn, sqlx::Error> {
        Ok(match self {
            Db::Pg(p) => Conn::Pg(fresh(p).await?),
            Db::My(p) => Conn::My(fresh(p).await?),
            Db::Lite(p) => Conn::Lite(fresh(p).await?),
        })
    }
}

impl Conn {
    pub(super) fn backend(&self) -> Backend {
        match self {
            Conn::Pg(_) => Backend::Postgres,
            Conn::My(_) => Backend::MySql,
            Conn::Lite(_) => Backend::Sqlite,
        }
    }

    /// The query's columns without reading a row: prepared, then run (a `LIMIT 0` query), so
    /// permission errors surface too.
    pub(super) async fn describe(&mut self, sql: String) -> Result<Vec<ColumnInfo>, sqlx::Error> {
        on_conn!(self, c, D => {
            let st = (&mut **c)
                .prepare(AssertSqlSafe(sql.clone()).into_sql_str())
                .await?;
            sqlx::query(AssertSqlSafe(sql))
                .fetch_optional(&mut **c)
                .await?;
            Ok(column_infos::<D>(st.columns()))
        })
    }

    /// Streams `sql` with `params` bound in order.
    fn fetch(
        &mut self,
        sql: String,
        params: &[Key],
        keys: Option<(usize, usize)>,
        expected: usize,
    ) -> Result<BoxStream<'_, Result<DecodedRow, FetchError>>, String> {
        on_conn!(self, c, D => {
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for k in params {
                q = D::bind(q, k)?;
            }
            Ok(decoded::<D>(q.fetch(&mut **c), keys, expected))
        })
    }

    /// Closes a connection that failed or stopped mid-result instead of returning it to the
    /// pool, where its next user would first have to drain the rest of the result.
    fn discard(self) {
        on_conn!(self, c, D => {
            let mut c = c;
            c.close_on_drop()
        })
    }
}

/// Retries of one read after a lost connection, before it fails. A retry that made progress
/// (handed out a row) resets the count.
pub(super) const MAX_RETRIES: u32 = 3;

/// Wait before retry `n` (1-based): 1 s, 2 s, 4 s.
fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << (n.saturating_sub(1)).min(5))
}

/// One read of a source: owns the channel's sending end.
pub(super) struct Reader {
    pub db: Db,
    /// The connection that ran the probe; the read continues on it.
    pub conn: Option<Conn>,
    pub backend: Backend,
    pub job: String,
    /// The masked URL.
    pub describe: String,
    pub query: String,
    pub batch_rows: u32,
    pub cursor: Option<CursorPlan>,
    /// Columns the probe found; a result with another count is an error.
    pub ncols: usize,
    pub tx: RowSender,
    pub cancel: CancellationToken,
}

/// What the loop does next after a fetch ended.
enum Next {
    Stop,
    Retry,
}

/// How one fetch ended.
enum Ended {
    /// The result was read to its end.
    Done,
    /// Cancelled, or the pipeline stopped listening.
    Stopped,
    Failed(FetchError),
}

impl Reader {
    /// Reads a full query, skipping the first `skip` rows (settled by an interrupted run).
    pub(super) async fn full(mut self, skip: u64) {
        let sql = clean_query(&self.query).to_string();
        let mut held = self.conn.take();
        let mut handed = skip;
        let mut failures = 0;
        loop {
            let mut conn = match self.connection(&mut held).await {
                Ok(c) => c,
                Err(e) => match self
                    .after_error(FetchError::Db(e), &mut failures, handed)
                    .await
                {
                    Next::Retry => continue,
                    Next::Stop => return,
                },
            };
            let mut rows = match conn.fetch(sql.clone(), &[], None, self.ncols) {
                Ok(r) => r,
                Err(e) => {
                    return self
                        .fail(self.db_error("binding the query's parameters failed", &e))
                        .await;
                }
            };
            let before = handed;
            let mut seen = 0u64;
            let ended = loop {
                let next = tokio::select! {
                    biased;
                    _ = self.cancel.cancelled() => break Ended::Stopped,
                    n = rows.next() => n,
                };
                match next {
                    None => break Ended::Done,
                    Some(Ok(row)) => {
                        seen += 1;
                        // After a retry the query runs again: skip what was already handed out.
                        if seen <= handed {
                            continue;
                        }
                        handed += 1;
                        let item = SourceRow {
                            line: handed,
                            row_ref: content_ref(handed, &row.values, &row.raw),
                            resume: ResumePoint::Sql {
                                cursor: None,
                                tiebreak: None,
                                row: handed,
                            },
                            values: row.values,
                            raw: row.raw,
                        };
                        if !self.hand_out(item).await {
                            break Ended::Stopped;
                        }
                    }
                    Some(Err(e)) => break Ended::Failed(e),
                }
            };
            drop(rows);
            let error = match ended {
                Ended::Done => return,
                Ended::Stopped => return conn.discard(),
                Ended::Failed(e) => {
                    conn.discard();
                    e
                }
            };
            if handed > before {
                failures = 0;
            }
            match self.after_error(error, &mut failures, handed).await {
                Next::Retry => continue,
                Next::Stop => return,
            }
        }
    }

    /// Reads in keyset chunks strictly after `after`; `row` rows of this pass came before.
    pub(super) async fn incremental(mut self, mut after: Option<(Key, Key)>, mut row: u64) {
        let Some(plan) = self.cursor.clone() else {
            return self
                .fail(self.db_error(
                    "the incremental read",
                    &"no cursor is configured".to_string(),
                ))
                .await;
        };
        let keys = Some((plan.cursor_index, plan.tiebreak_index));
        let mut held = self.conn.take();
        let mut failures = 0;
        loop {
            let mut conn = match self.connection(&mut held).await {
                Ok(c) => c,
                Err(e) => match self
                    .after_error(FetchError::Db(e), &mut failures, row)
                    .await
                {
                    Next::Retry => continue,
                    Next::Stop => return,
                },
            };
            let (sql, params) = match &after {
                None => (
                    plan.first_chunk_sql(&self.query, self.batch_rows),
                    Vec::new(),
                ),
                Some((c, t)) => {
                    let sql = plan.next_chunk_sql(
                        self.backend,
                        &self.query,
                        self.batch_rows,
                        c.kind(),
                        t.kind(),
                    );
                    let params = if self.backend.positional() {
                        vec![c.clone(), c.clone(), t.clone()]
                    } else {
                        vec![c.clone(), t.clone()]
                    };
                    (sql, params)
                }
            };
            let mut rows = match conn.fetch(sql, &params, keys, self.ncols) {
                Ok(r) => r,
                Err(e) => {
                    return self
                        .fail(self.db_error("binding the checkpoint's position failed", &e))
                        .await;
                }
            };
            let mut in_chunk = 0u64;
            let mut advanced = false;
            let ended = loop {
                let next = tokio::select! {
                    biased;
                    _ = self.cancel.cancelled() => break Ended::Stopped,
                    n = rows.next() => n,
                };
                match next {
                    None => break Ended::Done,
                    Some(Ok(decoded)) => {
                        in_chunk += 1;
                        row += 1;
                        let key = decoded
                            .key
                            .unwrap_or_else(|| Err("the row has no position".into()));
                        let (values, raw, row_ref) = match key {
                            Ok((c, t)) => {
                                let row_ref = format!("{}={t}", plan.tiebreak_name);
                                after = Some((c, t));
                                advanced = true;
                                (decoded.values, decoded.raw, row_ref)
                            }
                            // Dead-lettered; the position stays at the previous row.
                            Err(why) => {
                                let r = content_ref(row, &Err(why.clone()), &decoded.raw);
                                (Err(why), decoded.raw, r)
                            }
                        };
                        let item = SourceRow {
                            line: row,
                            row_ref,
                            resume: ResumePoint::Sql {
                                cursor: after.as_ref().map(|(c, _)| c.to_json()),
                                tiebreak: after.as_ref().map(|(_, t)| t.to_json()),
                                row,
                            },
                            values,
                            raw,
                        };
                        if !self.hand_out(item).await {
                            break Ended::Stopped;
                        }
                    }
                    Some(Err(e)) => break Ended::Failed(e),
                }
            };
            drop(rows);
            match ended {
                Ended::Stopped => return conn.discard(),
                Ended::Done if in_chunk < u64::from(self.batch_rows) => return,
                Ended::Done if !advanced => {
                    let msg = format!(
                        "a whole chunk of {} rows had no usable position (NULL `{}` or `{}`), so the read cannot move forward; make both columns NOT NULL or filter those rows out in `source.sql.query`",
                        self.batch_rows, plan.cursor_name, plan.tiebreak_name
                    );
                    return self
                        .fail(SourceError::Database {
                            describe: self.describe.clone(),
                            message: msg,
                        })
                        .await;
                }
                Ended::Done => {
                    failures = 0;
                    held = Some(conn);
                    if !self.hand_over().await {
                        return;
                    }
                }
                Ended::Failed(e) => {
                    conn.discard();
                    if advanced {
                        failures = 0;
                    }
                    // The chunk is issued again from the last position handed out.
                    match self.after_error(e, &mut failures, row).await {
                        Next::Retry => continue,
                        Next::Stop => return,
                    }
                }
            }
        }
    }

    /// The connection for the next fetch: the one in hand, or a fresh one after a failure.
    async fn connection(&self, held: &mut Option<Conn>) -> Result<Conn, sqlx::Error> {
        match held.take() {
            Some(c) => Ok(c),
            None => self.db.acquire().await,
        }
    }

    /// Hands a row to the pipeline; `false` when the read should stop.
    async fn hand_out(&mut self, row: SourceRow) -> bool {
        if self.cancel.is_cancelled() {
            return false;
        }
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => false,
            sent = self.tx.send(Ok(row)) => sent.is_ok(),
        }
    }

    /// Hands out the rows queued so far: before the read waits on the database again, so a
    /// slow query never holds back rows already read.
    async fn hand_over(&mut self) -> bool {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => false,
            sent = self.tx.flush() => sent.is_ok(),
        }
    }

    async fn fail(&mut self, e: SourceError) {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => {}
            _ = self.tx.send(Err(e)) => {}
        }
    }

    fn db_error(&self, what: &str, message: &dyn std::fmt::Display) -> SourceError {
        SourceError::Database {
            describe: self.describe.clone(),
            message: format!("{what}: {message}"),
        }
    }

    /// Retries a transient failure (after a pause) or reports the error and stops.
    async fn after_error(
        &mut self,
        error: FetchError,
        failures: &mut u32,
        rows_so_far: u64,
    ) -> Next {
        // The rows read before the failure go now, not after the backoff.
        if !self.hand_over().await {
            return Next::Stop;
        }
        let e = match error {
            FetchError::Db(e) if pool::is_transient(&e) && *failures < MAX_RETRIES => {
                *failures += 1;
                let wait = backoff(*failures);
                tracing::warn!(
                    job = %self.job,
                    source = %self.describe,
                    rows = rows_so_far,
                    attempt = *failures,
                    wait_ms = wait.as_millis() as u64,
                    error = %pool::describe_error(&e),
                    "Lost the connection to the source database; reading again from the last row handed out."
                );
                tokio::select! {
                    biased;
                    _ = self.cancel.cancelled() => return Next::Stop,
                    _ = tokio::time::sleep(wait) => return Next::Retry,
                }
            }
            FetchError::Db(e) => {
                let gave_up = if pool::is_transient(&e) {
                    format!(" (gave up after {MAX_RETRIES} retries)")
                } else {
                    String::new()
                };
                SourceError::Database {
                    describe: self.describe.clone(),
                    message: format!(
                        "reading the query failed after {rows_so_far} rows{gave_up}: {}; {}",
                        pool::describe_error(&e),
                        if pool::is_transient(&e) {
                            pool::connect_fix(self.backend)
                        } else {
                            pool::QUERY_FIX
                        }
                    ),
                }
            }
            FetchError::Unsupported { column, db_type } => SourceError::UnsupportedType {
                describe: self.describe.clone(),
                column,
                db_type,
            },
            FetchError::Shape(msg) => self.db_error("reading the query failed", &msg),
        };
        self.fail(e).await;
        Next::Stop
    }
}

/// A dead-letter reference for a row that has no key: its position plus a hash of its
/// content, so the same row read again maps to the same dead letter while another row that
/// lands at the same position in a later run (the table changed) does not overwrite it.
fn content_ref(
    n: u64,
    values: &Result<Vec<crate::source::row::Value>, String>,
    raw: &Option<String>,
) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{values:?}|{raw:?}").as_bytes());
    let short: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("row {n} #{short}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second() {
        assert_eq!(
            [1, 2, 3].map(backoff),
            [
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(4)
            ]
        );
    }
}
