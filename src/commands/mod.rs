//! The subcommands besides `run`: `list`, `replay`, `blocks` and
//! `status`. Each takes what the command line parsed and writes its
//! output.

pub mod blocks;
pub mod capture;
pub mod list;
pub mod replay;
pub mod status;
