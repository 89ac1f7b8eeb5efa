//! Who is calling: the bearer token, its organization and its permissions.

use crate::{
    error::ApiError,
    rate_limit::within_limit,
    state::AppState,
    validate::{self, OrganizationRef},
};
use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::request::Parts,
};
use bson::{DateTime, oid::ObjectId};
use refresh_shared::{store::Organization, token};
use std::net::{IpAddr, SocketAddr};

/// A caller whose token is known, unexpired, unrevoked and within its rate limit.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub token_id: ObjectId,
    pub organization: ObjectId,
    permissions: Vec<String>,
}

impl Authenticated {
    pub fn require(&self, permission: &str) -> Result<(), ApiError> {
        if self.permissions.iter().any(|p| p == permission) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }

    /// The organization the path names, if it is the token's own; any other is "not found", so
    /// a caller cannot even learn that another tenant exists.
    pub async fn organization(
        &self,
        state: &AppState,
        reference: &OrganizationRef,
    ) -> Result<Organization, ApiError> {
        let organization = state
            .auth_cache
            .organization(&state.store, self.organization)
            .await?
            .ok_or(ApiError::NotFound)?;
        let named = match reference {
            OrganizationRef::Id(id) => *id == organization.id,
            OrganizationRef::Slug(slug) => *slug == organization.slug,
        };
        if named {
            Ok(organization)
        } else {
            Err(ApiError::NotFound)
        }
    }
}

/// The token of `Authorization: Bearer <token>`, telling "no token" apart from "not a bearer
/// token at all".
pub(crate) fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
    let value = validate::single(&parts.headers, "Authorization")
        .map_err(|problem| ApiError::Validation(vec![problem]))?;
    let Some(value) = value else {
        return Err(ApiError::NoToken);
    };
    let value = value.to_str().map_err(|_| ApiError::Unauthorized)?.trim();
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::Unauthorized);
    }
    match token.trim() {
        "" => Err(ApiError::NoToken),
        token if token.contains(char::is_whitespace) => Err(ApiError::Unauthorized),
        token => Ok(token),
    }
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let client = unblocked_client(parts, state)?;
        let found = match bearer_token(parts) {
            Ok(presented) => state
                .auth_cache
                .token(&state.store, &token::hash(presented))
                .await?
                .filter(|t| t.is_usable(DateTime::now()))
                .ok_or(ApiError::Unauthorized),
            Err(refused) => Err(refused),
        };
        let record = found.map_err(|error| refused(state, client, error))?;
        within_limit(
            parts,
            state.rate_limits.check(record.id, record.organization),
        )?;
        let organization = &state.org_allowance;
        if let Some(wait) = organization
            .admit(&state.store, record.organization)
            .await?
        {
            return Err(ApiError::RateLimited { retry_after: wait });
        }
        Ok(Authenticated {
            token_id: record.id,
            organization: record.organization,
            permissions: record.permissions,
        })
    }
}

/// The caller's address, unless it is blocked for failing to authenticate too often (then 429,
/// before any lookup). Set by the server for every connection; absent only when the router is
/// driven without one (then there is no address to limit).
pub(crate) fn unblocked_client(
    parts: &Parts,
    state: &AppState,
) -> Result<Option<IpAddr>, ApiError> {
    let client = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip());
    match client.and_then(|client| state.rate_limits.blocked(client)) {
        Some(wait) => Err(ApiError::RateLimited { retry_after: wait }),
        None => Ok(client),
    }
}

/// A failed authentication from `client`: counted against its address, and answered 429 once
/// the address is over its allowance.
pub(crate) fn refused(state: &AppState, client: Option<IpAddr>, error: ApiError) -> ApiError {
    match client.and_then(|client| state.rate_limits.failed(client)) {
        Some(wait) => ApiError::RateLimited { retry_after: wait },
        None => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{Request, header};

    fn parts(authorization: Option<&str>) -> Parts {
        let mut request = Request::builder();
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        request
            .body(())
            .map(|r| r.into_parts().0)
            .expect("valid request")
    }

    #[test]
    fn bearer_parsing_follows_the_contract() {
        assert!(matches!(bearer_token(&parts(None)), Err(ApiError::NoToken)));
        assert!(matches!(
            bearer_token(&parts(Some("Bearer"))),
            Err(ApiError::NoToken)
        ));
        assert!(matches!(
            bearer_token(&parts(Some("Bearer   "))),
            Err(ApiError::NoToken)
        ));
        assert!(matches!(
            bearer_token(&parts(Some("Basic abc"))),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            bearer_token(&parts(Some("abc"))),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            bearer_token(&parts(Some("Bearer a b"))),
            Err(ApiError::Unauthorized)
        ));
        assert_eq!(bearer_token(&parts(Some("bearer tok"))).ok(), Some("tok"));
        let mut twice = parts(Some("Bearer first"));
        twice.headers.append(
            header::AUTHORIZATION,
            "Bearer second".parse().expect("valid"),
        );
        assert!(matches!(bearer_token(&twice), Err(ApiError::Validation(_))));
    }
}
