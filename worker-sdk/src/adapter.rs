//! The socketioxide cluster adapter over clusterd's bus: broadcasts, rooms, `fetch_sockets`,
//! acknowledgements and the server count across every worker of the pool.
//!
//! socketioxide-redis's adapter speaks a small pub/sub [`Driver`] interface; this is that driver
//! over the bus. socketioxide's own messages travel as opaque bytes, and the server count is the
//! exact number of live workers subscribed (clusterd knows who is alive).
//!
//! ```ignore
//! type Adapter = clusterd_worker::ClusterAdapter<socketioxide::adapter::Emitter>;
//! let (io_layer, io) = socketioxide::SocketIo::builder()
//!     .with_adapter::<Adapter>(clusterd_worker::cluster_adapter(&worker)?)
//!     .build_layer();
//! io.ns("/", on_connect).await?;
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use socketioxide_redis::{RedisAdapterConfig, RedisAdapterCtr};
use tokio::sync::mpsc;

use crate::{Bus, Error, Worker};

/// socketioxide's adapter running over clusterd's bus.
pub type ClusterAdapter<E> = socketioxide_redis::CustomRedisAdapter<E, BusDriver>;

/// The adapter's state for `SocketIo::builder().with_adapter::<ClusterAdapter<_>>(...)`.
pub fn cluster_adapter(worker: &Worker) -> Result<RedisAdapterCtr<BusDriver>, Error> {
    Ok(RedisAdapterCtr::new_with_driver(BusDriver::new(worker.bus()?), RedisAdapterConfig::default()))
}

/// socketioxide-redis's [`Driver`] over clusterd's bus.
#[derive(Clone, Debug)]
pub struct BusDriver {
    bus: Bus,
    subscriptions: Arc<Mutex<HashMap<String, tokio::task::AbortHandle>>>,
}

impl BusDriver {
    /// A driver over this worker's bus.
    pub fn new(bus: Bus) -> Self {
        Self { bus, subscriptions: Arc::default() }
    }
}

impl Driver for BusDriver {
    type Error = Error;

    fn publish(&self, chan: String, val: Vec<u8>) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let bus = self.bus.clone();
        async move { bus.publish(&chan, val).await }
    }

    fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> impl Future<Output = Result<MessageStream<ChanItem>, Self::Error>> + Send {
        let (bus, subscriptions) = (self.bus.clone(), Arc::clone(&self.subscriptions));
        async move {
            let mut subscription = bus.subscribe(&chan).await?;
            let (tx, rx) = mpsc::channel(size.max(1));
            let name = chan.clone();
            // Dropping the subscription (the task's end) unsubscribes from the bus.
            let task = tokio::spawn(async move {
                while let Some(message) = subscription.next().await {
                    if tx.send((name.clone(), message.payload)).await.is_err() {
                        return;
                    }
                }
            });
            if let Some(previous) =
                subscriptions.lock().unwrap_or_else(|p| p.into_inner()).insert(chan, task.abort_handle())
            {
                previous.abort();
            }
            Ok(MessageStream::new(rx))
        }
    }

    fn unsubscribe(&self, pat: String) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let subscriptions = Arc::clone(&self.subscriptions);
        async move {
            if let Some(task) = subscriptions.lock().unwrap_or_else(|p| p.into_inner()).remove(&pat) {
                task.abort();
            }
            Ok(())
        }
    }

    fn num_serv(&self, chan: &str) -> impl Future<Output = Result<u16, Self::Error>> + Send {
        let (bus, chan) = (self.bus.clone(), chan.to_owned());
        async move { Ok(u16::try_from(bus.subscribers(&chan).await?).unwrap_or(u16::MAX)) }
    }
}
