//! `cio_message_events`: where accepted reporting-webhook events are kept, once each.
//!
//! Owns: reading the columns out of an event body without ever refusing one ([`MessageEvent`]:
//! unknown object types and metrics, missing fields and non-JSON bodies are all stored, the
//! body whole in `payload`), inserting a batch of events in ONE transaction that skips the
//! `event_id`s already stored (Customer.io retries) and says which were new, and the table's
//! own migrator (`migrations/webhooks/{sqlite,postgres}`, history in
//! [`WEBHOOKS_MIGRATIONS_TABLE`]), so a `webhooks.database` gets only this table. Static SQL
//! with `$n` placeholders, the same text on SQLite and PostgreSQL.
//! Must not: verify signatures, answer HTTP or decide when to commit (`server.rs` does).

use std::collections::HashSet;

use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Row};

use crate::config::DatabaseUrl;
use crate::state::{self, Backend, StateError, storable};

static WEBHOOKS_SQLITE: Migrator = sqlx::migrate!("./migrations/webhooks/sqlite");
static WEBHOOKS_POSTGRES: Migrator = sqlx::migrate!("./migrations/webhooks/postgres");

/// The webhooks migrator's history table: its own, so it and the state migrator never see each
/// other's versions as unknown when both run on the state database (the default).
pub const WEBHOOKS_MIGRATIONS_TABLE: &str = "cio_sync_webhooks_migrations";

/// The table events go to.
pub const EVENTS_TABLE: &str = "cio_message_events";

/// The webhooks migrator for `backend`, recording into [`WEBHOOKS_MIGRATIONS_TABLE`].
pub fn webhooks_migrator(backend: Backend) -> Migrator {
    let source = match backend {
        Backend::Sqlite => &WEBHOOKS_SQLITE,
        Backend::Postgres => &WEBHOOKS_POSTGRES,
    };
    let mut m = Migrator::with_migrations(source.iter().cloned().collect());
    m.dangerous_set_table_name(WEBHOOKS_MIGRATIONS_TABLE);
    m
}

/// A statement on `cio_message_events` failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{what} ({table}) in {database} failed: {message}; check that the database is reachable and writable (`webhooks.database`, or `state.url` in config.yaml); Customer.io was answered 503 and sends the events again"
)]
pub struct StoreError {
    pub what: &'static str,
    pub table: &'static str,
    /// The database URL with its password masked.
    pub database: String,
    pub message: String,
}

/// One event as stored: the columns read out of the body, and the body itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageEvent {
    /// Customer.io's `event_id`; for a body without one, `sha256:<hex of the body>`, so a
    /// retry of the same body is still recognised.
    pub event_id: String,
    pub object_type: Option<String>,
    pub metric: Option<String>,
    pub timestamp: Option<i64>,
    pub delivery_id: Option<String>,
    pub campaign_id: Option<i64>,
    pub broadcast_id: Option<i64>,
    pub newsletter_id: Option<i64>,
    pub action_id: Option<i64>,
    pub transactional_message_id: Option<i64>,
    pub customer_id: Option<String>,
    pub identifier_id: Option<String>,
    pub email: Option<String>,
    pub cio_id: Option<String>,
    pub recipient: Option<String>,
    /// The body as received (lossy UTF-8 only if it was not UTF-8).
    pub payload: String,
}

impl MessageEvent {
    /// Reads an event out of a verified body. Never fails: what cannot be read is NULL, and the
    /// payload keeps everything (an authentic event must be acknowledged, or Customer.io holds
    /// back every later one).
    pub fn from_body(body: &[u8]) -> MessageEvent {
        let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let text = |v: Option<&Value>| -> Option<String> {
            match v? {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        };
        let int = |v: Option<&Value>| -> Option<i64> {
            match v? {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            }
        };
        let data = json.get("data");
        let field = |name: &str| data.and_then(|d| d.get(name));
        let ids = field("identifiers");
        let id_field = |name: &str| ids.and_then(|i| i.get(name));
        let event_id = text(json.get("event_id")).unwrap_or_else(|| {
            let digest = Sha256::digest(body);
            format!("sha256:{}", hex::encode(digest))
        });
        MessageEvent {
            event_id,
            object_type: text(json.get("object_type")),
            metric: text(json.get("metric")),
            timestamp: int(json.get("timestamp")),
            delivery_id: text(field("delivery_id")),
            campaign_id: int(field("campaign_id")),
            broadcast_id: int(field("broadcast_id")),
            newsletter_id: int(field("newsletter_id")),
            action_id: int(field("action_id")),
            transactional_message_id: int(field("transactional_message_id")),
            customer_id: text(field("customer_id")),
            identifier_id: text(id_field("id")),
            email: text(id_field("email")).or_else(|| text(field("email_address"))),
            cio_id: text(id_field("cio_id")),
            recipient: text(field("recipient")),
            payload: String::from_utf8_lossy(body).into_owned(),
        }
    }
}

/// The database holding `cio_message_events`: `webhooks.database`, or the state database.
#[derive(Clone)]
pub struct WebhookStore {
    pool: AnyPool,
    backend: Backend,
    /// Masked URL, for errors.
    database: String,
}

impl std::fmt::Debug for WebhookStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookStore")
            .field("database", &self.database)
            .field("backend", &self.backend)
            .finish()
    }
}

