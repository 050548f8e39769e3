//! conflux: ERP/SCM integration daemon.
//!
//! Data flows `source` → `mapper` → `store` → `resolver` → `profile` → `store` (outbox) →
//! `sink`, driven by [`pipeline`]. `mapper`, `resolver` and `profile` are pure; all I/O lives
//! in `source`, `store`, `sink` and `pipeline`. Operator files are loaded and validated by
//! [`config`]; the command line is [`cli`]. The daemon ([`schedule`]) runs jobs on their
//! schedules and serves the operations endpoints of [`ops`] with the metrics of [`metrics`].

pub mod cli;
pub mod config;
pub mod error;
pub mod evaluate;
pub mod generate;
pub mod mapper;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod pipeline;
pub mod profile;
pub mod redact;
pub mod resolver;
pub mod schedule;
pub mod sink;
pub mod source;
pub mod store;
