//! `refreshctl`: the operator's CLI. Tenants, devices, tokens, jobs and webhook endpoints go
//! straight to MongoDB
//! (MONGODB_URI, MONGODB_DB) and queues and dead letters straight to RabbitMQ (AMQP_URL), so they
//! work while the api is down; `bulk` goes through the api (REFRESH_API_URL, REFRESH_TOKEN),
//! which checks the caller like any other. Every subcommand prints JSON with `--json`.

use anyhow::{Context, bail};
use bson::{DateTime, oid::ObjectId};
use clap::{Parser, Subcommand, ValueEnum};
use refresh_shared::{
    broker::{DeadLetter, Invalidation, Publisher, Queues},
    device::{DeviceState, Gateway},
    job::CategoryState,
    settings::Load,
    store::{
        NewDevice, OmaDmIdentity, Organization, PushRoutes, Store, WebhookEndpoint, WnsChannel,
        cert_thumbprint,
    },
    token,
    webhook::WebhookEvent,
};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use std::{sync::Arc, time::Duration};

mod bulk;
mod settings;

use settings::Settings;

#[derive(Parser)]
#[command(name = "refreshctl", version, about = "Operate device-refresh")]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Organizations (tenants).
    #[command(subcommand)]
    Org(OrgCommand),
    /// Windows devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Refresh jobs.
    #[command(subcommand)]
    Job(JobCommand),
    /// Webhook endpoints: where an organization's refresh events are delivered.
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// Refresh many devices through the api: submit a batch, then follow it to the end.
    Bulk(BulkArgs),
    /// Depth of every queue, read from the broker now.
    Queues {
        /// Redraw every 2 seconds until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Messages the workers gave up on.
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(DeadLetterCommand),
}

