use super::{Store, StoreError, tenant};
use crate::{
    Category,
    batch::DeviceFilter,
    channel::{ChannelPolicy, ChannelRefused},
    device::DeviceState,
};
use bson::{DateTime, Document, doc, oid::ObjectId};
use futures::{StreamExt, TryStreamExt, future::join_all, stream::BoxStream};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub organization: ObjectId,
    pub state: DeviceState,
    #[serde(default)]
    pub summary: DeviceSummary,
    /// `[id, imei, serial]`: what `winDeviceId` is matched against, with one indexed equality.
    pub lookup_keys: Vec<String>,
    /// Labels a bulk refresh can select devices by.
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub push: PushRoutes,
    /// Categories asked for and not yet ended (reported, failed, expired or unreported).
    #[serde(default)]
    pub refresh_info_needed: Vec<Category>,
    #[serde(default)]
    pub info_refreshed_at: BTreeMap<Category, DateTime>,
    /// The job that last claimed each category: the one a duplicate request is merged into.
    #[serde(default)]
    pub last_refresh_job: BTreeMap<Category, ObjectId>,
    /// The key the device's agent reports with, hashed; none until one is issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_key: Option<NodeKey>,
    /// Who the device's OMA-DM client is: none for a device that never opens a session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omadm: Option<OmaDmIdentity>,
}

/// How a device's OMA-DM client is known in a management session: the certificate it shows
/// over TLS (by its SHA-256 thumbprint) and the id it names itself by (`SyncHdr/Source`).
/// Both must match; neither is a secret, the TLS handshake proves the key behind the first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OmaDmIdentity {
    dm_device_id: String,
    cert_thumbprint: String,
}

/// Why an OMA-DM identity cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OmaDmIdentityRefused {
    #[error("the DM device id must be 1 to {MAX_DM_DEVICE_ID_CHARS} printable characters")]
    DeviceId,
    #[error(
        "the certificate thumbprint must be a SHA-256 digest: 64 hex digits (':' between pairs allowed)"
    )]
    Thumbprint,
}

/// The longest DM device id stored (Windows' are GUIDs or 32 hex digits).
pub const MAX_DM_DEVICE_ID_CHARS: usize = 128;

impl OmaDmIdentity {
    /// An identity from what an operator typed; the thumbprint in any case, with or without
    /// the ':' between byte pairs that `openssl x509 -fingerprint -sha256` prints.
    pub fn new(
        dm_device_id: &str,
        cert_thumbprint: &str,
    ) -> Result<OmaDmIdentity, OmaDmIdentityRefused> {
        let printable = !dm_device_id.is_empty()
            && dm_device_id.chars().count() <= MAX_DM_DEVICE_ID_CHARS
            && !dm_device_id.chars().any(char::is_control);
        if !printable {
            return Err(OmaDmIdentityRefused::DeviceId);
        }
        let digits: String = cert_thumbprint
            .chars()
            .filter(|&c| c != ':')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(OmaDmIdentityRefused::Thumbprint);
        }
        Ok(OmaDmIdentity {
            dm_device_id: dm_device_id.to_owned(),
            cert_thumbprint: digits,
        })
    }

    pub fn dm_device_id(&self) -> &str {
        &self.dm_device_id
    }

    pub fn cert_thumbprint(&self) -> &str {
        &self.cert_thumbprint
    }
}

/// The thumbprint a certificate is stored and looked up by: SHA-256 of its DER, lowercase hex.
pub fn cert_thumbprint(der: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(der))
}

/// A device's node key, as stored: only its SHA-256 hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeKey {
    pub hash: String,
    pub issued_at: DateTime,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSummary {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imei: Option<String>,
}

/// How a device can be reached: its management agent, Windows Push Notification Services, or both.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PushRoutes {
    #[serde(default)]
    pub agent: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wns: Option<WnsChannel>,
}

/// A device's WNS channel. Made only through [`WnsChannel::new`], which admits no URI the
/// deployment's [`ChannelPolicy`] refuses (one read back from the database is checked again
/// before every push).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WnsChannel {
    channel_uri: String,
    pub status: WnsChannelStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_since: Option<DateTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::EnumIter)]
