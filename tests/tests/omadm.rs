//! OMA-DM (CONTRACT §5): a device reached through WNS alone is woken by a push, opens a
//! management session over TLS with its client certificate, and is read exactly the categories
//! outstanding on it; its answers complete the refresh like an agent's report. The devices are
//! the sim's DM clients; the api, worker, RabbitMQ and MongoDB are the real ones.

use push_gateway_sim::{
    SimGateway,
    devices::fixture,
    omadm::{SessionOutcome, SessionRecord},
};
use refresh_shared::{
    Category,
    device::Gateway,
    job::{CategoryState, JobState},
    report::ReportSource,
    token::PERMISSION_DEVICE_READ,
};
use refresh_syncml::{CONTENT_TYPE, Command, CommandKind, Limits, Message};
use refresh_tests::{
    DEADLINE, TestStack,
    omadm::{Authority, DmDevice},
    wait_until,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeMap;

const TPM: &str = "./Vendor/MSFT/DeviceStatus/TPM/SpecificationVersion";

fn parse(xml: &str) -> Message {
    Message::parse(xml.as_bytes(), &Limits::default()).unwrap_or_else(|e| panic!("{e}: {xml}"))
}

/// The targets of the reads (`Get`, `Replace`) a server message carries, in order.
fn reads(message: &Message) -> Vec<(CommandKind, String)> {
    message
        .commands
        .iter()
        .filter(|c| c.kind != CommandKind::Status)
        .map(|c| {
            (
                c.kind.clone(),
                c.items[0].target.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// The header of a device's first message to `url`, from `source`.
fn header(url: &str, source: &str) -> String {
    format!(
        "<SyncHdr><VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto><SessionID>1</SessionID><MsgID>1</MsgID><Target><LocURI>{url}</LocURI></Target><Source><LocURI>{source}</LocURI></Source></SyncHdr>"
    )
}

/// A device's first message with `commands`, then Final.
fn message(url: &str, source: &str, commands: &str) -> String {
    let header = header(url, source);
    format!(
        r#"<SyncML xmlns="SYNCML:SYNCML1.2">{header}<SyncBody>{commands}<Final/></SyncBody></SyncML>"#
    )
}

/// A device's first message, with nothing in it but a client-initiated session's alert.
fn opening(url: &str, source: &str) -> String {
    message(
        url,
        source,
        "<Alert><CmdID>1</CmdID><Data>1201</Data></Alert>",
    )
}

/// `body` posted as SyncML to `url` by `client`, with `certificate` in the proxy's header.
async fn post_syncml(
    client: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
    certificate: Option<String>,
) -> reqwest::Response {
    let mut request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
        .body(body);
    if let Some(certificate) = certificate {
        request = request.header("x-client-cert", certificate);
    }
    request.send().await.expect("an answer")
}

/// The sessions in which the server read anything.
fn reading_sessions(sessions: &[SessionRecord]) -> Vec<&SessionRecord> {
    sessions
        .iter()
        .filter(|s| s.exchanges.iter().any(|e| e.received.contains("<Get>")))
        .collect()
}

#[tokio::test]
async fn a_wns_device_is_read_in_its_management_session_and_its_refresh_completes() {
    let ca = Authority::new("device-refresh test devices");
    let stack = TestStack::start_omadm(&ca, &[]).await;
    let dm = stack.dm_device(&ca, &[TPM]).await;
    let categories = ["hardware", "security", "applications"];

    let (job_id, job) = stack.settled_refresh(&dm.device, &categories).await;
    assert_eq!(job.state(), JobState::Completed, "{job:?}");
    for record in job.categories.values() {
        assert_eq!(record.state, CategoryState::Reported, "{record:?}");
        assert_eq!(
            record.report_source,
            Some(ReportSource::Omadm),
            "{record:?}"
        );
        assert_eq!(record.gateway, Some(Gateway::Wns), "{record:?}");
    }

    // The pushes, as Windows expects them: cached for an offline device while the job lives,
    // naming no category.
    let pushes = stack.pushes_for_job(&job_id).await;
    assert!(!pushes.is_empty());
    for push in &pushes {
        assert_eq!(push.gateway, SimGateway::Wns);
        assert_eq!(push.cache_policy.as_deref(), Some("cache"), "{push:?}");
        assert!(
            push.ttl_secs.is_some_and(|ttl| (1..=3_600).contains(&ttl)),
            "{push:?}"
        );
        assert!(push.categories.is_empty(), "{push:?}");
    }

    // The inventory holds what the device answered, and the node it lacks as an error.
    let reader = stack.token_with(&[PERMISSION_DEVICE_READ]).await;
    let device_id = dm.device.id.to_hex();
    let inventory = stack.inventory(&device_id, None, &reader).await;
    assert_eq!(inventory.status, StatusCode::OK, "{:?}", inventory.body);
    let shown = &inventory.body["data"]["categories"];
    assert_eq!(shown["hardware"]["source"], json!("omadm"));
    assert_eq!(
        shown["hardware"]["nodes"]["./DevInfo/Man"],
        json!(fixture(&device_id, "./DevInfo/Man"))
    );
    assert_eq!(shown["security"]["errors"][TPM], json!("404"), "{shown}");
    assert!(shown["security"]["nodes"].get(TPM).is_none());
    let apps =
        "./Device/Vendor/MSFT/EnterpriseModernAppManagement/AppManagement/AppInventoryResults";
    assert!(
        shown["applications"]["nodes"][apps]
            .as_str()
            .is_some_and(|xml| xml.starts_with("<AppInventoryResults>")),
        "{shown}"
    );
    // A `?list=StructData` read brings the subtree's leaves.
    let msi = "./Device/Vendor/MSFT/EnterpriseDesktopAppManagement/MSI/sim0/Value";
    assert_eq!(
        shown["applications"]["nodes"][msi],
        json!(fixture(&device_id, msi))
    );

    // One session read everything, once, and its messages are shaped as MS-MDM's examples.
    // (The sim records a session when it ends, which may be after the job settled.)
    let sessions = wait_until("the reading session's record", DEADLINE, || async {
        let sessions = stack.sessions().await;
        (!reading_sessions(&sessions).is_empty()).then_some(sessions)
    })
    .await;
    let reading = reading_sessions(&sessions);
    assert_eq!(reading.len(), 1, "{sessions:#?}");
    let session = reading[0];
    assert_eq!(session.outcome, SessionOutcome::Ended);
    assert_eq!(session.exchanges.len(), 2, "{session:#?}");
    check_opening(
        &dm,
        &session.exchanges[0].sent,
        &session.exchanges[0].received,
        &categories,
    );
    check_closing(&session.exchanges[1].sent, &session.exchanges[1].received);
    // Every other session (opened by a push that came during the first) read nothing.
    for other in sessions
        .iter()
        .filter(|s| s.session_id != session.session_id)
    {
        assert_eq!(other.outcome, SessionOutcome::Ended, "{other:#?}");
        assert_eq!(other.exchanges.len(), 1, "{other:#?}");
    }
}

/// The device's first message and the server's answer: statuses for the header and each
/// command, then the reads of exactly `categories`, each node once, then Final.
fn check_opening(dm: &DmDevice, sent: &str, received: &str, categories: &[&str]) {
    let sent = parse(sent);
    let reply = parse(received);
    assert_eq!(reply.header.session_id, sent.header.session_id);
    assert_eq!(reply.header.msg_id, 1);
    assert_eq!(reply.header.target, dm.dm_device_id);
    assert_eq!(reply.header.source, sent.header.target);
    assert!(reply.is_final);
    let ids: Vec<u32> = reply.commands.iter().map(|c| c.cmd_id).collect();
    let expected: Vec<u32> = (1..=u32::try_from(ids.len()).unwrap()).collect();
    assert_eq!(ids, expected, "CmdIDs are unique and in order");
    assert_eq!(reply.commands[0], Command::status(1, 1, 0, "SyncHdr", 200));
    for (i, command) in sent.commands.iter().enumerate() {
        let status = &reply.commands[i + 1];
        assert_eq!(
            (
                status.kind.clone(),
                status.msg_ref,
                status.cmd_ref,
                status.cmd.as_deref()
            ),
            (
                CommandKind::Status,
                Some(1),
                Some(command.cmd_id),
                Some(command.kind.name())
            ),
            "{received}"
        );
        assert_eq!(status.status_code(), Some(200));
    }
    let mut expected: Vec<(CommandKind, String)> = Vec::new();
    let mut wanted: Vec<Category> = categories.iter().map(|c| c.parse().unwrap()).collect();
    wanted.sort();
    for category in wanted {
        for read in category.reads() {
            expected.push(match *read {
                refresh_shared::category::Read::Get(uri) => (CommandKind::Get, uri.to_owned()),
                refresh_shared::category::Read::Replace { uri, .. } => {
                    (CommandKind::Replace, uri.to_owned())
                }
            });
        }
    }
    assert_eq!(reads(&reply), expected, "{received}");
    let query = reply
        .commands
        .iter()
        .find(|c| c.kind == CommandKind::Replace)
        .expect("the app inventory query");
    assert_eq!(query.items[0].format.as_deref(), Some("xml"));
    assert_eq!(
        query.items[0].data.as_deref(),
        Some(r#"<Inventory Output="PackageDetails"/>"#)
    );
}

/// The device's answers and the server's last message: a status for its header and for each
/// `Results`, nothing else, then Final.
fn check_closing(sent: &str, received: &str) {
    let sent = parse(sent);
    let reply = parse(received);
    assert_eq!((reply.header.msg_id, sent.header.msg_id), (2, 2));
    assert!(reply.is_final);
    assert_eq!(reply.commands[0], Command::status(1, 2, 0, "SyncHdr", 200));
    let answered: Vec<(Option<u32>, Option<String>)> = reply.commands[1..]
        .iter()
        .map(|c| (c.cmd_ref, c.cmd.clone()))
        .collect();
    let results: Vec<(Option<u32>, Option<String>)> = sent
        .commands
        .iter()
        .filter(|c| c.kind == CommandKind::Results)
        .map(|c| (Some(c.cmd_id), Some("Results".to_owned())))
        .collect();
    assert!(!results.is_empty());
    assert_eq!(answered, results, "{received}");
}

/// A TLS stack and a DM device that is offline: pushes go out, it does not connect until told.
async fn offline_dm_device() -> (TestStack, DmDevice) {
    let ca = Authority::new("device-refresh test devices");
    let stack = TestStack::start_omadm(&ca, &[]).await;
    let dm = stack.dm_device(&ca, &[]).await;
    stack.fault(json!({ "mode": "ok", "report": "off" })).await;
    (stack, dm)
}

#[tokio::test]
async fn one_session_reads_what_two_jobs_wait_for_once() {
    let (stack, dm) = offline_dm_device().await;
    let (first, _) = stack.pushed_refresh(&dm.device, &["hardware"]).await;
    let (second, _) = stack.pushed_refresh(&dm.device, &["os", "hardware"]).await;
    assert_ne!(first, second);
    assert!(stack.sessions().await.is_empty());

    // Back online, the device polls once.
    stack.fault(json!({ "mode": "ok", "report": "on" })).await;
    stack.poll(dm.device.id).await;
    for job in [&first, &second] {
        let job = stack.wait_for_settled_job(job).await;
        assert_eq!(job.state(), JobState::Completed, "{job:?}");
        for record in job.categories.values() {
            assert_eq!(record.report_source, Some(ReportSource::Omadm));
        }
    }
    let sessions = stack.recorded_sessions(1).await;
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    let reply = parse(&sessions[0].exchanges[0].received);
    let mut read: BTreeMap<String, usize> = BTreeMap::new();
    for (_, uri) in reads(&reply) {
        *read.entry(uri).or_default() += 1;
    }
    let union: Vec<&str> = Category::Hardware
        .nodes()
        .chain(Category::Os.nodes())
        .collect();
    assert_eq!(read.len(), union.len(), "{read:?}");
    assert!(read.values().all(|&n| n == 1), "each node once: {read:?}");

    // Everything reported: the next session is asked for nothing.
    stack.poll(dm.device.id).await;
    let sessions = stack.recorded_sessions(2).await;
    assert_eq!(sessions[1].exchanges.len(), 1, "{:#?}", sessions[1]);
    assert_eq!(sessions[1].outcome, SessionOutcome::Ended);
    assert!(reads(&parse(&sessions[1].exchanges[0].received)).is_empty());
}

#[tokio::test]
async fn a_device_that_drops_mid_session_is_pushed_again_and_read_then() {
    let ca = Authority::new("device-refresh test devices");
    let stack = TestStack::start_omadm(
        &ca,
        &[
            ("REPORT_DEADLINE_SECS", "2".to_owned()),
            ("REPUSH_LIMIT", "2".to_owned()),
        ],
    )
    .await;
    let dm = stack.dm_device(&ca, &[]).await;
    stack.fault(json!({ "mode": "ok", "report": "drop" })).await;
    let (job_id, job) = stack.pushed_refresh(&dm.device, &["os"]).await;
    assert_eq!(job.categories[&Category::Os].state, CategoryState::Pushed);
    wait_until("a dropped session", DEADLINE, || async {
        let sessions = stack.sessions().await;
        sessions
            .iter()
            .any(|s| s.outcome == SessionOutcome::Dropped)
            .then_some(())
    })
    .await;
    // Nothing was answered: the category waits, pushed, for the deadline.
    let job = stack.job(&job_id).await;
    assert_eq!(job.categories[&Category::Os].state, CategoryState::Pushed);

    stack.fault(json!({ "mode": "ok", "report": "on" })).await;
    let job = stack.wait_for_settled_job(&job_id).await;
    let os = &job.categories[&Category::Os];
    assert_eq!(os.state, CategoryState::Reported, "{os:?}");
    assert_eq!(os.report_source, Some(ReportSource::Omadm));
    let pushes = stack.pushes_for_job(&job_id).await;
    assert!(
        pushes.len() >= 2,
        "pushed again after the deadline: {pushes:?}"
    );
}

#[tokio::test]
async fn what_a_device_leaves_unanswered_stays_outstanding() {
    let (stack, dm) = offline_dm_device().await;
    let (job_id, _) = stack.pushed_refresh(&dm.device, &["hardware", "os"]).await;
    // The device answers the reads of the first category it is asked for, and ends its
    // package without a word about the other.
    stack
        .fault(json!({ "mode": "ok", "report": "partial" }))
        .await;
    stack.poll(dm.device.id).await;
    let job = wait_until("hardware reported", DEADLINE, || async {
        let job = stack.job(&job_id).await;
        (job.categories[&Category::Hardware].state == CategoryState::Reported).then_some(job)
    })
    .await;
    assert_eq!(
        job.categories[&Category::Hardware].report_source,
        Some(ReportSource::Omadm)
    );
    // The session ended when the server had nothing left to ask (the unanswered reads are not
    // asked twice in one session); the category waits, pushed, for its deadline.
    let sessions = stack.recorded_sessions(1).await;
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    assert_eq!(sessions[0].outcome, SessionOutcome::Ended);
    assert_eq!(sessions[0].exchanges.len(), 2);
    let job = stack.job(&job_id).await;
    assert_eq!(
        job.categories[&Category::Os].state,
        CategoryState::Pushed,
        "{job:?}"
    );
    assert_eq!(job.state(), JobState::InProgress);
    let device = stack.stored_device(dm.device.id).await;
    assert_eq!(device.refresh_info_needed, [Category::Os]);
}

#[tokio::test]
async fn strangers_are_refused_with_401_and_nothing_is_recorded() {
    let ca = Authority::new("device-refresh test devices");
    let stack = TestStack::start_omadm(&ca, &[]).await;
    let dm = stack.dm_device(&ca, &[]).await;
    let other = stack.dm_device(&ca, &[]).await;
    stack.fault(json!({ "mode": "ok", "report": "off" })).await;
    let (job_id, _) = stack.pushed_refresh(&dm.device, &["os"]).await;
    let url = format!("{}/ManagementServer/MDM.svc", stack.device_url());
    let foreign = Authority::new("somebody else's CA").client(&dm.dm_device_id);
    let cases = [
        ("no certificate", None, dm.dm_device_id.clone()),
        (
            "a certificate of another CA",
            Some(&foreign),
            dm.dm_device_id.clone(),
        ),
        (
            "another device's certificate",
            Some(&other.certificate),
            dm.dm_device_id.clone(),
        ),
        (
            "a Source that is not the device's",
            Some(&dm.certificate),
            other.dm_device_id.clone(),
        ),
    ];
    for (case, identity, source) in cases {
        let client = TestStack::dm_client(&ca, identity);
        let answer = post_syncml(&client, &url, opening(&url, &source), None).await;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "{case}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"]["code"], json!(4001), "{case}: {body}");
    }
    // The device itself is served, and asked for its outstanding category.
    let client = TestStack::dm_client(&ca, Some(&dm.certificate));
    let answer = post_syncml(&client, &url, opening(&url, &dm.dm_device_id), None).await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        answer.headers()[reqwest::header::CONTENT_TYPE],
        CONTENT_TYPE
    );
    let reply = parse(&answer.text().await.unwrap());
    let asked: Vec<String> = reads(&reply).into_iter().map(|(_, uri)| uri).collect();
    assert_eq!(asked, Category::Os.nodes().collect::<Vec<_>>());
    // Nothing was recorded for anyone.
    let job = stack.job(&job_id).await;
    assert_eq!(job.categories[&Category::Os].state, CategoryState::Pushed);
    let reader = stack.token_with(&[PERMISSION_DEVICE_READ]).await;
    for device in [&dm, &other] {
        let inventory = stack
            .inventory(&device.device.id.to_hex(), None, &reader)
            .await;
        assert_eq!(
            inventory.body["data"]["categories"],
            json!({}),
            "{:?}",
            inventory.body
        );
    }
}

#[tokio::test]
async fn a_channel_the_device_renews_is_stored() {
    let ca = Authority::new("device-refresh test devices");
    let stack = TestStack::start_omadm(&ca, &[]).await;
    let dm = stack.dm_device(&ca, &[]).await;
    let renewed = format!("{}/wns/channels/renewed-{}", stack.sim.url(), dm.device.id);
    let body = json!({
        "deviceId": dm.device.id.to_hex(),
        "dmDeviceId": dm.dm_device_id,
        "certPem": dm.certificate.cert_pem,
        "keyPem": dm.certificate.key_pem,
        "renewedChannelUri": renewed,
    });
    stack.sim("/_sim/devices", Some(body)).await;
    stack.poll(dm.device.id).await;
    let device = wait_until("the renewed channel", DEADLINE, || async {
        let device = stack.stored_device(dm.device.id).await;
        (device.push.live_wns_channel() == Some(renewed.as_str())).then_some(device)
    })
    .await;
    assert!(device.push.wns.is_some());
}

#[tokio::test]
async fn hostile_syncml_gets_clear_errors_never_a_5xx_and_memory_stays_bounded() {
    let ca = Authority::new("device-refresh test devices");
    let stack =
        TestStack::spawn_omadm(&ca, &[("DEVICE_RATE_LIMIT_BURST", "1000".to_owned())]).await;
    let dm = stack.dm_device(&ca, &[]).await;
    let url = format!("{}/ManagementServer/MDM.svc", stack.device_url());
    let header = header(&url, &dm.dm_device_id);
    let message = |commands: &str| message(&url, &dm.dm_device_id, commands);
    let valid = opening(&url, &dm.dm_device_id);
    let laughs = format!(
        r#"<?xml version="1.0"?><!DOCTYPE SyncML [<!ENTITY a "aaaaaaaaaa">{}]>{}"#,
        (1..10)
            .map(|i| format!(
                r#"<!ENTITY {} "{}">"#,
                char::from(b'a' + i),
                format!("&{};", char::from(b'a' + i - 1)).repeat(10)
            ))
            .collect::<String>(),
        message("<Alert><CmdID>1</CmdID><Data>&j;</Data></Alert>")
    );
    let external = format!(
        r#"<?xml version="1.0"?><!DOCTYPE SyncML [<!ENTITY x SYSTEM "file:///etc/passwd">]>{}"#,
        message("<Alert><CmdID>1</CmdID><Data>&x;</Data></Alert>")
    );
    let many = message(&"<Alert><CmdID>1</CmdID><Data>1226</Data></Alert>".repeat(10_000));
    let huge = message(&format!(
        "<Replace><CmdID>1</CmdID><Item><Source><LocURI>./DevInfo/Man</LocURI></Source><Data>{}</Data></Item></Replace>",
        "x".repeat(2 * 1024 * 1024)
    ));
    let deep = message(&format!(
        "<Exec><CmdID>1</CmdID>{}{}</Exec>",
        "<a>".repeat(5_000),
        "</a>".repeat(5_000)
    ));
    let wide = message(&"<a/>".repeat(200_000));
    let mut bodies: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated", valid[..valid.len() / 2].into()),
        (
            "cut before the body",
            valid[..valid.find("<SyncBody>").unwrap()].into(),
        ),
        (
            "wrong namespace",
            valid.replace("SYNCML:SYNCML1.2", "urn:example").into(),
        ),
        (
            "SyncML 1.1",
            valid.replace("SYNCML:SYNCML1.2", "SYNCML:SYNCML1.1").into(),
        ),
        ("not XML", b"hello, server".to_vec()),
        ("JSON", br#"{"SyncML":{}}"#.to_vec()),
        ("not UTF-8", [valid.as_bytes(), b"\xff\xfe\x00"].concat()),
        (
            "UTF-16",
            valid.encode_utf16().flat_map(u16::to_le_bytes).collect(),
        ),
        ("billion laughs", laughs.into()),
        ("external entity", external.into()),
        (
            "undeclared entity",
            message("<Alert><CmdID>1</CmdID><Data>&xxe;</Data></Alert>").into(),
        ),
        ("10,000 commands", many.into()),
        ("2 MB node value", huge.into()),
        ("5,000 levels deep", deep.into()),
        ("200,000 elements", wide.into()),
        ("no SyncHdr", valid.replace(&header, "").into()),
        (
            "no SyncBody",
            format!(r#"<SyncML xmlns="SYNCML:SYNCML1.2">{header}</SyncML>"#).into(),
        ),
        (
            "VerDTD 1.1",
            valid.replace("<VerDTD>1.2", "<VerDTD>1.1").into(),
        ),
        ("VerProto DS", valid.replace("DM/1.2", "DS/1.2").into()),
        (
            "MsgID not a number",
            valid.replace("<MsgID>1<", "<MsgID>one<").into(),
        ),
        (
            "MsgID out of range",
            valid.replace("<MsgID>1<", "<MsgID>99999999999<").into(),
        ),
        (
            "CmdID not a number",
            valid.replace("<CmdID>1<", "<CmdID>-1<").into(),
        ),
        (
            "mismatched tags",
            valid.replace("</Alert>", "</Replace>").into(),
        ),
        (
            "broken attribute",
            valid
                .replace(r#"xmlns="SYNCML:SYNCML1.2""#, "xmlns=")
                .into(),
        ),
        (
            "unterminated CDATA",
            message("<Alert><CmdID>1</CmdID><Data><![CDATA[1201</Data></Alert>").into(),
        ),
        (
            "unterminated comment",
            message("<!-- <Alert><CmdID>1</CmdID></Alert>").into(),
        ),
        ("two documents", format!("{valid}{valid}").into()),
    ];
    // Parsed, then answered in SyncML: each command its own status.
    let answered_in_syncml: Vec<(&str, String)> = vec![
        (
            "unknown commands",
            message("<Frobnicate><CmdID>1</CmdID></Frobnicate><Exec><CmdID>2</CmdID></Exec>"),
        ),
        (
            "results for nothing asked",
            message(
                "<Results><CmdID>1</CmdID><MsgRef>7</MsgRef><CmdRef>99</CmdRef><Item><Source><LocURI>./Evil</LocURI></Source><Data>x</Data></Item></Results>",
            ),
        ),
    ];
    let client = TestStack::dm_client(&ca, Some(&dm.certificate));
    let pid = stack.api_pid();
    let before = refresh_testkit::process::rss(pid).expect("the api's memory");
    for (case, body) in bodies.drain(..) {
        let answer = post_syncml(&client, &url, body, None).await;
        let status = answer.status();
        let body: Value = answer
            .json()
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        let expected = if case == "2 MB node value" {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        assert_eq!(status, expected, "{case}: {body}");
        assert!(body["error"]["message"].is_string(), "{case}: {body}");
        if status == StatusCode::BAD_REQUEST {
            let problem = body["error"]["details"][0]["problem"]
                .as_str()
                .unwrap_or_default();
            assert!(!problem.is_empty(), "{case}: a reason: {body}");
        }
    }
    for (case, body) in answered_in_syncml {
        let answer = post_syncml(&client, &url, body, None).await;
        assert_eq!(answer.status(), StatusCode::OK, "{case}");
        let reply = parse(&answer.text().await.unwrap());
        let codes: Vec<Option<u16>> = reply.commands[1..]
            .iter()
            .map(Command::status_code)
            .collect();
        let expected = if case == "unknown commands" {
            vec![Some(406), Some(406)]
        } else {
            vec![Some(200)]
        };
        assert_eq!(codes, expected, "{case}: {reply:?}");
    }
    // A body of another media type is not read as SyncML.
    let answer = client
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "text/xml")
        .body(valid.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    // Still serving, and none of it cost memory that stayed.
    let answer = post_syncml(&client, &url, valid, None).await;
    assert_eq!(answer.status(), StatusCode::OK);
    let after = refresh_testkit::process::rss(pid).expect("the api's memory");
    assert!(
        after.peak_kib < before.current_kib + 64 * 1024,
        "the api's peak memory grew from {} KiB to {} KiB",
        before.current_kib,
        after.peak_kib
    );
    let reader = stack.token_with(&[PERMISSION_DEVICE_READ]).await;
    let inventory = stack.inventory(&dm.device.id.to_hex(), None, &reader).await;
    assert_eq!(inventory.body["data"]["categories"], json!({}));
}

#[tokio::test]
async fn an_operator_registers_a_dm_device_by_its_certificate_and_it_is_served() {
    let ca = Authority::new("device-refresh test devices");
    let stack = TestStack::start_omadm(&ca, &[]).await;
    let org = stack.org_id();
    let dm_device_id = format!("DM-CLI-{}", bson::oid::ObjectId::new());
    let certificate = ca.client(&dm_device_id);
    let dir = std::env::temp_dir().join(format!("refresh-cli-cert-{}", bson::oid::ObjectId::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert_file = dir.join("device.pem");
    std::fs::write(&cert_file, &certificate.cert_pem).unwrap();
    // `device create` and `device omadm set` with an identity: `--dm-device-id ID` then `more`.
    let create = |id: &str, more: &[&str]| -> Vec<String> {
        let head = [
            "device",
            "create",
            "--org",
            &org,
            "--push",
            "wns",
            "--dm-device-id",
            id,
        ];
        head.iter()
            .chain(more)
            .map(|arg| (*arg).to_owned())
            .collect()
    };
    let set = |device: &str, more: &[&str]| -> Vec<String> {
        let head = ["device", "omadm", "set", "--device", device];
        head.iter()
            .chain(more)
            .map(|arg| (*arg).to_owned())
            .collect()
    };
    let stack = &stack;
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        stack.refreshctl_output(&args).await
    };
    let json_of = |output: std::process::Output| -> Value {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    };

    let created = json_of(
        run(create(
            &dm_device_id,
            &["--cert", cert_file.to_str().unwrap()],
        ))
        .await,
    );
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(created["dmDeviceId"], json!(dm_device_id));
    assert_eq!(created["certThumbprint"], json!(certificate.thumbprint));

    // The thumbprint as `openssl x509 -fingerprint -sha256` prints it is taken too; a wrong
    // one is refused, naming the flag.
    let printed: Vec<String> = certificate
        .thumbprint
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).to_uppercase())
        .collect();
    let second = json_of(
        run(create(
            "DM-SECOND",
            &["--cert-thumbprint", &printed.join(":")],
        ))
        .await,
    );
    assert_eq!(second["certThumbprint"], json!(certificate.thumbprint));
    let refused = run(create("DM-THIRD", &["--cert-thumbprint", "abc"])).await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--cert-thumbprint") && stderr.contains("64 hex"),
        "{stderr}"
    );

    // A renewed certificate replaces the old one; a thumbprint alone is refused.
    let id = created["id"].as_str().unwrap().to_owned();
    let old = ca.client(&dm_device_id);
    let renewed = json_of(
        run(set(
            &id,
            &[
                "--dm-device-id",
                &dm_device_id,
                "--cert-thumbprint",
                &old.thumbprint,
            ],
        ))
        .await,
    );
    assert_eq!(renewed["certThumbprint"], json!(old.thumbprint));
    let alone = run(set(&id, &["--cert-thumbprint", &old.thumbprint])).await;
    assert!(
        !alone.status.success(),
        "a thumbprint without the DM device id"
    );
    json_of(
        run(set(
            &id,
            &[
                "--dm-device-id",
                &dm_device_id,
                "--cert-thumbprint",
                &certificate.thumbprint,
            ],
        ))
        .await,
    );

    // The device so registered opens a session and is served.
    let id = bson::oid::ObjectId::parse_str(&id).unwrap();
    let device = stack.store.device_by_id(id).await.unwrap().unwrap();
    let dm = DmDevice {
        device,
        dm_device_id,
        certificate,
    };
    stack.register_dm_device(&dm, &[]).await;
    stack.poll(id).await;
    let session = stack.recorded_sessions(1).await.remove(0);
    assert_eq!(session.outcome, SessionOutcome::Ended, "{session:#?}");
    assert_eq!(session.exchanges[0].status, 200);
}

#[tokio::test]
async fn a_trusted_proxy_may_pass_on_the_certificate_it_verified_and_nobody_else_may() {
    let ca = Authority::new("device-refresh test devices");
    let dir = std::env::temp_dir().join(format!("refresh-proxy-{}", bson::oid::ObjectId::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.ca_pem()).unwrap();
    let ca_path = ca_file.display().to_string();
    // The proxy terminates TLS: the api's device listener is plain HTTP behind it.
    let stack = TestStack::start_with(&[
        ("DEVICE_CLIENT_CA", ca_path.clone()),
        ("DEVICE_TRUSTED_PROXIES", "127.0.0.1".to_owned()),
    ])
    .await;
    let elsewhere = TestStack::start_with(&[
        ("DEVICE_CLIENT_CA", ca_path),
        ("DEVICE_TRUSTED_PROXIES", "127.0.0.2".to_owned()),
    ])
    .await;
    std::fs::remove_dir_all(&dir).ok();
    let passing = |issued: &refresh_tests::omadm::Issued| {
        let pem = format!("{}{}", issued.cert_pem, ca.ca_pem());
        percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    for stack in [&stack, &elsewhere] {
        stack.fault(json!({ "mode": "ok", "report": "off" })).await;
    }
    let dm = stack.dm_device(&ca, &[]).await;
    stack.pushed_refresh(&dm.device, &["os"]).await;
    let url = format!("{}/ManagementServer/MDM.svc", stack.devices);
    let body = opening(&url, &dm.dm_device_id);
    let answer = post_syncml(
        &stack.http,
        &url,
        body.clone(),
        Some(passing(&dm.certificate)),
    )
    .await;
    assert_eq!(answer.status(), StatusCode::OK);
    let reply = parse(&answer.text().await.unwrap());
    let asked: Vec<String> = reads(&reply).into_iter().map(|(_, uri)| uri).collect();
    assert_eq!(asked, Category::Os.nodes().collect::<Vec<_>>());

    // The api checks what the proxy passes on against the CA itself, and wants it at all.
    let foreign = Authority::new("somebody else's CA").client(&dm.dm_device_id);
    for (case, certificate) in [
        ("a certificate of another CA", Some(passing(&foreign))),
        ("no certificate", None),
        ("not a certificate", Some("garbage%0A".to_owned())),
    ] {
        let answer = post_syncml(&stack.http, &url, body.clone(), certificate).await;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "{case}");
    }

    // An api that trusts another address believes no such header.
    let other = elsewhere.dm_device(&ca, &[]).await;
    let url = format!("{}/ManagementServer/MDM.svc", elsewhere.devices);
    let body = opening(&url, &other.dm_device_id);
    let answer = post_syncml(
        &elsewhere.http,
        &url,
        body,
        Some(passing(&other.certificate)),
    )
    .await;
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
}
