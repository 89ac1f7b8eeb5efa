//! Reading a message: the XML into a small bounded tree first (no DTD, no entity but the five
//! predefined ones and character references, a depth and an element budget), then the tree
//! into a [`Message`]. A device's message is never trusted to be small, shallow or well-formed.

use crate::{Command, CommandKind, Header, Item, Message, NAMESPACE, VER_DTD, VER_PROTO};
use quick_xml::{Reader, escape::resolve_predefined_entity, events::Event};
use std::ops::Range;

/// How much of a message is read before it is refused.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Commands in the body (nested ones count).
    pub max_commands: usize,
    /// Elements in the whole document.
    pub max_elements: usize,
    /// How deep elements nest.
    pub max_depth: usize,
}

impl Default for Limits {
    /// Room for the largest exchange this product has (every category's reads answered in one
    /// message: about 60 `Status` and 60 `Results`, thousands of items for the structured
    /// subtrees) many times over, and nothing like a hostile message's.
    fn default() -> Limits {
        Limits {
            max_commands: 1_000,
            max_elements: 100_000,
            max_depth: 16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the message is not UTF-8 (byte {0})")]
    NotUtf8(usize),
    #[error("the message is not well-formed XML at byte {position}: {reason}")]
    Malformed { position: u64, reason: String },
    #[error("the message declares a document type: DTDs and entity declarations are refused")]
    DocType,
    #[error("the message refers to the entity '&{0};': only XML's predefined entities are read")]
    Entity(String),
    #[error("the message ends before its root element does")]
    Truncated,
    #[error("the root element must be <SyncML xmlns=\"{NAMESPACE}\">; found {0}")]
    NotSyncMl(String),
    #[error("{field} must be {expected}; found '{found}'")]
    Version {
        field: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{field} must be a number from 0 to 4294967295; found '{found}'")]
    NotANumber { field: &'static str, found: String },
    #[error("the message has more than {limit} {what}")]
    TooMany { what: &'static str, limit: usize },
    #[error("elements nest deeper than {0}")]
    TooDeep(usize),
}

/// An element of the tree: its local name, the text directly in it, its children, and where
/// its content lies in the source (to keep markup inside `Data` as text).
#[derive(Debug)]
struct Element {
    name: String,
    xmlns: Option<String>,
    text: String,
    children: Vec<Element>,
    inner: Range<usize>,
}

impl Element {
    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|child| child.name == name)
    }

    fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |child| child.name == name)
    }

    /// The trimmed text of child `name`, if it is there.
    fn text_of(&self, name: &str) -> Option<String> {
        self.child(name).map(|child| child.text.trim().to_owned())
    }

    /// `<name><LocURI>…</LocURI></name>`'s URI.
    fn uri_of(&self, name: &str) -> Option<String> {
        self.child(name)?.text_of("LocURI")
    }
}

pub(crate) fn message(body: &[u8], limits: &Limits) -> Result<Message, ParseError> {
    let source =
        std::str::from_utf8(body).map_err(|error| ParseError::NotUtf8(error.valid_up_to()))?;
    let root = tree(source, limits)?;
    let namespace = root.xmlns.as_deref().unwrap_or("");
    if root.name != "SyncML" || !namespace.eq_ignore_ascii_case(NAMESPACE) {
        return Err(ParseError::NotSyncMl(format!(
            "<{} xmlns=\"{}\">",
            shorten(&root.name),
            shorten(namespace)
        )));
    }
    let header = header(
        root.child("SyncHdr")
            .ok_or(ParseError::Missing("SyncHdr"))?,
    )?;
    let body = root
        .child("SyncBody")
        .ok_or(ParseError::Missing("SyncBody"))?;
    let mut commands = Vec::new();
    let mut is_final = false;
    for element in &body.children {
        if element.name == "Final" {
            is_final = true;
            continue;
        }
        if commands.len() == limits.max_commands {
            return Err(ParseError::TooMany {
                what: "commands",
                limit: limits.max_commands,
            });
        }
        commands.push(command(element, source)?);
    }
    Ok(Message {
        header,
        commands,
        is_final,
    })
}

fn header(element: &Element) -> Result<Header, ParseError> {
    for (field, expected) in [("VerDTD", VER_DTD), ("VerProto", VER_PROTO)] {
        let found = element.text_of(field).unwrap_or_default();
        if found != expected {
            return Err(ParseError::Version {
                field,
                expected,
                found: shorten(&found),
            });
        }
    }
    Ok(Header {
        session_id: element
            .text_of("SessionID")
            .ok_or(ParseError::Missing("SyncHdr/SessionID"))?,
        msg_id: number("MsgID", element.text_of("MsgID"))?
            .ok_or(ParseError::Missing("SyncHdr/MsgID"))?,
        target: element
            .uri_of("Target")
            .ok_or(ParseError::Missing("SyncHdr/Target/LocURI"))?,
        source: element
            .uri_of("Source")
            .ok_or(ParseError::Missing("SyncHdr/Source/LocURI"))?,
    })
}

fn command(element: &Element, source: &str) -> Result<Command, ParseError> {
    Ok(Command {
        kind: CommandKind::from_name(&element.name),
        cmd_id: number("CmdID", element.text_of("CmdID"))?.unwrap_or(0),
        msg_ref: number("MsgRef", element.text_of("MsgRef"))?,
        cmd_ref: number("CmdRef", element.text_of("CmdRef"))?,
        cmd: element.text_of("Cmd"),
        data: element.child("Data").map(|data| data_text(data, source)),
        items: element
            .children("Item")
            .map(|item| Item {
                target: item.uri_of("Target"),
                source: item.uri_of("Source"),
                format: item.child("Meta").and_then(|meta| meta.text_of("Format")),
                data: item.child("Data").map(|data| data_text(data, source)),
            })
            .collect(),
    })
}

/// A `Data` element's value: its text, or, when it holds markup (an `xml` value sent as
/// elements rather than escaped), that markup as written.
fn data_text(data: &Element, source: &str) -> String {
    if data.children.is_empty() {
        data.text.clone()
    } else {
        source
            .get(data.inner.clone())
            .unwrap_or_default()
            .to_owned()
    }
}

fn number(field: &'static str, text: Option<String>) -> Result<Option<u32>, ParseError> {
    text.map(|text| {
        text.parse().map_err(|_| ParseError::NotANumber {
            field,
            found: shorten(&text),
        })
    })
    .transpose()
}

/// The document as a tree of elements, within `limits`.
fn tree(source: &str, limits: &Limits) -> Result<Element, ParseError> {
    let mut reader = Reader::from_str(source);
    let mut open: Vec<Element> = Vec::new();
    let mut elements = 0usize;
    loop {
        let before = position(reader.buffer_position());
        let event = reader.read_event().map_err(|error| ParseError::Malformed {
            position: reader.error_position(),
            reason: error.to_string(),
        })?;
        if matches!(event, Event::Start(_) | Event::Empty(_)) {
            elements += 1;
            if elements > limits.max_elements {
                return Err(ParseError::TooMany {
                    what: "elements",
                    limit: limits.max_elements,
                });
            }
        }
        match event {
            Event::Start(start) => {
                if open.len() == limits.max_depth {
                    return Err(ParseError::TooDeep(limits.max_depth));
                }
                let mut element = element(&start)?;
                element.inner.start = position(reader.buffer_position());
                open.push(element);
            }
            Event::Empty(start) => {
                let element = element(&start)?;
                match open.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => return nothing_after(&mut reader).map(|()| element),
                }
            }
            Event::End(_) => {
                // quick-xml checks that end tags match their start tags.
                let Some(mut element) = open.pop() else {
                    return Err(ParseError::Truncated);
                };
                element.inner.end = before;
                match open.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => return nothing_after(&mut reader).map(|()| element),
                }
            }
            Event::Text(text) => {
                if let Some(current) = open.last_mut() {
                    current
                        .text
                        .push_str(&text.xml_content().map_err(malformed)?);
                }
            }
            Event::CData(data) => {
                if let Some(current) = open.last_mut() {
                    current.text.push_str(&data.decode().map_err(malformed)?);
                }
            }
            Event::GeneralRef(reference) => {
                let resolved = match reference.resolve_char_ref().map_err(malformed)? {
                    Some(char) => char.to_string(),
                    None => {
                        let name = reference.decode().map_err(malformed)?;
                        resolve_predefined_entity(&name)
                            .ok_or_else(|| ParseError::Entity(shorten(&name)))?
                            .to_owned()
                    }
                };
                if let Some(current) = open.last_mut() {
                    current.text.push_str(&resolved);
                }
            }
            Event::DocType(_) => return Err(ParseError::DocType),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => return Err(ParseError::Truncated),
        }
    }
}

