//! The last configuration layer: `CIO_SYNC__SECTION__KEY` environment overrides of
//! `config.yaml`, and the strict typed parse they take part in.
//!
//! Owns: turning a variable's name into a key path (`CIO_SYNC__TRACK__RATE_LIMIT_PER_SEC` is
//! `track.rate_limit_per_sec`), giving its text the key's type (number, bool or string, as the
//! typed parse accepts), and naming the variable when its key is unknown or its value does not
//! fit; and going on past a file's first parse error, so each of its problems is listed.
//! Must not: read the environment itself (the caller passes the variables), expand
//! `${VAR}` in an override, or show an override's value (it may be a secret).

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{ConfigError, OVERRIDE_PREFIX};

/// Past this many, a file is probably not a configuration file at all: stop listing.
const MAX_PROBLEMS_PER_FILE: usize = 50;

/// One override being tried.
struct Override<'a> {
    var: &'a str,
    /// The key path, lower-cased segments of the variable's name.
    path: Vec<String>,
    /// Dotted, as serde names the key in its errors.
    key: String,
    /// The typed readings of the text still to try, most specific first; the text is last.
    candidates: Vec<Value>,
    at: usize,
    /// What the file had at the key, put back when the override is refused.
    original: Option<Value>,
    /// Index of the first path segment this override created (sections the file lacked).
    created_from: Option<usize>,
    active: bool,
}

/// Applies `overrides` to `tree` and parses it as `T`, strictly. Every refused override is
/// reported by its variable's name; problems of the file itself are reported as before.
pub(super) fn deserialize<T: DeserializeOwned>(
    file: &Path,
    tree: &mut Value,
    overrides: &[(String, Option<String>)],
) -> Result<T, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut active = Vec::new();
    for (var, value) in overrides {
        match place(file, tree, var, value.as_deref()) {
            Ok(o) => active.push(o),
            Err(e) => errors.push(e),
        }
    }
    // Keys of the file taken out after their error was recorded, so the parse can go on and
    // report the file's next problem too (serde stops at the first).
    let mut removed: Vec<Vec<String>> = Vec::new();
    loop {
        let err = match serde_path_to_error::deserialize::<_, T>(tree.clone()) {
            Ok(t) if errors.is_empty() => return Ok(t),
            Ok(_) => return Err(errors),
            Err(e) => e,
        };
        let at = err.path().to_string();
        let at = if at == "." { String::new() } else { at };
        let keys: Option<Vec<String>> = err
            .path()
            .iter()
            .map(|seg| match seg {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                _ => None,
            })
            .collect();
        let message = err.into_inner().to_string();
        let unknown = message.starts_with("unknown field");
        let culprit = active.iter_mut().find(|o| {
            o.active
                && (o.key == at || (unknown && o.key.starts_with(&format!("{at}."))))
        });
        let Some(o) = culprit else {
            // A required key missing only because it was taken out is no new problem.
            let follows_removal = keys.as_ref().is_some_and(|k| {
                removed.iter().any(|r| {
                    r.len() == k.len() + 1
                        && r.starts_with(k)
                        && message.starts_with(&format!("missing field `{}`", r[k.len()]))
                })
            });
            if follows_removal {
                return Err(errors);
            }
            errors.push(ConfigError::new(file, at, message));
            match keys {
                Some(k)
                    if !k.is_empty()
                        && errors.len() < MAX_PROBLEMS_PER_FILE
                        && parent(tree, &k).is_some_and(|m| m.contains_key(&k[k.len() - 1])) =>
                {
                    set(tree, &k, None);
                    removed.push(k);
                    continue;
                }
                _ => return Err(errors),
            }
        };
        if o.at + 1 < o.candidates.len() {
            o.at += 1;
            set(tree, &o.path, Some(o.candidates[o.at].clone()));
            continue;
        }
        errors.push(ConfigError::new(
            file,
            o.key.clone(),
            if unknown {
                format!(
                    "{} sets a key config.yaml does not have ({message}): fix the variable's name (`{OVERRIDE_PREFIX}SECTION__KEY`) or unset it",
                    o.var
                )
            } else {
                format!(
                    "{} does not hold a valid value: {message}; fix or unset the variable",
                    o.var
                )
            },
        ));
        o.active = false;
        set(tree, &o.path, o.original.take());
        // Sections made for this override alone go too (another override may share them).
        if let Some(from) = o.created_from {
            for end in (from..o.path.len() - 1).rev() {
                let section = &o.path[..=end];
                let empty = parent(tree, section)
                    .and_then(|m| m.get(&section[end]))
                    .is_some_and(|v| v.as_object().is_some_and(Map::is_empty));
                if !empty {
                    break;
                }
                set(tree, section, None);
            }
        }
    }
}

