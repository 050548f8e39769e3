//! A source answering 500s for longer than its retry budget: the run fails naming the stream
//! and the status, the stream's cursor does not move (pages before the failure are committed
//! and re-read idempotently, never counted twice), other streams of the run flow, and the
//! next run catches up to exactly the state of a run that never failed.

use conflux::pipeline;
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::SERIAL;
use crate::common::{load, project_with, read_feed};

const CONFIG: &str = r#"
[store]
url = "sqlite://.conflux/faults.db"

[feed]
sink = "file"
path = ".conflux/feed.ndjson"

[identity]
match_on = ["email"]

[[job]]
name = "all"
sync = ["crm", "sap"]
"#;

const SAP_MAPPING: &str = r#"
entity = "customer"

[fields]
source_id = "BusinessPartner"
name = "BusinessPartnerFullName"
email = { path = "EmailAddress", transforms = ["email"] }
updated_at = "LastChangeDateTime"
"#;

const CRM_CONNECTOR: &str = r#"
kind = "file"
system = "crm"
dir = "drops"

[[stream]]
name = "contacts"
pattern = "*.csv"
format = "csv"
mapping = "crm.contact"
"#;

const CRM_MAPPING: &str = r#"
entity = "customer"

[fields]
source_id = "id"
name = "name"
email = { path = "email", transforms = ["email"] }
"#;

const ENTITY: &str = "/sap/opu/odata/sap/API_BUSINESS_PARTNER/A_BusinessPartner";

fn sap_connector(base_url: &str) -> String {
    format!(
        r#"
kind = "http"
system = "sap"
base_url = "{base_url}"
retry = {{ max_elapsed = "1s" }}

[[stream]]
name = "partners"
path = "{ENTITY}"
query = {{ "$format" = "json" }}
records = "d.results"
paging = {{ type = "next_link", next = "d.__next" }}
incremental = {{ fields = ["LastChangeDateTime"], param = "$filter", template = "LastChangeDateTime gt datetimeoffset'{{cursor}}'" }}
mapping = "sap.partner"
"#
    )
}

fn partner(id: u32) -> serde_json::Value {
    serde_json::json!({
        "BusinessPartner": format!("{}", 1_000_000 + id),
        "BusinessPartnerFullName": format!("Partner {id} GmbH"),
        "EmailAddress": format!("partner{id}@example.com"),
        "LastChangeDateTime": format!("2024-05-{:02}T08:00:00Z", id),
    })
}

/// Page 1 (partners 1–3) links to page 2 (partners 4–5).
async fn serve_page_one(server: &MockServer) {
    let next = format!("{}{ENTITY}?$format=json&$skiptoken=2", server.uri());
    Mock::given(method("GET"))
        .and(path(ENTITY))
        .and(wiremock::matchers::query_param_is_missing("$skiptoken"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "d": { "results": [partner(1), partner(2), partner(3)], "__next": next }
        })))
        .mount(server)
        .await;
}

async fn serve_page_two(server: &MockServer, status: u16) {
    let response = if status == 200 {
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "d": { "results": [partner(4), partner(5)] }
        }))
    } else {
        ResponseTemplate::new(status).set_body_string("internal error")
    };
    Mock::given(method("GET"))
        .and(path(ENTITY))
        .and(query_param("$skiptoken", "2"))
        .respond_with(response)
        .mount(server)
        .await;
}

fn project(base_url: &str) -> tempfile::TempDir {
    project_with(&[
        ("config/faults.toml", CONFIG.as_bytes()),
        ("connectors/sap.toml", sap_connector(base_url).as_bytes()),
        ("connectors/crm.toml", CRM_CONNECTOR.as_bytes()),
        ("mappings/sap.partner.toml", SAP_MAPPING.as_bytes()),
        ("mappings/crm.contact.toml", CRM_MAPPING.as_bytes()),
        (
            "drops/contacts.csv",
            b"id,name,email\nc1,Anna Berg,anna@example.com\nc2,Partner 5,partner5@example.com\n",
        ),
    ])
}

#[tokio::test]
async fn a_source_failing_past_its_retry_budget_fails_the_run_and_the_next_catches_up() {
    let _serial = SERIAL.lock().await;
    let server = MockServer::start().await;
    serve_page_one(&server).await;
    serve_page_two(&server, 500).await;
    let project = project(&server.uri());
    let config = load(project.path(), "config/faults.toml");
    let store = pipeline::open_store(&config).await.unwrap();

    let error = pipeline::run(&config, None).await.unwrap_err().to_string();
    assert!(error.contains("500"), "{error}");
    assert!(error.contains("partners"), "names the stream: {error}");
    assert_eq!(
        store.cursor("sap", "partners").await.unwrap(),
        None,
        "the cursor moves only with the stream's last page"
    );
    let runs = store.recent_runs(1).await.unwrap();
    assert_eq!(runs[0].status, "failed");
    let feed = read_feed(&project.path().join(".conflux/feed.ndjson"));
    let names: Vec<&str> = feed
        .iter()
        .map(|e| e["data"]["golden"]["full_name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"Anna Berg"),
        "the file stream flowed: {names:?}"
    );
    assert!(
        !names.iter().any(|n| n.contains("Partner 4")),
        "nothing past the failure: {names:?}"
    );

    // The source recovers: the next run reads the stream again from the old cursor.
    server.reset().await;
    serve_page_one(&server).await;
    serve_page_two(&server, 200).await;
    let second = pipeline::run(&config, None).await.unwrap();
    assert_eq!(second.records_read, 5, "the stream, from its old cursor");
    assert_eq!(
        (
            second.records_inserted,
            second.records_updated,
            second.records_unchanged
        ),
        (2, 0, 3),
        "page one was committed by the failed run and is not counted again"
    );
    assert_eq!(
        store.cursor("sap", "partners").await.unwrap().as_deref(),
        Some("2024-05-05T08:00:00Z")
    );

    // The same final state as a run against a source that never failed.
    let healthy = MockServer::start().await;
    serve_page_one(&healthy).await;
    serve_page_two(&healthy, 200).await;
    let reference = self::project(&healthy.uri());
    let reference_config = load(reference.path(), "config/faults.toml");
    pipeline::run(&reference_config, None).await.unwrap();
    let final_of = |root: &std::path::Path| {
        crate::final_contents(&read_feed(&root.join(".conflux/feed.ndjson")))
    };
    assert_eq!(final_of(project.path()), final_of(reference.path()));
    // The failed run published c2 on its own (its batch was committed); the next run linked
    // partner 5 to it as version 2. A single run builds that profile once.
    let versions = |root: &std::path::Path| -> Vec<u64> {
        let mut versions: Vec<u64> =
            crate::final_profiles(&read_feed(&root.join(".conflux/feed.ndjson")))
                .iter()
                .map(|p| {
                    serde_json::from_str::<serde_json::Value>(p).unwrap()["version"]
                        .as_u64()
                        .unwrap()
                })
                .collect();
        versions.sort();
        versions
    };
    assert_eq!(versions(project.path()), vec![1, 1, 1, 1, 1, 2]);
    assert_eq!(versions(reference.path()), vec![1; 6]);
    assert_eq!(
        final_of(project.path()).len(),
        6,
        "Anna, partners 1-4, partner 5 linked to c2 by e-mail"
    );
}
