//! The OMA-DM management session (CONTRACT §5): a WNS push only wakes a Windows device's DM
//! client, which then opens a session; the reads of every category outstanding on the device
//! are handed out in it, and what the device answers becomes reports with source `omadm`.
//!
//! One [`Conversation`] per device lives in this process between the device's messages: the
//! commands sent and not yet answered, the answers gathered per category until the category is
//! complete, and the categories reported lately (so a second session opened by a second push
//! does not read again what the worker has not applied yet). It is bounded in count and idle
//! time, and in the bytes a session may gather.

use bson::oid::ObjectId;
use moka::future::Cache;
use refresh_shared::{
    Category,
    category::Read,
    report::{
        CategoryReport, DeviceReport, MAX_URI_CHARS, MAX_VALUE_BYTES, REPORT_MESSAGE_VERSION,
        ReportSource,
    },
    store::Device,
};
use refresh_syncml::{Command, CommandKind, Header, Item, Message, alert, status};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};
use time::OffsetDateTime;
use tokio::sync::Mutex;

/// Devices in a session (or lately in one) at once; past it the least recently seen is
/// forgotten (its session, if it goes on, starts over).
const MAX_CONVERSATIONS: u64 = 100_000;
/// How long a device's state outlives its last message: a DM client answers within seconds.
const CONVERSATION_IDLE: Duration = Duration::from_secs(300);
/// How long a category reported in a session is not read again by the next one: time for the
/// worker to apply the report and free the device's claim.
const REPORTED_GRACE: Duration = Duration::from_secs(60);
/// The bytes of answers (node names and values) a session may gather across its messages
/// before it is refused: a device with a valid certificate is still not trusted to be small.
const MAX_GATHERED_BYTES: usize = 8 * 1024 * 1024;
/// The format of the `AppInventoryQuery` a `Replace` carries.
const QUERY_FORMAT: &str = "xml";

/// Every device's conversation, shared by the route's handlers.
#[derive(Clone)]
pub struct Conversations {
    devices: Cache<ObjectId, Arc<Mutex<Conversation>>>,
}

impl Default for Conversations {
    fn default() -> Conversations {
        Conversations {
            devices: Cache::builder()
                .max_capacity(MAX_CONVERSATIONS)
                .time_to_idle(CONVERSATION_IDLE)
                .build(),
        }
    }
}

impl Conversations {
    /// `device`'s conversation, new if it has none.
    pub async fn of(&self, device: ObjectId) -> Arc<Mutex<Conversation>> {
        self.devices
            .get_with(device, async { Arc::default() })
            .await
    }
}

/// What the server remembers of a device between its messages.
#[derive(Debug, Default)]
pub struct Conversation {
    /// The session the state below belongs to; a message of another session starts afresh.
    session_id: Option<String>,
    /// Commands sent and not answered yet, by (server MsgID, CmdID).
    awaiting: HashMap<(u32, u32), Asked>,
    /// Categories asked for in this session: each is read once per session.
    asked: BTreeSet<Category>,
    /// Answers per category, until all its commands are answered.
    gathering: BTreeMap<Category, Gathered>,
    gathered_bytes: usize,
    /// Categories whose reports were published, and when: not read again for a while.
    reported: BTreeMap<Category, Instant>,
}

/// One command sent: which category's read it is, and whether its status came back (its
/// results may come before or after that status, in the same message).
#[derive(Debug, Clone)]
struct Asked {
    category: Category,
    uri: &'static str,
    answered: bool,
}

#[derive(Debug, Default)]
struct Gathered {
    report: CategoryReport,
    /// Commands of the category still unanswered.
    pending: usize,
    /// The job the category was outstanding for when it was asked.
    job: Option<ObjectId>,
}

/// What the server's answer to a device message does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// It asks for reads.
    Read,
    /// It asks for the rest of the device's package (Alert 1222).
    Continue,
    /// It asks for nothing: the session is over.
    End,
}

impl Next {
    pub fn as_str(self) -> &'static str {
        match self {
            Next::Read => "read",
            Next::Continue => "continued",
            Next::End => "ended",
        }
    }
}

/// The server's answer to one device message, and what the message completed.
#[derive(Debug)]
pub struct Turn {
    pub reply: Message,
    /// One report per job (and one without a job) whose categories the device has now fully
    /// answered: published before the reply is sent.
    pub reports: Vec<DeviceReport>,
    /// A WNS channel URI the device reported (`DMClient/…/Push/ChannelURI`).
    pub channel_uri: Option<String>,
    pub next: Next,
}

