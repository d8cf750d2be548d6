//! Mutual TLS on the control connection, from PEM files: a CA that both sides trust,
//! and each side's certificate and key. The same files give criu its TLS on the
//! page-server connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};

use crate::error::{Error, Result};

/// The PEM files of one side: the CA both sides trust, this side's certificate
/// (signed by that CA; the destination's names its address) and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate.
    pub ca: PathBuf,
    /// This side's certificate.
    pub cert: PathBuf,
    /// This side's private key.
    pub key: PathBuf,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

fn bad(option: &'static str, path: &Path, why: impl std::fmt::Display) -> Error {
    Error::invalid(option, format!("{}: {why}", path.display()))
}

fn certs(option: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_pem(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(option, path, e))?;
    if certs.is_empty() {
        return Err(bad(option, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read_pem(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| bad("tls key", path, e))?
        .ok_or_else(|| bad("tls key", path, "no PEM private key in it"))
}

fn roots(files: &TlsFiles) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in certs("tls ca", &files.ca)? {
        roots.add(c).map_err(|e| bad("tls ca", &files.ca, e))?;
    }
    Ok(roots)
}

impl TlsFiles {
    /// The destination's side: its certificate, and every client must present one
    /// the CA signed.
    pub(crate) fn server(&self) -> Result<tokio_rustls::TlsAcceptor> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots(self)?), provider())
                .build()
                .map_err(|e| bad("tls ca", &self.ca, e))?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::invalid("tls", e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs("tls cert", &self.cert)?, key(&self.key)?)
            .map_err(|e| bad("tls cert", &self.cert, e))?;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }

    /// The source's side: the destination must present a certificate for `name`
    /// signed by the CA, and we present ours.
    pub(crate) fn client(&self) -> Result<tokio_rustls::TlsConnector> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::invalid("tls", e.to_string()))?
            .with_root_certificates(roots(self)?)
            .with_client_auth_cert(certs("tls cert", &self.cert)?, key(&self.key)?)
            .map_err(|e| bad("tls cert", &self.cert, e))?;
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }
}

/// The name the destination's certificate must carry for `host` (an address or a
/// DNS name).
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| Error::invalid("to", format!("{host} is no server name: {e}")))
}
