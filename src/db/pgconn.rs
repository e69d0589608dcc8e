//! PostgreSQL connections on tokio-postgres: URL handling, TLS, error texts.
//!
//! Why not sqlx: sqlx sends the startup parameters `DateStyle=ISO, MDY`,
//! `TimeZone=UTC` and `extra_float_digits`, which override the database's and
//! role's own defaults (`ALTER DATABASE ... SET timezone`) and which PgBouncer
//! refuses, and it prepares named server-side statements, which collide
//! behind a transaction-mode pooler. tokio-postgres sends only `user`,
//! `dbname`, `application_name` and `client_encoding`, so a session gets
//! exactly the settings `psql` gets, and it can run statements through the
//! unnamed statement (`execute_typed`, `query_typed`), which poolers handle.
//!
//! URLs keep libpq's spelling: `postgres://` or `postgresql://`, `sslmode`
//! (`disable`, `prefer` (default), `require`, `verify-ca`, `verify-full`),
//! `sslrootcert` (a PEM file, or `system` for the platform's trust store),
//! and the options tokio-postgres knows (`options`, `application_name`,
//! `connect_timeout`, `keepalives*`, `target_session_attrs`, ...). As in
//! libpq, `prefer` and `require` encrypt without checking the certificate
//! (unless `sslrootcert` is given with `require`, which then means
//! `verify-ca`), so no certificate store is loaded for them.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage};

use super::DbError;
use crate::secret::SecretUrl;

/// Client-side TCP keepalive: idle time before the first probe.
pub(crate) const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Client-side TCP keepalive: time between probes.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Client-side TCP keepalive: unanswered probes before the socket is dead.
pub(crate) const KEEPALIVE_RETRIES: u32 = 3;

/// How a connection verifies the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tls {
    /// `sslmode=disable`: plain TCP.
    Disable,
    /// `prefer`/`require`: encrypted if (prefer) or always (require), not verified.
    Unverified,
    /// `verify-ca`: signed by a trusted CA, any host name.
    VerifyCa(Roots),
    /// `verify-full`: signed by a trusted CA, for this host name.
    VerifyFull(Roots),
}

/// Where trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    /// A PEM file (`sslrootcert=/path`).
    File(String),
    /// The platform's store (`sslrootcert=system`).
    System,
}

/// A URL split into tokio-postgres's config and dbjanitor's TLS choice.
struct Target {
    config: Config,
    tls: Tls,
}

fn parse_url(url: &SecretUrl) -> Result<Target, String> {
    let mut parsed = url::Url::parse(url.expose()).map_err(|e| url.scrub(&e.to_string()))?;
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut sslmode = String::from("prefer");
    let mut rootcert = None;
    {
        let mut query = parsed.query_pairs_mut();
        query.clear();
        for (key, value) in &pairs {
            match key.as_str() {
                "sslmode" => sslmode = value.clone(),
                "sslrootcert" => rootcert = Some(value.clone()),
                "sslcert" | "sslkey" | "sslpassword" => {
                    return Err(format!(
                        "the URL option {key} (client certificates) is not supported"
                    ));
                }
                _ => {
                    query.append_pair(key, value);
                }
            }
        }
    }
    if parsed.query() == Some("") {
        parsed.set_query(None);
    }
    let roots = || match rootcert.as_deref() {
        Some("system") => Ok(Roots::System),
        Some(path) => Ok(Roots::File(path.to_owned())),
        None => Err(format!(
            "sslmode={sslmode} needs sslrootcert=<CA file> (or sslrootcert=system)"
        )),
    };
    let (mode, tls) = match sslmode.as_str() {
        "disable" => (SslMode::Disable, Tls::Disable),
        "allow" | "prefer" => (SslMode::Prefer, Tls::Unverified),
        "require" if rootcert.is_some() => (SslMode::Require, Tls::VerifyCa(roots()?)),
        "require" => (SslMode::Require, Tls::Unverified),
        "verify-ca" => (SslMode::Require, Tls::VerifyCa(roots()?)),
        "verify-full" => (SslMode::Require, Tls::VerifyFull(roots()?)),
        other => return Err(format!("unknown sslmode {other:?}")),
    };
    let mut config = Config::from_str(parsed.as_str()).map_err(|e| url.scrub(&e.to_string()))?;
    config.ssl_mode(mode);
    Ok(Target { config, tls })
}

