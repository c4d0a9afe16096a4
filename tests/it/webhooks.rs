//! The reporting-webhook receiver for real: bound on port 0, storing into SQLite and into a
//! PostgreSQL database of the test's own, posted to by the simulator's Customer.io sender.
//! Signatures (valid, wrong, stale, missing, rotated), body limits (declared and streamed),
//! exactly-once storage under retries and concurrency, group commit, 503 during an outage and
//! 200 after it, the daemon binary stopping on SIGTERM without losing an answered event, and
//! `webhooks register` / `list` against the simulated App API.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cio_sync::config::{DatabaseUrl, Secret, WebhookSettings};
use cio_sync::simulator::webhooks::{RetryRule, Signing, WebhookPoster, sample_events};
use cio_sync::webhooks::{self, Receiver, WebhookStore};
use serde_json::json;
use sqlx::{Connection, Row};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

const KEY: &str = "whsec-test-key";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Db {
    Sqlite,
    Postgres,
}

/// A receiver on 127.0.0.1:0 over a database of the test's own.
struct Rig {
    _dir: tempfile::TempDir,
    pg: Option<TestDb>,
    url: String,
    store: WebhookStore,
    receiver: Option<Receiver>,
    stop: CancellationToken,
    settings: WebhookSettings,
}

fn settings(keys: &[&str]) -> WebhookSettings {
    WebhookSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        path: "/cio/webhook".into(),
        signing_keys: keys.iter().map(|k| Secret::new(*k)).collect(),
        tolerance: Duration::from_secs(300),
        max_body_bytes: 64 * 1024,
        database: None,
    }
}

impl Rig {
    async fn start(db: Db, settings: WebhookSettings) -> Rig {
        init_logs();
        let dir = tempfile::tempdir().unwrap();
        let (url, pg) = match db {
            Db::Sqlite => (
                format!("sqlite://{}", dir.path().join("events.db").display()),
                None,
            ),
            Db::Postgres => {
                let t = TestDb::create(Server::Postgres).await;
                (t.url().to_string(), Some(t))
            }
        };
        let store = WebhookStore::open(&DatabaseUrl::new(url.clone()), 4)
            .await
            .expect("open the events database");
        let mut rig = Rig {
            _dir: dir,
            pg,
            url,
            store,
            receiver: None,
            stop: CancellationToken::new(),
            settings,
        };
        rig.restart(rig.settings.clone()).await;
        rig
    }

    /// Stops the receiver (if running) and starts it again with `settings`.
    async fn restart(&mut self, settings: WebhookSettings) {
        self.shutdown().await;
        self.stop = CancellationToken::new();
        let listener = webhooks::bind(settings.listen).await.expect("bind");
        self.receiver = Some(
            webhooks::start_on(
                listener,
                &settings,
                self.store.clone(),
                self.stop.clone().cancelled_owned(),
            )
            .expect("start"),
        );
        self.settings = settings;
    }

    async fn shutdown(&mut self) {
        if let Some(r) = self.receiver.take() {
            self.stop.cancel();
            tokio::time::timeout(WAIT, r.task)
                .await
                .expect("the receiver stops when asked")
                .expect("no panic")
                .expect("served without error");
        }
    }

    fn receiver(&self) -> &Receiver {
        self.receiver.as_ref().expect("running")
    }

    fn endpoint(&self) -> String {
        format!("http://{}/cio/webhook", self.receiver().addr)
    }

    fn poster(&self, key: &str) -> WebhookPoster {
        WebhookPoster::new(self.endpoint(), key).unwrap()
    }

    fn stat(&self, f: impl Fn(&webhooks::ReceiverStats) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(&self.receiver().stats).load(Ordering::SeqCst)
    }

    async fn count(&self) -> i64 {
        self.store.count().await.expect("count")
    }

    async fn ids(&self) -> HashSet<String> {
        sqlx::query("SELECT event_id FROM cio_message_events")
            .fetch_all(self.store.pool())
            .await
            .expect("ids")
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect()
    }
}

