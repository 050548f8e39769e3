//! Blocking: which pairs of records are compared at all.
//!
//! A [`BlockingRule`] is parsed from a configuration string with this grammar:
//!
//! ```text
//! rule  = field { "+" field }
//! field = "email" | "phone" | "identifier" | "given" | "given_initial" | "given_canonical"
//!       | "family" | "family_phonetic" | "company" | "company_phonetic" | "street"
//!       | "postcode" | "city" | "country" | "birth_date" | "birth_year"
//! ```
//!
//! Records agreeing on every field of a rule share a block; a record missing any field of a
//! rule is in no block of that rule. Multi-valued fields (e-mails, phones, identifiers) put
//! the record in one block per value. [`blocking_keys`] spells a record's blocks as
//! `blk:<rule>:<value>|<value>` strings (the form a store indexes); [`candidate_pairs`]
//! turns the blocks of many records into the de-duplicated candidate pairs `(i, j)` with
//! `i < j`, sorted, and a [`BlockingReport`] with the pair count per rule. A block larger
//! than `max_block_size` is skipped and listed in the report, never silently dropped.
//!
//! Invariant: the pairs are a function of the set of records, not of thread timing; block
//! identity is a 64-bit FNV-1a hash of the key, so a (vanishingly rare) collision only adds
//! candidates, which scoring then rejects.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use super::parallel;
use super::prepare::{Prepared, code_text};

/// One field a blocking rule can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BlockField {
    Email,
    Phone,
    Identifier,
    Given,
    GivenInitial,
    GivenCanonical,
    Family,
    FamilyPhonetic,
    Company,
    CompanyPhonetic,
    Street,
    Postcode,
    City,
    Country,
    BirthDate,
    BirthYear,
}

impl BlockField {
    pub const ALL: [BlockField; 16] = [
        BlockField::Email,
        BlockField::Phone,
        BlockField::Identifier,
        BlockField::Given,
        BlockField::GivenInitial,
        BlockField::GivenCanonical,
        BlockField::Family,
        BlockField::FamilyPhonetic,
        BlockField::Company,
        BlockField::CompanyPhonetic,
        BlockField::Street,
        BlockField::Postcode,
        BlockField::City,
        BlockField::Country,
        BlockField::BirthDate,
        BlockField::BirthYear,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BlockField::Email => "email",
            BlockField::Phone => "phone",
            BlockField::Identifier => "identifier",
            BlockField::Given => "given",
            BlockField::GivenInitial => "given_initial",
            BlockField::GivenCanonical => "given_canonical",
            BlockField::Family => "family",
            BlockField::FamilyPhonetic => "family_phonetic",
            BlockField::Company => "company",
            BlockField::CompanyPhonetic => "company_phonetic",
            BlockField::Street => "street",
            BlockField::Postcode => "postcode",
            BlockField::City => "city",
            BlockField::Country => "country",
            BlockField::BirthDate => "birth_date",
            BlockField::BirthYear => "birth_year",
        }
    }

    /// Calls `each` with every value of this field on `p` (none when it is unknown).
    fn values(self, p: &Prepared, each: &mut dyn FnMut(&str)) {
        let mut one = |s: &str| {
            if !s.is_empty() {
                each(s)
            }
        };
        match self {
            BlockField::Email => p.emails.iter().for_each(|e| one(e)),
            BlockField::Phone => p.phones.iter().for_each(|e| one(e)),
            BlockField::Identifier => {
                for (scheme, value) in &p.identifiers {
                    one(&format!("{scheme}={value}"));
                }
            }
            BlockField::Given => one(&p.given),
            BlockField::GivenInitial => {
                if let Some(c) = p.given_initial {
                    one(c.encode_utf8(&mut [0; 4]));
                }
            }
            BlockField::GivenCanonical => one(p.given_canonical()),
            BlockField::Family => one(&p.family),
            BlockField::FamilyPhonetic => one(code_text(&p.family_phonetic)),
            BlockField::Company => one(&p.company),
            BlockField::CompanyPhonetic => one(code_text(&p.company_phonetic)),
            BlockField::Street => one(&p.street),
            BlockField::Postcode => one(&p.postcode),
            BlockField::City => one(&p.city),
            BlockField::Country => {
                if let Some(c) = &p.country {
                    one(std::str::from_utf8(c).unwrap_or(""));
                }
            }
            BlockField::BirthDate => {
                if let Some(d) = p.birth_date {
                    one(&d.to_string());
                }
            }
            BlockField::BirthYear => {
                if let Some(d) = p.birth_date {
                    one(&d.year().to_string());
                }
            }
        }
    }
}

