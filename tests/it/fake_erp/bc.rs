//! A fake Business Central online: the Microsoft Entra ID token endpoint and the API v2.0
//! resources `customers`, `salesOrders` (with `salesOrderLines` when `$expand`ed), `items` and
//! `vendors` of one company.
//!
//! Like the real service it hands out a bearer token for a client-credentials form POST with
//! the right client id, secret and scope, answers 401 to any API call without that token,
//! wraps records in `{"@odata.context": ..., "value": [...]}`, pages by itself
//! ([`PAGE_SIZE`] records, then an absolute `@odata.nextLink` with a `$skiptoken`) and
//! evaluates `$filter=lastModifiedDateTime gt <timestamp>` (the OData V4 literal, unquoted).

use serde_json::{Value, json};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::{Shared, text};

pub const TENANT: &str = "contoso.example";
pub const CLIENT_ID: &str = "2f3c8f00-0000-4000-8000-00000000c11e";
pub const CLIENT_SECRET: &str = "bc-client-secret";
pub const SCOPE: &str = "https://api.businesscentral.dynamics.com/.default";
const ACCESS_TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.fake-bc-token";
pub const COMPANY: &str = "bb6d48b6-0000-4000-8000-0000000000c0";
pub const PAGE_SIZE: usize = 2;

pub struct BcState {
    pub base_uri: String,
    pub customers: Vec<Value>,
    pub sales_orders: Vec<Value>,
    pub items: Vec<Value>,
    pub vendors: Vec<Value>,
    /// How many tokens were issued.
    pub tokens_issued: usize,
}

pub struct FakeBusinessCentral {
    pub server: MockServer,
    pub shared: Shared<BcState>,
}

impl FakeBusinessCentral {
    pub async fn start() -> FakeBusinessCentral {
        let server = MockServer::start().await;
        let shared = Shared::new(BcState {
            base_uri: server.uri(),
            customers: customers(),
            sales_orders: sales_orders(),
            items: items(),
            vendors: vendors(),
            tokens_issued: 0,
        });
        Mock::given(method("POST"))
            .and(path(format!("/{TENANT}/oauth2/v2.0/token")))
            .respond_with(TokenResponder {
                shared: shared.clone(),
            })
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path_regex("^/v2.0/"))
            .respond_with(ApiResponder {
                shared: shared.clone(),
            })
            .mount(&server)
            .await;
        FakeBusinessCentral { server, shared }
    }

    /// The company URL a connector's base_url points at.
    pub fn company_url(&self) -> String {
        format!("{}{}", self.server.uri(), company_path())
    }

    pub fn token_url(&self) -> String {
        format!("{}/{TENANT}/oauth2/v2.0/token", self.server.uri())
    }
}

fn company_path() -> String {
    format!("/v2.0/{TENANT}/production/api/v2.0/companies({COMPANY})")
}

fn customer(
    number: &str,
    name: &str,
    kind: &str,
    email: &str,
    phone: &str,
    modified: &str,
) -> Value {
    json!({
        "id": format!("5d115c9c-44e3-ea11-bb43-0000000{number}"),
        "number": number,
        "displayName": name,
        "type": kind,
        "addressLine1": "Kaiserstraße 12",
        "addressLine2": "",
        "city": "Frankfurt am Main",
        "state": "",
        "country": "DE",
        "postalCode": "60311",
        "phoneNumber": phone,
        "email": email,
        "website": "",
        "salespersonCode": "",
        "balanceDue": 0,
        "creditLimit": 0,
        "taxLiable": true,
        "taxRegistrationNumber": "",
        "currencyId": "00000000-0000-0000-0000-000000000000",
        "currencyCode": "EUR",
        "blocked": " ",
        "lastModifiedDateTime": modified
    })
}

pub fn customers() -> Vec<Value> {
    vec![
        customer(
            "10000",
            "Adatum Corporation",
            "Company",
            "einkauf@adatum.example.com",
            "069 1234567",
            "2026-10-01T07:38:44.293Z",
        ),
        customer(
            "20000",
            "Trey Research",
            "Company",
            "orders@treyresearch.example.com",
            "069 7654321",
            "2026-10-02T09:00:00.000Z",
        ),
        customer(
            "30000",
            "Jonas Becker",
            "Person",
            "jonas.becker@example.org",
            "030 1112223",
            "2026-10-03T12:30:00.000Z",
        ),
    ]
}

