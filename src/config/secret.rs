//! The redacting wrapper for credentials and DSNs.
//!
//! Owns: holding a secret so that `Debug`, `Display` and logs print `**REDACTED**`.
//! Must not: serialise the value (there is no `Serialize`), or expose it anywhere but the
//! single call that puts it on the wire (`expose()`).

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A secret string (API key, database URL with password).
///
/// The value is reachable only through [`Secret::expose`], so every use is greppable.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

pub const REDACTED: &str = "**REDACTED**";

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself: call only where it goes on the wire or into a driver.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// A database URL whose password is masked when shown (`postgres://user:****@host/db`).
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(Secret);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(Secret::new(url))
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The scheme (`sqlite`, `postgres`, `mysql`), lower-cased.
    pub fn scheme(&self) -> String {
        let url = self.0.expose();
        url.split_once(':')
            .map(|(s, _)| s.to_ascii_lowercase())
            .unwrap_or_default()
    }

    /// The URL with any password replaced, safe for logs and errors.
    pub fn masked(&self) -> String {
        mask_url_password(self.0.expose())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(DatabaseUrl::new)
    }
}

/// Replaces `user:password@` with `user:****@`, and any `password=` query value.
pub fn mask_url_password(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?'])
            .map(|i| rest_start + i)
            .unwrap_or(out.len());
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                let start = rest_start + colon + 1;
                out.replace_range(start..rest_start + at, "****");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=****"),
                _ => pair.to_string(),
            })
            .collect();
        out = format!("{head}{}", masked.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_redacted_in_debug_and_display() {
        let s = Secret::new("sk-live-123");
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(format!("{s}"), REDACTED);
        assert_eq!(format!("{:?}", Some(&s)), format!("Some({REDACTED})"));
        assert_eq!(s.expose(), "sk-live-123");
    }

    #[test]
    fn database_url_masks_its_password() {
        let u = DatabaseUrl::new("postgres://app:hunter2@db.example.com:5432/crm?sslmode=require");
        assert_eq!(
            format!("{u:?}"),
            "postgres://app:****@db.example.com:5432/crm?sslmode=require"
        );
        assert!(!format!("{u}").contains("hunter2"));
        let q = DatabaseUrl::new("mysql://db/x?user=a&password=hunter2");
        assert!(!q.masked().contains("hunter2"));
        assert_eq!(
            DatabaseUrl::new("sqlite://state/x.db").masked(),
            "sqlite://state/x.db"
        );
        assert_eq!(q.scheme(), "mysql");
    }
}