/// A blocking rule: one or more fields joined by `+`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockingRule {
    pub fields: Vec<BlockField>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BlockingRuleError {
    #[error("blocking rule {rule:?}: unknown field {field:?} (known: {known})")]
    UnknownField {
        rule: String,
        field: String,
        known: String,
    },
    #[error("blocking rule {rule:?} names no field")]
    Empty { rule: String },
}

impl FromStr for BlockingRule {
    type Err = BlockingRuleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut fields = Vec::new();
        for part in text.split('+').map(str::trim) {
            if part.is_empty() {
                return Err(BlockingRuleError::Empty { rule: text.into() });
            }
            let field = BlockField::ALL
                .into_iter()
                .find(|f| f.as_str() == part)
                .ok_or_else(|| BlockingRuleError::UnknownField {
                    rule: text.into(),
                    field: part.into(),
                    known: BlockField::ALL.map(BlockField::as_str).join(", "),
                })?;
            fields.push(field);
        }
        Ok(BlockingRule { fields })
    }
}

impl fmt::Display for BlockingRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.fields.iter().map(|f| f.as_str()).collect();
        f.write_str(&names.join("+"))
    }
}

impl BlockingRule {
    /// The built-in rules, good for person and company data: any shared contact point or
    /// identifier, and name-plus-place or name-plus-birth combinations that survive typos.
    pub fn defaults() -> Vec<BlockingRule> {
        [
            "email",
            "phone",
            "identifier",
            "family_phonetic+postcode",
            "given+family",
            "birth_date+given_initial",
            "family_phonetic+birth_year",
            "company+postcode",
            "company_phonetic+city",
            "street+postcode",
        ]
        .into_iter()
        .map(|r| r.parse().expect("the built-in rules use known field names"))
        .collect()
    }

    /// Calls `each` with every key value of `p` under this rule (`v1|v2|…`).
    fn key_values(&self, p: &Prepared, each: &mut dyn FnMut(&str)) {
        fn walk(
            fields: &[BlockField],
            p: &Prepared,
            prefix: &mut String,
            each: &mut dyn FnMut(&str),
        ) {
            let Some((first, rest)) = fields.split_first() else {
                each(prefix);
                return;
            };
            first.values(p, &mut |value| {
                let len = prefix.len();
                if len > 0 {
                    prefix.push('|');
                }
                prefix.push_str(value);
                walk(rest, p, prefix, each);
                prefix.truncate(len);
            });
        }
        walk(&self.fields, p, &mut String::new(), each);
    }
}

/// The blocking keys of one record, `blk:<rule>:<values>`, sorted and de-duplicated.
pub fn blocking_keys(p: &Prepared, rules: &[BlockingRule]) -> Vec<String> {
    let mut keys = Vec::new();
    for rule in rules {
        let name = rule.to_string();
        rule.key_values(p, &mut |v| keys.push(format!("blk:{name}:{v}")));
    }
    keys.sort();
    keys.dedup();
    keys
}

