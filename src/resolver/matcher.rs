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
    /// When set, only candidate pairs holding at least one of these records are compared;
    /// incremental resolution passes the records that changed and keeps the others' links
    /// as `must_link`.
    pub focus: Option<Vec<SourceRef>>,
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
            focus: None,
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

/// Prepared records, put in [`SourceRef`] order by [`match_prepared`]. Holding these
/// instead of the [`Customer`]s they came from takes about a third of the memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PreparedRecords {
    refs: Vec<SourceRef>,
    prepared: Vec<Prepared>,
}

impl PreparedRecords {
    /// Prepares `customers` on `threads` threads (0 = all cores).
    pub fn prepare(customers: &[Customer], settings: &NormaliseSettings, threads: usize) -> Self {
        let mut records = PreparedRecords::default();
        records.extend(customers, settings, threads);
        records
    }

    /// Prepares `customers` and adds them; the order is restored by [`match_prepared`].
    pub fn extend(&mut self, customers: &[Customer], settings: &NormaliseSettings, threads: usize) {
        let preparer = Preparer::new(settings);
        let threads = parallel::threads(threads);
        let prepared: Vec<Prepared> = parallel::map_chunks(customers.len(), threads, |range| {
            range.map(|i| preparer.prepare(&customers[i])).collect()
        });
        self.refs.extend(customers.iter().map(|c| c.source.clone()));
        self.prepared.extend(prepared);
    }

    pub fn len(&self) -> usize {
        self.refs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    /// The prepared form of `record`, once [`match_prepared`] has put the records in order.
    pub fn get(&self, record: &SourceRef) -> Option<&Prepared> {
        debug_assert!(self.refs.is_sorted());
        let i = self.refs.binary_search(record).ok()?;
        Some(&self.prepared[i])
    }

    /// Puts the records in `SourceRef` order, so nothing depends on input order.
    fn sort(&mut self) {
        if self.refs.is_sorted() {
            return;
        }
        let refs = std::mem::take(&mut self.refs);
        let prepared = std::mem::take(&mut self.prepared);
        let mut rows: Vec<(SourceRef, Prepared)> = refs.into_iter().zip(prepared).collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        (self.refs, self.prepared) = rows.into_iter().unzip();
    }
}

/// Matches `customers` with each other; see the module header. Fails only when the model
/// overrides are invalid.
pub fn match_all(
    customers: &[Customer],
    settings: &MatchSettings,
) -> Result<MatchOutcome, Vec<OverrideError>> {
    let started = Instant::now();
    let mut records = PreparedRecords::prepare(customers, &settings.normalise, settings.threads);
    let prepared = started.elapsed();
    let mut outcome = match_prepared(&mut records, settings)?;
    outcome.times.prepare = prepared;
    Ok(outcome)
}

/// [`match_all`] over records already prepared; puts them in `SourceRef` order.
pub fn match_prepared(
    records: &mut PreparedRecords,
    settings: &MatchSettings,
) -> Result<MatchOutcome, Vec<OverrideError>> {
    let threads = parallel::threads(settings.threads);
    let mut times = StageTimes::default();
    records.sort();
    let (refs, prepared) = (&records.refs, &records.prepared);
    let record = |i: u32| &refs[i as usize];
    let index = |r: &SourceRef| refs.binary_search(r).ok().map(|i| i as u32);

    let started = Instant::now();
    let (pairs, mut report) = blocking::candidate_pairs_with_threads(
        prepared,
        &settings.blocking,
        settings.max_block_size,
        threads,
    );
    let pairs = match &settings.focus {
        None => pairs,
        Some(focus) => {
            let mut focused = vec![false; refs.len()];
            for i in focus.iter().filter_map(index) {
                focused[i as usize] = true;
            }
            pairs
                .into_iter()
                .filter(|&(i, j)| focused[i as usize] || focused[j as usize])
                .collect()
        }
    };
    report.total_pairs = pairs.len() as u64;
    times.block = started.elapsed();

    // Estimation needs every pair's comparison vector; plain scoring keeps only the pairs
    // above the review floor, so it never holds one vector per candidate pair (30M pairs
    // at 1M records).
    let started = Instant::now();
    let mut model = settings.model.clone();
    let comparisons = if settings.estimate {
        let comparisons = compare_all(prepared, &pairs, threads);
        times.score = started.elapsed();
        let started = Instant::now();
        if let Some(u) = scoring::estimate_u(prepared, settings.u_samples, settings.seed) {
            model.u = u;
        }
        // Overrides first too, so pinned u values shape the EM fit.
        model.apply(&settings.overrides)?;
        model = scoring::estimate_m(&model, &comparisons, settings.em_iterations).0;
        times.estimate = started.elapsed();
        Some(comparisons)
    } else {
        None
    };
    model.apply(&settings.overrides)?;

    let started = Instant::now();
    let table = model.weights();
    let floor = table.weight_for(settings.cluster.review_from.min(settings.cluster.threshold));
    let scored_pair = |k: usize, comparison: &Comparison| {
        let (a, b) = pairs[k];
        let weight = table.weight(comparison);
        (weight >= floor).then(|| ScoredPair {
            a,
            b,
            weight,
            probability: table.probability(weight),
        })
    };
    let scored: Vec<ScoredPair> = match &comparisons {
        Some(comparisons) => (0..pairs.len())
            .filter_map(|k| scored_pair(k, &comparisons[k]))
            .collect(),
        None => parallel::map_chunks(pairs.len(), threads, |range| {
            range
                .filter_map(|k| {
                    let (i, j) = pairs[k];
                    scored_pair(
                        k,
                        &scoring::compare(&prepared[i as usize], &prepared[j as usize]),
                    )
                })
                .collect()
        }),
    };
    drop(comparisons);
    drop(pairs);
    times.score += started.elapsed();

    let started = Instant::now();
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

/// The comparison vector of every pair, on `threads` threads.
fn compare_all(prepared: &[Prepared], pairs: &[(u32, u32)], threads: usize) -> Vec<Comparison> {
    parallel::map_chunks(pairs.len(), threads, |range| {
        range
            .map(|k| {
                let (i, j) = pairs[k];
                scoring::compare(&prepared[i as usize], &prepared[j as usize])
            })
            .collect()
    })
}

/// What [`estimate_model`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    pub records: usize,
    pub candidate_pairs: u64,
    pub model: MatchModel,
}

impl std::fmt::Display for TrainReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "match model estimated from {} records ({} candidate pairs); prior {:.5}",
            self.records, self.candidate_pairs, self.model.prior
        )?;
        let weights = self.model.weights();
        for field in scoring::Field::ALL {
            let levels: Vec<String> = field
                .levels()
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let level = i + 1;
                    format!(
                        "{name} m={:.4} u={:.5} w={:+.1}",
                        self.model.m[field as usize][level],
                        self.model.u[field as usize][level],
                        weights.level_weight(field, level as u8)
                    )
                })
                .collect();
            writeln!(f, "  {:<10} {}", field.as_str(), levels.join(", "))?;
        }
        Ok(())
    }
}