/// Checks that only blanks, comments and processing instructions follow the root element: a
/// second document in the same body is not silently ignored.
fn nothing_after(reader: &mut Reader<&[u8]>) -> Result<(), ParseError> {
    loop {
        match reader.read_event() {
            Ok(Event::Eof) => return Ok(()),
            Ok(Event::Comment(_) | Event::PI(_)) => {}
            Ok(Event::Text(text)) if text.iter().all(u8::is_ascii_whitespace) => {}
            Ok(_) => {
                return Err(ParseError::Malformed {
                    position: reader.buffer_position(),
                    reason: "content after the root element".to_owned(),
                });
            }
            Err(error) => {
                return Err(ParseError::Malformed {
                    position: reader.error_position(),
                    reason: error.to_string(),
                });
            }
        }
    }
}

/// An element from its start tag: the local name, and the default namespace it declares.
fn element(start: &quick_xml::events::BytesStart<'_>) -> Result<Element, ParseError> {
    let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
    let mut xmlns = None;
    for attribute in start.attributes() {
        let attribute = attribute.map_err(malformed)?;
        if attribute.key.as_ref() == b"xmlns" {
            xmlns = Some(attribute.unescape_value().map_err(malformed)?.into_owned());
        }
    }
    Ok(Element {
        name,
        xmlns,
        text: String::new(),
        children: Vec::new(),
        inner: 0..0,
    })
}

fn malformed(error: impl std::fmt::Display) -> ParseError {
    ParseError::Malformed {
        position: 0,
        reason: error.to_string(),
    }
}

fn position(at: u64) -> usize {
    usize::try_from(at).unwrap_or(usize::MAX)
}

/// At most 64 characters of something a device sent, for an error message.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}
