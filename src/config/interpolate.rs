//! `${VAR}` interpolation of configuration values from the environment.
//!
//! Owns: replacing `${NAME}` (and `${NAME:-default}`) inside string scalars of a parsed YAML
//! tree, and reporting every missing variable with the key that uses it.
//! Must not: read files, or touch anything but string scalars (so a value can never inject
//! YAML structure). `$${` is a literal `${`.

use serde_json::Value;

/// How many bytes all string values of one file may hold once expanded: the same bound as
/// a file's own size (`MAX_FILE_BYTES`), so `${VAR}` cannot grow a small file past what
/// could have been written out in full.
pub const MAX_EXPANDED_BYTES: usize = super::MAX_FILE_BYTES;

/// A variable that was referenced but is not set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingVar {
    /// Dotted key path where it is used, e.g. `customerio.track_api_key`.
    pub key: String,
    pub var: String,
}

/// A variable that was referenced and set: which key it fed, and whether it was empty (a
/// secret set to `""` is caught by name later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarUse {
    pub key: String,
    pub var: String,
    pub empty: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterpolateError {
    /// Every variable that is referenced but not set.
    Missing(Vec<MissingVar>),
    /// Expanding `var` at `key` took the file's values past `limit` bytes.
    TooLarge {
        key: String,
        var: String,
        limit: usize,
    },
}

/// Interpolates every string in `value`, using `lookup` for variables, within
/// [`MAX_EXPANDED_BYTES`]; returns the variables used.
pub fn interpolate(
    value: &mut Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<VarUse>, InterpolateError> {
    interpolate_within(value, lookup, MAX_EXPANDED_BYTES)
}

/// [`interpolate`] with an explicit budget of expanded bytes.
pub fn interpolate_within(
    value: &mut Value,
    lookup: &dyn Fn(&str) -> Option<String>,
    budget: usize,
) -> Result<Vec<VarUse>, InterpolateError> {
    let mut w = Walk {
        lookup,
        missing: Vec::new(),
        used: Vec::new(),
        remaining: budget,
        limit: budget,
        too_large: None,
    };
    w.walk(value, String::new());
    if let Some(e) = w.too_large {
        return Err(e);
    }
    if w.missing.is_empty() {
        Ok(w.used)
    } else {
        Err(InterpolateError::Missing(w.missing))
    }
}

struct Walk<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    missing: Vec<MissingVar>,
    used: Vec<VarUse>,
    /// Bytes of expanded text still allowed for the whole file.
    remaining: usize,
    limit: usize,
    too_large: Option<InterpolateError>,
}