/// Blocking rules with fewer candidate pairs than this teach EM nothing reliable.
const MIN_SESSION_PAIRS: usize = 200;

/// The compared fields a blocking rule forces to agree (or nearly).
fn blocked_fields(rule: &BlockingRule) -> Vec<scoring::Field> {
    use super::blocking::BlockField as B;
    use scoring::Field as F;
    rule.fields
        .iter()
        .map(|field| match field {
            B::Email => F::Email,
            B::Phone => F::Phone,
            B::Identifier => F::Identifier,
            B::Given | B::GivenInitial | B::GivenCanonical => F::Given,
            B::Family | B::FamilyPhonetic => F::Family,
            B::Company | B::CompanyPhonetic => F::Company,
            B::Street | B::Postcode | B::City | B::Country => F::Address,
            B::BirthDate | B::BirthYear => F::BirthDate,
        })
        .collect()
}

/// Estimates the match model from `customers` under `settings` (u from random pairs, m by
/// EM per blocking rule, see the body), without matching. Overrides are applied last.
pub fn estimate_model(
    customers: &[Customer],
    settings: &MatchSettings,
) -> Result<TrainReport, Vec<OverrideError>> {
    let threads = parallel::threads(settings.threads);
    let mut records = PreparedRecords::prepare(customers, &settings.normalise, threads);
    records.sort();
    let prepared = &records.prepared;
    let (pairs, report) = blocking::candidate_pairs_with_threads(
        prepared,
        &settings.blocking,
        settings.max_block_size,
        threads,
    );
    drop(pairs);
    let mut model = settings.model.clone();
    if let Some(u) = scoring::estimate_u(prepared, settings.u_samples, settings.seed) {
        model.u = u;
    }
    model.apply(&settings.overrides)?;
    // EM over all candidates at once drifts to "everything matches": the candidates of an
    // address rule are full of households, those of a name rule full of namesakes. So, as
    // Splink does, EM runs once per blocking rule, and a field's m is taken only from the
    // sessions whose rule does not block on that field (where its agreement is not forced),
    // averaged. The prior stays: it is a property of the whole set, not of one block.
    let mut sums = [[0.0; scoring::LEVEL_SLOTS]; scoring::FIELD_COUNT];
    let mut sessions = [0usize; scoring::FIELD_COUNT];
    for rule in &settings.blocking {
        let (rule_pairs, _) = blocking::candidate_pairs_with_threads(
            prepared,
            std::slice::from_ref(rule),
            settings.max_block_size,
            threads,
        );
        if rule_pairs.len() < MIN_SESSION_PAIRS {
            continue;
        }
        let session = compare_all(prepared, &rule_pairs, threads);
        let (fitted, _) = scoring::estimate_m(&model, &session, settings.em_iterations);
        if !fitted.prior.is_finite() {
            continue;
        }
        let blocked = blocked_fields(rule);
        for field in scoring::Field::ALL {
            if blocked.contains(&field) {
                continue;
            }
            let f = field as usize;
            for (sum, m) in sums[f].iter_mut().zip(fitted.m[f]) {
                *sum += m;
            }
            sessions[f] += 1;
        }
    }
    for f in 0..scoring::FIELD_COUNT {
        if sessions[f] > 0 {
            for (m, sum) in model.m[f].iter_mut().zip(sums[f]) {
                *m = sum / sessions[f] as f64;
            }
        }
    }
    model.apply(&settings.overrides)?;
    Ok(TrainReport {
        records: prepared.len(),
        candidate_pairs: report.total_pairs,
        model,
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
}
