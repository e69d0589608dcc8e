//! Secrets that must never reach a log line, a report or a notification.
//!
//! A database URL usually carries a password. It is stored in [`SecretUrl`],
//! whose `Debug` and `Display` print the redacted form, so neither a stray
//! `{:?}` nor an error message can leak it. Error texts that come from drivers
//! are passed through [`SecretUrl::scrub`] as a second line of defence.

use std::fmt;

/// A connection URL whose password is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl {
    raw: String,
    redacted: String,
    secrets: Vec<String>,
}

const MASK: &str = "***";

impl SecretUrl {
    /// Wraps a URL, remembering its password (from the userinfo part and from
    /// `password=` style query parameters) so it can be masked everywhere.
    #[must_use]
    pub fn new(raw: String) -> Self {
        let mut secrets = Vec::new();
        let redacted;
        if let Ok(mut parsed) = url::Url::parse(&raw) {
            if let Some(password) = parsed.password() {
                secrets.push(password.to_owned());
                if let Ok(decoded) = percent_encoding::percent_decode_str(password).decode_utf8() {
                    secrets.push(decoded.into_owned());
                }
                let _ = parsed.set_password(Some(MASK));
            }
            let pairs: Vec<(String, String)> = parsed
                .query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            if pairs.iter().any(|(k, _)| is_secret_key(k)) {
                let mut query = parsed.query_pairs_mut();
                query.clear();
                for (k, v) in &pairs {
                    if is_secret_key(k) {
                        secrets.push(v.clone());
                        query.append_pair(k, MASK);
                    } else {
                        query.append_pair(k, v);
                    }
                }
                drop(query);
            }
            redacted = parsed.to_string();
        } else if let Some((scheme, _)) = raw.split_once("://") {
            // Not a URL the parser understands: keep the scheme only.
            redacted = format!("{scheme}://{MASK}");
        } else {
            redacted = MASK.to_owned();
        }
        secrets.retain(|s| !s.is_empty());
        // Longest first, so a password that contains another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self {
            raw,
            redacted,
            secrets,
        }
    }

    /// The URL with its password masked: safe to print.
    #[must_use]
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The real URL, for the driver only.
    pub(crate) fn expose(&self) -> &str {
        &self.raw
    }

    /// Masks every occurrence of this URL's secrets (and of the whole URL) in `text`.
    #[must_use]
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.replace(&self.raw, &self.redacted);
        for secret in &self.secrets {
            out = out.replace(secret.as_str(), MASK);
        }
        out
    }
}

