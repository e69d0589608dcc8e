//! Webhook notifier: one HTTP POST per digest, over reqwest and rustls.
//!
//! Two payloads:
//! - `json`: dbjanitor's own document, versioned ([`JSON_SCHEMA`],
//!   [`JSON_VERSION`]), for programs (alert routers, ticket bots). New fields
//!   may be added within a version; renaming or removing one bumps it.
//! - `slack`: a message that Slack *and* Mattermost incoming webhooks render:
//!   a `text` headline plus one legacy attachment per run (colour by outcome,
//!   facts, a code block with the sample). Attachments rather than Block Kit
//!   because Mattermost renders attachments but drops `blocks` (mattermost
//!   issue 14973), and Slack still renders attachments in full.
//!
//! The endpoint URL may carry a token (Slack's does): it never appears in an
//! error message, and redirects are not followed (a webhook that redirects is
//! misconfigured, and following it would re-send the body elsewhere).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde::Serialize;
use serde_json::{Value, json};

use super::message::{Digest, Entry};
use super::retry::{AttemptError, DeliveryError, Retry, with_retries};
use crate::config::{WebhookConfig, WebhookFormat};
use crate::outcome::Outcome;

/// `schema` of the JSON payload: lets a receiver tell it from other senders.
pub const JSON_SCHEMA: &str = "dbjanitor.notification";
/// `version` of the JSON payload.
pub const JSON_VERSION: u32 = 1;
/// At most this many runs get their own Slack attachment; the rest are
/// summed up in one line (Slack truncates long messages, and a wall of
/// attachments helps nobody).
pub const SLACK_MAX_ATTACHMENTS: usize = 20;
/// Longest part of an error answer quoted in an error message.
const BODY_QUOTE_CHARS: usize = 200;

/// The JSON payload, version 1.
#[derive(Debug, Serialize)]
pub struct JsonPayload<'a> {
    /// Always [`JSON_SCHEMA`].
    pub schema: &'static str,
    /// Always [`JSON_VERSION`].
    pub version: u32,
    /// The subject line a mail would have.
    pub title: String,
    /// The machine dbjanitor ran on.
    pub host: &'a str,
    /// When the message was built.
    pub sent_at: DateTime<Utc>,
    /// Whether every run in it was a dry run (nothing was changed).
    pub dry_run: bool,
    /// Counts at a glance.
    pub summary: JsonSummary,
    /// The runs, worst outcome first.
    pub runs: &'a [Entry],
}

/// `summary` of the JSON payload.
#[derive(Debug, Serialize)]
pub struct JsonSummary {
    /// Number of runs in `runs`.
    pub total: usize,
    /// The worst outcome among them.
    pub worst: Option<Outcome>,
    /// Runs per outcome (outcomes with no run are left out).
    pub counts: BTreeMap<Outcome, usize>,
}

/// Builds the JSON payload for `digest`.
#[must_use]
pub fn json_payload(digest: &Digest) -> JsonPayload<'_> {
    JsonPayload {
        schema: JSON_SCHEMA,
        version: JSON_VERSION,
        title: digest.title(),
        host: &digest.host,
        sent_at: digest.sent_at,
        dry_run: digest.dry_run(),
        summary: JsonSummary {
            total: digest.entries.len(),
            worst: digest.worst(),
            counts: digest.counts().into_iter().collect(),
        },
        runs: &digest.entries,
    }
}

/// Escapes text for Slack's message formatting: `&`, `<` and `>` are control
/// characters there (`<!channel>` would ping everyone, `<url|x>` makes a link).
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The bar colour of a run's attachment.
fn slack_color(entry: &Entry) -> &'static str {
    match entry.outcome {
        Outcome::Failed => "#d00000",
        Outcome::GuardTripped => "#e07000",
        Outcome::Found => "#daa038",
        Outcome::WouldFix => "#439fe0",
        Outcome::Fixed | Outcome::Clean => "#2eb886",
        Outcome::Skipped => "#9e9e9e",
    }
}

