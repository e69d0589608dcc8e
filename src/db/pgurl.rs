//! PostgreSQL URLs and TLS, as libpq reads them.
//!
//! Why apart from `pgconn`: the URL is checked at config load (nothing
//! connects) and its TLS choice decides the certificate verifier; both are
//! pure functions, tested here without a server.
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

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::Config;
use tokio_postgres::config::SslMode;

use crate::secret::SecretUrl;

/// How a connection verifies the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Tls {
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
pub(super) enum Roots {
    /// A PEM file (`sslrootcert=/path`).
    File(String),
    /// The platform's store (`sslrootcert=system`).
    System,
}

/// A URL split into tokio-postgres's config and dbjanitor's TLS choice.
pub(super) struct Target {
    pub(super) config: Config,
    pub(super) tls: Tls,
}

/// Splits a URL into tokio-postgres's config and the TLS choice; errors
/// never show the URL's secrets.
pub(super) fn parse_url(url: &SecretUrl) -> Result<Target, String> {
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
                "sslmode" => sslmode.clone_from(value),
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

/// A verifier trusting `roots`.
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

/// The rustls client config for `tls` (aws-lc-rs provider).
pub(super) fn rustls_config(tls: &Tls) -> Result<ClientConfig, String> {
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
