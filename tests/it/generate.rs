//! Match quality through the real `run` path on generated, labelled customers: precision,
//! recall, household members kept apart, and the same clusters for the same input.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use conflux::evaluate::{Evaluation, Truth, evaluate_store};
use conflux::generate::{GenerateSettings, generate_customers};
use conflux::model::SourceRef;
use conflux::pipeline;

use crate::common::load;

/// Generates `count` records with `seed` into `dir` and runs the generated deployment.
async fn generate_and_run(dir: &Path, count: usize, seed: u64) -> Evaluation {
    let settings = GenerateSettings {
        count,
        seed,
        delta: 0,
    };
    let summary = generate_customers(dir, &settings).unwrap();
    assert_eq!(summary.records, count);
    let config = load(dir, "config/customers.toml");
    let run = pipeline::run(&config, None).await.unwrap();
    assert_eq!(run.records_read, count as u64);
    assert_eq!(run.records_quarantined, 0, "generated records all map");
    let store = pipeline::open_store(&config).await.unwrap();
    let truth = Truth::read(&dir.join("truth.csv")).unwrap();
    evaluate_store(store.as_ref(), &truth, 5).await.unwrap()
}

/// The partition of the stored records into profiles, without the (random) ids.
async fn clusters(dir: &Path) -> BTreeSet<Vec<SourceRef>> {
    let config = load(dir, "config/customers.toml");
    let store = pipeline::open_store(&config).await.unwrap();
    let rows = store.identity_rows(None, i64::MAX).await.unwrap();
    let mut by_profile: BTreeMap<uuid::Uuid, Vec<SourceRef>> = BTreeMap::new();
    for (record, profile) in rows {
        by_profile.entry(profile).or_default().push(record);
    }
    by_profile.into_values().collect()
}

#[tokio::test]
async fn generated_customers_resolve_with_high_precision_and_recall_and_households_apart() {
    for seed in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let eval = generate_and_run(dir.path(), 2_000, seed).await;
        assert_eq!(
            eval.records, 2_000,
            "seed {seed}: every record has an identity"
        );
        assert!(eval.true_pairs > 500, "seed {seed}: {eval}");
        assert!(eval.household_pairs > 50, "seed {seed}: {eval}");
        assert!(eval.precision() >= 0.98, "seed {seed}: {eval}");
        assert!(eval.recall() >= 0.95, "seed {seed}: {eval}");
        assert!(eval.household_merge_rate() <= 0.01, "seed {seed}: {eval}");
    }
}

#[tokio::test]
async fn the_same_input_yields_the_same_clusters() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = generate_and_run(a.path(), 1_500, 7).await;
    let second = generate_and_run(b.path(), 1_500, 7).await;
    assert_eq!(
        std::fs::read(a.path().join("truth.csv")).unwrap(),
        std::fs::read(b.path().join("truth.csv")).unwrap(),
        "the generator is deterministic per seed"
    );
    assert_eq!(first.true_positives, second.true_positives);
    assert_eq!(clusters(a.path()).await, clusters(b.path()).await);
}
