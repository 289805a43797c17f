//! NATS JetStream: events, alerts, actions, kill and revoke signals out through a
//! bounded on-disk spool; signed control requests in. See docs/nats.md.

pub mod config;
pub mod control;
pub mod publish;
pub mod sink;
pub mod spool;
pub mod subjects;

pub use config::NatsArgs;
pub use sink::{NatsOptions, NatsSink};
pub use subjects::Subjects;