#[serde(rename_all = "lowercase")]
pub enum WnsChannelStatus {
    Active,
    /// WNS answered 404/410: the channel expired and only a new enrolment brings a new one.
    Dead,
}

impl WnsChannelStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WnsChannelStatus::Active => "active",
            WnsChannelStatus::Dead => "dead",
        }
    }
}

impl WnsChannel {
    /// An active channel at `uri`, if `policy` admits it.
    pub fn new(uri: &str, policy: &ChannelPolicy) -> Result<WnsChannel, ChannelRefused> {
        policy.check(uri)?;
        Ok(WnsChannel {
            channel_uri: uri.to_owned(),
            status: WnsChannelStatus::Active,
            dead_since: None,
        })
    }

    pub fn uri(&self) -> &str {
        &self.channel_uri
    }
}

impl PushRoutes {
    /// The WNS channel URI, if the device has one that still works.
    pub fn live_wns_channel(&self) -> Option<&str> {
        self.wns
            .as_ref()
            .filter(|wns| wns.status == WnsChannelStatus::Active)
            .map(|wns| wns.channel_uri.as_str())
    }
}

pub struct NewDevice {
    pub organization: ObjectId,
    pub state: DeviceState,
    pub serial_number: Option<String>,
    pub imei: Option<String>,
    pub tags: Vec<String>,
    pub push: PushRoutes,
    /// The hash of a node key issued with the device.
    pub node_key_hash: Option<String>,
    pub omadm: Option<OmaDmIdentity>,
}

impl Device {
    fn new(new: NewDevice) -> Device {
        let id = ObjectId::new();
        let lookup_keys = std::iter::once(id.to_hex())
            .chain(new.imei.clone())
            .chain(new.serial_number.clone())
            .collect();
        Device {
            id,
            organization: new.organization,
            state: new.state,
            summary: DeviceSummary {
                serial_number: new.serial_number,
                imei: new.imei,
            },
            lookup_keys,
            tags: new.tags,
            push: new.push,
            refresh_info_needed: Vec::new(),
            info_refreshed_at: BTreeMap::new(),
            last_refresh_job: BTreeMap::new(),
            node_key: new.node_key_hash.map(|hash| NodeKey {
                hash,
                issued_at: DateTime::now(),
            }),
            omadm: new.omadm,
        }
    }
}

/// Devices in `_id` order as one query reads them ([`Store::devices_matching`]).
pub type DeviceWalk = BoxStream<'static, Result<Device, StoreError>>;

/// Which of a request's categories a job got to refresh.
#[derive(Debug, Default)]
pub struct Claim {
    /// Claimed for the job by this call: it pushes these.
    pub ours: Vec<Category>,
    /// Claimed for the job before (an earlier delivery of it): it pushes these too, unless
    /// they are settled in the job.
    pub kept: Vec<Category>,
    /// Left to the job already holding them (outstanding, or reported within the skip window).
    pub theirs: Vec<Category>,
}

impl Claim {
    /// Every one of `categories` claimed.
    pub fn whole(categories: &[Category]) -> Claim {
        Claim {
            ours: categories.to_vec(),
            ..Claim::default()
        }
    }
}

impl Store {
    pub async fn create_device(&self, new: NewDevice) -> Result<Device, StoreError> {
        let device = Device::new(new);
        self.devices.insert_one(&device).await?;
        Ok(device)
    }

    /// Creates many devices with one write (seeding, imports, tests).
    pub async fn create_devices(&self, new: Vec<NewDevice>) -> Result<Vec<Device>, StoreError> {
        let devices: Vec<Device> = new.into_iter().map(Device::new).collect();
        if !devices.is_empty() {
            self.devices.insert_many(&devices).await?;
        }
        Ok(devices)
    }

    /// A device of `organization` whose id, IMEI or serial number is `key`.
    pub async fn device_by_key(
        &self,
        organization: ObjectId,
        key: &str,
    ) -> Result<Option<Device>, StoreError> {
        Ok(self
            .devices
            .find_one(tenant(
                organization,
                doc! { "lookupKeys": lookup_keys(key) },
            ))
            .await?)
    }

