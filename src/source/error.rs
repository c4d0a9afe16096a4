//! Why a source could not be opened or read.
//!
//! Owns: [`SourceError`], whose messages name the file or database and the row, never the
//! job: the caller that knows the job adds it once. Must not: import anything else from
//! `source`.

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: cannot open: {source}; check the path in the job's `source.csv.path`")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot read line {line}: {message}")]
    Read {
        path: String,
        line: u64,
        message: String,
    },
    #[error("{path}: the header row is missing or unreadable: {message}")]
    Header { path: String, message: String },
    /// `source.csv.min_age_secs`: the exporter may still be writing the file.
    #[error(
        "{path}: modified {age_secs} s ago, less than `source.csv.min_age_secs` ({min_age_secs} s), so it may still be being written; nothing was read and the checkpoint is unchanged; the next run reads it once it is older"
    )]
    TooRecent {
        path: String,
        age_secs: u64,
        min_age_secs: u64,
    },
    /// The file's identity could not be turned into a checkpoint; resuming would never match.
    #[error(
        "{path}: the file's identity cannot be stored in a checkpoint ({message}); nothing was read; if the file's modification time is far in the future, `touch` it and run again"
    )]
    Identity { path: String, message: String },
    #[error("{describe}: {message}")]
    Database { describe: String, message: String },
    #[error(
        "{describe}: column `{column}` has type {db_type}, which cio-sync cannot read; cast it to text in the query (PostgreSQL `{column}::text`, MySQL `CAST({column} AS CHAR)`)"
    )]
    UnsupportedType {
        describe: String,
        column: String,
        db_type: String,
    },
}
