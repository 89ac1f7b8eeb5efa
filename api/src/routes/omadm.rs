//! `POST /ManagementServer/MDM.svc` (device listener): a Windows device's OMA-DM client in its
//! management session (CONTRACT §5). The device is the one whose stored certificate thumbprint
//! matches the certificate it showed over TLS and whose DM device id is the message's
//! `SyncHdr/Source`; anything else is 401 with nothing recorded.

use crate::{
    auth::{refused, unblocked_client},
    error::{ApiError, FieldProblem},
    rate_limit::{StandingSlot, within},
    routes::refresh::body_rejection,
    state::AppState,
    tls::ClientCertificate,
    validate,
};
use axum::{
    Extension,
    body::Bytes,
    extract::{FromRequestParts, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, header, request::Parts},
    response::{IntoResponse, Response},
};
use percent_encoding::percent_decode;
use refresh_shared::{metric, store::WnsChannel};
use refresh_syncml::{CONTENT_TYPE, Limits, Message};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use std::net::IpAddr;

/// A client that showed a certificate the device CA issued (to the api's TLS, or to a trusted
/// proxy that passed it on), and is not blocked for failing to authenticate too often.
pub struct CertifiedClient {
    address: Option<IpAddr>,
    certificate: ClientCertificate,
}

impl FromRequestParts<AppState> for CertifiedClient {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let address = unblocked_client(parts, state)?;
        let certificate = match parts.extensions.get::<ClientCertificate>() {
            Some(certificate) => Some(certificate.clone()),
            None => address.and_then(|address| passed_on(parts, state, address)),
        };
        match certificate {
            Some(certificate) => Ok(CertifiedClient {
                address,
                certificate,
            }),
            None => Err(refused(state, address, ApiError::Unauthorized)),
        }
    }
}

/// The certificate a trusted proxy (`DEVICE_TRUSTED_PROXIES`) verified and passed on in
/// `DEVICE_CLIENT_CERT_HEADER` as URL-encoded PEM, if `address` is one and the CA vouches for
/// it too. From any other address the header means nothing.
fn passed_on(parts: &Parts, state: &AppState, address: IpAddr) -> Option<ClientCertificate> {
    if !state.trusted_proxies.contains(&address) {
        return None;
    }
    // Two are ambiguous: neither is believed.
    let value = validate::single(&parts.headers, state.client_cert_header.as_str()).ok()??;
    let pem = percent_decode(value.as_bytes()).collect::<Vec<u8>>();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .ok()?;
    state.client_ca.as_ref()?.vouch_for(&chain)
}

/// How far past `MDM_MAX_MSG_BYTES` a message is still read (and then refused 413): a client
/// that writes its whole body before reading the answer (most do) never sees an answer sent
/// while it is still writing, only the connection closing. Beyond this, the answer comes at once.
pub const READ_PAST_LIMIT: usize = 4;

/// `MDM_MAX_MSG_BYTES`, for the handler (the body limit layer lets up to [`READ_PAST_LIMIT`]
/// times that through).
#[derive(Clone, Copy)]
pub struct MessageLimit(pub usize);

pub async fn management_session(
    State(state): State<AppState>,
    Extension(MessageLimit(limit)): Extension<MessageLimit>,
    client: CertifiedClient,
    slot: Option<Extension<StandingSlot>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_rejection)?;
    if body.len() > limit {
        return Err(ApiError::PayloadTooLarge);
    }
    validate::content_type(&headers, CONTENT_TYPE)
        .map_err(|problem| ApiError::Validation(vec![problem]))?;
    let message = Message::parse(&body, &Limits::default()).map_err(|error| {
        ApiError::Validation(vec![FieldProblem::new("body", error.to_string())])
    })?;
    let device = state
        .store
        .device_by_omadm_identity(&client.certificate.thumbprint, &message.header.source)
        .await?
        .ok_or_else(|| refused(&state, client.address, ApiError::Unauthorized))?;
    within(
        slot.as_ref().map(|Extension(slot)| slot),
        state.rate_limits.check_device(device.id),
    )?;
    let conversation = state.conversations.of(device.id).await;
    // One message of a device at a time: its session is a conversation, not a crowd.
    let mut conversation = conversation.lock().await;
    let turn = conversation.turn(&device, &message).map_err(|refusal| {
        ApiError::Validation(vec![FieldProblem::new("body", refusal.to_string())])
    })?;
    for report in &turn.reports {
        if let Err(error) = state.publisher.publish_report(report).await {
            // The session starts over when the device retries; nothing it answered is lost
            // for good (its categories stay outstanding and are asked again).
            *conversation = Default::default();
            return Err(error.into());
        }
        metrics::counter!(metric::REPORTS_RECEIVED, "source" => report.source.as_str())
            .increment(1);
    }
    if let Some(uri) = &turn.channel_uri {
        record_channel(&state, &device, uri).await?;
    }
    metrics::counter!(metric::OMADM_MESSAGES, "outcome" => turn.next.as_str()).increment(1);
    let mut response = turn.reply.to_xml().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(response)
}

/// Stores the channel URI the device reported, if the deployment admits it (the worker checks
/// it again before every push); one it refuses is logged and left alone.
async fn record_channel(
    state: &AppState,
    device: &refresh_shared::store::Device,
    uri: &str,
) -> Result<(), ApiError> {
    if device.push.wns.as_ref().map(WnsChannel::uri) == Some(uri) {
        return Ok(());
    }
    match WnsChannel::new(uri, &state.wns_channels) {
        Ok(channel) => {
            state
                .store
                .replace_wns_channel(device.organization, device.id, &channel)
                .await?;
            tracing::info!(device_id = %device.id, "the device reported a new WNS channel");
        }
        Err(refused) => {
            tracing::warn!(device_id = %device.id, %refused, "the device reported a WNS channel this deployment refuses: kept the old one");
        }
    }
    Ok(())
}
