//! What the OMA-DM tests need: a certificate authority made at run time (nothing secret is
//! committed), a stack whose device listener serves TLS with client certificates, and devices
//! whose DM client (the sim) opens sessions with a certificate of their own.

use crate::{DEADLINE, TestStack, wait_until};
use bson::oid::ObjectId;
use push_gateway_sim::omadm::SessionRecord;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use refresh_shared::{
    device::DeviceState,
    store::{Device, OmaDmIdentity, cert_thumbprint},
};
use serde_json::{Value, json};
use std::path::PathBuf;

/// A CA, with the certificates it issues.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// SHA-256 of the certificate: what the device is stored with.
    pub thumbprint: String,
}

impl Authority {
    pub fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        Authority {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The device listener's certificate, for `localhost`.
    pub fn server(&self) -> Issued {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A device's client certificate, named `name`.
    pub fn client(&self, name: &str) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().expect("key");
        let certificate = params.signed_by(&key, &self.issuer).expect("certificate");
        Issued {
            cert_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
            thumbprint: cert_thumbprint(certificate.der()),
        }
    }
}

/// A device managed over OMA-DM: its record, its DM id and its certificate.
#[derive(Debug, Clone)]
pub struct DmDevice {
    pub device: Device,
    pub dm_device_id: String,
    pub certificate: Issued,
}

impl TestStack {
    /// A stack whose device listener serves TLS with a certificate `authority` issued and
    /// verifies client certificates against it; the sim's devices trust it and open their
    /// sessions there. `overrides` as for [`TestStack::start_with`].
    pub async fn start_omadm(authority: &Authority, overrides: &[(&str, String)]) -> TestStack {
        TestStack::omadm(authority, overrides, false).await
    }

    /// [`TestStack::start_omadm`] with the api and worker as the real binaries.
    pub async fn spawn_omadm(authority: &Authority, overrides: &[(&str, String)]) -> TestStack {
        TestStack::omadm(authority, overrides, true).await
    }

    async fn omadm(authority: &Authority, overrides: &[(&str, String)], spawn: bool) -> TestStack {
        let dir = std::env::temp_dir().join(format!("refresh-omadm-{}", ObjectId::new()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let server = authority.server();
        let write = |name: &str, pem: &str| -> PathBuf {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write PEM");
            path
        };
        let files = [
            ("DEVICE_TLS_CERT", write("server.pem", &server.cert_pem)),
            ("DEVICE_TLS_KEY", write("server.key", &server.key_pem)),
            ("DEVICE_CLIENT_CA", write("ca.pem", &authority.ca_pem())),
        ];
        let mut vars: Vec<(&str, String)> = files
            .iter()
            .map(|(name, path)| (*name, path.display().to_string()))
            .collect();
        vars.extend_from_slice(overrides);
        let stack = if spawn {
            TestStack::spawn_with(&vars).await
        } else {
            TestStack::start_with(&vars).await
        };
        // The files are read at start.
        std::fs::remove_dir_all(&dir).ok();
        stack.sim.report_to(&stack.device_url());
        stack
            .sim
            .trust(authority.ca_pem().as_bytes())
            .expect("the CA's PEM");
        stack
    }

    /// The device listener as a TLS client sees it: `https://localhost:{port}`.
    pub fn device_url(&self) -> String {
        let port = self.devices.rsplit(':').next().expect("a port");
        format!("https://localhost:{port}")
    }

    /// An ACTIVE device reached through WNS alone, whose DM client (the sim) holds a
    /// certificate `authority` issued; `lacks` are nodes it answers 404 for.
    pub async fn dm_device(&self, authority: &Authority, lacks: &[&str]) -> DmDevice {
        let (mut new, _) =
            self.new_device(self.organization.id, DeviceState::Active, false, true, &[]);
        let dm_device_id = format!("DM-{}", ObjectId::new().to_hex().to_uppercase());
        let certificate = authority.client(&dm_device_id);
        new.omadm =
            Some(OmaDmIdentity::new(&dm_device_id, &certificate.thumbprint).expect("an identity"));
        let device = self.store.create_device(new).await.expect("create device");
        let dm = DmDevice {
            device,
            dm_device_id,
            certificate,
        };
        self.register_dm_device(&dm, lacks).await;
        dm
    }

    /// Tells the sim to run `dm`'s DM client.
    pub async fn register_dm_device(&self, dm: &DmDevice, lacks: &[&str]) {
        let channel = dm.device.push.wns.as_ref().expect("a WNS channel").uri();
        let channel_id = channel.rsplit('/').next().expect("a channel id");
        let body = json!({
            "deviceId": dm.device.id.to_hex(),
            "dmDeviceId": dm.dm_device_id,
            "certPem": dm.certificate.cert_pem,
            "keyPem": dm.certificate.key_pem,
            "channelId": channel_id,
            "lacks": lacks,
        });
        let answer = self.sim("/_sim/devices", Some(body)).await;
        assert_eq!(answer["status"], Value::Bool(true), "{answer:?}");
    }

    /// Every session the sim's DM clients held, with what was said.
    pub async fn sessions(&self) -> Vec<SessionRecord> {
        serde_json::from_value(self.sim("/_sim/sessions", None).await).expect("session records")
    }

    /// The sessions, once at least `count` are recorded (the sim records a session when it
    /// ends, which may be after what it reported was applied).
    pub async fn recorded_sessions(&self, count: usize) -> Vec<SessionRecord> {
        wait_until(&format!("{count} sessions recorded"), DEADLINE, || async {
            let sessions = self.sessions().await;
            (sessions.len() >= count).then_some(sessions)
        })
        .await
    }

    /// `device`'s DM client opens a session now, as on its own polling schedule.
    pub async fn poll(&self, device: ObjectId) {
        let answer = self
            .sim(
                "/_sim/sessions",
                Some(json!({ "deviceId": device.to_hex() })),
            )
            .await;
        assert_eq!(answer["status"], Value::Bool(true), "{answer:?}");
    }

    /// An HTTP client that trusts `authority`'s server certificate and shows `identity`, if any.
    pub fn dm_client(authority: &Authority, identity: Option<&Issued>) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(authority.ca_pem().as_bytes()).expect("CA");
        let mut builder = reqwest::Client::builder().add_root_certificate(ca);
        if let Some(issued) = identity {
            let pem = format!("{}\n{}", issued.cert_pem, issued.key_pem);
            builder =
                builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
        }
        builder.build().expect("client")
    }
}
