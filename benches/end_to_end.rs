//! End-to-end benchmark: a generated multi-system data set through the real `run` path into
//! the configured store and feed, then a second run after 1% of the customers changed, and a
//! raw lapin publish loop with confirms measured in the same process for comparison.
//!
//! ```sh
//! cargo bench --bench end_to_end                               # 1M customers, SQLite, RabbitMQ
//! CONFLUX_BENCH_CUSTOMERS=100000 cargo bench --bench end_to_end
//! CONFLUX_BENCH_STORE=postgres://postgres@127.0.0.1:5432/test cargo bench --bench end_to_end
//! CONFLUX_BENCH_AMQP=none cargo bench --bench end_to_end       # NDJSON feed instead of RabbitMQ
//! ```
//!
//! The data set: customers split over a CRM CSV (40%), ERP partners as NDJSON (35%) and shop
//! accounts as CSV (25%; one in five shares a CRM customer's e-mail address, one in ten an ERP
//! partner's VAT id), three order lines per customer in ERP orders (one order per ERP
//! partner... and the rest spread over them), 100k SKUs of stock and 20k supplier items.

use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use conflux::config;
use conflux::pipeline::{self, RunSummary};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const GIVEN: [&str; 16] = [
    "Anna", "Thomas", "Petra", "Markus", "Julia", "Stefan", "Laura", "Michael", "Sabine",
    "Andreas", "Katrin", "Jan", "Monika", "Felix", "Claudia", "Lukas",
];
const FAMILY: [&str; 16] = [
    "Müller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Meyer",
    "Wagner",
    "Becker",
    "Schulz",
    "Hoffmann",
    "Koch",
    "Richter",
    "Klein",
    "Wolf",
    "Schröder",
    "Neumann",
];
const CITIES: [(&str, &str); 8] = [
    ("10115", "Berlin"),
    ("20095", "Hamburg"),
    ("80331", "München"),
    ("50667", "Köln"),
    ("60311", "Frankfurt am Main"),
    ("70173", "Stuttgart"),
    ("40213", "Düsseldorf"),
    ("04109", "Leipzig"),
];

struct Sizes {
    crm: u64,
    erp: u64,
    shop: u64,
    skus: u64,
    suppliers: u64,
}

fn sizes(customers: u64) -> Sizes {
    let crm = customers * 40 / 100;
    let erp = customers * 35 / 100;
    Sizes {
        crm,
        erp,
        shop: customers - crm - erp,
        skus: (customers / 10).max(100),
        suppliers: (customers / 50).max(20),
    }
}

fn writer(path: &Path) -> BufWriter<std::fs::File> {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap())
}

const SYLLABLES: [&str; 40] = [
    "ber", "bach", "brun", "dorf", "eck", "feld", "gart", "hag", "holz", "horn", "kamp", "kirch",
    "lind", "mann", "mer", "moos", "ner", "ost", "pohl", "rath", "reit", "ried", "ross", "sand",
    "sch", "see", "stein", "tal", "thal", "vogt", "wald", "wart", "weg", "wer", "wies", "wind",
    "wolf", "zell", "zimm", "burg",
];

/// A person with realistic name diversity: 16 common given names times a few hundred more,
/// common family names plus 1600 rarer ones, and about 9000 postcodes.
fn person(rng: &mut Rng, i: u64) -> (String, String, String, String) {
    let given = if rng.below(4) == 0 {
        GIVEN[rng.below(16) as usize].to_string()
    } else {
        let a = SYLLABLES[rng.below(40) as usize];
        let b = SYLLABLES[rng.below(40) as usize];
        let mut name = format!("{a}{b}a");
        name[..1].make_ascii_uppercase();
        name
    };
    let family = if rng.below(5) == 0 {
        FAMILY[rng.below(16) as usize].to_string()
    } else {
        let a = SYLLABLES[rng.below(40) as usize];
        let b = SYLLABLES[rng.below(40) as usize];
        let mut name = format!("{a}{b}");
        name[..1].make_ascii_uppercase();
        name
    };
    let (_, city) = CITIES[rng.below(8) as usize];
    let postcode = format!("{:05}", 1_000 + rng.below(98_000));
    let street = format!(
        "{}straße {}",
        SYLLABLES[(i % 40) as usize],
        1 + rng.below(120)
    );
    (given, family, street, format!("{postcode},{city}"))
}

