//! Connections to source databases: one small pool per URL for the whole process.
//!
//! Owns: opening pools with the concrete drivers (PostgreSQL, MySQL/MariaDB, SQLite read-only)
//! under `connect_timeout_secs`, the process-wide cache that lets every run of a job reuse its
//! pool, telling a lost connection from a real error, and the database's own words for an
//! error. Must not: run the job's query or log the URL's password (only the masked URL
//! appears anywhere).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlPool};
use sqlx::postgres::{PgConnectOptions, PgDatabaseError, PgPool};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use sqlx::{ConnectOptions, Connection};

use super::plan::Backend;
use crate::config::SqlSource as SqlSection;
use crate::source::error::SourceError;

/// The next step after a connection problem with a database server.
pub(super) const CONNECT_FIX: &str = "check `source.sql.url` (host, port, database, user, password) and that the database accepts connections from this machine";
/// The next step after an SQLite file could not be opened: it has no host or password.
pub(super) const SQLITE_FIX: &str = "check the file path in `source.sql.url`: the file must exist (it is never created) and this user must be able to read it";

/// The next step after a connection problem, in the backend's terms.
pub(super) fn connect_fix(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => SQLITE_FIX,
        Backend::Postgres | Backend::MySql => CONNECT_FIX,
    }
}
/// The next step after the database rejected the query.
pub(super) const QUERY_FIX: &str =
    "check `source.sql.query`: running it in a SQL client shows the same error";

/// A pool with its concrete driver: sqlx's `Any` driver cannot decode dates, JSON, UUIDs or
/// decimals, so each backend keeps its own type.
#[derive(Clone, Debug)]
pub(super) enum Db {
    Pg(PgPool),
    My(MySqlPool),
    Lite(SqlitePool),
}

impl Db {
    pub(super) fn backend(&self) -> Backend {
        match self {
            Db::Pg(_) => Backend::Postgres,
            Db::My(_) => Backend::MySql,
            Db::Lite(_) => Backend::Sqlite,
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Db::Pg(p) => p.is_closed(),
            Db::My(p) => p.is_closed(),
            Db::Lite(p) => p.is_closed(),
        }
    }
}

/// Connections per source: one reads, one is free for a probe or a retry while the
/// reader's broken connection is being dropped.
const MAX_CONNECTIONS: u32 = 2;
/// Idle connections are closed after this long, so a daemon holds none between runs.
const IDLE: Duration = Duration::from_secs(300);

/// Pools by exact URL (secrets included, never shown). A pool belongs to the tokio runtime
/// that opened it; the daemon and the CLI each run one runtime for the whole process.
static POOLS: LazyLock<Mutex<HashMap<String, Db>>> = LazyLock::new(Default::default);

fn cached(url: &str) -> Option<Db> {
    let pools = POOLS.lock().unwrap_or_else(|p| p.into_inner());
    pools.get(url).filter(|db| !db.is_closed()).cloned()
}

/// The source's pool, opened on first use. Errors name the database (never the job: the
/// caller adds it) and say what to check.
pub(super) async fn connect(cfg: &SqlSection, backend: Backend) -> Result<Db, SourceError> {
    let url = cfg.url.expose();
    if let Some(db) = cached(url) {
        return Ok(db);
    }
    let timeout = cfg.connect_timeout.max(Duration::from_secs(1));
    let fail = |message: String| SourceError::Database {
        describe: cfg.url.masked(),
        message,
    };
    let fix = connect_fix(backend);
    let bad_url = |e: sqlx::Error| {
        fail(format!(
            "`source.sql.url` cannot be used: {}; {fix}",
            describe_error(&e)
        ))
    };
    let db = match backend {
        Backend::Postgres => {
            let opts = PgConnectOptions::from_str(url)
                .map_err(bad_url)?
                .application_name("cio-sync");
            let at = format!("{}:{}", opts.get_host(), opts.get_port());
            try_connect(&opts, &at, timeout, fix).await.map_err(fail)?;
            Db::Pg(pool_options(timeout).connect_lazy_with(opts))
        }
        Backend::MySql => {
            // A plain MySQL session: `||` keeps its usual meaning in the user's query.
            let opts = MySqlConnectOptions::from_str(url)
                .map_err(bad_url)?
                .pipes_as_concat(false);
            let at = format!("{}:{}", opts.get_host(), opts.get_port());
            try_connect(&opts, &at, timeout, fix).await.map_err(fail)?;
            Db::My(pool_options(timeout).connect_lazy_with(opts))
        }
        Backend::Sqlite => {
            // Read-only, and never creates a missing file: a typo must not yield an empty source.
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(bad_url)?
                .read_only(true)
                .create_if_missing(false)
                .busy_timeout(timeout);
            let at = opts.get_filename().display().to_string();
            try_connect(&opts, &at, timeout, fix).await.map_err(fail)?;
            Db::Lite(pool_options(timeout).connect_lazy_with(opts))
        }
    };
    let mut pools = POOLS.lock().unwrap_or_else(|p| p.into_inner());
    // Two runs may have raced to open it: keep the first.
    Ok(pools.entry(url.to_string()).or_insert(db).clone())
}