/// Builds the Slack/Mattermost payload for `digest`.
#[must_use]
pub fn slack_payload(digest: &Digest) -> Value {
    let mut attachments: Vec<Value> = digest
        .entries
        .iter()
        .take(SLACK_MAX_ATTACHMENTS)
        .map(|entry| {
            let mut text = String::new();
            if !entry.description.is_empty() {
                text.push_str(&slack_escape(entry.description.trim()));
                text.push('\n');
            }
            let mut fields = Vec::new();
            for (label, value) in entry.facts() {
                if matches!(label, "detected" | "changed" | "remaining" | "duration") {
                    fields.push(json!({"title": label, "value": value, "short": true}));
                } else {
                    text.push_str(&format!("{label}: {}\n", slack_escape(&value)));
                }
            }
            if entry.shows_sample() {
                text.push_str(&crate::report::sample_heading(
                    &entry.sample,
                    entry.detected,
                ));
                text.push_str(":\n```\n");
                for line in crate::report::sample_lines(&entry.sample) {
                    // A backtick fence inside a cell would end the block early.
                    text.push_str(&slack_escape(&line.replace("```", "'''")));
                    text.push('\n');
                }
                text.push_str("```");
            }
            json!({
                "fallback": entry.headline(),
                "color": slack_color(entry),
                "title": slack_escape(&entry.headline()),
                "text": text.trim_end(),
                "fields": fields,
                "footer": format!("dbjanitor on {}", slack_escape(&digest.host)),
                "ts": entry.started_at.timestamp(),
                "mrkdwn_in": ["text"],
            })
        })
        .collect();
    let left = digest.entries.len().saturating_sub(SLACK_MAX_ATTACHMENTS);
    if left > 0 {
        let more = format!("… and {left} more rule runs (see the run report)");
        attachments.push(json!({"fallback": more, "text": more, "color": "#9e9e9e"}));
    }
    json!({
        "text": slack_escape(&format!("{} on {}", digest.title(), digest.host)),
        "attachments": attachments,
    })
}

/// The request body for the configured format.
fn body(config: &WebhookConfig, digest: &Digest) -> Result<Vec<u8>, serde_json::Error> {
    match config.format {
        WebhookFormat::Json => serde_json::to_vec(&json_payload(digest)),
        WebhookFormat::Slack => serde_json::to_vec(&slack_payload(digest)),
    }
}

/// The configured extra headers plus `Content-Type`.
fn headers(config: &WebhookConfig) -> Result<HeaderMap, AttemptError> {
    let mut map = HeaderMap::new();
    map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in &config.headers {
        // Both were checked when the config loaded; stay safe anyway.
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| AttemptError::permanent(format!("invalid header name {name:?}")))?;
        let mut value = HeaderValue::from_str(value.expose())
            .map_err(|_| AttemptError::permanent(format!("invalid value for header {name}")))?;
        value.set_sensitive(true);
        map.insert(name, value);
    }
    Ok(map)
}

/// Describes a transport error without the URL (which may hold a token).
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    // The innermost cause says what happened (refused, reset, certificate).
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    format!("{kind}: {cause}")
}

/// A receiver's error answer without any part of the URL beyond scheme,
/// host and port, nor any configured header value: receivers echo the path
/// (Express answers 404 `Cannot POST /hooks/SECRET-TOKEN`), and the answer
/// ends up on stderr, in the report's `notify_errors` and in the audit table.
fn scrub_answer(config: &WebhookConfig, answer: &str) -> String {
    let mut out = config.url.scrub_beyond_origin(answer);
    for (_, value) in &config.headers {
        let value = value.expose();
        if !value.is_empty() {
            out = out.replace(value, "***");
        }
        // `Bearer <token>`: the token alone may be echoed too.
        if let Some((_, token)) = value.split_once(' ')
            && token.len() >= crate::secret::MIN_SECRET_PART
        {
            out = out.replace(token, "***");
        }
    }
    out
}

