//! Validated notifier settings (`notifiers:`). Sending lives in `notify`.
//!
//! (Over 500 lines: the webhook and email settings and their checks, each
//! step short; one file so that both notifier kinds share the same checks.)

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;
use serde_saphyr::Spanned;

use super::raw::{RawEmail, RawNotifier, RawWebhook};
use super::{Loader, valid_name};
use crate::secret::{SecretString, SecretUrl};

/// Default time a notifier may take for one delivery attempt.
pub(crate) const DEFAULT_NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of retries after a failed attempt (so 4 attempts in all).
pub(crate) const DEFAULT_NOTIFY_RETRIES: u32 = 3;
/// Default wait before the first retry; it doubles after each retry.
pub(crate) const DEFAULT_NOTIFY_BACKOFF: Duration = Duration::from_secs(1);
/// Default time all attempts of one delivery may take together.
pub(crate) const DEFAULT_NOTIFY_DEADLINE: Duration = Duration::from_mins(1);
/// Most retries a notifier may ask for: a janitor run must end.
pub(crate) const MAX_NOTIFY_RETRIES: u32 = 10;

/// How hard one notifier tries to deliver one message (`timeout`,
/// `retries`, `backoff`, `deadline`): bounded, so that a dead endpoint costs
/// a run at most `deadline` and never a fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// Longest one attempt may take (connect, send, answer).
    pub timeout: Duration,
    /// Attempts after the first, for errors that may go away (network,
    /// timeouts, HTTP 408/429/5xx, SMTP 4xx).
    pub retries: u32,
    /// Wait before the first retry; doubled after each one (capped at 30s).
    pub backoff: Duration,
    /// Longest all attempts and waits may take together.
    pub deadline: Duration,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_NOTIFY_TIMEOUT,
            retries: DEFAULT_NOTIFY_RETRIES,
            backoff: DEFAULT_NOTIFY_BACKOFF,
            deadline: DEFAULT_NOTIFY_DEADLINE,
        }
    }
}

/// One configured notifier.
#[derive(Debug, Clone)]
pub enum NotifierConfig {
    /// One HTTP POST per run (a digest of every notified rule).
    Webhook(WebhookConfig),
    /// One mail per run (a digest of every notified rule).
    Email(EmailConfig),
}

impl NotifierConfig {
    /// `webhook` or `email`, for messages.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            NotifierConfig::Webhook(_) => "webhook",
            NotifierConfig::Email(_) => "email",
        }
    }

    /// The retry settings of this notifier.
    #[must_use]
    pub fn delivery(&self) -> &DeliveryPolicy {
        match self {
            NotifierConfig::Webhook(w) => &w.delivery,
            NotifierConfig::Email(e) => &e.delivery,
        }
    }
}

/// Payload shape of a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// The documented, versioned dbjanitor JSON payload.
    Json,
    /// A message Slack and Mattermost incoming webhooks accept.
    Slack,
}

/// `webhook:` settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Endpoint; may carry a token, so it is treated as a secret.
    pub url: SecretUrl,
    /// Payload shape.
    pub format: WebhookFormat,
    /// Extra headers (values may be tokens); names and values are checked
    /// to be valid HTTP when the config loads.
    pub headers: Vec<(String, SecretString)>,
    /// Timeout, retries, deadline.
    pub delivery: DeliveryPolicy,
}

/// Transport security of an SMTP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailTls {
    /// Plain SMTP (loopback relays only).
    None,
    /// STARTTLS upgrade, required.
    Starttls,
    /// Implicit TLS (SMTPS).
    Tls,
}

/// `email:` settings.
#[derive(Debug, Clone)]
pub struct EmailConfig {
    /// `smtp://host:port`.
    pub smtp: SecretUrl,
    /// Transport security.
    pub tls: EmailTls,
    /// Sender (`addr@host` or `Name <addr@host>`, checked when loading).
    pub from: String,
    /// Recipients (checked when loading).
    pub to: Vec<String>,
    /// Copy recipients (checked when loading).
    pub cc: Vec<String>,
    /// SMTP user, if the relay needs authentication.
    pub username: Option<String>,
    /// SMTP password, from `password_env` or `password_file`.
    pub password: Option<SecretString>,
    /// Extra trusted CA certificates (PEM, from `ca_file`), for a relay
    /// signed by a private CA; the system store is always trusted too.
    pub ca_pem: Option<Vec<u8>>,
    /// Timeout, retries, deadline.
    pub delivery: DeliveryPolicy,
}

