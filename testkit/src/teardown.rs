//! Removing what a run made: its database, and its queues and exchanges on the broker.

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use refresh_shared::{broker::Topology, store::Store};

/// Drops the run's database and deletes every queue and exchange of its topology.
pub async fn remove(
    store: &Store,
    broker: &lapin::Connection,
    topology: &Topology,
) -> anyhow::Result<()> {
    // Twice at most: a run's store sits idle for minutes while the services work, and a
    // server may have closed its pooled connection meanwhile (the first use then fails with an
    // I/O error and the driver opens a new one).
    if let Err(error) = store.database().drop().await {
        tracing::warn!(%error, "dropping the run's database failed; trying once more");
        store.database().drop().await?;
    }
    delete_topology(broker, topology).await
}

/// Deletes every queue and exchange of `topology`.
pub async fn delete_topology(
    broker: &lapin::Connection,
    topology: &Topology,
) -> anyhow::Result<()> {
    let channel = broker.create_channel().await?;
    for (queue, _) in topology.queues() {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    for exchange in topology.exchanges() {
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    let _ = channel.close(200, "bye".into()).await;
    Ok(())
}