    /// The active device `key` names, with every one of `categories` claimed for `job` in the
    /// same write: the usual refresh, in one round trip. `None` when there is no such active
    /// device or the claim cannot be had whole (see [`Store::claim`]); the caller then looks
    /// the device up and claims category by category.
    pub async fn claim_by_key(
        &self,
        organization: ObjectId,
        key: &str,
        categories: &[Category],
        job: ObjectId,
        not_refreshed_since: DateTime,
    ) -> Result<Option<Device>, StoreError> {
        let device = doc! { "lookupKeys": lookup_keys(key) };
        self.claim_whole(organization, device, categories, job, not_refreshed_since)
            .await
    }

    /// The active device `device` selects, with every one of `categories` claimed for `job`
    /// in the same `findOneAndUpdate`; `None` when there is none or the claim is not whole.
    async fn claim_whole(
        &self,
        organization: ObjectId,
        mut device: Document,
        categories: &[Category],
        job: ObjectId,
        not_refreshed_since: DateTime,
    ) -> Result<Option<Device>, StoreError> {
        device.insert("state", DeviceState::Active.as_str());
        let update = claim_all(&mut device, categories, job, not_refreshed_since);
        Ok(self
            .devices
            .find_one_and_update(tenant(organization, device), update)
            .await?)
    }

    pub async fn device(
        &self,
        organization: ObjectId,
        id: ObjectId,
    ) -> Result<Option<Device>, StoreError> {
        Ok(self
            .devices
            .find_one(tenant(organization, doc! { "_id": id }))
            .await?)
    }

    /// Claims `categories` of a device for `job`. All at once first: of identical concurrent
    /// requests exactly one wins, and it wins every category, so they all name one job. Only on
    /// overlap is each category claimed alone.
    pub async fn claim(
        &self,
        organization: ObjectId,
        device: ObjectId,
        categories: &[Category],
        job: ObjectId,
        not_refreshed_since: DateTime,
    ) -> Result<Claim, StoreError> {
        let since = not_refreshed_since;
        if self
            .claim_free(organization, device, categories, job, since)
            .await?
        {
            return Ok(Claim::whole(categories));
        }
        self.claim_each(organization, device, categories, job, since, false)
            .await
    }

    /// The device a batch's job runs for, with the job's claim on `categories` made now (see
    /// [`crate::job::RefreshJob::claim_unless_reported_after`]): in the same round trip as
    /// the device's read when it is active and the claim can be had whole, as
    /// [`Store::claim_by_key`] does for a request. Otherwise each category is claimed alone,
    /// and one this job holds already (an earlier delivery's claim) is `kept`. A device that
    /// is not active is returned with nothing claimed; `None` when there is no such device.
    pub async fn claim_for_job(
        &self,
        organization: ObjectId,
        device: ObjectId,
        categories: &[Category],
        job: ObjectId,
        not_refreshed_since: DateTime,
    ) -> Result<Option<(Device, Claim)>, StoreError> {
        let since = not_refreshed_since;
        let selector = doc! { "_id": device };
        if let Some(found) =
            (self.claim_whole(organization, selector, categories, job, since)).await?
        {
            return Ok(Some((found, Claim::whole(categories))));
        }
        let Some(found) = self.device(organization, device).await? else {
            return Ok(None);
        };
        if found.state != DeviceState::Active {
            return Ok(Some((found, Claim::default())));
        }
        let claim = self
            .claim_each(organization, device, categories, job, since, true)
            .await?;
        Ok(Some((found, claim)))
    }

    /// Claims each of `categories` alone, at once: `ours` if it was free, `kept` if `job`
    /// holds it already (looked for only when it `may_hold` any: a new job holds none), else
    /// `theirs`.
    async fn claim_each(
        &self,
        organization: ObjectId,
        device: ObjectId,
        categories: &[Category],
        job: ObjectId,
        since: DateTime,
        may_hold: bool,
    ) -> Result<Claim, StoreError> {
        let singles = join_all(categories.iter().map(|&category| async move {
            let single = std::slice::from_ref(&category);
            if self
                .claim_free(organization, device, single, job, since)
                .await?
            {
                return Ok::<_, StoreError>(Held::Now);
            }
            if may_hold
                && self
                    .holds_claim(organization, device, category, job)
                    .await?
            {
                return Ok(Held::Before);
            }
            Ok(Held::ByOthers)
        }))
        .await;
        let mut split = Claim::default();
        for (&category, held) in categories.iter().zip(singles) {
            match held? {
                Held::Now => split.ours.push(category),
                Held::Before => split.kept.push(category),
                Held::ByOthers => split.theirs.push(category),
            }
        }
        Ok(split)
    }

