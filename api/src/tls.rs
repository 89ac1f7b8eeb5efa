//! TLS for the device listener: the certificate chain and key from `DEVICE_TLS_CERT` /
//! `DEVICE_TLS_KEY` (PEM), served with rustls.

use crate::settings::TlsFiles;
use anyhow::Context;
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// An acceptor for the certificate and key in `files`; fails, naming the file, on anything
/// unreadable, so a bad deployment stops at start rather than at the first device.
pub fn acceptor(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect())
        .with_context(|| format!("reading DEVICE_TLS_CERT {}", files.cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "DEVICE_TLS_CERT {} holds no certificate",
        files.cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading DEVICE_TLS_KEY {}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("DEVICE_TLS_CERT and DEVICE_TLS_KEY do not make a usable pair")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
