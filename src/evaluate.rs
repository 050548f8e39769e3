//! Match quality against a ground truth: `conflux identities evaluate --truth truth.csv`.
//!
//! [`Truth::read`] loads a `system,stream,source_id,entity_id,household_id` file (as
//! [`crate::generate`] writes it). [`evaluate_store`] pages through the store's customer
//! records with their profile ids ([`Store::identity_rows`]) and [`evaluate`] scores any such
//! assignment: pairwise precision, recall and F1 (a pair is two records in one profile; it is
//! true when they belong to one entity), the household pairs merged (two different
//! customers of one household in one profile), and the worst false-positive profiles and
//! false-negative entities as examples.
//!
//! Records in the truth but not in the store (quarantined, not yet ingested) and stored
//! records missing from the truth are counted and left out of the pair counts. Counting is
//! by group sizes, never by enumerating pairs, so a million records evaluate in seconds.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use thiserror::Error;
use uuid::Uuid;

use crate::model::SourceRef;
use crate::store::{Store, StoreError};

#[derive(Debug, Error)]
pub enum EvaluateError {
    #[error("{path}: {message}")]
    Truth { path: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The labels of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label {
    pub entity: u64,
    /// 0 = in no household.
    pub household: u64,
}

/// The ground truth by record.
#[derive(Debug, Clone, Default)]
pub struct Truth {
    pub labels: HashMap<SourceRef, Label>,
}

impl Truth {
    /// Reads a truth CSV; errors name the file, line and field.
    pub fn read(path: &Path) -> Result<Truth, EvaluateError> {
        let fail = |message: String| EvaluateError::Truth {
            path: path.display().to_string(),
            message,
        };
        let mut reader = csv::Reader::from_path(path).map_err(|e| fail(e.to_string()))?;
        let header = reader.headers().map_err(|e| fail(e.to_string()))?.clone();
        let column = |name: &str| {
            header
                .iter()
                .position(|h| h == name)
                .ok_or_else(|| fail(format!("line 1: no column {name:?}")))
        };
        let (system, stream, source_id, entity, household) = (
            column("system")?,
            column("stream")?,
            column("source_id")?,
            column("entity_id")?,
            column("household_id")?,
        );
        let mut truth = Truth::default();
        for (index, row) in reader.records().enumerate() {
            let line = index + 2;
            let row = row.map_err(|e| fail(format!("line {line}: {e}")))?;
            let field = |i: usize| row.get(i).unwrap_or("");
            let number = |i: usize, name: &str, empty_ok: bool| -> Result<u64, EvaluateError> {
                let text = field(i).trim();
                if text.is_empty() && empty_ok {
                    return Ok(0);
                }
                text.parse().map_err(|_| {
                    fail(format!(
                        "line {line}: field {name}: {text:?} is not a number"
                    ))
                })
            };
            let label = Label {
                entity: number(entity, "entity_id", false)?,
                household: number(household, "household_id", true)?,
            };
            let record = SourceRef {
                system: field(system).to_string(),
                stream: field(stream).to_string(),
                source_id: field(source_id).to_string(),
            };
            truth.labels.insert(record, label);
        }
        Ok(truth)
    }
}

/// A profile holding records of several entities, or an entity spread over several
/// profiles, with its records.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Wrong pairs it contributes (false positives or false negatives).
    pub pairs: u64,
    /// `(record, entity, profile)`.
    pub records: Vec<(SourceRef, u64, Uuid)>,
}

/// The outcome of an evaluation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evaluation {
    pub records: u64,
    pub missing_from_store: u64,
    pub missing_from_truth: u64,
    pub profiles: u64,
    pub true_positives: u64,
    /// Pairs the store links.
    pub predicted_pairs: u64,
    /// Pairs the truth links.
    pub true_pairs: u64,
    pub household_pairs: u64,
    pub household_pairs_merged: u64,
    pub worst_false_positives: Vec<Example>,
    pub worst_false_negatives: Vec<Example>,
}

impl Evaluation {
    pub fn precision(&self) -> f64 {
        ratio(self.true_positives, self.predicted_pairs)
    }

    pub fn recall(&self) -> f64 {
        ratio(self.true_positives, self.true_pairs)
    }

    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }

    /// Share of household pairs (different customers of one household) merged.
    pub fn household_merge_rate(&self) -> f64 {
        if self.household_pairs == 0 {
            0.0
        } else {
            self.household_pairs_merged as f64 / self.household_pairs as f64
        }
    }
}

/// 1.0 when there is nothing to get wrong.
fn ratio(hits: u64, of: u64) -> f64 {
    if of == 0 {
        1.0
    } else {
        hits as f64 / of as f64
    }
}

