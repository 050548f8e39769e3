//! A fake SAP S/4HANA OData V2 server: `A_BusinessPartner` (addresses, e-mails and phones
//! expandable), `A_SalesOrder` (items expandable), `A_MatlStkInAcctMod` and `A_Supplier`.
//!
//! Like SAP it answers in verbose JSON (`{"d": {"results": [...]}}`, `__metadata` on every
//! entity, decimals as strings, `/Date(ms)/` dates), sends navigation properties that were not
//! `$expand`ed as `__deferred` links, pages by itself ([`PAGE_SIZE`] entities, then an absolute
//! `d.__next` carrying the request's query plus a `$skiptoken`), evaluates `$filter` terms of
//! the form `<property> <gt|ge|eq> <literal>` joined by `and` (a property it does not know
//! is an OData error, as on SAP), and answers 401 without the right basic credentials.
//!
//! `A_BusinessPartner` has no single change stamp: a `LastChangeDate` filter compares the
//! literal against `LastChangeDate` and `LastChangeTime` concatenated, the cursor the preset
//! connector builds from the two fields.

use serde_json::{Value, json};
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::{Shared, text};

pub const USER: &str = "CONFLUX_COMM";
pub const PASSWORD: &str = "s4-secret";
/// `Basic` + base64 of `CONFLUX_COMM:s4-secret`.
const AUTHORIZATION: &str = "Basic Q09ORkxVWF9DT01NOnM0LXNlY3JldA==";
pub const PAGE_SIZE: usize = 2;
const SERVICE_ROOT: &str = "/sap/opu/odata/sap";

pub struct SapState {
    pub base_uri: String,
    pub business_partners: Vec<Value>,
    pub sales_orders: Vec<Value>,
    pub material_stock: Vec<Value>,
    pub suppliers: Vec<Value>,
}

impl SapState {
    fn entity_set(&self, name: &str) -> Option<&Vec<Value>> {
        match name {
            "API_BUSINESS_PARTNER/A_BusinessPartner" => Some(&self.business_partners),
            "API_SALES_ORDER_SRV/A_SalesOrder" => Some(&self.sales_orders),
            "API_MATERIAL_STOCK_SRV/A_MatlStkInAcctMod" => Some(&self.material_stock),
            "API_BUSINESS_PARTNER/A_Supplier" => Some(&self.suppliers),
            _ => None,
        }
    }
}

pub struct FakeSap {
    pub server: MockServer,
    pub shared: Shared<SapState>,
}

impl FakeSap {
    pub async fn start() -> FakeSap {
        let server = MockServer::start().await;
        let shared = Shared::new(SapState {
            base_uri: server.uri(),
            business_partners: business_partners(),
            sales_orders: sales_orders(),
            material_stock: material_stock(),
            suppliers: suppliers(),
        });
        Mock::given(method("GET"))
            .and(path_regex(format!("^{SERVICE_ROOT}/")))
            .respond_with(SapResponder {
                shared: shared.clone(),
            })
            .mount(&server)
            .await;
        FakeSap { server, shared }
    }
}

/// `/Date(ms)/` of a day, as SAP sends Edm.DateTime.
pub fn sap_date(day: &str) -> String {
    let date: jiff::civil::Date = day.parse().unwrap();
    let ms = date
        .to_zoned(jiff::tz::TimeZone::UTC)
        .unwrap()
        .timestamp()
        .as_millisecond();
    format!("/Date({ms})/")
}

fn metadata(base: &str, set: &str, key: &str) -> Value {
    let (service, entity) = set.split_once('/').unwrap();
    let uri = format!("{base}{SERVICE_ROOT}/{set}({key})");
    json!({"id": uri, "uri": uri, "type": format!("{service}.{entity}Type")})
}

