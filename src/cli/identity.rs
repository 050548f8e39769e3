//! `conflux review list | show | accept | reject` and `conflux identities link | unlink`:
//! people's decisions on identities. Decisions are stored at once and win over the match
//! model; the records they touch are re-resolved (and their profiles republished) by the
//! next run.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::open_store_reporting;
use crate::config::Config;
use crate::error::{EXIT_INVALID, EXIT_OK, EXIT_RUNTIME};
use crate::model::{Customer, SourceRef};
use crate::store::{IdentityDecision, PossibleMatchRow, Store, StoreError};

#[derive(Debug, Subcommand)]
pub enum ReviewCommand {
    /// Lists possible matches: pairs the model scored in the review band.
    List {
        /// `pending`, `accepted`, `rejected` or `all`.
        #[arg(long, default_value = "pending")]
        status: String,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Shows one possible match: both records and what each field contributed.
    Show { id: i64 },
    /// Accepts a possible match: the two records are one customer from the next run on.
    Accept { id: i64 },
    /// Rejects a possible match: the two records are never linked, whatever the model says.
    Reject { id: i64 },
}

#[derive(Debug, Subcommand)]
pub enum IdentitiesCommand {
    /// Links two customer records (`system/stream/source_id`) into one identity for good.
    Link { a: String, b: String },
    /// Keeps two customer records apart for good; with one record, keeps it apart from every
    /// other record of its current profile.
    Unlink { a: String, b: Option<String> },
    /// Writes one row per customer record, `system,stream,source_id,profile_id`, to stdout
    /// (or `--out`): the audit trail of identity resolution.
    Export {
        /// `csv` (with a header) or `ndjson`.
        #[arg(long, default_value = "csv")]
        format: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Pairwise precision, recall and F1 of the stored identities against a truth file
    /// (`system,stream,source_id,entity_id,household_id`), household merges and the worst
    /// errors. Exit code 0 whatever the numbers.
    Evaluate {
        #[arg(long)]
        truth: PathBuf,
        /// Examples of each kind of error to print.
        #[arg(long, default_value_t = 5)]
        examples: usize,
    },
    /// Estimates the match model (u from random pairs, m by EM per blocking rule) from the
    /// stored customers and stores it; the next runs use it.
    Train,
}

/// Parses `system/stream/source_id`; the source id may itself contain slashes.
pub fn parse_ref(text: &str) -> Result<SourceRef, String> {
    let mut parts = text.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(system), Some(stream), Some(source_id))
            if !system.is_empty() && !stream.is_empty() && !source_id.is_empty() =>
        {
            Ok(SourceRef {
                system: system.into(),
                stream: stream.into(),
                source_id: source_id.into(),
            })
        }
        _ => Err(format!(
            "invalid record reference {text:?}: write it as system/stream/source_id, as \
             `conflux review list` and `conflux identities export` print it"
        )),
    }
}

pub async fn review(config: &Config, command: ReviewCommand) -> u8 {
    let Some(store) = open_store_reporting(config).await else {
        return EXIT_RUNTIME;
    };
    let outcome = match command {
        ReviewCommand::List { status, limit } => list(store.as_ref(), &status, limit).await,
        ReviewCommand::Show { id } => show(store.as_ref(), id).await,
        ReviewCommand::Accept { id } => decide(store.as_ref(), id, true).await,
        ReviewCommand::Reject { id } => decide(store.as_ref(), id, false).await,
    };
    outcome.unwrap_or_else(|error| {
        eprintln_redacted!("error: {error}");
        EXIT_RUNTIME
    })
}

async fn list(store: &dyn Store, status: &str, limit: i64) -> Result<u8, StoreError> {
    let filter = match status {
        "all" => None,
        "pending" | "accepted" | "rejected" => Some(status),
        other => {
            eprintln_redacted!(
                "error: unknown status {other:?}; use pending, accepted, rejected or all"
            );
            return Ok(EXIT_INVALID);
        }
    };
    let rows = store.possible_matches(filter, limit).await?;
    let refs: Vec<SourceRef> = rows
        .iter()
        .flat_map(|r| [r.pair.a.clone(), r.pair.b.clone()])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let customers = customers(store, &refs).await?;
    for row in &rows {
        println_redacted!(
            "#{} {} p={} {} ({}) ~ {} ({})",
            row.id,
            row.status,
            probability_of(row),
            row.pair.a,
            label(customers.iter().find(|c| c.source == row.pair.a)),
            row.pair.b,
            label(customers.iter().find(|c| c.source == row.pair.b)),
        );
    }
    println_redacted!("{} possible matches shown ({status})", rows.len());
    Ok(EXIT_OK)
}