/// Parses the PEM of `ca_file`: at least one certificate, all readable.
/// (lettre alone accepts a file with no certificate in it.)
pub fn ca_certificate(pem: &[u8]) -> Result<lettre::transport::smtp::client::Certificate, String> {
    if !String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned());
    }
    lettre::transport::smtp::client::Certificate::from_pem(pem)
        .map_err(|e| format!("holds an unreadable certificate: {e}"))
}

pub(super) fn load_all(
    loader: &mut Loader<'_>,
    file: &Path,
    base: &Path,
    raw: BTreeMap<String, Spanned<RawNotifier>>,
) -> BTreeMap<String, Arc<NotifierConfig>> {
    let mut out = BTreeMap::new();
    for (name, notifier) in raw {
        if !valid_name(&name) {
            loader.err(
                file,
                notifier.referenced,
                format!("invalid notifier name {name:?}: use [a-z0-9._-]+"),
            );
            continue;
        }
        let off = notifier
            .value
            .optional
            .unwrap_or(false)
            .then(|| unset_url_variable(loader, &notifier.value))
            .flatten();
        if let Some(variable) = off {
            tracing::debug!(notifier = %name, %variable, "optional notifier is off: its URL variable is unset or empty");
            loader.failed.notifiers.insert(name);
            continue;
        }
        let config = match (&notifier.value.webhook, &notifier.value.email) {
            (Some(webhook), None) => {
                webhook_config(loader, file, webhook).map(NotifierConfig::Webhook)
            }
            (None, Some(email)) => {
                email_config(loader, file, base, email).map(NotifierConfig::Email)
            }
            _ => {
                loader.err(
                    file,
                    notifier.referenced,
                    format!("notifier {name:?}: give exactly one of webhook: or email:"),
                );
                None
            }
        };
        if let Some(config) = config {
            out.insert(name, Arc::new(config));
        }
    }
    out
}

/// The first `${VAR}` of the notifier's URL (webhook `url`, email `smtp`)
/// that is unset or empty, if any: an `optional: true` notifier is then off.
fn unset_url_variable(loader: &Loader<'_>, raw: &RawNotifier) -> Option<String> {
    let url = match (&raw.webhook, &raw.email) {
        (Some(webhook), _) => &webhook.value.url.value,
        (None, Some(email)) => &email.value.smtp.value,
        (None, None) => return None,
    };
    let mut rest = url.as_str();
    while let Some(start) = rest.find('$') {
        let after = &rest[start + 1..];
        if let Some(literal) = after.strip_prefix("${") {
            rest = literal;
            continue;
        }
        let Some((name, tail)) = after.strip_prefix('{').and_then(|a| a.split_once('}')) else {
            rest = after;
            continue;
        };
        if loader.env.var(name).is_none_or(|v| v.is_empty()) {
            return Some(name.to_owned());
        }
        rest = tail;
    }
    None
}

fn webhook_config(
    loader: &mut Loader<'_>,
    file: &Path,
    raw: &Spanned<RawWebhook>,
) -> Option<WebhookConfig> {
    let raw = &raw.value;
    let url = loader.expand(file, &raw.url)?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        loader.err(
            file,
            raw.url.referenced,
            "webhook url must start with http:// or https://",
        );
        return None;
    }
    let format = match raw.format.as_ref().map(|f| f.value.as_str()) {
        None | Some("json") => WebhookFormat::Json,
        Some("slack") => WebhookFormat::Slack,
        Some(other) => {
            let at = raw
                .format
                .as_ref()
                .map_or(raw.url.referenced, |f| f.referenced);
            loader.err(
                file,
                at,
                format!("unknown webhook format {other:?}: expected json or slack"),
            );
            return None;
        }
    };
    let mut headers = Vec::new();
    for (name, value) in &raw.headers {
        let expanded = loader.expand(file, value)?;
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            loader.err(
                file,
                value.referenced,
                format!("invalid HTTP header name {name:?}"),
            );
            return None;
        }
        // The value may be a token: say what is wrong, never what it is.
        if reqwest::header::HeaderValue::from_str(&expanded).is_err() {
            loader.err(
                file,
                value.referenced,
                format!("header {name}: the value holds characters HTTP headers cannot carry"),
            );
            return None;
        }
        headers.push((name.clone(), SecretString::new(expanded)));
    }
    let delivery = delivery_policy(
        loader,
        file,
        [&raw.timeout, &raw.backoff, &raw.deadline],
        raw.retries.as_ref(),
    )?;
    Some(WebhookConfig {
        url: SecretUrl::new(url),
        format,
        headers,
        delivery,
    })
}

