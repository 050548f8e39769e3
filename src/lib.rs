//! conflux: ERP/SCM integration daemon.
//!
//! Data flows `source` → `mapper` → `store` → `resolver` → `profile` → `store` (outbox) →
//! `sink`, driven by [`pipeline`]. `mapper`, `resolver` and `profile` are pure; all I/O lives
//! in `source`, `store`, `sink` and `pipeline`. Operator files are loaded and validated by
//! [`config`]; the command line is [`cli`].

pub mod cli;
pub mod config;
pub mod error;
pub mod mapper;
pub mod model;
pub mod pipeline;
pub mod profile;
pub mod resolver;
pub mod sink;
pub mod source;
pub mod store;
