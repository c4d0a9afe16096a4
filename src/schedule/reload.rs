//! What a reload request (SIGHUP) changes: the jobs the daemon schedules from now on.
//!
//! Owns: comparing the jobs before and after a reload (added, removed, changed) so the log
//! says what took effect. Must not: read files (the daemon's loader does, and validates all of
//! them first: a reload with any problem changes nothing), or touch running jobs, which
//! finish under the settings and job files they started with.

use std::collections::BTreeMap;

use crate::config::JobSpec;

/// Names of the jobs a reload added, removed and changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    pub(crate) added: Vec<String>,
    pub(crate) removed: Vec<String>,
    pub(crate) changed: Vec<String>,
}

impl Changes {
    /// Compares what the daemon schedules (`old`) with what the files now say (`new`). A job
    /// counts as changed when anything but a secret changed (secrets are redacted in the
    /// comparison, and take effect from the next tick all the same).
    pub(crate) fn between(old: &[JobSpec], new: &[JobSpec]) -> Self {
        let old: BTreeMap<&str, &JobSpec> = old.iter().map(|j| (j.name.as_str(), j)).collect();
        let new: BTreeMap<&str, &JobSpec> = new.iter().map(|j| (j.name.as_str(), j)).collect();
        let mut c = Changes::default();
        for (name, job) in &new {
            match old.get(name) {
                None => c.added.push(name.to_string()),
                Some(before) if format!("{before:?}") != format!("{job:?}") => {
                    c.changed.push(name.to_string())
                }
                Some(_) => {}
            }
        }
        c.removed = old
            .keys()
            .filter(|name| !new.contains_key(*name))
            .map(|n| n.to_string())
            .collect();
        c
    }

    fn list(names: &[String]) -> String {
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    }

    /// One line for the log.
    pub(crate) fn describe(&self) -> String {
        format!(
            "added: {}; removed: {}; changed: {}",
            Self::list(&self.added),
            Self::list(&self.removed),
            Self::list(&self.changed)
        )
    }
}