fn crm_row(rng: &mut Rng, i: u64, phone_suffix: u64) -> String {
    let (given, family, street, place) = person(rng, i);
    format!(
        "C{i},{given},{family},crm{i}@example.com,+49 30 {:07},{street},{place}\n",
        1_000_000 + phone_suffix
    )
}

fn generate(root: &Path, customers: u64, seed: u64) -> Sizes {
    let s = sizes(customers);
    let mut rng = Rng(seed);

    let mut crm = writer(&root.join("drops/crm/customers.csv"));
    writeln!(crm, "id,given,family,email,phone,street,postcode,city").unwrap();
    for i in 0..s.crm {
        crm.write_all(crm_row(&mut rng, i, i).as_bytes()).unwrap();
    }
    crm.flush().unwrap();

    let mut erp = writer(&root.join("drops/erp/partners.ndjson"));
    for i in 0..s.erp {
        let (given, family, street, place) = person(&mut rng, i);
        let (postcode, city) = place.split_once(',').unwrap();
        let company = (i % 3 == 0).then(|| format!("{family} Handel GmbH"));
        let line = serde_json::json!({
            "id": format!("P{i}"),
            "name": format!("{given} {family}"),
            "company": company,
            "email": format!("erp{i}@example.org"),
            "vat": format!("DE{:09}", i),
            "street": street,
            "postcode": postcode,
            "city": city,
            "changed": "2026-01-01T00:00:00Z",
        });
        writeln!(erp, "{line}").unwrap();
    }
    erp.flush().unwrap();

    let mut shop = writer(&root.join("drops/shop/accounts.csv"));
    writeln!(shop, "id;given;family;email;vat;postcode;city").unwrap();
    for i in 0..s.shop {
        let (given, family, _, place) = person(&mut rng, i);
        let (postcode, city) = place.split_once(',').unwrap();
        let email = match i % 10 {
            0 | 1 if s.crm > 0 => format!("crm{}@example.com", rng.below(s.crm)),
            _ => format!("shop{i}@example.net"),
        };
        let vat = if i % 10 == 2 && s.erp > 0 {
            format!("DE{:09}", rng.below(s.erp))
        } else {
            String::new()
        };
        writeln!(
            shop,
            "S{i};{given};{family};{email};{vat};{postcode};{city}"
        )
        .unwrap();
    }
    shop.flush().unwrap();

    // Three lines per customer record, in orders of one to five lines of ERP partners.
    let mut orders = writer(&root.join("drops/erp/orders.ndjson"));
    let mut lines_left = customers * 3;
    let mut order = 0u64;
    let mut line = String::new();
    while lines_left > 0 {
        let count = (1 + rng.below(5)).min(lines_left);
        lines_left -= count;
        line.clear();
        let status = if order.is_multiple_of(7) {
            "open"
        } else {
            "fulfilled"
        };
        write!(
            line,
            "{{\"id\":\"O{order}\",\"partner\":\"P{}\",\"date\":\"2025-{:02}-{:02}T10:00:00Z\",\"state\":\"{status}\",\"currency\":\"EUR\",\"lines\":[",
            rng.below(s.erp.max(1)),
            1 + rng.below(12),
            1 + rng.below(28)
        )
        .unwrap();
        for l in 0..count {
            let qty = 1 + rng.below(20);
            let price = 5 + rng.below(500);
            write!(
                line,
                "{}{{\"no\":{},\"sku\":\"SKU-{:06}\",\"qty\":{qty},\"price\":{price},\"total\":{}}}",
                if l == 0 { "" } else { "," },
                l + 1,
                rng.below(s.skus),
                qty * price
            )
            .unwrap();
        }
        line.push_str("]}\n");
        orders.write_all(line.as_bytes()).unwrap();
        order += 1;
    }
    orders.flush().unwrap();

    let mut stock = writer(&root.join("drops/warehouse/stock.csv"));
    writeln!(stock, "sku,location,on_hand,reserved").unwrap();
    for i in 0..s.skus {
        writeln!(
            stock,
            "SKU-{i:06},MAIN,{},{}",
            rng.below(500),
            rng.below(20)
        )
        .unwrap();
    }
    stock.flush().unwrap();

    let mut suppliers = writer(&root.join("drops/suppliers/items.csv"));
    writeln!(suppliers, "supplier_id,sku,lead_time_days").unwrap();
    for i in 0..s.suppliers {
        writeln!(
            suppliers,
            "SUP-{:04},SKU-{:06},{}",
            i % 500,
            rng.below(s.skus),
            3 + rng.below(40)
        )
        .unwrap();
    }
    suppliers.flush().unwrap();
    s
}