/// Why a message ends the session without an answer.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("the session's answers exceed {MAX_GATHERED_BYTES} bytes")]
    TooMuchGathered,
}

impl Conversation {
    /// Handles one message of `device`: statuses for its commands, its answers recorded, then,
    /// when it ends the device's package, the reads of the categories still outstanding.
    pub fn turn(&mut self, device: &Device, message: &Message) -> Result<Turn, Refusal> {
        let header = &message.header;
        if self.session_id.as_deref() != Some(header.session_id.as_str()) || header.msg_id == 1 {
            self.start(&header.session_id);
        }
        let mut reply = Reply::to(header);
        let mut channel_uri = None;
        let mut aborted = false;
        for command in &message.commands {
            let code = match &command.kind {
                // Statuses are not answered; those of our reads are their answers.
                CommandKind::Status => {
                    self.status(header.msg_id, command);
                    continue;
                }
                CommandKind::Alert => {
                    aborted |= command.data.as_deref() == Some(alert::SESSION_ABORT);
                    status::OK
                }
                CommandKind::Replace => {
                    channel_uri = channel_uri.or_else(|| reported_channel(command));
                    status::OK
                }
                CommandKind::Results => {
                    if let Err(refusal) = self.results(command) {
                        self.forget_session();
                        return Err(refusal);
                    }
                    channel_uri = channel_uri.or_else(|| reported_channel(command));
                    status::OK
                }
                _ => status::OPTIONAL_FEATURE_NOT_SUPPORTED,
            };
            reply.status(header.msg_id, command.cmd_id, command.kind.name(), code);
        }
        let reports = self.complete(device);
        let next = if aborted {
            Next::End
        } else if !message.is_final {
            // The device's package goes on in its next message: ask for it, and nothing else yet.
            reply.command(CommandKind::Alert, |command| {
                command.data = Some(alert::NEXT_MESSAGE.to_owned());
            });
            Next::Continue
        } else if self.ask(device, header.msg_id, &mut reply) {
            Next::Read
        } else {
            Next::End
        };
        if next == Next::End {
            self.forget_session();
        }
        Ok(Turn {
            reply: reply.message,
            reports,
            channel_uri,
            next,
        })
    }

    fn start(&mut self, session_id: &str) {
        self.forget_session();
        self.session_id = Some(session_id.to_owned());
    }

    /// Drops what the session asked and gathered; what was reported lately is kept.
    fn forget_session(&mut self) {
        let reported = std::mem::take(&mut self.reported);
        *self = Conversation {
            reported,
            ..Conversation::default()
        };
    }

    /// A device's status for one of our commands: a read that failed records the node's error.
    fn status(&mut self, msg_id: u32, command: &Command) {
        // A status answers a command of the server message this one replies to; MsgRef says
        // which when present (it must be for anything but the header).
        let msg_ref = command.msg_ref.unwrap_or(msg_id.saturating_sub(1));
        let Some(cmd_ref) = command.cmd_ref.filter(|&cmd_ref| cmd_ref != 0) else {
            return;
        };
        let Some(asked) = self
            .awaiting
            .get_mut(&(msg_ref, cmd_ref))
            .filter(|asked| !asked.answered)
        else {
            return;
        };
        asked.answered = true;
        let Some(gathered) = self.gathering.get_mut(&asked.category) else {
            return;
        };
        gathered.pending = gathered.pending.saturating_sub(1);
        if let Some(code) = command
            .status_code()
            .filter(|&code| code >= status::FIRST_FAILURE)
        {
            gathered
                .report
                .errors
                .insert(node(asked.uri), code.to_string());
        }
    }

    /// A device's results for one of our reads: each item's value under its node.
    fn results(&mut self, command: &Command) -> Result<(), Refusal> {
        let (Some(msg_ref), Some(cmd_ref)) = (command.msg_ref, command.cmd_ref) else {
            return Ok(());
        };
        let Some(asked) = self.awaiting.get(&(msg_ref, cmd_ref)).cloned() else {
            return Ok(());
        };
        let Some(gathered) = self.gathering.get_mut(&asked.category) else {
            return Ok(());
        };
        for item in &command.items {
            let uri = item.source.clone().unwrap_or_else(|| node(asked.uri));
            if !uri.starts_with("./") || uri.chars().count() > MAX_URI_CHARS {
                tracing::debug!(category = %asked.category, "a result names no node a report can hold: skipped");
                continue;
            }
            let value = item.data.clone().unwrap_or_default();
            self.gathered_bytes += uri.len() + value.len();
            if self.gathered_bytes > MAX_GATHERED_BYTES {
                return Err(Refusal::TooMuchGathered);
            }
            if value.len() > MAX_VALUE_BYTES {
                // Kept as the node's error rather than dropping the whole category.
                let code = status::REQUEST_ENTITY_TOO_LARGE.to_string();
                gathered.report.errors.insert(uri, code);
            } else {
                gathered.report.nodes.insert(uri, value);
            }
        }
        Ok(())
    }

