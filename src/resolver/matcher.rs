//! The whole probabilistic match in memory: [`match_all`].
//!
//! prepare → block → (estimate u and m, when asked) → score → cluster, over a slice of
//! [`Customer`]s, under one [`MatchSettings`]. The result, a [`MatchOutcome`], names records
//! by their [`SourceRef`], never by input position: the customers are put in `SourceRef`
//! order first, so a shuffled input gives the same outcome. Preparing, blocking and scoring
//! run on `threads` threads through [`parallel::map_chunks`], whose output does not depend on
//! timing. This is the entry point for the benchmark and the tests; incremental runs use the
//! pieces directly.

use std::time::{Duration, Instant};

use super::blocking::{self, BlockingReport, BlockingRule};
use super::cluster::{self, ClusterSettings, Decisions, Rejection, ScoredPair};
use super::parallel;
use super::prepare::{NormaliseSettings, Prepared, Preparer};
use super::scoring::{self, Comparison, MatchModel, ModelOverrides, OverrideError};
use crate::model::{Customer, SourceRef};

/// Everything [`match_all`] needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchSettings {
    pub normalise: NormaliseSettings,
    pub blocking: Vec<BlockingRule>,
    /// Blocks with more records than this are skipped (and reported).
    pub max_block_size: usize,
    /// The starting model; [`MatchModel::default`] unless configured.
    pub model: MatchModel,
    /// Estimate u from random pairs and m by EM before scoring.
    pub estimate: bool,
    /// Random pairs sampled for u.
    pub u_samples: usize,
    pub seed: u64,
    pub em_iterations: usize,
    /// Applied last: they win over built-in and estimated values.
    pub overrides: ModelOverrides,
    pub cluster: ClusterSettings,
    pub must_link: Vec<(SourceRef, SourceRef)>,
    pub never_link: Vec<(SourceRef, SourceRef)>,
    /// Worker threads; 0 = all cores.
    pub threads: usize,
}

impl Default for MatchSettings {
    fn default() -> Self {
        MatchSettings {
            normalise: NormaliseSettings::default(),
            blocking: BlockingRule::defaults(),
            max_block_size: 200,
            model: MatchModel::default(),
            estimate: false,
            u_samples: 200_000,
            seed: 0x5eed,
            em_iterations: 100,
            overrides: ModelOverrides::default(),
            cluster: ClusterSettings::default(),
            must_link: Vec::new(),
            never_link: Vec::new(),
            threads: 0,
        }
    }
}

/// A pair of records with its score.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchPair {
    pub a: SourceRef,
    pub b: SourceRef,
    pub weight: f64,
    pub probability: f64,
}

/// How long each stage took.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageTimes {
    pub prepare: Duration,
    pub block: Duration,
    pub estimate: Duration,
    pub score: Duration,
    pub cluster: Duration,
}

/// What [`match_all`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchOutcome {
    /// Clusters of two or more records, each sorted, in order of their first record.
    pub clusters: Vec<Vec<SourceRef>>,
    /// Records that matched nothing.
    pub singletons: usize,
    /// Possible matches for review, by descending probability, then by records.
    pub review: Vec<MatchPair>,
    /// Links above the threshold that the cluster guards refused.
    pub rejected: Vec<(MatchPair, Rejection)>,
    pub blocking: BlockingReport,
    /// The model used for scoring (after estimation and overrides).
    pub model: MatchModel,
    pub times: StageTimes,
}

