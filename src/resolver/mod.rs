//! Identity resolution, first version: deterministic linking on strong keys. Pure.
//!
//! [`match_keys`] turns a [`Customer`] into its normalised strong keys (`email:…`,
//! `phone:…`, `id:<scheme>:…`) according to the configured [`MatchKey`] rules. Records that
//! share a key belong to one identity. [`resolve`] takes a closed neighbourhood of customer
//! records (every record reachable through shared keys from the changed ones, plus every
//! member of the profiles they touch) and assigns each connected component a stable profile
//! id:
//! - a component keeps the id of the existing profile most of whose members it holds;
//! - when a component holds members of several profiles, the oldest id survives (UUID v7
//!   sorts by creation time) and the others are retired into it (a [`Merge`]);
//! - a component that wins no existing id gets a fresh one (a new identity, or the split-off
//!   side of a profile whose link broke).
//!
//! The `Resolver` boundary is these two functions; probabilistic matching adds scored links
//! to the same union-find.
//!
//! Probabilistic matching lives in the submodules, each pure: [`normalise`] (comparison forms
//! of names, companies, contacts and addresses) → [`prepare`] (one [`prepare::Prepared`] per
//! customer) → [`blocking`] (candidate pairs by configurable keys) → [`scoring`]
//! (comparison levels and the Fellegi-Sunter [`scoring::MatchModel`], with EM estimation) →
//! [`cluster`] (guarded connected components and the review band). [`matcher::match_all`]
//! runs them all in memory; [`parallel`] holds the one deterministic fan-out helper they share.

pub mod blocking;
pub mod cluster;
pub mod explain;
pub mod matcher;
pub mod neighbourhood;
pub mod normalise;
pub mod parallel;
pub mod prepare;
pub mod scoring;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use uuid::Uuid;

use crate::model::{Customer, SourceRef};

/// A strong key rule: records agreeing on such a key are the same customer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MatchKey {
    Email,
    Phone,
    /// An identifier scheme such as `vat` or `duns`.
    Identifier(String),
}

impl MatchKey {
    /// Parses `email`, `phone` or `identifier:<scheme>`.
    pub fn parse(text: &str) -> Option<MatchKey> {
        match text {
            "email" => Some(MatchKey::Email),
            "phone" => Some(MatchKey::Phone),
            _ => {
                let scheme = text.strip_prefix("identifier:")?;
                let valid = !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                valid.then(|| MatchKey::Identifier(scheme.to_string()))
            }
        }
    }
}

impl std::fmt::Display for MatchKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MatchKey::Email => f.write_str("email"),
            MatchKey::Phone => f.write_str("phone"),
            MatchKey::Identifier(scheme) => write!(f, "identifier:{scheme}"),
        }
    }
}

/// Lower-cased, trimmed address, or `None` when it is not an address at all.
pub fn normalise_email(email: &str) -> Option<String> {
    let email = email.trim().to_lowercase();
    let (local, domain) = email.split_once('@')?;
    (!local.is_empty() && domain.contains('.') && !email.contains(char::is_whitespace))
        .then_some(email)
}

/// `+` and digits only; `None` when fewer than 7 digits remain (extensions, junk).
pub fn normalise_phone(phone: &str) -> Option<String> {
    let digits: String = phone.chars().filter(|c| c.is_ascii_digit()).collect();
    if digits.len() < 7 {
        return None;
    }
    Some(if phone.trim_start().starts_with('+') {
        format!("+{digits}")
    } else {
        digits
    })
}

/// Upper-case letters and digits only: `de 123 456-789` and `DE123456789` agree.
pub fn normalise_identifier(value: &str) -> Option<String> {
    let value: String = value
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_uppercase)
        .collect();
    (!value.is_empty()).then_some(value)
}

/// The strong keys of a customer under the given rules, sorted and de-duplicated.
pub fn match_keys(customer: &Customer, rules: &[MatchKey]) -> Vec<String> {
    let mut keys = BTreeSet::new();
    for rule in rules {
        match rule {
            MatchKey::Email => keys.extend(
                customer
                    .emails
                    .iter()
                    .filter_map(|e| normalise_email(e))
                    .map(|e| format!("email:{e}")),
            ),
            MatchKey::Phone => keys.extend(
                customer
                    .phones
                    .iter()
                    .filter_map(|p| normalise_phone(p))
                    .map(|p| format!("phone:{p}")),
            ),
            MatchKey::Identifier(scheme) => keys.extend(
                customer
                    .identifiers
                    .iter()
                    .filter(|id| &id.scheme == scheme)
                    .filter_map(|id| normalise_identifier(&id.value))
                    .map(|v| format!("id:{scheme}:{v}")),
            ),
        }
    }
    keys.into_iter().collect()
}

