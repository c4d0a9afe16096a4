//! Connecting to a database for cio-sync's own tables and bringing its schema up to date.
//!
//! Owns: the pool options per backend, the first connection (so a refused or unreachable
//! server is reported at once with its root cause, not as a pool timeout), and running the
//! migrations safely when several processes open a fresh database at the same moment.
//! Must not: query the state tables (runs.rs, checkpoints.rs, dead_letters.rs, leases.rs do).

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool, Connection};

use super::{Backend, StateError};
use crate::config::DatabaseUrl;

pub static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
pub static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long opening the state database may take when nothing else is configured: a server
/// that does not answer within it is reported as unreachable.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a URL points, as the user reads it in errors: `host:port` for a server, the file
/// path for SQLite.
fn target(url: &DatabaseUrl, backend: Backend) -> String {
    match backend {
        Backend::Sqlite => sqlite_path(url).unwrap_or_else(|| url.masked()),
        Backend::Postgres => {
            let rest = url.expose().split_once("://").map_or("", |(_, r)| r);
            let authority = rest.split(['/', '?']).next().unwrap_or_default();
            let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            if host_port.is_empty() {
                // No host: libpq's default, a local socket.
                url.masked()
            } else if host_port
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            {
                host_port.to_string()
            } else {
                format!("{host_port}:5432")
            }
        }
    }
}

/// The file of a `sqlite://` URL; None for `:memory:` or an empty path.
fn sqlite_path(url: &DatabaseUrl) -> Option<String> {
    let path = url
        .expose()
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    // `split` always yields a first piece, so this never falls back.
    let path = path.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| path.to_string())
}

/// Versions that were state migrations once and moved to a migrator of their own: the pulled
/// tables (`pull::store`). A database made before still lists them as applied, and sqlx
/// refuses an applied version it does not know unless told to ignore missing ones, so exactly
/// these are ignored; any other unknown version is still refused.
const MOVED_OUT_VERSIONS: &[i64] = &[20261127000002];

/// Connects to the state database and brings its schema up to date, waiting at most
/// `connect_timeout` for the server.
pub async fn connect_with(
    url: &DatabaseUrl,
    max_connections: u32,
    connect_timeout: Duration,
) -> Result<(AnyPool, Backend), StateError> {
    let (pool, backend) = open_pool_with(url, max_connections, connect_timeout).await?;
    migrate(&pool, backend, url, &url.masked()).await?;
    Ok((pool, backend))
}

/// Opens a pool on a database cio-sync keeps tables in (state, or a pull job's target) with
/// the default connect timeout, creating a SQLite file and its folder when missing; migrates
/// nothing.
pub async fn open_pool(
    url: &DatabaseUrl,
    max_connections: u32,
) -> Result<(AnyPool, Backend), StateError> {
    open_pool_with(url, max_connections, DEFAULT_CONNECT_TIMEOUT).await
}

/// [`open_pool`], waiting at most `connect_timeout` for the server.
pub async fn open_pool_with(
    url: &DatabaseUrl,
    max_connections: u32,
    connect_timeout: Duration,
) -> Result<(AnyPool, Backend), StateError> {
    sqlx::any::install_default_drivers();
    let shown = url.masked();
    let (backend, conn_url) = match url.scheme().as_str() {
        "sqlite" => {
            if let Some(path) = sqlite_path(url)
                && let Some(dir) = Path::new(&path)
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir).map_err(|source| StateError::CreateDir {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
            let sep = if url.expose().contains('?') { '&' } else { '?' };
            let u = if url.expose().contains("mode=") {
                url.expose().to_string()
            } else {
                format!("{}{sep}mode=rwc", url.expose())
            };
            (Backend::Sqlite, u)
        }
        "postgres" | "postgresql" => (Backend::Postgres, url.expose().to_string()),
        other => {
            return Err(StateError::Open {
                url: shown,
                message: format!("unsupported scheme `{other}` (use sqlite:// or postgres://)"),
            });
        }
    };
    let addr = target(url, backend);
    // One connection first, outside the pool: the pool retries a refused connection until
    // its acquire timeout and then reports only "pool timed out", hiding the cause.
    match tokio::time::timeout(connect_timeout, AnyConnection::connect(&conn_url)).await {
        Ok(Ok(conn)) => {
            // Closing is best effort: the connection was only a probe.
            let _ = conn.close().await;
        }
        Ok(Err(source)) => return Err(connect_error(backend, &shown, &addr, source)),
        Err(_) => {
            return Err(StateError::Unreachable {
                url: shown,
                addr,
                secs: connect_timeout.as_secs(),
            });
        }
    }
    let mut opts = AnyPoolOptions::new()
        .max_connections(if backend == Backend::Sqlite {
            1
        } else {
            max_connections
        })
        .acquire_timeout(connect_timeout.max(Duration::from_secs(1)));
    if backend == Backend::Sqlite {
        opts = opts.after_connect(|conn, _| {
            Box::pin(async move {
                use sqlx::Executor;
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.execute("PRAGMA synchronous = NORMAL").await?;
                conn.execute("PRAGMA busy_timeout = 10000").await?;
                // Up to 48 MiB of page cache (SQLite's default is 2 MiB), filled only as pages
                // are read: the fingerprint lookups of a million-person re-export come in
                // random order, and the narrow `fingerprints` table (about 40 bytes per
                // identity) then stays in memory instead of being read again page by page.
                conn.execute("PRAGMA cache_size = -49152").await?;
                Ok(())
            })
        });
    }
    let pool = opts
        .connect(&conn_url)
        .await
        .map_err(|source| connect_error(backend, &shown, &addr, source))?;
    Ok((pool, backend))
}

/// [`connect_with`] with the default connect timeout.
pub async fn connect(
    url: &DatabaseUrl,
    max_connections: u32,
) -> Result<(AnyPool, Backend), StateError> {
    connect_with(url, max_connections, DEFAULT_CONNECT_TIMEOUT).await
}

fn connect_error(backend: Backend, shown: &str, addr: &str, source: sqlx::Error) -> StateError {
    match backend {
        Backend::Sqlite => StateError::OpenSqlite {
            path: addr.to_string(),
            message: source.to_string(),
        },
        Backend::Postgres => {
            let cause = match &source {
                sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    format!("{addr}: connection refused")
                }
                sqlx::Error::Io(e) => format!("{addr}: {e}"),
                other => other.to_string(),
            };
            StateError::Connect {
                url: shown.to_string(),
                cause,
                source,
            }
        }
    }
}

