//! The pulled tables' own migrator and what pull jobs store: a `pull.into` database gets only
//! the `cio_*` tables; a state database made before the pulled tables had their own migrator
//! still opens and works; text with NUL from the App API is stored (escaped) on PostgreSQL and
//! SQLite. PostgreSQL is the real server (`CIO_SYNC_TEST_PG`), a fresh database per test
//! (`cio_sync::testing::TestDb`).

use std::collections::BTreeMap;

use cio_sync::config::DatabaseUrl;
use cio_sync::pull::store::{PULLED_MIGRATIONS_TABLE, Store, pulled_migrator};
use cio_sync::simulator::Member;
use cio_sync::state::{self, Backend, Outcome, StateStore};
use cio_sync::testing::{Server, TestDb};
use serde_json::{Value, json};
use sqlx::{AnyPool, Connection, Row};

use crate::helpers::*;

async fn pg_tables(url: &str) -> Vec<String> {
    let mut conn = sqlx::postgres::PgConnection::connect(url)
        .await
        .expect("connect to the test database");
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .expect("list tables")
}

fn member(cio_id: &str, id: Option<&str>, email: Option<&str>) -> Member {
    Member {
        id: id.map(str::to_string),
        email: email.map(str::to_string),
        cio_id: cio_id.to_string(),
    }
}

/// Fills the simulator with one of everything a pull writes.
fn seed_app_data(env: &TestEnv) {
    env.sim.set_segments(vec![
        json!({"id": 7, "name": "Seven", "type": "manual", "tags": ["a"]}),
    ]);
    env.sim.set_membership(
        7,
        vec![
            member("c1", Some("1"), Some("a@example.com")),
            member("c2", None, None),
        ],
    );
    env.sim
        .set_campaigns(vec![json!({"id": 5, "name": "Five", "active": true})]);
    env.sim
        .set_campaign_metrics(5, BTreeMap::from([("sent".to_string(), vec![1, 2, 3])]));
}

const FULL_PULL: &str = "  segments: true\n  segment_membership: all\n  campaigns: true\n  campaign_metrics:\n    steps: 2\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_target_on_postgresql_gets_only_the_cio_tables() {
    let env = TestEnv::new().await;
    seed_app_data(&env);
    let target = TestDb::create(Server::Postgres).await;
    env.write_job(
        "pulled",
        &format!("pull:\n{FULL_PULL}  into: \"{}\"\n", target.url()),
    );

    let report = env.run("pulled").await;

    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
    assert_eq!(
        pg_tables(target.url()).await,
        [
            "cio_campaign_metrics",
            "cio_campaigns",
            "cio_segment_members",
            "cio_segment_members_staging",
            "cio_segments",
            PULLED_MIGRATIONS_TABLE,
        ],
        "no state tables (runs, checkpoints, dead letters, leases, _sqlx_migrations) in a customer's database"
    );
    // A second run finds the tables migrated and changes nothing about them.
    let again = env.run("pulled").await;
    assert_eq!(again.outcome, Outcome::Succeeded, "{again:?}");
    assert_eq!(pg_tables(target.url()).await.len(), 6);
}

/// Makes `url` what the previous release left: the state migration and the pulled tables
/// applied by the *state* migrator, as version 20261127000002 in `_sqlx_migrations`.
async fn make_previous_release_state_db(url: &str, backend: Backend) {
    let state_migrations = match backend {
        Backend::Sqlite => &state::SQLITE_MIGRATIONS,
        Backend::Postgres => &state::POSTGRES_MIGRATIONS,
    };
    let mut migrations: Vec<_> = state_migrations
        .iter()
        .filter(|m| m.version == 20261127000001)
        .cloned()
        .collect();
    assert_eq!(
        migrations.len(),
        1,
        "the first state migration is still there"
    );
    let mut pulled = pulled_migrator(backend)
        .iter()
        .next()
        .cloned()
        .expect("a pulled migration");
    pulled.version = 20261127000002;
    pulled.description = "pulled".into();
    migrations.push(pulled);
    let (pool, _) = state::open_pool(&DatabaseUrl::new(url), 1)
        .await
        .expect("open the database");
    sqlx::migrate::Migrator::with_migrations(migrations)
        .run(&pool)
        .await
        .expect("apply the previous release's migrations");
    pool.close().await;
}

async fn applied(pool: &AnyPool, table: &str) -> Vec<i64> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM {table} ORDER BY version"
    )))
    .fetch_all(pool)
    .await
    .unwrap_or_else(|e| panic!("read {table}: {e}"))
}

