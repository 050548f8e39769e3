//! Process exit codes: the contract scripts and schedulers rely on.
//!
//! 0 — success; 1 — validation or mapping-test failure (the operator must fix a file);
//! 2 — runtime failure (a source, the store or the bus failed; undelivered events stay in
//! the outbox and the next run delivers them).

pub const EXIT_OK: u8 = 0;
pub const EXIT_INVALID: u8 = 1;
pub const EXIT_RUNTIME: u8 = 2;
