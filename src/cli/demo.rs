//! `cio-sync demo`: the example jobs against an in-process simulator.
//!
//! Owns: starting the simulator, pointing the configuration at it with demo credentials,
//! running every job in `jobs/` with embedded SQLite state, and telling the story of what
//! arrived (printed through `cli::output`, like every command).
//! Must not: reach the real Customer.io: hosts and credentials are always the simulator's,
//! whatever the environment says; or decide exit codes beyond what a run earned (the CLI's
//! exit point maps a [`DemoError`]).

use std::collections::BTreeMap;
use std::path::Path;

use super::output::{count, print_report_as, say};
use crate::config::{self, ConfigErrors, DatabaseUrl, Secret};
use crate::pipeline::{RunMode, StopSignal};
use crate::runner::{Runner, RunnerError};
use crate::simulator::{SimConfig, Simulator};
use crate::state::StateError;

/// Dead letters shown per job; the rest are counted.
const SHOWN_DEAD_LETTERS: i64 = 3;

/// Why the demo could not run. A configuration mistake is the user's to fix (exit 2); the
/// others are failures (exit 3).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DemoError {
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error("demo: cannot start the simulator: {0}")]
    Simulator(String),
    #[error("demo: {0}")]
    Runner(#[from] RunnerError),
    #[error("demo: {0}")]
    State(#[from] StateError),
    #[error("demo: reporting webhooks: {0}")]
    Webhooks(String),
}

/// Runs every job once against the simulator. `Ok` is the exit code: 0 when every job
/// finished (the example data has rows rejected on purpose, so dead letters are part of the
/// story, not a failure), 3 when a job failed.
pub(crate) async fn run(config_path: &Path, state: Option<String>) -> Result<u8, DemoError> {
    let sim_config = SimConfig::default();
    let sim = Simulator::start(sim_config.clone())
        .await
        .map_err(|e| DemoError::Simulator(e.to_string()))?;
    seed_app_fixtures(&sim);

    // The demo never needs real credentials: unset variables get the simulator's.
    let demo_env = |name: &str| match name {
        "CIO_SITE_ID" => Some(sim_config.site_id.clone()),
        "CIO_TRACK_API_KEY" => Some(sim_config.track_api_key.clone()),
        "CIO_APP_API_KEY" => Some(sim_config.app_api_key.clone()),
        other => std::env::var(other).ok(),
    };
    let cfg = config::load(config_path, &demo_env)?;
    let mut settings = cfg.settings.clone();
    settings.customerio.track_url = config::ApiUrl::new(sim.url());
    settings.customerio.app_url = config::ApiUrl::new(sim.url());
    settings.customerio.site_id = Some(Secret::new(sim_config.site_id.clone()));
    settings.customerio.track_api_key = Some(Secret::new(sim_config.track_api_key.clone()));
    settings.customerio.app_api_key = Some(Secret::new(sim_config.app_api_key.clone()));
    let base = config_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let state_given = state.is_some();
    settings.state_url = DatabaseUrl::new(
        state.unwrap_or_else(|| format!("sqlite://{}", base.join("state/demo.db").display())),
    );

    say!(
        "cio-sync demo: Customer.io simulator at {}, state in {}",
        sim.url(),
        settings.state_url
    );
    say!(
        "Running {} from {}:\n",
        count(cfg.jobs.len() as u64, "job"),
        settings.jobs_dir.display()
    );
    let runner = Runner::new(settings).await?;
    let me = invocation();
    let me_here = format!("{me} --state {}", runner.state.url().masked());
    let mut code = crate::exit::OK;
    for job in &cfg.jobs {
        // `full`: every demo run starts from the top, so it always shows the whole flow.
        match runner
            .run(job, RunMode::Normal { full: true }, StopSignal::never())
            .await
        {
            Ok(report) => {
                print_report_as(&report, &me_here);
                let letters = runner
                    .state
                    .dead_letters(&job.name, SHOWN_DEAD_LETTERS)
                    .await?;
                for l in &letters {
                    say!(
                        "    dead letter, line {}: {}",
                        l.line.unwrap_or(0),
                        l.reason
                    );
                }
                let total = runner.state.count_dead_letters(&job.name).await?;
                let more = total - letters.len() as i64;
                if more > 0 {
                    say!("    … and {more} more");
                }
                if !matches!(
                    report.outcome,
                    crate::state::Outcome::Succeeded | crate::state::Outcome::RejectedRows
                ) {
                    code = crate::exit::FAILED;
                }
            }
            Err(e) => {
                say!("{}: failed: {e}", job.name);
                code = crate::exit::FAILED;
            }
        }
    }

    let ops = sim.operations();
    let mut by_action: BTreeMap<String, usize> = BTreeMap::new();
    for op in &ops {
        *by_action.entry(op.action.clone()).or_default() += 1;
    }
    say!(
        "\nThe simulator accepted {}: {:?}",
        count(ops.len() as u64, "operation"),
        by_action
    );
    use crate::simulator::Entity;
    for (label, entity, action) in [
        ("identify", Entity::Person, "identify"),
        ("event", Entity::Person, "event"),
        ("delete", Entity::Person, "delete"),
        ("object identify", Entity::Object, "identify"),
        ("relationships", Entity::Object, "add_relationships"),
    ] {
        if let Some(op) = ops
            .iter()
            .find(|o| o.action == action && o.entity == entity)
            && let Ok(text) = serde_json::to_string(op)
        {
            say!("  e.g. {label}: {text}");
        }
    }
    let added = sim.segment_members_added();
    if !added.is_empty() {
        let n = added.len();
        say!(
            "  {n} {} added to manual segments",
            if n == 1 { "person" } else { "people" }
        );
    }
    demo_webhooks(&runner).await?;
    let state = runner.state.url().masked();
    say!("\nLook around the demo's state database:");
    say!("  {me} --state {state} status");
    say!("  {me} --state {state} dead-letters crm-people");
    if !state_given || state.starts_with("sqlite:") {
        say!(
            "  sqlite3 {} 'SELECT id, name, type FROM cio_segments'",
            state.trim_start_matches("sqlite://")
        );
        say!(
            "  sqlite3 {} 'SELECT object_type, metric, COUNT(*) FROM cio_message_events GROUP BY 1, 2'",
            state.trim_start_matches("sqlite://")
        );
    }
    sim.shutdown().await;
    Ok(code)
}

/// The reporting-webhook path: a receiver over the demo's state database, and the simulator
/// playing Customer.io's sender: signed events (some repeated, as retries are), then one badly
/// signed and one stale request, which must be refused.
async fn demo_webhooks(runner: &Runner) -> Result<(), DemoError> {
    use crate::simulator::webhooks::{RetryRule, Signing, WebhookPoster, sample_events};
    const KEY: &str = "demo-webhook-key";
    let fail = |e: &dyn std::fmt::Display| DemoError::Webhooks(e.to_string());
    let settings = config::WebhookSettings {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        path: "/cio/webhook".into(),
        signing_keys: vec![Secret::new(KEY)],
        tolerance: std::time::Duration::from_secs(300),
        max_body_bytes: 8 * 1024 * 1024,
        database: None,
    };
    let state = &runner.state;
    let store = crate::webhooks::open_store(
        &settings,
        state.pool(),
        state.backend(),
        state.url().masked(),
    )
    .await
    .map_err(|e| fail(&e))?;
    let before = store.count().await.map_err(|e| fail(&e))?;
    let stop = tokio_util::sync::CancellationToken::new();
    let receiver = crate::webhooks::start(&settings, store.clone(), stop.clone().cancelled_owned())
        .await
        .map_err(|e| fail(&e))?;
    let url = format!("http://{}/cio/webhook", receiver.addr);
    let poster = WebhookPoster::new(url.clone(), KEY).map_err(|e| fail(&e))?;
    // A run of its own each time, so the demo shows new rows whatever the state holds.
    let prefix = format!("demo-{}", ulid::Ulid::generate());
    let mut events = sample_events(&prefix, 14);
    events.extend(events[..4].to_vec());
    let deliveries = poster.deliver(&events, &RetryRule::default()).await;
    let delivered = deliveries.iter().filter(|d| d.delivered).count();
    let body = sample_events(&format!("{prefix}-bad"), 1)[0].to_string();
    let mut refused = Vec::new();
    for (what, signing) in [
        ("a wrong signature", Signing::BadSignature),
        ("a timestamp an hour old", Signing::Stale { secs: 3600 }),
    ] {
        let status = poster
            .post(body.as_bytes(), signing)
            .await
            .map_err(|e| fail(&e))?;
        refused.push(format!("{what} → {status}"));
    }
    let after = store.count().await.map_err(|e| fail(&e))?;
    stop.cancel();
    let _ = receiver.task.await;
    say!(
        "\nReporting webhooks: the simulator posted {} (4 of them twice, as Customer.io's retries do) to {url}: {delivered} answered 200, {} stored once in cio_message_events; {}: refused, nothing stored",
        count(events.len() as u64, "signed event"),
        after - before,
        refused.join(", ")
    );
    Ok(())
}

/// How to run this binary again from where the user is: `cargo run --release --` when it is
/// cargo's build (the README starts the demo with `cargo run --release -- demo`), else its
/// name.
fn invocation() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let profile = exe
        .parent()
        .filter(|dir| dir.parent().and_then(Path::file_name) == Some("target".as_ref()))
        .and_then(Path::file_name)
        .and_then(|p| p.to_str());
    match profile {
        Some("release") => "cargo run --release --".into(),
        Some("debug") => "cargo run --".into(),
        _ => "cio-sync".into(),
    }
}