#[derive(clap::Args)]
struct BulkArgs {
    /// Organization id or slug.
    #[arg(long)]
    org: String,
    /// Categories to refresh, comma-separated (hardware,applications,…).
    #[arg(long, value_delimiter = ',', required = true)]
    info: Vec<String>,
    /// A file of device ids, IMEIs or serials, one per line.
    #[arg(long, conflicts_with_all = ["state", "tags"], required_unless_present_any = ["state", "tags"])]
    file: Option<std::path::PathBuf>,
    /// Every device in this state (with `--tag`: and carrying the tags).
    #[arg(long)]
    state: Option<String>,
    /// Devices carrying this tag; repeat for more (all must match).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// The api to submit to.
    #[arg(long, env = "REFRESH_API_URL", default_value = "http://127.0.0.1:8080")]
    api: String,
    /// A token of the organization with mdm.windows.device.info.
    #[arg(long, env = "REFRESH_TOKEN", hide_env_values = true)]
    token: String,
    /// Sent as Idempotency-Key: submitting again with it follows the same batch.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Print the batch id and return without following it.
    #[arg(long)]
    no_wait: bool,
    /// While following: Ctrl-C asks whether to cancel the batch (without it, Ctrl-C only
    /// stops following; the batch goes on).
    #[arg(long, conflicts_with = "no_wait")]
    cancel_on_interrupt: bool,
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// Show dead letters (oldest first) and why they died; they stay where they are.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Put dead letters back on the queue they died in.
    Replay {
        /// The message id (job or batch id) to replay; repeat for more.
        #[arg(long = "id", required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Replay every dead letter.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum OrgCommand {
    /// Create an organization.
    Create {
        /// Letters, digits and '-', at least 3, and not a 24-hex id.
        #[arg(long)]
        slug: String,
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Create a device in an organization.
    Create(Box<NewDeviceArgs>),
    /// Manage the key a device's agent reports with.
    #[command(subcommand)]
    NodeKey(NodeKeyCommand),
    /// Manage who the device's OMA-DM client is.
    #[command(subcommand)]
    Omadm(OmadmCommand),
}

#[derive(Subcommand)]
enum OmadmCommand {
    /// Set the device's DM device id and client certificate (a renewed certificate, or a
    /// device enrolled after it was created); its sessions are refused with any other.
    Set {
        #[arg(long)]
        device: ObjectId,
        #[command(flatten)]
        identity: OmadmArgs,
    },
}

/// A DM client's identity, as `device create` and `device omadm set` take it.
#[derive(clap::Args)]
#[group(requires = "dm_device_id")]
struct OmadmArgs {
    /// The id the device's OMA-DM client names itself by (SyncHdr Source); needs the
    /// client certificate's thumbprint or the certificate.
    #[arg(long, requires = "certificate")]
    dm_device_id: Option<String>,
    /// SHA-256 thumbprint of the device's client certificate (hex, ':' allowed).
    #[arg(long, group = "certificate")]
    cert_thumbprint: Option<String>,
    /// The device's client certificate (PEM): its thumbprint is stored, not the certificate.
    #[arg(long = "cert", group = "certificate")]
    cert: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum NodeKeyCommand {
    /// Issue a new node key (the old one stops working); printed this once, stored hashed.
    Rotate {
        #[arg(long)]
        device: ObjectId,
    },
    /// Take the device's node key away: its reports are refused (401) from now on.
    Revoke {
        #[arg(long)]
        device: ObjectId,
    },
}

#[derive(clap::Args)]
struct NewDeviceArgs {
    /// Organization id or slug.
    #[arg(long)]
    org: String,
    #[arg(long)]
    serial: Option<String>,
    #[arg(long)]
    imei: Option<String>,
    #[arg(long, default_value = "ACTIVE")]
    state: DeviceState,
    /// How the device is reached; repeat for both (agent first, WNS as fallback).
    #[arg(long = "push", value_enum, default_values_t = [PushArg::Agent])]
    push: Vec<PushArg>,
    /// The WNS channel URI (with `--push wns`), which WNS_CHANNEL_HOST_SUFFIXES must admit;
    /// default: a channel on push-gateway-sim at SIM_ADDR.
    #[arg(long)]
    channel_uri: Option<String>,
    /// A tag bulk refreshes can select the device by; repeat for more.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Issue a node key for the device's agent too (printed this once).
    #[arg(long)]
    node_key: bool,
    #[command(flatten)]
    omadm: OmadmArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PushArg {
    Agent,
    Wns,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; its plaintext is printed this once and stored nowhere.
    Create {
        /// Organization id or slug.
        #[arg(long)]
        org: String,
        /// A permission, e.g. mdm.windows.device.info; repeat for more.
        #[arg(long = "permission", required = true)]
        permissions: Vec<String>,
        /// Days until the token expires; it never does without this.
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// Revoke a token: it stops working at once.
    Revoke {
        /// Organization id or slug.
        #[arg(long)]
        org: String,
        /// The token's id (as `token create` printed it).
        id: ObjectId,
    },
}

#[derive(Subcommand)]
enum JobCommand {
    /// Show a refresh job and its categories.
    Get { id: ObjectId },
    /// Cancel a refresh job: what has not ended is canceled and never pushed again.
    Cancel { id: ObjectId },
}

#[derive(Subcommand)]
enum WebhookCommand {
    /// Add an endpoint (https, public addresses only); prints its signing secret, this once.
    Add {
        /// Organization id or slug.
        #[arg(long)]
        org: String,
        #[arg(long)]
        url: String,
        /// An event: refresh.job.finished, refresh.batch.finished or refresh.category.reported;
        /// repeat for more.
        #[arg(long = "event", required = true)]
        events: Vec<String>,
    },
    /// An organization's endpoints.
    List {
        /// Organization id or slug.
        #[arg(long)]
        org: String,
    },
    /// Remove an endpoint: nothing more is delivered to it.
    Remove {
        /// Organization id or slug.
        #[arg(long)]
        org: String,
        /// The endpoint's id (as `webhook add` printed it).
        id: ObjectId,
    },
    /// An endpoint's deliveries, newest first, with each attempt.
    Deliveries {
        /// Organization id or slug.
        #[arg(long)]
        org: String,
        /// The endpoint's id.
        id: ObjectId,
        /// How many, at most.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::from_env().context("reading settings from the environment")?;
    // The driver connects on first use: commands that never touch the database never do.
    let store = Store::connect(&settings.core.mongo, "refreshctl")
        .await
        .context("configuring the MongoDB client (MONGODB_URI)")?;
    match run(cli.command, &settings, &store, cli.json).await? {
        Some(output) => output.print(cli.json),
        // It printed as it went.
        None => Ok(()),
    }
}

impl Output {
    fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string_pretty(&self.json)?);
        } else {
            println!("{}", self.text);
        }
        Ok(())
    }
}

async fn broker(settings: &Settings) -> anyhow::Result<Publisher> {
    Publisher::connect(&settings.core.amqp, "refreshctl")
        .await
        .context("connecting to RabbitMQ (AMQP_URL)")
}

/// `queues [--watch]`: a table (or JSON) of every queue's depth, once or every 2 s.
async fn queues(settings: &Settings, watch: bool, json: bool) -> anyhow::Result<Option<Output>> {
    let queues = Queues::new(Arc::new(broker(settings).await?));
    loop {
        let depths = queues.depths().await?;
        let mut text = format!(
            "{:<48} {:<8} {:>9} {:>9}",
            "QUEUE", "ROLE", "READY", "CONSUMERS"
        );
        for depth in &depths {
            text.push_str(&format!(
                "\n{:<48} {:<8} {:>9} {:>9}",
                depth.name,
                depth.role.as_str(),
                depth.ready,
                depth.consumers
            ));
        }
        if watch && !json {
            // Clear the screen and home the cursor: a live table.
            print!("\x1b[2J\x1b[H");
            text.push_str(&format!(
                "\n\n{} (every 2 s; Ctrl-C to stop)",
                humantime_now()
            ));
        }
        let output = Output {
            json: json!({ "queues": depths }),
            text,
        };
        if !watch {
            return Ok(Some(output));
        }
        if json {
            // One JSON document per line, for scripts that follow the stream.
            println!("{}", serde_json::to_string(&output.json)?);
        } else {
            output.print(false)?;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(None),
        }
    }
}

fn humantime_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

async fn dead_letters(settings: &Settings, command: DeadLetterCommand) -> anyhow::Result<Output> {
    let queues = Queues::new(Arc::new(broker(settings).await?));
    let describe = |letter: &DeadLetter| {
        format!(
            "{:<26} {:<16} {:<40} {}",
            letter.message_id.as_deref().unwrap_or("-"),
            letter.reason.as_deref().unwrap_or("-"),
            letter.queue.as_deref().unwrap_or("-"),
            letter.summary
        )
    };
    match command {
        DeadLetterCommand::List { limit } => {
            let letters = queues.dead_letters(limit).await?;
            let mut text = format!("{} dead letter(s)", letters.len());
            for letter in &letters {
                text.push_str(&format!("\n{}", describe(letter)));
            }
            Ok(Output {
                json: json!({ "deadLetters": letters }),
                text,
            })
        }
        DeadLetterCommand::Replay { ids, all } => {
            let report = queues
                .replay_dead_letters(|letter| {
                    all || letter
                        .message_id
                        .as_ref()
                        .is_some_and(|id| ids.contains(id))
                })
                .await?;
            let mut text = format!("{} replayed", report.replayed.len());
            for letter in &report.replayed {
                text.push_str(&format!("\n  {}", describe(letter)));
            }
            if !report.kept.is_empty() {
                text.push_str(&format!(
                    "\n{} kept: no queue recorded to put them back on",
                    report.kept.len()
                ));
            }
            Ok(Output {
                json: serde_json::to_value(&report)?,
                text,
            })
        }
    }
}

struct Output {
    json: Value,
    text: String,
}

/// Runs `command`; `None` when it printed its output as it went.
async fn run(
    command: Command,
    settings: &Settings,
    store: &Store,
    json: bool,
) -> anyhow::Result<Option<Output>> {
    let output = match command {
        Command::Bulk(args) => return bulk::run(args, json).await,
        Command::Queues { watch } => return queues(settings, watch, json).await,
        Command::DeadLetters(command) => dead_letters(settings, command).await,
        Command::Org(OrgCommand::Create { slug, name }) => {
            create_organization(store, slug, name).await
        }
        Command::Device(DeviceCommand::Create(args)) => create_device(settings, store, *args).await,
        Command::Device(DeviceCommand::NodeKey(NodeKeyCommand::Rotate { device })) => {
            rotate_node_key(store, device).await
        }
        Command::Device(DeviceCommand::NodeKey(NodeKeyCommand::Revoke { device })) => {
            revoke_node_key(store, device).await
        }
        Command::Device(DeviceCommand::Omadm(OmadmCommand::Set { device, identity })) => {
            set_omadm_identity(store, device, identity).await
        }
        Command::Token(TokenCommand::Create {
            org,
            permissions,
            expires_in_days,
        }) => create_token(store, &org, permissions, expires_in_days).await,
        Command::Token(TokenCommand::Revoke { org, id }) => {
            revoke_token(settings, store, &org, id).await
        }
        Command::Job(JobCommand::Get { id }) => get_job(store, id).await,
        Command::Job(JobCommand::Cancel { id }) => cancel_job(store, id).await,
        Command::Webhook(WebhookCommand::Add { org, url, events }) => {
            add_webhook(settings, store, &org, url, &events).await
        }
        Command::Webhook(WebhookCommand::List { org }) => list_webhooks(store, &org).await,
        Command::Webhook(WebhookCommand::Deliveries { org, id, limit }) => {
            webhook_deliveries(store, &org, id, limit).await
        }
        Command::Webhook(WebhookCommand::Remove { org, id }) => {
            remove_webhook(store, &org, id).await
        }
    };
    output.map(Some)
}

/// `org create`.
async fn create_organization(
    store: &Store,
    slug: String,
    name: Option<String>,
) -> anyhow::Result<Output> {
    if !Organization::is_slug(&slug) {
        bail!("--slug must be at least 3 letters, digits or '-', and not a 24-hex id");
    }
    store.ensure_indexes().await.context("creating indexes")?;
    let name = name.unwrap_or_else(|| slug.clone());
    let org = store.create_organization(&slug, &name).await?;
    Ok(Output {
        text: format!("organization {} created (slug {})", org.id, org.slug),
        json: json!({ "id": org.id.to_hex(), "slug": org.slug, "name": org.name }),
    })
}

/// `device create`.
async fn create_device(
    settings: &Settings,
    store: &Store,
    args: NewDeviceArgs,
) -> anyhow::Result<Output> {
    let NewDeviceArgs {
        org,
        serial,
        imei,
        state,
        push,
        channel_uri,
        tags,
        node_key,
        omadm,
    } = args;
    let omadm = omadm.identity()?;
    let node_key = node_key.then(token::generate_node_key);
    let org = organization(store, &org).await?;
    let wns = push
        .contains(&PushArg::Wns)
        .then(|| {
            let uri = channel_uri.unwrap_or_else(default_channel_uri);
            WnsChannel::new(&uri, &settings.wns_channels).with_context(|| {
                format!(
                    "--channel-uri {uri}: WNS_CHANNEL_HOST_SUFFIXES is {}",
                    settings.wns_channels
                )
            })
        })
        .transpose()?;
    let device = store
        .create_device(NewDevice {
            organization: org.id,
            state,
            serial_number: serial,
            imei,
            tags,
            push: PushRoutes {
                agent: push.contains(&PushArg::Agent),
                wns,
            },
            node_key_hash: node_key.as_ref().map(|key| key.hash.clone()),
            omadm,
        })
        .await?;
    let routes: Vec<Gateway> = device
        .push
        .agent
        .then_some(Gateway::Agent)
        .into_iter()
        .chain(device.push.wns.as_ref().map(|_| Gateway::Wns))
        .collect();
    let mut text = format!(
        "device {} created in {} ({})",
        device.id, org.slug, device.state
    );
    if let Some(key) = &node_key {
        text.push_str(&format!(
            "; its node key is shown only this once:\n{}",
            key.plaintext
        ));
    }
    Ok(Output {
        text,
        json: json!({
            "id": device.id.to_hex(),
            "organizationId": org.id.to_hex(),
            "state": device.state,
            "serialNumber": device.summary.serial_number,
            "imei": device.summary.imei,
            "push": routes,
            "tags": device.tags,
            "wnsChannelUri": device.push.wns.as_ref().map(WnsChannel::uri),
            "nodeKey": node_key.map(|key| key.plaintext),
            "dmDeviceId": device.omadm.as_ref().map(OmaDmIdentity::dm_device_id),
            "certThumbprint": device.omadm.as_ref().map(OmaDmIdentity::cert_thumbprint),
        }),
    })
}

impl OmadmArgs {
    /// `--dm-device-id` with `--cert-thumbprint`, or with the thumbprint of `--cert`'s
    /// certificate; none without `--dm-device-id`.
    fn identity(self) -> anyhow::Result<Option<OmaDmIdentity>> {
        let Some(dm_device_id) = self.dm_device_id else {
            return Ok(None);
        };
        let thumbprint = match (self.cert_thumbprint, self.cert) {
            (Some(thumbprint), _) => thumbprint,
            (None, Some(path)) => {
                let der = CertificateDer::from_pem_file(&path)
                    .with_context(|| format!("--cert {}: not a PEM certificate", path.display()))?;
                cert_thumbprint(&der)
            }
            (None, None) => bail!("--dm-device-id needs --cert-thumbprint or --cert"),
        };
        OmaDmIdentity::new(&dm_device_id, &thumbprint)
            .map(Some)
            .context("--dm-device-id / --cert-thumbprint")
    }
}

/// `device omadm set`: the device's sessions need this identity from now on.
async fn set_omadm_identity(
    store: &Store,
    device: ObjectId,
    identity: OmadmArgs,
) -> anyhow::Result<Output> {
    let Some(identity) = identity.identity()? else {
        bail!("--dm-device-id is required");
    };
    let organization = device_organization(store, device).await?;
    store.ensure_indexes().await.context("creating indexes")?;
    if !store
        .set_omadm_identity(organization, device, &identity)
        .await?
    {
        bail!("device {device} is gone");
    }
    Ok(Output {
        text: format!(
            "device {device}: DM device id {}, certificate {}",
            identity.dm_device_id(),
            identity.cert_thumbprint()
        ),
        json: json!({
            "id": device.to_hex(),
            "dmDeviceId": identity.dm_device_id(),
            "certThumbprint": identity.cert_thumbprint(),
        }),
    })
}

/// `device node-key rotate`: the new key is printed this once.
async fn rotate_node_key(store: &Store, device: ObjectId) -> anyhow::Result<Output> {
    let organization = device_organization(store, device).await?;
    store.ensure_indexes().await.context("creating indexes")?;
    let key = token::generate_node_key();
    if !store
        .issue_node_key(organization, device, &key.hash)
        .await?
    {
        bail!("device {device} is gone");
    }
    Ok(Output {
        text: format!(
            "device {device} has a new node key (the old one no longer works); it is shown only this once:\n{}",
            key.plaintext
        ),
        json: json!({ "deviceId": device.to_hex(), "nodeKey": key.plaintext }),
    })
}

/// `device node-key revoke`: the key stops working at once (it is read on every report).
async fn revoke_node_key(store: &Store, device: ObjectId) -> anyhow::Result<Output> {
    let organization = device_organization(store, device).await?;
    if !store.revoke_node_key(organization, device).await? {
        bail!("device {device} is gone");
    }
    Ok(Output {
        text: format!("device {device}: node key revoked"),
        json: json!({ "deviceId": device.to_hex(), "revoked": true }),
    })
}

/// `token create`: the plaintext is printed this once.
async fn create_token(
    store: &Store,
    org: &str,
    permissions: Vec<String>,
    expires_in_days: Option<u32>,
) -> anyhow::Result<Output> {
    let org = organization(store, org).await?;
    let expires_at = expires_in_days.map(|days| {
        let lifetime = Duration::from_secs(u64::from(days) * 86_400);
        DateTime::from_system_time(std::time::SystemTime::now() + lifetime)
    });
    store.ensure_indexes().await.context("creating indexes")?;
    let (token, plaintext) = store.create_token(org.id, permissions, expires_at).await?;
    Ok(Output {
        text: format!(
            "token {} created for {}; it is shown only this once:\n{plaintext}",
            token.id, org.slug
        ),
        json: json!({
            "id": token.id.to_hex(),
            "organizationId": org.id.to_hex(),
            "permissions": token.permissions,
            "expiresAt": token.expires_at.and_then(|at| at.try_to_rfc3339_string().ok()),
            "token": plaintext,
        }),
    })
}

/// `token revoke`, announced to running apis.
async fn revoke_token(
    settings: &Settings,
    store: &Store,
    org: &str,
    id: ObjectId,
) -> anyhow::Result<Output> {
    let org = organization(store, org).await?;
    if !store.revoke_token(org.id, id).await? {
        bail!("no active token {id} in organization {}", org.slug);
    }
    // Running apis cache tokens for AUTH_CACHE_TTL_MS: tell them now.
    let announced = match broker(settings).await {
        Ok(publisher) => publisher
            .announce(Invalidation::Tokens)
            .await
            .map_err(Into::into),
        Err(error) => Err(error),
    };
    let mut text = format!("token {id} revoked");
    if let Err(error) = &announced {
        text.push_str(&format!(
                "\nwarning: running apis were not told ({error:#}); they stop accepting it within AUTH_CACHE_TTL_MS ({} ms)",
                settings.auth_cache_ttl.as_millis()
            ));
    }
    Ok(Output {
        text,
        json: json!({ "id": id.to_hex(), "revoked": true, "apisTold": announced.is_ok() }),
    })
}

/// `job get`: the job as the api's status call shows it.
/// `job cancel`.
async fn cancel_job(store: &Store, id: ObjectId) -> anyhow::Result<Output> {
    let job = store
        .job_by_id(id)
        .await?
        .with_context(|| format!("no job {id}"))?;
    let (job, canceled) = store
        .cancel_job(job.organization, id)
        .await?
        .with_context(|| format!("no job {id}"))?;
    if canceled.is_empty() {
        bail!("job {id} had already finished ({})", job.state().as_str());
    }
    let names: Vec<&str> = canceled.iter().map(|c| c.as_str()).collect();
    Ok(Output {
        text: format!("job {id} canceled: {}", names.join(", ")),
        json: json!({ "jobId": id.to_hex(), "state": job.state(), "canceled": names }),
    })
}

async fn get_job(store: &Store, id: ObjectId) -> anyhow::Result<Output> {
    let job = store
        .job_by_id(id)
        .await?
        .with_context(|| format!("no job {id}"))?;
    let time = |at: bson::DateTime| at.try_to_rfc3339_string().ok();
    let reported = job
        .categories
        .values()
        .filter(|c| c.state == CategoryState::Reported)
        .count();
    let mut text = format!(
        "job {id} ({}) for device {}: {reported} of {} categories reported",
        job.state().as_str(),
        job.device,
        job.categories.len()
    );
    let mut categories = serde_json::Map::new();
    for (category, c) in &job.categories {
        text.push_str(&format!(
            "\n  {category:<13} {:<10} attempts {} via {} {}",
            c.state.as_str(),
            c.attempts,
            c.gateway.map_or("-", Gateway::as_str),
            c.last_error.as_deref().unwrap_or(""),
        ));
        categories.insert(
            category.as_str().to_owned(),
            json!({
                "state": c.state,
                "attempts": c.attempts,
                "gateway": c.gateway,
                "lastError": c.last_error,
                "pushedAt": c.pushed_at.and_then(time),
                "reportedAt": c.reported_at.and_then(time),
                "reportSource": c.report_source,
            }),
        );
    }
    let json = json!({
        "id": id.to_hex(),
        "organizationId": job.organization.to_hex(),
        "deviceId": job.device.to_hex(),
        "createdAt": time(job.created_at),
        "updatedAt": time(job.updated_at),
        "state": job.state(),
        "reported": reported,
        "categories": categories,
    });
    Ok(Output { json, text })
}

/// The organization of device `id` (operators name a device by id alone).
async fn device_organization(store: &Store, id: ObjectId) -> anyhow::Result<ObjectId> {
    let device = store
        .device_by_id(id)
        .await?
        .with_context(|| format!("no device {id}"))?;
    Ok(device.organization)
}

/// `webhook add`: the secret is printed this once.
async fn add_webhook(
    settings: &Settings,
    store: &Store,
    org: &str,
    url: String,
    events: &[String],
) -> anyhow::Result<Output> {
    let events = events
        .iter()
        .map(|name| {
            WebhookEvent::parse(name).with_context(|| {
                let known = WebhookEvent::ALL.map(WebhookEvent::as_str).join(", ");
                format!("--event {name}: must be one of {known}")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let org = organization(store, org).await?;
    store.ensure_indexes().await.context("creating indexes")?;
    let (endpoint, secret) = store
        .add_webhook(&settings.webhooks, org.id, url, events)
        .await?;
    let secret = secret.expose_secret();
    let mut json = webhook_json(&endpoint);
    json["secret"] = json!(secret);
    Ok(Output {
        text: format!(
            "webhook {} added for {} ({}); its signing secret is shown only this once:\n{secret}",
            endpoint.id, org.slug, endpoint.url
        ),
        json,
    })
}

/// `webhook list`.
async fn list_webhooks(store: &Store, org: &str) -> anyhow::Result<Output> {
    let org = organization(store, org).await?;
    let endpoints = store.webhooks(org.id).await?;
    let lines: Vec<String> = endpoints
        .iter()
        .map(|e| {
            let events: Vec<&str> = e.events.iter().map(|event| event.as_str()).collect();
            format!(
                "{}  {}  {}  {}",
                e.id,
                e.state.as_str(),
                e.url,
                events.join(",")
            )
        })
        .collect();
    Ok(Output {
        text: if lines.is_empty() {
            format!("{} has no webhook endpoint", org.slug)
        } else {
            lines.join("\n")
        },
        json: Value::Array(endpoints.iter().map(webhook_json).collect()),
    })
}

/// `webhook remove`.
async fn remove_webhook(store: &Store, org: &str, id: ObjectId) -> anyhow::Result<Output> {
    let org = organization(store, org).await?;
    let endpoint = store
        .remove_webhook(org.id, id)
        .await?
        .with_context(|| format!("{} has no webhook {id}", org.slug))?;
    Ok(Output {
        text: format!("webhook {id} removed ({})", endpoint.url),
        json: webhook_json(&endpoint),
    })
}

/// `webhook deliveries`.
async fn webhook_deliveries(
    store: &Store,
    org: &str,
    id: ObjectId,
    limit: u32,
) -> anyhow::Result<Output> {
    let org = organization(store, org).await?;
    store
        .webhook(org.id, id)
        .await?
        .with_context(|| format!("{} has no webhook {id}", org.slug))?;
    let deliveries = store.deliveries(org.id, id, None, limit).await?;
    let time = |at: bson::DateTime| at.try_to_rfc3339_string().unwrap_or_default();
    let lines: Vec<String> = deliveries
        .iter()
        .map(|d| {
            let last = d.attempts.last().map_or_else(String::new, |attempt| {
                match (attempt.status, &attempt.error) {
                    (Some(status), _) => format!("last answered {status}"),
                    (None, Some(error)) => format!("last: {error}"),
                    (None, None) => String::new(),
                }
            });
            format!(
                "{}  {}  {}  {}  {} attempt(s)  {last}",
                time(d.created_at),
                d.message_id,
                d.event.as_str(),
                d.state.as_str(),
                d.attempts.len()
            )
        })
        .collect();
    let json = deliveries
        .iter()
        .map(|d| {
            let attempts: Vec<Value> = d
                .attempts
                .iter()
                .map(|a| json!({ "at": time(a.at), "status": a.status, "error": a.error, "durationMs": a.duration_ms }))
                .collect();
            json!({
                "id": d.id.to_hex(),
                "messageId": d.message_id,
                "event": d.event.as_str(),
                "state": d.state.as_str(),
                "attempts": attempts,
                "createdAt": time(d.created_at),
                "updatedAt": time(d.updated_at),
            })
        })
        .collect();
    Ok(Output {
        text: if lines.is_empty() {
            format!("nothing delivered to webhook {id} yet")
        } else {
            lines.join("\n")
        },
        json: Value::Array(json),
    })
}

fn webhook_json(endpoint: &WebhookEndpoint) -> Value {
    let events: Vec<&str> = endpoint.events.iter().map(|e| e.as_str()).collect();
    json!({
        "id": endpoint.id.to_hex(),
        "organizationId": endpoint.organization.to_hex(),
        "url": endpoint.url,
        "events": events,
        "state": endpoint.state.as_str(),
    })
}

async fn organization(store: &Store, reference: &str) -> anyhow::Result<Organization> {
    store
        .organization_by_ref(reference)
        .await?
        .with_context(|| format!("no organization '{reference}'"))
}

/// A fresh channel on push-gateway-sim: what the local stack and the tests use.
fn default_channel_uri() -> String {
    let sim = std::env::var("SIM_ADDR").unwrap_or_else(|_| "127.0.0.1:8090".to_owned());
    format!("http://{sim}/wns/channels/{}", ObjectId::new().to_hex())
}