async fn post_ok(p: &WebhookPoster, body: &serde_json::Value) -> u16 {
    p.post(body.to_string().as_bytes(), Signing::Valid)
        .await
        .expect("an answer")
}

// ---- stored exactly once ----

async fn valid_events_posted_three_times_are_stored_once(db: Db) {
    let rig = Rig::start(db, settings(&[KEY])).await;
    let p = rig.poster(KEY);
    let events = sample_events("thrice", 7);
    for round in 0..3 {
        for e in &events {
            assert_eq!(post_ok(&p, e).await, 200, "round {round}: {e}");
        }
    }
    assert_eq!(rig.count().await, 7);
    assert_eq!(rig.stat(|s| &s.stored), 7);
    assert_eq!(rig.stat(|s| &s.duplicates), 14);
    let row = sqlx::query(
        "SELECT object_type, metric, campaign_id, action_id, identifier_id, email, recipient, payload \
         FROM cio_message_events WHERE event_id = 'thrice-000000'",
    )
    .fetch_one(rig.store.pool())
    .await
    .expect("the first event's row");
    assert_eq!(row.get::<String, _>(0), "email");
    assert_eq!(row.get::<String, _>(1), "sent");
    assert_eq!(row.get::<i64, _>(2), 7);
    assert_eq!(row.get::<i64, _>(3), 42);
    assert_eq!(row.get::<String, _>(4), "1000");
    assert_eq!(row.get::<String, _>(5), "person0@example.com");
    assert_eq!(row.get::<String, _>(6), "person0@example.com");
    let payload: serde_json::Value = serde_json::from_str(&row.get::<String, _>(7)).unwrap();
    assert_eq!(payload, events[0]);
}

#[tokio::test]
async fn valid_events_posted_three_times_are_stored_once_on_sqlite() {
    valid_events_posted_three_times_are_stored_once(Db::Sqlite).await;
}

#[tokio::test]
async fn valid_events_posted_three_times_are_stored_once_on_postgres() {
    valid_events_posted_three_times_are_stored_once(Db::Postgres).await;
}

// ---- refused ----

async fn wrong_stale_unsigned_and_oversized_requests_are_refused_and_store_nothing(db: Db) {
    let rig = Rig::start(db, settings(&[KEY])).await;
    let p = rig.poster(KEY);
    let body = sample_events("refused", 1)[0].to_string();
    for signing in [
        Signing::BadSignature,
        Signing::Stale { secs: 301 },
        Signing::Unsigned,
    ] {
        assert_eq!(
            p.post(body.as_bytes(), signing).await.unwrap(),
            401,
            "{signing:?}"
        );
    }
    // A wrong key altogether.
    assert_eq!(
        rig.poster("another-key")
            .post(body.as_bytes(), Signing::Valid)
            .await
            .unwrap(),
        401
    );
    // No timestamp header at all.
    let resp = reqwest::Client::new()
        .post(rig.endpoint())
        .header("x-cio-signature", "00".repeat(32))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(resp.text().await.unwrap().contains("X-CIO-Timestamp"));
    // Over the limit (64 KiB here), correctly signed.
    let big = json!({"event_id": "big", "metric": "sent", "data": {"content": "x".repeat(70_000)}});
    assert_eq!(post_ok(&p, &big).await, 413);
    assert_eq!(rig.count().await, 0, "nothing refused is stored");
    assert_eq!(rig.stat(|s| &s.queued), 0);
}

#[tokio::test]
async fn wrong_stale_unsigned_and_oversized_requests_are_refused_and_store_nothing_on_sqlite() {
    wrong_stale_unsigned_and_oversized_requests_are_refused_and_store_nothing(Db::Sqlite).await;
}

