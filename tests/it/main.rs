//! Integration tests: the real pipeline, the real binary, real databases, and the local
//! Customer.io simulator. One test binary; each test gets its own temp folder, state
//! database and simulator.

mod answers;
mod backfill;
mod change;
mod cli;
mod cli_output;
mod config;
mod config_load;
mod daemon;
mod faults;
mod helpers;
mod install;
mod objects;
mod observe;
mod pipeline;
mod preflight;
mod pull;
mod pull_store;
mod push;
mod resume;
mod signals;
mod sql;
