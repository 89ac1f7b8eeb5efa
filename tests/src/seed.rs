//! The data a test needs: devices of every kind, other tenants, tokens.

use crate::TestStack;
use bson::oid::ObjectId;
use refresh_shared::{
    device::DeviceState,
    store::{Device, NewDevice, Organization, PushRoutes, WnsChannel},
    token::PERMISSION_DEVICE_INFO,
};
use refresh_testkit::seed;

impl TestStack {
    /// An ACTIVE device reachable through the agent and (with a channel on the sim) WNS.
    pub async fn device(&self) -> Device {
        self.device_with(DeviceState::Active, true, true).await
    }

    pub async fn device_with(&self, state: DeviceState, agent: bool, wns: bool) -> Device {
        self.device_in(self.organization.id, state, agent, wns)
            .await
    }

    pub async fn device_in(
        &self,
        organization: ObjectId,
        state: DeviceState,
        agent: bool,
        wns: bool,
    ) -> Device {
        let new = self.new_device(organization, state, agent, wns, &[]);
        self.store.create_device(new).await.expect("create device")
    }

    /// `count` devices of the stack's organization in `state`, reachable through the agent,
    /// carrying `tags`, created in a few writes.
    pub async fn devices(&self, count: usize, state: DeviceState, tags: &[&str]) -> Vec<Device> {
        let mut devices = Vec::with_capacity(count);
        for chunk in (0..count).collect::<Vec<_>>().chunks(1_000) {
            let new = chunk
                .iter()
                .map(|_| self.new_device(self.organization.id, state, true, false, tags))
                .collect();
            devices.extend(
                self.store
                    .create_devices(new)
                    .await
                    .expect("create devices"),
            );
        }
        devices
    }

    fn new_device(
        &self,
        organization: ObjectId,
        state: DeviceState,
        agent: bool,
        wns: bool,
        tags: &[&str],
    ) -> NewDevice {
        let unique = ObjectId::new().to_hex();
        let wns = wns.then(|| {
            let uri = format!("{}/wns/channels/{unique}", self.sim.url());
            WnsChannel::new(&uri, &self.settings.gateways.wns_channels)
                .expect("the sim's channels are admitted")
        });
        NewDevice {
            organization,
            state,
            serial_number: Some(format!("SN{}", &unique[12..])),
            imei: Some(format!(
                "35{}",
                u64::from_str_radix(&unique[14..], 16).unwrap() % 10_u64.pow(13)
            )),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            push: PushRoutes { agent, wns },
        }
    }

    /// Another tenant: a new organization and a refresh token of its own.
    pub async fn other_tenant(&self) -> (Organization, String) {
        let (other, mut tokens) =
            seed::organization(&self.store, "other", &[PERMISSION_DEVICE_INFO], 1)
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
