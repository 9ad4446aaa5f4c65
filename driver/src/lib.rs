//! tallyd: the daemon and operator tool next to tally's Postgres extension.
//! It holds no quota logic of its own: it verifies, translates and calls the
//! extension's SQL API.

pub mod cli;
pub mod db;

/// The extension version this build of tallyd speaks to.
pub const EXTENSION_VERSION: &str = "0.2.0";
