//! Scoring: comparison levels per field and the Fellegi-Sunter match model.
//!
//! [`compare`] turns two [`Prepared`] records into a [`Comparison`]: one level per
//! [`Field`], level 0 meaning "missing on either side" (a neutral weight of 0), higher levels
//! as listed by [`Field::levels`] (the last level of every field is "different"). Street,
//! house number, postcode and city form ONE [`Field::Address`] comparison, because they
//! are one piece of evidence, not four.
//!
//! [`MatchModel`] holds m and u probabilities per field level and the prior share of matches
//! among candidate pairs; [`MatchModel::weight`] is the log2 Bayes factor of a comparison and
//! [`MatchModel::probability`] the posterior. Two deliberate departures from conditional
//! independence:
//! - members of a household (or colleagues at one company address) share family name,
//!   address and landline, so unless something says who the customer is (given name beyond
//!   its initial, birth date, e-mail, a shared *mobile* number, identifier or company name
//!   agree) and always when those disagree, the positive evidence of family name, address
//!   and phone together is capped at [`MatchModel::colocation_cap`] bits;
//! - many people share a common name, so without evidence more specific than names and a
//!   town (street address, phone, e-mail, exact birth date, identifier), the names and town
//!   together count at most [`MatchModel::name_cap`] bits, which lands in the review band.
//!
//! Estimation follows Splink: [`estimate_u`] compares seeded random pairs (u is what
//! agreement looks like by chance), [`estimate_m`] runs EM on the candidate pairs' comparison
//! vectors with u fixed. [`ModelOverrides`] (serde, for the configuration) then pin any m, u
//! or the prior, and always win over estimates.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::normalise::without_umlaut_e;
use super::prepare::Prepared;

/// The compared fields, in [`Comparison`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    Given,
    Family,
    Company,
    BirthDate,
    Email,
    Phone,
    Address,
    Identifier,
}

pub const FIELD_COUNT: usize = 8;
/// The most levels any field has, plus the null level 0.
pub const LEVEL_SLOTS: usize = 6;

/// One level per field, indexed by `Field as usize`; 0 = missing.
pub type Comparison = [u8; FIELD_COUNT];

impl Field {
    pub const ALL: [Field; FIELD_COUNT] = [
        Field::Given,
        Field::Family,
        Field::Company,
        Field::BirthDate,
        Field::Email,
        Field::Phone,
        Field::Address,
        Field::Identifier,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Field::Given => "given",
            Field::Family => "family",
            Field::Company => "company",
            Field::BirthDate => "birth_date",
            Field::Email => "email",
            Field::Phone => "phone",
            Field::Address => "address",
            Field::Identifier => "identifier",
        }
    }

    /// Names of levels 1.. (level 0 is "null"); the last is always "different".
    pub fn levels(self) -> &'static [&'static str] {
        match self {
            Field::Given => &["exact", "nickname", "fuzzy", "initial", "different"],
            Field::Family => &["exact", "fuzzy", "phonetic", "different"],
            Field::Company => &["exact", "fuzzy", "weak", "different"],
            Field::BirthDate => &["exact", "near", "different"],
            Field::Email => &["exact", "fuzzy", "different"],
            // "mobile": a shared mobile number, personal unlike a household's landline;
            // "exact": another shared number.
            Field::Phone => &["exact", "close", "mobile", "different"],
            Field::Address => &["exact", "street", "postcode", "city", "different"],
            Field::Identifier => &["exact", "different"],
        }
    }

    /// The level number of "different".
    pub fn different(self) -> u8 {
        self.levels().len() as u8
    }

    fn level_named(self, name: &str) -> Option<u8> {
        self.levels()
            .iter()
            .position(|l| *l == name)
            .map(|i| i as u8 + 1)
    }
}

/// Compares two records field by field. Symmetric: `compare(a, b) == compare(b, a)`.
pub fn compare(a: &Prepared, b: &Prepared) -> Comparison {
    let mut c = [0u8; FIELD_COUNT];
    let swapped =
        !a.given.is_empty() && !a.family.is_empty() && a.given == b.family && a.family == b.given;
    if swapped {
        c[Field::Given as usize] = 1;
        c[Field::Family as usize] = 1;
    } else {
        c[Field::Given as usize] = compare_given(a, b);
        c[Field::Family as usize] = compare_family(a, b);
    }
    c[Field::Company as usize] = compare_company(&a.company, &b.company);
    c[Field::BirthDate as usize] = compare_dates(a.birth_date, b.birth_date);
    c[Field::Email as usize] = compare_emails(&a.emails, &b.emails);
    c[Field::Phone as usize] = compare_phones(&a.phones, &b.phones);
    c[Field::Address as usize] = compare_address(a, b);
    c[Field::Identifier as usize] = compare_identifiers(&a.identifiers, &b.identifiers);
    c
}

fn compare_given(a: &Prepared, b: &Prepared) -> u8 {
    match (a.given.is_empty(), b.given.is_empty()) {
        (false, false) => {
            if a.given == b.given {
                1
            } else if a.given_canonical() == b.given_canonical() {
                2
            } else if jaro_winkler(&a.given, &b.given) >= 0.88 {
                3
            } else {
                5
            }
        }
        _ => match (a.given_initial, b.given_initial) {
            (Some(x), Some(y)) if x == y => 4,
            (Some(_), Some(_)) => 5,
            _ => 0,
        },
    }
}