    /// Claims all of `categories` for `job` in one atomic update, or none: only if no job has
    /// any of them outstanding and none was reported after `not_refreshed_since`. The device
    /// document is the lock, so concurrent requests for the same (device, category) yield one
    /// claim. (No `$or` in the filter: some servers then scan the collection instead of using
    /// `_id`.)
    async fn claim_free(
        &self,
        organization: ObjectId,
        device: ObjectId,
        categories: &[Category],
        job: ObjectId,
        not_refreshed_since: DateTime,
    ) -> Result<bool, StoreError> {
        let mut filter = doc! { "_id": device };
        let update = claim_all(&mut filter, categories, job, not_refreshed_since);
        let result = self
            .devices
            .update_one(tenant(organization, filter), update)
            .await?;
        Ok(result.matched_count == 1)
    }

    /// Whether `job` already holds its claim on `category`. A read, not a write: a claim is
    /// made in one atomic update, so holding it means it was made whole; and should a worker
    /// have settled the category since, the claim must stay released.
    async fn holds_claim(
        &self,
        organization: ObjectId,
        device: ObjectId,
        category: Category,
        job: ObjectId,
    ) -> Result<bool, StoreError> {
        let filter = doc! { "_id": device, format!("lastRefreshJob.{category}"): job };
        let held = self
            .devices
            .count_documents(tenant(organization, filter))
            .await?;
        Ok(held == 1)
    }

    /// The devices of `organization` that any of `keys` (ids, IMEIs, serials) names.
    pub async fn devices_by_keys(
        &self,
        organization: ObjectId,
        keys: &[String],
    ) -> Result<Vec<Device>, StoreError> {
        let filter = tenant(organization, doc! { "lookupKeys": { "$in": keys } });
        Ok(self.devices.find(filter).await?.try_collect().await?)
    }

    /// The devices of `organization` matching `filter` with an id after `after`, in id order,
    /// as one query read `page` devices at a time: a batch walks them from its checkpoint.
    /// One query for the whole walk, not one per chunk: on SecantusDB every range query costs
    /// a pass over the collection before its first result, whatever its limit (~0.6 s at
    /// 100,000 devices), while the cursor's further pages are read in milliseconds.
    pub async fn devices_matching(
        &self,
        organization: ObjectId,
        filter: &DeviceFilter,
        after: Option<ObjectId>,
        page: u32,
    ) -> Result<DeviceWalk, StoreError> {
        let query = tenant(organization, device_filter(filter, after));
        let found = self
            .devices
            .find(query)
            .sort(doc! { "_id": 1 })
            .batch_size(page)
            .await?;
        Ok(found.map_err(StoreError::from).boxed())
    }

    /// How many devices of `organization` match `filter` now.
    pub async fn count_devices_matching(
        &self,
        organization: ObjectId,
        filter: &DeviceFilter,
    ) -> Result<u64, StoreError> {
        let query = tenant(organization, device_filter(filter, None));
        Ok(self.devices.count_documents(query).await?)
    }

    /// Ends `job`'s claim on `category`: it is no longer outstanding, and `refreshed_at` is
    /// recorded when the device reported it (the skip window counts from then). A job that no
    /// longer holds the claim changes nothing.
    pub async fn settle_refresh(
        &self,
        organization: ObjectId,
        device: ObjectId,
        category: Category,
        job: ObjectId,
        refreshed_at: Option<DateTime>,
    ) -> Result<(), StoreError> {
        self.settle_refreshes(organization, device, &[category], job, refreshed_at)
            .await
            .map(drop)
    }