impl Walk<'_> {
    fn walk(&mut self, value: &mut Value, path: String) {
        if self.too_large.is_some() {
            return;
        }
        match value {
            Value::String(s) if s.contains('$') => {
                if let Some(out) = self.interpolate_str(s, &path) {
                    *s = out;
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.walk(item, format!("{path}[{i}]"));
                }
            }
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    let child = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    self.walk(v, child);
                }
            }
            _ => {}
        }
    }

    /// Appends `text` to `out` within the budget; `false` (and the error recorded) when the
    /// budget is spent, so a huge expansion stops before it is built.
    fn push(&mut self, out: &mut String, text: &str, path: &str, var: &str) -> bool {
        if text.len() > self.remaining {
            self.too_large = Some(InterpolateError::TooLarge {
                key: path.to_string(),
                var: var.to_string(),
                limit: self.limit,
            });
            return false;
        }
        self.remaining -= text.len();
        out.push_str(text);
        true
    }

    /// The expanded string, or `None` when the budget ran out.
    fn interpolate_str(&mut self, s: &str, path: &str) -> Option<String> {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            if !self.push(&mut out, &rest[..i], path, "") {
                return None;
            }
            let after = &rest[i..];
            if let Some(stripped) = after.strip_prefix("$${") {
                if !self.push(&mut out, "${", path, "") {
                    return None;
                }
                rest = stripped;
            } else if let Some(body) = after.strip_prefix("${") {
                match body.find('}') {
                    Some(end) => {
                        let expr = &body[..end];
                        let (name, default) = match expr.split_once(":-") {
                            Some((n, d)) => (n, Some(d)),
                            None => (expr, None),
                        };
                        let text = match ((self.lookup)(name), default) {
                            (Some(v), _) if !v.is_empty() || default.is_none() => {
                                self.used.push(VarUse {
                                    key: path.to_string(),
                                    var: name.to_string(),
                                    empty: v.is_empty(),
                                });
                                Some(v)
                            }
                            (_, Some(d)) => Some(d.to_string()),
                            (None, None) => {
                                self.missing.push(MissingVar {
                                    key: path.to_string(),
                                    var: name.to_string(),
                                });
                                None
                            }
                            (Some(v), None) => Some(v),
                        };
                        if let Some(text) = text
                            && !self.push(&mut out, &text, path, name)
                        {
                            return None;
                        }
                        rest = &body[end + 1..];
                    }
                    None => {
                        // An unclosed `${` is kept as written; the typed parse reports the value.
                        if !self.push(&mut out, after, path, "") {
                            return None;
                        }
                        rest = "";
                    }
                }
            } else {
                if !self.push(&mut out, "$", path, "") {
                    return None;
                }
                rest = &after[1..];
            }
        }
        if !self.push(&mut out, rest, path, "") {
            return None;
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("abc".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_variables_in_nested_strings() {
        let mut v = json!({"a": {"b": "x-${KEY}-y", "n": 3}, "l": ["${KEY}"], "lit": "$${KEY} $5"});
        interpolate(&mut v, &env).unwrap();
        assert_eq!(
            v,
            json!({"a": {"b": "x-abc-y", "n": 3}, "l": ["abc"], "lit": "${KEY} $5"})
        );
    }

    #[test]
    fn reports_every_missing_variable_with_its_key() {
        let mut v = json!({"customerio": {"site_id": "${SITE}", "key": "${NOPE}"}, "ok": "${KEY}"});
        let err = interpolate(&mut v, &env).unwrap_err();
        assert_eq!(
            err,
            InterpolateError::Missing(vec![
                MissingVar {
                    key: "customerio.site_id".into(),
                    var: "SITE".into()
                },
                MissingVar {
                    key: "customerio.key".into(),
                    var: "NOPE".into()
                },
            ])
        );
    }

    #[test]
    fn defaults_apply_when_unset_or_empty() {
        let mut v = json!({"a": "${NOPE:-us}", "b": "${EMPTY:-eu}", "c": "${EMPTY}"});
        interpolate(&mut v, &env).unwrap();
        assert_eq!(v, json!({"a": "us", "b": "eu", "c": ""}));
    }

    #[test]
    fn expansion_stops_at_the_budget_naming_the_key_and_variable() {
        let big = |name: &str| (name == "BIG").then(|| "x".repeat(1000));
        let refs = "${BIG}".repeat(100);
        let mut v = json!({"a": "small ${BIG}", "b": {"c": refs}});
        let err = interpolate_within(&mut v, &big, 10_000).unwrap_err();
        assert_eq!(
            err,
            InterpolateError::TooLarge {
                key: "b.c".into(),
                var: "BIG".into(),
                limit: 10_000
            }
        );
        // Within the budget the same tree expands in full.
        let mut v = json!({"a": "small ${BIG}", "b": {"c": refs}});
        let used = interpolate_within(&mut v, &big, 200_000).unwrap();
        assert_eq!(used.len(), 101);
        assert_eq!(v["b"]["c"].as_str().map(str::len), Some(100_000));
    }

    #[test]
    fn empty_variables_are_reported_as_used_and_empty() {
        let mut v = json!({"customerio": {"site_id": "${EMPTY}", "key": "${KEY}"}});
        let used = interpolate(&mut v, &env).unwrap();
        assert_eq!(
            used,
            vec![
                VarUse {
                    key: "customerio.site_id".into(),
                    var: "EMPTY".into(),
                    empty: true
                },
                VarUse {
                    key: "customerio.key".into(),
                    var: "KEY".into(),
                    empty: false
                },
            ]
        );
    }
}