fn compare_family(a: &Prepared, b: &Prepared) -> u8 {
    let (x, y) = (&*a.family, &*b.family);
    if x.is_empty() || y.is_empty() {
        return 0;
    }
    if x == y {
        return 1;
    }
    let jw = jaro_winkler(x, y);
    if jw >= 0.92 || without_umlaut_e(x).eq(without_umlaut_e(y)) {
        return 2;
    }
    // Double names ("mueller schmidt" vs "mueller") count as a close spelling.
    let contained = x.split(' ').any(|t| t == y) || y.split(' ').any(|t| t == x);
    if contained {
        2
    } else if jw >= 0.84 || (a.family_phonetic == b.family_phonetic && a.family_phonetic[0] != 0) {
        3
    } else {
        4
    }
}

fn compare_company(x: &str, y: &str) -> u8 {
    if x.is_empty() || y.is_empty() {
        return 0;
    }
    if x == y {
        return 1;
    }
    let jw = jaro_winkler(x, y);
    let (short, long) = if x.len() <= y.len() { (x, y) } else { (y, x) };
    // "mueller" vs "mueller bau": one name is the other plus words.
    let prefix = long.starts_with(short) && long.as_bytes().get(short.len()) == Some(&b' ');
    if jw >= 0.93 || prefix {
        2
    } else if jw >= 0.82 {
        3
    } else {
        4
    }
}

fn compare_dates(a: Option<jiff::civil::Date>, b: Option<jiff::civil::Date>) -> u8 {
    let (Some(a), Some(b)) = (a, b) else {
        return 0;
    };
    if a == b {
        return 1;
    }
    let transposed = a.year() == b.year() && a.month() == b.day() && a.day() == b.month();
    let digits = |d: jiff::civil::Date| {
        let (y, m, day) = (d.year() as u32, d.month() as u32, d.day() as u32);
        let n = y * 10_000 + m * 100 + day;
        let mut out = [0u8; 8];
        let mut rest = n;
        for slot in out.iter_mut().rev() {
            *slot = (rest % 10) as u8;
            rest /= 10;
        }
        out
    };
    if transposed || close_digits(&digits(a), &digits(b)) {
        2
    } else {
        3
    }
}

/// Equal-length digit strings that differ in one position or by one swap of neighbours.
fn close_digits(x: &[u8], y: &[u8]) -> bool {
    if x.len() != y.len() {
        return false;
    }
    let mut diffs = x.iter().zip(y).enumerate().filter(|(_, (p, q))| p != q);
    match (diffs.next(), diffs.next(), diffs.next()) {
        (Some(_), None, None) => true,
        (Some((i, _)), Some((j, _)), None) => j == i + 1 && x[i] == y[j] && x[j] == y[i],
        _ => false,
    }
}

fn compare_emails(a: &[Box<str>], b: &[Box<str>]) -> u8 {
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    if sorted_share(a, b) {
        return 1;
    }
    for x in a {
        for y in b {
            let (Some((xl, xd)), Some((yl, yd))) = (x.split_once('@'), y.split_once('@')) else {
                continue;
            };
            // "anna.berg1" and "anna.berg2" are often two people: digits must agree.
            let same_digits = xl
                .bytes()
                .filter(u8::is_ascii_digit)
                .eq(yl.bytes().filter(u8::is_ascii_digit));
            let typo = same_digits && strsim::levenshtein(xl, yl) <= 1;
            let same_person_elsewhere = xl == yl && xl.len() >= 6 && !is_role_account(xl);
            if (xd == yd && typo) || same_person_elsewhere {
                return 2;
            }
        }
    }
    3
}

/// Mailboxes of a function, not a person: the same one at two domains is two companies'
/// purchasing departments, not one customer.
fn is_role_account(local: &str) -> bool {
    const ROLES: [&str; 24] = [
        "accounts",
        "admin",
        "anfragen",
        "bestellung",
        "billing",
        "buchhaltung",
        "contact",
        "einkauf",
        "enquiries",
        "hello",
        "info",
        "kontakt",
        "mail",
        "office",
        "orders",
        "purchasing",
        "rechnung",
        "sales",
        "service",
        "shop",
        "support",
        "team",
        "verkauf",
        "vertrieb",
    ];
    let base = local.split(['+', '.', '-', '_']).next().unwrap_or(local);
    ROLES.contains(&local) || ROLES.contains(&base)
}

fn compare_phones(a: &[Box<str>], b: &[Box<str>]) -> u8 {
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    if a.iter().any(|x| is_mobile(x) && b.contains(x)) {
        return 3;
    }
    if sorted_share(a, b) {
        return 1;
    }
    for x in a {
        for y in b {
            if close_digits(x.as_bytes(), y.as_bytes()) {
                return 2;
            }
        }
    }
    4
}

