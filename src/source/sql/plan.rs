//! The SQL text a source runs, and where a read starts: pure, no I/O.
//!
//! Owns: quoting the configured cursor/tiebreak column names as identifiers per backend,
//! wrapping the user's query (probe, full read, keyset chunks), the source identity stored
//! with checkpoints, and turning a checkpoint into a start position. Must not: touch a
//! database, or put any value into SQL text (values are always bound parameters; only the
//! column names from the job file and the `batch_rows` number are spliced in).

use serde_json::json;
use sha2::{Digest, Sha256};

use super::key::{Key, KeyKind};
use crate::source::row::{Checkpoint, ResumePoint};

/// The database family, chosen by the URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Backend {
    Postgres,
    MySql,
    Sqlite,
}

impl Backend {
    /// `postgres`/`postgresql`, `mysql`/`mariadb`, `sqlite`; `None` for anything else.
    pub(super) fn from_scheme(scheme: &str) -> Option<Backend> {
        match scheme {
            "postgres" | "postgresql" => Some(Backend::Postgres),
            "mysql" | "mariadb" => Some(Backend::MySql),
            "sqlite" => Some(Backend::Sqlite),
            _ => None,
        }
    }

    /// `name` as a quoted identifier, or why it cannot be one. Names come from the job file;
    /// refusing quote characters (rather than escaping them) keeps the rule easy to state.
    pub(super) fn quote_ident(self, name: &str) -> Result<String, String> {
        if name.is_empty() {
            return Err("is empty".into());
        }
        if let Some(c) = name
            .chars()
            .find(|c| matches!(c, '"' | '`' | '\'' | '\\' | '\0'))
        {
            return Err(format!(
                "contains the character {c:?}, which cio-sync does not allow in column names; alias the column in the query (`AS updated_at`)"
            ));
        }
        Ok(match self {
            Backend::MySql => format!("`{name}`"),
            Backend::Postgres | Backend::Sqlite => format!("\"{name}\""),
        })
    }

    /// The `n`-th (1-based) bind parameter, cast where the backend would otherwise compare
    /// it with the wrong semantics (PostgreSQL has no implicit text → numeric/uuid cast; MySQL
    /// compares a string with a DECIMAL as a double).
    fn placeholder(self, n: usize, kind: KeyKind) -> String {
        match (self, kind) {
            (Backend::Postgres, KeyKind::Decimal) => format!("CAST(${n} AS numeric)"),
            (Backend::Postgres, KeyKind::Uuid) => format!("CAST(${n} AS uuid)"),
            (Backend::Postgres, _) => format!("${n}"),
            (Backend::MySql, KeyKind::Decimal) => "CAST(? AS DECIMAL(65,30))".into(),
            (Backend::MySql | Backend::Sqlite, _) => "?".into(),
        }
    }

    /// Whether each placeholder is bound separately (`?`), so the cursor value is bound twice.
    pub(super) fn positional(self) -> bool {
        !matches!(self, Backend::Postgres)
    }
}

/// The user's query as a derived table. The newlines keep a trailing `-- comment` in the
/// query from swallowing the closing parenthesis.
fn wrapped(query: &str) -> String {
    format!("SELECT * FROM (\n{query}\n) AS cio_src")
}

/// The query as written, minus trailing whitespace and semicolons (a common copy-paste
/// leftover that would break the wrapping).
pub(super) fn clean_query(query: &str) -> &str {
    query.trim_end_matches(|c: char| c.is_whitespace() || c == ';')
}

/// `LIMIT 0` probe: the columns and their types without reading a row.
pub(super) fn probe_sql(query: &str) -> String {
    format!("{} LIMIT 0", wrapped(clean_query(query)))
}

/// The configured cursor, resolved against the query's columns and quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CursorPlan {
    /// As configured in the job file (what the identity records).
    pub cursor_name: String,
    pub tiebreak_name: String,
    /// Positions in the query's columns.
    pub cursor_index: usize,
    pub tiebreak_index: usize,
    /// Quoted identifiers, spelled as the query returns them.
    pub cursor_sql: String,
    pub tiebreak_sql: String,
}

