//! Clustering: scored pairs → links, possible matches and guarded clusters.
//!
//! [`cluster`] takes `n` nodes, the [`ScoredPair`]s at or above the review floor, the
//! [`ClusterSettings`] (match threshold, review floor, cluster size cap), people's
//! [`Decisions`] (must-link and never-link pairs) and each node's exclusive attributes
//! (`(key, value)` pairs such as `("vat", "DE123")` of which a cluster may hold only one
//! value per key). It returns a [`Clustering`].
//!
//! How: must-link pairs are joined first, unconditionally (people's decisions win). Then
//! model links are taken strongest first (weight descending, ties by node indices), Kruskal
//! style; a link is applied only when the merged cluster stays within the size cap, joins no
//! never-link pair and holds no two different values of an exclusive key. So a chain
//! A~B~C where A and C carry different VAT ids keeps its strongest link and drops the weaker
//! one, which is reported in `rejected` for review instead of merging. Pairs in the review
//! band whose ends stay in different clusters are `review` pairs.
//!
//! Invariant: the output depends only on the inputs, never on hash order or timing.

use std::collections::BTreeMap;

/// One compared pair with its match weight and posterior probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoredPair {
    pub a: u32,
    pub b: u32,
    pub weight: f64,
    pub probability: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClusterSettings {
    /// Pairs with at least this probability link.
    pub threshold: f64,
    /// Pairs from this probability up to `threshold` are possible matches for review.
    pub review_from: f64,
    /// No model link may grow a cluster beyond this many records.
    pub max_cluster_size: usize,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            threshold: 0.9,
            review_from: 0.5,
            max_cluster_size: 50,
        }
    }
}

/// People's decisions, by node index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decisions {
    pub must_link: Vec<(u32, u32)>,
    pub never_link: Vec<(u32, u32)>,
}

/// Why a link above the threshold was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    ClusterTooLarge,
    NeverLink,
    ConflictingIdentifier,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Clustering {
    /// Per node, the smallest node index of its cluster.
    pub labels: Vec<u32>,
    /// Model links applied (must-links are not repeated here).
    pub links: Vec<ScoredPair>,
    /// Possible matches for people to review, sorted by descending probability.
    pub review: Vec<ScoredPair>,
    /// Links above the threshold the guards refused, with the reason.
    pub rejected: Vec<(ScoredPair, Rejection)>,
}

impl Clustering {
    /// The clusters with at least two members, each sorted, ordered by first member.
    pub fn groups(&self) -> Vec<Vec<u32>> {
        let mut groups: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (node, &label) in self.labels.iter().enumerate() {
            groups.entry(label).or_default().push(node as u32);
        }
        groups.into_values().filter(|g| g.len() > 1).collect()
    }
}

/// Exclusive attributes of a node: `(key, value)`, sorted.
pub type Exclusive<'a> = &'a [(Box<str>, Box<str>)];

struct State<'a> {
    parent: Vec<u32>,
    size: Vec<u32>,
    /// Per root: the union of its members' exclusive attributes, sorted (only roots with any).
    exclusive: BTreeMap<u32, Vec<(&'a str, &'a str)>>,
    /// Per root: indices into the never-link list touching its members.
    never: BTreeMap<u32, Vec<usize>>,
}

impl State<'_> {
    fn find(&mut self, mut i: u32) -> u32 {
        while self.parent[i as usize] != i {
            let grand = self.parent[self.parent[i as usize] as usize];
            self.parent[i as usize] = grand;
            i = grand;
        }
        i
    }

    fn union(&mut self, x: u32, y: u32) {
        let (keep, gone) = if self.size[x as usize] >= self.size[y as usize] {
            (x, y)
        } else {
            (y, x)
        };
        self.parent[gone as usize] = keep;
        self.size[keep as usize] += self.size[gone as usize];
        if let Some(mut attrs) = self.exclusive.remove(&gone) {
            let entry = self.exclusive.entry(keep).or_default();
            entry.append(&mut attrs);
            entry.sort_unstable();
            entry.dedup();
        }
        if let Some(mut list) = self.never.remove(&gone) {
            self.never.entry(keep).or_default().append(&mut list);
        }
    }

    /// Whether two roots' exclusive attributes conflict: some key on both sides with no
    /// value in common.
    fn conflict(&self, x: u32, y: u32) -> bool {
        let (Some(a), Some(b)) = (self.exclusive.get(&x), self.exclusive.get(&y)) else {
            return false;
        };
        let mut keys: Vec<&str> = a.iter().map(|(k, _)| *k).collect();
        keys.dedup();
        keys.into_iter().any(|key| {
            let left: Vec<&str> = a
                .iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| *v)
                .collect();
            let mut right = b
                .iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| *v)
                .peekable();
            right.peek().is_some() && !right.any(|v| left.contains(&v))
        })
    }
}