/// What blocking did under one rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleReport {
    pub rule: String,
    /// Blocks holding at least two records.
    pub blocks: usize,
    /// Distinct pairs this rule proposes (a pair proposed by several rules counts in each).
    pub pairs: u64,
    /// Blocks over `max_block_size`, skipped: their key and size (at most
    /// [`MAX_LISTED_SKIPS`] listed per rule; `skipped_blocks` counts them all).
    pub skipped: Vec<(String, usize)>,
    pub skipped_blocks: usize,
}

pub const MAX_LISTED_SKIPS: usize = 20;

/// The outcome of blocking: per-rule reports and the total of distinct pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockingReport {
    pub rules: Vec<RuleReport>,
    /// Distinct pairs compared (with a matcher focus, only those holding a focused record).
    pub total_pairs: u64,
}

/// The de-duplicated candidate pairs of `records` under `rules`, `(i, j)` with `i < j`,
/// sorted, and what each rule contributed.
pub fn candidate_pairs(
    records: &[Prepared],
    rules: &[BlockingRule],
    max_block_size: usize,
) -> (Vec<(u32, u32)>, BlockingReport) {
    candidate_pairs_with_threads(records, rules, max_block_size, 0)
}

/// [`candidate_pairs`] on `threads` threads (0: all cores).
pub fn candidate_pairs_with_threads(
    records: &[Prepared],
    rules: &[BlockingRule],
    max_block_size: usize,
    threads: usize,
) -> (Vec<(u32, u32)>, BlockingReport) {
    let threads = parallel::threads(threads);
    let mut all: Vec<(u32, u32)> = Vec::new();
    let mut report = BlockingReport::default();
    for rule in rules {
        let mut entries: Vec<(u64, u32)> = parallel::map_chunks(records.len(), threads, |range| {
            let mut out = Vec::with_capacity(range.len());
            for i in range {
                rule.key_values(&records[i], &mut |v| out.push((fnv1a(v), i as u32)));
            }
            out
        });
        entries.sort_unstable();
        entries.dedup();
        let mut rule_report = RuleReport {
            rule: rule.to_string(),
            ..RuleReport::default()
        };
        let mut pairs: Vec<(u32, u32)> = Vec::new();
        for block in entries.chunk_by(|a, b| a.0 == b.0) {
            if block.len() < 2 {
                continue;
            }
            if block.len() > max_block_size {
                rule_report.skipped_blocks += 1;
                if rule_report.skipped.len() < MAX_LISTED_SKIPS {
                    let (hash, first) = block[0];
                    let mut key = String::new();
                    rule.key_values(&records[first as usize], &mut |v| {
                        if fnv1a(v) == hash {
                            key = format!("blk:{rule}:{v}");
                        }
                    });
                    rule_report.skipped.push((key, block.len()));
                }
                continue;
            }
            rule_report.blocks += 1;
            for (x, &(_, i)) in block.iter().enumerate() {
                for &(_, j) in &block[x + 1..] {
                    // Entries are sorted by (hash, index), so i < j already.
                    pairs.push((i, j));
                }
            }
        }
        pairs.sort_unstable();
        pairs.dedup();
        rule_report.pairs = pairs.len() as u64;
        report.rules.push(rule_report);
        all.extend(pairs);
    }
    all.sort_unstable();
    all.dedup();
    all.shrink_to_fit();
    report.total_pairs = all.len() as u64;
    (all, report)
}

