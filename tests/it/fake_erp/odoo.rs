//! A fake Odoo JSON-RPC endpoint (`POST /jsonrpc`, `execute_kw` → `search_read`) over
//! `res.partner`, `sale.order`, `sale.order.line`, `stock.quant` and `product.supplierinfo`.
//!
//! Like Odoo it checks database, uid and password in the first three `execute_kw` arguments
//! and answers a wrong one with HTTP 200 and a JSON-RPC `error` member (AccessDenied); it
//! evaluates the domain (a list of `[field, op, value]` triples, all of which must hold, with
//! `>`, `=` and `!=`), orders by `write_date` then `id`, applies `offset` and `limit` from the
//! keyword arguments and returns only the requested fields plus `id`, with `false` for empty
//! values. Related-field conditions such as `location_id.usage` are answered from the
//! record's hidden `__related` member, which never leaves the fake.

use serde_json::{Map, Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::{Shared, text};

pub const DB: &str = "conflux-erp";
pub const UID: i64 = 2;
pub const PASSWORD: &str = "odoo-api-key";
const RELATED: &str = "__related";

pub struct OdooState {
    /// Model name → records, each with every field.
    pub models: Vec<(String, Vec<Value>)>,
}

impl OdooState {
    pub fn model(&mut self, name: &str) -> &mut Vec<Value> {
        &mut self
            .models
            .iter_mut()
            .find(|(model, _)| model == name)
            .unwrap_or_else(|| panic!("the fake has no model {name}"))
            .1
    }
}

pub struct FakeOdoo {
    pub server: MockServer,
    pub shared: Shared<OdooState>,
}

impl FakeOdoo {
    pub async fn start() -> FakeOdoo {
        let server = MockServer::start().await;
        let shared = Shared::new(OdooState {
            models: vec![
                ("res.partner".to_string(), partners()),
                ("sale.order".to_string(), sale_orders()),
                ("sale.order.line".to_string(), sale_order_lines()),
                ("stock.quant".to_string(), stock_quants()),
                ("product.supplierinfo".to_string(), supplier_infos()),
            ],
        });
        Mock::given(method("POST"))
            .and(path("/jsonrpc"))
            .respond_with(OdooResponder {
                shared: shared.clone(),
            })
            .mount(&server)
            .await;
        FakeOdoo { server, shared }
    }
}

fn partner(id: i64, name: &str, company: bool, email: &str, phone: &str, written: &str) -> Value {
    json!({
        "id": id,
        "name": name,
        "is_company": company,
        "company_type": if company { "company" } else { "person" },
        "parent_id": false,
        "email": email,
        "phone": phone,
        "street": "Wallstraße 9",
        "street2": false,
        "city": "Dresden",
        "state_id": [14, "Sachsen (DE)"],
        "zip": "01067",
        "country_id": [57, "Germany"],
        "vat": false,
        "create_date": "2021-04-08 09:12:44",
        "write_date": written
    })
}

pub fn partners() -> Vec<Value> {
    vec![
        partner(
            7,
            "Richter Feinkost OHG",
            true,
            "einkauf@richter-feinkost.example.de",
            "+49 351 1234567",
            "2026-10-01 08:00:00",
        ),
        partner(
            8,
            "Sommer Textil AG",
            true,
            "einkauf@sommer-textil.example.com",
            "+49 351 7654321",
            "2026-10-01 09:00:00",
        ),
        partner(
            21,
            "Paula Neumann",
            false,
            "paula.neumann@example.net",
            "+49 351 5550001",
            "2026-10-02 10:00:00",
        ),
        // A vendor: it has an e-mail of its own and supplies, never buys.
        partner(
            31,
            "Fluidtechnik Rhein GmbH",
            true,
            "vertrieb@fluidtechnik-rhein.example.de",
            "+49 221 5550100",
            "2026-09-01 10:00:00",
        ),
    ]
}

pub fn sale_orders() -> Vec<Value> {
    vec![
        json!({"id": 42, "name": "S00042", "partner_id": [7, "Richter Feinkost OHG"], "date_order": "2026-10-28 13:05:51", "state": "sale", "currency_id": [1, "EUR"], "amount_untaxed": 1830.0, "amount_total": 2177.7, "order_line": [421, 422], "write_date": "2026-10-28 13:06:02"}),
        json!({"id": 43, "name": "S00043", "partner_id": [21, "Paula Neumann"], "date_order": "2026-10-29 09:00:00", "state": "draft", "currency_id": [1, "EUR"], "amount_untaxed": 185.0, "amount_total": 220.15, "order_line": [431, 432], "write_date": "2026-10-29 09:01:00"}),
    ]
}

/// A `sale.order.line` as search_read returns it: `product_uom_qty` ordered, `qty_delivered`
/// shipped so far, amounts as JSON floats, `name` the description printed on the order.
fn line(
    id: i64,
    order: (i64, &str),
    product: Value,
    (quantity, price): (f64, f64),
    written: &str,
    display_type: Value,
) -> Value {
    let name = match &product {
        Value::Array(p) => p[1].clone(),
        _ => json!("Zubehör"),
    };
    json!({"id": id, "order_id": [order.0, order.1], "sequence": 10, "product_id": product, "name": name, "product_uom_id": [1, "Units"], "product_uom_qty": quantity, "qty_delivered": 0.0, "price_unit": price, "price_subtotal": quantity * price, "display_type": display_type, "write_date": written})
}

pub fn sale_order_lines() -> Vec<Value> {
    vec![
        line(
            421,
            (42, "S00042"),
            json!([140, "[SKU-140] Drucksensor DS-10 bar"]),
            (6.0, 185.0),
            "2026-10-28 13:06:02",
            json!(false),
        ),
        line(
            422,
            (42, "S00042"),
            json!([110, "[SKU-110] Rillenkugellager 6204-2RS"]),
            (40.0, 18.0),
            "2026-10-28 13:06:02",
            json!(false),
        ),
        // A section heading: the connector's domain leaves it out.
        line(
            431,
            (43, "S00043"),
            json!(false),
            (0.0, 0.0),
            "2026-10-29 09:01:00",
            json!("line_section"),
        ),
        line(
            432,
            (43, "S00043"),
            json!([140, "[SKU-140] Drucksensor DS-10 bar"]),
            (1.0, 185.0),
            "2026-10-29 09:01:00",
            json!(false),
        ),
    ]
}

fn quant(
    id: i64,
    product: Value,
    location: (i64, &str, &str),
    quantity: f64,
    reserved: f64,
) -> Value {
    json!({"id": id, "product_id": product, "location_id": [location.0, location.1], "quantity": quantity, "reserved_quantity": reserved, "write_date": "2026-11-20 06:00:00", RELATED: {"location_id.usage": location.2}})
}

pub fn stock_quants() -> Vec<Value> {
    vec![
        quant(
            301,
            json!([140, "[SKU-140] Drucksensor DS-10 bar"]),
            (8, "WH/Stock", "internal"),
            4.0,
            1.0,
        ),
        quant(
            302,
            json!([110, "[SKU-110] Rillenkugellager 6204-2RS"]),
            (8, "WH/Stock", "internal"),
            500.0,
            0.0,
        ),
        // Goods at the customer's: not stock of ours, filtered out by the domain.
        quant(
            303,
            json!([140, "[SKU-140] Drucksensor DS-10 bar"]),
            (5, "Partners/Customers", "customer"),
            -6.0,
            0.0,
        ),
    ]
}

pub fn supplier_infos() -> Vec<Value> {
    vec![
        json!({"id": 11, "partner_id": [31, "Fluidtechnik Rhein GmbH"], "product_tmpl_id": [140, "[SKU-140] Drucksensor DS-10 bar"], "min_qty": 5.0, "price": 120.0, "currency_id": [1, "EUR"], "delay": 14, "write_date": "2026-09-01 10:00:00"}),
    ]
}

fn rpc_error(name: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "jsonrpc": "2.0",
        "id": 1,
        "error": {
            "code": 200,
            "message": "Odoo Server Error",
            "data": {"name": name, "debug": "Traceback (most recent call last): ...", "message": message, "arguments": [message], "context": {}}
        }
    }))
}