/// Clusters `n` nodes; see the module header. `exclusive(i)` gives node `i`'s exclusive
/// attributes. Pairs whose indices are out of range are ignored.
pub fn cluster<'a>(
    n: usize,
    pairs: &[ScoredPair],
    settings: &ClusterSettings,
    decisions: &Decisions,
    exclusive: impl Fn(usize) -> Exclusive<'a>,
) -> Clustering {
    let mut state = State {
        parent: (0..n as u32).collect(),
        size: vec![1; n],
        exclusive: BTreeMap::new(),
        never: BTreeMap::new(),
    };
    for i in 0..n {
        let attrs = exclusive(i);
        if !attrs.is_empty() {
            let mut list: Vec<(&str, &str)> = attrs.iter().map(|(k, v)| (&**k, &**v)).collect();
            list.sort_unstable();
            list.dedup();
            state.exclusive.insert(i as u32, list);
        }
    }
    let in_range = |a: u32, b: u32| (a as usize) < n && (b as usize) < n && a != b;
    let never: Vec<(u32, u32)> = decisions
        .never_link
        .iter()
        .copied()
        .filter(|&(a, b)| in_range(a, b))
        .collect();
    for (index, &(a, b)) in never.iter().enumerate() {
        state.never.entry(a).or_default().push(index);
        state.never.entry(b).or_default().push(index);
    }
    let mut must: Vec<(u32, u32)> = decisions
        .must_link
        .iter()
        .copied()
        .filter(|&(a, b)| in_range(a, b))
        .collect();
    must.sort_unstable();
    for (a, b) in must {
        let (x, y) = (state.find(a), state.find(b));
        if x != y {
            state.union(x, y);
        }
    }

    let mut ordered: Vec<ScoredPair> = pairs
        .iter()
        .copied()
        .filter(|p| in_range(p.a, p.b))
        .collect();
    ordered.sort_by(|p, q| {
        q.weight
            .total_cmp(&p.weight)
            .then((p.a.min(p.b), p.a.max(p.b)).cmp(&(q.a.min(q.b), q.a.max(q.b))))
    });
    let mut outcome = Clustering::default();
    let mut band = Vec::new();
    for pair in ordered {
        if pair.probability < settings.threshold {
            if pair.probability >= settings.review_from {
                band.push(pair);
            }
            continue;
        }
        let (x, y) = (state.find(pair.a), state.find(pair.b));
        if x == y {
            continue;
        }
        let blocked_by_never = {
            let (small, other) = if state.never.get(&x).map_or(0, Vec::len)
                <= state.never.get(&y).map_or(0, Vec::len)
            {
                (x, y)
            } else {
                (y, x)
            };
            let list = state.never.get(&small).cloned().unwrap_or_default();
            list.into_iter().any(|index| {
                let (p, q) = never[index];
                let (rp, rq) = (state.find(p), state.find(q));
                (rp == small && rq == other) || (rp == other && rq == small)
            })
        };
        let rejection = if blocked_by_never {
            Some(Rejection::NeverLink)
        } else if (state.size[x as usize] + state.size[y as usize]) as usize
            > settings.max_cluster_size
        {
            Some(Rejection::ClusterTooLarge)
        } else if state.conflict(x, y) {
            Some(Rejection::ConflictingIdentifier)
        } else {
            None
        };
        match rejection {
            Some(reason) => outcome.rejected.push((pair, reason)),
            None => {
                state.union(x, y);
                outcome.links.push(pair);
            }
        }
    }
    for pair in band {
        if state.find(pair.a) != state.find(pair.b) {
            outcome.review.push(pair);
        }
    }
    let mut smallest = vec![u32::MAX; n];
    for i in 0..n as u32 {
        let root = state.find(i) as usize;
        smallest[root] = smallest[root].min(i);
    }
    outcome.labels = (0..n as u32)
        .map(|i| smallest[state.find(i) as usize])
        .collect();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(a: u32, b: u32, probability: f64) -> ScoredPair {
        ScoredPair {
            a,
            b,
            weight: (probability / (1.0 - probability)).log2(),
            probability,
        }
    }

    fn none(_: usize) -> Exclusive<'static> {
        &[]
    }

    #[test]
    fn threshold_band_and_components() {
        let pairs = [
            pair(0, 1, 0.99),
            pair(1, 2, 0.95),
            pair(3, 4, 0.7),
            pair(4, 5, 0.1),
        ];
        let out = cluster(
            6,
            &pairs,
            &ClusterSettings::default(),
            &Decisions::default(),
            none,
        );
        assert_eq!(out.labels, vec![0, 0, 0, 3, 4, 5]);
        assert_eq!(out.groups(), vec![vec![0, 1, 2]]);
        assert_eq!(out.links.len(), 2);
        assert_eq!(out.review, vec![pair(3, 4, 0.7)]);
    }

    #[test]
    fn a_chain_over_conflicting_vat_ids_is_split_at_its_weakest_link() {
        let vat_a: Vec<(Box<str>, Box<str>)> = vec![("vat".into(), "DE111".into())];
        let vat_c: Vec<(Box<str>, Box<str>)> = vec![("vat".into(), "DE333".into())];
        let attrs = |i: usize| -> Exclusive<'_> {
            match i {
                0 => &vat_a,
                2 => &vat_c,
                _ => &[],
            }
        };
        // A~B strong, B~C weaker: B stays with A, C is refused and left for review.
        let pairs = [pair(1, 2, 0.95), pair(0, 1, 0.999)];
        let out = cluster(
            3,
            &pairs,
            &ClusterSettings::default(),
            &Decisions::default(),
            attrs,
        );
        assert_eq!(out.groups(), vec![vec![0, 1]]);
        assert_eq!(
            out.rejected,
            vec![(pair(1, 2, 0.95), Rejection::ConflictingIdentifier)]
        );
        // Without the identifiers the chain would merge all three.
        let out = cluster(
            3,
            &pairs,
            &ClusterSettings::default(),
            &Decisions::default(),
            none,
        );
        assert_eq!(out.groups(), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn people_win_over_the_model() {
        let pairs = [pair(0, 1, 0.99), pair(1, 2, 0.99)];
        let decisions = Decisions {
            must_link: vec![(3, 4)],
            never_link: vec![(0, 2)],
        };
        let out = cluster(5, &pairs, &ClusterSettings::default(), &decisions, none);
        assert_eq!(out.groups(), vec![vec![0, 1], vec![3, 4]]);
        assert_eq!(out.rejected, vec![(pair(1, 2, 0.99), Rejection::NeverLink)]);
    }

    #[test]
    fn the_size_cap_stops_growth() {
        let pairs: Vec<ScoredPair> = (0..9).map(|i| pair(i, i + 1, 0.99)).collect();
        let settings = ClusterSettings {
            max_cluster_size: 4,
            ..ClusterSettings::default()
        };
        let out = cluster(10, &pairs, &settings, &Decisions::default(), none);
        assert!(
            out.groups().iter().all(|g| g.len() <= 4),
            "{:?}",
            out.groups()
        );
        assert!(
            out.rejected
                .iter()
                .all(|(_, r)| *r == Rejection::ClusterTooLarge)
        );
        assert!(!out.rejected.is_empty());
    }

    #[test]
    fn output_does_not_depend_on_pair_order() {
        let mut pairs = vec![
            pair(0, 1, 0.99),
            pair(2, 3, 0.99),
            pair(1, 2, 0.93),
            pair(3, 4, 0.6),
        ];
        let settings = ClusterSettings {
            max_cluster_size: 3,
            ..ClusterSettings::default()
        };
        let first = cluster(5, &pairs, &settings, &Decisions::default(), none);
        pairs.reverse();
        let second = cluster(5, &pairs, &settings, &Decisions::default(), none);
        assert_eq!(first, second);
    }
}