    /// The categories every command of which is answered, as reports, one per job.
    fn complete(&mut self, device: &Device) -> Vec<DeviceReport> {
        let done: Vec<Category> = self
            .gathering
            .iter()
            .filter(|(_, gathered)| gathered.pending == 0)
            .map(|(&category, _)| category)
            .collect();
        let mut by_job: BTreeMap<Option<ObjectId>, BTreeMap<Category, CategoryReport>> =
            BTreeMap::new();
        let now = OffsetDateTime::now_utc();
        for category in done {
            let Some(gathered) = self.gathering.remove(&category) else {
                continue;
            };
            self.awaiting.retain(|_, asked| asked.category != category);
            self.reported.insert(category, Instant::now());
            by_job
                .entry(gathered.job)
                .or_default()
                .insert(category, gathered.report);
        }
        by_job
            .into_iter()
            .map(|(job_id, categories)| DeviceReport {
                version: REPORT_MESSAGE_VERSION,
                organization_id: device.organization,
                device_id: device.id,
                job_id,
                collected_at: now,
                received_at: now,
                source: ReportSource::Omadm,
                categories,
            })
            .collect()
    }

    /// Adds the reads of every category outstanding on `device` and not asked for yet in this
    /// session (nor reported lately) to `reply`; false when there is none.
    fn ask(&mut self, device: &Device, msg_id: u32, reply: &mut Reply) -> bool {
        let mut asked_any = false;
        self.reported.retain(|_, at| at.elapsed() < REPORTED_GRACE);
        let outstanding: BTreeSet<Category> = device.refresh_info_needed.iter().copied().collect();
        for category in outstanding {
            if self.asked.contains(&category) || self.reported.contains_key(&category) {
                continue;
            }
            self.asked.insert(category);
            asked_any = true;
            let reads = category.reads();
            self.gathering.insert(
                category,
                Gathered {
                    pending: reads.len(),
                    job: device.last_refresh_job.get(&category).copied(),
                    report: CategoryReport::default(),
                },
            );
            for read in reads {
                let (kind, item, uri) = match *read {
                    Read::Get(uri) => (CommandKind::Get, Item::target(uri), uri),
                    Read::Replace { uri, data } => (
                        CommandKind::Replace,
                        Item {
                            format: Some(QUERY_FORMAT.to_owned()),
                            data: Some(data.to_owned()),
                            ..Item::target(uri)
                        },
                        uri,
                    ),
                };
                let cmd_id = reply.command(kind, |command| command.items.push(item));
                self.awaiting.insert(
                    (msg_id, cmd_id),
                    Asked {
                        category,
                        uri,
                        answered: false,
                    },
                );
            }
        }
        asked_any
    }
}

/// The server's message in the making: its commands numbered from 1, the header's status first.
struct Reply {
    message: Message,
}

impl Reply {
    /// The answer to a message with `header`: same session, the same MsgID (each server
    /// message answers exactly one of the device's), addressed back to the device.
    fn to(header: &Header) -> Reply {
        let mut reply = Reply {
            message: Message {
                header: Header {
                    session_id: header.session_id.clone(),
                    msg_id: header.msg_id,
                    target: header.source.clone(),
                    source: header.target.clone(),
                },
                commands: Vec::new(),
                is_final: true,
            },
        };
        reply.status(header.msg_id, 0, "SyncHdr", status::OK);
        reply
    }

    fn next_id(&self) -> u32 {
        u32::try_from(self.message.commands.len() + 1).unwrap_or(u32::MAX)
    }

    fn status(&mut self, msg_ref: u32, cmd_ref: u32, cmd: &str, code: u16) {
        let status = Command::status(self.next_id(), msg_ref, cmd_ref, cmd, code);
        self.message.commands.push(status);
    }