fn partner(
    id: &str,
    category: &str,
    full_name: &str,
    email: &str,
    phone: &str,
    changed: (&str, &str),
) -> Value {
    let organization = category == "2";
    json!({
        "BusinessPartner": id,
        "Customer": id,
        "Supplier": "",
        "BusinessPartnerCategory": category,
        "BusinessPartnerFullName": full_name,
        "OrganizationBPName1": if organization { full_name } else { "" },
        "OrganizationBPName2": "",
        "FirstName": if organization { "" } else { full_name.split(' ').next().unwrap() },
        "LastName": if organization { "" } else { full_name.rsplit(' ').next().unwrap() },
        "BirthDate": null,
        "CreationDate": sap_date("2019-03-14"),
        "CreationTime": "PT09H00M00S",
        "LastChangeDate": sap_date(changed.0),
        "LastChangeTime": changed.1,
        "to_BusinessPartnerAddress": {"results": [{
            "BusinessPartner": id,
            "AddressID": format!("2{id}"),
            "StreetName": "Lilienthalallee",
            "HouseNumber": "25",
            "CityName": "München",
            "Region": "BY",
            "PostalCode": "80939",
            "Country": "DE",
            "to_EmailAddress": {"results": [{
                "AddressID": format!("2{id}"), "Person": "", "OrdinalNumber": "1",
                "IsDefaultEmailAddress": true, "EmailAddress": email,
                "SearchEmailAddress": email.to_uppercase()
            }]},
            "to_PhoneNumber": {"results": [{
                "AddressID": format!("2{id}"), "Person": "", "OrdinalNumber": "1",
                "DestinationLocationCountry": "DE", "IsDefaultPhoneNumber": true,
                "PhoneNumber": phone, "PhoneNumberExtension": "", "InternationalPhoneNumber": ""
            }]}
        }]}
    })
}

pub fn business_partners() -> Vec<Value> {
    vec![
        partner(
            "1000042",
            "2",
            "Müller Maschinenbau GmbH",
            "einkauf@mueller-maschinenbau.example.de",
            "089 12345101",
            ("2026-10-01", "PT14H04M56S"),
        ),
        partner(
            "1000043",
            "2",
            "Weber & Söhne Werkzeuge GmbH",
            "info@weber-soehne.example.de",
            "0662 123456",
            ("2026-10-02", "PT08H00M00S"),
        ),
        partner(
            "1000044",
            "2",
            "Schneider Logistik AG",
            "dispo@schneider-logistik.example.de",
            "040 12345303",
            ("2026-10-02", "PT17H30M00S"),
        ),
        partner(
            "1000077",
            "1",
            "Lena Wagner",
            "lena.wagner@example.com",
            "0351 4455667",
            ("2026-10-05", "PT10H15M00S"),
        ),
        partner(
            "1000078",
            "1",
            "Jonas Becker",
            "jonas.becker@example.com",
            "030 9988776",
            ("2026-10-07", "PT11H45M30S"),
        ),
    ]
}

fn sales_order(
    id: &str,
    sold_to: &str,
    status: &str,
    changed_ms: i64,
    items: &[(&str, &str, &str, &str)],
) -> Value {
    let total: rust_decimal::Decimal = items
        .iter()
        .map(|item| item.3.parse::<rust_decimal::Decimal>().unwrap())
        .sum();
    json!({
        "SalesOrder": id,
        "SalesOrderType": "OR",
        "SalesOrganization": "1010",
        "SoldToParty": sold_to,
        "SalesOrderDate": sap_date("2026-10-10"),
        "CreationDate": sap_date("2026-10-10"),
        "LastChangeDateTime": format!("/Date({changed_ms}+0000)/"),
        "TotalNetAmount": format!("{total:.2}"),
        "TransactionCurrency": "EUR",
        "OverallSDProcessStatus": status,
        "OverallTotalDeliveryStatus": status,
        "OverallSDDocumentRejectionSts": "A",
        "to_Item": {"results": items.iter().map(|(item, material, quantity, amount)| json!({
            "SalesOrder": id,
            "SalesOrderItem": item,
            "HigherLevelItem": "0",
            "Material": material,
            "SalesOrderItemText": format!("Material {material}"),
            "RequestedQuantity": quantity,
            "RequestedQuantityUnit": "ST",
            "NetAmount": amount,
            "TransactionCurrency": "EUR"
        })).collect::<Vec<_>>()}
    })
}

pub fn sales_orders() -> Vec<Value> {
    vec![
        sales_order(
            "4000043",
            "1000042",
            "A",
            1_760_000_000_000,
            &[
                ("10", "SKU-120", "2.000", "1780.00"),
                ("20", "SKU-150", "60.000", "750.00"),
            ],
        ),
        sales_order(
            "4000044",
            "1000043",
            "C",
            1_760_100_000_000,
            &[("10", "SKU-140", "6.000", "1110.00")],
        ),
        sales_order(
            "4000045",
            "1000077",
            "B",
            1_760_200_000_000,
            &[("10", "SKU-110", "150.000", "720.00")],
        ),
    ]
}

