//! `kind = "http"` connectors through the whole pipeline: an OData v2 service paged with
//! `d.__next`, synced incrementally — the second run asks only for what changed since the
//! committed cursor.

use conflux::pipeline;
use wiremock::matchers::{method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::{load, project_with, read_feed};

const CONFIG: &str = r#"
[store]
url = "sqlite://.conflux/http.db"

[feed]
sink = "file"
path = ".conflux/feed.ndjson"

[identity]
match_on = ["email"]

[[job]]
name = "sap"
sync = ["sap"]
"#;

const MAPPING: &str = r#"
entity = "customer"

[fields]
source_id = "BusinessPartner"
name = "BusinessPartnerFullName"
email = { path = "EmailAddress", transforms = ["email"] }
updated_at = "LastChangeDateTime"
"#;

fn connector(base_url: &str) -> String {
    format!(
        r#"
kind = "http"
system = "sap"
base_url = "{base_url}"
auth = {{ type = "basic", username = "CONFLUX", password = "s3cret-pw" }}
retry = {{ max_elapsed = "2s" }}

[[stream]]
name = "partners"
path = "/sap/opu/odata/sap/API_BUSINESS_PARTNER/A_BusinessPartner"
query = {{ "$format" = "json" }}
records = "d.results"
paging = {{ type = "next_link", next = "d.__next" }}
incremental = {{ fields = ["LastChangeDateTime"], param = "$filter", template = "LastChangeDateTime gt datetimeoffset'{{cursor}}'" }}
mapping = "sap.partner"
"#
    )
}

fn partner(id: &str, name: &str, email: &str, changed: &str) -> serde_json::Value {
    serde_json::json!({
        "__metadata": { "type": "API_BUSINESS_PARTNER.A_BusinessPartnerType" },
        "BusinessPartner": id,
        "BusinessPartnerFullName": name,
        "EmailAddress": email,
        "LastChangeDateTime": changed,
    })
}

#[tokio::test]
async fn an_odata_stream_pages_by_next_link_and_the_second_run_asks_only_for_changes() {
    let server = MockServer::start().await;
    let base = server.uri();
    let entity = "/sap/opu/odata/sap/API_BUSINESS_PARTNER/A_BusinessPartner";
    // First run: no filter, two pages joined by an absolute __next link.
    Mock::given(method("GET"))
        .and(path(entity))
        .and(query_param_is_missing("$filter"))
        .and(query_param_is_missing("$skiptoken"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "d": {
                "results": [
                    partner("1000001", "Müller GmbH", "einkauf@mueller.example.de", "2024-05-01T08:00:00Z"),
                    partner("1000002", "Böhm KG", "info@boehm.example.de", "2024-05-02T09:30:00Z"),
                ],
                "__next": format!("{base}{entity}?$format=json&$skiptoken=2"),
            }
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(entity))
        .and(query_param("$skiptoken", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "d": { "results": [
                partner("1000003", "Weber & Söhne", "info@weber.example.de", "2024-05-03T10:00:00Z"),
            ] }
        })))
        .expect(1)
        .mount(&server)
        .await;
    // Second run: only records changed after the committed cursor.
    Mock::given(method("GET"))
        .and(path(entity))
        .and(query_param(
            "$filter",
            "LastChangeDateTime gt datetimeoffset'2024-05-03T10:00:00Z'",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "d": { "results": [
                partner("1000002", "Böhm Elektrotechnik KG", "info@boehm.example.de", "2024-06-01T12:00:00Z"),
            ] }
        })))
        .expect(1)
        .mount(&server)
        .await;

    let project = project_with(&[
        ("config/http.toml", CONFIG.as_bytes()),
        ("connectors/sap.toml", connector(&base).as_bytes()),
        ("mappings/sap.partner.toml", MAPPING.as_bytes()),
    ]);
    let config = load(project.path(), "config/http.toml");
    let first = pipeline::run(&config, None).await.unwrap();
    assert_eq!(first.records_read, 3);
    assert_eq!(first.profiles_created, 3);

    let store = pipeline::open_store(&config).await.unwrap();
    assert_eq!(
        store.cursor("sap", "partners").await.unwrap().as_deref(),
        Some("2024-05-03T10:00:00Z"),
        "the cursor is the maximum change stamp, committed with the stream's last batch"
    );

    let second = pipeline::run(&config, None).await.unwrap();
    assert_eq!(second.records_read, 1);
    assert_eq!(second.records_updated, 1);
    assert_eq!((second.profiles_created, second.profiles_updated), (0, 1));
    assert_eq!(
        store.cursor("sap", "partners").await.unwrap().as_deref(),
        Some("2024-06-01T12:00:00Z")
    );
    let feed = read_feed(&project.path().join(".conflux/feed.ndjson"));
    assert_eq!(feed.len(), 4);
    assert_eq!(
        feed[3]["data"]["golden"]["full_name"],
        "Böhm Elektrotechnik KG"
    );
    server.verify().await;
}