    /// [`Store::settle_refresh`] for several categories in one write, applied only when `job`
    /// holds the claim on every one of them; false (nothing changed) otherwise.
    pub async fn settle_refreshes(
        &self,
        organization: ObjectId,
        device: ObjectId,
        categories: &[Category],
        job: ObjectId,
        refreshed_at: Option<DateTime>,
    ) -> Result<bool, StoreError> {
        let names: Vec<&str> = categories.iter().map(|c| c.as_str()).collect();
        let mut filter = doc! { "_id": device };
        let mut refreshed = Document::new();
        for category in categories {
            filter.insert(format!("lastRefreshJob.{category}"), job);
            if let Some(at) = refreshed_at {
                refreshed.insert(format!("infoRefreshedAt.{category}"), at);
            }
        }
        let mut update = doc! { "$pull": { "refreshInfoNeeded": { "$in": names } } };
        if !refreshed.is_empty() {
            update.insert("$set", refreshed);
        }
        let result = self
            .devices
            .update_one(tenant(organization, filter), update)
            .await?;
        Ok(result.matched_count == 1)
    }

    /// Frees `job`'s claims on `categories` ([`Store::settle_refreshes`]): in one write when the
    /// job holds them all, else one category at a time (a claim another job holds stays).
    pub async fn release_claims(
        &self,
        organization: ObjectId,
        device: ObjectId,
        categories: &[Category],
        job: ObjectId,
        refreshed_at: Option<DateTime>,
    ) -> Result<(), StoreError> {
        let at = refreshed_at;
        if self
            .settle_refreshes(organization, device, categories, job, at)
            .await?
            || categories.len() < 2
        {
            return Ok(());
        }
        for &category in categories {
            self.settle_refresh(organization, device, category, job, at)
                .await?;
        }
        Ok(())
    }

    /// A device by id, whatever its organization: for a device proving who it is with its
    /// node key (the key, not a tenant's token, says which organization it is in).
    pub async fn device_by_id(&self, id: ObjectId) -> Result<Option<Device>, StoreError> {
        Ok(self.devices.find_one(doc! { "_id": id }).await?)
    }

    /// The device whose node key hashes to `hash`.
    pub async fn device_by_node_key(&self, hash: &str) -> Result<Option<Device>, StoreError> {
        Ok(self.devices.find_one(doc! { "nodeKey.hash": hash }).await?)
    }

    /// The device whose OMA-DM client showed the certificate with `thumbprint` and named
    /// itself `dm_device_id`: both must be that device's.
    pub async fn device_by_omadm_identity(
        &self,
        thumbprint: &str,
        dm_device_id: &str,
    ) -> Result<Option<Device>, StoreError> {
        let filter = doc! { "omadm.certThumbprint": thumbprint, "omadm.dmDeviceId": dm_device_id };
        Ok(self.devices.find_one(filter).await?)
    }

    /// Gives a device of `organization` a new OMA-DM identity (a renewed certificate); false
    /// when there is no such device.
    pub async fn set_omadm_identity(
        &self,
        organization: ObjectId,
        device: ObjectId,
        identity: &OmaDmIdentity,
    ) -> Result<bool, StoreError> {
        let set = doc! {
            "omadm.dmDeviceId": identity.dm_device_id(),
            "omadm.certThumbprint": identity.cert_thumbprint(),
        };
        self.update_device(organization, device, doc! { "$set": set })
            .await
    }

    /// Stores the WNS channel a device reported in its management session (Windows renews a
    /// channel about every 15 days): active, whatever the old one's status was.
    pub async fn replace_wns_channel(
        &self,
        organization: ObjectId,
        device: ObjectId,
        channel: &WnsChannel,
    ) -> Result<(), StoreError> {
        let set = doc! {
            "push.wns.channelUri": channel.uri(),
            "push.wns.status": WnsChannelStatus::Active.as_str(),
        };
        let change = doc! { "$set": set, "$unset": { "push.wns.deadSince": "" } };
        self.update_device(organization, device, change).await?;
        Ok(())
    }

    /// Gives a device of `organization` a new node key (the old one stops working); false
    /// when there is no such device.
    pub async fn issue_node_key(
        &self,
        organization: ObjectId,
        device: ObjectId,
        hash: &str,
    ) -> Result<bool, StoreError> {
        let key = doc! { "hash": hash, "issuedAt": DateTime::now() };
        self.update_device(organization, device, doc! { "$set": { "nodeKey": key } })
            .await
    }