fn sales_order(
    number: &str,
    customer: &str,
    status: &str,
    modified: &str,
    lines: &[(&str, f64, f64)],
) -> Value {
    let total: f64 = lines
        .iter()
        .map(|(_, quantity, price)| quantity * price)
        .sum();
    json!({
        "id": format!("f1a2b3c4-0000-0000-0000-0000{number}"),
        "number": number,
        "externalDocumentNumber": "",
        "orderDate": "2026-10-20",
        "customerNumber": customer,
        "currencyCode": "EUR",
        "pricesIncludeTax": false,
        "status": status,
        "fullyShipped": false,
        "totalAmountExcludingTax": total,
        "lastModifiedDateTime": modified,
        "salesOrderLines": lines.iter().enumerate().map(|(index, (item, quantity, price))| json!({
            "id": format!("a0000000-0000-0000-0000-{number}{index}"),
            "sequence": (index + 1) * 10000,
            "lineType": "Item",
            "lineObjectNumber": item,
            "description": format!("Item {item}"),
            "unitOfMeasureCode": "PCS",
            "quantity": quantity,
            "unitPrice": price,
            "amountExcludingTax": quantity * price,
            "shipmentDate": "2026-11-02"
        })).collect::<Vec<_>>()
    })
}

pub fn sales_orders() -> Vec<Value> {
    vec![
        sales_order(
            "101001",
            "10000",
            "Open",
            "2026-10-20T10:00:00.000Z",
            &[("SKU-140", 6.0, 185.0), ("SKU-110", 150.0, 4.5)],
        ),
        sales_order(
            "101002",
            "30000",
            "Draft",
            "2026-10-21T11:00:00.000Z",
            &[("SKU-100", 1.0, 1290.0)],
        ),
    ]
}

fn item(number: &str, inventory: f64, modified: &str) -> Value {
    json!({
        "id": format!("8e3f9b0c-0000-0000-0000-0000000{}", &number[4..]),
        "number": number,
        "displayName": format!("Item {number}"),
        "type": "Inventory",
        "itemCategoryCode": "",
        "blocked": false,
        "gtin": "",
        "inventory": inventory,
        "unitPrice": 10.0,
        "unitCost": 5.0,
        "baseUnitOfMeasureCode": "PCS",
        "lastModifiedDateTime": modified
    })
}

pub fn items() -> Vec<Value> {
    vec![
        item("SKU-100", 0.0, "2026-11-20T06:00:00.000Z"),
        item("SKU-110", 420.0, "2026-11-20T06:00:01.000Z"),
        item("SKU-140", 3.0, "2026-11-20T06:00:02.000Z"),
    ]
}

pub fn vendors() -> Vec<Value> {
    vec![json!({
        "id": "1c7a0d3e-0000-0000-0000-000000020000",
        "number": "V-20000",
        "displayName": "Fluidtechnik Rhein GmbH",
        "addressLine1": "Rheinuferstraße 3",
        "city": "Köln",
        "country": "DE",
        "postalCode": "50668",
        "phoneNumber": "0221 5550100",
        "email": "vertrieb@fluidtechnik-rhein.example.de",
        "taxRegistrationNumber": "DE811222333",
        "currencyCode": "EUR",
        "blocked": " ",
        "lastModifiedDateTime": "2026-09-01T08:00:00.000Z"
    })]
}

struct TokenResponder {
    shared: Shared<BcState>,
}

impl Respond for TokenResponder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let form: Vec<(String, String)> = reqwest::Url::parse(&format!(
            "http://form/?{}",
            String::from_utf8_lossy(&request.body)
        ))
        .map(|url| url.query_pairs().into_owned().collect())
        .unwrap_or_default();
        let field = |name: &str| {
            form.iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        if field("grant_type") != Some("client_credentials")
            || field("client_id") != Some(CLIENT_ID)
            || field("client_secret") != Some(CLIENT_SECRET)
            || field("scope") != Some(SCOPE)
        {
            return ResponseTemplate::new(401).set_body_json(json!({
                "error": "invalid_client",
                "error_description": "AADSTS7000215: Invalid client secret provided."
            }));
        }
        self.shared.state().tokens_issued += 1;
        ResponseTemplate::new(200).set_body_json(json!({
            "token_type": "Bearer",
            "expires_in": 3599,
            "ext_expires_in": 3599,
            "access_token": ACCESS_TOKEN
        }))
    }
}

fn odata_error(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(json!({"error": {"code": code, "message": message}}))
}

struct ApiResponder {
    shared: Shared<BcState>,
}

