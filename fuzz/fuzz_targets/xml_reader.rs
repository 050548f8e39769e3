//! The streaming XML reader on arbitrary bytes: every item is a record, a broken record or an
//! I/O error; it never panics, loops or expands an entity.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for item in conflux::source::xml::parse_xml_records(data, "CUSTOMERS/CUSTOMER", "fuzz.xml") {
        if item.is_err() {
            break;
        }
    }
});