/// Checks a PostgreSQL URL at config load time (nothing connects).
pub(crate) fn check_url(url: &SecretUrl) -> Result<(), String> {
    parse_url(url).map(|_| ())
}

/// Accepts any certificate (`prefer`/`require`, as libpq does) but still
/// checks that the server holds the key of the certificate it sent.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the host name is not checked.
#[derive(Debug)]
struct AnyHostName(Arc<dyn ServerCertVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn verifier(
    roots: &Roots,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, String> {
    match roots {
        Roots::System => {
            let verifier = rustls_platform_verifier::Verifier::new(Arc::clone(provider))
                .map_err(|e| format!("cannot load the system certificate store: {e}"))?;
            Ok(Arc::new(verifier))
        }
        Roots::File(path) => {
            let mut store = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read sslrootcert {path}: {e}"))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("cannot read sslrootcert {path}: {e}"))?;
                store
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            }
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(store),
                Arc::clone(provider),
            )
            .build()
            .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            Ok(verifier)
        }
    }
}

fn rustls_config(tls: &Tls) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match tls {
        Tls::Disable | Tls::Unverified => Arc::new(AnyCertificate(Arc::clone(&provider))),
        Tls::VerifyCa(roots) => Arc::new(AnyHostName(verifier(roots, &provider)?)),
        Tls::VerifyFull(roots) => verifier(roots, &provider)?,
    };
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// One PostgreSQL connection: the client, the task driving its socket, and
/// the URL whose secrets its errors must not show.
pub(crate) struct PgConn {
    pub(crate) client: Client,
    task: JoinHandle<()>,
    pub(crate) url: SecretUrl,
    /// Host and port as given in the URL (the first of each), for pooler detection.
    pub(crate) host: Option<String>,
    /// The port connected to.
    pub(crate) port: u16,
}

impl PgConn {
    /// Connects within `timeout`; `application_name` unless the URL sets one.
    pub(crate) async fn connect(
        url: &SecretUrl,
        application_name: &str,
        timeout: Duration,
    ) -> Result<Self, DbError> {
        let Target { mut config, tls } = parse_url(url).map_err(DbError::Connect)?;
        if config.get_application_name().is_none() {
            config.application_name(application_name);
        }
        config
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_RETRIES);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        let host = config.get_hosts().first().map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        });
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let connect = async {
            if tls == Tls::Disable {
                let (client, connection) = config.connect(NoTls).await?;
                Ok((client, tokio::spawn(drive(connection))))
            } else {
                let rustls = rustls_config(&tls).map_err(DbErrorText)?;
                let make = tokio_postgres_rustls::MakeRustlsConnect::new(rustls);
                let (client, connection) = config.connect(make).await?;
                Ok((client, tokio::spawn(drive(connection))))
            }
        };
        let result: Result<_, ConnectFailure> = match tokio::time::timeout(timeout, connect).await {
            Ok(result) => result,
            Err(_) => {
                return Err(DbError::Connect(format!(
                    "no answer within {}",
                    humantime::format_duration(timeout)
                )));
            }
        };
        let (client, task) = result.map_err(|e| match e {
            ConnectFailure::Pg(e) => DbError::Connect(url.scrub(&describe(&e))),
            ConnectFailure::Text(DbErrorText(text)) => DbError::Connect(url.scrub(&text)),
        })?;
        Ok(Self {
            client,
            task,
            url: url.clone(),
            host,
            port,
        })
    }

    /// A driver error as a [`DbError`], scrubbed of the URL's secrets.
    pub(crate) fn error(&self, err: &tokio_postgres::Error) -> DbError {
        classify(&self.url, err)
    }

    /// Runs our own SQL (several statements allowed) through the simple protocol.
    pub(crate) async fn batch(&self, sql: &str) -> Result<(), DbError> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(|e| self.error(&e))
    }

    /// The first cell of the first row of our own SQL, as text.
    pub(crate) async fn text(&self, sql: &str) -> Result<Option<String>, DbError> {
        let messages = self
            .client
            .simple_query(sql)
            .await
            .map_err(|e| self.error(&e))?;
        Ok(messages
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
                _ => None,
            })
            .flatten())
    }

    /// Runs ONE statement with bound parameters through the unnamed statement
    /// (Parse, Bind, Execute, Sync): the server refuses a second statement,
    /// and nothing named stays behind on the server connection.
    pub(crate) async fn execute_one(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<u64, DbError> {
        self.client
            .execute_typed(sql, params)
            .await
            .map_err(|e| self.error(&e))
    }

    /// Rows of ONE statement with bound parameters, through the unnamed statement.
    /// Only for our own queries, whose result columns have built-in types.
    pub(crate) async fn query_one_stmt(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<tokio_postgres::Row>, DbError> {
        self.client
            .query_typed(sql, params)
            .await
            .map_err(|e| self.error(&e))
    }

    /// Closes politely (Terminate), within [`super::CLOSE_TIMEOUT`].
    pub(crate) async fn close(self) {
        let Self { client, task, .. } = self;
        drop(client);
        let abort = task.abort_handle();
        if tokio::time::timeout(super::CLOSE_TIMEOUT, task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }

    /// Drops the socket at once: the server rolls back what was open and
    /// releases the connection's locks as soon as it notices.
    pub(crate) fn abort(self) {
        self.task.abort();
    }
}

struct DbErrorText(String);

enum ConnectFailure {
    Pg(tokio_postgres::Error),
    Text(DbErrorText),
}

impl From<tokio_postgres::Error> for ConnectFailure {
    fn from(e: tokio_postgres::Error) -> Self {
        ConnectFailure::Pg(e)
    }
}

impl From<DbErrorText> for ConnectFailure {
    fn from(e: DbErrorText) -> Self {
        ConnectFailure::Text(e)
    }
}

async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "PostgreSQL connection ended with an error");
    }
}

