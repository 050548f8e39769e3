//! Identity resolution through the real `run` path: `cargo bench --bench identity`.
//!
//! Generates labelled customers (`conflux::generate`), runs the generated deployment into a
//! temporary SQLite store (read, map, store, resolve, build profiles, outbox, feed file),
//! evaluates the stored identities against the truth, then drops `delta` more records of
//! known customers in and runs again (the incremental path against the stored identities).
//! Prints times, peak memory (VmHWM), candidate pairs, pairwise precision / recall / F1 and
//! household merges.
//!
//! `CONFLUX_IDENTITY_RECORDS` sets the size (default 100 000; 1 000 000 on request),
//! `CONFLUX_IDENTITY_DELTA` the incremental records (default 10 000),
//! `CONFLUX_IDENTITY_SEED` the seed (default 1), `CONFLUX_IDENTITY_KEEP=1` keeps the
//! directory and prints its path.

use std::path::Path;
use std::time::Instant;

use conflux::evaluate::{Truth, evaluate_store};
use conflux::generate::{GenerateSettings, generate_customers};
use conflux::pipeline;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// Peak resident set size in MiB, from /proc/self/status.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn move_delta_in(dir: &Path) {
    for system in ["crm", "erp", "shop"] {
        let from = dir.join("delta").join(system).join("customers_delta.csv");
        let to = dir.join("data").join(system).join("customers_delta.csv");
        std::fs::rename(&from, &to).expect("the generator wrote the delta files");
    }
}

fn main() {
    let count = env_or("CONFLUX_IDENTITY_RECORDS", 100_000) as usize;
    let delta = env_or("CONFLUX_IDENTITY_DELTA", 10_000) as usize;
    let seed = env_or("CONFLUX_IDENTITY_SEED", 1);
    let keep = std::env::var("CONFLUX_IDENTITY_KEEP").as_deref() == Ok("1");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().to_path_buf();

    let started = Instant::now();
    let summary = generate_customers(&path, &GenerateSettings { count, seed, delta })
        .expect("the generator writes its files");
    println!("generate: {summary} in {:.2?}", started.elapsed());

    let config = conflux::config::load(&path.join("config/customers.toml"))
        .unwrap_or_else(|d| panic!("the generated config loads:\n{d}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let started = Instant::now();
        let run = pipeline::run(&config, None).await.expect("the run succeeds");
        let full = started.elapsed();
        println!(
            "full run: {} records in {full:.2?} ({:.0} records/s); candidate pairs {}; \
             profiles created {}; possible matches {}; peak RSS {:.0} MiB",
            run.records_read,
            run.records_read as f64 / full.as_secs_f64(),
            run.candidate_pairs,
            run.profiles_created,
            run.possible_matches,
            peak_rss_mib()
        );
        println!("{run}");
        let store = pipeline::open_store(&config).await.expect("the store opens");
        let truth = Truth::read(&path.join("truth.csv")).expect("the truth reads");
        let started = Instant::now();
        let eval = evaluate_store(store.as_ref(), &truth, 3)
            .await
            .expect("evaluation");
        println!("evaluate in {:.2?}:\n{eval}", started.elapsed());

        if delta > 0 {
            move_delta_in(&path);
            let started = Instant::now();
            let run = pipeline::run(&config, None).await.expect("the run succeeds");
            let incremental = started.elapsed();
            println!(
                "incremental run: {} new records against {} stored in {incremental:.2?}; \
                 candidate pairs {}; profiles created {}, updated {}, merged {}; peak RSS {:.0} MiB",
                run.records_read,
                count,
                run.candidate_pairs,
                run.profiles_created,
                run.profiles_updated,
                run.profiles_merged,
                peak_rss_mib()
            );
            println!("{run}");
            let eval = evaluate_store(store.as_ref(), &truth, 3)
                .await
                .expect("evaluation");
            println!(
                "after the increment: precision {:.4} recall {:.4} F1 {:.4}, household pairs merged {} of {} ({:.2}%)",
                eval.precision(),
                eval.recall(),
                eval.f1(),
                eval.household_pairs_merged,
                eval.household_pairs,
                100.0 * eval.household_merge_rate()
            );
        }
    });
    if keep {
        println!("kept: {}", dir.keep().display());
    }
}