fn stock(material: &str, storage_location: &str, stock_type: &str, quantity: &str) -> Value {
    json!({
        "Material": material, "Plant": "1010", "StorageLocation": storage_location, "Batch": "",
        "Supplier": "", "Customer": "", "WBSElementInternalID": "00000000", "SDDocument": "",
        "SDDocumentItem": "000000", "InventorySpecialStockType": "", "InventoryStockType": stock_type,
        "MaterialBaseUnit": "ST", "MatlWrhsStkQtyInMatlBaseUnit": quantity
    })
}

pub fn material_stock() -> Vec<Value> {
    vec![
        stock("SKU-120", "101A", "01", "1.00000000000000"),
        stock("SKU-140", "101A", "01", "25.00000000000000"),
        // Quality-inspection stock (type 02) cannot be promised; the connector filters it out.
        stock("SKU-140", "101A", "02", "4.00000000000000"),
        stock("SKU-150", "101B", "01", "240.00000000000000"),
    ]
}

pub fn suppliers() -> Vec<Value> {
    vec![
        json!({"Supplier": "17300001", "SupplierName": "Fluidtechnik Rhein", "SupplierFullName": "Fluidtechnik Rhein GmbH", "VATRegistration": "DE811222333", "CreationDate": sap_date("2018-01-15")}),
        json!({"Supplier": "17300002", "SupplierName": "Nordic Cabinets", "SupplierFullName": "Nordic Cabinets AB", "VATRegistration": "SE556677889901", "CreationDate": sap_date("2020-06-01")}),
    ]
}

fn odata_error(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({"error": {
        "code": code,
        "message": {"lang": "en", "value": message},
        "innererror": {"application": {"component_id": "", "service_namespace": "/SAP/"}}
    }}))
}

/// One `<property> <op> <literal>` term of a `$filter`.
#[derive(Debug, PartialEq)]
struct Term {
    property: String,
    op: String,
    literal: String,
}

/// Parses `$filter` terms joined by ` and `; literals are `'x'`, `datetime'x'` or
/// `datetimeoffset'x'`, their quoted text being what is compared.
fn parse_filter(filter: &str) -> Result<Vec<Term>, String> {
    filter
        .split(" and ")
        .map(|term| {
            let mut parts = term.trim().splitn(3, ' ');
            let (Some(property), Some(op), Some(literal)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("Invalid filter term '{term}'"));
            };
            let quoted = literal
                .trim_start_matches("datetimeoffset")
                .trim_start_matches("datetime");
            let Some(inner) = quoted.strip_prefix('\'').and_then(|q| q.strip_suffix('\'')) else {
                return Err(format!("Invalid literal {literal}"));
            };
            Ok(Term {
                property: property.to_string(),
                op: op.to_string(),
                literal: inner.to_string(),
            })
        })
        .collect()
}

/// The value a filter on `property` compares in `record`.
fn compared(record: &Value, property: &str) -> Option<String> {
    let value = record.get(property)?.as_str()?;
    if property == "LastChangeDate" {
        return Some(format!("{value}{}", text(record, "LastChangeTime")));
    }
    Some(value.to_string())
}

/// The instant of an OData v2 date value (`/Date(ms)/` or `/Date(ms+0000)/`); as SAP does, a
/// date property compares by its date alone.
fn record_instant(record: &Value, property: &str) -> Option<jiff::Timestamp> {
    let value = record.get(property)?.as_str()?;
    let inner = value.strip_prefix("/Date(")?.strip_suffix(")/")?;
    let millis: String = inner
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    jiff::Timestamp::from_millisecond(millis.parse().ok()?).ok()
}

/// An ISO literal of `datetime'…'` (naive, UTC) or `datetimeoffset'…'`.
fn literal_instant(literal: &str) -> Option<jiff::Timestamp> {
    literal.parse::<jiff::Timestamp>().ok().or_else(|| {
        literal
            .parse::<jiff::civil::DateTime>()
            .ok()?
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()
            .map(|zoned| zoned.timestamp())
    })
}

