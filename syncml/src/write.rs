//! Writing a message, elements in the order MS-MDM's syntax gives them.

use crate::{Command, Header, Item, METINF, Message, NAMESPACE, VER_DTD, VER_PROTO};
use quick_xml::{Writer, events::BytesText};
use std::io::Cursor;

type Out = Writer<Cursor<Vec<u8>>>;

pub(crate) fn message(message: &Message) -> String {
    let mut out = Writer::new(Cursor::new(Vec::new()));
    // Writing to memory cannot fail.
    let _ = out
        .create_element("SyncML")
        .with_attribute(("xmlns", NAMESPACE))
        .write_inner_content(|out| {
            header(out, &message.header)?;
            out.create_element("SyncBody").write_inner_content(|out| {
                for command in &message.commands {
                    self::command(out, command)?;
                }
                if message.is_final {
                    out.create_element("Final").write_empty()?;
                }
                Ok(())
            })?;
            Ok(())
        });
    String::from_utf8(out.into_inner().into_inner()).unwrap_or_default()
}

fn header(out: &mut Out, header: &Header) -> std::io::Result<()> {
    out.create_element("SyncHdr").write_inner_content(|out| {
        text(out, "VerDTD", VER_DTD)?;
        text(out, "VerProto", VER_PROTO)?;
        text(out, "SessionID", &header.session_id)?;
        text(out, "MsgID", &header.msg_id.to_string())?;
        location(out, "Target", &header.target)?;
        location(out, "Source", &header.source)
    })?;
    Ok(())
}

fn command(out: &mut Out, command: &Command) -> std::io::Result<()> {
    out.create_element(command.kind.name())
        .write_inner_content(|out| {
            text(out, "CmdID", &command.cmd_id.to_string())?;
            if let Some(msg_ref) = command.msg_ref {
                text(out, "MsgRef", &msg_ref.to_string())?;
            }
            if let Some(cmd_ref) = command.cmd_ref {
                text(out, "CmdRef", &cmd_ref.to_string())?;
            }
            if let Some(cmd) = &command.cmd {
                text(out, "Cmd", cmd)?;
            }
            // Data before the items, for an Alert's code as for a Status's (MS-MDM 2.2.6.1,
            // 2.2.7.2).
            if let Some(data) = &command.data {
                text(out, "Data", data)?;
            }
            for item in &command.items {
                self::item(out, item)?;
            }
            Ok(())
        })?;
    Ok(())
}

fn item(out: &mut Out, item: &Item) -> std::io::Result<()> {
    out.create_element("Item").write_inner_content(|out| {
        if let Some(target) = &item.target {
            location(out, "Target", target)?;
        }
        if let Some(source) = &item.source {
            location(out, "Source", source)?;
        }
        if let Some(format) = &item.format {
            out.create_element("Meta").write_inner_content(|out| {
                out.create_element("Format")
                    .with_attribute(("xmlns", METINF))
                    .write_text_content(BytesText::new(format))?;
                Ok(())
            })?;
        }
        if let Some(data) = &item.data {
            text(out, "Data", data)?;
        }
        Ok(())
    })?;
    Ok(())
}

/// `<name><LocURI>uri</LocURI></name>`.
fn location(out: &mut Out, name: &str, uri: &str) -> std::io::Result<()> {
    out.create_element(name)
        .write_inner_content(|out| text(out, "LocURI", uri))?;
    Ok(())
}

/// `<name>value</name>`, the value escaped.
fn text(out: &mut Out, name: &str, value: &str) -> std::io::Result<()> {
    out.create_element(name)
        .write_text_content(BytesText::new(value))?;
    Ok(())
}
