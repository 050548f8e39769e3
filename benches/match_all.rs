//! The in-memory matcher's benchmark: `cargo bench --bench match_all`.
//!
//! Generates synthetic people (a third with a noisy second record, one in ten in a household
//! with the previous person), runs `match_all` with the default settings (estimation on), and
//! prints time per stage, peak memory (VmHWM), candidate pairs per blocking rule and pairwise
//! precision, recall and F1. `CONFLUX_MATCH_ENTITIES` sets the number of people (default
//! 750 000, about 1M records). It fails when F1 drops to 0.9 or below.

use std::time::Instant;

use conflux::model::{Address, Customer, PartyKind, SourceRef};
use conflux::resolver::matcher::{MatchSettings, match_all};
use conflux::resolver::prepare::{Prepared, Preparer};
use conflux::resolver::scoring;

/// Synthetic customers for the timing run: `entities` people, about a third with a
/// noisy second record from another system, and one in ten sharing a household (family
/// name, address, landline) with the previous person. Source ids are `<entity>-<copy>`.
fn synthetic(entities: usize, seed: u64) -> Vec<Customer> {
    const GIVEN: &[&str] = &[
        "Hans",
        "Anna",
        "Peter",
        "Maria",
        "Thomas",
        "Julia",
        "Michael",
        "Laura",
        "Robert",
        "Katherine",
        "William",
        "Sophie",
        "Johannes",
        "Lena",
        "Stefan",
        "Claire",
        "Jean",
        "Marie",
        "Lukas",
        "Emma",
        "James",
        "Olivia",
        "Andreas",
        "Sarah",
        "Felix",
        "Nina",
        "Pierre",
        "Camille",
        "Jakob",
        "Paula",
        "David",
        "Hannah",
        "Daniel",
        "Lea",
        "Tobias",
        "Mia",
        "Martin",
        "Clara",
        "Simon",
        "Greta",
    ];
    const NICK: &[(&str, &str)] = &[
        ("Robert", "Bob"),
        ("William", "Bill"),
        ("Katherine", "Kate"),
        ("Johannes", "Hans"),
        ("Michael", "Mike"),
        ("James", "Jim"),
        ("Thomas", "Tom"),
    ];
    const HEAD: &[&str] = &[
        "Mü", "Schm", "Wag", "Bec", "Hof", "Kl", "Wol", "Neu", "Zim", "Kra", "Lang", "Fuch",
        "Hart", "Wer", "Lehm", "Kai", "Schu", "Ko", "Ber", "Stein", "Brau", "Vo", "Rich", "Baum",
        "Sei", "Jung", "Mar", "Hah", "Pet", "Lor", "Gra", "Ro", "Fri", "Sa", "Dre", "Eng", "Hei",
        "Ot", "Wi", "Ul",
    ];
    const TAIL: &[&str] = &[
        "ller", "idt", "ner", "ker", "mann", "ein", "ff", "bauer", "mer", "use", "ert", "el",
        "ber", "ke", "hardt", "er", "ter", "ling", "sen", "stein", "hof", "rich", "ow", "inger",
        "berg", "ler", "ski", "ach", "beck", "au",
    ];
    const MID: &[&str] = &["", "en", "er", "el", "a", "o", "i", "ing", "au", "ol"];
    const STREETS: &[&str] = &[
        "Haupt", "Bahnhof", "Schul", "Garten", "Dorf", "Berg", "Linden", "Kirch", "Wald", "Ring",
        "Mühlen", "Wiesen", "Feld", "Rosen", "Birken", "Tal", "Buchen", "Eichen", "Sonnen", "Post",
    ];
    let mut rng = scoring::SplitMix64::new(seed);
    let mut out = Vec::with_capacity(entities * 14 / 10);
    let mut previous: Option<Customer> = None;
    for e in 0..entities {
        let pick =
            |rng: &mut scoring::SplitMix64, list: &[&'static str]| list[rng.below(list.len())];
        let given = pick(&mut rng, GIVEN);
        let mut base = match (&previous, rng.below(10)) {
            (Some(p), 0) => {
                // A household member: same family, address and landline.
                let mut c = p.clone();
                c.given_name = Some(given.into());
                c.phones.truncate(1);
                c
            }
            _ => {
                let family = format!(
                    "{}{}{}",
                    pick(&mut rng, HEAD),
                    pick(&mut rng, MID),
                    pick(&mut rng, TAIL)
                );
                let postcode = format!("{:05}", 1000 + rng.below(30_000));
                Customer {
                    kind: PartyKind::Person,
                    given_name: Some(given.into()),
                    family_name: Some(family),
                    phones: vec![format!("+4930{:08}", rng.below(100_000_000))],
                    addresses: vec![Address {
                        lines: vec![format!(
                            "{}straße {}",
                            pick(&mut rng, STREETS),
                            1 + rng.below(150)
                        )],
                        postcode: Some(postcode),
                        city: Some("Berlin".into()),
                        country: Some("DE".into()),
                        ..Address::default()
                    }],
                    ..Customer::default()
                }
            }
        };
        let family = base.family_name.clone().unwrap_or_default();
        base.source = SourceRef {
            system: "crm".into(),
            stream: "customers".into(),
            source_id: format!("{e}-0"),
        };
        base.emails = vec![format!(
            "{}.{}{}@example.com",
            given.to_lowercase(),
            family.to_lowercase(),
            rng.below(1000)
        )];
        base.phones
            .push(format!("+49170{:07}", rng.below(10_000_000)));
        base.birth_date = jiff::civil::Date::new(
            1940 + rng.below(65) as i16,
            1 + rng.below(12) as i8,
            1 + rng.below(28) as i8,
        )
        .ok();
        if rng.below(3) == 0 {
            let mut dup = base.clone();
            dup.source = SourceRef {
                system: "erp".into(),
                stream: "customers".into(),
                source_id: format!("{e}-1"),
            };
            match rng.below(4) {
                0 => dup.emails.clear(),
                1 => {
                    dup.phones.remove(1);
                }
                2 => dup.birth_date = None,
                _ => {}
            }
            if rng.below(3) == 0 {
                // A typo: two neighbouring letters swapped in the family name.
                let mut chars: Vec<char> = family.chars().collect();
                let i = 1 + rng.below(chars.len() - 2);
                chars.swap(i, i + 1);
                dup.family_name = Some(chars.into_iter().collect());
            }
            if let Some(&(_, nick)) = NICK.iter().find(|(full, _)| *full == given) {
                dup.given_name = Some(nick.into());
            }
            if rng.below(2) == 0 {
                dup.addresses[0].lines[0] = dup.addresses[0].lines[0].replace("straße", "str.");
            }
            if rng.below(5) == 0 && !dup.phones.is_empty() {
                // National format, read with the default region.
                dup.phones[0] = format!("0{}", &dup.phones[0][3..]);
            }
            out.push(dup);
        }
        previous = Some(base.clone());
        out.push(base);
    }
    out
}

fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Timing and quality of `match_all` on synthetic data;
/// `CONFLUX_MATCH_ENTITIES` sets the number of people (default 750 000, about 1M records).
fn main() {
    let entities = std::env::var("CONFLUX_MATCH_ENTITIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(750_000);
    let started = Instant::now();
    let customers = synthetic(entities, 1);
    let generated = started.elapsed();
    let memory_before = peak_memory_mib();
    let started = Instant::now();
    let outcome = match_all(&customers, &MatchSettings::default()).unwrap();
    let elapsed = started.elapsed();
    let entity = |r: &SourceRef| r.source_id.split('-').next().unwrap_or("").to_string();
    let mut true_pairs = 0u64;
    let mut found_pairs = 0u64;
    let mut predicted_pairs = 0u64;
    let mut per_entity: std::collections::HashMap<String, u64> = Default::default();
    for c in &customers {
        *per_entity.entry(entity(&c.source)).or_default() += 1;
    }
    for n in per_entity.values() {
        true_pairs += n * (n - 1) / 2;
    }
    for cluster in &outcome.clusters {
        let n = cluster.len() as u64;
        predicted_pairs += n * (n - 1) / 2;
        let mut counts: std::collections::HashMap<String, u64> = Default::default();
        for r in cluster {
            *counts.entry(entity(r)).or_default() += 1;
        }
        found_pairs += counts.values().map(|n| n * (n - 1) / 2).sum::<u64>();
    }
    if std::env::var("CONFLUX_MATCH_DEBUG").is_ok() {
        let by_ref: std::collections::HashMap<&SourceRef, &Customer> =
            customers.iter().map(|c| (&c.source, c)).collect();
        let settings = MatchSettings::default();
        let preparer = Preparer::new(&settings.normalise);
        let table = outcome.model.weights();
        for cluster in outcome.clusters.iter().filter(|c| c.len() > 2).take(3) {
            println!("cluster {}", cluster.len());
            let prepared: Vec<Prepared> = cluster
                .iter()
                .map(|r| preparer.prepare(by_ref[r]))
                .collect();
            for (i, p) in prepared.iter().enumerate().take(4) {
                println!(
                    "  {} {:?} {:?} {:?} {:?} {:?} {:?}",
                    cluster[i].source_id,
                    p.given,
                    p.family,
                    p.street,
                    p.house_number,
                    p.birth_date,
                    p.phones
                );
                for q in prepared.iter().take(i) {
                    let c = scoring::compare(q, p);
                    println!("     {c:?} {:.2}", table.weight(&c));
                }
            }
        }
    }
    let precision = found_pairs as f64 / predicted_pairs.max(1) as f64;
    let recall = found_pairs as f64 / true_pairs.max(1) as f64;
    let f1 = 2.0 * precision * recall / (precision + recall).max(f64::MIN_POSITIVE);
    println!(
        "records {} (generated in {generated:.1?}), match_all {elapsed:.2?} {:?}",
        customers.len(),
        outcome.times
    );
    println!(
        "peak memory {:.0} MiB (before matching {:.0} MiB)",
        peak_memory_mib().unwrap_or(f64::NAN),
        memory_before.unwrap_or(f64::NAN)
    );
    println!(
        "candidate pairs {} ({:?}), clusters {}, review {}, rejected {}",
        outcome.blocking.total_pairs,
        outcome
            .blocking
            .rules
            .iter()
            .map(|r| (r.rule.as_str(), r.pairs, r.skipped_blocks))
            .collect::<Vec<_>>(),
        outcome.clusters.len(),
        outcome.review.len(),
        outcome.rejected.len()
    );
    println!("pairwise precision {precision:.4} recall {recall:.4} F1 {f1:.4}");
    assert!(f1 > 0.9, "F1 {f1}");
}
