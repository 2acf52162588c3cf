//! What the `kdna` subcommands do, as library functions the CLI and tests share.

pub mod bench;
pub mod parity;
