//! The comparison features of one customer, computed once and compared many times.
//!
//! [`prepare`] turns a [`Customer`] into a [`Prepared`] under the [`NormaliseSettings`]:
//! folded names with the nickname root and initial, the company key, e-mail keys, E.164
//! phones, the first non-empty address split into street / house number / postcode / city /
//! country, the birth date and normalised identifiers, plus Double Metaphone codes of the
//! family name and the company key for blocking. Strings are boxed (`Box<str>`, one
//! allocation each, no spare capacity) and phonetic codes are inline byte arrays, because a
//! million of these live in memory during a full match.
//!
//! Person or organisation: names are read as a person's when the record is a person or gives
//! a given or family name; the company key comes from `company`, or from `full_name` when an
//! organisation has no person name. Only the first non-empty address is compared.

use jiff::civil::Date;
use rphonetic::DoubleMetaphone;
use serde::{Deserialize, Serialize};

use super::normalise::{
    EmailRules, company_key, email_key, fold, phone_e164, postcode_key, split_person_name,
    split_street,
};
use crate::model::{Customer, PartyKind};

/// A Double Metaphone primary code, at most 4 letters, zero-padded; all zeros = no code.
pub type PhoneticCode = [u8; 4];

/// How customer data is normalised before comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormaliseSettings {
    /// ISO 3166-1 region for phone numbers without a country code.
    pub phone_region: String,
    /// Country assumed for postcodes of addresses without one.
    #[serde(default)]
    pub default_country: Option<String>,
    #[serde(default)]
    pub email: EmailRules,
}

impl Default for NormaliseSettings {
    fn default() -> Self {
        NormaliseSettings {
            phone_region: "DE".into(),
            default_country: None,
            email: EmailRules::default(),
        }
    }
}

/// The comparison features of one customer. Empty strings and empty slices mean "unknown".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Prepared {
    pub kind: PartyKind,
    /// Folded first given name; empty when only an initial is known.
    pub given: Box<str>,
    /// The nickname root of `given` when the table has one.
    pub given_root: Option<&'static str>,
    pub given_initial: Option<char>,
    pub family: Box<str>,
    pub family_phonetic: PhoneticCode,
    pub company: Box<str>,
    pub company_phonetic: PhoneticCode,
    /// Sorted, de-duplicated e-mail keys.
    pub emails: Box<[Box<str>]>,
    /// Sorted, de-duplicated E.164 numbers.
    pub phones: Box<[Box<str>]>,
    pub street: Box<str>,
    pub house_number: Box<str>,
    pub postcode: Box<str>,
    pub city: Box<str>,
    /// ISO 3166-1 alpha-2, upper case.
    pub country: Option<[u8; 2]>,
    pub birth_date: Option<Date>,
    /// Sorted `(scheme, value)` pairs, values upper-case alphanumerics only.
    pub identifiers: Box<[(Box<str>, Box<str>)]>,
}

impl Prepared {
    /// The nickname root of the given name, or the given name itself.
    pub fn given_canonical(&self) -> &str {
        self.given_root.unwrap_or(&self.given)
    }

    pub fn has_address(&self) -> bool {
        !(self.street.is_empty() && self.postcode.is_empty() && self.city.is_empty())
    }
}

/// Prepares many customers; the phone region is parsed once.
pub struct Preparer<'a> {
    settings: &'a NormaliseSettings,
    region: phonenumber::country::Id,
    metaphone: DoubleMetaphone,
}

impl<'a> Preparer<'a> {
    /// An unknown `phone_region` falls back to DE, the house default; configuration
    /// validation is where an operator learns about the typo.
    pub fn new(settings: &'a NormaliseSettings) -> Self {
        let region = settings
            .phone_region
            .trim()
            .to_ascii_uppercase()
            .parse()
            .unwrap_or(phonenumber::country::Id::DE);
        Preparer {
            settings,
            region,
            metaphone: DoubleMetaphone::default(),
        }
    }