fn pairs(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

impl std::fmt::Display for Evaluation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "records {} in {} profiles ({} in the truth but not stored, {} stored but not in the truth)",
            self.records, self.profiles, self.missing_from_store, self.missing_from_truth
        )?;
        writeln!(
            f,
            "pairs: {} linked, {} true, {} correct",
            self.predicted_pairs, self.true_pairs, self.true_positives
        )?;
        writeln!(
            f,
            "precision {:.4}  recall {:.4}  F1 {:.4}",
            self.precision(),
            self.recall(),
            self.f1()
        )?;
        writeln!(
            f,
            "household pairs merged: {} of {} ({:.2}%)",
            self.household_pairs_merged,
            self.household_pairs,
            100.0 * self.household_merge_rate()
        )?;
        let mut list = |title: &str, examples: &[Example]| -> std::fmt::Result {
            if examples.is_empty() {
                return Ok(());
            }
            writeln!(f, "{title}:")?;
            for example in examples {
                writeln!(f, "  {} wrong pairs:", example.pairs)?;
                for (record, entity, profile) in &example.records {
                    writeln!(f, "    {record}  entity {entity}  profile {profile}")?;
                }
            }
            Ok(())
        };
        list(
            "worst false positives (profiles mixing customers)",
            &self.worst_false_positives,
        )?;
        list(
            "worst false negatives (customers split over profiles)",
            &self.worst_false_negatives,
        )
    }
}

/// Scores an assignment of records to profiles against the truth, keeping `examples` of
/// each kind of error.
pub fn evaluate(
    truth: &Truth,
    assignment: impl IntoIterator<Item = (SourceRef, Uuid)>,
    examples: usize,
) -> Evaluation {
    let mut eval = Evaluation::default();
    let mut seen = 0u64;
    // Per profile: (entity, household, record) of its members.
    let mut by_profile: HashMap<Uuid, Vec<(u64, u64, SourceRef)>> = HashMap::new();
    for (record, profile) in assignment {
        let Some(label) = truth.labels.get(&record) else {
            eval.missing_from_truth += 1;
            continue;
        };
        seen += 1;
        by_profile
            .entry(profile)
            .or_default()
            .push((label.entity, label.household, record));
    }
    eval.records = seen;
    eval.missing_from_store = truth.labels.len() as u64 - seen;
    eval.profiles = by_profile.len() as u64;

    let mut entity_profiles: HashMap<u64, BTreeMap<Uuid, u64>> = HashMap::new();
    let mut entity_sizes: HashMap<u64, u64> = HashMap::new();
    let mut fp_examples: Vec<Example> = Vec::new();
    for (profile, members) in &by_profile {
        let n = members.len() as u64;
        eval.predicted_pairs += pairs(n);
        let mut entities: BTreeMap<u64, u64> = BTreeMap::new();
        let mut households: BTreeMap<u64, BTreeMap<u64, u64>> = BTreeMap::new();
        for (entity, household, _) in members {
            *entities.entry(*entity).or_default() += 1;
            if *household != 0 {
                *households
                    .entry(*household)
                    .or_default()
                    .entry(*entity)
                    .or_default() += 1;
            }
        }
        let correct: u64 = entities.values().map(|&c| pairs(c)).sum();
        eval.true_positives += correct;
        for (&entity, &count) in &entities {
            *entity_profiles
                .entry(entity)
                .or_default()
                .entry(*profile)
                .or_default() += count;
            *entity_sizes.entry(entity).or_default() += count;
        }
        for (_, by_entity) in households {
            let total: u64 = by_entity.values().sum();
            let same: u64 = by_entity.values().map(|&c| pairs(c)).sum();
            eval.household_pairs_merged += pairs(total) - same;
        }
        let wrong = pairs(n) - correct;
        if wrong > 0 && examples > 0 {
            let mut records: Vec<(SourceRef, u64, Uuid)> = members
                .iter()
                .map(|(e, _, r)| (r.clone(), *e, *profile))
                .collect();
            records.sort();
            fp_examples.push(Example {
                pairs: wrong,
                records,
            });
        }
    }
    eval.true_pairs = entity_sizes.values().map(|&c| pairs(c)).sum();
    // Household pairs among stored records: records of different entities of a household.
    let mut household_sizes: HashMap<u64, HashMap<u64, u64>> = HashMap::new();
    for members in by_profile.values() {
        for (entity, household, _) in members {
            if *household != 0 {
                *household_sizes
                    .entry(*household)
                    .or_default()
                    .entry(*entity)
                    .or_default() += 1;
            }
        }
    }
    for by_entity in household_sizes.values() {
        let total: u64 = by_entity.values().sum();
        let same: u64 = by_entity.values().map(|&c| pairs(c)).sum();
        eval.household_pairs += pairs(total) - same;
    }

    fp_examples.sort_by(|a, b| {
        b.pairs
            .cmp(&a.pairs)
            .then_with(|| a.records.cmp(&b.records))
    });
    fp_examples.truncate(examples);
    eval.worst_false_positives = fp_examples;

    let mut fn_examples: Vec<(u64, u64)> = entity_profiles
        .iter()
        .filter(|(_, profiles)| profiles.len() > 1)
        .map(|(&entity, profiles)| {
            let total: u64 = profiles.values().sum();
            let together: u64 = profiles.values().map(|&c| pairs(c)).sum();
            (pairs(total) - together, entity)
        })
        .collect();
    fn_examples.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    fn_examples.truncate(examples);
    let wanted: HashMap<u64, u64> = fn_examples.iter().map(|&(p, e)| (e, p)).collect();
    let mut fn_records: BTreeMap<u64, Vec<(SourceRef, u64, Uuid)>> = BTreeMap::new();
    for (profile, members) in &by_profile {
        for (entity, _, record) in members {
            if wanted.contains_key(entity) {
                fn_records
                    .entry(*entity)
                    .or_default()
                    .push((record.clone(), *entity, *profile));
            }
        }
    }
    eval.worst_false_negatives = fn_examples
        .iter()
        .map(|&(pairs, entity)| {
            let mut records = fn_records.remove(&entity).unwrap_or_default();
            records.sort();
            Example { pairs, records }
        })
        .collect();
    eval
}

