//! TLS for the device listener: the certificate chain and key from `DEVICE_TLS_CERT` /
//! `DEVICE_TLS_KEY` (PEM), served with rustls; and, with `DEVICE_CLIENT_CA`, the client
//! certificates OMA-DM clients show, verified against that CA.
//!
//! A client certificate is verified once the handshake is done, not during it: the handshake
//! only checks that the client holds the certificate's key. So a certificate the CA did not
//! issue gets the route's clear 401 (which a device's logs and an operator can read) instead of
//! a TLS alert, and a connection without one still serves the agent's node-key route. A
//! certificate a trusted proxy passes on is verified against the same CA (`routes/omadm.rs`).

use crate::settings::TlsFiles;
use anyhow::Context;
use refresh_shared::store::cert_thumbprint;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::CryptoProvider,
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};
use std::{path::Path, sync::Arc};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// The certificate a device showed in the TLS handshake, verified against `DEVICE_CLIENT_CA`:
/// put on each of the connection's requests, for the OMA-DM route to find the device by.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    /// SHA-256 of the certificate, lowercase hex: what devices are stored with.
    pub thumbprint: String,
}

/// `DEVICE_CLIENT_CA`: the CA device certificates must chain to, with rustls' WebPKI verifier.
#[derive(Clone)]
pub struct ClientCa(Arc<dyn ClientCertVerifier>);

impl ClientCa {
    /// The CA certificates in the PEM file at `path`; fails, naming the variable, on anything
    /// unreadable.
    pub fn load(path: &Path) -> anyhow::Result<ClientCa> {
        let mut roots = RootCertStore::empty();
        for certificate in certificates(path, "DEVICE_CLIENT_CA")? {
            roots.add(certificate).with_context(|| {
                format!("DEVICE_CLIENT_CA {}: not a CA certificate", path.display())
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .with_context(|| format!("DEVICE_CLIENT_CA {}", path.display()))?;
        Ok(ClientCa(verifier))
    }

    /// `chain` (the device's certificate first), if the CA issued it and it is valid now.
    pub fn vouch_for(&self, chain: &[CertificateDer<'_>]) -> Option<ClientCertificate> {
        let (leaf, intermediates) = chain.split_first()?;
        match self
            .0
            .verify_client_cert(leaf, intermediates, UnixTime::now())
        {
            Ok(_) => Some(ClientCertificate {
                thumbprint: cert_thumbprint(leaf),
            }),
            Err(error) => {
                tracing::debug!(%error, "a client certificate DEVICE_CLIENT_CA does not vouch for");
                None
            }
        }
    }
}

/// The device listener's TLS: the acceptor, and the CA client certificates are checked against.
#[derive(Clone)]
pub struct DeviceTls {
    pub acceptor: TlsAcceptor,
    client_ca: Option<ClientCa>,
}

impl DeviceTls {
    /// The certificate the client of `stream` showed, if it showed one `DEVICE_CLIENT_CA`
    /// vouches for.
    pub fn client_certificate<T>(&self, stream: &TlsStream<T>) -> Option<ClientCertificate> {
        let (_, connection) = stream.get_ref();
        self.client_ca
            .as_ref()?
            .vouch_for(connection.peer_certificates()?)
    }
}

/// Asks for a client certificate and checks the client holds its key, leaving the chain's
/// verification to [`DeviceTls::client_certificate`] (see the module's comment).
#[derive(Debug)]
struct VerifiedAfterHandshake(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for VerifiedAfterHandshake {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
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

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The device listener's TLS for the certificate and key in `files`, asking for client
/// certificates when there is a `client_ca`; fails, naming the file, on anything unreadable,
/// so a bad deployment stops at start rather than at the first device.
pub fn device_tls(files: &TlsFiles, client_ca: Option<&ClientCa>) -> anyhow::Result<DeviceTls> {
    let chain = certificates(&files.cert, "DEVICE_TLS_CERT")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading DEVICE_TLS_KEY {}", files.key.display()))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let config = match client_ca {
        // Certificates are asked for, not required: the agent's devices on the same listener
        // prove themselves with node keys; the OMA-DM route refuses a request without one.
        Some(ClientCa(verifier)) => {
            config.with_client_cert_verifier(Arc::new(VerifiedAfterHandshake(Arc::clone(verifier))))
        }
        None => config.with_no_client_auth(),
    };
    let config = config
        .with_single_cert(chain, key)
        .context("DEVICE_TLS_CERT and DEVICE_TLS_KEY do not make a usable pair")?;
    Ok(DeviceTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        client_ca: client_ca.cloned(),
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
