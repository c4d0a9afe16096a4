//! `${VAR}` interpolation of configuration values from the environment.
//!
//! Owns: replacing `${NAME}` (and `${NAME:-default}`) inside string scalars of a parsed YAML
//! tree, and reporting every missing variable with the key that uses it.
//! Must not: read files, or touch anything but string scalars (so a value can never inject
//! YAML structure). `$${` is a literal `${`.

use serde_json::Value;

/// A variable that was referenced but is not set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingVar {
    /// Dotted key path where it is used, e.g. `customerio.track_api_key`.
    pub key: String,
    pub var: String,
}

/// Interpolates every string in `value`, using `lookup` for variables.
pub fn interpolate(
    value: &mut Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), Vec<MissingVar>> {
    let mut missing = Vec::new();
    walk(value, String::new(), lookup, &mut missing);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing)
    }
}

fn walk(
    value: &mut Value,
    path: String,
    lookup: &dyn Fn(&str) -> Option<String>,
    missing: &mut Vec<MissingVar>,
) {
    match value {
        Value::String(s) if s.contains('$') => {
            *s = interpolate_str(s, &path, lookup, missing);
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, format!("{path}[{i}]"), lookup, missing);
            }
        }
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let child = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(v, child, lookup, missing);
            }
        }
        _ => {}
    }
}

fn interpolate_str(
    s: &str,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    missing: &mut Vec<MissingVar>,
) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
        } else if let Some(body) = after.strip_prefix("${") {
            match body.find('}') {
                Some(end) => {
                    let expr = &body[..end];
                    let (name, default) = match expr.split_once(":-") {
                        Some((n, d)) => (n, Some(d)),
                        None => (expr, None),
                    };
                    match (lookup(name), default) {
                        (Some(v), _) if !v.is_empty() || default.is_none() => out.push_str(&v),
                        (_, Some(d)) => out.push_str(d),
                        (None, None) => missing.push(MissingVar {
                            key: path.to_string(),
                            var: name.to_string(),
                        }),
                        (Some(v), None) => out.push_str(&v),
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    // An unclosed `${` is kept as written; the typed parse reports the value.
                    out.push_str(after);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    out
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
            vec![
                MissingVar {
                    key: "customerio.site_id".into(),
                    var: "SITE".into()
                },
                MissingVar {
                    key: "customerio.key".into(),
                    var: "NOPE".into()
                },
            ]
        );
    }

    #[test]
    fn defaults_apply_when_unset_or_empty() {
        let mut v = json!({"a": "${NOPE:-us}", "b": "${EMPTY:-eu}", "c": "${EMPTY}"});
        interpolate(&mut v, &env).unwrap();
        assert_eq!(v, json!({"a": "us", "b": "eu", "c": ""}));
    }
}
