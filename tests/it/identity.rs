//! Identity over several runs: stable ids, a bridge that merges two profiles into the older
//! one, and a changed record that breaks its link and splits off.

use conflux::pipeline;

use crate::common::{load, project_with, read_feed};

const CONFIG: &str = r#"
[store]
url = "sqlite://.conflux/id.db"

[feed]
sink = "file"
path = ".conflux/feed.ndjson"

[identity]
match_on = ["email", "phone"]
"#;

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
name = "name"
email = { path = "email", transforms = ["email"] }
phone = { path = "phone", transforms = [{ phone = { region = "DE" } }] }
kind = { value = "person" }
"#;

#[tokio::test]
async fn ids_survive_merges_keep_the_older_id_and_broken_links_split() {
    let project = project_with(&[
        ("config/id.toml", CONFIG.as_bytes()),
        ("connectors/crm.toml", CONNECTOR.as_bytes()),
        ("mappings/crm.contact.toml", MAPPING.as_bytes()),
        (
            "drops/1.csv",
            b"id,name,email,phone\na,Anna Berg,anna@example.com,\nb,Anna B.,,+49 30 1234567\n",
        ),
    ]);
    let config = load(project.path(), "config/id.toml");
    let feed_path = project.path().join(".conflux/feed.ndjson");

    let first = pipeline::run(&config, None).await.unwrap();
    assert_eq!(first.profiles_created, 2, "nothing links a and b yet");
    let feed = read_feed(&feed_path);
    let id_of = |source: &str| {
        feed.iter()
            .find(|e| e["data"]["sources"][0]["source_id"] == source)
            .map(|e| e["subject"].as_str().unwrap().to_string())
            .unwrap()
    };
    let (id_a, id_b) = (id_of("a"), id_of("b"));
    assert!(id_a < id_b, "UUID v7 ids sort by creation");

    // c carries a's e-mail and b's phone: the two profiles merge into the older one.
    std::fs::write(
        project.path().join("drops/2.csv"),
        "id,name,email,phone\nc,Anna Berg,ANNA@example.com,030 1234567\n",
    )
    .unwrap();
    let second = pipeline::run(&config, None).await.unwrap();
    assert_eq!(
        (
            second.profiles_created,
            second.profiles_updated,
            second.profiles_merged
        ),
        (0, 0, 1)
    );
    let feed = read_feed(&feed_path);
    let merged = feed.last().unwrap();
    assert_eq!(merged["type"], "customer.profile.merged");
    assert_eq!(merged["subject"], id_a.as_str());
    assert_eq!(merged["data"]["merged_ids"], serde_json::json!([id_b]));
    assert_eq!(merged["data"]["version"], 2);
    assert_eq!(merged["data"]["sources"].as_array().unwrap().len(), 3);
    let store = pipeline::open_store(&config).await.unwrap();
    let through_retired = store.profile(id_b.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(
        through_retired.profile_id.to_string(),
        id_a,
        "a retired id resolves to the survivor"
    );

    // An unchanged re-delivery changes nothing.
    std::fs::copy(
        project.path().join("drops/2.csv"),
        project.path().join("drops/2-again.csv"),
    )
    .unwrap();
    let third = pipeline::run(&config, None).await.unwrap();
    assert_eq!(third.records_unchanged, 1);
    assert_eq!(third.events_delivered, 0);

    // c loses the phone number: b no longer shares a key with anyone and splits off with a
    // new id; a and c keep the surviving id.
    std::fs::write(
        project.path().join("drops/3.csv"),
        "id,name,email,phone\nc,Anna Berg,anna@example.com,\n",
    )
    .unwrap();
    let fourth = pipeline::run(&config, None).await.unwrap();
    assert_eq!(fourth.records_updated, 1);
    assert_eq!(
        (
            fourth.profiles_created,
            fourth.profiles_updated,
            fourth.profiles_merged
        ),
        (1, 1, 0)
    );
    let feed = read_feed(&feed_path);
    let tail = &feed[feed.len() - 2..];
    let updated = tail
        .iter()
        .find(|e| e["type"] == "customer.profile.updated")
        .unwrap();
    let created = tail
        .iter()
        .find(|e| e["type"] == "customer.profile.created")
        .unwrap();
    assert_eq!(updated["subject"], id_a.as_str());
    assert_eq!(updated["data"]["version"], 3);
    let sources = |e: &serde_json::Value| -> Vec<String> {
        e["data"]["sources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["source_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(sources(updated), ["a", "c"]);
    assert_eq!(sources(created), ["b"]);
    assert_ne!(
        created["subject"],
        id_b.as_str(),
        "a retired id is never reused"
    );
    assert_ne!(created["subject"], id_a.as_str());
}

#[tokio::test]
async fn an_order_moved_to_another_customer_leaves_the_old_profile() {
    let connector = format!(
        "{CONNECTOR}\n[[stream]]\nname = \"orders\"\npattern = \"orders*.ndjson\"\nformat = \"ndjson\"\nmapping = \"crm.order\"\n"
    )
    .replace("pattern = \"*.csv\"", "pattern = \"contacts*.csv\"");
    let order_mapping = "entity = \"order\"\n\n[fields]\nsource_id = \"id\"\ncustomer_id = \"customer\"\ncurrency = { value = \"EUR\" }\ntotal = \"total\"\n";
    let project = project_with(&[
        ("config/id.toml", CONFIG.as_bytes()),
        ("connectors/crm.toml", connector.as_bytes()),
        ("mappings/crm.contact.toml", MAPPING.as_bytes()),
        ("mappings/crm.order.toml", order_mapping.as_bytes()),
        (
            "drops/contacts.csv",
            b"id,name,email,phone\na,Anna Berg,anna@example.com,\nb,Otto Kranz,otto@example.com,\n",
        ),
        (
            "drops/orders1.ndjson",
            b"{\"id\":\"o1\",\"customer\":\"a\",\"total\":\"10.00\"}\n",
        ),
    ]);
    let config = load(project.path(), "config/id.toml");
    let feed_path = project.path().join(".conflux/feed.ndjson");
    pipeline::run(&config, None).await.unwrap();
    let order_count_of = |feed: &[serde_json::Value], source: &str| {
        feed.iter()
            .rev()
            .find(|e| e["data"]["sources"][0]["source_id"] == source)
            .map(|e| e["data"]["metrics"]["order_count"].as_u64().unwrap())
            .unwrap()
    };
    let feed = read_feed(&feed_path);
    assert_eq!(
        (order_count_of(&feed, "a"), order_count_of(&feed, "b")),
        (1, 0)
    );

    std::fs::write(
        project.path().join("drops/orders2.ndjson"),
        "{\"id\":\"o1\",\"customer\":\"b\",\"total\":\"10.00\"}\n",
    )
    .unwrap();
    let moved = pipeline::run(&config, None).await.unwrap();
    assert_eq!(moved.records_updated, 1);
    assert_eq!(
        moved.profiles_updated, 2,
        "the profile the order left and the one it joined"
    );
    let feed = read_feed(&feed_path);
    assert_eq!(
        (order_count_of(&feed, "a"), order_count_of(&feed, "b")),
        (0, 1),
        "never counted twice"
    );
}