/// `email:` settings. Every key is checked even when an earlier one is
/// wrong, so that all of a notifier's problems are reported in one pass (as
/// for rules); the config is built only when none was found.
fn email_config(
    loader: &mut Loader<'_>,
    file: &Path,
    base: &Path,
    raw: &Spanned<RawEmail>,
) -> Option<EmailConfig> {
    let raw = &raw.value;
    let smtp = email_smtp(loader, file, &raw.smtp);
    let tls = email_tls(loader, file, raw, smtp.as_deref());
    let from = email_from(loader, file, &raw.from);
    let recipients = email_recipients(loader, file, raw);
    let username = match &raw.username {
        Some(u) => loader.expand(file, u).map(Some),
        None => Some(None),
    };
    let password = email_password(loader, file, base, raw);
    let password = match (password, &username) {
        (Some(Some(_)), Some(None)) => {
            loader.err(
                file,
                raw.smtp.referenced,
                "an SMTP password needs a username",
            );
            None
        }
        (password, _) => password,
    };
    let ca_pem = match &raw.ca_file {
        Some(path) => email_ca_file(loader, file, base, path).map(Some),
        None => Some(None),
    };
    let delivery = delivery_policy(
        loader,
        file,
        [&raw.timeout, &raw.backoff, &raw.deadline],
        raw.retries.as_ref(),
    );
    let (to, cc) = recipients?;
    Some(EmailConfig {
        smtp: SecretUrl::new(smtp?),
        tls: tls?,
        from: from?,
        to,
        cc,
        username: username?,
        password: password?,
        ca_pem: ca_pem?,
        delivery: delivery?,
    })
}

/// `smtp:`: an `smtp://` or `smtps://` URL with a host.
fn email_smtp(loader: &mut Loader<'_>, file: &Path, raw: &Spanned<String>) -> Option<String> {
    let smtp = loader.expand(file, raw)?;
    if !(smtp.starts_with("smtp://") || smtp.starts_with("smtps://")) {
        loader.err(
            file,
            raw.referenced,
            "email smtp must look like smtp://host:port",
        );
        return None;
    }
    if url::Url::parse(&smtp)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .is_none_or(|host| host.is_empty())
    {
        loader.err(
            file,
            raw.referenced,
            "email smtp must look like smtp://host:port (no host found)",
        );
        return None;
    }
    Some(smtp)
}

/// `tls:`, defaulting to implicit TLS for `smtps://` and STARTTLS otherwise.
/// `smtp` is `None` when that key was wrong; its error is already reported.
fn email_tls(
    loader: &mut Loader<'_>,
    file: &Path,
    raw: &RawEmail,
    smtp: Option<&str>,
) -> Option<EmailTls> {
    match raw.tls.as_ref().map(|t| t.value.as_str()) {
        None if smtp?.starts_with("smtps://") => Some(EmailTls::Tls),
        None | Some("starttls") => Some(EmailTls::Starttls),
        Some("none") => Some(EmailTls::None),
        Some("tls") => Some(EmailTls::Tls),
        Some(other) => {
            let at = raw
                .tls
                .as_ref()
                .map_or(raw.smtp.referenced, |t| t.referenced);
            loader.err(
                file,
                at,
                format!("unknown tls {other:?}: expected none, starttls or tls"),
            );
            None
        }
    }
}

fn email_from(loader: &mut Loader<'_>, file: &Path, raw: &Spanned<String>) -> Option<String> {
    let from = loader.expand(file, raw)?;
    if let Err(e) = Mailbox::from_str(&from) {
        loader.err(
            file,
            raw.referenced,
            format!("from {from:?} is not an email address: {e}"),
        );
        return None;
    }
    Some(from)
}

