//! Test support shared by the unit tests and the integration tests: one database per test on
//! the real PostgreSQL or MariaDB server.
//!
//! Owns creating those databases and dropping them afterwards: dropped when the test passes,
//! kept (and named on stderr) when it fails, so a failure can be inspected. Must not be used by
//! the daemon or the CLI: it panics on any error, as test set-up should, and it is hidden from
//! the documentation for that reason.

use sqlx::{AssertSqlSafe, Connection};

/// A database server the tests run against; never skipped when it is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Postgres,
    MariaDb,
}

impl Server {
    /// The variable holding the server's URL (any database on it; tests create their own).
    pub fn env_var(self) -> &'static str {
        match self {
            Server::Postgres => "CIO_SYNC_TEST_PG",
            Server::MariaDb => "CIO_SYNC_TEST_MYSQL",
        }
    }

    /// The server's URL: the variable's value, or the local default when it is unset or empty.
    pub fn url(self) -> String {
        let default = match self {
            Server::Postgres => "postgres://postgres@127.0.0.1:5432/test",
            Server::MariaDb => "mysql://root@127.0.0.1:3306/test",
        };
        std::env::var(self.env_var())
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_string())
    }

    fn drop_sql(self, name: &str) -> String {
        match self {
            // The code under test may still hold pooled connections to it.
            Server::Postgres => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            Server::MariaDb => format!("DROP DATABASE IF EXISTS {name}"),
        }
    }

    /// Runs one statement on the server's own database (`admin`).
    async fn exec(self, admin: &str, sql: String) -> Result<(), sqlx::Error> {
        match self {
            Server::Postgres => {
                let mut c = sqlx::PgConnection::connect(admin).await?;
                sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut c).await?;
                c.close().await
            }
            Server::MariaDb => {
                let mut c = sqlx::MySqlConnection::connect(admin).await?;
                sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut c).await?;
                c.close().await
            }
        }
    }
}

/// `base` with its database (the URL's path) replaced by `name`. User, password, host, port and
/// query parameters (`?sslmode=require`, …) are kept as they were.
pub fn with_database(base: &str, name: &str) -> Result<String, url::ParseError> {
    let mut url = url::Url::parse(base)?;
    url.set_path(&format!("/{name}"));
    Ok(url.into())
}

/// `url` with its password replaced, for messages.
pub fn masked(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            // Only fails for URLs that cannot carry a password, which this one does.
            let _ = u.set_password(Some("****"));
            u.into()
        }
        Ok(u) => u.into(),
        Err(_) => "(unparsable URL)".to_string(),
    }
}

/// A database created for one test (`cio_test_<ulid>`). Dropping the guard drops the database
/// if the test passed; if the test is panicking, the database is kept and its name printed.
pub struct TestDb {
    server: Server,
    name: String,
    /// The server URL the database was created from, used again to drop it.
    admin: String,
    url: String,
}

impl TestDb {
    /// Creates a fresh database; panics naming the server and the variable to set when the
    /// server is not reachable.
    pub async fn create(server: Server) -> TestDb {
        let admin = server.url();
        let name = format!(
            "cio_test_{}",
            ulid::Ulid::generate().to_string().to_lowercase()
        );
        let url = with_database(&admin, &name).unwrap_or_else(|e| {
            panic!(
                "{} is not a database URL ({e}); set {} to one",
                masked(&admin),
                server.env_var()
            )
        });
        if let Err(e) = server.exec(&admin, format!("CREATE DATABASE {name}")).await {
            panic!(
                "{server:?} at {} cannot create a test database: {e}. These tests need the real server: start it, or set {} to its URL",
                masked(&admin),
                server.env_var()
            );
        }
        TestDb {
            server,
            name,
            admin,
            url,
        }
    }

    /// The URL of the test's own database (with the server URL's credentials and parameters).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn server(&self) -> Server {
        self.server
    }

    /// The URL of the server's own database, for statements about the test database.
    pub fn admin_url(&self) -> &str {
        &self.admin
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "the test failed: keeping its database `{}` on {} for inspection; drop it with `{}`",
                self.name,
                masked(&self.admin),
                self.server.drop_sql(&self.name)
            );
            return;
        }
        let (server, admin, sql) = (
            self.server,
            self.admin.clone(),
            self.server.drop_sql(&self.name),
        );
        // Drop cannot await, and the test's runtime may be single-threaded and busy dropping
        // this very guard: the statement runs on a thread with a runtime of its own.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(server.exec(&admin, sql))
                .map_err(|e| e.to_string())
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop the test database `{}`: {e}", self.name),
            Err(_) => eprintln!(
                "could not drop the test database `{}`: the dropping thread panicked",
                self.name
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_replaced_and_query_parameters_are_kept() {
        assert_eq!(
            with_database(
                "postgres://u:p%40ss@db.example:6432/postgres?sslmode=require&application_name=x",
                "cio_test_1"
            )
            .unwrap(),
            "postgres://u:p%40ss@db.example:6432/cio_test_1?sslmode=require&application_name=x"
        );
        assert_eq!(
            with_database("mysql://root@127.0.0.1:3306", "cio_test_2").unwrap(),
            "mysql://root@127.0.0.1:3306/cio_test_2"
        );
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1/a/b?sslmode=disable", "c").unwrap(),
            "postgres://postgres@127.0.0.1/c?sslmode=disable"
        );
    }

    async fn exists(server: Server, admin: &str, name: &str) -> bool {
        let sql = match server {
            Server::Postgres => format!("SELECT datname FROM pg_database WHERE datname = '{name}'"),
            Server::MariaDb => format!("SHOW DATABASES LIKE '{name}'"),
        };
        let rows = match server {
            Server::Postgres => {
                let mut c = sqlx::PgConnection::connect(admin).await.unwrap();
                sqlx::raw_sql(AssertSqlSafe(sql))
                    .fetch_all(&mut c)
                    .await
                    .unwrap()
                    .len()
            }
            Server::MariaDb => {
                let mut c = sqlx::MySqlConnection::connect(admin).await.unwrap();
                sqlx::raw_sql(AssertSqlSafe(sql))
                    .fetch_all(&mut c)
                    .await
                    .unwrap()
                    .len()
            }
        };
        rows > 0
    }

    #[tokio::test]
    async fn a_passing_test_drops_its_database_and_a_failing_one_keeps_it() {
        for server in [Server::Postgres, Server::MariaDb] {
            let db = TestDb::create(server).await;
            let (admin, name) = (db.admin_url().to_string(), db.name().to_string());
            assert!(exists(server, &admin, &name).await, "{name} was created");
            drop(db);
            assert!(!exists(server, &admin, &name).await, "{name} was dropped");

            // A thread that panics while holding the guard stands in for a failing test.
            let failed = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let db = TestDb::create(server).await;
                    std::panic::panic_any(db.name().to_string())
                })
            })
            .join()
            .expect_err("the stand-in test fails");
            let name = failed.downcast::<String>().expect("the database's name");
            assert!(exists(server, &admin, &name).await, "{name} was kept");
            server.exec(&admin, server.drop_sql(&name)).await.unwrap();
        }
    }

    #[test]
    fn a_masked_url_hides_the_password_only() {
        assert_eq!(
            masked("postgres://u:secret@h:5432/d?sslmode=require"),
            "postgres://u:****@h:5432/d?sslmode=require"
        );
        assert_eq!(masked("mysql://root@h/d"), "mysql://root@h/d");
    }
}
