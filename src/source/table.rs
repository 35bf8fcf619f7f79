//! [`SocketTable`]: a polling source, which lists the host's TCP sockets
//! on demand; the detectors diff successive tables.

use crate::event::Socket;

/// A source that can list the host's TCP sockets on demand.
pub trait SocketTable: Send {
    /// The name printed in events and metric labels.
    fn name(&self) -> &'static str;
    fn snapshot(&mut self) -> anyhow::Result<Vec<Socket>>;
}
