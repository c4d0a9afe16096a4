//! The `job_leases` table and who holds a lease: keeps replicas from running a job twice.
//!
//! Owns: taking, renewing, reading, taking over and releasing a job's lease, and the holder
//! identity that says whether a holder is provably a dead process of this machine (so its
//! lease need not expire first).
//! Must not: decide when to run a job (the runner and the daemon do).

use sqlx::Row;

use super::{StateError, StateStore, now_ms, q, storable};

/// Who holds a lease: `host:pid:nonce:start:boot:pidns`. `start` is the process's start time
/// (clock ticks since boot, `/proc/<pid>/stat` field 22), `boot` the kernel's boot id and
/// `pidns` the inode of the PID namespace; `-` when unknown. Together they say whether a pid
/// means the same process here: two containers can share a hostname, and a pid is reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    host: String,
    pid: u32,
    nonce: String,
    start: Option<u64>,
    boot: Option<String>,
    pid_ns: Option<String>,
}

/// What a holder is compared against: this process's machine, boot and PID namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalView {
    pub host: String,
    pub boot: Option<String>,
    pub pid_ns: Option<String>,
}

impl LocalView {
    pub fn this_machine() -> Self {
        Self {
            host: hostname(),
            boot: read_trimmed("/proc/sys/kernel/random/boot_id"),
            pid_ns: pid_namespace(),
        }
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && !s.contains(':'))
}

fn hostname() -> String {
    read_trimmed("/proc/sys/kernel/hostname")
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.contains(':')))
        .unwrap_or_else(|| "localhost".into())
}

/// The inode of this process's PID namespace (`pid:[4026531836]` → `4026531836`).
fn pid_namespace() -> Option<String> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let text = link.to_string_lossy();
    let inode = text.strip_prefix("pid:[")?.strip_suffix(']')?;
    inode.parse::<u64>().ok().map(|n| n.to_string())
}

/// When a process of this PID namespace started (clock ticks since boot), or None when no
/// such process exists (or it cannot be read).
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or `)`: fields are
    // counted after its last `)`, where field 3 comes first.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(22 - 3)?.parse().ok()
}

impl Holder {
    /// This process, with a fresh nonce (one per runner).
    pub fn this_process() -> Self {
        let view = LocalView::this_machine();
        let pid = std::process::id();
        Self {
            host: view.host,
            pid,
            nonce: ulid::Ulid::generate().to_string(),
            start: process_start(pid),
            boot: view.boot,
            pid_ns: view.pid_ns,
        }
    }

    /// Reads a stored holder; None for today's older `host:pid:nonce` form or anything else,
    /// which is never taken for a dead local process.
    pub fn parse(text: &str) -> Option<Self> {
        let parts: Vec<&str> = text.split(':').collect();
        let [host, pid, nonce, start, boot, pid_ns] = parts.as_slice() else {
            return None;
        };
        let known = |s: &str| (s != "-").then(|| s.to_string());
        Some(Self {
            host: host.to_string(),
            pid: pid.parse().ok()?,
            nonce: nonce.to_string(),
            start: match *start {
                "-" => None,
                s => Some(s.parse().ok()?),
            },
            boot: known(boot),
            pid_ns: known(pid_ns),
        })
    }

