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