async fn a_state_database_of_the_previous_release_still_opens_and_works(state: StateDb) {
    let env = TestEnv::with_state(state).await;
    let backend = match state {
        StateDb::Sqlite => Backend::Sqlite,
        StateDb::Postgres => Backend::Postgres,
    };
    let state_url = &env.state_url();
    make_previous_release_state_db(state_url, backend).await;
    seed_app_data(&env);
    env.write_config("");
    env.write_data("people.csv", &people_csv(3));
    env.write_job("people", PEOPLE_JOB);
    env.write_job("pulled", &format!("pull:\n{FULL_PULL}"));

    let push = env.run("people").await;
    assert_eq!(push.outcome, Outcome::Succeeded, "{push:?}");
    let pull = env.run("pulled").await;
    assert_eq!(pull.outcome, Outcome::Succeeded, "{pull:?}");

    let store = StateStore::open(&DatabaseUrl::new(state_url))
        .await
        .expect("the state database opens");
    let pool = store.pool();
    let segments: i64 = sqlx::query("SELECT COUNT(*) FROM cio_segments")
        .fetch_one(pool)
        .await
        .expect("count segments")
        .get(0);
    assert_eq!(
        segments, 1,
        "the pull wrote into the tables that were already there"
    );
    let state_versions = applied(pool, "_sqlx_migrations").await;
    assert!(
        state_versions.contains(&20261127000001) && state_versions.contains(&20261127000002),
        "the state history is left as it was: {state_versions:?}"
    );
    assert_eq!(
        applied(pool, PULLED_MIGRATIONS_TABLE).await,
        pulled_migrator(backend)
            .iter()
            .map(|m| m.version)
            .collect::<Vec<_>>(),
        "the pulled migrator recorded its own history"
    );
    // Only the version that moved out is forgiven: any other unknown applied version is
    // still refused, as sqlx does by default.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         SELECT 29991231000000, 'from a newer release', success, checksum, execution_time FROM _sqlx_migrations WHERE version = 20261127000001",
    )
    .execute(pool)
    .await
    .expect("plant an unknown version");
    let refused = StateStore::open(&DatabaseUrl::new(state_url))
        .await
        .expect_err("an unknown applied version is refused");
    assert!(refused.to_string().contains("29991231000000"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_state_database_of_the_previous_release_still_opens_and_works() {
    a_state_database_of_the_previous_release_still_opens_and_works(StateDb::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_state_database_of_the_previous_release_still_opens_and_works() {
    a_state_database_of_the_previous_release_still_opens_and_works(StateDb::Postgres).await;
}

/// Text with NUL in every place a pull stores App API text.
fn seed_nul_data(env: &TestEnv) {
    env.sim.set_segments(vec![json!({
        "id": 7, "name": "Se\u{0}ven", "description": "\u{0}", "type": "man\u{0}ual", "state": "fin\u{0}ished",
        "tags": ["t\u{0}"], "extra\u{0}key": {"deep": "v\u{0}"}
    })]);
    env.sim.set_membership(
        7,
        vec![member(
            "c\u{0}1",
            Some("i\u{0}d"),
            Some("a\u{0}@example.com"),
        )],
    );
    env.sim.set_campaigns(vec![json!({
        "id": 5, "deduplicate_id": "5:\u{0}", "name": "Fi\u{0}ve", "description": "d\u{0}", "type": "seg\u{0}", "state": "run\u{0}"
    })]);
    env.sim
        .set_campaign_metrics(5, BTreeMap::from([("se\u{0}nt".to_string(), vec![4, 5])]));
}

async fn nul_text_is_stored_escaped(target_url: &str, backend: Backend) {
    let env = TestEnv::new().await;
    seed_nul_data(&env);
    env.write_job(
        "pulled",
        &format!("pull:\n{FULL_PULL}  into: \"{target_url}\"\n"),
    );

    let report = env.run("pulled").await;

    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
    let store = Store::open(&DatabaseUrl::new(target_url), 1)
        .await
        .expect("open the target");
    let pool = store.pool();
    let row = sqlx::query("SELECT name, description, type, state, tags, raw FROM cio_segments")
        .fetch_one(pool)
        .await
        .expect("the segment row");
    let text = |i: usize| row.get::<Option<String>, _>(i);
    assert_eq!(text(0).as_deref(), Some("Se\\u0000ven"));
    assert_eq!(text(1).as_deref(), Some("\\u0000"));
    assert_eq!(text(2).as_deref(), Some("man\\u0000ual"));
    assert_eq!(text(3).as_deref(), Some("fin\\u0000ished"));
    assert_eq!(text(4).as_deref(), Some(r#"["t\\u0000"]"#));
    let raw: Value = serde_json::from_str(&text(5).unwrap_or_default()).expect("raw is JSON");
    assert_eq!(raw["extra\\u0000key"]["deep"], "v\\u0000");
    let member = sqlx::query("SELECT customer_id, email, cio_id FROM cio_segment_members")
        .fetch_one(pool)
        .await
        .expect("the member row");
    assert_eq!(
        (0..3)
            .map(|i| member.get::<String, _>(i))
            .collect::<Vec<_>>(),
        ["i\\u0000d", "a\\u0000@example.com", "c\\u00001"]
    );
    let campaign =
        sqlx::query("SELECT deduplicate_id, name, description, type, state FROM cio_campaigns")
            .fetch_one(pool)
            .await
            .expect("the campaign row");
    assert_eq!(
        (0..5)
            .map(|i| campaign.get::<String, _>(i))
            .collect::<Vec<_>>(),
        [
            "5:\\u0000",
            "Fi\\u0000ve",
            "d\\u0000",
            "seg\\u0000",
            "run\\u0000"
        ]
    );
    let metric: String = sqlx::query("SELECT DISTINCT metric FROM cio_campaign_metrics")
        .fetch_one(pool)
        .await
        .expect("the metric rows")
        .get(0);
    assert_eq!(metric, "se\\u0000nt");
    if backend == Backend::Postgres {
        // Every JSON column casts to jsonb, which refuses the escape \u0000.
        let name: String = sqlx::query(
            "SELECT (raw::jsonb) ->> 'name' FROM cio_segments UNION ALL SELECT (raw::jsonb) ->> 'name' FROM cio_campaigns \
             UNION ALL SELECT (tags::jsonb) ->> 0 FROM cio_segments",
        )
        .fetch_all(pool)
        .await
        .expect("raw and tags cast to jsonb")
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect::<Vec<_>>()
        .join(",");
        assert_eq!(name, "Se\\u0000ven,Fi\\u0000ve,t\\u0000");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_app_api_text_is_stored_escaped_on_postgresql() {
    let db = TestDb::create(Server::Postgres).await;
    nul_text_is_stored_escaped(db.url(), Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_app_api_text_is_stored_escaped_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("pulled.db").display());
    nul_text_is_stored_escaped(&url, Backend::Sqlite).await;
}
