//! tcpwatch: a Linux host agent that reports new TCP connections, detects port
//! scans and blocks scanners.
//!
//! The crate is a pipeline, in the manner of Vector: a [`source`] turns the
//! kernel's view of TCP into [`source::Observation`]s, [`detect`] turns those
//! into [`event::Event`]s (new connections, port scans), [`block`] blocks the
//! scanners in the host firewall, and [`sink`] writes the events out while
//! [`metrics`] counts them. [`pipeline`] wires the stages with bounded channels; [`cli`]
//! parses the command line and the config file.

pub mod block;
pub mod cli;
pub mod clock;
pub mod config;
pub mod detect;
pub mod duration;
pub mod event;
pub mod fleet;
pub mod list;
pub mod metrics;
pub mod pipeline;
pub mod privilege;
pub mod replay;
pub mod sink;
pub mod source;
pub mod state;
