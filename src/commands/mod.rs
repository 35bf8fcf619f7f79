//! The subcommands besides `run`: `list`, `replay` and `blocks`. Each
//! takes what the command line parsed and writes its output.

pub mod blocks;
pub mod capture;
pub mod list;
pub mod replay;