/// Finds `name` among `columns`: exactly, else ASCII-case-insensitively when that is unique
/// (PostgreSQL folds unquoted names to lower case, so `updatedAt` in a job means `updatedat`).
pub(super) fn find_column(columns: &[String], name: &str) -> Option<usize> {
    if let Some(i) = columns.iter().position(|c| c == name) {
        return Some(i);
    }
    let mut matches = columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.eq_ignore_ascii_case(name));
    match (matches.next(), matches.next()) {
        (Some((i, _)), None) => Some(i),
        _ => None,
    }
}

impl CursorPlan {
    /// Resolves the configured names against the query's columns; the error says which
    /// setting is wrong and how to fix it.
    pub(super) fn resolve(
        backend: Backend,
        columns: &[String],
        cursor: &str,
        tiebreak: &str,
    ) -> Result<CursorPlan, String> {
        let find = |key: &str, name: &str| -> Result<(usize, String), String> {
            let i = find_column(columns, name).ok_or_else(|| {
                format!(
                    "`source.sql.cursor.{key}` names `{name}`, which is not a column of the query (it returns: {}); add it to the query's select list",
                    columns.join(", ")
                )
            })?;
            let quoted = backend.quote_ident(&columns[i]).map_err(|why| {
                format!(
                    "`source.sql.cursor.{key}`: the column name `{}` {why}",
                    columns[i]
                )
            })?;
            Ok((i, quoted))
        };
        let (cursor_index, cursor_sql) = find("column", cursor)?;
        let (tiebreak_index, tiebreak_sql) = find("tiebreak", tiebreak)?;
        Ok(CursorPlan {
            cursor_name: cursor.to_string(),
            tiebreak_name: tiebreak.to_string(),
            cursor_index,
            tiebreak_index,
            cursor_sql,
            tiebreak_sql,
        })
    }

    /// The first chunk of a read with no position yet.
    pub(super) fn first_chunk_sql(&self, query: &str, limit: u32) -> String {
        format!(
            "{} ORDER BY {c}, {t} LIMIT {limit}",
            wrapped(clean_query(query)),
            c = self.cursor_sql,
            t = self.tiebreak_sql
        )
    }

    /// The chunk strictly after a (cursor, tiebreak) position whose values have these kinds.
    ///
    /// "After" is `cursor > c OR (cursor = c AND tiebreak > t)`, spelled the way each
    /// planner turns into an index range on `(cursor, tiebreak)`: PostgreSQL only does so for
    /// the row comparison `(cursor, tiebreak) > (c, t)` (with the OR it scans the index from
    /// the start on every chunk), while MariaDB does so only for the OR (the row comparison
    /// becomes a full scan and sort). SQLite handles both. For non-NULL values the two are the
    /// same predicate.
    pub(super) fn next_chunk_sql(
        &self,
        backend: Backend,
        query: &str,
        limit: u32,
        cursor: KeyKind,
        tiebreak: KeyKind,
    ) -> String {
        let (c, t) = (&self.cursor_sql, &self.tiebreak_sql);
        let condition = if backend.positional() {
            // `?` placeholders: the cursor value is bound a second time for its second use.
            let (p1, p2) = (
                backend.placeholder(1, cursor),
                backend.placeholder(3, tiebreak),
            );
            format!("({c} > {p1} OR ({c} = {p1} AND {t} > {p2}))")
        } else {
            let (p1, p2) = (
                backend.placeholder(1, cursor),
                backend.placeholder(2, tiebreak),
            );
            format!("({c}, {t}) > ({p1}, {p2})")
        };
        format!(
            "{} WHERE {condition} ORDER BY {c}, {t} LIMIT {limit}",
            wrapped(clean_query(query))
        )
    }
}

/// What a checkpoint must match to be resumed. Incremental reads are keyed by their cursor
/// columns only (editing the query's filters or select list keeps the position); full reads
/// by the query text, since "skip n rows" means nothing for a different query.
pub(super) fn identity(query: &str, cursor: Option<(&str, &str)>) -> serde_json::Value {
    match cursor {
        Some((c, t)) => json!({ "kind": "sql", "cursor": c, "tiebreak": t }),
        None => {
            let digest = Sha256::digest(clean_query(query).as_bytes());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            json!({ "kind": "sql", "query_sha256": hex })
        }
    }
}

