//! Validated notifier settings (`notifiers:`). Sending lives in `notify`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::raw::{RawEmail, RawNotifier, RawWebhook};
use super::{Loader, valid_name};
use crate::secret::{SecretString, SecretUrl};

/// Default time a notifier may take for one delivery attempt.
pub const DEFAULT_NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// One configured notifier.
#[derive(Debug, Clone)]
pub enum NotifierConfig {
    /// An HTTP POST per run (or digest).
    Webhook(WebhookConfig),
    /// A mail per run (or digest).
    Email(EmailConfig),
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
    /// Extra headers (values may be tokens).
    pub headers: Vec<(String, SecretString)>,
    /// Per-attempt timeout.
    pub timeout: Duration,
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
    /// Sender address.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
    /// Copy recipients.
    pub cc: Vec<String>,
    /// SMTP user, if the relay needs authentication.
    pub username: Option<String>,
    /// SMTP password, from `password_env` or `password_file`.
    pub password: Option<SecretString>,
    /// Per-attempt timeout.
    pub timeout: Duration,
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
        let value = loader.expand(file, value)?;
        headers.push((name.clone(), SecretString::new(value)));
    }
    let timeout = match &raw.timeout {
        Some(t) => loader.positive_duration(file, t)?,
        None => DEFAULT_NOTIFY_TIMEOUT,
    };
    Some(WebhookConfig {
        url: SecretUrl::new(url),
        format,
        headers,
        timeout,
    })
}

fn email_config(
    loader: &mut Loader<'_>,
    file: &Path,
    base: &Path,
    raw: &Spanned<RawEmail>,
) -> Option<EmailConfig> {
    let raw = &raw.value;
    let smtp = loader.expand(file, &raw.smtp)?;
    if !(smtp.starts_with("smtp://") || smtp.starts_with("smtps://")) {
        loader.err(
            file,
            raw.smtp.referenced,
            "email smtp must look like smtp://host:port",
        );
        return None;
    }
    let tls = match raw.tls.as_ref().map(|t| t.value.as_str()) {
        None if smtp.starts_with("smtps://") => EmailTls::Tls,
        None | Some("starttls") => EmailTls::Starttls,
        Some("none") => EmailTls::None,
        Some("tls") => EmailTls::Tls,
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
            return None;
        }
    };
    let from = loader.expand(file, &raw.from)?;
    if !from.contains('@') {
        loader.err(
            file,
            raw.from.referenced,
            format!("from {from:?} is not an email address"),
        );
        return None;
    }
    if raw.to.value.is_empty() || raw.to.value.iter().any(|a| !a.contains('@')) {
        loader.err(
            file,
            raw.to.referenced,
            "to: needs at least one email address, each with an @",
        );
        return None;
    }
    let username = match &raw.username {
        Some(u) => Some(loader.expand(file, u)?),
        None => None,
    };
    let password = match (&raw.password_env, &raw.password_file) {
        (Some(var), None) => match loader.env.var(&var.value) {
            Some(p) => Some(SecretString::new(p)),
            None => {
                loader.err(
                    file,
                    var.referenced,
                    format!("environment variable {} is not set", var.value),
                );
                return None;
            }
        },
        (None, Some(path)) => {
            let path_text = loader.expand(file, path)?;
            match std::fs::read_to_string(base.join(&path_text)) {
                Ok(p) => Some(SecretString::new(
                    p.trim_end_matches(['\n', '\r']).to_owned(),
                )),
                Err(e) => {
                    loader.err(
                        file,
                        path.referenced,
                        format!("cannot read password_file {path_text}: {e}"),
                    );
                    return None;
                }
            }
        }
        (None, None) => None,
        (Some(var), Some(_)) => {
            loader.err(
                file,
                var.referenced,
                "give only one of password_env or password_file",
            );
            return None;
        }
    };
    if password.is_some() && username.is_none() {
        loader.err(
            file,
            raw.smtp.referenced,
            "an SMTP password needs a username",
        );
        return None;
    }
    let timeout = match &raw.timeout {
        Some(t) => loader.positive_duration(file, t)?,
        None => DEFAULT_NOTIFY_TIMEOUT,
    };
    Some(EmailConfig {
        smtp: SecretUrl::new(smtp),
        tls,
        from,
        to: raw.to.value.clone(),
        cc: raw.cc.clone(),
        username,
        password,
        timeout,
    })
}
