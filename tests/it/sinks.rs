//! Real servers on loopback that record what dbjanitor sends them: an HTTP
//! server (wiremock, a real hyper server on its own thread) and an SMTP server
//! (mailin-embedded, in-process, optionally with STARTTLS and AUTH). No mocks
//! of dbjanitor's own code: the binary connects to these over TCP.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailin_embedded::response::{AUTH_OK, INTERNAL_ERROR, OK};
use mailin_embedded::{AuthMechanism, Handler, Response, Server, SslConfig};
use serde_json::Value;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// One request the HTTP sink received.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    /// Every header, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub raw: String,
    /// The body parsed as JSON (`Null` if it is not JSON).
    pub json: Value,
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Headers and body together, for "this must appear nowhere" checks.
    pub fn everything(&self) -> String {
        let mut text = format!("{} {}\n", self.method, self.path);
        for (name, value) in &self.headers {
            text.push_str(&format!("{name}: {value}\n"));
        }
        text.push_str(&self.raw);
        text
    }
}

/// An HTTP server that records requests and answers as told.
pub struct HttpSink {
    server: MockServer,
}

impl HttpSink {
    async fn with(mocks: Vec<Mock>) -> HttpSink {
        // A server of its own (not wiremock's shared pool): no request of
        // another test can reach it.
        let server = MockServer::builder().start().await;
        for mock in mocks {
            server.register(mock).await;
        }
        HttpSink { server }
    }

    /// Answers every POST with 200 `ok` (what Slack answers).
    pub async fn ok() -> HttpSink {
        Self::with(vec![
            Mock::given(method("POST"))
                .respond_with(ResponseTemplate::new(200).set_body_string("ok")),
        ])
        .await
    }

    /// Answers the first `times` POSTs with `status`, then 200.
    pub async fn failing(status: u16, times: u64) -> HttpSink {
        Self::with(vec![
            Mock::given(method("POST"))
                .respond_with(ResponseTemplate::new(status).set_body_string("try again later"))
                .up_to_n_times(times)
                .with_priority(1),
            Mock::given(method("POST"))
                .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
                .with_priority(2),
        ])
        .await
    }

    /// Accepts every POST and answers only after `delay`.
    pub async fn slow(delay: Duration) -> HttpSink {
        Self::with(vec![
            Mock::given(method("POST")).respond_with(ResponseTemplate::new(200).set_delay(delay)),
        ])
        .await
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.uri())
    }

    /// Every request received so far.
    pub async fn requests(&self) -> Vec<HttpRequest> {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                let raw = String::from_utf8_lossy(&r.body).into_owned();
                let headers: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.as_str().to_ascii_lowercase(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect();
                HttpRequest {
                    method: r.method.to_string(),
                    path: r.url.path().to_owned(),
                    content_type: headers
                        .iter()
                        .find(|(n, _)| n == "content-type")
                        .map(|(_, v)| v.clone()),
                    headers,
                    json: serde_json::from_str(&raw).unwrap_or(Value::Null),
                    raw,
                }
            })
            .collect()
    }
}

/// A URL on loopback where nothing listens: connections are refused.
pub fn refused_url(path: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    format!("http://127.0.0.1:{port}{path}")
}

/// One mail the SMTP sink accepted.
#[derive(Debug, Clone, Default)]
pub struct Mail {
    pub from: String,
    /// Envelope recipients (RCPT TO), as sent.
    pub recipients: Vec<String>,
    /// The whole message: headers, blank line, body.
    pub data: String,
}

impl Mail {
    /// A header's value (first occurrence, unfolded).
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or_default();
        let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
        unfolded.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    pub fn subject(&self) -> String {
        self.header("Subject").unwrap_or_default()
    }

    /// The body as a reader sees it: quoted-printable decoded (if the mail
    /// uses it), CRLF turned into LF.
    pub fn body(&self) -> String {
        let body = self
            .data
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        let body = if self
            .header("Content-Transfer-Encoding")
            .is_some_and(|e| e.eq_ignore_ascii_case("quoted-printable"))
        {
            decode_quoted_printable(&body)
        } else {
            body
        };
        body.replace("\r\n", "\n")
    }
}