/// Whether an E.164 number is a mobile number, by the national mobile ranges of the
/// countries whose numbering tells them apart (Germany 15x-17x, Austria 6xx, Switzerland
/// 7x, the UK 7xxx, France 6/7, the Netherlands 6, Italy 3xx, Spain 6/7, Belgium 4xx,
/// Poland and others are left out: a false "no" only costs the personal-evidence bonus).
pub fn is_mobile(e164: &str) -> bool {
    const MOBILE: [&str; 13] = [
        "+4915", "+4916", "+4917", "+436", "+417", "+447", "+336", "+337", "+316", "+393", "+346",
        "+347", "+324",
    ];
    MOBILE.iter().any(|prefix| e164.starts_with(prefix))
}

/// Jaro-Winkler similarity as `strsim::jaro_winkler` computes it, without allocating for
/// the short ASCII strings that names are (the scoring loop runs it millions of times).
pub fn jaro_winkler(a: &str, b: &str) -> f64 {
    const MAX: usize = 64;
    let (x, y) = (a.as_bytes(), b.as_bytes());
    if !a.is_ascii() || !b.is_ascii() || x.len() > MAX || y.len() > MAX {
        return strsim::jaro_winkler(a, b);
    }
    if x.is_empty() && y.is_empty() {
        return 1.0;
    }
    if x.is_empty() || y.is_empty() {
        return 0.0;
    }
    let range = (x.len().max(y.len()) / 2).saturating_sub(1);
    let mut x_flags = [false; MAX];
    let mut y_flags = [false; MAX];
    let mut matches = 0usize;
    for (i, &c) in x.iter().enumerate() {
        let low = i.saturating_sub(range);
        let high = (i + range + 1).min(y.len());
        for j in low..high {
            if !y_flags[j] && y[j] == c {
                x_flags[i] = true;
                y_flags[j] = true;
                matches += 1;
                break;
            }
        }
    }
    if matches == 0 {
        return 0.0;
    }
    let mut transpositions = 0usize;
    let mut j = 0;
    for (i, &c) in x.iter().enumerate() {
        if x_flags[i] {
            while !y_flags[j] {
                j += 1;
            }
            if y[j] != c {
                transpositions += 1;
            }
            j += 1;
        }
    }
    let m = matches as f64;
    let jaro =
        (m / x.len() as f64 + m / y.len() as f64 + (m - (transpositions / 2) as f64) / m) / 3.0;
    if jaro > 0.7 {
        let prefix = x.iter().zip(y).take(4).take_while(|(p, q)| p == q).count();
        jaro + 0.1 * prefix as f64 * (1.0 - jaro)
    } else {
        jaro
    }
}

/// Whether two sorted slices share an element.
fn sorted_share(a: &[Box<str>], b: &[Box<str>]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Equal => return true,
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
        }
    }
    false
}

fn compare_address(a: &Prepared, b: &Prepared) -> u8 {
    if !a.has_address() || !b.has_address() {
        return 0;
    }
    if let (Some(x), Some(y)) = (a.country, b.country)
        && x != y
    {
        return 5;
    }
    let both = |x: &str, y: &str| !x.is_empty() && !y.is_empty();
    let postcode_same = both(&a.postcode, &b.postcode) && a.postcode == b.postcode;
    let city_same =
        both(&a.city, &b.city) && (a.city == b.city || jaro_winkler(&a.city, &b.city) >= 0.92);
    // The place: postcode when both have one, the city otherwise.
    let place_same = if both(&a.postcode, &b.postcode) {
        postcode_same
    } else {
        city_same
    };
    let street_same = both(&a.street, &b.street)
        && (a.street == b.street || jaro_winkler(&a.street, &b.street) >= 0.9);
    if street_same && place_same {
        if both(&a.house_number, &b.house_number) && a.house_number == b.house_number {
            1
        } else {
            2
        }
    } else if postcode_same {
        3
    } else if city_same {
        4
    } else {
        5
    }
}

fn compare_identifiers(a: &[(Box<str>, Box<str>)], b: &[(Box<str>, Box<str>)]) -> u8 {
    let mut common_scheme = false;
    for (scheme, value) in a {
        for (other_scheme, other_value) in b {
            if scheme == other_scheme {
                if value == other_value {
                    return 1;
                }
                common_scheme = true;
            }
        }
    }
    if common_scheme { 2 } else { 0 }
}

/// The built-in name cap: with the built-in prior, a pair that agrees only on names lands in
/// the review band, below the match threshold.
fn default_name_cap() -> f64 {
    7.0
}

/// m and u per field and level (index 0 unused), the prior share of matches among
/// candidate pairs, and the co-location cap (see the module header).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatchModel {
    pub prior: f64,
    pub colocation_cap: f64,
    /// Bits that agreeing names (and town) may contribute without more specific evidence.
    #[serde(default = "default_name_cap")]
    pub name_cap: f64,
    pub m: [[f64; LEVEL_SLOTS]; FIELD_COUNT],
    pub u: [[f64; LEVEL_SLOTS]; FIELD_COUNT],
}