impl Respond for ApiResponder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let bearer = format!("Bearer {ACCESS_TOKEN}");
        if request
            .headers
            .get("authorization")
            .is_none_or(|value| value != bearer.as_str())
        {
            return odata_error(
                401,
                "Authentication_InvalidCredentials",
                "The server has rejected the client credentials.",
            );
        }
        let Some(resource) = request
            .url
            .path()
            .strip_prefix(&format!("{}/", company_path()))
            .map(str::to_string)
        else {
            return odata_error(404, "BadRequest_NotFound", "The company does not exist.");
        };
        let query: Vec<(String, String)> = request.url.query_pairs().into_owned().collect();
        let param = |name: &str| {
            query
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        let state = self.shared.state();
        let records = match resource.as_str() {
            "customers" => &state.customers,
            "salesOrders" => &state.sales_orders,
            "items" => &state.items,
            "vendors" => &state.vendors,
            other => {
                return odata_error(
                    404,
                    "BadRequest_NotFound",
                    &format!("No HTTP resource was found that matches the request URI '{other}'."),
                );
            }
        };
        let after = match param("$filter") {
            Some(filter) => {
                self.shared.log_filter(&resource, &filter);
                match filter.strip_prefix("lastModifiedDateTime gt ") {
                    Some(timestamp) if timestamp.parse::<jiff::Timestamp>().is_ok() => {
                        Some(timestamp.to_string())
                    }
                    _ => {
                        return odata_error(
                            400,
                            "BadRequest",
                            &format!("Invalid filter expression '{filter}'."),
                        );
                    }
                }
            }
            None => None,
        };
        let expand = param("$expand").unwrap_or_default();
        let selected: Vec<Value> = records
            .iter()
            .filter(|record| {
                after
                    .as_deref()
                    .is_none_or(|after| text(record, "lastModifiedDateTime") > after)
            })
            .map(|record| {
                let mut record = record.clone();
                if expand != "salesOrderLines"
                    && let Some(object) = record.as_object_mut()
                {
                    object.remove("salesOrderLines");
                }
                record
            })
            .collect();
        let skip: usize = param("$skiptoken").map_or(0, |token| token.parse().unwrap());
        let page: Vec<Value> = selected
            .iter()
            .skip(skip)
            .take(PAGE_SIZE)
            .cloned()
            .collect();
        let mut body = json!({
            "@odata.context": format!("{}/v2.0/{TENANT}/production/api/v2.0/$metadata#companies({COMPANY})/{resource}", state.base_uri),
            "value": page
        });
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
            body["@odata.nextLink"] = json!(next.as_str());
        }
        ResponseTemplate::new(200).set_body_json(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn token(fake: &FakeBusinessCentral, secret: &str) -> reqwest::Response {
        reqwest::Client::new()
            .post(fake.token_url())
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT_ID),
                ("client_secret", secret),
                ("scope", SCOPE),
            ])
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_api_needs_the_token_of_the_client_credentials_flow() {
        let fake = FakeBusinessCentral::start().await;
        assert_eq!(token(&fake, "wrong").await.status().as_u16(), 401);
        let granted: Value = token(&fake, CLIENT_SECRET).await.json().await.unwrap();
        let access = granted["access_token"].as_str().unwrap();
        let client = reqwest::Client::new();
        let denied = client
            .get(format!("{}/customers", fake.company_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(denied.status().as_u16(), 401);
        let first: Value = client
            .get(format!("{}/customers", fake.company_url()))
            .bearer_auth(access)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(first["value"].as_array().unwrap().len(), 2);
        let next = first["@odata.nextLink"].as_str().unwrap();
        assert_eq!(
            next,
            format!("{}/customers?%24skiptoken=2", fake.company_url())
        );
        let last: Value = client
            .get(next)
            .bearer_auth(access)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(last["value"][0]["number"], "30000");
        assert!(last.get("@odata.nextLink").is_none());
        assert_eq!(fake.shared.state().tokens_issued, 1);
    }

    #[tokio::test]
    async fn filters_on_last_modified_and_expands_lines_only_when_asked() {
        let fake = FakeBusinessCentral::start().await;
        let granted: Value = token(&fake, CLIENT_SECRET).await.json().await.unwrap();
        let access = granted["access_token"].as_str().unwrap();
        let client = reqwest::Client::new();
        let orders: Value = client
            .get(format!("{}/salesOrders", fake.company_url()))
            .query(&[
                (
                    "$filter",
                    "lastModifiedDateTime gt 2026-10-20T10:00:00.000Z",
                ),
                ("$expand", "salesOrderLines"),
            ])
            .bearer_auth(access)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(orders["value"].as_array().unwrap().len(), 1);
        assert_eq!(
            orders["value"][0]["salesOrderLines"][0]["lineObjectNumber"],
            "SKU-100"
        );
        let bare: Value = client
            .get(format!("{}/salesOrders", fake.company_url()))
            .bearer_auth(access)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(bare["value"][0].get("salesOrderLines").is_none());
        let bad = client
            .get(format!("{}/items", fake.company_url()))
            .query(&[("$filter", "lastModifiedDateTime gt yesterday")])
            .bearer_auth(access)
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status().as_u16(), 400);
        assert_eq!(
            fake.shared.filters(),
            [
                "salesOrders lastModifiedDateTime gt 2026-10-20T10:00:00.000Z",
                "items lastModifiedDateTime gt yesterday"
            ]
        );
    }
}