async fn show(store: &dyn Store, id: i64) -> Result<u8, StoreError> {
    let Some(row) = store.possible_match(id).await? else {
        eprintln_redacted!("error: there is no possible match #{id}");
        return Ok(EXIT_INVALID);
    };
    let customers = customers(store, &[row.pair.a.clone(), row.pair.b.clone()]).await?;
    println_redacted!(
        "possible match #{} ({}, found {}), weight {:.2}, probability {}",
        row.id,
        row.status,
        row.created_at,
        row.pair.weight,
        probability_of(&row)
    );
    for side in [&row.pair.a, &row.pair.b] {
        match customers.iter().find(|c| &c.source == side) {
            Some(customer) => println_redacted!(
                "{side}:\n{}",
                serde_json::to_string_pretty(customer).unwrap_or_default()
            ),
            None => println_redacted!("{side}: no longer stored"),
        }
    }
    let detail: serde_json::Value = serde_json::from_str(&row.pair.detail).unwrap_or_default();
    if let Some(capped) = detail.get("capped").and_then(|c| c.as_f64())
        && capped > 0.0
    {
        println_redacted!(
            "{capped:.2} bits withheld: shared surname, address and landline count as one \
             household, and names alone as a possible match"
        );
    }
    if let Some(fields) = detail.get("fields").and_then(|f| f.as_array()) {
        println_redacted!("{:<12} {:<10} {:>7}", "field", "level", "weight");
        for field in fields {
            println_redacted!(
                "{:<12} {:<10} {:>7.2}",
                field.get("field").and_then(|v| v.as_str()).unwrap_or("?"),
                field.get("level").and_then(|v| v.as_str()).unwrap_or("?"),
                field.get("weight").and_then(|v| v.as_f64()).unwrap_or(0.0)
            );
        }
    }
    Ok(EXIT_OK)
}

async fn decide(store: &dyn Store, id: i64, accept: bool) -> Result<u8, StoreError> {
    let Some(before) = store.possible_match(id).await? else {
        eprintln_redacted!("error: there is no possible match #{id}");
        return Ok(EXIT_INVALID);
    };
    if before.status != "pending" {
        eprintln_redacted!(
            "error: possible match #{id} is already {}; use `conflux identities link` or \
             `unlink` to change a decision",
            before.status
        );
        return Ok(EXIT_INVALID);
    }
    match store.decide_possible_match(id, accept).await? {
        Some(row) => {
            println_redacted!(
                "#{} {}: {} {} {}; the next run re-resolves both records",
                row.id,
                row.status,
                row.pair.a,
                if accept { "and" } else { "stay apart from" },
                row.pair.b
            );
            Ok(EXIT_OK)
        }
        None => {
            eprintln_redacted!("error: there is no possible match #{id}");
            Ok(EXIT_INVALID)
        }
    }
}

pub async fn identities(config: &Config, command: IdentitiesCommand) -> u8 {
    let (link, a, b) = match command {
        IdentitiesCommand::Link { a, b } => (true, a, Some(b)),
        IdentitiesCommand::Unlink { a, b } => (false, a, b),
        IdentitiesCommand::Export { format, out } => {
            return export(config, &format, out.as_deref()).await;
        }
        IdentitiesCommand::Evaluate { truth, examples } => {
            return super::evaluate_identities(config, &truth, examples).await;
        }
        IdentitiesCommand::Train => return super::train_model(config).await,
    };
    let refs = match std::iter::once(&a)
        .chain(b.as_ref())
        .map(|text| parse_ref(text))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(refs) => refs,
        Err(error) => {
            eprintln_redacted!("error: {error}");
            return EXIT_INVALID;
        }
    };
    let Some(store) = open_store_reporting(config).await else {
        return EXIT_RUNTIME;
    };
    decide_pairs(store.as_ref(), link, &refs)
        .await
        .unwrap_or_else(|error| {
            eprintln_redacted!("error: {error}");
            EXIT_RUNTIME
        })
}

/// Records per page read from the store while exporting.
const EXPORT_PAGE: i64 = 10_000;

/// `identities export`: streams every customer record with its profile id, a page at a time.
async fn export(config: &Config, format: &str, out: Option<&Path>) -> u8 {
    let csv = match format {
        "csv" => true,
        "ndjson" => false,
        other => {
            eprintln_redacted!("error: unknown export format {other:?}; use csv or ndjson");
            return EXIT_INVALID;
        }
    };
    let sink: Box<dyn Write> = match out {
        Some(path) => match std::fs::File::create(path) {
            Ok(file) => Box::new(file),
            Err(error) => {
                eprintln_redacted!("error: cannot write {}: {error}", path.display());
                return EXIT_RUNTIME;
            }
        },
        None => Box::new(std::io::stdout().lock()),
    };
    let Some(store) = open_store_reporting(config).await else {
        return EXIT_RUNTIME;
    };
    match write_export(store.as_ref(), csv, std::io::BufWriter::new(sink)).await {
        Ok(rows) => {
            if let Some(path) = out {
                eprintln_redacted!("{rows} records written to {}", path.display());
            }
            EXIT_OK
        }
        Err(error) => {
            eprintln_redacted!("error: {error}");
            EXIT_RUNTIME
        }
    }
}