/// Runs the migrations. PostgreSQL: sqlx holds an advisory lock on the database around
/// them. SQLite: sqlx takes no lock, so two processes opening a fresh file could both create
/// the tables and one fail ("table runs already exists"); an exclusive lock on a file next
/// to the database (`<file>.migrate-lock`) serialises them, and the second sees the
/// migrations already applied.
async fn migrate(
    pool: &AnyPool,
    backend: Backend,
    url: &DatabaseUrl,
    shown: &str,
) -> Result<(), StateError> {
    let migrate_err = |e: sqlx::migrate::MigrateError| StateError::Migrate {
        url: shown.to_string(),
        message: e.to_string(),
    };
    match backend {
        Backend::Postgres => run_migrations(pool, &POSTGRES_MIGRATIONS)
            .await
            .map_err(migrate_err),
        Backend::Sqlite => {
            let Some(path) = sqlite_path(url) else {
                // An in-memory database belongs to this pool alone: nothing to race with.
                return run_migrations(pool, &SQLITE_MIGRATIONS)
                    .await
                    .map_err(migrate_err);
            };
            let lock_path = PathBuf::from(format!("{path}.migrate-lock"));
            let lock = lock_path.clone();
            let file = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock)?;
                f.lock()?;
                Ok(f)
            })
            .await
            .map_err(|e| StateError::Migrate {
                url: shown.to_string(),
                message: format!("taking the migration lock failed: {e}"),
            })?
            .map_err(|source| StateError::MigrateLock {
                path: lock_path.display().to_string(),
                source,
            })?;
            let result = run_migrations(pool, &SQLITE_MIGRATIONS)
                .await
                .map_err(migrate_err);
            // Closing the file releases the lock (also if this process dies).
            drop(file);
            result
        }
    }
}

/// Checks, now, that the database answers and holds every migration this build knows: what
/// `/readyz` reports. Migrating is left to startup; this only reads.
pub(super) async fn check_migrated(
    pool: &AnyPool,
    backend: Backend,
    shown: &str,
) -> Result<(), StateError> {
    let migrator = match backend {
        Backend::Postgres => &POSTGRES_MIGRATIONS,
        Backend::Sqlite => &SQLITE_MIGRATIONS,
    };
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations")
        .fetch_all(pool)
        .await
        .map_err(|e| StateError::Query {
            what: "checking the schema version",
            table: "_sqlx_migrations",
            message: super::root_cause(&e),
        })?;
    let missing: Vec<String> = migrator
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| m.version.to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(StateError::Migrate {
            url: shown.to_string(),
            message: format!(
                "migrations {} are not applied; restart cio-sync, which migrates at start",
                missing.join(", ")
            ),
        })
    }
}

/// Runs `migrator`, ignoring only [`MOVED_OUT_VERSIONS`] when the database lists them.
async fn run_migrations(
    pool: &AnyPool,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), sqlx::migrate::MigrateError> {
    // No history table yet (a new database) reads as nothing applied; a database that cannot
    // be read at all fails in the migrator's own run below, with its error.
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations")
        .fetch_all(pool)
        .await
        .unwrap_or_default();
    let mut moved_out = false;
    for v in applied.iter().filter(|v| !migrator.version_exists(**v)) {
        if !MOVED_OUT_VERSIONS.contains(v) {
            // What sqlx would say, but naming this version rather than the first missing one.
            return Err(sqlx::migrate::MigrateError::VersionMissing(*v));
        }
        moved_out = true;
    }
    if moved_out {
        let mut tolerant =
            sqlx::migrate::Migrator::with_migrations(migrator.iter().cloned().collect());
        tolerant.set_ignore_missing(true);
        return tolerant.run(pool).await;
    }
    migrator.run(pool).await
}