/// Columns per row of the insert, and rows per statement (17 × 200 parameters stay far below
/// SQLite's and PostgreSQL's limits).
const COLUMNS: usize = 17;
const ROWS_PER_STATEMENT: usize = 200;

impl WebhookStore {
    /// Opens `url` (`webhooks.database`) and brings the table up to date.
    pub async fn open(url: &DatabaseUrl, max_connections: u32) -> Result<Self, StoreError> {
        let (pool, backend) =
            state::open_pool(url, max_connections)
                .await
                .map_err(|e| StoreError {
                    what: "opening the database",
                    table: EVENTS_TABLE,
                    database: url.masked(),
                    message: match e {
                        StateError::Open { message, .. } => message,
                        other => other.to_string(),
                    },
                })?;
        let store = Self::new(pool, backend, url.masked());
        store.migrate().await?;
        Ok(store)
    }

    /// A store on an open pool (the state database's); call [`WebhookStore::migrate`] first.
    pub fn new(pool: AnyPool, backend: Backend, database: String) -> Self {
        Self {
            pool,
            backend,
            database,
        }
    }

    /// Creates or updates the table (idempotent).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        webhooks_migrator(self.backend)
            .run(&self.pool)
            .await
            .map_err(|e| StoreError {
                what: "migrating the webhook events table",
                table: WEBHOOKS_MIGRATIONS_TABLE,
                database: self.database.clone(),
                message: e.to_string(),
            })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn err(&self, what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError + '_ {
        move |e| StoreError {
            what,
            table: EVENTS_TABLE,
            database: self.database.clone(),
            message: e.to_string(),
        }
    }

    /// Inserts `events` in one transaction, skipping event ids already stored, and returns
    /// the ids that were new. Nothing is stored unless the whole batch commits. `events` must
    /// not repeat an id (the caller folds repeats together).
    pub async fn insert_batch(
        &self,
        events: &[&MessageEvent],
        received_at_ms: i64,
    ) -> Result<HashSet<String>, StoreError> {
        let mut inserted = HashSet::with_capacity(events.len());
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(self.err("starting a transaction"))?;
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            // Built from constants and placeholder numbers only: no input reaches the text.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(insert_sql(chunk.len())));
            for e in chunk {
                let s = |v: &Option<String>| v.as_deref().map(|t| storable(t).into_owned());
                q = q
                    .bind(storable(&e.event_id).into_owned())
                    .bind(s(&e.object_type))
                    .bind(s(&e.metric))
                    .bind(e.timestamp)
                    .bind(s(&e.delivery_id))
                    .bind(e.campaign_id)
                    .bind(e.broadcast_id)
                    .bind(e.newsletter_id)
                    .bind(e.action_id)
                    .bind(e.transactional_message_id)
                    .bind(s(&e.customer_id))
                    .bind(s(&e.identifier_id))
                    .bind(s(&e.email))
                    .bind(s(&e.cio_id))
                    .bind(s(&e.recipient))
                    .bind(storable(&e.payload).into_owned())
                    .bind(received_at_ms);
            }
            let rows = q
                .fetch_all(&mut *tx)
                .await
                .map_err(self.err("inserting webhook events"))?;
            for row in rows {
                let id: String = row
                    .try_get(0)
                    .map_err(self.err("reading the inserted event ids"))?;
                inserted.insert(id);
            }
        }
        tx.commit()
            .await
            .map_err(self.err("committing webhook events"))?;
        // Ids come back as stored; map an escaped one back to the caller's spelling.
        Ok(events
            .iter()
            .filter(|e| inserted.contains(storable(&e.event_id).as_ref()))
            .map(|e| e.event_id.clone())
            .collect())
    }

    /// How many events are stored (tests, the demo).
    pub async fn count(&self) -> Result<i64, StoreError> {
        sqlx::query("SELECT COUNT(*) FROM cio_message_events")
            .fetch_one(&self.pool)
            .await
            .map_err(self.err("counting webhook events"))?
            .try_get(0)
            .map_err(self.err("counting webhook events"))
    }
}

