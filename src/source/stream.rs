//! [`Stream`]: a real-time source, which runs on its own and sends each
//! connection attempt as it happens.

use crate::clock::Clock;
use crate::event::Observation;
use crate::health::SourceHealth;
use futures_util::future::BoxFuture;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What a running real-time source is given.
pub struct Context {
    pub clock: Arc<dyn Clock>,
    /// Where its observations go; it stops when the receiver is gone.
    pub out: mpsc::Sender<Observation>,
    /// Where it says whether it runs and sees traffic.
    pub health: Arc<SourceHealth>,
}

/// A real-time source: opened, then run until the receiver of its
/// observations goes away (`Ok`) or it fails for good.
pub trait Stream: Send {
    fn name(&self) -> &'static str;
    fn run(self: Box<Self>, ctx: Context) -> BoxFuture<'static, anyhow::Result<()>>;
}