const CONNECTORS: &[(&str, &str)] = &[
    (
        "connectors/crm.toml",
        r#"kind = "file"
system = "crm"
dir = "drops/crm"
[[stream]]
name = "customers"
pattern = "customers*.csv"
format = "csv"
mapping = "crm.customer"
"#,
    ),
    (
        "connectors/erp.toml",
        r#"kind = "file"
system = "erp"
dir = "drops/erp"
[[stream]]
name = "partners"
pattern = "partners*.ndjson"
format = "ndjson"
mapping = "erp.partner"
[[stream]]
name = "orders"
pattern = "orders*.ndjson"
format = "ndjson"
mapping = "erp.order"
"#,
    ),
    (
        "connectors/shop.toml",
        r#"kind = "file"
system = "shop"
dir = "drops/shop"
[[stream]]
name = "accounts"
pattern = "accounts*.csv"
format = "csv"
delimiter = ";"
mapping = "shop.account"
"#,
    ),
    (
        "connectors/warehouse.toml",
        r#"kind = "file"
system = "warehouse"
dir = "drops/warehouse"
[[stream]]
name = "stock"
pattern = "stock*.csv"
format = "csv"
mapping = "warehouse.stock"
"#,
    ),
    (
        "connectors/suppliers.toml",
        r#"kind = "file"
system = "suppliers"
dir = "drops/suppliers"
[[stream]]
name = "items"
pattern = "items*.csv"
format = "csv"
mapping = "suppliers.item"
"#,
    ),
    (
        "mappings/crm.customer.toml",
        r#"entity = "customer"
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
"#,
    ),
    (
        "mappings/erp.partner.toml",
        r#"entity = "customer"
[fields]
source_id = "id"
name = "name"
company = "company"
email = { path = "email", transforms = ["email"] }
"identifier.vat" = "vat"
"address.line1" = "street"
"address.postcode" = "postcode"
"address.city" = "city"
updated_at = "changed"
"#,
    ),
    (
        "mappings/shop.account.toml",
        r#"entity = "customer"
[fields]
source_id = "id"
kind = { value = "person" }
given_name = "given"
family_name = "family"
email = { path = "email", transforms = ["email"] }
"identifier.vat" = "vat"
"address.postcode" = "postcode"
"address.city" = "city"
"#,
    ),
    (
        "mappings/erp.order.toml",
        r#"entity = "order"
[fields]
source_id = "id"
customer_id = "partner"
ordered_at = "date"
status = "state"
currency = "currency"
[lines]
path = "lines[*]"
[lines.fields]
line_number = "no"
sku = "sku"
quantity = "qty"
unit_price = "price"
line_total = "total"
"#,
    ),
    (
        "mappings/warehouse.stock.toml",
        r#"entity = "inventory"
[fields]
sku = "sku"
location = "location"
on_hand = "on_hand"
reserved = "reserved"
"#,
    ),
    (
        "mappings/suppliers.item.toml",
        r#"entity = "supplier_item"
[fields]
supplier_id = "supplier_id"
sku = "sku"
lead_time_days = "lead_time_days"
"#,
    ),
];

