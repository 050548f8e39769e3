//! Why two customer records scored what they scored: the comparison level of every field and
//! the weight it contributed, for people reviewing possible matches.

use serde::Serialize;

use super::matcher::MatchSettings;
use super::prepare::{Prepared, prepare};
use super::scoring::{Field, compare};
use crate::model::Customer;

/// One field's part in a pair's score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldEvidence {
    pub field: &'static str,
    /// `null` when either record lacks the field, else the level's name (`exact`, `fuzzy`, ...).
    pub level: &'static str,
    /// log2(m/u) of the level under the model; 0 for `null`.
    pub weight: f64,
}

/// The explanation of one pair's score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// The match weight, after the caps on shared-place and name-only evidence.
    pub weight: f64,
    pub probability: f64,
    /// Bits of the fields' positive weights the caps withheld: shared surname, address and
    /// landline say "same household", and names alone say "possibly the same customer".
    pub capped: f64,
    pub fields: Vec<FieldEvidence>,
}

/// Compares `a` and `b` as the matcher does under `settings` (model overrides applied by the
/// caller) and says what each field contributed.
pub fn explain(a: &Customer, b: &Customer, settings: &MatchSettings) -> Explanation {
    let left = prepare(a, &settings.normalise);
    let right = prepare(b, &settings.normalise);
    explain_prepared(&left, &right, settings)
}

/// [`explain`] of two records already prepared under `settings.normalise`.
pub fn explain_prepared(
    left: &Prepared,
    right: &Prepared,
    settings: &MatchSettings,
) -> Explanation {
    let comparison = compare(left, right);
    let model = &settings.model;
    let fields: Vec<FieldEvidence> = Field::ALL
        .iter()
        .map(|&field| {
            let level = comparison[field as usize];
            if level == 0 {
                return FieldEvidence {
                    field: field.as_str(),
                    level: "null",
                    weight: 0.0,
                };
            }
            let m = model.m[field as usize][level as usize].max(1e-9);
            let u = model.u[field as usize][level as usize].max(1e-9);
            FieldEvidence {
                field: field.as_str(),
                level: field.levels()[level as usize - 1],
                weight: (m / u).log2(),
            }
        })
        .collect();
    let table = model.weights();
    let weight = table.weight(&comparison);
    let uncapped: f64 = fields.iter().map(|f| f.weight).sum();
    Explanation {
        weight,
        probability: table.probability(weight),
        capped: (uncapped - weight).max(0.0),
        fields,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PartyKind, SourceRef};

    fn person(id: &str, given: &str, family: &str, email: &str) -> Customer {
        Customer {
            source: SourceRef {
                system: "crm".into(),
                stream: "contacts".into(),
                source_id: id.into(),
            },
            kind: PartyKind::Person,
            given_name: Some(given.into()),
            family_name: Some(family.into()),
            emails: vec![email.into()],
            ..Customer::default()
        }
    }

    #[test]
    fn every_field_is_named_with_its_level_and_weight() {
        let settings = MatchSettings::default();
        let a = person("1", "Anna", "Berg", "anna@example.com");
        let b = person("2", "Anna", "Berg", "a.berg@example.org");
        let explanation = explain(&a, &b, &settings);
        let level = |name: &str| {
            explanation
                .fields
                .iter()
                .find(|f| f.field == name)
                .unwrap()
                .clone()
        };
        assert_eq!(explanation.fields.len(), Field::ALL.len());
        assert_eq!(level("given").level, "exact");
        assert!(level("given").weight > 0.0);
        assert_eq!(level("family").level, "exact");
        assert_eq!(level("email").level, "different");
        assert!(level("email").weight < 0.0);
        assert_eq!(level("phone").level, "null");
        assert_eq!(level("phone").weight, 0.0);
        let sum: f64 = explanation.fields.iter().map(|f| f.weight).sum();
        assert!(
            (explanation.weight + explanation.capped - sum).abs() < 1e-9,
            "the weight is the fields' sum less what the caps withheld"
        );
        assert!(explanation.capped > 0.0, "names alone are capped");

        // A shared e-mail address says who the customer is: nothing is withheld.
        let c = person("3", "Anna", "Berg", "anna@example.com");
        let sure = explain(&a, &c, &settings);
        let sum: f64 = sure.fields.iter().map(|f| f.weight).sum();
        assert_eq!(sure.capped, 0.0);
        assert!((sure.weight - sum).abs() < 1e-9);
        assert!(sure.probability > explanation.probability);
        assert!(explanation.probability > 0.0 && explanation.probability < 1.0);
    }
}
