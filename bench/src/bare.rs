//! The ceilings: what RabbitMQ and axum cost with nothing of device-refresh around them. Each
//! uses a quorum queue of its own, as the product does, and the product's own message size.

use anyhow::Context;
use axum::{
    Router,
    extract::{Path, State},
    http::StatusCode,
    routing::post,
};
use bson::{Document, doc};
use futures::{StreamExt, stream::FuturesUnordered};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, PublisherConfirm,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use mongodb::IndexModel;
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// Persistent delivery, as every job message is published.
const PERSISTENT: u8 = 2;
/// Confirms outstanding at once in a pipelined publish: enough to keep the broker busy, few
/// enough that a million messages do not hold a million confirm futures.
const CONFIRM_WINDOW: usize = 10_000;

/// Opens a channel in confirm mode, with `declare` (if any) declared as a durable quorum queue.
pub async fn confirm_channel(
    connection: &Connection,
    declare: Option<&str>,
) -> anyhow::Result<Channel> {
    let channel = connection.create_channel().await?;
    if let Some(queue) = declare {
        declare_quorum(&channel, queue).await?;
    }
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

async fn declare_quorum(channel: &Channel, queue: &str) -> anyhow::Result<()> {
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), arguments)
        .await
        .with_context(|| format!("declaring {queue}"))?;
    Ok(())
}

/// Messages ready in `queue` now (a passive declare, on a channel of its own).
pub async fn ready(connection: &Connection, queue: &str) -> anyhow::Result<u32> {
    let channel = connection.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .with_context(|| format!("reading the depth of {queue}"))?;
    let _ = channel.close(200, "bye".into()).await;
    Ok(declared.message_count())
}

pub async fn delete_queue(connection: &Connection, queue: &str) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await?;
    Ok(())
}

/// Sends one persistent message to `queue` through the default exchange; the confirm it returns
/// resolves once the broker has the message.
async fn send(channel: &Channel, queue: &str, body: &[u8]) -> lapin::Result<PublisherConfirm> {
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(PERSISTENT),
        )
        .await
}

/// Publishes one message and waits for its confirm.
async fn publish_confirmed(channel: &Channel, queue: &str, body: &[u8]) -> anyhow::Result<()> {
    let confirm = send(channel, queue, body).await?;
    confirmed(Some(confirm.await))
}

/// Devices the bare refresh route (ceiling 0') claims from, in turn.
pub const BARE_DEVICES: u64 = 10_000;

/// What the bare routes share: the confirm channel and its queue, the message, and the bare
/// design's collections.
struct Bare {
    channel: Channel,
    queue: String,
    body: Vec<u8>,
    devices: mongodb::Collection<Document>,
    jobs: mongodb::Collection<Document>,
}