    /// True only when the holder is provably a process of this machine, this boot and this
    /// PID namespace that no longer runs: its pid is gone, or now belongs to a process that
    /// started at another time. Anything unknown (another namespace, an old-format holder, an
    /// unreadable boot id) is false: that lease is left to expire.
    pub fn is_dead_local(&self, me: &LocalView, start_of: impl Fn(u32) -> Option<u64>) -> bool {
        let same = |a: &Option<String>, b: &Option<String>| a.is_some() && a == b;
        if self.host != me.host || !same(&self.boot, &me.boot) || !same(&self.pid_ns, &me.pid_ns) {
            return false;
        }
        let Some(started) = self.start else {
            return false;
        };
        match start_of(self.pid) {
            None => true,
            Some(now) => now != started,
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let start = self
            .start
            .map_or_else(|| "-".to_string(), |s| s.to_string());
        write!(
            f,
            "{}:{}:{}:{start}:{}:{}",
            self.host,
            self.pid,
            self.nonce,
            self.boot.as_deref().unwrap_or("-"),
            self.pid_ns.as_deref().unwrap_or("-"),
        )
    }
}

/// True when `holder` (as stored) is provably a dead process of this machine and namespace.
pub fn holder_is_dead_local_process(holder: &str) -> bool {
    Holder::parse(holder)
        .is_some_and(|h| h.is_dead_local(&LocalView::this_machine(), process_start))
}

impl StateStore {
    /// Takes (or renews) the job's lease so that replicas sharing this database never run
    /// the same job at once. Returns false when another holder's lease is still valid.
    pub async fn try_lease(
        &self,
        job: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<bool, StateError> {
        let now = now_ms();
        let res = sqlx::query(
            "INSERT INTO job_leases (job, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (job) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE job_leases.holder = excluded.holder OR job_leases.expires_at < $4",
        )
        .bind(storable(job).as_ref())
        .bind(storable(holder).as_ref())
        .bind(now + ttl_ms)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(q("taking the job lease", "job_leases"))?;
        Ok(res.rows_affected() == 1)
    }

    /// The current holder of a job's lease, if any.
    pub async fn lease_holder(&self, job: &str) -> Result<Option<String>, StateError> {
        let row = sqlx::query("SELECT holder FROM job_leases WHERE job = $1")
            .bind(storable(job).as_ref())
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading the job lease", "job_leases"))?;
        row.map(|r| r.try_get(0))
            .transpose()
            .map_err(q("reading the job lease", "job_leases"))
    }

    /// Takes over a lease from `old` (a holder known to be dead); false if it changed hands.
    pub async fn steal_lease(
        &self,
        job: &str,
        old: &str,
        new: &str,
        ttl_ms: i64,
    ) -> Result<bool, StateError> {
        let res = sqlx::query(
            "UPDATE job_leases SET holder = $1, expires_at = $2 WHERE job = $3 AND holder = $4",
        )
        .bind(storable(new).as_ref())
        .bind(now_ms() + ttl_ms)
        .bind(storable(job).as_ref())
        .bind(storable(old).as_ref())
        .execute(&self.pool)
        .await
        .map_err(q("taking over the job lease", "job_leases"))?;
        Ok(res.rows_affected() == 1)
    }

    pub async fn release_lease(&self, job: &str, holder: &str) -> Result<(), StateError> {
        sqlx::query("DELETE FROM job_leases WHERE job = $1 AND holder = $2")
            .bind(storable(job).as_ref())
            .bind(storable(holder).as_ref())
            .execute(&self.pool)
            .await
            .map_err(q("releasing the job lease", "job_leases"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> LocalView {
        LocalView {
            host: "box".into(),
            boot: Some("boot-1".into()),
            pid_ns: Some("4026531836".into()),
        }
    }

    fn holder(pid_ns: &str, pid: u32, start: u64) -> Holder {
        Holder::parse(&format!("box:{pid}:01NONCE:{start}:boot-1:{pid_ns}")).unwrap()
    }

    #[test]
    fn a_holder_round_trips_through_its_stored_form() {
        let me = Holder::this_process();
        assert_eq!(Holder::parse(&me.to_string()), Some(me));
    }

    #[test]
    fn a_holder_in_another_pid_namespace_on_the_same_host_is_never_taken_for_dead() {
        let other = holder("4026532999", 42, 1000);
        // Pid 42 does not exist in our namespace, yet the holder lives in its own.
        assert!(!other.is_dead_local(&view(), |_| None));
    }

    #[test]
    fn a_holder_of_this_namespace_whose_pid_is_gone_is_dead() {
        assert!(holder("4026531836", 42, 1000).is_dead_local(&view(), |_| None));
    }

    #[test]
    fn a_holder_whose_pid_was_reused_by_a_later_process_is_dead() {
        let h = holder("4026531836", 42, 1000);
        assert!(h.is_dead_local(&view(), |_| Some(2000)));
        assert!(!h.is_dead_local(&view(), |_| Some(1000)), "still running");
    }

    #[test]
    fn a_holder_of_another_boot_or_host_or_unknown_identity_waits_for_expiry() {
        let h = holder("4026531836", 42, 1000);
        let rebooted = LocalView {
            boot: Some("boot-2".into()),
            ..view()
        };
        assert!(!h.is_dead_local(&rebooted, |_| None));
        let elsewhere = LocalView {
            host: "other".into(),
            ..view()
        };
        assert!(!h.is_dead_local(&elsewhere, |_| None));
        let unknown = LocalView {
            boot: None,
            ..view()
        };
        assert!(!h.is_dead_local(&unknown, |_| None));
        // Today's older form `host:pid:nonce` is never recognised as a dead local process.
        assert_eq!(Holder::parse("box:42:01NONCE"), None);
        assert!(!holder_is_dead_local_process("box:42:01NONCE"));
    }

    #[test]
    fn a_real_process_is_alive_while_it_runs_and_dead_once_it_exited() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("sleep runs");
        let pid = child.id();
        let me = Holder::this_process();
        let h = Holder {
            pid,
            start: process_start(pid),
            ..me
        };
        assert!(h.start.is_some(), "start time of pid {pid} readable");
        assert!(!holder_is_dead_local_process(&h.to_string()), "child alive");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(holder_is_dead_local_process(&h.to_string()), "child reaped");
        // This very process holds a live lease.
        assert!(!holder_is_dead_local_process(
            &Holder::this_process().to_string()
        ));
    }
}