impl SecretUrl {
    /// Masks every part of this URL beyond scheme, host and port in `text`:
    /// the whole URL, its path and query, each path segment and query value
    /// (raw and percent-decoded), and its userinfo.
    ///
    /// For webhook URLs, whose token may sit anywhere (`/hooks/T0/B0/XXXX`,
    /// `?token=...`) and which a receiver may echo back in an error answer
    /// (Express: `Cannot POST /hooks/SECRET-TOKEN`). Segments shorter than
    /// [`MIN_SECRET_PART`] characters (`v1`, `api`) are left alone: they are
    /// not secrets, and masking them would garble every message.
    #[must_use]
    pub fn scrub_beyond_origin(&self, text: &str) -> String {
        let Ok(parsed) = url::Url::parse(&self.raw) else {
            return self.scrub(text).replace(&self.raw, MASK);
        };
        let mut parts: Vec<String> = vec![self.raw.clone()];
        let path = parsed.path();
        let query = parsed.query().unwrap_or_default();
        parts.push(format!("{path}?{query}"));
        parts.push(path.to_owned());
        parts.push(query.to_owned());
        parts.extend(path.split('/').map(str::to_owned));
        parts.extend(
            query
                .split('&')
                .flat_map(|pair| pair.split('='))
                .map(str::to_owned),
        );
        parts.push(parsed.username().to_owned());
        parts.extend(parsed.password().map(str::to_owned));
        let decoded: Vec<String> = parts
            .iter()
            .filter_map(|p| percent_encoding::percent_decode_str(p).decode_utf8().ok())
            .map(std::borrow::Cow::into_owned)
            .collect();
        parts.extend(decoded);
        let encoded: Vec<String> = parts
            .iter()
            .map(|p| {
                percent_encoding::utf8_percent_encode(p, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
            })
            .collect();
        parts.extend(encoded);
        parts.retain(|p| p.chars().count() >= MIN_SECRET_PART && p != "/");
        parts.sort_by_key(|p| std::cmp::Reverse(p.len()));
        parts.dedup();
        // The host stays readable even where a path segment is part of it
        // (`/hooks/...` on `hooks.example.org`): set aside, then put back.
        const HOST_MARK: &str = "\u{0}host\u{0}";
        let host = parsed.host_str().unwrap_or_default();
        let mut out = if host.is_empty() {
            text.to_owned()
        } else {
            text.replace(host, HOST_MARK)
        };
        for part in &parts {
            out = out.replace(part.as_str(), MASK);
        }
        if host.is_empty() {
            out
        } else {
            out.replace(HOST_MARK, host)
        }
    }
}

/// Parts of a webhook URL shorter than this are not masked by
/// [`SecretUrl::scrub_beyond_origin`].
pub const MIN_SECRET_PART: usize = 4;

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password") || key.contains("passwd") || key == "pass" || key.contains("secret")
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SecretUrl").field(&self.redacted).finish()
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// A secret string (a header value, an SMTP password): never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret.
    #[must_use]
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself, for the one place that must send it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_masked_in_every_rendering() {
        let url = SecretUrl::new("postgres://app:s3cr%40t@db:5432/app?sslmode=require".into());
        assert_eq!(
            url.redacted(),
            "postgres://app:***@db:5432/app?sslmode=require"
        );
        assert!(!format!("{url:?}").contains("s3cr"));
        assert!(!url.to_string().contains("s3cr"));
        let scrubbed = url.scrub("failed to connect with s3cr@t and s3cr%40t");
        assert_eq!(scrubbed, "failed to connect with *** and ***");
    }

    #[test]
    fn password_in_query_is_masked() {
        let url = SecretUrl::new("postgres://db/app?user=x&password=hunter2".into());
        assert!(!url.redacted().contains("hunter2"), "{}", url.redacted());
        assert_eq!(url.scrub("hunter2!"), "***!");
    }

    #[test]
    fn unparsable_url_keeps_only_the_scheme() {
        let url = SecretUrl::new("mysql://ro:pw@[bad".into());
        assert_eq!(url.redacted(), "mysql://***");
    }

    #[test]
    fn webhook_answers_lose_everything_beyond_the_origin() {
        let url = SecretUrl::new(
            "https://user:pw-secret@hooks.example.org:8443/hooks/SECRET-TOKEN/x?token=Q-TOKEN&v=1"
                .into(),
        );
        let answer = "Cannot POST /hooks/SECRET-TOKEN/x?token=Q-TOKEN&v=1 (SECRET%2DTOKEN, Q-TOKEN, pw-secret) at https://hooks.example.org:8443/hooks/SECRET-TOKEN/x";
        let scrubbed = url.scrub_beyond_origin(answer);
        for secret in ["SECRET-TOKEN", "SECRET%2DTOKEN", "Q-TOKEN", "pw-secret"] {
            assert!(!scrubbed.contains(secret), "{scrubbed}");
        }
        assert!(scrubbed.starts_with("Cannot POST ***"), "{scrubbed}");
        assert!(
            scrubbed.contains("https://hooks.example.org:8443"),
            "{scrubbed}"
        );
    }

    #[test]
    fn sqlite_url_is_unchanged() {
        let url = SecretUrl::new("sqlite:///var/lib/app.db".into());
        assert_eq!(url.redacted(), "sqlite:///var/lib/app.db");
    }
}
