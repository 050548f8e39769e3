//! Probabilistic resolution of one neighbourhood of customer records, with stable ids.
//!
//! The pipeline gathers a closed neighbourhood around the records a batch changed (records
//! sharing a strong key, records sharing a blocking key with a changed record, and every
//! member of the profiles those belong to) and hands it here with each record's body and
//! the decisions people took on its pairs. [`resolve_neighbourhood`] then:
//! - links records sharing a strong key (`email:…`, `id:vat:…`) outright, unless a person
//!   said the two are different customers;
//! - compares the records within the neighbourhood pairwise under the blocking rules and
//!   links pairs above the match threshold, within the cluster guards
//!   ([`super::cluster`]): cluster size cap, never-link decisions, conflicting identifiers;
//! - assigns stable ids to the resulting clusters with [`super::assign`].
//!
//! Only pairs holding a changed record, or a member of a profile that holds one, are scored
//! again, so a record whose change breaks its link splits off while the rest of the
//! neighbourhood keeps its profiles without being compared again. Scores depend only on the
//! two records and the model, so an incremental run and a full run agree on every pair.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use uuid::Uuid;

use super::matcher::{self, MatchPair, MatchSettings, PreparedRecords};
use super::scoring::OverrideError;
use super::{LinkInput, Resolution, assign, is_strong_key};
use crate::model::SourceRef;

/// The outcome for one neighbourhood.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NeighbourhoodOutcome {
    pub resolution: Resolution,
    /// Pairs in the review band whose records stay apart, for people to decide.
    pub review: Vec<MatchPair>,
    /// Candidate pairs compared.
    pub candidate_pairs: u64,
    /// The records whose pairs were compared: the possible matches holding one of them are
    /// replaced by `review`.
    pub scope: Vec<SourceRef>,
}

/// Neighbourhoods smaller than this are matched on the calling thread: spawning workers
/// costs more than it saves.
pub const PARALLEL_FROM: usize = 20_000;

/// Resolves `nodes` (whose prepared bodies are `records`; a node without one stays on its own)
/// under `settings`, honouring `decisions` (`(a, b, link)`). With `changed`, only pairs
/// holding a changed record or a member of a profile that holds one are compared; every
/// other profile keeps its members. See the module header.
pub fn resolve_neighbourhood(
    nodes: &[LinkInput],
    records: &mut PreparedRecords,
    decisions: &[(SourceRef, SourceRef, bool)],
    changed: Option<&[SourceRef]>,
    settings: &MatchSettings,
    mint: impl FnMut() -> Uuid,
) -> Result<NeighbourhoodOutcome, Vec<OverrideError>> {
    let pair = |a: &SourceRef, b: &SourceRef| {
        if a <= b {
            (a.clone(), b.clone())
        } else {
            (b.clone(), a.clone())
        }
    };
    let never: BTreeSet<(SourceRef, SourceRef)> = decisions
        .iter()
        .filter(|(_, _, link)| !link)
        .map(|(a, b, _)| pair(a, b))
        .collect();
    let mut must: BTreeSet<(SourceRef, SourceRef)> = decisions
        .iter()
        .filter(|(_, _, link)| *link)
        .map(|(a, b, _)| pair(a, b))
        .collect();
    // Strong keys link outright: each holder of a key to the key's first holder.
    let mut holders: BTreeMap<&str, Vec<&SourceRef>> = BTreeMap::new();
    for node in nodes {
        for key in node.keys.iter().filter(|k| is_strong_key(k)) {
            holders.entry(key).or_default().push(&node.record);
        }
    }
    for records in holders.values_mut() {
        records.sort();
        records.dedup();
        for other in &records[1..] {
            let link = pair(records[0], other);
            if !never.contains(&link) {
                must.insert(link);
            }
        }
    }

    let scope = match changed {
        None => nodes.iter().map(|n| n.record.clone()).collect(),
        Some(changed) => keep_untouched_profiles(nodes, changed, &mut must),
    };

    let mut settings = settings.clone();
    settings.estimate = false;
    settings.focus = changed.is_some().then(|| scope.clone());
    settings.must_link = must.into_iter().collect();
    settings.never_link = never.into_iter().collect();
    if records.len() < PARALLEL_FROM {
        settings.threads = 1;
    }
    let outcome = matcher::match_prepared(records, &settings)?;

    let index: HashMap<&SourceRef, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| (&node.record, i))
        .collect();
    let mut placed = vec![false; nodes.len()];
    let mut components: Vec<Vec<usize>> = Vec::new();
    for cluster in &outcome.clusters {
        let members: Vec<usize> = cluster
            .iter()
            .filter_map(|r| index.get(r).copied())
            .filter(|&i| !std::mem::replace(&mut placed[i], true))
            .collect();
        components.push(members);
    }
    for (i, done) in placed.iter().enumerate() {
        if !done {
            components.push(vec![i]);
        }
    }
    let candidate_pairs = outcome.blocking.total_pairs;
    Ok(NeighbourhoodOutcome {
        resolution: assign(nodes, components, mint),
        review: outcome.review,
        candidate_pairs,
        scope,
    })
}

