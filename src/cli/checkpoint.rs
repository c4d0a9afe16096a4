//! `cio-sync checkpoint show JOB [--json]` and `cio-sync checkpoint reset JOB [--yes]`.
//!
//! Owns: printing a job's checkpoints with what change detection knows (identities, bytes of
//! fingerprints), and resetting: the job's own checkpoint is deleted and its fingerprints
//! forgotten, so the next run reads and sends everything. A reset asks on a terminal and
//! refuses off a terminal without `--yes`. Must not: run jobs or touch other jobs' state.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Result;
use clap::Subcommand;

use super::output::say;
use super::{Global, known_job, load_for_state, open_state, usage};
use crate::exit;
use crate::state::Scope;

#[derive(Subcommand, Debug)]
pub enum CheckpointAction {
    /// Where the job resumes, and how many identities change detection knows.
    Show {
        /// The job (file stem in jobs_dir).
        job: String,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Forget the job's checkpoint and fingerprints: the next run reads and sends everything.
    Reset {
        /// The job (file stem in jobs_dir).
        job: String,
        /// Do not ask (needed when stdin is not a terminal).
        #[arg(long)]
        yes: bool,
    },
}

pub(super) async fn run(global: &Global, action: CheckpointAction) -> Result<u8> {
    match action {
        CheckpointAction::Show { job, json } => {
            let view = load_for_state(global)?;
            let state = open_state(&view.settings).await?;
            known_job(&view, &state, &job).await?;
            let checkpoints: Vec<_> = state
                .checkpoints()
                .await?
                .into_iter()
                .filter(|c| c.job == job)
                .collect();
            let identities = state.count_fingerprints(&job).await?;
            let bytes = state.fingerprint_bytes(&job).await?;
            if json {
                let out = serde_json::json!({
                    "job": job,
                    "checkpoints": checkpoints,
                    "fingerprints": { "identities": identities, "bytes": bytes },
                });
                say!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                if checkpoints.is_empty() {
                    say!("{job}: no checkpoint (the next run reads from the start)");
                }
                for c in &checkpoints {
                    say!(
                        "{job} [{}]: {} (run {}, updated {})",
                        c.scope,
                        c.position,
                        c.run_id,
                        chrono::DateTime::from_timestamp_millis(c.updated_at)
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_default()
                    );
                }
                say!("{job}: fingerprints of {identities} identities ({bytes} bytes)");
            }
            Ok(exit::OK)
        }
        CheckpointAction::Reset { job, yes } => {
            let view = load_for_state(global)?;
            let state = open_state(&view.settings).await?;
            known_job(&view, &state, &job).await?;
            if !yes {
                if !std::io::stdin().is_terminal() {
                    return Err(usage(format!(
                        "`checkpoint reset {job}` makes the next run send every row again; stdin is not a terminal, so it cannot ask: add --yes"
                    )));
                }
                print!(
                    "Reset job `{job}`? Its next run reads the whole source and sends every row again. [y/N] "
                );
                let _ = std::io::stdout().flush();
                let mut answer = String::new();
                std::io::stdin().lock().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    say!("{job}: nothing reset");
                    return Ok(exit::OK);
                }
            }
            state.reset_checkpoint(&job, &Scope::Job).await?;
            let forgotten = state.forget_fingerprints(&job).await?;
            say!("{job}: checkpoint reset, fingerprints of {forgotten} identities forgotten");
            Ok(exit::OK)
        }
    }
}