    pub fn prepare(&self, customer: &Customer) -> Prepared {
        let has_person_name = customer.given_name.is_some() || customer.family_name.is_some();
        let person_like = customer.kind == PartyKind::Person || has_person_name;
        let (given, given_root, given_initial, family) = if person_like {
            let name = split_person_name(
                customer.given_name.as_deref(),
                customer.family_name.as_deref(),
                customer.full_name.as_deref(),
            );
            let root = super::normalise::nickname_root(&name.given);
            (name.given, root, name.initial, name.family)
        } else {
            Default::default()
        };
        let company_source = customer.company.as_deref().or((customer.kind
            == PartyKind::Organization
            && !has_person_name)
            .then_some(customer.full_name.as_deref())
            .flatten());
        let company = company_source.map(company_key).unwrap_or_default();

        let mut emails: Vec<Box<str>> = customer
            .emails
            .iter()
            .filter_map(|e| email_key(e, &self.settings.email))
            .map(String::into_boxed_str)
            .collect();
        emails.sort();
        emails.dedup();
        let mut phones: Vec<Box<str>> = customer
            .phones
            .iter()
            .filter_map(|p| phone_e164(p, self.region))
            .map(String::into_boxed_str)
            .collect();
        phones.sort();
        phones.dedup();

        let address = customer.addresses.iter().find(|a| !a.is_empty());
        let country_text = address
            .and_then(|a| a.country.as_deref())
            .or(self.settings.default_country.as_deref());
        let country = country_text.and_then(|c| {
            let c = c.trim().as_bytes();
            (c.len() == 2).then(|| [c[0].to_ascii_uppercase(), c[1].to_ascii_uppercase()])
        });
        let (street, house_number) = address
            .and_then(|a| a.lines.first())
            .map(|line| split_street(line))
            .unwrap_or_default();
        let postcode = address
            .and_then(|a| a.postcode.as_deref())
            .map(|p| postcode_key(p, country_text))
            .unwrap_or_default();
        let city = address
            .and_then(|a| a.city.as_deref())
            .map(fold)
            .unwrap_or_default();

        let mut identifiers: Vec<(Box<str>, Box<str>)> = customer
            .identifiers
            .iter()
            .filter_map(|id| {
                let value = super::normalise_identifier(&id.value)?;
                Some((
                    id.scheme.trim().to_ascii_lowercase().into_boxed_str(),
                    value.into_boxed_str(),
                ))
            })
            .collect();
        identifiers.sort();
        identifiers.dedup();

        Prepared {
            kind: if person_like {
                PartyKind::Person
            } else {
                PartyKind::Organization
            },
            family_phonetic: self.phonetic(&family),
            company_phonetic: self.phonetic(&company),
            given: given.into_boxed_str(),
            given_root,
            given_initial,
            family: family.into_boxed_str(),
            company: company.into_boxed_str(),
            emails: emails.into_boxed_slice(),
            phones: phones.into_boxed_slice(),
            street: street.into_boxed_str(),
            house_number: house_number.into_boxed_str(),
            postcode: postcode.into_boxed_str(),
            city: city.into_boxed_str(),
            country,
            birth_date: customer.birth_date,
            identifiers: identifiers.into_boxed_slice(),
        }
    }

    /// The Double Metaphone primary code of the letters of `folded` (spaces removed, so
    /// "van beethoven" and "vanbeethoven" agree).
    fn phonetic(&self, folded: &str) -> PhoneticCode {
        let letters: String = folded.chars().filter(|c| c.is_alphabetic()).collect();
        let mut code = [0u8; 4];
        if letters.is_ascii() && !letters.is_empty() {
            let primary = self.metaphone.double_metaphone(&letters).primary();
            for (slot, b) in code.iter_mut().zip(primary.bytes()) {
                *slot = b;
            }
        }
        code
    }
}

/// Prepares one customer; for many, build a [`Preparer`] once.
pub fn prepare(customer: &Customer, settings: &NormaliseSettings) -> Prepared {
    Preparer::new(settings).prepare(customer)
}

/// A phonetic code as text (`"MLR"`), empty for no code.
pub fn code_text(code: &PhoneticCode) -> &str {
    let len = code.iter().position(|&b| b == 0).unwrap_or(code.len());
    std::str::from_utf8(&code[..len]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Address, Identifier};

    #[test]
    fn a_person_with_only_a_full_name_is_split_and_normalised() {
        let customer = Customer {
            kind: PartyKind::Person,
            full_name: Some("Müller, Hans".into()),
            emails: vec!["Hans.Mueller+shop@googlemail.com".into()],
            phones: vec!["089 1234567".into(), "+49891234567".into()],
            addresses: vec![Address {
                lines: vec!["Hauptstraße 12a".into()],
                city: Some("München".into()),
                postcode: Some("80331".into()),
                country: Some("de".into()),
                ..Address::default()
            }],
            identifiers: vec![Identifier {
                scheme: "VAT".into(),
                value: "de 123".into(),
            }],
            ..Customer::default()
        };
        let p = prepare(&customer, &NormaliseSettings::default());
        assert_eq!(p.kind, PartyKind::Person);
        assert_eq!(&*p.given, "hans");
        assert_eq!(p.given_canonical(), "johannes");
        assert_eq!(p.given_initial, Some('h'));
        assert_eq!(&*p.family, "mueller");
        assert_eq!(code_text(&p.family_phonetic), "MLR");
        assert_eq!(&*p.company, "");
        assert_eq!(&*p.emails, [Box::from("hansmueller@gmail.com")]);
        assert_eq!(&*p.phones, [Box::from("+49891234567")]);
        assert_eq!((&*p.street, &*p.house_number), ("hauptstr", "12a"));
        assert_eq!((&*p.postcode, &*p.city), ("80331", "muenchen"));
        assert_eq!(p.country, Some(*b"DE"));
        assert_eq!(&*p.identifiers, [(Box::from("vat"), Box::from("DE123"))]);
    }

    #[test]
    fn an_organisation_with_only_a_full_name_gets_a_company_key() {
        let customer = Customer {
            kind: PartyKind::Organization,
            full_name: Some("MUELLER G.m.b.H.".into()),
            ..Customer::default()
        };
        let p = prepare(&customer, &NormaliseSettings::default());
        assert_eq!(p.kind, PartyKind::Organization);
        assert_eq!(&*p.company, "mueller");
        assert_eq!(&*p.family, "");
        assert_eq!(code_text(&p.company_phonetic), "MLR");
    }
}
