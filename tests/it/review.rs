//! Probabilistic identities through the real `run` path: a household stays apart while a
//! typo'd duplicate joins; people's review decisions and manual unlinks persist across runs
//! and win over the model; incremental matching ends in the same clusters as one full run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use conflux::pipeline;

use crate::common::{load, project_with, read_feed};

const CONFIG: &str = r#"
[store]
url = "sqlite://.conflux/review.db"

[feed]
sink = "file"
path = ".conflux/feed.ndjson"

[identity]
match_on = ["email"]
"#;

/// The Webers and the Hoffmanns agree on full name and postcode and on nothing that
/// identifies one person: the model is unsure (p ≈ 0.44), and a wide review band leaves such
/// pairs to people.
const STRICT: &str = "review_from = 0.3\n";

const CONNECTOR: &str = r#"
kind = "file"
system = "crm"
dir = "drops"

[[stream]]
name = "contacts"
pattern = "*.csv"
format = "csv"
mapping = "crm.contact"
"#;

const MAPPING: &str = r#"
entity = "customer"

[fields]
source_id = "id"
kind = { value = "person" }
given_name = "given"
family_name = "family"
email = { path = "email", transforms = ["email"] }
phone = { path = "phone", transforms = [{ phone = { region = "DE" } }] }
"address.line1" = "street"
"address.postcode" = "postcode"
"address.city" = "city"
birth_date = { path = "born", transforms = [{ date = "%Y-%m-%d" }] }
"#;

const HEADER: &str = "id,given,family,email,phone,street,postcode,city,born\n";

/// A household (Thomas and Petra Keller share surname, address and landline), a customer
/// and two ambiguous pairs: the Webers and the Hoffmanns share a full name and a city but
/// nothing that identifies one person.
const FIRST: &str = "\
h1,Thomas,Keller,thomas.keller@example.com,030 1111111,Lindenstraße 5,10115,Berlin,1970-03-04
h2,Petra,Keller,petra.k@example.org,030 1111111,Lindenstraße 5,10115,Berlin,1972-11-23
d1,Johanna,Schmidt,johanna.schmidt@example.com,0170 2222222,Gartenweg 12,20095,Hamburg,1985-06-01
r1,Markus,Weber,m.weber@example.com,,Bahnhofstraße 1,80331,München,
r2,Markus,Weber,markus.weber@example.net,,Sendlinger Straße 9,80331,München,
s1,Sabine,Hoffmann,s.hoffmann@example.com,,Hauptstraße 3,50667,Köln,
s2,Sabine,Hoffmann,sabine.hoffmann@example.net,,Domstraße 20,50667,Köln,
";

/// Johanna again from another export: a typo in both names, no e-mail, the same mobile,
/// address and birth date.
const SECOND: &str = "\
d2,Johana,Schmitt,,+49 170 2222222,Gartenweg 12,20095,Hamburg,1985-06-01
";

fn project(identity: &str) -> tempfile::TempDir {
    let config = format!("{CONFIG}{identity}");
    project_with(&[
        ("config/review.toml", config.as_bytes()),
        ("connectors/crm.toml", CONNECTOR.as_bytes()),
        ("mappings/crm.contact.toml", MAPPING.as_bytes()),
    ])
}

fn drop_file(project: &Path, name: &str, rows: &str) {
    std::fs::create_dir_all(project.join("drops")).unwrap();
    std::fs::write(project.join("drops").join(name), format!("{HEADER}{rows}")).unwrap();
}