/// One connection made and closed before the pool exists: a pool retries a failing connect
/// until its timeout and then reports only that it timed out, while this keeps the
/// database's own words ("connection refused", "password authentication failed"). `at` is
/// where it connects (`host:port`, or the SQLite file), named when the network or the file
/// system failed, since those errors do not say where.
async fn try_connect<C>(opts: &C, at: &str, timeout: Duration, fix: &str) -> Result<(), String>
where
    C: ConnectOptions,
    C::Connection: Sized,
{
    match tokio::time::timeout(timeout, opts.connect()).await {
        Ok(Ok(conn)) => {
            // Closing politely is best effort; the server cleans up either way.
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(sqlx::Error::Io(e))) => Err(format!(
            "cannot connect to the source database: {at}: {}; {fix}",
            io_words(&e)
        )),
        Ok(Err(e)) => Err(format!(
            "cannot connect to the source database: {}; {fix}",
            describe_error(&e)
        )),
        Err(_) => Err(format!(
            "cannot connect to the source database: {at}: no answer within {}s (`source.sql.connect_timeout_secs`); {fix}",
            timeout.as_secs()
        )),
    }
}

/// An I/O error as words in a sentence: "connection refused (os error 111)".
fn io_words(e: &std::io::Error) -> String {
    let text = e.to_string();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

fn pool_options<DB: sqlx::Database>(timeout: Duration) -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(MAX_CONNECTIONS)
        .min_connections(0)
        .acquire_timeout(timeout)
        .idle_timeout(Some(IDLE))
}

/// Whether a failed read may succeed if issued again: the connection was lost or the server
/// is restarting, as opposed to the query being wrong.
pub(super) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            if let Some(my) = db.try_downcast_ref::<MySqlDatabaseError>() {
                // server shutdown, connection killed, gone away, lost, lock wait timeout, deadlock
                return matches!(my.number(), 1053 | 1927 | 2006 | 2013 | 1205 | 1213);
            }
            let code = db.code().unwrap_or_default();
            // SQLSTATE 08xxx connection exceptions; 57P01-03 shutdown/crash/not yet ready;
            // 40001/40P01 serialization failure/deadlock; SQLite 5/6 busy/locked.
            code.starts_with("08")
                || matches!(
                    &*code,
                    "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "5" | "6"
                )
        }
        _ => false,
    }
}

/// The database's own message (with PostgreSQL's detail and hint), without sqlx's wrapping.
pub(super) fn describe_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => {
            let mut out = db.message().to_string();
            if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
                if let Some(detail) = pg.detail() {
                    out.push_str(&format!(" ({detail})"));
                }
                if let Some(hint) = pg.hint() {
                    out.push_str(&format!("; hint: {hint}"));
                }
            }
            match db.code() {
                Some(code) => format!("{out} [code {code}]"),
                None => out,
            }
        }
        sqlx::Error::PoolTimedOut => {
            "no connection became available within the connect timeout".into()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_connections_are_transient_and_other_errors_are_not() {
        let io = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        assert!(is_transient(&io));
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(!is_transient(&sqlx::Error::ColumnNotFound("x".into())));
    }

    use crate::config::DatabaseUrl;

    fn section(url: String, connect_timeout_secs: u64) -> SqlSection {
        SqlSection {
            url: DatabaseUrl::new(url),
            query: "SELECT 1".into(),
            cursor: None,
            batch_rows: 100,
            connect_timeout: Duration::from_secs(connect_timeout_secs),
        }
    }

    /// A local port nothing listens on.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a local port");
        let port = l.local_addr().expect("its address").port();
        drop(l);
        port
    }

    #[tokio::test]
    async fn a_refused_connection_is_reported_at_once_with_its_address() {
        for (scheme, backend) in [("postgres", Backend::Postgres), ("mysql", Backend::MySql)] {
            let port = closed_port();
            // The pool would wait the whole 60 s before saying only "pool timed out".
            let cfg = section(format!("{scheme}://u:secret@127.0.0.1:{port}/db"), 60);
            let err = tokio::time::timeout(Duration::from_secs(15), connect(&cfg, backend))
                .await
                .unwrap_or_else(|_| panic!("{scheme}: no error within 15 s of a refused connect"))
                .expect_err("nothing listens there");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("127.0.0.1:{port}: connection refused")),
                "{scheme}: {msg}"
            );
            assert!(msg.contains(CONNECT_FIX), "{msg}");
            assert!(!msg.contains("secret") && !msg.contains("job `"), "{msg}");
        }
    }

    #[tokio::test]
    async fn a_server_that_never_answers_fails_within_the_connect_timeout() {
        // Accepts connections (the kernel's backlog does) but never says a word.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a local port");
        let port = silent.local_addr().expect("its address").port();
        let cfg = section(format!("postgres://u@127.0.0.1:{port}/db"), 1);
        let started = std::time::Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(15), connect(&cfg, Backend::Postgres))
            .await
            .unwrap_or_else(|_| panic!("no error within 15 s; the connect timeout is 1 s"))
            .expect_err("the server never answers");
        assert!(started.elapsed() >= Duration::from_secs(1), "{err}");
        assert!(
            err.to_string().contains(&format!(
                "127.0.0.1:{port}: no answer within 1s (`source.sql.connect_timeout_secs`)"
            )),
            "{err}"
        );
        drop(silent);
    }

    #[tokio::test]
    async fn a_missing_sqlite_file_names_the_file_not_a_host_or_password() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = dir.path().join("missing.db");
        let cfg = section(format!("sqlite://{}", file.display()), 5);
        let err = connect(&cfg, Backend::Sqlite)
            .await
            .expect_err("the file does not exist");
        let msg = err.to_string();
        assert!(msg.contains(SQLITE_FIX), "{msg}");
        assert!(!msg.contains("host") && !msg.contains("password"), "{msg}");
        assert!(!file.exists(), "a missing source file is never created");
    }
}