/// Whether a stored key links records outright (`email:…`, `phone:…`, `id:…`) rather than
/// only making them candidates for comparison (`blk:…`, see [`blocking`]).
pub fn is_strong_key(key: &str) -> bool {
    !key.starts_with("blk:")
}

/// One customer record of the neighbourhood being resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInput {
    pub record: SourceRef,
    pub keys: Vec<String>,
    /// The profile the record is linked to now, if any.
    pub current: Option<Uuid>,
}

/// Profiles retired into a survivor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merge {
    pub survivor: Uuid,
    pub retired: Vec<Uuid>,
}

/// The outcome of [`resolve`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Every input record with the profile it belongs to now.
    pub assignments: Vec<(SourceRef, Uuid)>,
    pub merges: Vec<Merge>,
    /// Ids minted by this resolution.
    pub new_profiles: Vec<Uuid>,
}

impl Resolution {
    /// The profiles whose membership may have changed: every assigned profile.
    pub fn touched_profiles(&self) -> BTreeSet<Uuid> {
        self.assignments.iter().map(|(_, id)| *id).collect()
    }
}

/// Groups the records into connected components over shared keys and assigns stable ids.
/// `mint` is called once per new identity (a UUID v7 in production).
pub fn resolve(nodes: &[LinkInput], mint: impl FnMut() -> Uuid) -> Resolution {
    assign(nodes, components(nodes), mint)
}

/// Assigns stable ids to the given components (indices into `nodes`, each node in exactly
/// one component); see the module header for the rules.
pub fn assign(
    nodes: &[LinkInput],
    mut components: Vec<Vec<usize>>,
    mut mint: impl FnMut() -> Uuid,
) -> Resolution {
    components.retain(|members| !members.is_empty());
    for members in &mut components {
        members.sort_by(|&a, &b| nodes[a].record.cmp(&nodes[b].record));
    }
    components.sort_by(|a, b| nodes[a[0]].record.cmp(&nodes[b[0]].record));

    // Which component keeps each existing id: the one holding most of its members, ties to
    // the component whose smallest record sorts first, so the outcome never depends on
    // input order.
    let mut claims: HashMap<Uuid, (usize, &SourceRef, usize)> = HashMap::new();
    for (index, members) in components.iter().enumerate() {
        let first = &nodes[members[0]].record;
        let mut counts: BTreeMap<Uuid, usize> = BTreeMap::new();
        for &m in members {
            if let Some(id) = nodes[m].current {
                *counts.entry(id).or_default() += 1;
            }
        }
        for (id, count) in counts {
            let better = match claims.get(&id) {
                None => true,
                Some(&(best, best_first, _)) => {
                    count > best || (count == best && first < best_first)
                }
            };
            if better {
                claims.insert(id, (count, first, index));
            }
        }
    }
    let mut won: Vec<Vec<Uuid>> = vec![Vec::new(); components.len()];
    for (id, (_, _, index)) in claims {
        won[index].push(id);
    }

    let mut resolution = Resolution::default();
    for (members, mut ids) in components.iter().zip(won) {
        ids.sort();
        let profile = match ids.split_first() {
            Some((&survivor, retired)) => {
                if !retired.is_empty() {
                    resolution.merges.push(Merge {
                        survivor,
                        retired: retired.to_vec(),
                    });
                }
                survivor
            }
            None => {
                let id = mint();
                resolution.new_profiles.push(id);
                id
            }
        };
        for &m in members {
            resolution
                .assignments
                .push((nodes[m].record.clone(), profile));
        }
    }
    resolution.assignments.sort();
    resolution.merges.sort_by_key(|m| m.survivor);
    resolution
}