/// Sends `digest` to the webhook, retrying as configured, and returns the
/// number of attempts made.
pub async fn send(config: &WebhookConfig, digest: &Digest) -> Result<u32, DeliveryError> {
    let policy = &config.delivery;
    let prepared = body(config, digest)
        .map_err(|e| AttemptError::permanent(format!("cannot build the payload: {e}")))
        .and_then(|body| Ok((body, headers(config)?)))
        .and_then(|(body, headers)| {
            reqwest::Client::builder()
                .user_agent(concat!("dbjanitor/", env!("CARGO_PKG_VERSION")))
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(policy.timeout)
                .build()
                .map(|client| (client, body, headers))
                .map_err(|e| {
                    AttemptError::permanent(format!(
                        "cannot build an HTTP client: {}",
                        describe(&e)
                    ))
                })
        });
    let (client, body, headers) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            return Err(DeliveryError {
                last: error.message,
                attempts: 0,
                gave_up: super::retry::GaveUp::Permanent,
                deadline: policy.deadline,
            });
        }
    };
    let url = config.url.expose();
    with_retries(policy, |budget| {
        let request = client
            .post(url)
            .headers(headers.clone())
            .body(body.clone())
            .timeout(budget);
        async move {
            let response = request
                .send()
                .await
                .map_err(|e| AttemptError::transient(describe(&e.without_url())))?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            // Slack and Mattermost say what is wrong in the body (invalid_payload, ...).
            // Scrubbed before it is cut, so no token is left half-masked.
            let answer = scrub_answer(config, &response.text().await.unwrap_or_default());
            let answer: String = answer.trim().chars().take(BODY_QUOTE_CHARS).collect();
            let answer = answer.trim();
            let message = if answer.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {answer}")
            };
            let retry = if status.is_server_error()
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                || status == reqwest::StatusCode::REQUEST_TIMEOUT
            {
                retry_after.map_or(Retry::Backoff, Retry::After)
            } else {
                Retry::Never
            };
            Err(AttemptError { message, retry })
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::policy::Change;
    use crate::outcome::{Reason, RunRecord, Sample};

    fn digest(count: usize) -> Digest {
        let entries = (0..count)
            .map(|i| {
                let mut record = RunRecord::new(&format!("rule{i}"), "main", false, Utc::now());
                record.outcome = if i == 0 {
                    Outcome::Failed
                } else {
                    Outcome::Fixed
                };
                record.reason = (i == 0).then_some(Reason::SqlError);
                record.error = (i == 0).then(|| "syntax error near <!channel>".to_owned());
                record.detected = Some(3);
                record.changed = Some(3);
                record.sample = Sample {
                    columns: vec!["id".to_owned()],
                    rows: vec![vec![Some("a&b".to_owned())]],
                    after_fix: false,
                };
                Entry::new(&record, "Why & how", Change::Untracked, None)
            })
            .collect();
        Digest::new("host-1".to_owned(), Utc::now(), entries)
    }

    #[test]
    fn json_payload_is_versioned_and_complete() {
        let d = digest(2);
        let value = serde_json::to_value(json_payload(&d)).expect("json");
        assert_eq!(value["schema"], "dbjanitor.notification");
        assert_eq!(value["version"], 1);
        assert_eq!(value["summary"]["total"], 2);
        assert_eq!(value["summary"]["worst"], "failed");
        assert_eq!(value["summary"]["counts"]["failed"], 1);
        assert_eq!(value["summary"]["counts"]["fixed"], 1);
        let run = &value["runs"][0];
        for key in [
            "rule",
            "description",
            "database",
            "outcome",
            "reason",
            "message",
            "error",
            "detected",
            "changed",
            "remaining",
            "batches",
            "dry_run",
            "duration_ms",
            "started_at",
            "sample",
            "change",
            "previous_outcome",
        ] {
            assert!(run.get(key).is_some(), "runs[0].{key} missing: {run}");
        }
        assert_eq!(run["reason"], "sql_error");
        assert_eq!(run["message"], Value::Null);
        assert_eq!(run["change"], "untracked");
    }

    #[test]
    fn slack_payload_escapes_control_characters() {
        let d = digest(1);
        let value = slack_payload(&d);
        let text = value["attachments"][0]["text"].as_str().expect("text");
        assert!(
            text.contains("syntax error near &lt;!channel&gt;"),
            "{text}"
        );
        assert!(text.contains("Why &amp; how"), "{text}");
        assert!(text.contains("```\n id\n a&amp;b\n```"), "{text}");
        assert!(!value.to_string().contains("<!channel>"));
    }

    #[test]
    fn slack_payload_caps_attachments() {
        let d = digest(SLACK_MAX_ATTACHMENTS + 5);
        let value = slack_payload(&d);
        let attachments = value["attachments"].as_array().expect("attachments");
        assert_eq!(attachments.len(), SLACK_MAX_ATTACHMENTS + 1);
        assert_eq!(
            attachments[SLACK_MAX_ATTACHMENTS]["text"],
            "… and 5 more rule runs (see the run report)"
        );
    }
}