    /// Adds a command of `kind`, shaped by `fill`; returns its CmdID.
    fn command(&mut self, kind: CommandKind, fill: impl FnOnce(&mut Command)) -> u32 {
        let cmd_id = self.next_id();
        let mut command = Command::new(kind, cmd_id);
        fill(&mut command);
        self.message.commands.push(command);
        cmd_id
    }
}

/// The node a read names: a `Get` of `…?list=StructData` reads the subtree at `…`.
fn node(uri: &str) -> String {
    uri.split_once('?').map_or(uri, |(path, _)| path).to_owned()
}

/// The channel URI a `Replace` or `Results` carries for the DM client's push node, if any.
fn reported_channel(command: &Command) -> Option<String> {
    command.items.iter().find_map(|item| {
        let uri = item.source.as_deref().or(item.target.as_deref())?;
        let is_channel = uri.starts_with("./Vendor/MSFT/DMClient/Provider/")
            && uri.ends_with("/Push/ChannelURI");
        is_channel.then(|| item.data.clone()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use refresh_shared::{device::DeviceState, store::DeviceSummary};

    const SERVER: &str = "https://mdm.example.com/ManagementServer/MDM.svc";

    fn device(outstanding: &[(Category, ObjectId)]) -> Device {
        Device {
            id: ObjectId::new(),
            organization: ObjectId::new(),
            state: DeviceState::Active,
            summary: DeviceSummary::default(),
            lookup_keys: Vec::new(),
            tags: Vec::new(),
            push: Default::default(),
            refresh_info_needed: outstanding.iter().map(|(c, _)| *c).collect(),
            info_refreshed_at: BTreeMap::new(),
            last_refresh_job: outstanding.iter().copied().collect(),
            node_key: None,
            omadm: None,
        }
    }

    fn message(session: &str, msg_id: u32, commands: Vec<Command>) -> Message {
        Message {
            header: Header {
                session_id: session.to_owned(),
                msg_id,
                target: SERVER.to_owned(),
                source: "DM-1".to_owned(),
            },
            commands,
            is_final: true,
        }
    }

    fn opening(session: &str) -> Message {
        let alert = Command {
            data: Some(alert::SERVER_INITIATED.to_owned()),
            ..Command::new(CommandKind::Alert, 2)
        };
        message(session, 1, vec![alert])
    }

    /// The device's answers to every read in `reply`: a status each (404 for `lacking`),
    /// results with the node's value for the others.
    fn answers(session: &str, reply: &Message, lacking: &str) -> Message {
        let mut commands = vec![Command::status(1, reply.header.msg_id, 0, "SyncHdr", 200)];
        for command in reply
            .commands
            .iter()
            .filter(|c| c.kind != CommandKind::Status)
        {
            let uri = command.items[0].target.clone().unwrap();
            let id = u32::try_from(commands.len() + 1).unwrap();
            let code = if uri == lacking { 404 } else { 200 };
            commands.push(Command::status(
                id,
                reply.header.msg_id,
                command.cmd_id,
                command.kind.name(),
                code,
            ));
            if command.kind == CommandKind::Get && code == 200 {
                commands.push(Command {
                    msg_ref: Some(reply.header.msg_id),
                    cmd_ref: Some(command.cmd_id),
                    items: vec![Item {
                        source: Some(node(&uri)),
                        data: Some(format!("value of {uri}")),
                        ..Item::default()
                    }],
                    ..Command::new(CommandKind::Results, id + 1)
                });
            }
        }
        message(session, reply.header.msg_id + 1, commands)
    }

    #[test]
    fn a_session_reads_every_outstanding_category_once_and_reports_per_job() {
        let (first_job, second_job) = (ObjectId::new(), ObjectId::new());
        let device = device(&[(Category::Os, first_job), (Category::Security, second_job)]);
        let mut conversation = Conversation::default();

        let turn = conversation.turn(&device, &opening("S1")).unwrap();
        let reply = &turn.reply;
        assert_eq!(
            (reply.header.target.as_str(), reply.header.source.as_str()),
            ("DM-1", SERVER)
        );
        assert_eq!(reply.commands[0], Command::status(1, 1, 0, "SyncHdr", 200));
        assert_eq!(reply.commands[1], Command::status(2, 1, 2, "Alert", 200));
        let gets: Vec<&str> = reply.commands[2..]
            .iter()
            .map(|c| c.items[0].target.as_deref().unwrap())
            .collect();
        let expected: Vec<&str> = Category::Security
            .nodes()
            .chain(Category::Os.nodes())
            .collect();
        assert_eq!(gets, expected);
        assert!(reply.is_final && turn.next == Next::Read && turn.reports.is_empty());

        let lacking = "./Vendor/MSFT/DeviceStatus/TPM/SpecificationVersion";
        let turn = conversation
            .turn(&device, &answers("S1", &turn.reply, lacking))
            .unwrap();
        assert_eq!(turn.next, Next::End, "{:?}", turn.reply);
        assert!(
            turn.reply
                .commands
                .iter()
                .all(|c| c.kind == CommandKind::Status)
        );
        let mut reports = turn.reports;
        reports.sort_by_key(|r| r.job_id);
        let jobs: Vec<_> = reports
            .iter()
            .map(|r| (r.job_id, r.categories.keys().copied().collect::<Vec<_>>()))
            .collect();
        let mut expected = vec![
            (Some(first_job), vec![Category::Os]),
            (Some(second_job), vec![Category::Security]),
        ];
        expected.sort_by_key(|(job, _)| *job);
        assert_eq!(jobs, expected);
        let security = reports
            .iter()
            .find_map(|r| r.categories.get(&Category::Security))
            .unwrap();
        assert_eq!(
            security.errors.get(lacking).map(String::as_str),
            Some("404")
        );
        assert_eq!(security.nodes.len(), Category::Security.nodes().count() - 1);
        assert!(
            reports
                .iter()
                .all(|r| r.problems().is_empty() && r.source == ReportSource::Omadm)
        );

        // A second push opens a second session before the worker applied the reports: the
        // categories still look outstanding, and are not read again.
        let turn = conversation.turn(&device, &opening("S2")).unwrap();
        assert_eq!(turn.next, Next::End, "{:?}", turn.reply);
    }

    #[test]
    fn a_device_that_drops_mid_session_is_asked_again_in_its_next_session() {
        let device = device(&[(Category::Os, ObjectId::new())]);
        let mut conversation = Conversation::default();
        let asked = conversation.turn(&device, &opening("S1")).unwrap();
        assert_eq!(asked.next, Next::Read);
        // No answer to the reads; a new session (MsgID 1) some time later.
        let again = conversation.turn(&device, &opening("S2")).unwrap();
        assert_eq!(again.reply.commands.len(), asked.reply.commands.len());
    }

    #[test]
    fn a_session_gathering_too_much_is_refused_and_forgotten() {
        let device = device(&[(Category::Certificates, ObjectId::new())]);
        let mut conversation = Conversation::default();
        let asked = conversation.turn(&device, &opening("S1")).unwrap();
        let get = &asked.reply.commands[2];
        let value = "x".repeat(MAX_VALUE_BYTES);
        let results = |cmd_id: u32| Command {
            msg_ref: Some(1),
            cmd_ref: Some(get.cmd_id),
            items: (0..64)
                .map(|i| Item {
                    source: Some(format!(
                        "./Vendor/MSFT/CertificateStore/Root/System/{cmd_id}-{i}"
                    )),
                    data: Some(value.clone()),
                    ..Item::default()
                })
                .collect(),
            ..Command::new(CommandKind::Results, cmd_id)
        };
        // 64 × 64 KiB = 4 MiB a message, in a package that never ends.
        let mut split = message("S1", 2, vec![results(1)]);
        split.is_final = false;
        let turn = conversation.turn(&device, &split).unwrap();
        assert_eq!(turn.next, Next::Continue);
        let mut more = message("S1", 3, vec![results(1), results(2)]);
        more.is_final = false;
        assert!(matches!(
            conversation.turn(&device, &more),
            Err(Refusal::TooMuchGathered)
        ));
        assert!(conversation.gathering.is_empty() && conversation.awaiting.is_empty());
    }

    #[test]
    fn a_package_split_over_messages_is_asked_for_its_next_message_and_unknown_commands_are_refused()
     {
        let device = device(&[(Category::Os, ObjectId::new())]);
        let mut conversation = Conversation::default();
        let mut first = opening("S1");
        first.is_final = false;
        first.commands.push(Command::new(CommandKind::Exec, 3));
        let turn = conversation.turn(&device, &first).unwrap();
        let kinds: Vec<_> = turn
            .reply
            .commands
            .iter()
            .map(|c| (c.kind.clone(), c.data.clone()))
            .collect();
        assert_eq!(kinds[2], (CommandKind::Status, Some("406".to_owned())));
        assert_eq!(
            kinds[3],
            (CommandKind::Alert, Some(alert::NEXT_MESSAGE.to_owned()))
        );
        assert_eq!(kinds.len(), 4, "no reads before the package is complete");
    }
}
