//! TLS to Postgres with libpq's `sslmode` and `sslrootcert`.
//!
//! tokio-postgres understands `sslmode` disable/prefer/require only and
//! ignores `sslrootcert`, so both are taken out of the URL's query string
//! here, and the rest goes to tokio-postgres. What each mode means is
//! libpq's:
//!
//! - `disable`: plaintext.
//! - `prefer` (the default): TLS if the server offers it, else plaintext;
//!   the certificate is not checked (unless `sslrootcert` is given, then its
//!   chain is, as with `verify-ca`).
//! - `require`: TLS or no connection; the certificate is not checked unless
//!   `sslrootcert` is given (then as `verify-ca`).
//! - `verify-ca`: TLS, and the server's certificate chains to `sslrootcert`
//!   (or the system's roots); any host name.
//! - `verify-full`: as `verify-ca`, and the certificate names the host.
//!
//! `sslrootcert=system` means the system's roots.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => bail!("sslmode=allow is not supported: use prefer or disable"),
            _ => bail!(
                "sslmode {value:?} is not one of disable, prefer, require, verify-ca, verify-full"
            ),
        })
    }

    /// What tokio-postgres is told: whether to try TLS and whether to insist.
    fn negotiation(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

/// Whose certificates a server's chain may end at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    System,
}

/// The TLS half of a database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
}

/// Split `url` into what tokio-postgres parses and the TLS options it does
/// not. A `key=value` connection string is left whole (its `sslmode` is
/// tokio-postgres's to read).
pub fn split_url(url: &str) -> Result<(String, Option<SslMode>, Option<RootCert>)> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let Some((base, query)) = url.split_once('?').filter(|_| is_url) else {
        return Ok((url.to_string(), None, None));
    };
    let (mut mode, mut root_cert, mut rest) = (None, None, Vec::new());
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |text: &str| -> Result<String> {
            Ok(percent_decode_str(text)
                .decode_utf8()
                .context("the database URL's query string is not valid UTF-8")?
                .into_owned())
        };
        match decode(key)?.as_str() {
            "sslmode" => mode = Some(SslMode::parse(&decode(value)?)?),
            "sslrootcert" => {
                root_cert = Some(match decode(value)?.as_str() {
                    "system" => RootCert::System,
                    path => RootCert::File(path.into()),
                })
            }
            _ => rest.push(pair),
        }
    }
    let rest = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((rest, mode, root_cert))
}

/// Parse a database URL into tokio-postgres's configuration, told whether
/// to negotiate TLS, and the TLS options.
pub fn parse(url: &str) -> Result<(tokio_postgres::Config, TlsOptions)> {
    let (rest, mode, root_cert) = split_url(url)?;
    let mut config: tokio_postgres::Config = rest
        .parse()
        .context("DATABASE_URL is not a valid Postgres URL")?;
    let mode = mode.unwrap_or(match config.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => SslMode::Disable,
        tokio_postgres::config::SslMode::Require => SslMode::Require,
        _ => SslMode::Prefer,
    });
    config.ssl_mode(mode.negotiation());
    Ok((config, TlsOptions { mode, root_cert }))
}

/// The TLS connector for these options. Root certificates are read now, so
/// a bad `sslrootcert` is reported at start rather than on first connect.
pub fn connector(options: &TlsOptions) -> Result<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let check = match (options.mode, &options.root_cert) {
        (SslMode::Disable, _) | (SslMode::Prefer | SslMode::Require, None) => Check::Nothing,
        (SslMode::VerifyFull, _) => Check::ChainAndName,
        _ => Check::Chain,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        Check::Nothing => Arc::new(AnyCertificate(provider.clone())),
        Check::Chain | Check::ChainAndName => {
            let roots = roots(options.root_cert.as_ref().unwrap_or(&RootCert::System))?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .context("building the TLS certificate verifier")?;
            if check == Check::Chain {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

fn roots(root_cert: &RootCert) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match root_cert {
        RootCert::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("reading sslrootcert {}", path.display()))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                bail!("sslrootcert {} holds no usable certificate", path.display());
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                bail!("no system root certificates found: give sslrootcert=<file> in the database URL");
            }
        }
    }
    Ok(store)
}

/// `verify-ca`: the chain must end at a trusted root; the name is not
/// checked. The verifier checks the chain before the name, so a wrong name
/// means the chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
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
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
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

/// `prefer` and `require` without a root certificate: encrypted, the
/// server's identity not checked (libpq's behaviour). The handshake's
/// signatures are still checked, so the session key is the server's.
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
        verify_tls12_signature(
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
        verify_tls13_signature(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_the_url() {
        let (rest, mode, root) = split_url(
            "postgres://u:p@db:5432/app?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@db:5432/app?application_name=x");
        assert_eq!(mode, Some(SslMode::VerifyFull));
        assert_eq!(root, Some(RootCert::File("/etc/ca.pem".into())));
        let (rest, mode, root) = split_url("postgresql://db/app?sslrootcert=system").unwrap();
        assert_eq!((rest.as_str(), mode), ("postgresql://db/app", None));
        assert_eq!(root, Some(RootCert::System));
        assert!(split_url("postgres://db/app?sslmode=sometimes").is_err());
        let words = "host=db sslmode=require";
        assert_eq!(split_url(words).unwrap(), (words.to_string(), None, None));
    }

    #[test]
    fn the_mode_defaults_to_prefer_and_verify_modes_insist_on_tls() {
        use tokio_postgres::config::SslMode as Negotiation;
        let (config, options) = parse("postgres://u@db/app").unwrap();
        assert_eq!(options.mode, SslMode::Prefer);
        assert_eq!(config.get_ssl_mode(), Negotiation::Prefer);
        let (config, options) = parse("postgres://u@db/app?sslmode=verify-ca").unwrap();
        assert_eq!(options.mode, SslMode::VerifyCa);
        assert_eq!(config.get_ssl_mode(), Negotiation::Require);
        let (config, options) = parse("host=db user=u sslmode=disable").unwrap();
        assert_eq!(options.mode, SslMode::Disable);
        assert_eq!(config.get_ssl_mode(), Negotiation::Disable);
    }

    #[test]
    fn a_root_certificate_that_cannot_be_read_is_reported_at_once() {
        let options = TlsOptions {
            mode: SslMode::VerifyFull,
            root_cert: Some(RootCert::File("/nonexistent/ca.pem".into())),
        };
        let error = connector(&options).err().unwrap();
        assert!(
            format!("{error:#}").contains("/nonexistent/ca.pem"),
            "{error:#}"
        );
        let plain = TlsOptions {
            mode: SslMode::Require,
            root_cert: None,
        };
        assert!(connector(&plain).is_ok());
    }
}
