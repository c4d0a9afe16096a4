//! The daemons sharing this database: scheduled ticks claimed once, and replica heartbeats.
//!
//! Owns: the `schedule_ticks` table (the replica that inserts a job's tick runs it; the others
//! skip it) and the `replicas` table (each daemon's last heartbeat, from which the live ones
//! are counted). Must not: decide what a tick does or how rate limits are shared (the
//! daemon does), or touch other tables.

use sqlx::Row;

use super::{StateError, StateStore, now_ms, q, storable};

/// Ticks older than this are deleted as heartbeats go by, except each job's latest: only
/// that one is ever read back (for `catch_up`), the rest are history nobody needs.
const KEEP_TICKS_MS: i64 = 35 * 24 * 3600 * 1000;

impl StateStore {
    /// Claims `job`'s scheduled tick at `tick_ms` (Unix milliseconds) for `holder`; `false`
    /// when another replica (or an earlier start of this one) already claimed it.
    pub async fn claim_tick(
        &self,
        job: &str,
        tick_ms: i64,
        holder: &str,
    ) -> Result<bool, StateError> {
        let res = sqlx::query(
            "INSERT INTO schedule_ticks (job, tick_at, holder, claimed_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (job, tick_at) DO NOTHING",
        )
        .bind(storable(job).as_ref())
        .bind(tick_ms)
        .bind(storable(holder).as_ref())
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(q("claiming a scheduled tick", "schedule_ticks"))?;
        Ok(res.rows_affected() == 1)
    }

    /// The latest tick of `job` any replica claimed, in Unix milliseconds.
    pub async fn last_claimed_tick(&self, job: &str) -> Result<Option<i64>, StateError> {
        let row = sqlx::query("SELECT MAX(tick_at) FROM schedule_ticks WHERE job = $1")
            .bind(storable(job).as_ref())
            .fetch_one(&self.pool)
            .await
            .map_err(q("reading the last scheduled tick", "schedule_ticks"))?;
        row.try_get::<Option<i64>, _>(0)
            .map_err(q("reading the last scheduled tick", "schedule_ticks"))
    }

    /// Who claimed each tick of `job`, oldest first: (tick in Unix ms, holder).
    pub async fn claimed_ticks(&self, job: &str) -> Result<Vec<(i64, String)>, StateError> {
        let rows = sqlx::query(
            "SELECT tick_at, holder FROM schedule_ticks WHERE job = $1 ORDER BY tick_at",
        )
        .bind(storable(job).as_ref())
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading the scheduled ticks", "schedule_ticks"))?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(q("reading the scheduled ticks", "schedule_ticks"))
    }

    /// Records that `holder` is alive now, and drops ticks too old to matter.
    pub async fn heartbeat(&self, holder: &str) -> Result<(), StateError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO replicas (holder, heartbeat_at) VALUES ($1, $2) \
             ON CONFLICT (holder) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
        )
        .bind(storable(holder).as_ref())
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(q("writing the replica heartbeat", "replicas"))?;
        // Each job's latest tick stays, however old (a yearly schedule's), for `catch_up`.
        sqlx::query(
            "DELETE FROM schedule_ticks WHERE tick_at < $1 AND tick_at < \
             (SELECT MAX(t.tick_at) FROM schedule_ticks t WHERE t.job = schedule_ticks.job)",
        )
        .bind(now - KEEP_TICKS_MS)
        .execute(&self.pool)
        .await
        .map_err(q("dropping old scheduled ticks", "schedule_ticks"))?;
        Ok(())
    }

    /// Replicas whose last heartbeat is at most `within_ms` old.
    pub async fn live_replicas(&self, within_ms: i64) -> Result<Vec<String>, StateError> {
        let rows =
            sqlx::query("SELECT holder FROM replicas WHERE heartbeat_at >= $1 ORDER BY holder")
                .bind(now_ms() - within_ms)
                .fetch_all(&self.pool)
                .await
                .map_err(q("counting live replicas", "replicas"))?;
        rows.iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(q("counting live replicas", "replicas"))
    }

    /// A stopping replica leaves, so the others take its share at their next heartbeat.
    pub async fn forget_replica(&self, holder: &str) -> Result<(), StateError> {
        sqlx::query("DELETE FROM replicas WHERE holder = $1")
            .bind(storable(holder).as_ref())
            .execute(&self.pool)
            .await
            .map_err(q("removing the replica heartbeat", "replicas"))?;
        Ok(())
    }
}
