//! Fake ERP servers for the preset tests: [`sap::FakeSap`], [`bc::FakeBusinessCentral`] and
//! [`odoo::FakeOdoo`] each run an in-process HTTP server on 127.0.0.1 (a random port) that
//! answers in exactly the wire shape of the real API, pages the real way, checks credentials
//! and honours the incremental filter, so only records changed after the cursor come back.
//!
//! Each fake keeps its records in shared state ([`Shared`]) that a test edits between runs,
//! and logs every filter it was sent ([`Shared::filters`]) so a test can assert what the
//! connector asked for. Records are compared and ordered the way the real systems do it: by
//! their change stamp as text.

pub mod bc;
pub mod odoo;
pub mod sap;

use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

/// State shared between a fake's request handlers and the test driving it.
pub struct Shared<S> {
    state: Arc<Mutex<S>>,
    filters: Arc<Mutex<Vec<String>>>,
}

impl<S> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Shared {
            state: Arc::clone(&self.state),
            filters: Arc::clone(&self.filters),
        }
    }
}

impl<S> Shared<S> {
    pub fn new(state: S) -> Shared<S> {
        Shared {
            state: Arc::new(Mutex::new(state)),
            filters: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The records and settings of the fake; a poisoned lock means a handler panicked,
    /// which already fails the test.
    pub fn state(&self) -> MutexGuard<'_, S> {
        self.state.lock().unwrap()
    }

    /// Every filter received, in order, as `<entity set> <filter>`.
    pub fn filters(&self) -> Vec<String> {
        self.filters.lock().unwrap().clone()
    }

    fn log_filter(&self, entity: &str, filter: &str) {
        self.filters
            .lock()
            .unwrap()
            .push(format!("{entity} {filter}"));
    }
}

/// The string value of `record[field]`, or "" when absent or not a string.
pub fn text<'a>(record: &'a Value, field: &str) -> &'a str {
    record.get(field).and_then(Value::as_str).unwrap_or("")
}

/// Replaces `record[field]` (which must exist) in the record of `records` whose `key` field
/// equals `id`.
pub fn edit(records: &mut [Value], key: &str, id: &Value, field: &str, value: Value) {
    let record = records
        .iter_mut()
        .find(|record| record.get(key) == Some(id))
        .unwrap_or_else(|| panic!("no record with {key} = {id}"));
    record[field] = value;
}