/// `INSERT … VALUES (…), (…) ON CONFLICT (event_id) DO NOTHING RETURNING event_id` for `rows`
/// rows: the same text on SQLite (3.35+) and PostgreSQL.
fn insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO cio_message_events (event_id, object_type, metric, timestamp, delivery_id, \
         campaign_id, broadcast_id, newsletter_id, action_id, transactional_message_id, \
         customer_id, identifier_id, email, cio_id, recipient, payload, received_at) VALUES ",
    );
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..COLUMNS {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(r * COLUMNS + c + 1).to_string());
        }
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT (event_id) DO NOTHING RETURNING event_id");
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webhook_migrations_have_the_same_versions_on_both_backends() {
        let versions = |b| {
            webhooks_migrator(b)
                .iter()
                .map(|m| m.version)
                .collect::<Vec<_>>()
        };
        assert_eq!(versions(Backend::Sqlite), versions(Backend::Postgres));
        assert!(!versions(Backend::Sqlite).is_empty());
    }

    #[test]
    fn columns_are_read_from_a_campaign_email_event() {
        let body = br#"{"event_id":"01E4C4CT6YDC7Y5M7FE1GWWPQJ","object_type":"email","metric":"sent","timestamp":1613063089,
 "data":{"action_id":42,"campaign_id":7,"customer_id":"42","delivery_id":"RPILAgUBcRhIBqSfeiIwdIYJKxTY",
  "identifiers":{"id":"42","email":"ann@example.com","cio_id":"d9c106000001"},"recipient":"ann@example.com","subject":"Welcome"}}"#;
        let e = MessageEvent::from_body(body);
        assert_eq!(e.event_id, "01E4C4CT6YDC7Y5M7FE1GWWPQJ");
        assert_eq!(e.object_type.as_deref(), Some("email"));
        assert_eq!(e.metric.as_deref(), Some("sent"));
        assert_eq!(e.timestamp, Some(1613063089));
        assert_eq!(e.campaign_id, Some(7));
        assert_eq!(e.action_id, Some(42));
        assert_eq!(e.broadcast_id, None);
        assert_eq!(e.identifier_id.as_deref(), Some("42"));
        assert_eq!(e.email.as_deref(), Some("ann@example.com"));
        assert_eq!(e.cio_id.as_deref(), Some("d9c106000001"));
        assert_eq!(e.recipient.as_deref(), Some("ann@example.com"));
        assert_eq!(e.payload.as_bytes(), body);
    }

    #[test]
    fn a_body_we_cannot_read_is_kept_whole_under_a_content_id() {
        let a = MessageEvent::from_body(b"not json at all");
        assert!(a.event_id.starts_with("sha256:"), "{}", a.event_id);
        assert_eq!(a.payload, "not json at all");
        assert_eq!(a.metric, None);
        // The same body again gets the same id, so a retry is recognised.
        assert_eq!(
            a.event_id,
            MessageEvent::from_body(b"not json at all").event_id
        );
        let b = MessageEvent::from_body(br#"{"metric":"teleported","data":{"campaign_id":"x"}}"#);
        assert_eq!(b.metric.as_deref(), Some("teleported"));
        assert_eq!(b.campaign_id, None);
    }

    #[test]
    fn the_insert_numbers_every_placeholder_once() {
        let sql = insert_sql(2);
        assert!(sql.contains("($1, $2,"), "{sql}");
        assert!(sql.contains("$34)"), "{sql}");
        assert!(!sql.contains("$35"), "{sql}");
    }

    #[tokio::test]
    async fn a_batch_stores_new_events_and_reports_repeats_as_not_new() {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::new(format!("sqlite://{}", dir.path().join("w.db").display()));
        let store = WebhookStore::open(&url, 2).await.expect("open");
        let a = MessageEvent::from_body(br#"{"event_id":"a","metric":"sent"}"#);
        let b = MessageEvent::from_body(br#"{"event_id":"b","metric":"sent"}"#);
        let new = store.insert_batch(&[&a], 1).await.unwrap();
        assert_eq!(new, HashSet::from(["a".to_string()]));
        let new = store.insert_batch(&[&a, &b], 2).await.unwrap();
        assert_eq!(new, HashSet::from(["b".to_string()]));
        assert_eq!(store.count().await.unwrap(), 2);
        // Migrating again is a no-op.
        store.migrate().await.unwrap();
    }
}