/// FNV-1a, 64 bit: fixed, fast and the same on every run, unlike the std hasher.
fn fnv1a(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Address, Customer, PartyKind};
    use crate::resolver::prepare::{NormaliseSettings, prepare};

    fn person(given: &str, family: &str, email: &str, postcode: &str, birth: &str) -> Prepared {
        let customer = Customer {
            kind: PartyKind::Person,
            given_name: Some(given.into()),
            family_name: Some(family.into()),
            emails: (!email.is_empty())
                .then(|| email.into())
                .into_iter()
                .collect(),
            addresses: vec![Address {
                postcode: Some(postcode.into()),
                country: Some("DE".into()),
                ..Address::default()
            }],
            birth_date: birth.parse().ok(),
            ..Customer::default()
        };
        prepare(&customer, &NormaliseSettings::default())
    }

    #[test]
    fn rules_parse_and_print() {
        let rule: BlockingRule = "family_phonetic+postcode".parse().unwrap();
        assert_eq!(
            rule.fields,
            vec![BlockField::FamilyPhonetic, BlockField::Postcode]
        );
        assert_eq!(rule.to_string(), "family_phonetic+postcode");
        let err = "family+zip".parse::<BlockingRule>().unwrap_err();
        assert!(err.to_string().contains("unknown field \"zip\""), "{err}");
        assert!("email+".parse::<BlockingRule>().is_err());
        assert_eq!(BlockingRule::defaults().len(), 10);
    }

    #[test]
    fn keys_spell_rule_and_values() {
        let p = person("Hans", "Müller", "h.m@example.com", "80331", "1980-02-01");
        let rules: Vec<BlockingRule> = [
            "email",
            "family_phonetic+postcode",
            "birth_date+given_initial",
        ]
        .iter()
        .map(|r| r.parse().unwrap())
        .collect();
        assert_eq!(
            blocking_keys(&p, &rules),
            vec![
                "blk:birth_date+given_initial:1980-02-01|h",
                "blk:email:h.m@example.com",
                "blk:family_phonetic+postcode:MLR|80331",
            ]
        );
        let no_mail = person("Hans", "Müller", "", "80331", "");
        assert_eq!(
            blocking_keys(&no_mail, &rules),
            vec!["blk:family_phonetic+postcode:MLR|80331"]
        );
    }

    /// A hand-labelled sample: three true duplicate pairs with typical noise, all of which
    /// the default rules must propose, while most non-matching pairs are not proposed.
    #[test]
    fn default_rules_recall_the_labelled_duplicates() {
        let records = vec![
            person("Hans", "Müller", "hans@example.com", "80331", "1980-02-01"), // 0
            person("Hans", "Mueller", "", "80331", ""),                          // 1 = 0
            person("Anna", "Schmidt", "anna@example.com", "10115", "1975-05-05"), // 2
            person("Anna", "Schmitt", "a.s@example.org", "10117", "1975-05-05"), // 3 = 2
            person("Peter", "Weber", "pw@example.com", "50667", "1990-01-01"),   // 4
            person("Pete", "Webr", "pw@example.com", "99999", ""),               // 5 = 4
            person("Klara", "Fischer", "", "20095", "1960-03-03"),               // 6
            person("Otto", "Wagner", "", "01067", "1955-07-07"),                 // 7
        ];
        let (pairs, report) = candidate_pairs(&records, &BlockingRule::defaults(), 100);
        for truth in [(0, 1), (2, 3), (4, 5)] {
            assert!(pairs.contains(&truth), "missed {truth:?} in {pairs:?}");
        }
        assert!(pairs.len() <= 6, "too many candidates: {pairs:?}");
        assert!(pairs.windows(2).all(|w| w[0] < w[1]));
        let email = report.rules.iter().find(|r| r.rule == "email").unwrap();
        assert_eq!(email.pairs, 1);
        assert_eq!(report.total_pairs, pairs.len() as u64);
    }

    #[test]
    fn an_oversized_block_is_skipped_and_reported() {
        let records: Vec<Prepared> = (0..5)
            .map(|i| person(&format!("P{i}"), "Meier", "", "80331", ""))
            .collect();
        let rules = vec!["family+postcode".parse().unwrap()];
        let (pairs, report) = candidate_pairs(&records, &rules, 4);
        assert!(pairs.is_empty());
        assert_eq!(report.rules[0].skipped_blocks, 1);
        assert_eq!(
            report.rules[0].skipped,
            vec![("blk:family+postcode:meier|80331".to_string(), 5)]
        );
        let (pairs, _) = candidate_pairs(&records, &rules, 5);
        assert_eq!(pairs.len(), 10);
    }
}
