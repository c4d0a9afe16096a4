//! cio-sync: scheduled batch syncs between a company's data and Customer.io.
//!
//! # Layout
//!
//! Data flows one way: source → mapping → batcher → sender → acknowledgement → checkpoint.
//!
//! - [`config`]: reading and validating `config.yaml` and `jobs/*.yaml` (never writes).
//! - [`source`]: CSV files and SQL queries, streamed, each row with its resume position.
//! - [`mapping`]: a row → one Customer.io operation, every limit checked before sending.
//! - [`change`]: change detection: identity keys, fingerprints, which attributes changed.
//! - [`batch`]: packing operations into v2 batches under the byte and item limits.
//! - [`http`]: the shared HTTP client, rate gate and retry policy.
//! - [`track`]: the Track API client (v2 batch, v1, segments) and its outcomes per row.
//! - [`app_api`]: the App API client (segments, membership, campaigns, metrics).
//! - [`pull`]: pull jobs: App API → database tables.
//! - [`state`]: run history, checkpoints, dead letters, leases (SQLite or PostgreSQL).
//! - [`pipeline`]: one push run, wiring the stages and committing progress.
//! - [`observe`]: typed events that log and count together, metrics, `/metrics` and health.
//! - [`runner`]: running jobs by name (leases, reports), shared by the CLI and the daemon.
//! - [`schedule`]: the daemon: cron (5 or 6 fields, per-job zones), catch-up, reload, replicas sharing the budget, systemd notify, graceful stop.
//! - [`simulator`]: a local Customer.io for tests, benchmarks and the demo.
//! - [`preflight`]: the file and connection checks of `cio-sync validate`.
//! - [`cli`]: the command line (`cli/output.rs`: what it prints; `cli/demo.rs`: the demo);
//!   [`exit`]: the exit codes.
//! - [`testing`]: test support (a database per test).

// Modules the binary, tests and benches do not use are `pub(crate)`, and inside them nothing
// says `pub` that cannot be reached from outside: rustc then reports what is unused.
#![warn(unreachable_pub)]

pub(crate) mod app_api;
pub mod batch;
pub mod change;
pub mod cli;
pub mod config;
pub(crate) mod exit;
pub mod http;
pub mod mapping;
pub mod observe;
pub mod pipeline;
pub(crate) mod preflight;
pub mod pull;
pub mod runner;
pub(crate) mod schedule;
pub(crate) mod shutdown;
pub mod simulator;
pub mod source;
pub mod state;
#[doc(hidden)]
pub mod testing;
pub mod track;