/// Segments and campaigns for the example pull job to bring back, and the object type the
/// accounts job writes.
fn seed_app_fixtures(sim: &Simulator) {
    use crate::simulator::Member;
    use serde_json::json;
    sim.set_object_types(vec![json!({"id": "1", "name": "Accounts"})]);
    sim.set_segments(vec![
        json!({"id": 7, "deduplicate_id": "7:1700000000", "name": "VIP customers", "description": "Fed by jobs/vip-segment.yaml",
               "state": "finished", "progress": null, "type": "manual", "tags": ["crm"], "created_at": 1700000000, "updated_at": 1730000000}),
        json!({"id": 12, "deduplicate_id": "12:1700000000", "name": "Pro plan", "description": "plan = pro",
               "state": "finished", "progress": null, "type": "dynamic", "tags": null, "created_at": 1700000000, "updated_at": 1731000000}),
    ]);
    let members = |n: usize, prefix: &str| -> Vec<Member> {
        (1..=n)
            .map(|i| Member {
                id: Some(format!("cus_{i:04}")),
                email: Some(format!("{prefix}{i}@example.com")),
                cio_id: format!("a{i:07}"),
            })
            .collect()
    };
    sim.set_membership(7, members(10, "vip"));
    sim.set_membership(12, members(25, "pro"));
    sim.set_campaigns(vec![json!({"id": 5, "deduplicate_id": "5:1700000000", "name": "Welcome series",
        "description": "Welcome new trial signups", "type": "segment", "created": 1700000000, "updated": 1730000000,
        "active": true, "state": "running", "actions": [{"id": 259, "type": "email"}], "first_started": 1700000000,
        "tags": ["welcome"], "trigger_segment_ids": [12], "filter_segment_ids": [], "msg_templates": [{"id": 43, "type": "email"}]})]);
    sim.set_campaign_metrics(
        5,
        [
            ("sent".to_string(), vec![3, 5, 8, 13]),
            ("delivered".to_string(), vec![3, 5, 7, 13]),
            ("opened".to_string(), vec![1, 2, 4, 6]),
        ]
        .into_iter()
        .collect(),
    );
}
