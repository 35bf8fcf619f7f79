//! tcpwatch: a Linux host agent that reports new TCP connections, detects
//! port scans and blocks scanners.
//!
//! The crate is a pipeline, in the manner of Vector: a [`source`] turns the
//! kernel's view of TCP into [`event::Observation`]s, [`detect`] turns those
//! into [`event::Event`]s (new connections, port scans), [`block`] blocks
//! the scanners, and [`sink`] writes the events out while [`metrics`] counts
//! them and [`state`] keeps what must survive a restart. [`pipeline`] wires
//! the stages with bounded channels; [`cli`] parses the command line.
//!
//! # Layers
//!
//! Modules are layered; a module imports only from layers below its own, and
//! the stages (layer 5) never import each other. `tests/offline/layers.rs`
//! fails the build's tests when an import goes up a layer, across stages, or
//! closes a cycle between files. The one list of layers is [`LAYERS`].
//!
//! | layer | modules | what they hold |
//! |---|---|---|
//! | 0 | [`text`], [`clock`], [`health`], [`blockset`] | text helpers, time, the source's health flags, the blocks in force |
//! | 1 | [`duration`], [`event`], [`diag`] | DURATION values, what flows through the pipeline, every stderr line |
//! | 2 | [`setting`] | the kit each stage declares its settings with |
//! | 3 | [`os`] | every system call and `unsafe` block outside the BPF loader |
//! | 4 | [`bpf`] | the BPF programs, loaded, and their maps |
//! | 5 | [`source`], [`detect`], [`block`], [`sink`], [`metrics`], [`state`], [`control`] | the stages, and the operator's control socket |
//! | 6 | [`settings`] | the stages' settings together: defaults, file, flags |
//! | 7 | [`privilege`] | the capabilities the settings need |
//! | 8 | [`pipeline`] | the stages wired together |
//! | 9 | [`commands`] | the subcommands besides `run` |
//! | 10 | [`cli`] | the command line |
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod block;
pub mod blockset;
#[allow(unsafe_code)]
pub mod bpf;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod control;
pub mod detect;
pub mod diag;
pub mod duration;
pub mod event;
pub mod health;
pub mod metrics;
#[allow(unsafe_code)]
pub mod os;
pub mod pipeline;
pub mod privilege;
pub mod setting;
pub mod settings;
pub mod sink;
pub mod source;
pub mod state;
pub mod text;

/// The layer of every top-level module (see the table above): a module may
/// import from a lower layer only; modules of one layer never import each
/// other.
pub const LAYERS: &[(&str, u8)] = &[
    ("text", 0),
    ("clock", 0),
    ("health", 0),
    ("blockset", 0),
    ("duration", 1),
    ("event", 1),
    ("diag", 1),
    ("setting", 2),
    ("os", 3),
    ("bpf", 4),
    ("source", 5),
    ("detect", 5),
    ("block", 5),
    ("sink", 5),
    ("metrics", 5),
    ("state", 5),
    ("control", 5),
    ("settings", 6),
    ("privilege", 7),
    ("pipeline", 8),
    ("commands", 9),
    ("cli", 10),
];