    /// Takes a device's node key away; false when there is no such device.
    pub async fn revoke_node_key(
        &self,
        organization: ObjectId,
        device: ObjectId,
    ) -> Result<bool, StoreError> {
        self.update_device(organization, device, doc! { "$unset": { "nodeKey": "" } })
            .await
    }

    /// Applies `change` to the device `device` of `organization`; false when there is none.
    async fn update_device(
        &self,
        organization: ObjectId,
        device: ObjectId,
        change: Document,
    ) -> Result<bool, StoreError> {
        let result = self
            .devices
            .update_one(tenant(organization, doc! { "_id": device }), change)
            .await?;
        Ok(result.matched_count == 1)
    }

    pub async fn mark_wns_channel_dead(
        &self,
        organization: ObjectId,
        device: ObjectId,
    ) -> Result<(), StoreError> {
        self.devices
            .update_one(
                tenant(
                    organization,
                    doc! { "_id": device, "push.wns": { "$exists": true } },
                ),
                doc! { "$set": {
                    "push.wns.status": WnsChannelStatus::Dead.as_str(),
                    "push.wns.deadSince": DateTime::now(),
                } },
            )
            .await?;
        Ok(())
    }
}

/// What `lookupKeys` must hold for `key`. Ids are stored in lowercase hex; a caller may send
/// them in uppercase.
fn lookup_keys(key: &str) -> Document {
    let lowercase = key.to_ascii_lowercase();
    if ObjectId::parse_str(key).is_ok() && lowercase != key {
        doc! { "$in": [key, lowercase] }
    } else {
        doc! { "$eq": key }
    }
}

/// Who holds a category [`Store::claim_each`] asked for.
enum Held {
    /// The job, by this claim.
    Now,
    /// The job, by an earlier claim.
    Before,
    /// Another job, or nobody since a recent report.
    ByOthers,
}

/// Adds to `filter` the conditions of claiming all of `categories` (none outstanding, none
/// reported after `not_refreshed_since`) and returns the update that claims them for `job`.
fn claim_all(
    filter: &mut Document,
    categories: &[Category],
    job: ObjectId,
    not_refreshed_since: DateTime,
) -> Document {
    let names: Vec<&str> = categories.iter().map(|c| c.as_str()).collect();
    filter.insert("refreshInfoNeeded", doc! { "$nin": &names });
    let mut claims = doc! {};
    for category in categories {
        filter.insert(
            format!("infoRefreshedAt.{category}"),
            doc! { "$not": { "$gt": not_refreshed_since } },
        );
        claims.insert(format!("lastRefreshJob.{category}"), job);
    }
    doc! {
        "$addToSet": { "refreshInfoNeeded": { "$each": names } },
        "$set": claims,
    }
}

fn device_filter(filter: &DeviceFilter, after: Option<ObjectId>) -> bson::Document {
    let mut query = doc! {};
    if let Some(state) = filter.state {
        query.insert("state", state.as_str());
    }
    if !filter.tags.is_empty() {
        query.insert("tags", doc! { "$all": &filter.tags });
    }
    if let Some(after) = after {
        query.insert("_id", doc! { "$gt": after });
    }
    query
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_omadm_identity_takes_a_thumbprint_as_openssl_prints_it_and_refuses_anything_else() {
        let printed = "AB:".repeat(31) + "CD";
        let identity = OmaDmIdentity::new("6F1A2B3C-DM", &printed).unwrap();
        assert_eq!(identity.cert_thumbprint(), "ab".repeat(31) + "cd");
        assert_eq!(identity.dm_device_id(), "6F1A2B3C-DM");
        for thumbprint in ["ab".repeat(31), "zz".repeat(32), String::new()] {
            assert_eq!(
                OmaDmIdentity::new("id", &thumbprint),
                Err(OmaDmIdentityRefused::Thumbprint)
            );
        }
        for id in [String::new(), "a\nb".to_owned(), "x".repeat(129)] {
            assert_eq!(
                OmaDmIdentity::new(&id, &"ab".repeat(32)),
                Err(OmaDmIdentityRefused::DeviceId)
            );
        }
        assert_eq!(cert_thumbprint(b"").len(), 64);
    }
}
