//! TLS for the device listener: the certificate chain and key from `DEVICE_TLS_CERT` /
//! `DEVICE_TLS_KEY` (PEM), served with rustls; and, with `DEVICE_CLIENT_CA`, the client
//! certificates OMA-DM clients show, verified against that CA.

use crate::settings::TlsFiles;
use anyhow::Context;
use refresh_shared::store::cert_thumbprint;
use rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::{path::Path, sync::Arc};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// The certificate a device showed in the TLS handshake, verified against `DEVICE_CLIENT_CA`:
/// put on each of the connection's requests, for the OMA-DM route to find the device by.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    /// SHA-256 of the certificate, lowercase hex: what devices are stored with.
    pub thumbprint: String,
}

/// An acceptor for the certificate and key in `files`; fails, naming the file, on anything
/// unreadable, so a bad deployment stops at start rather than at the first device.
pub fn acceptor(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    let chain = certificates(&files.cert, "DEVICE_TLS_CERT")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading DEVICE_TLS_KEY {}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let config = match &files.client_ca {
        // Certificates are asked for, not required: the agent's devices on the same listener
        // prove themselves with node keys; the OMA-DM route refuses a request without one.
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates(ca, "DEVICE_CLIENT_CA")? {
                roots.add(certificate).with_context(|| {
                    format!("DEVICE_CLIENT_CA {}: not a CA certificate", ca.display())
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .with_context(|| format!("DEVICE_CLIENT_CA {}", ca.display()))?;
            config.with_client_cert_verifier(verifier)
        }
        None => config.with_no_client_auth(),
    };
    let config = config
        .with_single_cert(chain, key)
        .context("DEVICE_TLS_CERT and DEVICE_TLS_KEY do not make a usable pair")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The verified certificate the client of `stream` showed, if it showed one.
pub fn client_certificate<T>(stream: &TlsStream<T>) -> Option<ClientCertificate> {
    let (_, connection) = stream.get_ref();
    let leaf = connection.peer_certificates()?.first()?;
    Some(ClientCertificate {
        thumbprint: cert_thumbprint(leaf),
    })
}

/// Every certificate in the PEM file at `path` (at least one), named by `variable` on failure.
fn certificates(path: &Path, variable: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect())
        .with_context(|| format!("reading {variable} {}", path.display()))?;
    anyhow::ensure!(
        !certificates.is_empty(),
        "{variable} {} holds no certificate",
        path.display()
    );
    Ok(certificates)
}