#[tokio::test]
async fn wrong_stale_unsigned_and_oversized_requests_are_refused_and_store_nothing_on_postgres() {
    wrong_stale_unsigned_and_oversized_requests_are_refused_and_store_nothing(Db::Postgres).await;
}

/// Sends raw request bytes and reads the status line of the answer.
async fn raw_status(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    // The body is never finished: an answer can only come from the receiver refusing early.
    while !got.windows(2).any(|w| w == b"\r\n") {
        assert!(
            Instant::now() < deadline,
            "no answer to the oversized request"
        );
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("an answer before the deadline")
            .unwrap();
        assert!(n > 0, "the connection closed without an answer");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_413_before_it_is_read_whole() {
    let rig = Rig::start(Db::Sqlite, settings(&[KEY])).await;
    let addr = rig.receiver().addr;
    // Declared too large: answered with none of the body sent.
    let status = raw_status(
        addr,
        "POST /cio/webhook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000000000\r\n\r\n",
        b"",
    )
    .await;
    assert!(status.contains(" 413 "), "{status}");
    // No length declared (chunked): refused once the running count passes the limit, while
    // the sender still has more to send.
    let chunk = vec![b'x'; 70_000];
    let mut body = format!("{:x}\r\n", chunk.len()).into_bytes();
    body.extend_from_slice(&chunk);
    body.extend_from_slice(b"\r\n");
    let status = raw_status(
        addr,
        "POST /cio/webhook HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
        &body,
    )
    .await;
    assert!(status.contains(" 413 "), "{status}");
    assert_eq!(rig.count().await, 0);
}

#[tokio::test]
async fn a_rotated_key_works_during_the_overlap_and_the_old_one_stops_after() {
    let mut rig = Rig::start(Db::Sqlite, settings(&["old-key", "new-key"])).await;
    let events = sample_events("rotate", 3);
    assert_eq!(post_ok(&rig.poster("old-key"), &events[0]).await, 200);
    assert_eq!(post_ok(&rig.poster("new-key"), &events[1]).await, 200);
    rig.restart(settings(&["new-key"])).await;
    assert_eq!(post_ok(&rig.poster("old-key"), &events[2]).await, 401);
    assert_eq!(post_ok(&rig.poster("new-key"), &events[2]).await, 200);
    assert_eq!(rig.count().await, 3);
}

#[tokio::test]
async fn an_unknown_event_type_and_an_unreadable_body_are_stored_raw() {
    let rig = Rig::start(Db::Sqlite, settings(&[KEY])).await;
    let p = rig.poster(KEY);
    let odd = json!({"event_id": "odd-1", "object_type": "hologram", "metric": "beamed", "timestamp": 1, "data": {"campaign_id": "not a number", "x": [1]}});
    assert_eq!(post_ok(&p, &odd).await, 200);
    assert_eq!(p.post(b"not json", Signing::Valid).await.unwrap(), 200);
    let row = sqlx::query(
        "SELECT object_type, metric, campaign_id, payload FROM cio_message_events WHERE event_id = 'odd-1'",
    )
    .fetch_one(rig.store.pool())
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>(0), "hologram");
    assert_eq!(row.get::<String, _>(1), "beamed");
    assert_eq!(row.get::<Option<i64>, _>(2), None);
    assert_eq!(row.get::<String, _>(3), odd.to_string());
    let raw: String =
        sqlx::query("SELECT payload FROM cio_message_events WHERE event_id LIKE 'sha256:%'")
            .fetch_one(rig.store.pool())
            .await
            .unwrap()
            .get(0);
    assert_eq!(raw, "not json");
}

// ---- outage ----

#[tokio::test]
async fn with_the_sqlite_database_locked_the_answer_is_503_and_the_retry_after_is_stored() {
    let rig = Rig::start(Db::Sqlite, settings(&[KEY])).await;
    let p = rig.poster(KEY);
    let event = &sample_events("outage", 1)[0];
    // Another process holds the write lock past the receiver's commit deadline.
    let mut locker = sqlx::SqliteConnection::connect(&rig.url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(post_ok(&p, event).await, 503);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered within Customer.io's 4 s timeout ({:?})",
        started.elapsed()
    );
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    drop(locker);
    assert_eq!(post_ok(&p, event).await, 200);
    assert_eq!(
        rig.ids().await,
        HashSet::from(["outage-000000".to_string()])
    );
}

#[tokio::test]
async fn with_the_postgres_connection_cut_the_answer_is_503_and_the_retry_after_is_stored() {
    let rig = Rig::start(Db::Postgres, settings(&[KEY])).await;
    let p = rig.poster(KEY);
    let events = sample_events("cut", 2);
    assert_eq!(post_ok(&p, &events[0]).await, 200);
    let db = rig.pg.as_ref().unwrap();
    let mut admin = sqlx::PgConnection::connect(db.admin_url()).await.unwrap();
    let name = db.name();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(name)
        .execute(&mut admin)
        .await
        .unwrap();
    assert_eq!(post_ok(&p, &events[1]).await, 503);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    // The pool reconnects; Customer.io's retry is stored.
    let deadline = Instant::now() + WAIT;
    loop {
        let s = post_ok(&p, &events[1]).await;
        if s == 200 {
            break;
        }
        assert_eq!(s, 503, "only 503 while reconnecting");
        assert!(Instant::now() < deadline, "the receiver never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        rig.ids().await,
        HashSet::from(["cut-000000".to_string(), "cut-000001".to_string()])
    );
}

// ---- concurrency ----

#[tokio::test]
async fn concurrent_posts_share_transactions() {
    let rig = Rig::start(Db::Sqlite, settings(&[KEY])).await;
    let p = rig.poster(KEY);
    // Hold the write lock so the first transaction waits while the other posts queue.
    let mut locker = sqlx::SqliteConnection::connect(&rig.url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut locker)
        .await
        .unwrap();
    let events = sample_events("group", 20);
    let posts: Vec<_> = events
        .iter()
        .map(|e| {
            let (p, body) = (p.clone(), e.to_string());
            tokio::spawn(async move { p.post(body.as_bytes(), Signing::Valid).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    while rig.stat(|s| &s.queued) < 20 {
        assert!(Instant::now() < deadline, "all 20 posts queued within 2 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    for p in posts {
        assert_eq!(p.await.unwrap().unwrap(), 200);
    }
    assert_eq!(rig.count().await, 20);
    let tx = rig.stat(|s| &s.transactions);
    assert!(
        tx <= 2,
        "20 events in {tx} transactions: the queued ones share one"
    );
}

async fn a_thousand_events_from_twenty_senders_are_all_stored_once(db: Db) {
    let rig = Rig::start(db, settings(&[KEY])).await;
    let rule = RetryRule::default();
    let senders: Vec<_> = (0..20)
        .map(|s| {
            let (p, rule) = (rig.poster(KEY), rule.clone());
            tokio::spawn(async move {
                let mut events = sample_events(&format!("s{s:02}"), 50);
                // Every sender also repeats its first ten events, as retries would.
                events.extend(events[..10].to_vec());
                p.deliver(&events, &rule).await
            })
        })
        .collect();
    let mut delivered = 0;
    for s in senders {
        let d = s.await.unwrap();
        assert!(d.iter().all(|d| d.delivered), "{d:?}");
        delivered += d.len();
    }
    assert_eq!(delivered, 1200);
    let ids = rig.ids().await;
    assert_eq!(ids.len(), 1000);
    assert_eq!(rig.count().await, 1000);
    assert_eq!(rig.stat(|s| &s.duplicates), 200);
    let tx = rig.stat(|s| &s.transactions);
    eprintln!("{db:?}: 1200 posts in {tx} transactions");
}

#[tokio::test]
async fn a_thousand_events_from_twenty_senders_are_all_stored_once_on_sqlite() {
    a_thousand_events_from_twenty_senders_are_all_stored_once(Db::Sqlite).await;
}

#[tokio::test]
async fn a_thousand_events_from_twenty_senders_are_all_stored_once_on_postgres() {
    a_thousand_events_from_twenty_senders_are_all_stored_once(Db::Postgres).await;
}

// ---- the binary ----

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test]
async fn sigterm_while_events_arrive_loses_none_that_were_answered_200() {
    let env = TestEnv::with_state(StateDb::Sqlite).await;
    let port = free_port();
    env.write_config(&format!(
        "webhooks:\n  listen: \"127.0.0.1:{port}\"\n  signing_key: ${{CIO_WEBHOOK_SIGNING_KEY}}\n"
    ));
    env.write_data("people.csv", &people_csv(1));
    env.write_job("people", &format!("schedule: \"0 2 1 1 *\"\n{PEOPLE_JOB}"));
    let log = env.path().join("daemon.log");
    let mut cmd = env.cli();
    cmd.arg("daemon")
        .env("CIO_WEBHOOK_SIGNING_KEY", KEY)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut daemon = tokio::process::Command::from(cmd).spawn().expect("spawn");
    let url = format!("http://127.0.0.1:{port}/cio/webhook");
    let poster = WebhookPoster::new(url, KEY).unwrap();
    // Up once it answers a post.
    let probe = sample_events("probe", 1)[0].to_string();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(200) = poster.post(probe.as_bytes(), Signing::Valid).await {
            break;
        }
        if let Some(s) = daemon.try_wait().unwrap() {
            panic!(
                "the daemon exited ({s}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "the receiver never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answered = Arc::new(std::sync::Mutex::new(HashSet::<String>::new()));
    let senders: Vec<_> = (0..10)
        .map(|s| {
            let (p, answered) = (poster.clone(), answered.clone());
            tokio::spawn(async move {
                for e in sample_events(&format!("term{s}"), 500) {
                    match p.post(e.to_string().as_bytes(), Signing::Valid).await {
                        Ok(200) => {
                            let id = e["event_id"].as_str().unwrap().to_string();
                            answered.lock().unwrap().insert(id);
                        }
                        Ok(503) => {}
                        // Refused connections once it stopped listening.
                        _ => break,
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    while answered.lock().unwrap().len() < 200 {
        assert!(Instant::now() < deadline, "200 events answered");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let pid = daemon.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(WAIT, daemon.wait())
        .await
        .expect("the daemon stops after SIGTERM")
        .unwrap();
    for s in senders {
        s.await.unwrap();
    }
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let answered = answered.lock().unwrap().clone();
    assert!(
        answered.len() < 5000,
        "SIGTERM came while events were arriving"
    );
    let mut conn = sqlx::SqliteConnection::connect(&env.state_url())
        .await
        .unwrap();
    let stored: HashSet<String> = sqlx::query("SELECT event_id FROM cio_message_events")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect();
    let lost: Vec<_> = answered.difference(&stored).collect();
    assert!(lost.is_empty(), "answered 200 but not stored: {lost:?}");
}

#[tokio::test]
async fn the_simulator_cli_posts_signed_duplicated_and_badly_signed_events() {
    let rig = Rig::start(Db::Sqlite, settings(&[KEY])).await;
    let env = TestEnv::new().await;
    let endpoint = rig.endpoint();
    let run = |args: Vec<String>| {
        let mut c = env.cli();
        c.env("CIO_WEBHOOK_SIGNING_KEY", KEY)
            .arg("simulate")
            .args(args);
        env.output_of(c)
    };
    let out = run(vec![
        "--post-webhooks".into(),
        endpoint.clone(),
        "--events".into(),
        "14".into(),
        "--duplicates".into(),
    ])
    .await;
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("28 answered 2xx"), "{}", stdout(&out));
    assert_eq!(rig.count().await, 14);
    let out = run(vec![
        "--post-webhooks".into(),
        endpoint.clone(),
        "--signing".into(),
        "bad-signature".into(),
        "--id-prefix".into(),
        "bad".into(),
    ])
    .await;
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("10 × 401"), "{}", stdout(&out));
    let out = run(vec![
        "--post-webhooks".into(),
        endpoint,
        "--signing".into(),
        "stale".into(),
        "--id-prefix".into(),
        "stale".into(),
    ])
    .await;
    assert!(stdout(&out).contains("10 × 401"), "{}", stdout(&out));
    assert_eq!(rig.count().await, 14, "refused events are not stored");
}

#[tokio::test]
async fn the_sender_follows_customer_ios_retry_rule_holding_later_events_behind_a_failed_one() {
    // The receiver is down for the first attempts: the sender keeps the first event at the
    // head of the line (long waits after a refused connection) and sends the rest after it.
    // First a listener that accepts and drops every connection: no HTTP answer, like an outage.
    let dropper = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = dropper.local_addr().unwrap().port();
    let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let dropping = tokio::spawn({
        let dropped = dropped.clone();
        async move {
            while let Ok((conn, _)) = dropper.accept().await {
                drop(conn);
                dropped.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let poster = WebhookPoster::new(format!("http://127.0.0.1:{port}/cio/webhook"), KEY).unwrap();
    let rule = RetryRule {
        long_wait: Duration::from_millis(200),
        max_attempts: 200,
        ..RetryRule::default()
    };
    let events = sample_events("line", 3);
    let sender = tokio::spawn(async move { poster.deliver(&events, &rule).await });
    let deadline = Instant::now() + WAIT;
    while dropped.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the sender's first attempt");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    dropping.abort();
    let _ = dropping.await;
    let mut s = settings(&[KEY]);
    s.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let rig = Rig::start(Db::Sqlite, s).await;
    let d = tokio::time::timeout(WAIT, sender)
        .await
        .expect("delivered")
        .unwrap();
    assert!(d.iter().all(|d| d.delivered), "{d:?}");
    assert!(d[0].attempts.len() > 1 && d[0].attempts[0] == 0, "{d:?}");
    assert_eq!(
        d[1].attempts,
        vec![200],
        "later events waited behind the first"
    );
    assert_eq!(rig.count().await, 3);
}

// ---- App API ----

#[tokio::test]
async fn register_creates_then_updates_the_webhook_and_list_shows_it() {
    let env = TestEnv::new().await;
    let url = "https://hooks.example.com/cio/webhook";
    let out = env
        .cli_output(&[
            "webhooks",
            "register",
            "--url",
            url,
            "--events",
            "email_sent,email_opened",
        ])
        .await;
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("Created reporting webhook 1"),
        "{}",
        stdout(&out)
    );
    let out = env
        .cli_output(&[
            "webhooks",
            "register",
            "--url",
            url,
            "--events",
            "email_sent,email_clicked",
            "--with-content",
        ])
        .await;
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("Updated reporting webhook 1"),
        "{}",
        stdout(&out)
    );
    let hooks = env.sim.reporting_webhooks();
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0]["events"], json!(["email_sent", "email_clicked"]));
    assert_eq!(hooks[0]["with_content"], json!(true));
    assert_eq!(hooks[0]["endpoint"], json!(url));
    let writes: Vec<(String, String)> = env
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .map(|r| (r.method, r.path))
        .collect();
    assert_eq!(
        writes,
        vec![
            ("POST".to_string(), "/v1/reporting_webhooks".to_string()),
            ("PUT".to_string(), "/v1/reporting_webhooks/1".to_string())
        ]
    );
    let out = env.cli_output(&["webhooks", "list"]).await;
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains(url) && text.contains("email_sent,email_clicked"),
        "{text}"
    );
    let out = env.cli_output(&["webhooks", "list", "--json"]).await;
    let listed: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(listed[0]["id"], json!(1));
}
