//! SyncML 1.2 as OMA DM 1.2 and Microsoft's MS-MDM use it between a Windows device's DM client
//! and its management server: the message model, a reader that refuses what a device must never
//! make us do (declare or expand entities, nest without end, send without end), and a writer.
//!
//! Only the plain-XML representation (`application/vnd.syncml.dm+xml`) is read and written;
//! Windows does not use WBXML for MDM.

mod read;
#[cfg(test)]
mod tests;
mod write;

pub use read::{Limits, ParseError};

/// The media type of a SyncML DM message in XML.
pub const CONTENT_TYPE: &str = "application/vnd.syncml.dm+xml";
/// The namespace of the `SyncML` root element, version 1.2.
pub const NAMESPACE: &str = "SYNCML:SYNCML1.2";
/// `VerDTD` and `VerProto` of every message read or written.
pub const VER_DTD: &str = "1.2";
pub const VER_PROTO: &str = "DM/1.2";
/// The `MetInf` namespace the `Format` and `Type` of an item's `Meta` live in.
pub const METINF: &str = "syncml:metinf";

/// One SyncML message: a header and the commands of its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub commands: Vec<Command>,
    /// `<Final/>`: the last message of the sender's package. Without it the sender has more to
    /// send before it expects the other side's commands.
    pub is_final: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub session_id: String,
    pub msg_id: u32,
    /// `Target/LocURI`: who the message is for (the server's URL, or the device's id).
    pub target: String,
    /// `Source/LocURI`: who sent it (the device's id, or the server's URL).
    pub source: String,
}

/// The commands a DM message may carry. A device's message holding anything else is answered
/// command by command (an unsupported one with its own `Status`), not refused whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandKind {
    Add,
    Alert,
    Atomic,
    Copy,
    Delete,
    Exec,
    Get,
    Replace,
    Results,
    Sequence,
    Status,
    /// An element SyncML does not define as a command, by its name.
    Unknown(String),
}

impl CommandKind {
    fn from_name(name: &str) -> CommandKind {
        match name {
            "Add" => CommandKind::Add,
            "Alert" => CommandKind::Alert,
            "Atomic" => CommandKind::Atomic,
            "Copy" => CommandKind::Copy,
            "Delete" => CommandKind::Delete,
            "Exec" => CommandKind::Exec,
            "Get" => CommandKind::Get,
            "Replace" => CommandKind::Replace,
            "Results" => CommandKind::Results,
            "Sequence" => CommandKind::Sequence,
            "Status" => CommandKind::Status,
            other => CommandKind::Unknown(other.to_owned()),
        }
    }

    /// The element name, as `Status/Cmd` names the command it answers.
    pub fn name(&self) -> &str {
        match self {
            CommandKind::Add => "Add",
            CommandKind::Alert => "Alert",
            CommandKind::Atomic => "Atomic",
            CommandKind::Copy => "Copy",
            CommandKind::Delete => "Delete",
            CommandKind::Exec => "Exec",
            CommandKind::Get => "Get",
            CommandKind::Replace => "Replace",
            CommandKind::Results => "Results",
            CommandKind::Sequence => "Sequence",
            CommandKind::Status => "Status",
            CommandKind::Unknown(name) => name,
        }
    }
}

/// One command of a message's body, with the elements DM commands are made of. Which ones a
/// command carries depends on its kind (a `Status` has `MsgRef`, `CmdRef`, `Cmd` and `Data`;
/// a `Get` has items with a `Target`; `Results` items with a `Source` and `Data`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub kind: CommandKind,
    /// Unique within its message. Zero stands for the `SyncHdr` in a `Status`'s `CmdRef`; a
    /// command read without a `CmdID` has 0 here.
    pub cmd_id: u32,
    pub msg_ref: Option<u32>,
    pub cmd_ref: Option<u32>,
    /// `Status/Cmd`: the name of the command a status answers.
    pub cmd: Option<String>,
    /// `Alert`'s code, or `Status`'s result code.
    pub data: Option<String>,
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Item {
    /// `Target/LocURI`: the node a `Get`, `Replace`, … acts on.
    pub target: Option<String>,
    /// `Source/LocURI`: the node a `Results` or device `Replace` item reports.
    pub source: Option<String>,
    /// `Meta/Format` (`chr`, `int`, `xml`, `node`, …).
    pub format: Option<String>,
    /// The item's value. Markup inside `Data` (an `xml` value sent unescaped) is kept as text.
    pub data: Option<String>,
}

impl Command {
    /// A command of `kind` with nothing but its id.
    pub fn new(kind: CommandKind, cmd_id: u32) -> Command {
        Command {
            kind,
            cmd_id,
            msg_ref: None,
            cmd_ref: None,
            cmd: None,
            data: None,
            items: Vec::new(),
        }
    }

    /// The `Status` that answers command `cmd_ref` (0: the header) named `cmd`, of message
    /// `msg_ref`, with result `code`.
    pub fn status(cmd_id: u32, msg_ref: u32, cmd_ref: u32, cmd: &str, code: u16) -> Command {
        Command {
            msg_ref: Some(msg_ref),
            cmd_ref: Some(cmd_ref),
            cmd: Some(cmd.to_owned()),
            data: Some(code.to_string()),
            ..Command::new(CommandKind::Status, cmd_id)
        }
    }

    /// The status code a `Status` carries, if it is a number.
    pub fn status_code(&self) -> Option<u16> {
        self.data.as_deref()?.trim().parse().ok()
    }
}

impl Item {
    pub fn target(uri: &str) -> Item {
        Item {
            target: Some(uri.to_owned()),
            ..Item::default()
        }
    }
}

impl Message {
    /// Reads a message, within `limits`.
    pub fn parse(body: &[u8], limits: &Limits) -> Result<Message, ParseError> {
        read::message(body, limits)
    }

    /// The message as XML.
    pub fn to_xml(&self) -> String {
        write::message(self)
    }
}

/// Status codes this product sends or reads (OMA DM 1.2 representation protocol).
pub mod status {
    pub const OK: u16 = 200;
    /// The first code that is not a success.
    pub const FIRST_FAILURE: u16 = 300;
    pub const NOT_FOUND: u16 = 404;
    /// An optional feature the recipient does not support.
    pub const OPTIONAL_FEATURE_NOT_SUPPORTED: u16 = 406;
    pub const REQUEST_ENTITY_TOO_LARGE: u16 = 413;
}

/// Alert codes (MS-MDM 2.2.7.2).
pub mod alert {
    pub const SERVER_INITIATED: &str = "1200";
    pub const CLIENT_INITIATED: &str = "1201";
    pub const NEXT_MESSAGE: &str = "1222";
    pub const SESSION_ABORT: &str = "1223";
}