#[tokio::test]
async fn a_failing_stream_keeps_its_cursor_and_the_next_run_resumes_there() {
    let server = MockServer::start().await;
    let base = server.uri();
    let entity = "/sap/opu/odata/sap/API_BUSINESS_PARTNER/A_BusinessPartner";
    Mock::given(method("GET"))
        .and(path(entity))
        .respond_with(ResponseTemplate::new(503).set_body_string("maintenance"))
        .up_to_n_times(100)
        .mount(&server)
        .await;

    let project = project_with(&[
        ("config/http.toml", CONFIG.as_bytes()),
        ("connectors/sap.toml", connector(&base).as_bytes()),
        ("mappings/sap.partner.toml", MAPPING.as_bytes()),
    ]);
    let config = load(project.path(), "config/http.toml");
    let error = pipeline::run(&config, None).await.unwrap_err().to_string();
    assert!(error.contains("503"), "{error}");
    assert!(!error.contains("s3cret-pw"), "no credentials in {error}");
    let store = pipeline::open_store(&config).await.unwrap();
    assert_eq!(store.cursor("sap", "partners").await.unwrap(), None);

    server.reset().await;
    Mock::given(method("GET"))
        .and(path(entity))
        .and(query_param_is_missing("$filter"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "d": { "results": [ partner("1000001", "Müller GmbH", "einkauf@mueller.example.de", "2024-05-01T08:00:00Z") ] }
        })))
        .expect(1)
        .mount(&server)
        .await;
    let summary = pipeline::run(&config, None).await.unwrap();
    assert_eq!(summary.profiles_created, 1);
    assert_eq!(
        store.cursor("sap", "partners").await.unwrap().as_deref(),
        Some("2024-05-01T08:00:00Z")
    );
}

#[test]
fn validate_reports_every_mistake_of_an_http_connector_with_its_position() {
    let bad = r#"kind = "http"
base_url = "ftp://erp.example.com"

[[stream]]
name = "partners"
path = "A_BusinessPartner"
paging = { type = "next_lnk", next = "d.__next" }
mapping = "sap.partnr"
"#;
    let project = project_with(&[
        ("config/http.toml", CONFIG.as_bytes()),
        ("connectors/sap.toml", bad.as_bytes()),
        ("mappings/sap.partner.toml", MAPPING.as_bytes()),
    ]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_conflux"))
        .args(["validate", "--config", "config/http.toml"])
        .current_dir(project.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("connectors/sap.toml:7:") && stderr.contains("next_lnk"),
        "{stderr}"
    );
    // A file whose shape is wrong is reported by shape first; fixing it reveals the rest.
    let shaped = bad.replace("next_lnk", "next_link");
    std::fs::write(project.path().join("connectors/sap.toml"), shaped).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_conflux"))
        .args(["validate", "--config", "config/http.toml"])
        .current_dir(project.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(".toml:")).collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    let xml_without_records = format!(
        "{}\n[[stream]]\nname = \"soap\"\npath = \"/soap\"\nformat = \"xml\"\nmapping = \"sap.partner\"\n",
        connector("http://127.0.0.1:9")
    );
    let other = project_with(&[
        ("config/http.toml", CONFIG.as_bytes()),
        ("connectors/sap.toml", xml_without_records.as_bytes()),
        ("mappings/sap.partner.toml", MAPPING.as_bytes()),
    ]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_conflux"))
        .args(["validate", "--config", "config/http.toml"])
        .current_dir(other.path())
        .output()
        .unwrap();
    let xml_error = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{xml_error}");
    assert!(
        xml_error.contains("format \"xml\" needs records"),
        "{xml_error}"
    );
    assert!(
        lines[0].starts_with("connectors/sap.toml:2:") && lines[0].contains("http://"),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with("connectors/sap.toml:6:") && lines[1].contains("must start with /"),
        "{stderr}"
    );
    assert!(
        lines[2].starts_with("connectors/sap.toml:8:") && lines[2].contains("sap.partner"),
        "{stderr}"
    );
}

#[tokio::test]
async fn check_connections_probes_each_stream_and_the_bus_and_fails_on_an_unreachable_one() {
    let server = MockServer::start().await;
    let entity = "/sap/opu/odata/sap/API_BUSINESS_PARTNER/A_BusinessPartner";
    Mock::given(method("GET"))
        .and(path(entity))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "d": { "results": [ partner("1000001", "Müller GmbH", "einkauf@mueller.example.de", "2024-05-01T08:00:00Z") ] }
        })))
        .expect(1)
        .mount(&server)
        .await;
    let amqp_config = CONFIG.replace(
        "sink = \"file\"\npath = \".conflux/feed.ndjson\"",
        "sink = \"amqp\"\namqp = { url = \"amqp://guest:s3cret-pw@127.0.0.1:1/%2f\" }",
    );
    let project = project_with(&[
        ("config/http.toml", amqp_config.as_bytes()),
        ("connectors/sap.toml", connector(&server.uri()).as_bytes()),
        ("mappings/sap.partner.toml", MAPPING.as_bytes()),
    ]);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_conflux"))
        .args([
            "validate",
            "--check-connections",
            "--config",
            "config/http.toml",
        ])
        .current_dir(project.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("ok     stream sap/partners: first page has 1 records"),
        "{stdout}"
    );
    let feed_line = stdout.lines().find(|l| l.contains("feed amqp://")).unwrap();
    assert!(feed_line.starts_with("FAILED "), "{stdout}");
    assert!(!stdout.contains("s3cret-pw"), "no password in {stdout}");
    assert!(
        !std::path::Path::new(&project.path().join(".conflux")).exists(),
        "probing writes nothing"
    );
    server.verify().await;
}