fn field_value<'a>(record: &'a Value, field: &str) -> Option<&'a Value> {
    if field.contains('.') {
        return record.get(RELATED)?.get(field);
    }
    record.get(field)
}

/// Whether `record` satisfies one `[field, op, value]` condition; `Err` for a malformed one.
fn holds(record: &Value, condition: &Value) -> Result<bool, String> {
    let (Some(field), Some(op), Some(value)) = (
        condition.get(0).and_then(Value::as_str),
        condition.get(1).and_then(Value::as_str),
        condition.get(2),
    ) else {
        return Err(format!("Invalid leaf {condition}"));
    };
    let actual = field_value(record, field)
        .cloned()
        .unwrap_or(Value::Bool(false));
    Ok(match op {
        "=" => actual == *value,
        "!=" => actual != *value,
        ">" => match (actual.as_str(), value.as_str()) {
            (Some(actual), Some(value)) => actual > value,
            _ => return Err(format!("Invalid value {value} for {field} >")),
        },
        other => return Err(format!("Invalid operator {other:?}")),
    })
}

struct OdooResponder {
    shared: Shared<OdooState>,
}

impl Respond for OdooResponder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let Ok(body) = request.body_json::<Value>() else {
            return rpc_error("werkzeug.exceptions.BadRequest", "Invalid JSON data");
        };
        let params = &body["params"];
        if params["service"] != "object" || params["method"] != "execute_kw" {
            return rpc_error(
                "builtins.NotImplementedError",
                "only object.execute_kw is served",
            );
        }
        let args = params["args"].as_array().cloned().unwrap_or_default();
        // Odoo casts the uid with int(), so "2" and 2 both log in.
        let uid = args
            .get(1)
            .and_then(|uid| uid.as_i64().or_else(|| uid.as_str()?.parse().ok()));
        if args.first().and_then(Value::as_str) != Some(DB)
            || uid != Some(UID)
            || args.get(2).and_then(Value::as_str) != Some(PASSWORD)
        {
            return rpc_error("odoo.exceptions.AccessDenied", "Access Denied");
        }
        let (Some(model), Some("search_read")) = (
            args.get(3).and_then(Value::as_str),
            args.get(4).and_then(Value::as_str),
        ) else {
            return rpc_error("builtins.NotImplementedError", "only search_read is served");
        };
        let domain = args
            .get(5)
            .and_then(|a| a.get(0))
            .cloned()
            .unwrap_or(json!([]));
        let kwargs = args.get(6).cloned().unwrap_or(json!({}));
        self.shared.log_filter(model, &domain.to_string());
        let mut state = self.shared.state();
        let Some((_, records)) = state.models.iter_mut().find(|(name, _)| name == model) else {
            return rpc_error("builtins.KeyError", &format!("'{model}'"));
        };
        let mut selected = Vec::new();
        for record in records.iter() {
            let mut keep = true;
            for condition in domain.as_array().cloned().unwrap_or_default() {
                match holds(record, &condition) {
                    Ok(holds) => keep &= holds,
                    Err(message) => return rpc_error("builtins.ValueError", &message),
                }
            }
            if keep {
                selected.push(record.clone());
            }
        }
        selected.sort_by(|a, b| {
            (text(a, "write_date"), a["id"].as_i64())
                .cmp(&(text(b, "write_date"), b["id"].as_i64()))
        });
        let offset = kwargs["offset"].as_u64().unwrap_or(0) as usize;
        let limit = kwargs["limit"]
            .as_u64()
            .map_or(usize::MAX, |limit| limit as usize);
        let fields: Vec<String> = kwargs["fields"]
            .as_array()
            .map(|fields| {
                fields
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let result: Vec<Value> = selected
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|record| {
                let mut out = Map::new();
                out.insert("id".to_string(), record["id"].clone());
                for field in &fields {
                    out.insert(
                        field.clone(),
                        record.get(field).cloned().unwrap_or(Value::Bool(false)),
                    );
                }
                Value::Object(out)
            })
            .collect();
        ResponseTemplate::new(200)
            .set_body_json(json!({"jsonrpc": "2.0", "id": body["id"], "result": result}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(password: &str, model: &str, domain: Value, offset: u64, limit: u64) -> Value {
        json!({"jsonrpc": "2.0", "method": "call", "id": 1, "params": {
            "service": "object", "method": "execute_kw",
            "args": [DB, "2", password, model, "search_read", [domain], {"fields": ["name", "write_date"], "offset": offset, "limit": limit}]
        }})
    }

    async fn post(fake: &FakeOdoo, body: Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/jsonrpc", fake.server.uri()))
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    #[tokio::test]
    async fn a_wrong_password_is_a_200_with_an_error_member() {
        let fake = FakeOdoo::start().await;
        let (status, body) = post(&fake, call("wrong", "res.partner", json!([]), 0, 10)).await;
        assert_eq!(status, 200);
        assert_eq!(body["error"]["message"], "Odoo Server Error");
        assert_eq!(body["error"]["data"]["message"], "Access Denied");
        assert!(body.get("result").is_none());
    }

    #[tokio::test]
    async fn pages_by_offset_and_limit_and_filters_by_domain() {
        let fake = FakeOdoo::start().await;
        let domain = json!([["write_date", ">", "2026-09-30 00:00:00"]]);
        let (_, first) = post(&fake, call(PASSWORD, "res.partner", domain.clone(), 0, 2)).await;
        assert_eq!(
            first["result"],
            json!([
                {"id": 7, "name": "Richter Feinkost OHG", "write_date": "2026-10-01 08:00:00"},
                {"id": 8, "name": "Sommer Textil AG", "write_date": "2026-10-01 09:00:00"}
            ])
        );
        let (_, second) = post(&fake, call(PASSWORD, "res.partner", domain, 2, 2)).await;
        assert_eq!(second["result"].as_array().unwrap().len(), 1);
        assert_eq!(second["result"][0]["id"], 21);
        let (_, quants) = post(
            &fake,
            call(
                PASSWORD,
                "stock.quant",
                json!([["location_id.usage", "=", "internal"]]),
                0,
                10,
            ),
        )
        .await;
        let ids: Vec<i64> = quants["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, [301, 302]);
        assert!(quants["result"][0].get(RELATED).is_none());
        assert_eq!(
            fake.shared.filters()[0],
            r#"res.partner [["write_date",">","2026-09-30 00:00:00"]]"#
        );
    }
}
