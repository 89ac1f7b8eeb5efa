//! The data a test needs: devices of every kind, other tenants, tokens.

use crate::TestStack;
use bson::oid::ObjectId;
use refresh_shared::{
    device::DeviceState,
    store::{Device, NewDevice, Organization, PushRoutes, WnsChannel},
    token::{self, PERMISSION_DEVICE_INFO},
};
use refresh_testkit::seed;
use serde_json::{Value, json};

impl TestStack {
    /// An ACTIVE device reachable through the agent and (with a channel on the sim) WNS.
    pub async fn device(&self) -> Device {
        self.device_with(DeviceState::Active, true, true).await
    }

    pub async fn device_with(&self, state: DeviceState, agent: bool, wns: bool) -> Device {
        self.device_in(self.organization.id, state, agent, wns)
            .await
    }

    /// A device of `organization`; its agent (simulated by the sim) reports after a push.
    pub async fn device_in(
        &self,
        organization: ObjectId,
        state: DeviceState,
        agent: bool,
        wns: bool,
    ) -> Device {
        self.device_with_key(organization, state, agent, wns)
            .await
            .0
    }

    /// Like [`TestStack::device_in`], with the device's node key.
    pub async fn device_with_key(
        &self,
        organization: ObjectId,
        state: DeviceState,
        agent: bool,
        wns: bool,
    ) -> (Device, String) {
        let (new, key) = self.new_device(organization, state, agent, wns, &[]);
        let device = self.store.create_device(new).await.expect("create device");
        self.register_with_sim(&[(&device, &key)]).await;
        (device, key)
    }

    /// `count` devices of the stack's organization in `state`, reachable through the agent,
    /// carrying `tags`, created in a few writes, every one reporting after a push.
    pub async fn devices(&self, count: usize, state: DeviceState, tags: &[&str]) -> Vec<Device> {
        let devices = self.devices_with_keys(count, state, tags).await;
        devices.into_iter().map(|(device, _)| device).collect()
    }

    /// Like [`TestStack::devices`], with each device's node key.
    pub async fn devices_with_keys(
        &self,
        count: usize,
        state: DeviceState,
        tags: &[&str],
    ) -> Vec<(Device, String)> {
        let mut devices = Vec::with_capacity(count);
        for chunk in (0..count).collect::<Vec<_>>().chunks(1_000) {
            let (new, keys): (Vec<NewDevice>, Vec<String>) = chunk
                .iter()
                .map(|_| self.new_device(self.organization.id, state, true, false, tags))
                .unzip();
            let created = self
                .store
                .create_devices(new)
                .await
                .expect("create devices");
            let pairs: Vec<(&Device, &String)> = created.iter().zip(&keys).collect();
            self.register_with_sim(&pairs).await;
            devices.extend(created.into_iter().zip(keys));
        }
        devices
    }

    /// Tells the sim to answer for these devices: after an agent push, each reports with its
    /// node key.
    pub async fn register_with_sim(&self, devices: &[(&Device, &String)]) {
        let body: Vec<Value> = devices
            .iter()
            .map(|(device, key)| json!({ "deviceId": device.id.to_hex(), "nodeKey": key }))
            .collect();
        let answer = self.sim("/_sim/devices", Some(Value::Array(body))).await;
        assert_eq!(answer["status"], Value::Bool(true), "{answer:?}");
    }

    /// A device and its node key, with a node key hash stored.
    pub(crate) fn new_device(
        &self,
        organization: ObjectId,
        state: DeviceState,
        agent: bool,
        wns: bool,
        tags: &[&str],
    ) -> (NewDevice, String) {
        let key = token::generate_node_key();
        let unique = ObjectId::new().to_hex();
        let wns = wns.then(|| {
            let uri = format!("{}/wns/channels/{unique}", self.sim.url());
            WnsChannel::new(&uri, &self.settings.gateways.wns_channels)
                .expect("the sim's channels are admitted")
        });
        let new = NewDevice {
            organization,
            state,
            serial_number: Some(format!("SN{}", &unique[12..])),
            imei: Some(format!(
                "35{}",
                u64::from_str_radix(&unique[14..], 16).unwrap() % 10_u64.pow(13)
            )),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            push: PushRoutes { agent, wns },
            node_key_hash: Some(key.hash),
            omadm: None,
        };
        (new, key.plaintext)
    }

    /// Another tenant: a new organization and a refresh token of its own.
    pub async fn other_tenant(&self) -> (Organization, String) {
        self.other_tenant_with(&[PERMISSION_DEVICE_INFO]).await
    }

    /// Another organization, and a token of it with `permissions`.
    pub async fn other_tenant_with(&self, permissions: &[&str]) -> (Organization, String) {
        let (other, mut tokens) = seed::organization(&self.store, "other", permissions, 1)
            .await
            .expect("organization and token");
        (other, tokens.pop().expect("one token"))
    }

    /// A token of this stack's organization with the given permissions.
    pub async fn token_with(&self, permissions: &[&str]) -> String {
        let permissions = permissions.iter().map(|p| (*p).to_owned()).collect();
        self.store
            .create_token(self.organization.id, permissions, None)
            .await
            .expect("token")
            .1
    }
}
