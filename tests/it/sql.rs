//! `kind = "sql"` connectors end to end against the PostgreSQL on this machine: the watermark
//! is a bound parameter (a quote in it changes nothing), and the second run reads only rows
//! past the committed cursor.

use conflux::pipeline;

use crate::common::{load, postgres_url, project_with, read_feed};

const MAPPING: &str = r#"
entity = "customer"

[fields]
source_id = "id"
name = "name"
email = { path = "email", transforms = ["email"] }
"#;

#[tokio::test]
async fn a_postgres_table_syncs_incrementally_with_a_bound_watermark() {
    let Some(url) = postgres_url() else { return };
    let table = format!("conflux_it_{}", uuid::Uuid::now_v7().simple());
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let create =
        format!("CREATE TABLE {table} (id TEXT PRIMARY KEY, name TEXT, email TEXT, stamp TEXT)");
    sqlx::query(sqlx::AssertSqlSafe(create))
        .execute(&pool)
        .await
        .unwrap();
    let insert = format!("INSERT INTO {table} VALUES ($1, $2, $3, $4)");
    for (id, name, email, stamp) in [
        ("c1", "Anna Berg", "anna@example.com", "2024-05-01 O'Brien"),
        ("c2", "Otto Kranz", "otto@example.com", "2024-05-02 x"),
        (
            "c3",
            "Eva Lind",
            "eva@example.com",
            "2024-05-03 x' OR '1'='1",
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
            .bind(id)
            .bind(name)
            .bind(email)
            .bind(stamp)
            .execute(&pool)
            .await
            .unwrap();
    }
    let config = r#"
[store]
url = "sqlite://.conflux/sql.db"

[feed]
sink = "file"
path = ".conflux/feed.ndjson"

[[job]]
name = "crm"
sync = ["crm"]
"#;
    let connector = format!(
        r#"
kind = "sql"
url = "{url}"

[[stream]]
name = "contacts"
query = "SELECT id, name, email, stamp FROM {table} WHERE stamp > :cursor ORDER BY stamp"
cursor_column = "stamp"
initial = ""
batch_size = 2
mapping = "crm.contact"
"#
    );
    let project = project_with(&[
        ("config/sql.toml", config.as_bytes()),
        ("connectors/crm.toml", connector.as_bytes()),
        ("mappings/crm.contact.toml", MAPPING.as_bytes()),
    ]);
    let config = load(project.path(), "config/sql.toml");
    let first = pipeline::run(&config, None).await.unwrap();
    assert_eq!((first.records_read, first.profiles_created), (3, 3));
    let store = pipeline::open_store(&config).await.unwrap();
    assert_eq!(
        store.cursor("crm", "contacts").await.unwrap().as_deref(),
        Some("2024-05-03 x' OR '1'='1"),
        "the cursor is the last row's stamp, quote and all"
    );

    // A new row and a changed one past the cursor; the quoted watermark is bound, so only
    // they come back.
    sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
        .bind("c4")
        .bind("Jonas Weber")
        .bind("jonas@example.com")
        .bind("2024-06-01 x")
        .execute(&pool)
        .await
        .unwrap();
    let update = format!(
        "UPDATE {table} SET name = 'Anna Berg-Lind', stamp = '2024-06-02 x' WHERE id = 'c1'"
    );
    sqlx::query(sqlx::AssertSqlSafe(update))
        .execute(&pool)
        .await
        .unwrap();
    let second = pipeline::run(&config, None).await.unwrap();
    assert_eq!(second.records_read, 2);
    assert_eq!((second.profiles_created, second.profiles_updated), (1, 1));
    let feed = read_feed(&project.path().join(".conflux/feed.ndjson"));
    assert_eq!(feed.len(), 5);
    let updated = feed
        .iter()
        .find(|e| e["type"] == "customer.profile.updated")
        .unwrap();
    assert_eq!(updated["data"]["golden"]["full_name"], "Anna Berg-Lind");

    let drop = format!("DROP TABLE {table}");
    sqlx::query(sqlx::AssertSqlSafe(drop))
        .execute(&pool)
        .await
        .unwrap();
}
