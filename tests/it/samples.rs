//! Real public ERP payloads (see `tests/fixtures/samples/SOURCES.md`) read with the file
//! source's parsers and mapped by the shipped mappings, asserting the exact canonical record.
//! Unlike the demo data these were not written to fit the mappings, so they guard the
//! assumptions a mapping makes about a system's documents.

use std::str::FromStr;

use conflux::mapper::MapContext;
use conflux::model::{Order, OrderLine, OrderStatus, Record, SourceRef};
use conflux::source::RawItem;
use conflux::source::file::{FileFormat, FileStreamSettings, read_file};
use jiff::civil::date;
use rust_decimal::Decimal;

use crate::common::{load, project_copy, repo_root};

fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

/// In this ORDRSP the qualified segments are not in the order a positional mapping would
/// assume: the first E1EDK03 is the delivery date (IDDAT 002) and the first E1EDS01 is the
/// item count (SUMID 001).
#[test]
fn sap_ordrsp_maps_qualified_segments_by_their_qualifier() {
    let project = project_copy();
    let config = load(project.path(), "config/demo.toml");
    let mapping = &config.mappings["demo_sap.order"];
    let connector = &config.connectors["demo_sap"];
    let mut settings = FileStreamSettings::new(FileFormat::Xml);
    settings.records = Some("ORDERS05/IDOC".to_owned());
    let sample = repo_root()
        .join("tests/fixtures/samples/sap_idoc/ORDERS05_ordrsp_sales_order_response.xml");
    let items = read_file(&sample, &settings).unwrap();
    let [RawItem::Record(raw)] = items.as_slice() else {
        panic!("expected one IDoc record, got {items:?}");
    };
    let ctx = MapContext {
        system: "sap",
        stream: "sales_orders",
        empty_values: &connector.empty_values,
    };
    let Record::Order(order) = mapping.apply(&raw.value, &ctx).unwrap() else {
        panic!("demo_sap.order maps to an order");
    };

    let line =
        |number: &str, sku: &str, description: &str, quantity, price, total, promised| OrderLine {
            line_number: Some(number.to_owned()),
            sku: Some(sku.to_owned()),
            description: Some(description.to_owned()),
            quantity: Some(dec(quantity)),
            unit_price: Some(dec(price)),
            line_total: Some(dec(total)),
            promised_date: Some(promised),
        };
    let expected = Order {
        source: SourceRef {
            system: "sap".to_owned(),
            stream: "sales_orders".to_owned(),
            source_id: "2001319044".to_owned(),
        },
        order_number: "2001319044".to_owned(),
        // PARVW AG, not the payer RE, bill-to RG or ship-to WE 0100111229.
        customer_id: Some("0100470817".to_owned()),
        // IDDAT 012; the first E1EDK03 (IDDAT 002) says 2024-04-24.
        ordered_at: Some("2024-03-18T00:00:00Z".parse().unwrap()),
        status: OrderStatus::Open,
        currency: Some("EUR".to_owned()),
        // SUMID 002; the first E1EDS01 (SUMID 001) says 3.
        total: Some(dec("223356.00")),
        lines: vec![
            line(
                "000010",
                "000000688001000182",
                "EP5441/50 FR ESPRESSO PHI BLACK",
                "432.000",
                "479.62",
                "207195.84",
                date(2024, 5, 7),
            ),
            line(
                "000020",
                "000000882703160010",
                "CSA240/60 SENSEO SELECT DEEP BLACK",
                "144.000",
                "65.69",
                "9459.36",
                date(2024, 4, 24),
            ),
            line(
                "000030",
                "000000882705010010",
                "CSA210/10 ORIGINAL PLUS STAR WHITE",
                "120.000",
                "55.84",
                "6700.80",
                date(2024, 4, 30),
            ),
        ],
    };
    assert_eq!(order, expected);
    assert_eq!(
        order.total.map(|total| total.to_string()).as_deref(),
        Some("223356.00"),
        "the total is the E1EDS01 value as written"
    );
}
