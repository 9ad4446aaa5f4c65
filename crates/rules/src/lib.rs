//! The rules of metering as plain functions over plain values: which billing
//! period applies, what an increment or decrement does to a counter, which
//! limits a plan change would break, and when a usage report is retried.
//!
//! Nothing here touches Postgres. The SQL functions load state under a row
//! lock, ask these functions what to do, and write the answer back, so every
//! rule is table-tested in memory and exercised end to end. The extension
//! and tallyd both build on this crate, so a kind, a status, a provider or an
//! error means the same thing on both sides of the SQL API.

pub mod alerts;
pub mod billing;
mod counter;
pub mod errors;
mod idempotency;
mod lifecycle;
mod period;
mod plan;
mod queue;

pub use counter::*;
pub use idempotency::*;
pub use lifecycle::*;
pub use period::*;
pub use plan::*;
pub use queue::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Used up and reset each billing period (messages, sms, email).
    Consumable,
    /// A standing count changed only by increments, decrements and syncs
    /// (chatbots, seats).
    Allocation,
}

impl Kind {
    pub fn parse(kind: &str) -> Option<Kind> {
        match kind {
            "consumable" => Some(Kind::Consumable),
            "allocation" => Some(Kind::Allocation),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Consumable => "consumable",
            Kind::Allocation => "allocation",
        }
    }
}