/// `to:` (at least one) and `cc:`; every address that is not one is named.
fn email_recipients(
    loader: &mut Loader<'_>,
    file: &Path,
    raw: &RawEmail,
) -> Option<(Vec<String>, Vec<String>)> {
    let mut ok = true;
    if raw.to.value.0.is_empty() {
        loader.err(
            file,
            raw.to.referenced,
            "to: needs at least one email address",
        );
        ok = false;
    }
    let cc = raw
        .cc
        .as_ref()
        .map(|cc| cc.value.0.clone())
        .unwrap_or_default();
    let cc_at = raw
        .cc
        .as_ref()
        .map_or(raw.to.referenced, |cc| cc.referenced);
    for (key, list, at) in [
        ("to", &raw.to.value.0, raw.to.referenced),
        ("cc", &cc, cc_at),
    ] {
        for address in list {
            if let Err(e) = Mailbox::from_str(address) {
                loader.err(
                    file,
                    at,
                    format!("{key}: {address:?} is not an email address: {e}"),
                );
                ok = false;
            }
        }
    }
    ok.then(|| (raw.to.value.0.clone(), cc))
}

/// `password_env` or `password_file` (at most one). `Some(None)`: no
/// password; `None`: an error was reported.
fn email_password(
    loader: &mut Loader<'_>,
    file: &Path,
    base: &Path,
    raw: &RawEmail,
) -> Option<Option<SecretString>> {
    match (&raw.password_env, &raw.password_file) {
        (Some(var), None) => match loader.env.var(&var.value) {
            Some(p) => Some(Some(SecretString::new(p))),
            None => {
                loader.err(
                    file,
                    var.referenced,
                    format!("environment variable {} is not set", var.value),
                );
                None
            }
        },
        (None, Some(path)) => {
            let path_text = loader.expand(file, path)?;
            match std::fs::read_to_string(base.join(&path_text)) {
                Ok(p) => Some(Some(SecretString::new(
                    p.trim_end_matches(['\n', '\r']).to_owned(),
                ))),
                Err(e) => {
                    loader.err(
                        file,
                        path.referenced,
                        format!("cannot read password_file {path_text}: {e}"),
                    );
                    None
                }
            }
        }
        (None, None) => Some(None),
        (Some(var), Some(_)) => {
            loader.err(
                file,
                var.referenced,
                "give only one of password_env or password_file",
            );
            None
        }
    }
}

/// `ca_file`: readable, and holding at least one PEM certificate.
fn email_ca_file(
    loader: &mut Loader<'_>,
    file: &Path,
    base: &Path,
    path: &Spanned<String>,
) -> Option<Vec<u8>> {
    let path_text = loader.expand(file, path)?;
    let pem = match std::fs::read(base.join(&path_text)) {
        Ok(pem) => pem,
        Err(e) => {
            loader.err(
                file,
                path.referenced,
                format!("cannot read ca_file {path_text}: {e}"),
            );
            return None;
        }
    };
    if let Err(e) = ca_certificate(&pem) {
        loader.err(file, path.referenced, format!("ca_file {path_text}: {e}"));
        return None;
    }
    Some(pem)
}

/// Reads `timeout`, `backoff`, `deadline` (durations, in that order) and
/// `retries`, each defaulted on its own; every wrong one is reported.
fn delivery_policy(
    loader: &mut Loader<'_>,
    file: &Path,
    [timeout, backoff, deadline]: [&Option<Spanned<String>>; 3],
    retries: Option<&Spanned<i64>>,
) -> Option<DeliveryPolicy> {
    let mut policy = DeliveryPolicy::default();
    let mut ok = true;
    for (raw, slot) in [
        (timeout, &mut policy.timeout),
        (backoff, &mut policy.backoff),
        (deadline, &mut policy.deadline),
    ] {
        if let Some(raw) = raw {
            match loader.positive_duration(file, raw) {
                Some(d) => *slot = d,
                None => ok = false,
            }
        }
    }
    if let Some(retries) = retries {
        match u32::try_from(retries.value) {
            Ok(n) if n <= MAX_NOTIFY_RETRIES => policy.retries = n,
            _ => {
                loader.err(
                    file,
                    retries.referenced,
                    format!(
                        "retries must be between 0 and {MAX_NOTIFY_RETRIES}, found {}",
                        retries.value
                    ),
                );
                ok = false;
            }
        }
    }
    ok.then_some(policy)
}