impl Default for MatchModel {
    /// Built-in values for person and company data. u is the chance of each level between
    /// two unrelated records; m its chance between two records of one customer (typos,
    /// nicknames, moved addresses and second e-mail addresses included).
    fn default() -> Self {
        let mut model = MatchModel {
            prior: 0.02,
            colocation_cap: 6.0,
            name_cap: default_name_cap(),
            m: [[0.0; LEVEL_SLOTS]; FIELD_COUNT],
            u: [[0.0; LEVEL_SLOTS]; FIELD_COUNT],
        };
        let table: [(Field, &[f64], &[f64]); FIELD_COUNT] = [
            (
                Field::Given,
                &[0.85, 0.05, 0.06, 0.035, 0.005],
                &[0.02, 0.003, 0.01, 0.05, 0.917],
            ),
            (
                Field::Family,
                &[0.88, 0.07, 0.03, 0.02],
                &[0.002, 0.003, 0.005, 0.99],
            ),
            (
                Field::Company,
                &[0.8, 0.13, 0.05, 0.02],
                &[0.0005, 0.001, 0.005, 0.9935],
            ),
            (
                Field::BirthDate,
                &[0.93, 0.05, 0.02],
                &[0.0003, 0.002, 0.9977],
            ),
            (Field::Email, &[0.6, 0.1, 0.3], &[0.0001, 0.0005, 0.9994]),
            (
                Field::Phone,
                &[0.25, 0.1, 0.3, 0.35],
                &[0.0004, 0.001, 0.0001, 0.9985],
            ),
            (
                Field::Address,
                &[0.7, 0.08, 0.07, 0.05, 0.1],
                &[0.0001, 0.0005, 0.005, 0.05, 0.9444],
            ),
            (Field::Identifier, &[0.97, 0.03], &[0.00001, 0.99999]),
        ];
        for (field, m, u) in table {
            model.m[field as usize][1..=m.len()].copy_from_slice(m);
            model.u[field as usize][1..=u.len()].copy_from_slice(u);
        }
        model
    }
}

/// Field levels whose disagreement says "a different person or company".
const IDENTITY_FIELDS: [Field; 3] = [Field::Given, Field::BirthDate, Field::Company];
/// The fields that name a customer.
const NAME_FIELDS: [Field; 3] = [Field::Given, Field::Family, Field::Company];
/// Fields that members of one household or one office share.
const COLOCATION_FIELDS: [Field; 3] = [Field::Family, Field::Address, Field::Phone];

/// Whether field `f` agrees at one of its first `upto` levels (the agreeing ones).
fn agrees(c: &Comparison, f: Field, upto: u8) -> bool {
    (1..=upto).contains(&c[f as usize])
}

/// Evidence about *who* the customer is, beyond a shared family name and place: the given
/// name (not just its initial), the birth date, an e-mail address, a mobile number, an
/// identifier or the company name agree.
fn personal_evidence(c: &Comparison) -> bool {
    c[Field::Phone as usize] == 3
        || agrees(c, Field::Given, 3)
        || agrees(c, Field::BirthDate, 2)
        || agrees(c, Field::Email, 2)
        || agrees(c, Field::Identifier, 1)
        || agrees(c, Field::Company, 2)
}

/// Evidence more specific than a name and a town: the street address, a phone number, an
/// e-mail address, the exact birth date or an identifier agree. A birth date one digit off
/// is not: among the many people called Thomas Müller, some are born a few days apart.
fn specific_evidence(c: &Comparison) -> bool {
    agrees(c, Field::Address, 2)
        || agrees(c, Field::Phone, 3)
        || agrees(c, Field::Email, 2)
        || agrees(c, Field::BirthDate, 1)
        || agrees(c, Field::Identifier, 1)
}

/// log2(m/u) per field and level, precomputed from a [`MatchModel`].
#[derive(Debug, Clone, PartialEq)]
pub struct WeightTable {
    weights: [[f64; LEVEL_SLOTS]; FIELD_COUNT],
    prior_weight: f64,
    colocation_cap: f64,
    name_cap: f64,
}

impl WeightTable {
    pub fn weight(&self, c: &Comparison) -> f64 {
        // Shared place evidence (family name, address, landline) counts only up to the
        // co-location cap unless something says who the customer is (a household shares
        // surname, address and landline; "T. Müller" at that address may be any of them),
        // and always when an identity field disagrees or no name can be compared at all (a
        // person against a company): an address alone never makes two records one customer.
        let no_name = NAME_FIELDS.iter().all(|&f| c[f as usize] == 0);
        let identity_conflict = no_name
            || IDENTITY_FIELDS
                .iter()
                .any(|&f| c[f as usize] == f.different());
        let colocated_only = identity_conflict || !personal_evidence(c);
        // Names (and the town) alone count only up to the name cap: many people share a
        // common name, so "Thomas Müller" in two records is a possible match, not a link.
        let names_only = !specific_evidence(c);
        let mut total = 0.0;
        let mut colocation = 0.0;
        let mut names = 0.0;
        for field in Field::ALL {
            let w = self.weights[field as usize][c[field as usize] as usize];
            if w <= 0.0 {
                total += w;
            } else if colocated_only && COLOCATION_FIELDS.contains(&field) {
                colocation += w;
            } else if names_only && (NAME_FIELDS.contains(&field) || field == Field::Address) {
                names += w;
            } else {
                total += w;
            }
        }
        total + colocation.min(self.colocation_cap) + names.min(self.name_cap)
    }

    /// log2(m/u) of one level of one field.
    pub fn level_weight(&self, field: Field, level: u8) -> f64 {
        self.weights[field as usize][level as usize]
    }