/// Evaluates the store's current identities against the truth file.
pub async fn evaluate_store(
    store: &dyn Store,
    truth: &Truth,
    examples: usize,
) -> Result<Evaluation, EvaluateError> {
    const PAGE: i64 = 50_000;
    let mut rows = Vec::new();
    let mut after: Option<SourceRef> = None;
    loop {
        let page = store.identity_rows(after.as_ref(), PAGE).await?;
        let done = (page.len() as i64) < PAGE;
        after = page.last().map(|(r, _)| r.clone());
        rows.extend(page);
        if done {
            break;
        }
    }
    Ok(evaluate(truth, rows, examples))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sref(id: &str) -> SourceRef {
        SourceRef {
            system: "crm".into(),
            stream: "contacts".into(),
            source_id: id.into(),
        }
    }

    #[test]
    fn pair_counts_from_group_sizes() {
        // Entities: 1 = {a, b, c}, 2 = {d}, 3 = {e}; 2 and 3 form household 9.
        let mut truth = Truth::default();
        for (id, entity, household) in [
            ("a", 1, 0),
            ("b", 1, 0),
            ("c", 1, 0),
            ("d", 2, 9),
            ("e", 3, 9),
            ("gone", 4, 0),
        ] {
            truth.labels.insert(sref(id), Label { entity, household });
        }
        let (p, q) = (Uuid::from_u128(1), Uuid::from_u128(2));
        // a, b together; c alone; d and e merged (a household pair); "x" unknown.
        let assignment = vec![
            (sref("a"), p),
            (sref("b"), p),
            (sref("c"), Uuid::from_u128(3)),
            (sref("d"), q),
            (sref("e"), q),
            (sref("x"), q),
        ];
        let eval = evaluate(&truth, assignment, 5);
        assert_eq!(eval.records, 5);
        assert_eq!(eval.missing_from_store, 1);
        assert_eq!(eval.missing_from_truth, 1);
        assert_eq!(eval.predicted_pairs, 2);
        assert_eq!(eval.true_pairs, 3);
        assert_eq!(eval.true_positives, 1);
        assert_eq!(eval.household_pairs, 1);
        assert_eq!(eval.household_pairs_merged, 1);
        assert!((eval.precision() - 0.5).abs() < 1e-9);
        assert!((eval.recall() - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(eval.worst_false_positives.len(), 1);
        assert_eq!(eval.worst_false_negatives.len(), 1);
        assert_eq!(eval.worst_false_negatives[0].pairs, 2);
    }

    #[test]
    fn a_bad_truth_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("truth.csv");
        std::fs::write(
            &path,
            "system,stream,source_id,entity_id,household_id\ncrm,c,1,7,\ncrm,c,2,x,\n",
        )
        .unwrap();
        let error = Truth::read(&path).unwrap_err().to_string();
        assert!(
            error.contains("line 3") && error.contains("entity_id"),
            "{error}"
        );
    }
}
