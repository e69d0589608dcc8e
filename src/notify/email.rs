//! Email notifier: one plain-text mail per digest, over SMTP with lettre.
//!
//! `tls: none` speaks plain SMTP (a relay on the same host or pod);
//! `starttls` upgrades and *requires* the upgrade (a relay that does not
//! offer STARTTLS is an error, never a silent downgrade); `tls` is implicit
//! TLS (SMTPS, port 465). Certificates are checked against the system store
//! plus `ca_file`. Credentials, when given, are sent only after TLS is up
//! (lettre refuses otherwise), except with `tls: none`, where the operator
//! chose a trusted local relay.
//!
//! The mail is plain text (it is read in terminals, mobile clients and
//! ticket systems alike) with `Auto-Submitted: auto-generated` (RFC 3834),
//! so vacation responders do not answer it.

use std::str::FromStr;

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncTransport, Tokio1Executor};

use super::message::Digest;
use super::retry::{AttemptError, DeliveryError, GaveUp, Retry, with_retries};
use crate::config::{EmailConfig, EmailTls, ca_certificate};

/// Builds the mail for `digest`.
pub fn build_message(config: &EmailConfig, digest: &Digest) -> Result<Message, String> {
    let mailbox = |text: &str| {
        Mailbox::from_str(text).map_err(|e| format!("{text:?} is not an email address: {e}"))
    };
    let mut builder = Message::builder()
        .from(mailbox(&config.from)?)
        .subject(digest.title())
        .message_id(Some(format!(
            "<dbjanitor.{}.{}@{}>",
            digest.sent_at.timestamp_micros(),
            std::process::id(),
            message_id_domain(&digest.host)
        )))
        .header(ContentType::TEXT_PLAIN);
    for to in &config.to {
        builder = builder.to(mailbox(to)?);
    }
    for cc in &config.cc {
        builder = builder.cc(mailbox(cc)?);
    }
    let mut message = builder
        .body(digest.text())
        .map_err(|e| format!("cannot build the mail: {e}"))?;
    message.headers_mut().insert_raw(HeaderValue::new(
        HeaderName::new_from_ascii_str("Auto-Submitted"),
        "auto-generated".to_owned(),
    ));
    Ok(message)
}

/// A host name fit for the right side of a Message-ID.
fn message_id_domain(host: &str) -> String {
    let clean: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        .collect();
    if clean.is_empty() {
        "localhost".to_owned()
    } else {
        clean
    }
}

/// The SMTP transport for `config`; errors here are configuration problems
/// that no retry can fix.
fn transport(
    config: &EmailConfig,
    hello: &str,
    timeout: std::time::Duration,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let url = url::Url::parse(config.smtp.expose())
        .map_err(|e| format!("invalid smtp URL {}: {e}", config.smtp.redacted()))?;
    let host = url
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("no host in smtp URL {}", config.smtp.redacted()))?;
    let port = url.port().unwrap_or(match config.tls {
        EmailTls::None => 25,
        EmailTls::Starttls => 587,
        EmailTls::Tls => 465,
    });
    let tls = match config.tls {
        EmailTls::None => Tls::None,
        EmailTls::Starttls | EmailTls::Tls => {
            let mut params = TlsParameters::builder(host.clone());
            if let Some(pem) = &config.ca_pem {
                let cert = ca_certificate(pem).map_err(|e| format!("ca_file {e}"))?;
                params = params.add_root_certificate(cert);
            }
            let params = params
                .build_rustls()
                .map_err(|e| format!("cannot set up TLS: {e}"))?;
            if config.tls == EmailTls::Tls {
                Tls::Wrapper(params)
            } else {
                Tls::Required(params)
            }
        }
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port)
        .tls(tls)
        .timeout(Some(timeout))
        .hello_name(ClientId::Domain(message_id_domain(hello)));
    let credentials = match (&config.username, &config.password) {
        (Some(user), password) => Some(Credentials::new(
            user.clone(),
            password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default(),
        )),
        // smtp://user:password@host also works.
        (None, _) if !url.username().is_empty() => {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            Some(Credentials::new(
                decode(url.username()),
                decode(url.password().unwrap_or_default()),
            ))
        }
        (None, _) => None,
    };
    if let Some(credentials) = credentials {
        builder = builder
            .credentials(credentials)
            .authentication(vec![Mechanism::Plain, Mechanism::Login]);
    }
    Ok(builder.build())
}

