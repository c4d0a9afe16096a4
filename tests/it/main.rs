//! Integration tests: the real pipeline, the real binary, real databases, and the local
//! Customer.io simulator. One test binary; each test gets its own temp folder, state
//! database and simulator.

mod cli;
mod config;
mod faults;
mod helpers;
mod pipeline;
mod pull;
mod push;
mod resume;
mod sql;