/// The current clusters, read off the feed: the latest sources of every live profile.
fn clusters(feed_path: &Path) -> BTreeSet<Vec<String>> {
    let mut live: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for event in read_feed(feed_path) {
        for retired in event["data"]["merged_ids"].as_array().into_iter().flatten() {
            live.remove(retired.as_str().unwrap());
        }
        let sources = event["data"]["sources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["source_id"].as_str().unwrap().to_string())
            .collect();
        live.insert(event["subject"].as_str().unwrap().to_string(), sources);
    }
    live.into_values()
        .filter(|s: &Vec<String>| !s.is_empty())
        .collect()
}

fn profile_of(feed_path: &Path, source_id: &str) -> String {
    let mut found = None;
    for event in read_feed(feed_path) {
        let holds = event["data"]["sources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["source_id"] == source_id);
        if holds {
            found = Some(event["subject"].as_str().unwrap().to_string());
        }
    }
    found.unwrap_or_else(|| panic!("no profile holds {source_id}"))
}

fn conflux(project: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_conflux"))
        .current_dir(project)
        .arg("--config")
        .arg("config/review.toml")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn sorted(groups: &[&[&str]]) -> BTreeSet<Vec<String>> {
    groups
        .iter()
        .map(|g| {
            let mut g: Vec<String> = g.iter().map(|s| s.to_string()).collect();
            g.sort();
            g
        })
        .collect()
}

#[tokio::test]
async fn households_stay_apart_typos_join_and_decisions_persist() {
    let project = project(STRICT);
    let root = project.path();
    let config = load(root, "config/review.toml");
    let feed = root.join(".conflux/feed.ndjson");
    let store = pipeline::open_store(&config).await.unwrap();

    drop_file(root, "1.csv", FIRST);
    let first = pipeline::run(&config, None).await.unwrap();
    assert_eq!(first.profiles_created, 7, "nobody links on the first drop");
    assert_eq!(first.possible_matches, 2, "the Webers and the Hoffmanns");
    let pending = store.possible_matches(Some("pending"), 10).await.unwrap();
    let pairs: Vec<(&str, &str)> = pending
        .iter()
        .map(|p| (p.pair.a.source_id.as_str(), p.pair.b.source_id.as_str()))
        .collect();
    assert_eq!(pairs, [("r1", "r2"), ("s1", "s2")]);
    let detail: serde_json::Value = serde_json::from_str(&pending[0].pair.detail).unwrap();
    assert_eq!(detail["fields"][0]["field"], "given");
    assert_eq!(detail["fields"][0]["level"], "exact");

    // The typo'd copy of Johanna joins her profile; the household is untouched.
    let johanna = profile_of(&feed, "d1");
    drop_file(root, "2.csv", SECOND);
    let second = pipeline::run(&config, None).await.unwrap();
    assert_eq!(
        (second.profiles_created, second.profiles_updated),
        (0, 1),
        "d2 joins d1's profile"
    );
    assert_eq!(profile_of(&feed, "d2"), johanna);
    assert_eq!(
        clusters(&feed),
        sorted(&[
            &["h1"],
            &["h2"],
            &["d1", "d2"],
            &["r1"],
            &["r2"],
            &["s1"],
            &["s2"]
        ])
    );

    // A reviewer accepts the Webers and rejects the Hoffmanns.
    let (ok, out, err) = conflux(root, &["review", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("crm/contacts/r1 (Markus Weber) ~ crm/contacts/r2 (Markus Weber)"),
        "{out}"
    );
    let id_of = |a: &str| {
        pending
            .iter()
            .find(|p| p.pair.a.source_id == a)
            .unwrap()
            .id
            .to_string()
    };
    let (ok, out, err) = conflux(root, &["review", "show", &id_of("r1")]);
    assert!(ok, "{err}");
    assert!(out.contains("given        exact"), "{out}");
    assert!(out.contains("m.weber@example.com"), "{out}");
    let (ok, _, err) = conflux(root, &["review", "accept", &id_of("r1")]);
    assert!(ok, "{err}");
    let (ok, _, err) = conflux(root, &["review", "reject", &id_of("s1")]);
    assert!(ok, "{err}");
    let (ok, _, err) = conflux(root, &["review", "accept", &id_of("s1")]);
    assert!(!ok, "a decided match is not decided again");
    assert!(err.contains("already rejected"), "{err}");

    let weber = profile_of(&feed, "r1");
    let third = pipeline::run(&config, None).await.unwrap();
    assert_eq!(third.records_read, 0);
    assert_eq!(third.profiles_merged, 1, "the accepted pair merges");
    let events = read_feed(&feed);
    let merged = events.last().unwrap();
    assert_eq!(merged["type"], "customer.profile.merged");
    assert_eq!(merged["subject"], weber.as_str(), "the older id survives");
    assert_eq!(merged["data"]["merged_ids"].as_array().unwrap().len(), 1);
    assert!(
        store
            .possible_matches(Some("pending"), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Changing a Hoffmann record re-scores the pair: the rejection still holds, and the pair
    // is not proposed again.
    drop_file(
        root,
        "3.csv",
        "s2,Sabine,Hoffmann,sabine.hoffmann@example.net,,Domstraße 22,50667,Köln,\n",
    );
    let fourth = pipeline::run(&config, None).await.unwrap();
    assert_eq!(fourth.records_updated, 1);
    assert_eq!(fourth.possible_matches, 0);
    let expected = sorted(&[
        &["h1"],
        &["h2"],
        &["d1", "d2"],
        &["r1", "r2"],
        &["s1"],
        &["s2"],
    ]);
    assert_eq!(clusters(&feed), expected);

    // Manual unlink of d2 from Johanna: it splits off with a new id and stays apart.
    let (ok, out, err) = conflux(root, &["identities", "unlink", "crm/contacts/d2"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("kept apart: crm/contacts/d2 from crm/contacts/d1"),
        "{out}"
    );
    let fifth = pipeline::run(&config, None).await.unwrap();
    assert_eq!(
        (fifth.profiles_created, fifth.profiles_updated),
        (1, 1),
        "d2 splits off, d1's profile loses it"
    );
    assert_eq!(profile_of(&feed, "d1"), johanna, "d1 keeps the id");
    assert_ne!(profile_of(&feed, "d2"), johanna);
    let sixth = pipeline::run(&config, None).await.unwrap();
    assert_eq!(sixth.events_delivered, 0, "decisions are applied once");

    // A re-delivered, changed d2 is still kept apart: the decision outlives record changes.
    drop_file(
        root,
        "4.csv",
        "d2,Johana,Schmitt,,+49 170 2222222,Gartenweg 12,20095,Hamburg,1985-06-01\n\
         d1,Johanna,Schmidt,johanna.schmidt@example.com,0170 2222222,Gartenweg 12a,20095,Hamburg,1985-06-01\n",
    );
    pipeline::run(&config, None).await.unwrap();
    let mut expected = expected;
    expected.remove(&vec!["d1".to_string(), "d2".to_string()]);
    expected.insert(vec!["d1".into()]);
    expected.insert(vec!["d2".into()]);
    assert_eq!(clusters(&feed), expected);

    // And a manual link wins the other way round.
    let (ok, _, err) = conflux(
        root,
        &["identities", "link", "crm/contacts/h1", "crm/contacts/h2"],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = conflux(
        root,
        &[
            "identities",
            "link",
            "crm/contacts/h1",
            "crm/contacts/nobody",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("no customer record crm/contacts/nobody"),
        "{err}"
    );
    pipeline::run(&config, None).await.unwrap();
    assert_eq!(profile_of(&feed, "h1"), profile_of(&feed, "h2"));

    // The export lists every customer record with its profile, as the feed has them.
    let (ok, out, err) = conflux(root, &["identities", "export"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "system,stream,source_id,profile_id");
    assert_eq!(lines.len(), 1 + 8, "{out}");
    for source_id in ["d1", "d2", "h1", "h2", "r1", "r2", "s1", "s2"] {
        let row = format!("crm,contacts,{source_id},{}", profile_of(&feed, source_id));
        assert!(lines.contains(&row.as_str()), "{row} missing from\n{out}");
    }
    let export = root.join("identities.ndjson");
    let (ok, _, err) = conflux(
        root,
        &[
            "identities",
            "export",
            "--format",
            "ndjson",
            "--out",
            export.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(err.contains("8 records written"), "{err}");
    let rows = read_feed(&export);
    assert_eq!(rows.len(), 8);
    assert_eq!(rows[0]["source_id"], "d1");
    assert_eq!(rows[0]["profile_id"], profile_of(&feed, "d1").as_str());
}

#[tokio::test]
async fn incremental_runs_end_in_the_same_clusters_as_one_full_run() {
    let drops = [
        ("1.csv", FIRST),
        ("2.csv", SECOND),
        // A bridge that arrives last: Markus Weber with r1's e-mail and r2's address.
        (
            "3.csv",
            "r3,Markus,Weber,m.weber@example.com,,Sendlinger Straße 9,80331,München,1979-02-02\n\
             h3,Tom,Keller,thomas.keller@example.com,030 1111111,Lindenstraße 5,10115,Berlin,1970-03-04\n",
        ),
    ];

    let incremental = project("");
    let config = load(incremental.path(), "config/review.toml");
    for (name, rows) in drops {
        drop_file(incremental.path(), name, rows);
        pipeline::run(&config, None).await.unwrap();
    }

    let full = project("");
    for (name, rows) in drops {
        drop_file(full.path(), name, rows);
    }
    let config = load(full.path(), "config/review.toml");
    pipeline::run(&config, None).await.unwrap();

    let incremental = clusters(&incremental.path().join(".conflux/feed.ndjson"));
    let full = clusters(&full.path().join(".conflux/feed.ndjson"));
    assert_eq!(incremental, full);
    assert!(
        full.contains(&vec!["h1".to_string(), "h3".to_string()]),
        "Tom is Thomas (same e-mail): {full:?}"
    );
    assert!(
        full.contains(&vec!["d1".to_string(), "d2".to_string()]),
        "{full:?}"
    );
    assert!(full.contains(&vec!["h2".to_string()]), "{full:?}");
}
