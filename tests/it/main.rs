//! conflux's integration tests: one binary, one module per capability.

mod common;
mod fake_erp;

mod amqp; // the feed on the real RabbitMQ: delivery, routing, outage and catch-up
mod bad_input; // broken CSV rows, truncated XML, wrong types: quarantined, the rest flows
mod cli; // validate / test / preview / profiles through the real binary
mod daemon; // scheduled runs, ops endpoints, shutdown by signal, `conflux runs`
mod demo; // the bundled demo end to end on SQLite + NDJSON, and idempotent re-runs
mod generate; // generated labelled customers through `run`: precision, recall, households, determinism
mod hostile; // malformed, invalid UTF-8, huge, deep, entity bombs, `..`, SQL cursors: quarantined, bounded
mod http; // kind = "http" connectors end to end: paging, incremental cursor, failures
mod identity; // stable ids across runs, merges into the older id, splits
mod presets; // SAP, Business Central and Odoo presets end to end against fake servers
mod profile; // enriched profiles: late orders, supply risk re-versioning, schema validation, feed tail
mod replicas; // two daemons on one PostgreSQL: each fire time once, each event once; the demo on PostgreSQL
mod review; // probabilistic identities through `run`: households, typos, review decisions, unlink, incremental = full
mod samples; // real public ERP payloads through the shipped mappings
mod schema; // the committed JSON Schema of the feed matches the types
mod secrets; // secrets from the environment and secret files never appear in output, errors or logs
mod sql; // kind = "sql" connectors against PostgreSQL: bound watermark, incremental runs
mod store_contract; // the Store trait's behaviour on SQLite and PostgreSQL, outbox claims and job leases
mod tls; // HTTPS sources behind a private CA (tls.ca_file)