    /// The posterior match probability of a pair with this match weight.
    pub fn probability(&self, weight: f64) -> f64 {
        let odds = (weight + self.prior_weight).exp2();
        if odds.is_infinite() {
            1.0
        } else {
            odds / (1.0 + odds)
        }
    }

    /// The weight at which the posterior reaches `probability`.
    pub fn weight_for(&self, probability: f64) -> f64 {
        let p = probability.clamp(1e-12, 1.0 - 1e-12);
        (p / (1.0 - p)).log2() - self.prior_weight
    }
}

impl MatchModel {
    // Three parallel tables (m, u, weights) indexed by the same level: an index loop reads best.
    #[allow(clippy::needless_range_loop)]
    pub fn weights(&self) -> WeightTable {
        let mut weights = [[0.0; LEVEL_SLOTS]; FIELD_COUNT];
        for field in Field::ALL {
            let f = field as usize;
            for level in 1..=field.levels().len() {
                let m = self.m[f][level].max(1e-9);
                let u = self.u[f][level].max(1e-9);
                weights[f][level] = (m / u).log2();
            }
        }
        let prior = self.prior.clamp(1e-9, 1.0 - 1e-9);
        WeightTable {
            weights,
            prior_weight: (prior / (1.0 - prior)).log2(),
            colocation_cap: self.colocation_cap,
            name_cap: self.name_cap,
        }
    }

    /// The match weight (log2 Bayes factor) of a comparison.
    pub fn weight(&self, c: &Comparison) -> f64 {
        self.weights().weight(c)
    }

    /// The posterior match probability of a comparison.
    pub fn probability(&self, c: &Comparison) -> f64 {
        let table = self.weights();
        table.probability(table.weight(c))
    }

