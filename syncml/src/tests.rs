//! Reading and writing messages shaped like MS-MDM's protocol examples, and refusing hostile ones.

use crate::{Command, CommandKind, Header, Item, Limits, Message, ParseError};

/// A device's first message of a session, as MS-MDM's example shapes it.
const SESSION_START: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<SyncML xmlns="SYNCML:SYNCML1.2">
  <SyncHdr>
    <VerDTD>1.2</VerDTD>
    <VerProto>DM/1.2</VerProto>
    <SessionID>1A</SessionID>
    <MsgID>1</MsgID>
    <Target><LocURI>https://mdm.example.com/ManagementServer/MDM.svc</LocURI></Target>
    <Source><LocURI>DEVICE-1</LocURI></Source>
  </SyncHdr>
  <SyncBody>
    <Alert><CmdID>2</CmdID><Data>1201</Data></Alert>
    <Alert>
      <CmdID>3</CmdID><Data>1224</Data>
      <Item><Meta><Type xmlns="syncml:metinf">com.microsoft/MDM/LoginStatus</Type></Meta><Data>user</Data></Item>
    </Alert>
    <Replace>
      <CmdID>4</CmdID>
      <Item><Source><LocURI>./DevInfo/DevId</LocURI></Source><Data>DEVICE-1</Data></Item>
      <Item><Source><LocURI>./DevInfo/Man</LocURI></Source><Data>Contoso &amp; Sons &#x263A;</Data></Item>
    </Replace>
    <Final/>
  </SyncBody>
</SyncML>"#;

fn parse(xml: &str) -> Result<Message, ParseError> {
    Message::parse(xml.as_bytes(), &Limits::default())
}

#[test]
fn a_session_start_is_read_with_its_header_commands_and_final() {
    let message = parse(SESSION_START).unwrap();
    assert_eq!(
        message.header,
        Header {
            session_id: "1A".into(),
            msg_id: 1,
            target: "https://mdm.example.com/ManagementServer/MDM.svc".into(),
            source: "DEVICE-1".into(),
        }
    );
    assert!(message.is_final);
    let kinds: Vec<_> = message
        .commands
        .iter()
        .map(|c| (c.kind.clone(), c.cmd_id))
        .collect();
    assert_eq!(
        kinds,
        [
            (CommandKind::Alert, 2),
            (CommandKind::Alert, 3),
            (CommandKind::Replace, 4)
        ]
    );
    assert_eq!(message.commands[0].data.as_deref(), Some("1201"));
    let replace = &message.commands[2];
    assert_eq!(replace.items[1].source.as_deref(), Some("./DevInfo/Man"));
    assert_eq!(
        replace.items[1].data.as_deref(),
        Some("Contoso & Sons \u{263A}")
    );
}

