//! Produces through the client's raw path (`Client::send_batch`): one request carrying exactly
//! the batch a test builds, for the tests that need to know the request's layout (how many
//! messages one batch holds, which batch a crash may tear) rather than let the producer batch.
//! Applications use `keel_client::Producer`.

use std::time::{SystemTime, UNIX_EPOCH};

use keel_client::{Ack, BatchBuilder, Client, PendingProduce, Result, Target};

/// `values` as one batch, each record with the target's key if it has one.
pub fn batch_of<V: AsRef<[u8]>>(
    target: Target<'_>,
    values: impl IntoIterator<Item = V>,
) -> Vec<u8> {
    let key = match target {
        Target::Key(k) => Some(k),
        Target::Partition(_) => None,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut batch = BatchBuilder::new(now);
    for v in values {
        batch.push(key, v.as_ref(), &[]);
    }
    batch.build()
}

/// Sends `values` as one batch without waiting for its acknowledgement.
pub fn send_values<V: AsRef<[u8]>>(
    client: &Client,
    topic: &str,
    target: Target<'_>,
    values: impl IntoIterator<Item = V>,
) -> Result<PendingProduce> {
    client.send_batch(topic, target, &batch_of(target, values))
}

/// Sends `values` as one batch and waits until it is durable.
pub fn produce<V: AsRef<[u8]>>(
    client: &Client,
    topic: &str,
    target: Target<'_>,
    values: impl IntoIterator<Item = V>,
) -> Result<Ack> {
    send_values(client, topic, target, values)?.wait()
}