/// Where a read begins.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Start {
    /// From the first row; no checkpoint applies.
    Fresh,
    /// Full read: run the query again and skip the rows a previous, interrupted run settled.
    SkipRows(u64),
    /// Incremental read: the rows strictly after this (cursor, tiebreak); `row` rows of the
    /// current pass were read before.
    After {
        cursor: Key,
        tiebreak: Key,
        row: u64,
    },
}

impl Start {
    /// The position reported as `resumed_at`, or `None` for a fresh read.
    pub(super) fn resumed_at(&self) -> Option<ResumePoint> {
        match self {
            Start::Fresh => None,
            Start::SkipRows(row) => Some(ResumePoint::Sql {
                cursor: None,
                tiebreak: None,
                row: *row,
            }),
            Start::After {
                cursor,
                tiebreak,
                row,
            } => Some(ResumePoint::Sql {
                cursor: Some(cursor.to_json()),
                tiebreak: Some(tiebreak.to_json()),
                row: *row,
            }),
        }
    }
}

/// Why a stored checkpoint cannot be used and the read should not silently start over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BadCheckpoint(pub String);

/// Decides where to start from the job's checkpoint (already matched to the job).
///
/// - Different identity (other cursor columns, other full query, a CSV checkpoint): fresh.
/// - Incremental: always strictly after the stored (cursor, tiebreak), also when the last run
///   completed; that is what picks up rows inserted or updated since. A completed pass
///   starts a new row count.
/// - Full: a completed checkpoint means the next run re-reads (and re-sends) everything; an
///   interrupted one skips the rows already settled.
pub(super) fn start(
    identity: &serde_json::Value,
    checkpoint: Option<&Checkpoint>,
    incremental: bool,
) -> Result<Start, BadCheckpoint> {
    let Some(cp) = checkpoint else {
        return Ok(Start::Fresh);
    };
    if &cp.source != identity {
        return Ok(Start::Fresh);
    }
    let ResumePoint::Sql {
        cursor,
        tiebreak,
        row,
    } = &cp.resume
    else {
        return Ok(Start::Fresh);
    };
    if !incremental {
        return Ok(if cp.complete || *row == 0 {
            Start::Fresh
        } else {
            Start::SkipRows(*row)
        });
    }
    let row = if cp.complete { 0 } else { *row };
    match (cursor, tiebreak) {
        (Some(c), Some(t)) => {
            let parse = |what: &str, v: &serde_json::Value| {
                Key::from_json(v).map_err(|e| {
                    BadCheckpoint(format!("its {what} position {v} cannot be read ({e})"))
                })
            };
            Ok(Start::After {
                cursor: parse("cursor", c)?,
                tiebreak: parse("tiebreak", t)?,
                row,
            })
        }
        // Every row so far lacked a position (NULL cursor values): nothing to continue after.
        _ => Ok(Start::Fresh),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn identifiers_are_quoted_per_backend_and_quote_characters_are_refused() {
        assert_eq!(
            Backend::Postgres.quote_ident("updated_at").unwrap(),
            "\"updated_at\""
        );
        assert_eq!(
            Backend::Sqlite.quote_ident("Updated At").unwrap(),
            "\"Updated At\""
        );
        assert_eq!(
            Backend::MySql.quote_ident("updated_at").unwrap(),
            "`updated_at`"
        );
        for bad in ["a\"b", "a`b", "a'b", "a\\b", ""] {
            assert!(Backend::Postgres.quote_ident(bad).is_err(), "{bad:?}");
            assert!(Backend::MySql.quote_ident(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_query_is_wrapped_with_newlines_and_without_its_trailing_semicolon() {
        assert_eq!(
            probe_sql("SELECT id FROM t -- all of them\n;  \n"),
            "SELECT * FROM (\nSELECT id FROM t -- all of them\n) AS cio_src LIMIT 0"
        );
    }

    #[test]
    fn chunks_bind_the_position_as_parameters_with_casts_where_needed() {
        let plan = CursorPlan::resolve(
            Backend::Postgres,
            &cols(&["id", "updated_at"]),
            "updated_at",
            "id",
        )
        .unwrap();
        assert_eq!(
            plan.first_chunk_sql("SELECT * FROM users", 100),
            "SELECT * FROM (\nSELECT * FROM users\n) AS cio_src ORDER BY \"updated_at\", \"id\" LIMIT 100"
        );
        assert_eq!(
            plan.next_chunk_sql(
                Backend::Postgres,
                "SELECT * FROM users",
                100,
                KeyKind::Timestamptz,
                KeyKind::Uuid
            ),
            "SELECT * FROM (\nSELECT * FROM users\n) AS cio_src WHERE (\"updated_at\", \"id\") > ($1, CAST($2 AS uuid)) ORDER BY \"updated_at\", \"id\" LIMIT 100"
        );
        let plan = CursorPlan::resolve(Backend::MySql, &cols(&["id", "v"]), "v", "id").unwrap();
        assert_eq!(
            plan.next_chunk_sql(
                Backend::MySql,
                "SELECT id, v FROM t",
                5,
                KeyKind::Decimal,
                KeyKind::Int
            ),
            "SELECT * FROM (\nSELECT id, v FROM t\n) AS cio_src WHERE (`v` > CAST(? AS DECIMAL(65,30)) OR (`v` = CAST(? AS DECIMAL(65,30)) AND `id` > ?)) ORDER BY `v`, `id` LIMIT 5"
        );
    }

    #[test]
    fn cursor_columns_resolve_case_insensitively_only_when_unambiguous() {
        let plan = CursorPlan::resolve(
            Backend::Postgres,
            &cols(&["id", "updatedat"]),
            "updatedAt",
            "ID",
        )
        .unwrap();
        assert_eq!((plan.cursor_index, plan.tiebreak_index), (1, 0));
        assert_eq!(plan.cursor_sql, "\"updatedat\"");
        assert_eq!(find_column(&cols(&["a", "A"]), "a"), Some(0));
        assert_eq!(find_column(&cols(&["a", "A"]), "b"), None);
        assert_eq!(find_column(&cols(&["aa", "AA"]), "Aa"), None);
        let err = CursorPlan::resolve(
            Backend::Postgres,
            &cols(&["id", "email"]),
            "updated_at",
            "id",
        )
        .unwrap_err();
        assert!(
            err.contains("`source.sql.cursor.column` names `updated_at`")
                && err.contains("id, email"),
            "{err}"
        );
    }

    #[test]
    fn incremental_checkpoints_continue_after_their_position_even_when_complete() {
        let id = identity("q", Some(("updated_at", "id")));
        let cp = |complete| Checkpoint {
            source: id.clone(),
            resume: ResumePoint::Sql {
                cursor: Some(Key::Int(7).to_json()),
                tiebreak: Some(Key::Int(42).to_json()),
                row: 9,
            },
            complete,
        };
        assert_eq!(
            start(&id, Some(&cp(true)), true).unwrap(),
            Start::After {
                cursor: Key::Int(7),
                tiebreak: Key::Int(42),
                row: 0
            }
        );
        assert_eq!(
            start(&id, Some(&cp(false)), true).unwrap(),
            Start::After {
                cursor: Key::Int(7),
                tiebreak: Key::Int(42),
                row: 9
            }
        );
        // Other cursor columns: start over.
        let other = identity("q", Some(("created_at", "id")));
        assert_eq!(start(&other, Some(&cp(false)), true).unwrap(), Start::Fresh);
        // A position that cannot be read is an error, not a silent full re-send.
        let mut bad = cp(false);
        bad.resume = ResumePoint::Sql {
            cursor: Some(json!(7)),
            tiebreak: Some(json!(42)),
            row: 9,
        };
        assert!(start(&id, Some(&bad), true).is_err());
    }

    #[test]
    fn full_reads_skip_settled_rows_unless_complete_or_the_query_changed() {
        let id = identity("SELECT * FROM t", None);
        let cp = |complete| Checkpoint {
            source: id.clone(),
            resume: ResumePoint::Sql {
                cursor: None,
                tiebreak: None,
                row: 500,
            },
            complete,
        };
        assert_eq!(
            start(&id, Some(&cp(false)), false).unwrap(),
            Start::SkipRows(500)
        );
        assert_eq!(start(&id, Some(&cp(true)), false).unwrap(), Start::Fresh);
        assert_eq!(
            start(
                &identity("SELECT * FROM t WHERE x", None),
                Some(&cp(false)),
                false
            )
            .unwrap(),
            Start::Fresh
        );
        // Trailing semicolons do not change the identity.
        assert_eq!(identity("SELECT * FROM t;\n", None), id);
        assert_eq!(start(&id, None, false).unwrap(), Start::Fresh);
    }
}