/// Matches `customers` with each other; see the module header. Fails only when the model
/// overrides are invalid.
pub fn match_all(
    customers: &[Customer],
    settings: &MatchSettings,
) -> Result<MatchOutcome, Vec<OverrideError>> {
    let threads = parallel::threads(settings.threads);
    let mut times = StageTimes::default();

    // Work in SourceRef order so nothing depends on input order.
    let mut order: Vec<usize> = (0..customers.len()).collect();
    order.sort_by(|&a, &b| customers[a].source.cmp(&customers[b].source));
    let record = |i: u32| &customers[order[i as usize]].source;

    let started = Instant::now();
    let preparer = Preparer::new(&settings.normalise);
    let prepared: Vec<Prepared> = parallel::map_chunks(order.len(), threads, |range| {
        range
            .map(|i| preparer.prepare(&customers[order[i]]))
            .collect()
    });
    times.prepare = started.elapsed();

    let started = Instant::now();
    let (pairs, report) = blocking::candidate_pairs_with_threads(
        &prepared,
        &settings.blocking,
        settings.max_block_size,
        threads,
    );
    times.block = started.elapsed();

    let started = Instant::now();
    let comparisons: Vec<Comparison> = parallel::map_chunks(pairs.len(), threads, |range| {
        range
            .map(|k| {
                let (i, j) = pairs[k];
                scoring::compare(&prepared[i as usize], &prepared[j as usize])
            })
            .collect()
    });
    times.score = started.elapsed();

    let started = Instant::now();
    let mut model = settings.model.clone();
    if settings.estimate {
        if let Some(u) = scoring::estimate_u(&prepared, settings.u_samples, settings.seed) {
            model.u = u;
        }
        // Overrides first too, so pinned u values shape the EM fit.
        model.apply(&settings.overrides)?;
        model = scoring::estimate_m(&model, &comparisons, settings.em_iterations).0;
    }
    model.apply(&settings.overrides)?;
    times.estimate = started.elapsed();

    let started = Instant::now();
    let table = model.weights();
    let floor = table.weight_for(settings.cluster.review_from.min(settings.cluster.threshold));
    let scored: Vec<ScoredPair> = pairs
        .iter()
        .zip(&comparisons)
        .filter_map(|(&(a, b), c)| {
            let weight = table.weight(c);
            (weight >= floor).then(|| ScoredPair {
                a,
                b,
                weight,
                probability: table.probability(weight),
            })
        })
        .collect();
    drop(comparisons);
    drop(pairs);
    times.score += started.elapsed();

    let started = Instant::now();
    let index = |r: &SourceRef| {
        order
            .binary_search_by(|&i| customers[i].source.cmp(r))
            .ok()
            .map(|i| i as u32)
    };
    let by_index = |list: &[(SourceRef, SourceRef)]| -> Vec<(u32, u32)> {
        list.iter()
            .filter_map(|(a, b)| Some((index(a)?, index(b)?)))
            .collect()
    };
    let decisions = Decisions {
        must_link: by_index(&settings.must_link),
        never_link: by_index(&settings.never_link),
    };
    let clustering = cluster::cluster(
        prepared.len(),
        &scored,
        &settings.cluster,
        &decisions,
        |i| &prepared[i].identifiers,
    );
    let named = |p: &ScoredPair| {
        let (a, b) = (record(p.a).clone(), record(p.b).clone());
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        MatchPair {
            a,
            b,
            weight: p.weight,
            probability: p.probability,
        }
    };
    let groups = clustering.groups();
    let clustered: usize = groups.iter().map(Vec::len).sum();
    let clusters: Vec<Vec<SourceRef>> = groups
        .iter()
        .map(|g| g.iter().map(|&i| record(i).clone()).collect())
        .collect();
    let mut review: Vec<MatchPair> = clustering.review.iter().map(named).collect();
    review.sort_by(|p, q| {
        q.probability
            .total_cmp(&p.probability)
            .then_with(|| (&p.a, &p.b).cmp(&(&q.a, &q.b)))
    });
    let rejected = clustering
        .rejected
        .iter()
        .map(|(p, r)| (named(p), *r))
        .collect();
    times.cluster = started.elapsed();

    Ok(MatchOutcome {
        clusters,
        singletons: prepared.len() - clustered,
        review,
        rejected,
        blocking: report,
        model,
        times,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Address, Identifier, PartyKind};

    fn sref(id: &str) -> SourceRef {
        SourceRef {
            system: "crm".into(),
            stream: "customers".into(),
            source_id: id.into(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn person(
        id: &str,
        given: &str,
        family: &str,
        street: &str,
        email: &str,
        phones: &[&str],
        birth: &str,
    ) -> Customer {
        Customer {
            source: sref(id),
            kind: PartyKind::Person,
            given_name: Some(given.into()),
            family_name: Some(family.into()),
            emails: (!email.is_empty())
                .then(|| email.into())
                .into_iter()
                .collect(),
            phones: phones.iter().map(|p| p.to_string()).collect(),
            addresses: vec![Address {
                lines: vec![street.into()],
                postcode: Some("80331".into()),
                city: Some("München".into()),
                country: Some("DE".into()),
                ..Address::default()
            }],
            birth_date: birth.parse().ok(),
            ..Customer::default()
        }
    }

    fn company(id: &str, name: &str, vat: &str, street: &str) -> Customer {
        Customer {
            source: sref(id),
            kind: PartyKind::Organization,
            company: Some(name.into()),
            identifiers: (!vat.is_empty())
                .then(|| Identifier {
                    scheme: "vat".into(),
                    value: vat.into(),
                })
                .into_iter()
                .collect(),
            addresses: vec![Address {
                lines: vec![street.into()],
                postcode: Some("10115".into()),
                city: Some("Berlin".into()),
                country: Some("DE".into()),
                ..Address::default()
            }],
            ..Customer::default()
        }
    }

    const LANDLINE: &str = "+49 89 1234567";

    /// One household: the Müllers share surname, address and landline; they differ in
    /// given name, birth date, e-mail and mobile. h1d is a typo'd duplicate of h1 from
    /// another system.
    fn household() -> Vec<Customer> {
        vec![
            person(
                "h1",
                "Hans",
                "Müller",
                "Hauptstraße 12",
                "hans.mueller@example.com",
                &[LANDLINE, "+49 170 1111111"],
                "1970-04-12",
            ),
            person(
                "h2",
                "Greta",
                "Müller",
                "Hauptstraße 12",
                "greta.m@example.org",
                &[LANDLINE, "+49 171 2222222"],
                "1972-09-30",
            ),
            person(
                "h3",
                "Lukas",
                "Müller",
                "Hauptstraße 12",
                "lukas2004@example.net",
                &[LANDLINE, "+49 172 3333333"],
                "2004-01-05",
            ),
            person(
                "h1d",
                "Hans",
                "MUELLER",
                "Hauptstr. 12",
                "",
                &["+49 89 1234576"],
                "1970-04-12",
            ),
        ]
    }

    #[test]
    fn a_household_stays_apart_while_a_typod_duplicate_links() {
        let outcome = match_all(&household(), &MatchSettings::default()).unwrap();
        assert_eq!(
            outcome.clusters,
            vec![vec![sref("h1"), sref("h1d")]],
            "review: {:?}",
            outcome.review
        );
        assert!(
            outcome
                .review
                .iter()
                .all(|p| p.a.source_id != "h2" && p.b.source_id != "h2"),
            "household members are not even possible matches: {:?}",
            outcome.review
        );
        assert_eq!(outcome.singletons, 2);
    }

    #[test]
    fn a_chain_across_different_vat_ids_is_split() {
        // A and C are different companies (different VAT ids); B has no VAT id and looks
        // like both.
        let customers = vec![
            company("A", "Müller Bau GmbH", "DE111111111", "Invalidenstraße 5"),
            company("B", "Mueller Bau", "", "Invalidenstr. 5"),
            company("C", "Müller Bau AG", "DE222222222", "Invalidenstraße 5"),
        ];
        let outcome = match_all(&customers, &MatchSettings::default()).unwrap();
        assert_eq!(outcome.clusters.len(), 1, "{:?}", outcome.clusters);
        assert_eq!(outcome.clusters[0].len(), 2);
        assert!(outcome.clusters[0].contains(&sref("B")));
        assert!(
            outcome
                .rejected
                .iter()
                .any(|(_, r)| *r == Rejection::ConflictingIdentifier),
            "{:?}",
            outcome.rejected
        );
    }

    #[test]
    fn people_decisions_win() {
        let settings = MatchSettings {
            never_link: vec![(sref("h1"), sref("h1d"))],
            must_link: vec![(sref("h2"), sref("h3"))],
            ..MatchSettings::default()
        };
        let outcome = match_all(&household(), &settings).unwrap();
        assert_eq!(outcome.clusters, vec![vec![sref("h2"), sref("h3")]]);
    }

    #[test]
    fn shuffled_input_gives_identical_output() {
        let mut customers = household();
        customers.extend([
            company("A", "Müller Bau GmbH", "DE111111111", "Invalidenstraße 5"),
            company("B", "Mueller Bau", "", "Invalidenstr. 5"),
            company("C", "Müller Bau AG", "DE222222222", "Invalidenstraße 5"),
            company("D", "Schmidt & Söhne KG", "", "Torstraße 1"),
            company("E", "Schmidt und Soehne", "", "Torstr. 1"),
        ]);
        // With the built-in model and with estimation (whose sampling must not depend on
        // input order either).
        for estimate in [false, true] {
            let settings = MatchSettings {
                estimate,
                u_samples: 500,
                threads: 2,
                ..MatchSettings::default()
            };
            let mut first = match_all(&customers, &settings).unwrap();
            first.times = StageTimes::default();
            let mut rng = scoring::SplitMix64::new(42);
            for round in 0..5 {
                for i in (1..customers.len()).rev() {
                    customers.swap(i, rng.below(i + 1));
                }
                let mut again = match_all(&customers, &settings).unwrap();
                again.times = StageTimes::default();
                assert_eq!(first, again, "estimate {estimate}, round {round}");
            }
            if !estimate {
                assert_eq!(first.clusters.len(), 3, "{:?}", first.clusters);
            }
        }
    }

    #[test]
    fn bad_overrides_are_reported() {
        let mut settings = MatchSettings::default();
        settings.overrides.prior = Some(2.0);
        let errors = match_all(&household(), &settings).unwrap_err();
        assert_eq!(errors.len(), 1);
    }

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
            "Hart", "Wer", "Lehm", "Kai", "Schu", "Ko", "Ber", "Stein", "Brau", "Vo", "Rich",
            "Baum", "Sei", "Jung", "Mar", "Hah", "Pet", "Lor", "Gra", "Ro", "Fri", "Sa", "Dre",
            "Eng", "Hei", "Ot", "Wi", "Ul",
        ];
        const TAIL: &[&str] = &[
            "ller", "idt", "ner", "ker", "mann", "ein", "ff", "bauer", "mer", "use", "ert", "el",
            "ber", "ke", "hardt", "er", "ter", "ling", "sen", "stein", "hof", "rich", "ow",
            "inger", "berg", "ler", "ski", "ach", "beck", "au",
        ];
        const MID: &[&str] = &["", "en", "er", "el", "a", "o", "i", "ing", "au", "ol"];
        const STREETS: &[&str] = &[
            "Haupt", "Bahnhof", "Schul", "Garten", "Dorf", "Berg", "Linden", "Kirch", "Wald",
            "Ring", "Mühlen", "Wiesen", "Feld", "Rosen", "Birken", "Tal", "Buchen", "Eichen",
            "Sonnen", "Post",
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

    /// Timing and quality of `match_all` on synthetic data. Run with
    /// `cargo test --release --lib match_all_timing -- --ignored --nocapture`;
    /// `CONFLUX_MATCH_ENTITIES` sets the number of people (default 750 000, about 1M records).
    #[test]
    #[ignore = "a timing run, not a test; run it in release mode"]
    fn match_all_timing() {
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
}
