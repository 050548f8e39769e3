//! The binary as operators use it: exit codes and what it prints.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{project_copy, project_with};

fn conflux(project: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_conflux"))
        .args(args)
        .current_dir(project)
        .env_remove("CONFLUX_CONFIG")
        .env("CONFLUX_LOG", "warn")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_shipped_config_validates() {
    let project = project_copy();
    let configs: Vec<_> = std::fs::read_dir(project.path().join("config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    assert!(
        configs.len() >= 2,
        "config/ ships demo.toml and conflux.toml"
    );
    for config in configs {
        let output = Command::new(env!("CARGO_BIN_EXE_conflux"))
            .args(["validate", "--config"])
            .arg(&config)
            .current_dir(project.path())
            .env("CONFLUX_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{} does not validate:\n{}",
            config.display(),
            text(&output.stderr)
        );
        assert!(text(&output.stdout).contains(": ok ("));
    }
}

#[test]
fn every_shipped_mapping_test_case_passes() {
    let project = project_copy();
    let output = conflux(project.path(), &["test", "--config", "config/demo.toml"]);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    assert!(!stdout.contains("FAILED"), "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("mappings: ") && last.ends_with(" passed, 0 failed"),
        "{last}"
    );
    let passed: usize = last["mappings: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        passed >= 14,
        "every shipped mapping carries cases; {passed} ran"
    );
}

#[test]
fn a_config_with_three_mistakes_reports_all_three_with_positions_and_exits_1() {
    let config = r#"[store]
url = "sqlite://.conflux/x.db"

[feed]
sink = "file"
path = ".conflux/feed.ndjson"
retry_budgt = "10s"

[[job]]
name = "nightly"
schedule = "61 * * * *"
sync = ["drop"]
"#;
    let connector = r#"kind = "file"
dir = "drops"

[[stream]]
name = "customers"
pattern = "*.csv"
format = "csv"
mapping = "drops.customer"
"#;
    let mapping = r#"entity = "customer"

[fields]
source_id = "id"
"#;
    let project = project_with(&[
        ("config/bad.toml", config.as_bytes()),
        ("connectors/drops.toml", connector.as_bytes()),
        ("mappings/drops.customer.toml", mapping.as_bytes()),
    ]);
    let output = conflux(project.path(), &["validate", "--config", "config/bad.toml"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let diagnostics: Vec<&str> = stderr.lines().filter(|l| l.contains(".toml:")).collect();
    assert_eq!(diagnostics.len(), 3, "{stderr}");
    assert!(
        diagnostics[0].starts_with("config/bad.toml:7:1: ")
            && diagnostics[0].contains("retry_budgt")
            && diagnostics[0].contains("retry_budget"),
        "{}",
        diagnostics[0]
    );
    assert!(
        diagnostics[1].starts_with("config/bad.toml:11:") && diagnostics[1].contains("61 * * * *"),
        "{}",
        diagnostics[1]
    );
    assert!(
        diagnostics[2].starts_with("config/bad.toml:12:")
            && diagnostics[2].contains("drop")
            && diagnostics[2].contains("drops"),
        "{}",
        diagnostics[2]
    );
}

#[test]
fn preview_prints_canonical_records_or_the_failing_field() {
    let project = project_copy();
    let ok = conflux(
        project.path(),
        &[
            "preview",
            "--config",
            "config/demo.toml",
            "demo_warehouse.inventory",
            "demo/warehouse/stock.csv",
        ],
    );
    let stdout = text(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{stdout}{}", text(&ok.stderr));
    assert!(stdout.contains("\"entity\": \"inventory\""), "{stdout}");
    assert!(
        stdout.lines().last().unwrap().ends_with(" failed") && stdout.contains(", 0 failed"),
        "{stdout}"
    );

    let sample = project.path().join("bad_stock.csv");
    std::fs::write(
        &sample,
        "sku,location,on_hand,reserved,on_order,as_of\nSKU-1,MUC,lots,0,0,2026-11-01T08:00:00Z\n",
    )
    .unwrap();
    let bad = conflux(
        project.path(),
        &[
            "preview",
            "--config",
            "config/demo.toml",
            "demo_warehouse.inventory",
            "bad_stock.csv",
        ],
    );
    let stdout = text(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("ERROR bad_stock.csv:2")
            && stdout.contains("`on_hand`")
            && stdout.contains("lots"),
        "{stdout}"
    );
}

#[test]
fn run_then_show_a_profile_by_email() {
    let project = project_copy();
    let run = conflux(project.path(), &["run", "--config", "config/demo.toml"]);
    let stdout = text(&run.stdout);
    assert_eq!(run.status.code(), Some(0), "{stdout}{}", text(&run.stderr));
    assert!(
        stdout.contains("profiles:") && stdout.contains("events:"),
        "{stdout}"
    );
    assert!(
        stdout.contains(".conflux/feed.ndjson"),
        "the summary says where the feed went: {stdout}"
    );

    let feed = crate::common::read_feed(&project.path().join(".conflux/feed.ndjson"));
    let email = feed
        .iter()
        .find_map(|e| {
            e["data"]["golden"]["emails"][0]["value"]
                .as_str()
                .map(str::to_owned)
        })
        .expect("some profile has an e-mail");
    let show = conflux(
        project.path(),
        &[
            "profiles",
            "show",
            "--config",
            "config/demo.toml",
            &email.to_uppercase(),
        ],
    );
    let stdout = text(&show.stdout);
    assert_eq!(
        show.status.code(),
        Some(0),
        "{stdout}{}",
        text(&show.stderr)
    );
    assert!(stdout.contains(&email), "{stdout}");

    let missing = conflux(
        project.path(),
        &[
            "profiles",
            "show",
            "--config",
            "config/demo.toml",
            "nobody@example.invalid",
        ],
    );
    assert_eq!(missing.status.code(), Some(1));
}

/// Every TOML example in the README whose first line names its file is a real, valid file.
#[test]
fn the_readme_examples_validate_and_their_mapping_tests_pass() {
    let readme = std::fs::read_to_string(crate::common::repo_root().join("README.md")).unwrap();
    let mut files: Vec<(String, String)> = Vec::new();
    for block in readme.split("```toml\n").skip(1) {
        let body = block.split("```").next().unwrap();
        if let Some(name) = body.lines().next().and_then(|l| l.strip_prefix("# "))
            && name.ends_with(".toml")
            && name.contains('/')
        {
            files.push((name.to_string(), body.to_string()));
        }
    }
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "config/conflux.toml",
            "connectors/sap_idoc.toml",
            "connectors/sap_s4.toml",
            "connectors/erp_db.toml",
            "mappings/sap_idoc.customer.toml"
        ]
    );
    // The example job also syncs an Odoo export; a minimal connector stands in for it.
    let odoo = "kind = \"file\"\nsystem = \"odoo\"\ndir = \"odoo\"\n[[stream]]\nname = \"partners\"\npattern = \"*.json\"\nformat = \"json\"\nmapping = \"sap_idoc.customer\"\n";
    let mut all: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_bytes()))
        .collect();
    all.push(("connectors/odoo_export.toml", odoo.as_bytes()));
    let project = project_with(&all);
    for command in ["validate", "test"] {
        let output = Command::new(env!("CARGO_BIN_EXE_conflux"))
            .args([command, "--config", "config/conflux.toml"])
            .current_dir(project.path())
            .env("CONFLUX_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "README example fails `{command}`:\n{}{}",
            text(&output.stdout),
            text(&output.stderr)
        );
    }
}