/// The records whose pairs are compared again: the `changed` ones and every member of a
/// profile holding one (so a change that breaks a link splits its profile). The members of
/// every other profile are joined by `must` links: the pairs between them were decided when
/// one of them last changed, and comparing them again would give the same answer.
fn keep_untouched_profiles(
    nodes: &[LinkInput],
    changed: &[SourceRef],
    must: &mut BTreeSet<(SourceRef, SourceRef)>,
) -> Vec<SourceRef> {
    let changed: BTreeSet<&SourceRef> = changed.iter().collect();
    let touched: BTreeSet<Uuid> = nodes
        .iter()
        .filter(|n| changed.contains(&n.record))
        .filter_map(|n| n.current)
        .collect();
    let mut kept: BTreeMap<Uuid, Vec<&SourceRef>> = BTreeMap::new();
    let mut scope = Vec::new();
    for node in nodes {
        match node.current {
            _ if changed.contains(&node.record) => scope.push(node.record.clone()),
            Some(profile) if touched.contains(&profile) => scope.push(node.record.clone()),
            Some(profile) => kept.entry(profile).or_default().push(&node.record),
            None => {}
        }
    }
    for members in kept.values_mut() {
        members.sort();
        for other in &members[1..] {
            must.insert(((*members[0]).clone(), (*other).clone()));
        }
    }
    scope.sort();
    scope
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Address, Customer, PartyKind};

    fn company(id: &str, name: &str, email: &str, phone: &str) -> Customer {
        Customer {
            source: SourceRef {
                system: "odoo".into(),
                stream: "partners".into(),
                source_id: id.into(),
            },
            kind: PartyKind::Organization,
            full_name: Some(name.into()),
            emails: vec![email.into()],
            phones: vec![phone.into()],
            addresses: vec![Address {
                lines: vec!["Wallstraße 9".into()],
                city: Some("Dresden".into()),
                postcode: Some("01067".into()),
                country: Some("DE".into()),
                ..Address::default()
            }],
            ..Customer::default()
        }
    }

    fn node(c: &Customer) -> LinkInput {
        LinkInput {
            record: c.source.clone(),
            keys: vec![format!("email:{}", c.emails[0])],
            current: None,
        }
    }

    #[test]
    fn companies_sharing_an_address_stay_apart() {
        let mut person = company(
            "21",
            "Paula Neumann",
            "paula@example.net",
            "+49 351 5550001",
        );
        person.kind = PartyKind::Person;
        let customers = [
            company(
                "7",
                "Richter Feinkost OHG",
                "info@richter.example",
                "+49 351 1234567",
            ),
            company(
                "8",
                "Sommer Textil AG",
                "einkauf@sommer.example",
                "+49 351 7654321",
            ),
            person,
            company(
                "31",
                "Fluidtechnik Rhein GmbH",
                "vertrieb@fluid.example",
                "+49 221 5550100",
            ),
        ];
        let nodes: Vec<LinkInput> = customers.iter().map(node).collect();
        let mut records = PreparedRecords::prepare(&customers, &Default::default(), 1);
        let outcome = resolve_neighbourhood(
            &nodes,
            &mut records,
            &[],
            None,
            &MatchSettings::default(),
            Uuid::now_v7,
        )
        .unwrap();
        assert_eq!(outcome.resolution.new_profiles.len(), 4, "{outcome:?}");
    }

    #[test]
    fn only_pairs_around_changed_records_are_compared_and_other_profiles_keep_their_members() {
        let (p, q) = (Uuid::from_u128(1), Uuid::from_u128(2));
        // Stored: p holds two records of one company, q two of another.
        let a1 = company(
            "1",
            "Richter Feinkost OHG",
            "info@richter.example",
            "+49 351 1234567",
        );
        let a2 = company(
            "2",
            "Richter Feinkost OHG",
            "kasse@richter.example",
            "+49 351 1234567",
        );
        let b1 = company(
            "3",
            "Sommer Textil AG",
            "info@sommer.example",
            "+49 351 7654321",
        );
        // Changed: b2 was Sommer Textil and is now another company; n is new, Richter again.
        let b2 = company(
            "4",
            "Fluidtechnik Rhein GmbH",
            "vertrieb@fluid.example",
            "+49 221 5550100",
        );
        let n = company(
            "5",
            "Richter Feinkost OHG",
            "info@richter.example",
            "+49 351 1234567",
        );
        let customers = [a1, a2, b1, b2, n];
        let current = [Some(p), Some(p), Some(q), Some(q), None];
        let nodes: Vec<LinkInput> = customers
            .iter()
            .zip(current)
            .map(|(c, current)| LinkInput {
                record: c.source.clone(),
                keys: Vec::new(),
                current,
            })
            .collect();
        let changed = [customers[3].source.clone(), customers[4].source.clone()];
        let settings = MatchSettings::default();
        let run = |changed: Option<&[SourceRef]>| {
            let mut records = PreparedRecords::prepare(&customers, &settings.normalise, 1);
            resolve_neighbourhood(&nodes, &mut records, &[], changed, &settings, Uuid::now_v7)
                .unwrap()
        };
        let focused = run(Some(&changed));
        let full = run(None);

        // b1 is compared again because its profile holds a changed record; a1 and a2 are not.
        let scope: Vec<&str> = focused.scope.iter().map(|r| r.source_id.as_str()).collect();
        assert_eq!(scope, ["3", "4", "5"]);
        assert!(
            focused.candidate_pairs < full.candidate_pairs,
            "{} pairs compared around the changes, {} in all",
            focused.candidate_pairs,
            full.candidate_pairs
        );
        let profile_of = |outcome: &NeighbourhoodOutcome, id: &str| {
            outcome
                .resolution
                .assignments
                .iter()
                .find(|(r, _)| r.source_id == id)
                .map(|(_, profile)| *profile)
                .unwrap()
        };
        for outcome in [&focused, &full] {
            // The new record joins Richter's profile, which keeps its id.
            assert_eq!(profile_of(outcome, "1"), p);
            assert_eq!(profile_of(outcome, "2"), p);
            assert_eq!(profile_of(outcome, "5"), p);
            // b2's change breaks its link: it splits off, b1 keeps q.
            assert_eq!(profile_of(outcome, "3"), q);
            assert_ne!(profile_of(outcome, "4"), q);
        }
    }
}
