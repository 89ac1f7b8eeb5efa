//! The DM client of the sim's Windows devices: woken by a WNS push to its channel (or told to
//! poll with `POST /_sim/sessions`), a registered device with a DM identity opens a management
//! session with the product's OMA-DM route over TLS with its client certificate, answers the
//! server's commands (fixture values for its `Get`s, 404 for the nodes it lacks), and ends when
//! the server asks for nothing more. What it exchanged is kept for `GET /_sim/sessions`.
//!
//! How devices answer follows the fault plan's `report`: `on` (the whole session), `off` (never
//! connect), `partial` (answer only the first category the server reads, then end its package),
//! `drop` (open the session, take the server's reads, hang up).

use crate::{
    SimState,
    devices::{ReportMode, SimDevice, fixture},
    lock,
};
use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use rand::Rng;
use refresh_shared::Category;
use refresh_syncml::{
    CONTENT_TYPE, Command, CommandKind, Header, Item, Limits, Message, alert, status,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::{sync::Arc, time::Duration};

/// The most messages a simulated session sends before it gives up on a server that never ends it.
const MAX_MESSAGES: u32 = 20;
/// How long a device waits for the server's answer to one message.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The route a DM client posts its messages to.
const MANAGEMENT_PATH: &str = "/ManagementServer/MDM.svc";

/// One session as the device lived it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRecord {
    pub device_id: String,
    pub session_id: String,
    /// Each message the device sent, with the server's answer.
    pub exchanges: Vec<Exchange>,
    pub outcome: SessionOutcome,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Exchange {
    pub sent: String,
    /// The HTTP status (0: no answer).
    pub status: u16,
    pub received: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionOutcome {
    /// The server asked for nothing more.
    Ended,
    /// The device hung up after the server's reads (`report: drop`).
    Dropped,
    /// The server answered something other than 200 with SyncML.
    Refused,
    /// No answer, or one the device could not read, or no end in sight.
    Failed,
}

/// Why a device opens a session: a push (Alert 1200, server-initiated) or its own schedule
/// (1201, client-initiated).
#[derive(Debug, Clone, Copy)]
enum Initiated {
    ByServer,
    ByClient,
}

/// After a WNS push the sim accepted on `channel_id`: the device listening there, if it has a
/// DM identity and is told to, runs a session (one at a time; a push during a session brings
/// one more session after it, as Windows queues it).
pub(crate) fn after_push(state: &Arc<SimState>, channel_id: &str) {
    let device = {
        let devices = lock(&state.devices);
        devices
            .values()
            .find(|device| device.channel_id.as_deref() == Some(channel_id))
            .cloned()
    };
    if let Some(device) = device {
        wake(state, device, Initiated::ByServer);
    }
}

/// `POST /_sim/sessions` `{"deviceId"}`: the device opens a session now, as it does on its own
/// polling schedule.
pub(crate) async fn poll(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Poll {
        device_id: String,
    }
    let poll = match serde_json::from_slice::<Poll>(&body) {
        Ok(poll) => poll,
        Err(error) => return crate::refused(&error),
    };
    let device = lock(&state.devices).get(&poll.device_id).cloned();
    match device.filter(SimDevice::speaks_omadm) {
        Some(device) => {
            wake(&state, device, Initiated::ByClient);
            (StatusCode::ACCEPTED, Json(json!({ "status": true }))).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

pub(crate) async fn sessions(State(state): State<Arc<SimState>>) -> Json<Vec<SessionRecord>> {
    Json(lock(&state.sessions).clone())
}

fn wake(state: &Arc<SimState>, device: SimDevice, initiated: Initiated) {
    if !device.speaks_omadm() || state.report_mode() == ReportMode::Off {
        return;
    }
    {
        let mut running = lock(&state.in_session);
        if let Some(again) = running.get_mut(&device.device_id) {
            *again = true;
            return;
        }
        running.insert(device.device_id.clone(), false);
    }
    let state = Arc::clone(state);
    tokio::spawn(async move {
        let mut initiated = initiated;
        loop {
            let record = session(&state, &device, initiated).await;
            lock(&state.sessions).push(record);
            let mut running = lock(&state.in_session);
            if running.get(&device.device_id) == Some(&true) {
                running.insert(device.device_id.clone(), false);
                initiated = Initiated::ByServer;
                continue;
            }
            running.remove(&device.device_id);
            break;
        }
    });
}

/// One session, from the device's first message to the server's last answer.
async fn session(state: &SimState, device: &SimDevice, initiated: Initiated) -> SessionRecord {
    let session_id = format!("{:X}", rand::rng().random::<u16>());
    let mut record = SessionRecord {
        device_id: device.device_id.clone(),
        session_id: session_id.clone(),
        exchanges: Vec::new(),
        outcome: SessionOutcome::Failed,
    };
    let (Some(base), Ok(client)) = (lock(&state.device_api).clone(), client(state, device)) else {
        return record;
    };
    let url = format!("{base}{MANAGEMENT_PATH}");
    let mode = state.report_mode();
    let mut message = opening(device, &session_id, &url, initiated);
    for _ in 0..MAX_MESSAGES {
        let sent = message.to_xml();
        let answer = client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(sent.clone())
            .send()
            .await;
        let (status, received) = match answer {
            Ok(answer) => (
                answer.status().as_u16(),
                answer.text().await.unwrap_or_default(),
            ),
            Err(_) => (0, String::new()),
        };
        record.exchanges.push(Exchange {
            sent,
            status,
            received: received.clone(),
        });
        if status != 200 {
            record.outcome = if status == 0 {
                SessionOutcome::Failed
            } else {
                SessionOutcome::Refused
            };
            return record;
        }
        let Ok(reply) = Message::parse(received.as_bytes(), &Limits::default()) else {
            return record;
        };
        if reply.commands.iter().all(|c| c.kind == CommandKind::Status) {
            record.outcome = SessionOutcome::Ended;
            return record;
        }
        if mode == ReportMode::Drop && reply.commands.iter().any(|c| c.kind == CommandKind::Get) {
            record.outcome = SessionOutcome::Dropped;
            return record;
        }
        message = answer_to(device, &reply, message.header.msg_id + 1, mode);
    }
    record
}

/// The device's HTTP client: its certificate and key, and trust in the server's CA.
fn client(state: &SimState, device: &SimDevice) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .timeout(ANSWER_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    if let (Some(cert), Some(key)) = (&device.cert_pem, &device.key_pem) {
        builder = builder.identity(reqwest::Identity::from_pem(
            format!("{cert}\n{key}").as_bytes(),
        )?);
    }
    if let Some(ca) = lock(&state.server_ca).clone() {
        builder = builder.add_root_certificate(ca);
    }
    builder.build()
}

/// The first message: the session's alert and the device's DevInfo (and a renewed WNS channel,
/// as Windows reports one), like MS-MDM's example.
fn opening(device: &SimDevice, session_id: &str, url: &str, initiated: Initiated) -> Message {
    let dm_device_id = device.dm_device_id.clone().unwrap_or_default();
    let code = match initiated {
        Initiated::ByServer => alert::SERVER_INITIATED,
        Initiated::ByClient => alert::CLIENT_INITIATED,
    };
    let value = |uri: &str, data: &str| Item {
        source: Some(uri.to_owned()),
        data: Some(data.to_owned()),
        ..Item::default()
    };
    let mut dev_info = vec![
        value("./DevInfo/DevId", &dm_device_id),
        value("./DevInfo/Man", "Contoso"),
        value("./DevInfo/Mod", "Simulated Windows"),
        value("./DevInfo/DmV", "1.3"),
        value("./DevInfo/Lang", "en-US"),
    ];
    if let Some(channel) = &device.renewed_channel_uri {
        dev_info.push(value(
            "./Vendor/MSFT/DMClient/Provider/MS DM Server/Push/ChannelURI",
            channel,
        ));
    }
    Message {
        header: Header {
            session_id: session_id.to_owned(),
            msg_id: 1,
            target: url.to_owned(),
            source: dm_device_id,
        },
        commands: vec![
            Command {
                data: Some(code.to_owned()),
                ..Command::new(CommandKind::Alert, 1)
            },
            Command {
                items: dev_info,
                ..Command::new(CommandKind::Replace, 2)
            },
        ],
        is_final: true,
    }
}

/// The device's next message: a status for the server's header and each of its commands,
/// results for its reads.
fn answer_to(device: &SimDevice, reply: &Message, msg_id: u32, mode: ReportMode) -> Message {
    let msg_ref = reply.header.msg_id;
    let mut commands = vec![Command::status(1, msg_ref, 0, "SyncHdr", status::OK)];
    let first_category = reply.commands.iter().find_map(category_of);
    for command in reply
        .commands
        .iter()
        .filter(|c| c.kind != CommandKind::Status)
    {
        if mode == ReportMode::Partial
            && category_of(command).is_some_and(|c| Some(c) != first_category)
        {
            continue;
        }
        let next = || u32::try_from(commands.len() + 1).unwrap_or(u32::MAX);
        let uri = command
            .items
            .first()
            .and_then(|item| item.target.clone())
            .unwrap_or_default();
        let code = match command.kind {
            CommandKind::Get if device.lacks.contains(&uri) => status::NOT_FOUND,
            CommandKind::Get | CommandKind::Replace | CommandKind::Alert => status::OK,
            _ => status::OPTIONAL_FEATURE_NOT_SUPPORTED,
        };
        let id = next();
        commands.push(Command::status(
            id,
            msg_ref,
            command.cmd_id,
            command.kind.name(),
            code,
        ));
        if command.kind == CommandKind::Get && code == status::OK {
            commands.push(Command {
                msg_ref: Some(msg_ref),
                cmd_ref: Some(command.cmd_id),
                items: results(&device.device_id, &uri),
                ..Command::new(CommandKind::Results, id + 1)
            });
        }
    }
    Message {
        header: Header {
            session_id: reply.header.session_id.clone(),
            msg_id,
            target: reply.header.source.clone(),
            source: reply.header.target.clone(),
        },
        commands,
        is_final: true,
    }
}

/// The category whose reads include `command`'s node.
fn category_of(command: &Command) -> Option<Category> {
    let uri = command.items.first()?.target.as_deref()?;
    Category::ALL.into_iter().find(|category| {
        category.reads().iter().any(|read| match *read {
            refresh_shared::category::Read::Get(node) => node == uri,
            refresh_shared::category::Read::Replace { uri: node, .. } => node == uri,
        })
    })
}

/// What a `Get` of `uri` returns: a subtree's leaves for `?list=StructData`, the app inventory
/// as XML, a leaf's value otherwise.
fn results(device_id: &str, uri: &str) -> Vec<Item> {
    let leaf = |source: String, format: &str, data: String| Item {
        source: Some(source),
        format: Some(format.to_owned()),
        data: Some(data),
        ..Item::default()
    };
    if let Some((node, _)) = uri.split_once("?list=StructData") {
        return (0..2)
            .map(|i| {
                let source = format!("{node}/sim{i}/Value");
                let data = fixture(device_id, &source);
                leaf(source, "chr", data)
            })
            .collect();
    }
    if uri.ends_with("/AppInventoryResults") {
        let inventory = format!(
            r#"<AppInventoryResults><Package Name="Contoso.App" Version="1.0.0.0" Publisher="{device_id}"/></AppInventoryResults>"#
        );
        return vec![leaf(uri.to_owned(), "xml", inventory)];
    }
    vec![leaf(uri.to_owned(), "chr", fixture(device_id, uri))]
}
