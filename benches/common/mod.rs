//! What the benchmarks share: a fresh PostgreSQL database per run.

use sqlx::Connection;

/// A new, empty database on the server `CIO_SYNC_TEST_PG` names (default the local one),
/// dropped by [`FreshPg::drop_now`].
pub struct FreshPg {
    admin: sqlx::PgConnection,
    name: String,
    /// Its URL.
    pub url: String,
}

impl FreshPg {
    pub async fn create() -> Self {
        let base = std::env::var("CIO_SYNC_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!(
            "cio_bench_{}",
            ulid::Ulid::generate().to_string().to_lowercase()
        );
        let mut admin = sqlx::PgConnection::connect(&base)
            .await
            .expect("PostgreSQL (set CIO_SYNC_TEST_PG or CIO_BENCH_PG=0)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create db");
        let url = format!(
            "{}/{name}",
            base.rsplit_once('/').map(|(h, _)| h).unwrap_or(&base)
        );
        Self { admin, name, url }
    }

    /// Drops the database, whoever is still connected.
    pub async fn drop_now(mut self) {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut self.admin)
        .await;
    }
}