const BENCH_SCHEMA: &str = "conflux_bench";

fn write_project(root: &Path, store: &str, amqp: Option<&str>, exchange: &str) {
    for (path, text) in CONNECTORS {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let feed = match amqp {
        Some(url) => format!(
            "[feed]\nsink = \"amqp\"\nbatch_size = 1000\namqp = {{ url = \"{url}\", exchange = \"{exchange}\" }}\n"
        ),
        None => "[feed]\nsink = \"file\"\npath = \".conflux/feed.ndjson\"\n".to_string(),
    };
    // On PostgreSQL the benchmark works in its own schema, emptied first (see `main`).
    let schema = if store.starts_with("postgres") {
        format!("schema = \"{BENCH_SCHEMA}\"\n")
    } else {
        String::new()
    };
    let config = format!(
        "instance = \"bench\"\n\n[store]\nurl = \"{store}\"\n{schema}\n{feed}\n[identity]\nmatch_on = [\"email\", \"identifier:vat\"]\n\n\
         [[job]]\nname = \"all\"\nsync = [\"crm\", \"erp.partners\", \"shop\", \"erp.orders\", \"warehouse\", \"suppliers\"]\n"
    );
    std::fs::create_dir_all(root.join("config")).unwrap();
    std::fs::write(root.join("config/bench.toml"), config).unwrap();
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn per_second(count: u64, time: Duration) -> String {
    if time.is_zero() {
        return "-".into();
    }
    format!("{:.0}/s", count as f64 / time.as_secs_f64())
}

fn report(label: &str, summary: &RunSummary, wall: Duration) {
    let t = &summary.stages;
    let records = summary.records_read;
    println!(
        "{label}: {records} records in {:.1} s = {} end to end",
        wall.as_secs_f64(),
        per_second(records, wall)
    );
    println!("  {summary}");
    for (stage, time) in [
        ("read", t.read),
        ("map", t.map),
        ("store", t.store),
        ("resolve", t.resolve),
        ("build", t.build),
        ("commit", t.commit),
    ] {
        println!(
            "  {stage:<8} {:>7.1} s  {:>12} records",
            time.as_secs_f64(),
            per_second(records, time)
        );
    }
    println!(
        "  publish  {:>7.1} s  {:>12} events",
        t.publish.as_secs_f64(),
        per_second(summary.events_delivered, t.publish)
    );
}

/// Publishes `count` messages of `size` bytes with confirms, the way the sink does (a batch
/// published, then its confirms awaited), and returns messages per second.
/// The mean size of the feed's event bodies in the outbox.
async fn mean_event_size(store: &config::StoreConfig) -> usize {
    const QUERY: &str = "SELECT CAST(AVG(LENGTH(body)) AS BIGINT) FROM outbox";
    let mean: Option<i64> = match store {
        config::StoreConfig::Sqlite { path } => {
            let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
            let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
            sqlx::query_scalar(QUERY).fetch_one(&pool).await.unwrap()
        }
        config::StoreConfig::Postgres { url, schema, .. } => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            let table = match schema {
                Some(schema) => format!("\"{schema}\".outbox"),
                None => "outbox".to_string(),
            };
            // The schema comes from the benchmark's own configuration.
            sqlx::query_scalar(sqlx::AssertSqlSafe(QUERY.replace("outbox", &table)))
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    mean.map_or(1_200, |m| m.max(1) as usize)
}

async fn raw_lapin_rate(url: &str, count: usize, size: usize, batch: usize) -> f64 {
    use lapin::options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    };
    use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let exchange = format!("conflux.bench.raw.{}", std::process::id());
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    let body = vec![b'x'; size];
    let started = Instant::now();
    let mut sent = 0;
    while sent < count {
        let n = batch.min(count - sent);
        let mut confirms = Vec::with_capacity(n);
        for i in 0..n {
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(format!("raw-{}", sent + i).into());
            confirms.push(
                channel
                    .basic_publish(
                        exchange.as_str().into(),
                        "customer.profile.created".into(),
                        BasicPublishOptions::default(),
                        &body,
                        properties,
                    )
                    .await
                    .unwrap(),
            );
        }
        for confirm in confirms {
            confirm.await.unwrap();
        }
        sent += n;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let _ = channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    rate
}

fn main() {
    let customers: u64 = std::env::var("CONFLUX_BENCH_CUSTOMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let amqp = match std::env::var("CONFLUX_BENCH_AMQP") {
        Ok(v) if v == "none" => None,
        Ok(v) => Some(v),
        Err(_) => Some("amqp://guest:guest@127.0.0.1:5672/%2f".to_string()),
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = std::env::var("CONFLUX_BENCH_STORE")
        .unwrap_or_else(|_| "sqlite://.conflux/bench.db".to_string());
    let exchange = format!("conflux.bench.{}", std::process::id());
    write_project(root, &store, amqp.as_deref(), &exchange);
    if store.starts_with("postgres") {
        let url = store.clone();
        let drop = format!("DROP SCHEMA IF EXISTS {BENCH_SCHEMA} CASCADE");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let pool = sqlx::PgPool::connect(&url).await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(drop))
                    .execute(&pool)
                    .await
                    .unwrap();
            });
    }

    let generating = Instant::now();
    let s = generate(root, customers, 42);
    println!(
        "generated {} customers (crm {}, erp {}, shop {}), {} order lines, {} SKUs, {} supplier items in {:.1} s",
        customers,
        s.crm,
        s.erp,
        s.shop,
        customers * 3,
        s.skus,
        s.suppliers,
        generating.elapsed().as_secs_f64()
    );
    println!(
        "store {store}, feed {}",
        amqp.as_deref().unwrap_or("NDJSON file")
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = match config::load(&root.join("config/bench.toml")) {
        Ok(config) => config,
        Err(diagnostics) => panic!("{diagnostics}"),
    };
    let started = Instant::now();
    let full = runtime
        .block_on(pipeline::run(&config, None))
        .expect("the full run");
    let full_time = started.elapsed();
    report("full run", &full, full_time);

    // 1% of the customers change: CRM customers get a new phone number and street.
    let changed = (s.crm / 40).max(1) * 4;
    let changed = changed.min(s.crm);
    let mut update = writer(&root.join("drops/crm/customers-update.csv"));
    writeln!(update, "id,given,family,email,phone,street,postcode,city").unwrap();
    let mut rng = Rng(7);
    let step = (s.crm / changed).max(1);
    for k in 0..changed {
        let i = k * step;
        update
            .write_all(crm_row(&mut rng, i, 5_000_000 + i).as_bytes())
            .unwrap();
    }
    update.flush().unwrap();
    let started = Instant::now();
    let delta = runtime
        .block_on(pipeline::run(&config, None))
        .expect("the 1% run");
    let delta_time = started.elapsed();
    report("1% re-run", &delta, delta_time);
    println!(
        "  {} changed customer records -> {} profiles changed, {} events; {:.1}% of the full run's time",
        changed,
        delta.profiles_created + delta.profiles_updated + delta.profiles_merged,
        delta.events_delivered,
        100.0 * delta_time.as_secs_f64() / full_time.as_secs_f64()
    );

    if let Some(url) = &amqp {
        let count = (full.events_delivered as usize).clamp(1_000, 200_000);
        // The raw loop publishes messages of the feed's own mean size.
        let size = runtime.block_on(mean_event_size(&config.store));
        let raw = runtime.block_on(raw_lapin_rate(url, count, size, 1_000));
        let pipeline_rate = full.events_delivered as f64 / full.stages.publish.as_secs_f64();
        println!(
            "publish: pipeline {pipeline_rate:.0} events/s, raw lapin with confirms {raw:.0} msgs/s ({count} x {size} bytes) = {:.0}%",
            100.0 * pipeline_rate / raw
        );
    }
    println!("peak memory (VmHWM): {:.0} MiB", peak_rss_mib());
}