async fn write_export(
    store: &dyn Store,
    csv: bool,
    mut out: impl Write,
) -> Result<u64, Box<dyn std::error::Error>> {
    if csv {
        writeln!(out, "system,stream,source_id,profile_id")?;
    }
    let mut after: Option<SourceRef> = None;
    let mut rows = 0;
    let mut line = Vec::new();
    loop {
        let page = store.identity_rows(after.as_ref(), EXPORT_PAGE).await?;
        for (record, profile) in &page {
            line.clear();
            if csv {
                let mut writer = ::csv::Writer::from_writer(&mut line);
                writer.write_record([
                    record.system.as_str(),
                    record.stream.as_str(),
                    record.source_id.as_str(),
                    &profile.to_string(),
                ])?;
                writer.flush()?;
            } else {
                let json = serde_json::json!({
                    "system": record.system,
                    "stream": record.stream,
                    "source_id": record.source_id,
                    "profile_id": profile,
                });
                serde_json::to_writer(&mut line, &json)?;
                line.push(b'\n');
            }
            out.write_all(&line)?;
        }
        rows += page.len() as u64;
        match page.last() {
            Some((last, _)) if page.len() as i64 == EXPORT_PAGE => after = Some(last.clone()),
            _ => break,
        }
    }
    out.flush()?;
    Ok(rows)
}

/// Stores the manual decision on `refs` (two records, or one record against the rest of its
/// profile when unlinking) in one transaction.
async fn decide_pairs(store: &dyn Store, link: bool, refs: &[SourceRef]) -> Result<u8, StoreError> {
    let mut tx = store.begin().await?;
    let found = tx.customers_by_refs(refs).await?;
    for wanted in refs {
        if !found.iter().any(|c| &c.source == wanted) {
            eprintln_redacted!("error: no customer record {wanted} is stored");
            return Ok(EXIT_INVALID);
        }
    }
    let pairs: Vec<(SourceRef, SourceRef)> = match refs {
        [a, b] if a == b => {
            eprintln_redacted!("error: a record is always one customer with itself");
            return Ok(EXIT_INVALID);
        }
        [a, b] => vec![(a.clone(), b.clone())],
        [a] => {
            let Some(profile) = tx.link_of(a).await? else {
                eprintln_redacted!("error: {a} is not linked to any profile yet");
                return Ok(EXIT_INVALID);
            };
            tx.customers_of(profile)
                .await?
                .into_iter()
                .map(|c| c.source)
                .filter(|other| other != a)
                .map(|other| (a.clone(), other))
                .collect()
        }
        _ => unreachable!("the command line gives one or two records"),
    };
    if pairs.is_empty() {
        println_redacted!("{} is alone in its profile already; nothing to do", refs[0]);
        return Ok(EXIT_OK);
    }
    for (a, b) in &pairs {
        tx.set_decision(&IdentityDecision::new(a.clone(), b.clone(), link))
            .await?;
    }
    tx.commit().await?;
    for (a, b) in &pairs {
        println_redacted!(
            "{}: {a} {} {b}",
            if link { "linked" } else { "kept apart" },
            if link { "and" } else { "from" }
        );
    }
    println_redacted!("the next run re-resolves these records and republishes their profiles");
    Ok(EXIT_OK)
}

/// The stored customer records among `refs`, read in a transaction that is rolled back.
async fn customers(store: &dyn Store, refs: &[SourceRef]) -> Result<Vec<Customer>, StoreError> {
    let mut tx = store.begin().await?;
    tx.customers_by_refs(refs).await
}

fn probability_of(row: &PossibleMatchRow) -> String {
    serde_json::from_str::<serde_json::Value>(&row.pair.detail)
        .ok()
        .and_then(|d| d.get("probability").and_then(|p| p.as_f64()))
        .map_or_else(|| "?".into(), |p| format!("{p:.3}"))
}

/// A short human label of a customer: company or name, else its e-mail.
fn label(customer: Option<&Customer>) -> String {
    let Some(c) = customer else {
        return "no longer stored".into();
    };
    let name = c
        .company
        .clone()
        .or_else(|| c.full_name.clone())
        .or_else(|| {
            let parts: Vec<&str> = [c.given_name.as_deref(), c.family_name.as_deref()]
                .into_iter()
                .flatten()
                .collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        });
    name.or_else(|| c.emails.first().cloned())
        .unwrap_or_else(|| "unnamed".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_references_split_on_the_first_two_slashes() {
        assert_eq!(
            parse_ref("sap/customers/0000100042").unwrap(),
            SourceRef {
                system: "sap".into(),
                stream: "customers".into(),
                source_id: "0000100042".into()
            }
        );
        assert_eq!(parse_ref("shop/orders/a/b").unwrap().source_id, "a/b");
        let error = parse_ref("sap/customers").unwrap_err();
        assert!(error.contains("system/stream/source_id"), "{error}");
        assert!(parse_ref("sap//42").is_err());
    }
}