    /// Pins the values named in `overrides`; every bad name or value is reported.
    pub fn apply(&mut self, overrides: &ModelOverrides) -> Result<(), Vec<OverrideError>> {
        let mut errors = Vec::new();
        let probability = |what: String, v: f64, errors: &mut Vec<OverrideError>| {
            let ok = v > 0.0 && v < 1.0;
            if !ok {
                errors.push(OverrideError::OutOfRange { what, value: v });
            }
            ok
        };
        if let Some(prior) = overrides.prior
            && probability("prior".into(), prior, &mut errors)
        {
            self.prior = prior;
        }
        if let Some(cap) = overrides.name_cap {
            if cap >= 0.0 {
                self.name_cap = cap;
            } else {
                errors.push(OverrideError::OutOfRange {
                    what: "name_cap".into(),
                    value: cap,
                });
            }
        }
        if let Some(cap) = overrides.colocation_cap {
            if cap >= 0.0 {
                self.colocation_cap = cap;
            } else {
                errors.push(OverrideError::OutOfRange {
                    what: "colocation_cap".into(),
                    value: cap,
                });
            }
        }
        for (field_name, levels) in &overrides.fields {
            let Some(field) = Field::ALL.into_iter().find(|f| f.as_str() == field_name) else {
                errors.push(OverrideError::UnknownField {
                    field: field_name.clone(),
                    known: Field::ALL.map(Field::as_str).join(", "),
                });
                continue;
            };
            for (level_name, values) in levels {
                let Some(level) = field.level_named(level_name) else {
                    errors.push(OverrideError::UnknownLevel {
                        field: field_name.clone(),
                        level: level_name.clone(),
                        known: field.levels().join(", "),
                    });
                    continue;
                };
                let (f, l) = (field as usize, level as usize);
                if let Some(m) = values.m
                    && probability(format!("{field_name}.{level_name}.m"), m, &mut errors)
                {
                    self.m[f][l] = m;
                }
                if let Some(u) = values.u
                    && probability(format!("{field_name}.{level_name}.u"), u, &mut errors)
                {
                    self.u[f][l] = u;
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Configuration overrides of the model: `fields.<field>.<level>.m|u`, `prior`,
/// `colocation_cap`, `name_cap`. Overridden values are never replaced by estimation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelOverrides {
    #[serde(default)]
    pub prior: Option<f64>,
    #[serde(default)]
    pub colocation_cap: Option<f64>,
    #[serde(default)]
    pub name_cap: Option<f64>,
    #[serde(default)]
    pub fields: BTreeMap<String, BTreeMap<String, LevelOverride>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelOverride {
    #[serde(default)]
    pub m: Option<f64>,
    #[serde(default)]
    pub u: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum OverrideError {
    #[error("match model override: unknown field {field:?} (known: {known})")]
    UnknownField { field: String, known: String },
    #[error("match model override: field {field:?} has no level {level:?} (known: {known})")]
    UnknownLevel {
        field: String,
        level: String,
        known: String,
    },
    #[error("match model override {what}: {value} is not a probability strictly between 0 and 1")]
    OutOfRange { what: String, value: f64 },
}

/// A small deterministic generator (SplitMix64) for sampling; not for anything secret.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), bias negligible for n far below 2^64.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// u per field and level from `samples` seeded random pairs of `records`, with add-half
/// smoothing so no level gets a u of 0. `None` with fewer than two records.
pub fn estimate_u(
    records: &[Prepared],
    samples: usize,
    seed: u64,
) -> Option<[[f64; LEVEL_SLOTS]; FIELD_COUNT]> {
    if records.len() < 2 {
        return None;
    }
    let mut rng = SplitMix64::new(seed);
    let mut counts = [[0u64; LEVEL_SLOTS]; FIELD_COUNT];
    for _ in 0..samples {
        let i = rng.below(records.len());
        let mut j = rng.below(records.len() - 1);
        if j >= i {
            j += 1;
        }
        let c = compare(&records[i], &records[j]);
        for f in 0..FIELD_COUNT {
            counts[f][c[f] as usize] += 1;
        }
    }
    let mut u = [[0.0; LEVEL_SLOTS]; FIELD_COUNT];
    for field in Field::ALL {
        let f = field as usize;
        let levels = field.levels().len();
        let observed: u64 = counts[f][1..=levels].iter().sum();
        for level in 1..=levels {
            u[f][level] = (counts[f][level] as f64 + 0.5) / (observed as f64 + 0.5 * levels as f64);
        }
    }
    Some(u)
}

/// What EM did.
#[derive(Debug, Clone, PartialEq)]
pub struct EmReport {
    pub iterations: usize,
    pub converged: bool,
    /// Distinct comparison vectors (EM runs over these with their counts).
    pub patterns: usize,
}

/// Re-estimates m and the prior by expectation-maximisation over candidate-pair comparison
/// vectors, u fixed. Starts from `model`; stops when no parameter moves by more than 1e-6
/// or after `max_iterations`. The co-location cap plays no part here: EM fits the plain
/// conditional-independence model.
// m_mass and the model are parallel tables indexed by the same level.
#[allow(clippy::needless_range_loop)]
pub fn estimate_m(
    model: &MatchModel,
    comparisons: &[Comparison],
    max_iterations: usize,
) -> (MatchModel, EmReport) {
    let mut patterns: BTreeMap<Comparison, u64> = BTreeMap::new();
    for c in comparisons {
        *patterns.entry(*c).or_default() += 1;
    }
    let patterns: Vec<(Comparison, f64)> =
        patterns.into_iter().map(|(c, n)| (c, n as f64)).collect();
    let mut model = model.clone();
    let mut report = EmReport {
        iterations: 0,
        converged: false,
        patterns: patterns.len(),
    };
    if patterns.is_empty() {
        return (model, report);
    }
    let total: f64 = patterns.iter().map(|(_, n)| n).sum();
    for _ in 0..max_iterations {
        report.iterations += 1;
        let mut log_m = [[0.0; LEVEL_SLOTS]; FIELD_COUNT];
        let mut log_u = [[0.0; LEVEL_SLOTS]; FIELD_COUNT];
        for f in 0..FIELD_COUNT {
            for l in 1..LEVEL_SLOTS {
                log_m[f][l] = model.m[f][l].max(1e-12).ln();
                log_u[f][l] = model.u[f][l].max(1e-12).ln();
            }
        }
        let prior = model.prior.clamp(1e-9, 1.0 - 1e-9);
        let mut m_mass = [[0.0; LEVEL_SLOTS]; FIELD_COUNT];
        let mut matched = 0.0;
        for (c, n) in &patterns {
            let mut lm = prior.ln();
            let mut lu = (1.0 - prior).ln();
            for f in 0..FIELD_COUNT {
                let l = c[f] as usize;
                if l > 0 {
                    lm += log_m[f][l];
                    lu += log_u[f][l];
                }
            }
            let posterior = 1.0 / (1.0 + (lu - lm).exp());
            let mass = posterior * n;
            matched += mass;
            for f in 0..FIELD_COUNT {
                m_mass[f][c[f] as usize] += mass;
            }
        }
        let mut change: f64 = 0.0;
        for field in Field::ALL {
            let f = field as usize;
            let levels = field.levels().len();
            let observed: f64 = m_mass[f][1..=levels].iter().sum();
            if observed <= 0.0 {
                continue;
            }
            for l in 1..=levels {
                let m = (m_mass[f][l] / observed).max(1e-6);
                change = change.max((m - model.m[f][l]).abs());
                model.m[f][l] = m;
            }
        }
        let new_prior = (matched / total).clamp(1e-6, 1.0 - 1e-6);
        change = change.max((new_prior - model.prior).abs());
        model.prior = new_prior;
        if change < 1e-6 {
            report.converged = true;
            break;
        }
    }
    (model, report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Address, Customer, PartyKind};
    use crate::resolver::prepare::{NormaliseSettings, prepare};

    fn customer(given: &str, family: &str, street: &str, phones: &[&str]) -> Customer {
        Customer {
            kind: PartyKind::Person,
            given_name: Some(given.into()),
            family_name: Some(family.into()),
            phones: phones.iter().map(|p| p.to_string()).collect(),
            addresses: vec![Address {
                lines: vec![street.into()],
                postcode: Some("80331".into()),
                city: Some("München".into()),
                country: Some("DE".into()),
                ..Address::default()
            }],
            ..Customer::default()
        }
    }

    fn prep(c: &Customer) -> Prepared {
        prepare(c, &NormaliseSettings::default())
    }

    #[test]
    fn an_initial_links_through_a_shared_mobile_but_not_through_a_shared_landline() {
        let model = MatchModel::default();
        let full = prep(&customer(
            "Jana",
            "Kammhaus",
            "Fichtenplatz 83",
            &["+49 175 37275641", "+49 89 3002757"],
        ));
        let by_mobile = prep(&customer(
            "J.",
            "Kammhaus",
            "Fichtenplatz 83",
            &["0175 37275641"],
        ));
        let c = compare(&full, &by_mobile);
        assert_eq!(c[Field::Phone as usize], 3, "a shared mobile number");
        assert!(model.probability(&c) >= 0.9, "{c:?}");
        // "J. Kammhaus" with the household's landline may be Jana or Jonas: not a link.
        let by_landline = prep(&customer(
            "J.",
            "Kammhaus",
            "Fichtenplatz 83",
            &["089 3002757"],
        ));
        let c = compare(&full, &by_landline);
        assert_eq!(c[Field::Phone as usize], 1);
        assert!(model.probability(&c) < 0.9, "{c:?}");
    }

    #[test]
    fn a_common_name_alone_is_a_possible_match_not_a_link() {
        let model = MatchModel::default();
        let mut elsewhere = customer("Thomas", "Müller", "Altstraße 90", &[]);
        elsewhere.addresses[0].postcode = Some("50720".into());
        elsewhere.addresses[0].city = Some("Köln".into());
        let a = prep(&customer("Thomas", "Müller", "Hafenstraße 117", &[]));
        let b = prep(&elsewhere);
        let c = compare(&a, &b);
        assert!(model.probability(&c) < 0.9, "{c:?}");
        // Same names in the same street and house: that is specific, it links.
        let c = compare(
            &a,
            &prep(&customer("Thomas", "Mueller", "Hafenstr. 117", &[])),
        );
        assert!(model.probability(&c) >= 0.9, "{c:?}");
    }

    #[test]
    fn levels_per_field() {
        let a = prep(&customer(
            "Hans",
            "Müller",
            "Hauptstraße 12",
            &["+49891234567"],
        ));
        let b = prep(&customer(
            "Hans",
            "MUELLER",
            "Hauptstr. 12",
            &["+49891234576"],
        ));
        let c = compare(&a, &b);
        assert_eq!(c[Field::Given as usize], 1);
        assert_eq!(c[Field::Family as usize], 1);
        assert_eq!(
            c[Field::Address as usize],
            1,
            "Str. and Straße are one street"
        );
        assert_eq!(c[Field::Phone as usize], 2, "transposed digits are close");
        assert_eq!(c[Field::Email as usize], 0, "missing is neutral");
        assert_eq!(c, compare(&b, &a), "comparison is symmetric");

        let d = prep(&customer("Johannes", "Muller", "Hauptstraße 14", &[]));
        let c = compare(&a, &d);
        assert_eq!(
            c[Field::Given as usize],
            2,
            "hans is a nickname of johannes"
        );
        assert_eq!(c[Field::Family as usize], 2);
        assert_eq!(c[Field::Address as usize], 2, "same street, other number");
        assert_eq!(c[Field::Phone as usize], 0);

        let swapped = prep(&customer("Müller", "Hans", "Hauptstraße 12", &[]));
        let c = compare(&a, &swapped);
        assert_eq!((c[0], c[1]), (1, 1), "swapped given and family names agree");
    }

    #[test]
    fn jaro_winkler_agrees_with_strsim() {
        let words = [
            "mueller",
            "muller",
            "martha",
            "marhta",
            "dixon",
            "dicksonx",
            "",
            "a",
            "hauptstr",
            "hauptsrt",
            "jellyfish",
            "smellyfish",
            "müller",
        ];
        for a in words {
            for b in words {
                let (mine, theirs) = (jaro_winkler(a, b), strsim::jaro_winkler(a, b));
                assert!((mine - theirs).abs() < 1e-12, "{a} {b}: {mine} vs {theirs}");
            }
        }
    }

    #[test]
    fn dates_tolerate_transposition_and_year_typos() {
        let d = |s: &str| Some(s.parse::<jiff::civil::Date>().unwrap());
        assert_eq!(compare_dates(d("1980-03-04"), d("1980-03-04")), 1);
        assert_eq!(compare_dates(d("1980-03-04"), d("1980-04-03")), 2);
        assert_eq!(compare_dates(d("1980-03-04"), d("1989-03-04")), 2);
        assert_eq!(compare_dates(d("1980-03-04"), d("1908-03-04")), 2);
        assert_eq!(compare_dates(d("1980-03-04"), d("1980-03-14")), 2);
        assert_eq!(compare_dates(d("1980-03-04"), d("1980-05-14")), 3);
        assert_eq!(compare_dates(d("1980-03-04"), d("1975-11-20")), 3);
        assert_eq!(compare_dates(None, d("1975-11-20")), 0);
    }

    #[test]
    fn weights_follow_the_model_and_missing_is_neutral() {
        let model = MatchModel::default();
        let table = model.weights();
        assert_eq!(table.weight(&[0; FIELD_COUNT]), 0.0);
        let mut c = [0u8; FIELD_COUNT];
        c[Field::Email as usize] = 1;
        assert!((table.weight(&c) - (0.6f64 / 0.0001).log2()).abs() < 1e-9);
        c[Field::Email as usize] = 3;
        assert!(table.weight(&c) < 0.0);
        let p = table.probability(table.weight_for(0.9));
        assert!((p - 0.9).abs() < 1e-9);
    }

    #[test]
    fn overrides_pin_values_and_name_bad_entries() {
        let overrides: ModelOverrides = toml::from_str(
            r#"
            prior = 0.2
            [fields.email.exact]
            m = 0.5
            [fields.address.postcode]
            u = 0.01
            "#,
        )
        .unwrap();
        let mut model = MatchModel::default();
        model.apply(&overrides).unwrap();
        assert_eq!(model.prior, 0.2);
        assert_eq!(model.m[Field::Email as usize][1], 0.5);
        assert_eq!(model.u[Field::Address as usize][3], 0.01);

        let bad: ModelOverrides = toml::from_str(
            r#"
            [fields.emial.exact]
            m = 0.5
            [fields.email.close]
            m = 0.5
            [fields.phone.exact]
            u = 1.5
            "#,
        )
        .unwrap();
        let errors = MatchModel::default().apply(&bad).unwrap_err();
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 3, "{text:?}");
        assert!(
            text.iter().any(|t| t.contains("unknown field \"emial\"")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.contains("no level \"close\"")),
            "{text:?}"
        );
        assert!(text.iter().any(|t| t.contains("phone.exact.u")), "{text:?}");
    }

    /// Draws comparison vectors from a known model (with 30% of fields missing at random)
    /// and checks EM, started from the built-in defaults with the true u fixed, recovers
    /// every m within 0.02 absolute and the prior within 0.01.
    #[test]
    #[allow(clippy::needless_range_loop)]
    fn em_recovers_known_m_and_prior() {
        let mut truth = MatchModel {
            prior: 0.3,
            ..MatchModel::default()
        };
        truth.m[Field::Given as usize][1..=5].copy_from_slice(&[0.7, 0.1, 0.1, 0.05, 0.05]);
        truth.m[Field::Family as usize][1..=4].copy_from_slice(&[0.8, 0.1, 0.05, 0.05]);
        truth.m[Field::Email as usize][1..=3].copy_from_slice(&[0.4, 0.2, 0.4]);
        // u of candidate pairs: blocked pairs agree by chance more than random pairs do.
        truth.u[Field::Family as usize][1..=4].copy_from_slice(&[0.3, 0.1, 0.1, 0.5]);
        truth.u[Field::Address as usize][1..=5].copy_from_slice(&[0.05, 0.05, 0.2, 0.2, 0.5]);
        let mut rng = SplitMix64::new(7);
        let draw = |p: &[f64; LEVEL_SLOTS], levels: usize, rng: &mut SplitMix64| -> u8 {
            let mut x = rng.unit() * p[1..=levels].iter().sum::<f64>();
            for l in 1..=levels {
                x -= p[l];
                if x < 0.0 {
                    return l as u8;
                }
            }
            levels as u8
        };
        let comparisons: Vec<Comparison> = (0..200_000)
            .map(|_| {
                let is_match = rng.unit() < truth.prior;
                let mut c = [0u8; FIELD_COUNT];
                for field in Field::ALL {
                    let f = field as usize;
                    if rng.unit() < 0.3 {
                        continue;
                    }
                    let p = if is_match { &truth.m[f] } else { &truth.u[f] };
                    c[f] = draw(p, field.levels().len(), &mut rng);
                }
                c
            })
            .collect();
        let start = MatchModel {
            u: truth.u,
            ..MatchModel::default()
        };
        let (fitted, report) = estimate_m(&start, &comparisons, 500);
        assert!(report.converged, "{report:?}");
        assert!(
            (fitted.prior - truth.prior).abs() < 0.01,
            "prior {}",
            fitted.prior
        );
        for field in Field::ALL {
            let f = field as usize;
            for l in 1..=field.levels().len() {
                let (got, want) = (fitted.m[f][l], truth.m[f][l]);
                assert!(
                    (got - want).abs() < 0.02,
                    "{}.{}: m {got} vs {want}",
                    field.as_str(),
                    field.levels()[l - 1]
                );
            }
        }
    }

    #[test]
    fn u_from_random_pairs_is_deterministic_and_smoothed() {
        let records: Vec<Prepared> = (0..50)
            .map(|i| {
                prep(&customer(
                    &format!("G{i}"),
                    &format!("F{}", i % 5),
                    "Weg 1",
                    &[],
                ))
            })
            .collect();
        let u1 = estimate_u(&records, 2000, 1).unwrap();
        let u2 = estimate_u(&records, 2000, 1).unwrap();
        assert_eq!(u1, u2);
        let family = u1[Field::Family as usize];
        // One family name in five: exact agreement about 0.2 by chance (the ~0.05 slack
        // allows sampling noise).
        assert!((family[1] - 0.2).abs() < 0.05, "{family:?}");
        assert!(u1.iter().flatten().all(|&u| u >= 0.0));
        assert!(estimate_u(&records[..1], 10, 1).is_none());
    }
}
