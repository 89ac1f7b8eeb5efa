use super::{Store, StoreError};
use bson::{DateTime, doc, oid::ObjectId};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Organization {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub slug: String,
    pub name: String,
    pub created_at: DateTime,
}

impl Organization {
    /// Whether `raw` can be a slug: at least 3 ASCII letters, digits or '-', and not a 24-hex
    /// id (which names an organization by id).
    pub fn is_slug(raw: &str) -> bool {
        raw.len() >= 3
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && ObjectId::parse_str(raw).is_err()
    }
}

impl Store {
    pub async fn create_organization(
        &self,
        slug: &str,
        name: &str,
    ) -> Result<Organization, StoreError> {
        let organization = Organization {
            id: ObjectId::new(),
            slug: slug.to_owned(),
            name: name.to_owned(),
            created_at: DateTime::now(),
        };
        self.organizations
            .insert_one(&organization)
            .await
            .map_err(|e| StoreError::duplicate_as(e, || format!("organization '{slug}'")))?;
        Ok(organization)
    }

    pub async fn organization(&self, id: ObjectId) -> Result<Option<Organization>, StoreError> {
        Ok(self.organizations.find_one(doc! { "_id": id }).await?)
    }

    /// An organization by 24-hex id or by slug (operator tooling; the api only ever loads the
    /// token's own organization).
    pub async fn organization_by_ref(
        &self,
        reference: &str,
    ) -> Result<Option<Organization>, StoreError> {
        let filter = match ObjectId::parse_str(reference) {
            Ok(id) => doc! { "_id": id },
            Err(_) => doc! { "slug": reference },
        };
        Ok(self.organizations.find_one(filter).await?)
    }
}

/// An organization's request allowance across every api of the deployment: a GCRA whose state,
/// the theoretical arrival time `requestTat` (Unix µs), lives on the organization's document.
/// Each admitted request moves it on by `interval`; one is admitted while it stays within
/// `tolerance` (the burst) of now. Apis lease several requests at a time, so the document is
/// written once per lease, not per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub interval_us: i64,
    pub tolerance_us: i64,
}

/// What a lease got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// This many requests may be admitted.
    Granted(u32),
    /// None now; the next one in this many µs.
    Refused { wait_us: i64 },
}

const TAT: &str = "requestTat";

impl Store {
    /// Takes `wanted` requests of `organization`'s allowance at `now_us`, or one when that many
    /// do not fit, or none. Guarded updates only: whichever api's write lands first wins, and
    /// the allowance is never overdrawn.
    pub async fn lease_requests(
        &self,
        organization: ObjectId,
        wanted: u32,
        allowance: Allowance,
        now_us: i64,
    ) -> Result<Lease, StoreError> {
        let mut sizes = vec![wanted];
        if wanted > 1 {
            sizes.push(1);
        }
        for cells in sizes {
            let advance = allowance.interval_us.saturating_mul(i64::from(cells));
            if advance > allowance.tolerance_us {
                continue;
            }
            // Idle (or never used): start from now.
            let idle = doc! { "_id": organization, TAT: { "$not": { "$gt": now_us } } };
            let start = doc! { "$set": { TAT: now_us + advance } };
            if self
                .organizations
                .update_one(idle, start)
                .await?
                .matched_count
                == 1
            {
                return Ok(Lease::Granted(cells));
            }
            // Busy: move on from where it stands, if that stays within the tolerance.
            let room = doc! {
                "_id": organization,
                TAT: { "$gt": now_us, "$lte": now_us + allowance.tolerance_us - advance },
            };
            let inc = doc! { "$inc": { TAT: advance } };
            if self
                .organizations
                .update_one(room, inc)
                .await?
                .matched_count
                == 1
            {
                return Ok(Lease::Granted(cells));
            }
        }
        let tat = self
            .organizations
            .clone_with_type::<bson::Document>()
            .find_one(doc! { "_id": organization })
            .projection(doc! { TAT: 1 })
            .await?
            .and_then(|found| found.get_i64(TAT).ok())
            .unwrap_or(now_us);
        // One request fits again once the arrival time is within the tolerance less one interval.
        let wait_us = tat + allowance.interval_us - allowance.tolerance_us - now_us;
        Ok(Lease::Refused {
            wait_us: wait_us.max(1),
        })
    }
}