/// Classifies an SMTP error: 4xx replies and network trouble may pass,
/// 5xx replies, TLS and client errors will not.
fn attempt_error(error: &lettre::transport::smtp::Error) -> AttemptError {
    let mut message = error.to_string();
    // lettre's "Connection error" hides the cause in its source chain.
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    let cause = cause.to_string();
    if !message.contains(&cause) {
        message = format!("{message}: {cause}");
    }
    let retry = if error.is_permanent() || error.is_tls() || error.is_client() {
        Retry::Never
    } else {
        Retry::Backoff
    };
    AttemptError { message, retry }
}

/// Sends `digest` by mail, retrying as configured, and returns the number of
/// attempts made.
pub async fn send(config: &EmailConfig, digest: &Digest) -> Result<u32, DeliveryError> {
    let policy = &config.delivery;
    let prepared = build_message(config, digest)
        .and_then(|message| Ok((message, transport(config, &digest.host, policy.timeout)?)));
    let (message, transport) = match prepared {
        Ok(prepared) => prepared,
        Err(last) => {
            return Err(DeliveryError {
                last,
                attempts: 0,
                gave_up: GaveUp::Permanent,
                deadline: policy.deadline,
            });
        }
    };
    let transport = &transport;
    with_retries(policy, |_budget| {
        let message = message.clone();
        async move {
            transport
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| attempt_error(&e))
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::config::DeliveryPolicy;
    use crate::notify::message::Entry;
    use crate::notify::policy::Change;
    use crate::outcome::{Outcome, RunRecord};
    use crate::secret::{SecretString, SecretUrl};

    fn config() -> EmailConfig {
        EmailConfig {
            smtp: SecretUrl::new("smtp://mail:587".to_owned()),
            tls: EmailTls::Starttls,
            from: "Janitor <janitor@example.org>".to_owned(),
            to: vec!["dba@example.org".to_owned(), "ops@example.org".to_owned()],
            cc: vec!["lead@example.org".to_owned()],
            username: Some("janitor".to_owned()),
            password: Some(SecretString::new("pw".to_owned())),
            ca_pem: None,
            delivery: DeliveryPolicy::default(),
        }
    }

    #[test]
    fn the_mail_has_recipients_subject_and_a_plain_text_body() {
        let mut record = RunRecord::new("jobs.stuck", "main", false, Utc::now());
        record.outcome = Outcome::Fixed;
        let digest = Digest::new(
            "host-1".to_owned(),
            Utc::now(),
            vec![Entry::new(&record, "", Change::Untracked, None)],
        );
        let message = build_message(&config(), &digest).expect("message");
        let text = String::from_utf8(message.formatted()).expect("utf-8");
        for needle in [
            "From: Janitor <janitor@example.org>",
            "To: dba@example.org, ops@example.org",
            "Cc: lead@example.org",
            "Subject: [dbjanitor] fixed: jobs.stuck on main",
            "Content-Type: text/plain; charset=utf-8",
            "Auto-Submitted: auto-generated",
            "@host-1>",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        let envelope = message.envelope();
        assert_eq!(envelope.to().len(), 3);
    }

    #[test]
    fn a_bad_ca_file_or_url_is_a_permanent_error() {
        let mut bad = config();
        bad.smtp = SecretUrl::new("smtp://".to_owned());
        assert!(transport(&bad, "h", std::time::Duration::from_secs(1)).is_err());
        let mut bad = config();
        bad.ca_pem = Some(b"not a certificate".to_vec());
        assert!(transport(&bad, "h", std::time::Duration::from_secs(1)).is_err());
    }
}