#[test]
fn a_written_message_reads_back_the_same() {
    let message = Message {
        header: Header {
            session_id: "7".into(),
            msg_id: 2,
            target: "DEVICE-1".into(),
            source: "https://mdm.example.com/ManagementServer/MDM.svc".into(),
        },
        commands: vec![
            Command::status(1, 2, 0, "SyncHdr", 200),
            Command {
                items: vec![Item::target("./DevDetail/SwV")],
                ..Command::new(CommandKind::Get, 2)
            },
            Command {
                items: vec![Item {
                    target: Some("./Device/Vendor/MSFT/EnterpriseModernAppManagement/AppManagement/AppInventoryQuery".into()),
                    format: Some("xml".into()),
                    data: Some(r#"<Inventory Output="PackageDetails"/>"#.into()),
                    ..Item::default()
                }],
                ..Command::new(CommandKind::Replace, 3)
            },
        ],
        is_final: true,
    };
    let xml = message.to_xml();
    assert!(
        xml.starts_with(r#"<SyncML xmlns="SYNCML:SYNCML1.2"><SyncHdr><VerDTD>1.2</VerDTD>"#),
        "{xml}"
    );
    assert!(xml.contains("<Status><CmdID>1</CmdID><MsgRef>2</MsgRef><CmdRef>0</CmdRef><Cmd>SyncHdr</Cmd><Data>200</Data></Status>"), "{xml}");
    assert!(xml.contains(r#"<Meta><Format xmlns="syncml:metinf">xml</Format></Meta><Data>&lt;Inventory Output=&quot;PackageDetails&quot;/&gt;</Data>"#), "{xml}");
    assert_eq!(parse(&xml).unwrap(), message);
}

#[test]
fn markup_inside_data_is_kept_as_text_and_cdata_is_read() {
    let xml = SESSION_START
        .replace(
            "<Data>DEVICE-1</Data>",
            "<Data><AppInventoryResults><Package Name=\"a\"/></AppInventoryResults></Data>",
        )
        .replace("<Data>1201</Data>", "<Data><![CDATA[1201]]></Data>");
    let message = parse(&xml).unwrap();
    assert_eq!(
        message.commands[2].items[0].data.as_deref(),
        Some("<AppInventoryResults><Package Name=\"a\"/></AppInventoryResults>")
    );
    assert_eq!(message.commands[0].data.as_deref(), Some("1201"));
}

#[test]
fn entities_and_document_types_are_refused_never_expanded() {
    let laughs = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE SyncML [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;\">]>{}",
        SESSION_START
            .replace("<?xml version=\"1.0\" encoding=\"UTF-8\"?>", "")
            .replace("DEVICE-1</Data>", "&lol2;</Data>")
    );
    assert_eq!(parse(&laughs), Err(ParseError::DocType));
    let external = SESSION_START.replace("<Data>user</Data>", "<Data>&xxe;</Data>");
    assert_eq!(parse(&external), Err(ParseError::Entity("xxe".into())));
}

#[test]
fn what_is_not_a_syncml_1_2_message_is_refused_with_a_reason() {
    let cases: Vec<(String, &str)> = vec![
        (
            SESSION_START[..SESSION_START.find("<SyncBody>").unwrap()].to_owned(),
            "ends before",
        ),
        (
            SESSION_START[..SESSION_START.len() / 2].to_owned(),
            "well-formed",
        ),
        (
            SESSION_START.replace("SYNCML:SYNCML1.2", "SYNCML:SYNCML1.1"),
            "root element",
        ),
        (
            SESSION_START.replace("<VerProto>DM/1.2</VerProto>", "<VerProto>DS/1.2</VerProto>"),
            "VerProto",
        ),
        (
            SESSION_START.replace("<MsgID>1</MsgID>", "<MsgID>one</MsgID>"),
            "MsgID",
        ),
        (
            SESSION_START.replace("<SessionID>1A</SessionID>", ""),
            "SessionID",
        ),
        (
            SESSION_START.replace("</Replace>", "</Alert>"),
            "well-formed",
        ),
        ("<html><body/></html>".to_owned(), "root element"),
        (format!("{SESSION_START}<SyncML/>"), "after the root"),
        (String::new(), "ends before"),
    ];
    for (xml, expected) in cases {
        let error = parse(&xml).expect_err(expected).to_string();
        assert!(error.contains(expected), "{expected}: {error}");
    }
    let error = Message::parse(b"<SyncML>\xff\xfe</SyncML>", &Limits::default()).unwrap_err();
    assert_eq!(error, ParseError::NotUtf8(8));
}

#[test]
fn size_depth_and_command_count_are_bounded() {
    let many: String = (0..10_000)
        .map(|i| format!("<Alert><CmdID>{i}</CmdID><Data>1226</Data></Alert>"))
        .collect();
    let xml = SESSION_START.replace("<Final/>", &many);
    assert_eq!(
        parse(&xml),
        Err(ParseError::TooMany {
            what: "commands",
            limit: 1_000
        })
    );
    let deep = format!("{}{}", "<a>".repeat(100), "</a>".repeat(100));
    let xml = SESSION_START.replace("<Final/>", &format!("<Exec><CmdID>9</CmdID>{deep}</Exec>"));
    assert_eq!(parse(&xml), Err(ParseError::TooDeep(16)));
    let wide = "<a/>".repeat(200_000);
    let xml = SESSION_START.replace("<Final/>", &wide);
    assert_eq!(
        parse(&xml),
        Err(ParseError::TooMany {
            what: "elements",
            limit: 100_000
        })
    );
}

#[test]
fn an_unknown_command_is_read_by_name_for_its_status() {
    let xml = SESSION_START.replace(
        "<Final/>",
        "<Frobnicate><CmdID>9</CmdID></Frobnicate><Final/>",
    );
    let message = parse(&xml).unwrap();
    let last = message.commands.last().unwrap();
    assert_eq!(
        (last.kind.clone(), last.cmd_id),
        (CommandKind::Unknown("Frobnicate".into()), 9)
    );
}