/// Ceilings 1 and 0', served by `refresh-bench bare-server` in a process of its own (as the
/// api is). `POST /publish` (1) publishes one message on a shared confirm channel and answers
/// 200 once the broker confirms it. `POST /refresh/{n}` (0') is the bare design of one
/// refresh: the device's find-and-claim (`findOneAndUpdate`), the job's insert (both with the
/// product's write concern, `majority`), then the same confirmed publish; nothing else.
pub async fn serve_bare_route(
    addr: SocketAddr,
    connection: Connection,
    queue: String,
    body: Vec<u8>,
    database: mongodb::Database,
) -> anyhow::Result<()> {
    let channel = confirm_channel(&connection, Some(&queue)).await?;
    let majority = mongodb::options::WriteConcern::majority();
    let collection = |name: &str| {
        database.collection_with_options::<Document>(
            name,
            mongodb::options::CollectionOptions::builder()
                .write_concern(majority.clone())
                .build(),
        )
    };
    let state = Arc::new(Bare {
        channel,
        queue,
        body,
        devices: collection("devices"),
        jobs: collection("jobs"),
    });
    let answer = |published: anyhow::Result<()>| match published {
        Ok(()) => (StatusCode::OK, r#"{"status":true}"#),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, r#"{"status":false}"#),
    };
    let app = Router::new()
        .route(
            "/publish",
            post(move |State(bare): State<Arc<Bare>>| async move {
                answer(publish_confirmed(&bare.channel, &bare.queue, &bare.body).await)
            }),
        )
        .route(
            "/refresh/{device}",
            post(
                move |State(bare): State<Arc<Bare>>, Path(device): Path<u64>| async move {
                    answer(bare_refresh(&bare, device).await)
                },
            ),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// The organization the bare devices belong to.
fn bare_organization() -> bson::oid::ObjectId {
    bson::oid::ObjectId::from_bytes([0; 12])
}

/// Seeds the devices the bare refresh route claims, found as the product finds a device: by
/// one of its lookup keys within its organization, through the same index.
pub async fn seed_bare_devices(database: &mongodb::Database) -> anyhow::Result<()> {
    let devices = database.collection::<Document>("devices");
    devices
        .create_index(
            IndexModel::builder()
                .keys(doc! { "lookupKeys": 1, "organization": 1 })
                .build(),
        )
        .await?;
    let seeded: Vec<Document> = (0..BARE_DEVICES)
        .map(|n| {
            doc! {
                "organization": bare_organization(),
                "lookupKeys": [n.to_string()],
                "claims": 0_i64,
            }
        })
        .collect();
    devices.insert_many(seeded).await?;
    Ok(())
}

/// One refresh with nothing of the product around it.
async fn bare_refresh(bare: &Bare, device: u64) -> anyhow::Result<()> {
    let now = bson::DateTime::now();
    let key = (device % BARE_DEVICES).to_string();
    let claimed = bare
        .devices
        .find_one_and_update(
            doc! { "lookupKeys": &key, "organization": bare_organization() },
            doc! { "$set": { "claimedAt": now }, "$inc": { "claims": 1_i64 } },
        )
        .await?
        .context("a seeded device")?;
    bare.jobs
        .insert_one(doc! {
            "device": claimed.get("_id").cloned().unwrap_or(bson::Bson::Null),
            "createdAt": now,
            "categories": { "hardware": "queued", "applications": "queued", "certificates": "queued" },
        })
        .await?;
    publish_confirmed(&bare.channel, &bare.queue, &bare.body).await
}

/// Ceiling 3: publishes `count` persistent messages to `queue` on `channel` (in confirm mode)
/// without waiting for one confirm before sending the next; returns messages per second once
/// every confirm is in.
pub async fn pipelined_publish(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    count: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut confirms = FuturesUnordered::new();
    for _ in 0..count {
        if confirms.len() >= CONFIRM_WINDOW {
            confirmed(confirms.next().await)?;
        }
        confirms.push(send(channel, queue, body).await?);
    }
    while let Some(confirmation) = confirms.next().await {
        confirmed(Some(confirmation))?;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

fn confirmed(confirmation: Option<lapin::Result<Confirmation>>) -> anyhow::Result<()> {
    match confirmation {
        Some(Ok(Confirmation::Ack(_))) | None => Ok(()),
        Some(Ok(other)) => anyhow::bail!("the broker did not take a message: {other:?}"),
        Some(Err(error)) => Err(error.into()),
    }
}

/// Ceiling 2: consumes `count` messages from `queue` at `prefetch`, acking each one without
/// waiting for one ack to be written before taking the next delivery; returns messages per
/// second.
pub async fn consume(
    connection: &Connection,
    queue: &str,
    prefetch: u16,
    count: usize,
) -> anyhow::Result<f64> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let mut acks = FuturesUnordered::new();
    let mut received = 0;
    while received < count {
        tokio::select! {
            delivery = deliveries.next() => {
                let delivery = delivery.context("the consumer was cancelled")??;
                received += 1;
                acks.push(async move { delivery.ack(BasicAckOptions::default()).await });
            }
            Some(acked) = acks.next() => { acked?; }
        }
    }
    while let Some(acked) = acks.next().await {
        acked?;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    channel.close(200, "done".into()).await?;
    Ok(rate)
}

/// Ceiling 0: what the database does for the requests' kind of work with nothing around it —
/// an indexed lookup then an insert, `connections` at a time, for `duration`, through the same
/// driver with the same defaults. Returns pairs per second.
pub async fn lookup_insert_pairs(
    uri: &str,
    database: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    const KEYS: u64 = 10_000;
    let client = mongodb::Client::with_uri_str(uri).await?;
    let database = client.database(database);
    let collection = database.collection::<Document>("pairs");
    collection
        .create_index(IndexModel::builder().keys(doc! { "key": 1 }).build())
        .await?;
    let seed: Vec<Document> = (0..KEYS).map(|key| doc! { "key": key as i64 }).collect();
    collection.insert_many(seed).await?;
    let pairs = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections as u64)
        .map(|task| {
            let (collection, pairs) = (collection.clone(), pairs.clone());
            tokio::spawn(async move {
                let mut key = task;
                while started.elapsed() < duration {
                    key = (key * 7_919 + 1) % KEYS;
                    collection.find_one(doc! { "key": key as i64 }).await?;
                    collection
                        .insert_one(
                            doc! { "key": (KEYS + key) as i64, "at": bson::DateTime::now() },
                        )
                        .await?;
                    pairs.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let rate = pairs.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    database.drop().await?;
    Ok(rate)
}

/// Ceiling 4: the database's own pace in bulk — documents/s written by `insert_many` and by
/// `update_many` (`_id` in a group), in groups of `group`, `WRITERS` groups at a time, `total`
/// documents each way, with the product's write concern.
pub async fn bulk_pace(
    uri: &str,
    database: &str,
    group: usize,
    total: usize,
) -> anyhow::Result<BulkPace> {
    const WRITERS: usize = 4;
    let client = mongodb::Client::with_uri_str(uri).await?;
    let database = client.database(database);
    let collection = database.collection_with_options::<Document>(
        "bulk",
        mongodb::options::CollectionOptions::builder()
            .write_concern(mongodb::options::WriteConcern::majority())
            .build(),
    );
    let groups: Vec<Vec<i64>> = (0..total as i64)
        .collect::<Vec<_>>()
        .chunks(group.max(1))
        .map(<[i64]>::to_vec)
        .collect();
    let timed = |write: BulkWrite| {
        let (collection, groups) = (collection.clone(), groups.clone());
        async move {
            let started = Instant::now();
            let mut writes = FuturesUnordered::new();
            for ids in groups {
                if writes.len() >= WRITERS {
                    writes.next().await.transpose()?;
                }
                let collection = collection.clone();
                writes.push(async move {
                    match write {
                        BulkWrite::Insert => {
                            let documents: Vec<Document> = ids
                                .iter()
                                .map(|id| doc! { "_id": id, "state": "queued", "at": bson::DateTime::now() })
                                .collect();
                            collection.insert_many(documents).await.map(drop)
                        }
                        BulkWrite::Update => collection
                            .update_many(
                                doc! { "_id": { "$in": &ids }, "state": "queued" },
                                doc! { "$set": { "state": "pushed", "at": bson::DateTime::now() } },
                            )
                            .await
                            .map(drop),
                    }
                });
            }
            while let Some(written) = writes.next().await {
                written?;
            }
            anyhow::Ok(total as f64 / started.elapsed().as_secs_f64())
        }
    };
    let inserts_per_second = timed(BulkWrite::Insert).await?;
    let updates_per_second = timed(BulkWrite::Update).await?;
    database.drop().await?;
    Ok(BulkPace {
        group,
        inserts_per_second,
        updates_per_second,
    })
}

/// A kind of bulk write ceiling 4 measures.
#[derive(Clone, Copy)]
enum BulkWrite {
    /// New documents, as a batch records its jobs.
    Insert,
    /// Guarded updates of existing documents, as outcomes are recorded.
    Update,
}

/// Ceiling 4 at one group size.
#[derive(Debug, serde::Serialize)]
pub struct BulkPace {
    pub group: usize,
    pub inserts_per_second: f64,
    pub updates_per_second: f64,
}
