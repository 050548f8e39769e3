//! Deterministic fan-out over index ranges with `std::thread::scope`.
//!
//! [`map_chunks`] splits `0..n` into contiguous chunks, runs one closure per chunk on its own
//! thread and concatenates the results in chunk order, so the output is the same as a
//! sequential run whatever the thread timing. [`threads`] picks the thread count.

use std::ops::Range;

/// The number of worker threads to use: `requested`, or the machine's parallelism when 0.
pub fn threads(requested: usize) -> usize {
    if requested > 0 {
        requested
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Runs `work` over `threads` contiguous chunks of `0..n` and concatenates the results in
/// chunk order.
pub fn map_chunks<T, F>(n: usize, threads: usize, work: F) -> Vec<T>
where
    T: Send,
    F: Fn(Range<usize>) -> Vec<T> + Sync,
{
    let threads = threads.max(1);
    // Small inputs are not worth a thread.
    if threads == 1 || n < 4096 {
        return work(0..n);
    }
    let chunk = n.div_ceil(threads);
    let parts: Vec<Vec<T>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let range = (t * chunk).min(n)..((t + 1) * chunk).min(n);
                let work = &work;
                scope.spawn(move || work(range))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(part) => part,
                // A panic in a worker is a bug; re-raise it on the caller's thread.
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for part in parts {
        out.extend(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_concatenate_in_order() {
        let n = 10_000;
        let sequential = map_chunks(n, 1, |r| r.map(|i| i * 3).collect());
        let parallel = map_chunks(n, 3, |r| r.map(|i| i * 3).collect());
        assert_eq!(sequential, parallel);
        assert_eq!(parallel.len(), n);
        assert_eq!(parallel[9_999], 29_997);
    }
}
