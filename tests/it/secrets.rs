//! Secrets come from the environment or from secret files (`${file:/path}`) and never appear
//! in what conflux prints: `validate` output, connection checks, error messages and logs at any
//! level. Personal data in log lines at info and above is masked.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::project_with;

const AMQP_PASSWORD: &str = "Amqp-Pw-8731";
const FILE_SECRET: &str = "File-Secret-5521";
const CLIENT_SECRET: &str = "Client-Secret-4409";
const DB_PASSWORD: &str = "Db-Pw-3310";
const ALL: [&str; 4] = [AMQP_PASSWORD, FILE_SECRET, CLIENT_SECRET, DB_PASSWORD];

const CONFIG: &str = r#"
[store]
url = "sqlite://.conflux/secrets.db"

[feed]
sink = "amqp"
retry_budget = "1s"
amqp = { url = "${CONFLUX_AMQP_URL}", exchange = "conflux.secrets.test" }

[[job]]
name = "all"
sync = ["basic", "oauth", "crm"]
"#;

const MAPPING: &str = r#"
entity = "customer"

[fields]
source_id = "id"
name = "name"
email = { path = "email", transforms = ["email"] }
"#;

/// A project whose connectors hold every kind of secret; the secret file is written to an
/// absolute path inside the project.
fn project() -> tempfile::TempDir {
    let project = project_with(&[
        ("config/secrets.toml", CONFIG.as_bytes()),
        ("mappings/erp.customer.toml", MAPPING.as_bytes()),
    ]);
    let secret_file = project.path().join("run-secrets/erp_password");
    std::fs::create_dir_all(secret_file.parent().unwrap()).unwrap();
    std::fs::write(&secret_file, format!("{FILE_SECRET}\n")).unwrap();
    let basic = format!(
        "kind = \"http\"\nbase_url = \"http://127.0.0.1:1\"\nretry = {{ max_elapsed = \"1s\" }}\n\
         auth = {{ type = \"basic\", username = \"conflux\", password = \"${{file:{}}}\" }}\n\n\
         [[stream]]\nname = \"customers\"\npath = \"/customers\"\nmapping = \"erp.customer\"\n",
        secret_file.display()
    );
    let oauth = "kind = \"http\"\nbase_url = \"http://127.0.0.1:1\"\nretry = { max_elapsed = \"1s\" }\n\
         auth = { type = \"oauth2\", token_url = \"http://127.0.0.1:1/token\", client_id = \"conflux\", client_secret = \"${ERP_CS}\" }\n\n\
         [[stream]]\nname = \"customers\"\npath = \"/customers\"\nmapping = \"erp.customer\"\n";
    let crm = "kind = \"sql\"\nurl = \"${CRM_DB}\"\n\n[[stream]]\nname = \"customers\"\n\
         query = \"SELECT id, name, email FROM people\"\nmapping = \"erp.customer\"\n";
    for (name, text) in [("basic", basic.as_str()), ("oauth", oauth), ("crm", crm)] {
        std::fs::write(project.path().join(format!("connectors/{name}.toml")), text).unwrap();
    }
    project
}

fn conflux(project: &Path, log: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_conflux"))
        .args(args)
        .args(["--config", "config/secrets.toml"])
        .current_dir(project)
        .env_remove("CONFLUX_CONFIG")
        .env("CONFLUX_LOG", log)
        .env(
            "CONFLUX_AMQP_URL",
            format!("amqp://app:{AMQP_PASSWORD}@127.0.0.1:1/%2f"),
        )
        .env("ERP_CS", CLIENT_SECRET)
        .env(
            "CRM_DB",
            format!("postgres://app:{DB_PASSWORD}@127.0.0.1:1/crm"),
        )
        .output()
        .unwrap()
}

fn assert_no_secret(output: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for secret in ALL {
        assert!(!text.contains(secret), "{secret} printed:\n{text}");
    }
    text
}

#[test]
fn validate_resolves_secret_files_and_prints_no_secret() {
    let project = project();
    let output = conflux(project.path(), "debug", &["validate"]);
    let text = assert_no_secret(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
}

#[test]
fn failing_connection_checks_print_no_secret() {
    let project = project();
    let output = conflux(
        project.path(),
        "debug",
        &["validate", "--check-connections"],
    );
    let text = assert_no_secret(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("FAILED stream crm/customers"), "{text}");
    assert!(
        text.contains("FAILED feed amqp://app:***@127.0.0.1:1"),
        "{text}"
    );
}

#[test]
fn a_failing_run_prints_no_secret_even_in_debug_logs() {
    let project = project();
    let output = conflux(project.path(), "trace", &["run"]);
    let text = assert_no_secret(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("error:"), "{text}");
}

#[test]
fn a_missing_secret_file_is_named_but_nothing_is_read_into_the_message() {
    let project = project();
    std::fs::remove_file(project.path().join("run-secrets/erp_password")).unwrap();
    let output = conflux(project.path(), "info", &["validate"]);
    let text = assert_no_secret(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("connectors/basic.toml:4:")
            && text.contains("run-secrets/erp_password cannot be read"),
        "{text}"
    );
}

#[test]
fn an_invalid_value_from_the_environment_is_reported_without_its_value() {
    let project = project();
    let output = Command::new(env!("CARGO_BIN_EXE_conflux"))
        .args(["validate", "--config", "config/secrets.toml"])
        .current_dir(project.path())
        .env("CONFLUX_LOG", "debug")
        .env(
            "CONFLUX_AMQP_URL",
            format!("amqp://app:{AMQP_PASSWORD}@127.0.0.1:1/%2f"),
        )
        .env("ERP_CS", CLIENT_SECRET)
        .env("CRM_DB", format!("ftp://app:{DB_PASSWORD}@127.0.0.1:1/crm"))
        .output()
        .unwrap();
    let text = assert_no_secret(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("connectors/crm.toml:2:"), "{text}");
}

#[test]
fn quarantine_warnings_mask_emails_and_phone_numbers() {
    let config = "[store]\nurl = \"sqlite://.conflux/pii.db\"\n\n[feed]\nsink = \"file\"\npath = \".conflux/feed.ndjson\"\n\n[[job]]\nname = \"drops\"\nsync = [\"drops\"]\n";
    let connector = "kind = \"file\"\ndir = \"drops\"\n\n[[stream]]\nname = \"customers\"\npattern = \"*.csv\"\nformat = \"csv\"\nmapping = \"erp.customer\"\n";
    let project = project_with(&[
        ("config/secrets.toml", config.as_bytes()),
        ("connectors/drops.toml", connector.as_bytes()),
        ("mappings/erp.customer.toml", MAPPING.as_bytes()),
        (
            "drops/in.csv",
            b"id,name,email\nc1,Jane Doe,jane.doe@example.com; +49 170 1234589\n",
        ),
    ]);
    let output = conflux(project.path(), "info", &["run"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("Record quarantined."), "{stderr}");
    assert!(
        stderr.contains("j***@example.com; +49********89"),
        "{stderr}"
    );
    assert!(!stderr.contains("jane.doe@example.com"), "{stderr}");
    assert!(!stderr.contains("1234589"), "{stderr}");

    // At debug level the data stays readable for troubleshooting.
    std::fs::remove_dir_all(project.path().join(".conflux")).unwrap();
    let output = conflux(project.path(), "debug", &["run"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("jane.doe@example.com"),
        "warnings are masked whatever the filter: {stderr}"
    );
}
