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

/// A Customer.io API base URL (`customerio.track_url` / `app_url`): an override may carry
/// `user:pass@` for a proxy, so it is shown masked like a database URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiUrl(String);

impl ApiUrl {
    /// Keeps the URL as given, without a trailing slash (paths are appended to it).
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        Self(url.trim_end_matches('/').to_string())
    }

    /// The URL itself: call only where a request is built.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with credentials replaced, safe for logs and errors.
    pub fn masked(&self) -> String {
        mask_url_password(&self.0)
    }
}

impl fmt::Debug for ApiUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Display for ApiUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl PartialEq<str> for ApiUrl {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ApiUrl {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

const MASK: &str = "****";

/// Masks a URL's password and every credential-like query value, for showing it.
///
/// Written by hand because the password is the one part that need not be encoded correctly:
/// a generic URL parser reads `user:pa/ss@host` as host `user`, port `pa` and hides nothing.
/// The userinfo therefore ends at the *last* `@` that is followed by something shaped like a
/// host, so a password holding unencoded `/`, `?`, `@` or `#` is masked whole. When an `@`
/// also appears later (in the query), more than the password is masked: showing too little
/// is the safe way to be wrong.
pub fn mask_url_password(url: &str) -> String {
    let (head, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => match url.find(':') {
            // `sqlite:file.db?key=…` has no authority, only a query to mask.
            Some(i) => url.split_at(i + 1),
            None => ("", url),
        },
    };
    let mut out = String::from(head);
    let mut after_userinfo = rest;
    if head.ends_with("://")
        && let Some(at) = userinfo_end(rest)
    {
        let userinfo = &rest[..at];
        match userinfo.find(':') {
            Some(colon) => {
                out.push_str(&userinfo[..=colon]);
                out.push_str(MASK);
            }
            None => out.push_str(userinfo),
        }
        out.push('@');
        after_userinfo = &rest[at + 1..];
    }
    let (before_query, query) = match after_userinfo.find('?') {
        Some(q) => (&after_userinfo[..q], Some(&after_userinfo[q + 1..])),
        None => (after_userinfo, None),
    };
    out.push_str(before_query);
    if let Some(query) = query {
        out.push('?');
        let (query, fragment) = match query.find('#') {
            Some(h) => (&query[..h], Some(&query[h..])),
            None => (query, None),
        };
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if is_credential_key(k) => format!("{k}={MASK}"),
                _ => pair.to_string(),
            })
            .collect();
        out.push_str(&masked.join("&"));
        if let Some(fragment) = fragment {
            out.push_str(fragment);
        }
    }
    out
}

/// Where the userinfo of `rest` (the URL after `://`) ends: the last `@` followed by a host.
fn userinfo_end(rest: &str) -> Option<usize> {
    rest.match_indices('@').map(|(i, _)| i).rev().find(|&i| {
        let after = &rest[i + 1..];
        let host = &after[..after.find(['/', '?', '#']).unwrap_or(after.len())];
        host.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']' | '%' | ',')
        })
    })
}

/// Query parameters whose value is a credential, whatever their case or separators:
/// `password`, `sslpassword`, `PassWord`, `pwd`, `secret`, `token`, `api_key`, `apikey`, ….
fn is_credential_key(key: &str) -> bool {
    let k: String = key
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    ["pass", "pwd", "secret", "token", "key", "auth", "credential"]
        .iter()
        .any(|w| k.contains(w))
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

    /// Each form a review found printed in clear; the secret is `hunter2` in every one.
    #[test]
    fn every_form_of_url_credential_is_masked() {
        let cases = [
            // Unencoded `/`, `?`, `@` and `#` in the password.
            (
                "postgres://app:hun/ter2@db.example.com:5432/crm",
                "postgres://app:****@db.example.com:5432/crm",
            ),
            (
                "postgres://app:hun?ter2@db.example.com/crm?sslmode=require",
                "postgres://app:****@db.example.com/crm?sslmode=require",
            ),
            (
                "mysql://app:h@un/t?e#r2@db:3306/crm",
                "mysql://app:****@db:3306/crm",
            ),
            (
                "postgres://app:hunter2#@db/crm",
                "postgres://app:****@db/crm",
            ),
            // Credential-like query parameters, in any case.
            (
                "postgres://db/crm?sslmode=verify-full&sslpassword=hunter2",
                "postgres://db/crm?sslmode=verify-full&sslpassword=****",
            ),
            (
                "mysql://db/crm?user=app&PassWord=hunter2",
                "mysql://db/crm?user=app&PassWord=****",
            ),
            (
                "postgres://db/crm?pwd=hunter2&pass=hunter2&Secret=hunter2&token=hunter2",
                "postgres://db/crm?pwd=****&pass=****&Secret=****&token=****",
            ),
            (
                "https://proxy/x?api_key=hunter2&API-KEY=hunter2&key=hunter2",
                "https://proxy/x?api_key=****&API-KEY=****&key=****",
            ),
            // `user:pass@` in an API URL, and with a unix-socket host.
            (
                "https://me:hunter2@proxy.example.com:8443/",
                "https://me:****@proxy.example.com:8443/",
            ),
            (
                "postgres://app:hunter2@/crm?host=/run/postgresql",
                "postgres://app:****@/crm?host=/run/postgresql",
            ),
            ("sqlite:state.db?password=hunter2", "sqlite:state.db?password=****"),
        ];
        for (url, want) in cases {
            let got = mask_url_password(url);
            assert_eq!(got, want, "masking {url}");
            assert!(!got.contains("hunter2") && !got.contains("ter2"), "{got}");
        }
        // What holds no credential is shown as written.
        for url in [
            "postgres://app@db/crm?sslmode=require&application_name=sync",
            "sqlite://state/x.db",
            "http://127.0.0.1:4010",
        ] {
            assert_eq!(mask_url_password(url), url);
        }
    }

    #[test]
    fn api_url_is_masked_when_shown_and_exposed_as_written() {
        let u = ApiUrl::new("https://me:hunter2@proxy.example.com/");
        assert_eq!(format!("{u}"), "https://me:****@proxy.example.com");
        assert_eq!(format!("{u:?}"), "https://me:****@proxy.example.com");
        assert_eq!(u.expose(), "https://me:hunter2@proxy.example.com");
        assert_eq!(u, "https://me:hunter2@proxy.example.com");
    }
}