/// A driver error as text: the server's message and code, or the error chain.
pub(crate) fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return format!("{} (code {})", db.message(), db.code().code());
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Sorts a driver error: the server's own statement timeout is
/// [`DbError::Timeout`]; a statement cancelled by someone else
/// (`pg_cancel_backend`, also SQLSTATE 57014) and everything else is
/// [`DbError::Sql`]; a refused read-only or multi-statement query is
/// [`DbError::Unsafe`].
pub(crate) fn classify(url: &SecretUrl, err: &tokio_postgres::Error) -> DbError {
    let text = url.scrub(&describe(err));
    let Some(db) = err.as_db_error() else {
        return DbError::Sql(text);
    };
    let code = db.code();
    if *code == SqlState::QUERY_CANCELED && db.message().contains("statement timeout") {
        return DbError::Timeout(text);
    }
    if *code == SqlState::READ_ONLY_SQL_TRANSACTION
        || (*code == SqlState::SYNTAX_ERROR
            && db.message().contains("cannot insert multiple commands"))
    {
        return DbError::Unsafe(text);
    }
    DbError::Sql(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Result<Target, String> {
        parse_url(&SecretUrl::new(url.to_owned()))
    }

    #[test]
    fn sslmodes_map_like_libpq() {
        let t = target("postgres://u:pw@h/db?sslmode=disable").expect("disable");
        assert_eq!(t.tls, Tls::Disable);
        assert_eq!(
            target("postgresql://h/db").expect("default").tls,
            Tls::Unverified
        );
        assert_eq!(
            target("postgres://h/db?sslmode=require")
                .expect("require")
                .tls,
            Tls::Unverified
        );
        assert_eq!(
            target("postgres://h/db?sslmode=require&sslrootcert=/ca.pem")
                .expect("require+root")
                .tls,
            Tls::VerifyCa(Roots::File("/ca.pem".into()))
        );
        assert_eq!(
            target("postgres://h/db?sslmode=verify-full&sslrootcert=system")
                .expect("verify-full")
                .tls,
            Tls::VerifyFull(Roots::System)
        );
        assert!(target("postgres://h/db?sslmode=verify-ca").is_err());
        assert!(target("postgres://h/db?sslmode=bogus").is_err());
    }

    #[test]
    fn errors_never_show_the_password() {
        let err = target("postgres://u:hunter2@h/db?sslmode=disable&bogus=1")
            .err()
            .unwrap_or_default();
        assert!(!err.contains("hunter2"), "{err}");
        let err = target("postgres://u:hunter2@h/db?password=hunter2&sslmode=nope")
            .err()
            .unwrap_or_default();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