/// Connected components over shared keys; each component's members sorted by record, the
/// components sorted by their first record.
fn components(nodes: &[LinkInput]) -> Vec<Vec<usize>> {
    let mut parent: Vec<usize> = (0..nodes.len()).collect();
    fn find(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut holder: HashMap<&str, usize> = HashMap::new();
    for (i, node) in nodes.iter().enumerate() {
        for key in node.keys.iter().filter(|k| is_strong_key(k)) {
            match holder.get(key.as_str()) {
                Some(&j) => {
                    let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                    parent[a.max(b)] = a.min(b);
                }
                None => {
                    holder.insert(key, i);
                }
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..nodes.len() {
        let root = find(&mut parent, i);
        groups.entry(root).or_default().push(i);
    }
    let mut components: Vec<Vec<usize>> = groups.into_values().collect();
    for members in &mut components {
        members.sort_by(|&a, &b| nodes[a].record.cmp(&nodes[b].record));
    }
    components.sort_by(|a, b| nodes[a[0]].record.cmp(&nodes[b[0]].record));
    components
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Identifier;

    fn sref(system: &str, id: &str) -> SourceRef {
        SourceRef {
            system: system.into(),
            stream: "customers".into(),
            source_id: id.into(),
        }
    }

    fn node(system: &str, id: &str, keys: &[&str], current: Option<Uuid>) -> LinkInput {
        LinkInput {
            record: sref(system, id),
            keys: keys.iter().map(|k| k.to_string()).collect(),
            current,
        }
    }

    fn counter() -> impl FnMut() -> Uuid {
        let mut n = 100u128;
        move || {
            n += 1;
            Uuid::from_u128(n)
        }
    }

    #[test]
    fn match_key_rules_parse() {
        assert_eq!(MatchKey::parse("email"), Some(MatchKey::Email));
        assert_eq!(
            MatchKey::parse("identifier:vat"),
            Some(MatchKey::Identifier("vat".into()))
        );
        assert_eq!(MatchKey::parse("identifier:"), None);
        assert_eq!(MatchKey::parse("identifier:VAT"), None);
        assert_eq!(MatchKey::parse("mail"), None);
    }

    #[test]
    fn keys_are_normalised() {
        let customer = Customer {
            emails: vec![" Anna.Berg@Example.COM ".into(), "not-an-address".into()],
            phones: vec!["+49 89 1234-567".into(), "12".into()],
            identifiers: vec![
                Identifier {
                    scheme: "vat".into(),
                    value: "de 123 456 789".into(),
                },
                Identifier {
                    scheme: "duns".into(),
                    value: "123456789".into(),
                },
            ],
            ..Customer::default()
        };
        let rules = [
            MatchKey::Email,
            MatchKey::Phone,
            MatchKey::Identifier("vat".into()),
        ];
        assert_eq!(
            match_keys(&customer, &rules),
            vec![
                "email:anna.berg@example.com",
                "id:vat:DE123456789",
                "phone:+49891234567"
            ]
        );
        assert_eq!(
            match_keys(&customer, &[MatchKey::Email]),
            vec!["email:anna.berg@example.com"]
        );
    }

    #[test]
    fn shared_keys_link_transitively_into_one_new_profile() {
        let nodes = [
            node("sap", "1", &["email:a@x.de"], None),
            node("odoo", "7", &["email:a@x.de", "phone:+491"], None),
            node("shop", "K1", &["phone:+491"], None),
            node("shop", "K2", &["email:b@x.de"], None),
        ];
        let r = resolve(&nodes, counter());
        assert_eq!(
            r.new_profiles,
            vec![Uuid::from_u128(101), Uuid::from_u128(102)]
        );
        let of = |s: &str, id: &str| {
            r.assignments
                .iter()
                .find(|(rec, _)| rec == &sref(s, id))
                .map(|(_, p)| *p)
        };
        assert_eq!(of("sap", "1"), of("odoo", "7"));
        assert_eq!(of("sap", "1"), of("shop", "K1"));
        assert_ne!(of("sap", "1"), of("shop", "K2"));
        assert!(r.merges.is_empty());
    }

    #[test]
    fn existing_ids_are_kept_and_a_bridge_merges_into_the_older_id() {
        let old = Uuid::from_u128(1);
        let young = Uuid::from_u128(2);
        let nodes = [
            node("sap", "1", &["email:a@x.de"], Some(young)),
            node("odoo", "7", &["phone:+491"], Some(old)),
            node("shop", "K1", &["email:a@x.de", "phone:+491"], None),
        ];
        let r = resolve(&nodes, counter());
        assert!(r.new_profiles.is_empty());
        assert_eq!(
            r.merges,
            vec![Merge {
                survivor: old,
                retired: vec![young]
            }]
        );
        assert!(r.assignments.iter().all(|(_, p)| *p == old));
    }

    #[test]
    fn a_broken_link_splits_and_the_larger_side_keeps_the_id() {
        let id = Uuid::from_u128(1);
        let nodes = [
            node("sap", "1", &["email:a@x.de"], Some(id)),
            node("odoo", "7", &["email:a@x.de"], Some(id)),
            node("shop", "K1", &["email:new@x.de"], Some(id)),
        ];
        let r = resolve(&nodes, counter());
        assert_eq!(r.new_profiles, vec![Uuid::from_u128(101)]);
        let shop = r
            .assignments
            .iter()
            .find(|(rec, _)| rec == &sref("shop", "K1"))
            .map(|(_, p)| *p);
        assert_eq!(shop, Some(Uuid::from_u128(101)));
        assert_eq!(
            r.assignments.iter().filter(|(_, p)| *p == id).count(),
            2,
            "the two records still sharing a key keep the id"
        );
    }

    #[test]
    fn resolution_does_not_depend_on_input_order() {
        let id = Uuid::from_u128(1);
        let mut nodes = vec![
            node("sap", "1", &["email:a@x.de"], Some(id)),
            node("shop", "K1", &["email:new@x.de"], Some(id)),
        ];
        let first = resolve(&nodes, counter());
        nodes.reverse();
        let second = resolve(&nodes, counter());
        assert_eq!(first, second);
    }
}