/// Puts an override's first reading into the tree.
fn place<'a>(
    file: &Path,
    tree: &mut Value,
    var: &'a str,
    value: Option<&str>,
) -> Result<Override<'a>, ConfigError> {
    let refuse = |key: String, why: String| ConfigError::new(file, key, format!("{var} {why}"));
    let name = var.strip_prefix(OVERRIDE_PREFIX).unwrap_or(var);
    let path: Vec<String> = name.split("__").map(str::to_ascii_lowercase).collect();
    if path
        .iter()
        .any(|s| s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        return Err(refuse(
            String::new(),
            format!(
                "does not name a config.yaml key: write {OVERRIDE_PREFIX}SECTION__KEY with `__` between levels, e.g. {OVERRIDE_PREFIX}TRACK__RATE_LIMIT_PER_SEC=50"
            ),
        ));
    }
    let key = path.join(".");
    let Some(value) = value else {
        return Err(refuse(key, "is not valid UTF-8: set it to text".into()));
    };
    let mut candidates = Vec::new();
    if value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false") {
        candidates.push(Value::Bool(value.eq_ignore_ascii_case("true")));
    } else if let Ok(n) = value.parse::<u64>() {
        candidates.push(Value::from(n));
    } else if let Ok(n) = value.parse::<i64>() {
        candidates.push(Value::from(n));
    } else if let Some(n) = value.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
        candidates.push(Value::Number(n));
    }
    candidates.push(Value::String(value.to_string()));

    let mut created_from = None;
    let mut node = tree;
    for (i, seg) in path[..path.len() - 1].iter().enumerate() {
        let Value::Object(map) = node else {
            return Err(refuse(
                key.clone(),
                format!("sets `{key}`, but `{}` is not a section", path[..i].join(".")),
            ));
        };
        if !map.contains_key(seg) {
            created_from.get_or_insert(i);
        }
        node = map
            .entry(seg.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    let Value::Object(map) = node else {
        return Err(refuse(
            key.clone(),
            format!(
                "sets `{key}`, but `{}` is not a section",
                path[..path.len() - 1].join(".")
            ),
        ));
    };
    let last = &path[path.len() - 1];
    let original = map.insert(last.clone(), candidates[0].clone());
    Ok(Override {
        var,
        path,
        key,
        candidates,
        at: 0,
        original,
        created_from,
        active: true,
    })
}

/// The object holding `path`'s last segment, when every section on the way exists.
fn parent<'t>(tree: &'t mut Value, path: &[String]) -> Option<&'t mut Map<String, Value>> {
    let mut node = tree;
    for seg in &path[..path.len() - 1] {
        node = node.as_object_mut()?.get_mut(seg)?;
    }
    node.as_object_mut()
}

/// Sets (or, with `None`, removes) the value at `path`.
fn set(tree: &mut Value, path: &[String], value: Option<Value>) {
    if let Some(map) = parent(tree, path) {
        let last = path[path.len() - 1].clone();
        match value {
            Some(v) => {
                map.insert(last, v);
            }
            None => {
                map.remove(&last);
            }
        }
    }
}
