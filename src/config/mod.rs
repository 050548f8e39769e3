//! Operator files: loading, `${VAR}` resolution, pure validation and the typed [`Config`].
//!
//! INTERFACE STUB — the implementation lands with the config work.

pub mod spec;