fn matches(record: &Value, terms: &[Term]) -> Result<bool, String> {
    for term in terms {
        let Some(value) = compared(record, &term.property) else {
            return Err(format!("Property {} not found", term.property));
        };
        // An ISO literal compares as an instant, the way SAP Gateway reads it; the raw form
        // (as the record holds it) compares as text.
        if let (Some(have), Some(want)) = (
            record_instant(record, &term.property),
            literal_instant(&term.literal),
        ) {
            let keep = match term.op.as_str() {
                "gt" => have > want,
                "ge" => have >= want,
                "eq" => have == want,
                other => return Err(format!("Operator {other} not supported")),
            };
            if !keep {
                return Ok(false);
            }
            continue;
        }
        let keep = match term.op.as_str() {
            "gt" => value > term.literal,
            "ge" => value >= term.literal,
            "eq" => value == term.literal,
            other => return Err(format!("Operator {other} not supported")),
        };
        if !keep {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Navigation properties not named in `$expand` become `__deferred` links, as on SAP.
fn defer_unexpanded(record: &mut Value, expand: &str, uri: &str) {
    let Some(object) = record.as_object_mut() else {
        return;
    };
    for (name, value) in object.iter_mut() {
        if name.starts_with("to_")
            && !expand
                .split(',')
                .any(|path| path.starts_with(name.as_str()))
        {
            *value = json!({"__deferred": {"uri": format!("{uri}/{name}")}});
        }
    }
}

struct SapResponder {
    shared: Shared<SapState>,
}

impl Respond for SapResponder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let authorized = request
            .headers
            .get("authorization")
            .is_some_and(|value| value == AUTHORIZATION);
        if !authorized {
            return ResponseTemplate::new(401)
                .insert_header(
                    "www-authenticate",
                    "Basic realm=\"SAP NetWeaver Application Server\"",
                )
                .set_body_string("<html><body>Logon failed</body></html>");
        }
        let set = request
            .url
            .path()
            .trim_start_matches(SERVICE_ROOT)
            .trim_start_matches('/')
            .to_string();
        let query: Vec<(String, String)> = request.url.query_pairs().into_owned().collect();
        let param = |name: &str| {
            query
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        if param("$format").as_deref() != Some("json") {
            return odata_error(
                400,
                "/IWFND/CM_MGW/000",
                "this fake answers $format=json only",
            );
        }
        let state = self.shared.state();
        let Some(records) = state.entity_set(&set) else {
            return odata_error(
                404,
                "/IWFND/MED/170",
                &format!("No service found for namespace '', name '{set}'"),
            );
        };
        let terms = match param("$filter") {
            Some(filter) => {
                self.shared.log_filter(&set, &filter);
                match parse_filter(&filter) {
                    Ok(terms) => terms,
                    Err(message) => return odata_error(400, "/IWBEP/CM_MGW_RT/022", &message),
                }
            }
            None => Vec::new(),
        };
        let mut selected = Vec::new();
        for record in records {
            match matches(record, &terms) {
                Ok(true) => selected.push(record.clone()),
                Ok(false) => {}
                Err(message) => return odata_error(400, "/IWBEP/CM_MGW_RT/022", &message),
            }
        }
        let skip: usize = param("$skiptoken").map_or(0, |token| token.parse().unwrap());
        let expand = param("$expand").unwrap_or_default();
        let page: Vec<Value> = selected
            .iter()
            .skip(skip)
            .take(PAGE_SIZE)
            .map(|record| {
                let mut record = record.clone();
                let key = record
                    .as_object()
                    .and_then(|o| o.values().next())
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let meta = metadata(&state.base_uri, &set, &format!("'{key}'"));
                let uri = meta["uri"].as_str().unwrap_or("").to_string();
                defer_unexpanded(&mut record, &expand, &uri);
                let mut with_meta = serde_json::Map::new();
                with_meta.insert("__metadata".to_string(), meta);
                with_meta.extend(record.as_object().cloned().unwrap_or_default());
                Value::Object(with_meta)
            })
            .collect();
        let mut d = json!({"results": page});
        if skip + PAGE_SIZE < selected.len() {
            let mut next =
                reqwest::Url::parse(&format!("{}{}", state.base_uri, request.url.path())).unwrap();
            {
                let mut pairs = next.query_pairs_mut();
                for (key, value) in query.iter().filter(|(key, _)| key != "$skiptoken") {
                    pairs.append_pair(key, value);
                }
                pairs.append_pair("$skiptoken", &(skip + PAGE_SIZE).to_string());
            }
            d["__next"] = json!(next.as_str());
        }
        ResponseTemplate::new(200).set_body_json(json!({ "d": d }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> reqwest::Client {
        reqwest::Client::new()
    }

    async fn get(fake: &FakeSap, path_and_query: &str) -> (u16, Value) {
        let response = client()
            .get(format!("{}{path_and_query}", fake.server.uri()))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn pages_with_an_absolute_next_link_that_keeps_the_query() {
        let fake = FakeSap::start().await;
        let (status, first) = get(
            &fake,
            "/sap/opu/odata/sap/API_BUSINESS_PARTNER/A_BusinessPartner?$format=json",
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(first["d"]["results"].as_array().unwrap().len(), 2);
        let next = first["d"]["__next"].as_str().unwrap();
        assert_eq!(
            next,
            format!(
                "{}/sap/opu/odata/sap/API_BUSINESS_PARTNER/A_BusinessPartner?%24format=json&%24skiptoken=2",
                fake.server.uri()
            )
        );
        assert_eq!(
            first["d"]["results"][0]["to_BusinessPartnerAddress"]["__deferred"]["uri"],
            format!(
                "{}/sap/opu/odata/sap/API_BUSINESS_PARTNER/A_BusinessPartner('1000042')/to_BusinessPartnerAddress",
                fake.server.uri()
            )
        );
        let (_, last) = get(
            &fake,
            &next[fake.server.uri().len()..]
                .replace("%24", "$")
                .replace("skiptoken=2", "skiptoken=4"),
        )
        .await;
        assert_eq!(last["d"]["results"][0]["BusinessPartner"], "1000078");
        assert!(last["d"].get("__next").is_none());
    }

    #[tokio::test]
    async fn the_change_filter_compares_date_and_time_together() {
        let fake = FakeSap::start().await;
        let cursor = format!("{}PT14H04M56S", sap_date("2026-10-01"));
        let (_, body) = get(&fake, &format!(
            "/sap/opu/odata/sap/API_BUSINESS_PARTNER/A_BusinessPartner?$format=json&$expand=to_BusinessPartnerAddress/to_EmailAddress&$filter=LastChangeDate gt datetime'{cursor}'"
        )).await;
        let ids: Vec<&str> = body["d"]["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["BusinessPartner"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["1000043", "1000044"]);
        assert_eq!(
            body["d"]["results"][0]["to_BusinessPartnerAddress"]["results"][0]["to_EmailAddress"]["results"]
                [0]["EmailAddress"],
            "info@weber-soehne.example.de"
        );
        assert_eq!(
            fake.shared.filters(),
            [format!(
                "API_BUSINESS_PARTNER/A_BusinessPartner LastChangeDate gt datetime'{cursor}'"
            )]
        );
    }

    #[tokio::test]
    async fn stock_type_filter_and_errors() {
        let fake = FakeSap::start().await;
        let (_, body) = get(&fake, "/sap/opu/odata/sap/API_MATERIAL_STOCK_SRV/A_MatlStkInAcctMod?$format=json&$filter=InventoryStockType eq '01'").await;
        assert_eq!(body["d"]["results"].as_array().unwrap().len(), 2);
        assert!(
            body["d"]["__next"]
                .as_str()
                .unwrap()
                .ends_with("%24skiptoken=2")
        );
        let (status, error) = get(&fake, "/sap/opu/odata/sap/API_BUSINESS_PARTNER/A_Supplier?$format=json&$filter=Nonsense eq 'x'").await;
        assert_eq!(status, 400);
        assert_eq!(
            error["error"]["message"]["value"],
            "Property Nonsense not found"
        );
        let unauthorized = client()
            .get(format!(
                "{}/sap/opu/odata/sap/API_BUSINESS_PARTNER/A_Supplier?$format=json",
                fake.server.uri()
            ))
            .basic_auth(USER, Some("wrong"))
            .send()
            .await
            .unwrap();
        assert_eq!(unauthorized.status().as_u16(), 401);
    }
}
