//! `refreshctl`: the operator's CLI. Talks to MongoDB directly (MONGODB_URI, MONGODB_DB), so it
//! works while the api is down. Every subcommand prints JSON with `--json`.

use anyhow::{Context, bail};
use bson::{DateTime, oid::ObjectId};
use clap::{Parser, Subcommand, ValueEnum};
use refresh_api::validate::{OrganizationRef, organization_ref};
use refresh_shared::{
    Settings,
    device::{DeviceState, Gateway},
    store::{JobView, NewDevice, Organization, PushRoutes, Store, WnsChannel, WnsChannelStatus},
};
use serde_json::{Value, json};
use std::time::Duration;

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
    Create {
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
        /// The WNS channel URI (with `--push wns`); default: a channel on push-gateway-sim at
        /// SIM_ADDR.
        #[arg(long)]
        channel_uri: Option<String>,
        /// A tag bulk refreshes can select the device by; repeat for more.
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::from_env().context("reading settings from the environment")?;
    let store = Store::connect(&settings.mongo, "refreshctl")
        .await
        .context("configuring the MongoDB client (MONGODB_URI)")?;
    let output = run(cli.command, &store).await?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&output.json)?);
    } else {
        println!("{}", output.text);
    }
    Ok(())
}

struct Output {
    json: Value,
    text: String,
}

async fn run(command: Command, store: &Store) -> anyhow::Result<Output> {
    match command {
        Command::Org(OrgCommand::Create { slug, name }) => {
            if !matches!(organization_ref(&slug), Ok(OrganizationRef::Slug(_))) {
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
        Command::Device(DeviceCommand::Create {
            org,
            serial,
            imei,
            state,
            push,
            channel_uri,
            tags,
        }) => {
            let org = organization(store, &org).await?;
            let wns = push.contains(&PushArg::Wns).then(|| WnsChannel {
                channel_uri: channel_uri.unwrap_or_else(default_channel_uri),
                status: WnsChannelStatus::Active,
                dead_since: None,
            });
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
                })
                .await?;
            let routes: Vec<Gateway> = device
                .push
                .agent
                .then_some(Gateway::Agent)
                .into_iter()
                .chain(device.push.wns.as_ref().map(|_| Gateway::Wns))
                .collect();
            Ok(Output {
                text: format!(
                    "device {} created in {} ({})",
                    device.id, org.slug, device.state
                ),
                json: json!({
                    "id": device.id.to_hex(),
                    "organizationId": org.id.to_hex(),
                    "state": device.state,
                    "serialNumber": device.summary.serial_number,
                    "imei": device.summary.imei,
                    "push": routes,
                    "tags": device.tags,
                    "wnsChannelUri": device.push.wns.map(|w| w.channel_uri),
                }),
            })
        }
        Command::Token(TokenCommand::Create {
            org,
            permissions,
            expires_in_days,
        }) => {
            let org = organization(store, &org).await?;
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
        Command::Token(TokenCommand::Revoke { org, id }) => {
            let org = organization(store, &org).await?;
            if !store.revoke_token(org.id, id).await? {
                bail!("no active token {id} in organization {}", org.slug);
            }
            Ok(Output {
                text: format!("token {id} revoked"),
                json: json!({ "id": id.to_hex(), "revoked": true }),
            })
        }
        Command::Job(JobCommand::Get { id }) => {
            let job = store
                .job_by_id(id)
                .await?
                .with_context(|| format!("no job {id}"))?;
            let view = JobView::from(&job);
            let mut text = format!(
                "job {} ({:?}) for device {}",
                view.id, view.state, view.device_id
            );
            for (category, c) in &view.categories {
                text.push_str(&format!(
                    "\n  {category:<13} {:<9} attempts {} via {} {}",
                    c.state.as_str(),
                    c.attempts,
                    c.gateway.map_or("-", Gateway::as_str),
                    c.last_error.as_deref().unwrap_or(""),
                ));
            }
            Ok(Output {
                json: serde_json::to_value(&view)?,
                text,
            })
        }
    }
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