/// RFC 2045 quoted-printable: `=` + CRLF is a soft line break, `=XX` a byte.
fn decode_quoted_printable(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            if bytes[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            let hex =
                std::str::from_utf8(bytes.get(i + 1..i + 3).unwrap_or_default()).unwrap_or("");
            if let Ok(byte) = u8::from_str_radix(hex, 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug, Default)]
struct Recorded {
    mails: Vec<Mail>,
    /// (user, password) of every successful AUTH.
    logins: Vec<(String, String)>,
    /// How many more DATA commands to refuse with a 451.
    refuse: usize,
    current: Mail,
}

#[derive(Clone)]
struct Recorder(Arc<Mutex<Recorded>>);

impl Recorder {
    fn with<T>(&self, f: impl FnOnce(&mut Recorded) -> T) -> T {
        let mut guard = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }
}

impl Handler for Recorder {
    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.with(|r| {
            r.current = Mail {
                from: from.to_owned(),
                recipients: to.to_vec(),
                data: String::new(),
            };
        });
        OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.with(|r| r.current.data.push_str(&String::from_utf8_lossy(buf)));
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        self.with(|r| {
            if r.refuse > 0 {
                r.refuse -= 1;
                INTERNAL_ERROR
            } else {
                let mail = std::mem::take(&mut r.current);
                r.mails.push(mail);
                OK
            }
        })
    }

    fn auth_plain(&mut self, _authz: &str, user: &str, password: &str) -> Response {
        self.with(|r| r.logins.push((user.to_owned(), password.to_owned())));
        AUTH_OK
    }

    fn auth_login(&mut self, user: &str, password: &str) -> Response {
        self.with(|r| r.logins.push((user.to_owned(), password.to_owned())));
        AUTH_OK
    }
}

/// An SMTP server on loopback recording every mail.
pub struct SmtpSink {
    recorder: Recorder,
    port: u16,
    /// The CA that signed the server's certificate (STARTTLS sinks only).
    pub ca_pem: Option<String>,
    _dir: tempfile::TempDir,
}

impl SmtpSink {
    /// Plain SMTP, no TLS, no AUTH.
    pub fn plain() -> SmtpSink {
        Self::start(false, 0)
    }

    /// Plain SMTP that answers the first `times` mails with 451 (try later).
    pub fn refusing(times: usize) -> SmtpSink {
        Self::start(false, times)
    }

    /// STARTTLS with a certificate for 127.0.0.1 signed by a fresh CA
    /// ([`SmtpSink::ca_pem`]), and AUTH PLAIN/LOGIN accepting any password.
    pub fn starttls() -> SmtpSink {
        Self::start(true, 0)
    }

    fn start(tls: bool, refuse: usize) -> SmtpSink {
        let dir = tempfile::tempdir().expect("temp dir");
        let recorder = Recorder(Arc::new(Mutex::new(Recorded {
            refuse,
            ..Recorded::default()
        })));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind SMTP port");
        let port = listener.local_addr().expect("address").port();
        let mut server = Server::new(recorder.clone());
        server.with_name("sink.test").with_tcp_listener(listener);
        let mut ca_pem = None;
        if tls {
            let (ca, cert, key) = certificates();
            let cert_path = dir.path().join("cert.pem");
            let key_path = dir.path().join("key.pem");
            std::fs::write(&cert_path, cert).expect("write cert");
            std::fs::write(&key_path, key).expect("write key");
            server
                .with_ssl(SslConfig::SelfSigned {
                    cert_path: path_text(&cert_path),
                    key_path: path_text(&key_path),
                })
                .expect("TLS set-up")
                .with_auth(AuthMechanism::Plain)
                .with_auth(AuthMechanism::Login);
            ca_pem = Some(ca);
        }
        // Serves until the test process ends.
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        SmtpSink {
            recorder,
            port,
            ca_pem,
            _dir: dir,
        }
    }

    /// `smtp://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.recorder.with(|r| r.mails.clone())
    }

    pub fn logins(&self) -> Vec<(String, String)> {
        self.recorder.with(|r| r.logins.clone())
    }
}

fn path_text(path: &Path) -> String {
    path.to_str().expect("UTF-8 temp path").to_owned()
}

/// A CA and a server certificate for 127.0.0.1 it signed: (ca, cert, key) as PEM.
fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "dbjanitor test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    (ca.pem(), cert.pem(), key.serialize_pem())
}
