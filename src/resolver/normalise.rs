//! Normalisation for matching: the comparison forms of names, companies, e-mails, phones,
//! postcodes, street lines and dates. Pure, no I/O.
//!
//! [`fold`] is the base of every text key: Unicode NFKC, lower case, German umlauts and ß
//! spelt out (`ä`→`ae`, `ß`→`ss`, so "Müller" and "MUELLER" agree), remaining accents
//! dropped, and every run of punctuation or white space turned into one space. The other
//! functions build on it: [`split_person_name`] gives a [`PersonName`] (given, family, the
//! nickname root of the given name from an embedded table, and the initial);
//! [`company_key`] strips legal forms ("GmbH & Co. KG", "S.A.", "有限公司", ...);
//! [`email_key`] applies the configured [`EmailRules`]; [`phone_e164`] formats with a default
//! region; [`postcode_key`] and [`split_street`] canonicalise addresses; [`parse_date`]
//! reads the usual day-first and ISO spellings.
//!
//! Invariant: every key is a pure function of its input and the settings, so two records
//! compare the same way whichever order they arrive in.

use jiff::civil::Date;
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// The comparison form of free text: NFKC, lower case, umlauts spelt out, accents dropped,
/// punctuation and white space collapsed into single spaces, trimmed.
pub fn fold(text: &str) -> String {
    fold_with(text, false)
}

/// [`fold`], but dots vanish instead of separating words, so "G.m.b.H." folds to "gmbh".
fn fold_joining_dots(text: &str) -> String {
    fold_with(text, true)
}

fn fold_with(text: &str, join_dots: bool) -> String {
    let mut out = String::with_capacity(text.len());
    // Pending separator: written only before the next kept character, so the result never
    // starts or ends with a space and never holds two in a row.
    let mut gap = false;
    let push = |out: &mut String, c: char, gap: &mut bool| {
        if *gap && !out.is_empty() {
            out.push(' ');
        }
        *gap = false;
        out.push(c);
    };
    if text.is_ascii() {
        // The common case needs no Unicode tables.
        for c in text.chars() {
            if c.is_ascii_alphanumeric() {
                push(&mut out, c.to_ascii_lowercase(), &mut gap);
            } else if !(join_dots && c == '.') {
                gap = true;
            }
        }
        return out;
    }
    for c in text.nfkc() {
        for lower in c.to_lowercase() {
            let spelt: &str = match lower {
                'ä' => "ae",
                'ö' => "oe",
                'ü' => "ue",
                'ß' => "ss",
                'æ' => "ae",
                'œ' => "oe",
                'ø' => "o",
                'ł' => "l",
                'đ' | 'ð' => "d",
                'þ' => "th",
                'ı' => "i",
                _ => "",
            };
            if !spelt.is_empty() {
                for s in spelt.chars() {
                    push(&mut out, s, &mut gap);
                }
                continue;
            }
            if lower.is_alphanumeric() {
                for d in std::iter::once(lower).nfd() {
                    if !is_combining_mark(d) {
                        push(&mut out, d, &mut gap);
                    }
                }
            } else if is_combining_mark(lower) || (join_dots && lower == '.') {
                // Combining marks left over after NFKC are accents; drop them.
            } else {
                gap = true;
            }
        }
    }
    out
}

/// A person's name in comparison form. Empty strings mean "not known".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersonName {
    /// Folded first given name; empty when only an initial is known.
    pub given: String,
    /// The nickname root of `given` ("bob" → "robert"), or `given` itself.
    pub given_canonical: String,
    pub initial: Option<char>,
    /// Folded family name, particles kept ("van beethoven").
    pub family: String,
}

const TITLES: &[&str] = &[
    "mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sir", "dame", "herr", "frau", "fr", "hr", "m",
    "mme", "mlle", "monsieur", "madame", "dipl", "ing", "mag", "jr", "sr", "ii", "iii",
];

const PARTICLES: &[&str] = &[
    "von", "van", "der", "den", "de", "del", "della", "di", "da", "du", "la", "le", "zu", "ten",
    "ter", "dos", "das", "st",
];

/// Splits structured or free-form name parts into a [`PersonName`]. `full` is used only for
/// the parts `given` and `family` do not supply; "Family, Given" order is recognised.
pub fn split_person_name(
    given: Option<&str>,
    family: Option<&str>,
    full: Option<&str>,
) -> PersonName {
    let given = given.map(fold).filter(|g| !g.is_empty());
    let family = family.map(fold).filter(|f| !f.is_empty());
    let (given, family) = match (given, family, full) {
        (Some(g), Some(f), _) => (g, f),
        (g, f, Some(full)) => {
            let (fg, ff) = split_full_name(full);
            (g.unwrap_or(fg), f.unwrap_or(ff))
        }
        (g, f, None) => (g.unwrap_or_default(), f.unwrap_or_default()),
    };
    let mut tokens = given
        .split(' ')
        .filter(|t| !t.is_empty() && !TITLES.contains(t));
    let first = tokens.next().unwrap_or("");
    let initial = first.chars().next();
    let given = if first.chars().count() == 1 {
        String::new()
    } else {
        first.to_string()
    };
    let given_canonical = nickname_root(&given).unwrap_or(&given).to_string();
    PersonName {
        given,
        given_canonical,
        initial,
        family,
    }
}

/// "Given Middle Family", "Family, Given", titles dropped, particles kept with the family.
fn split_full_name(full: &str) -> (String, String) {
    if let Some((family, given)) = full.split_once(',') {
        return (fold(given), fold(family));
    }
    let folded = fold(full);
    let tokens: Vec<&str> = folded
        .split(' ')
        .filter(|t| !t.is_empty() && !TITLES.contains(t))
        .collect();
    match tokens.len() {
        0 => (String::new(), String::new()),
        1 => (String::new(), tokens[0].to_string()),
        n => {
            let mut start = n - 1;
            while start > 1 && PARTICLES.contains(&tokens[start - 1]) {
                start -= 1;
            }
            (tokens[0].to_string(), tokens[start..].join(" "))
        }
    }
}

/// Nicknames and spelling variants → one root, English, German and French. Sorted by
/// nickname so lookup is a binary search.
const NICKNAMES: &[(&str, &str)] = &[
    ("abby", "abigail"),
    ("al", "albert"),
    ("alex", "alexander"),
    ("alexandre", "alexander"),
    ("andi", "andreas"),
    ("andy", "andrew"),
    ("anne", "anna"),
    ("annie", "anna"),
    ("basti", "sebastian"),
    ("becky", "rebecca"),
    ("ben", "benjamin"),
    ("bernd", "bernhard"),
    ("bert", "albert"),
    ("beth", "elizabeth"),
    ("betty", "elizabeth"),
    ("bill", "william"),
    ("billy", "william"),
    ("bob", "robert"),
    ("bobby", "robert"),
    ("catherine", "katherine"),
    ("cathy", "katherine"),
    ("charlie", "charles"),
    ("chris", "christopher"),
    ("chuck", "charles"),
    ("dan", "daniel"),
    ("danny", "daniel"),
    ("dave", "david"),
    ("dick", "richard"),
    ("don", "donald"),
    ("ed", "edward"),
    ("eddie", "edward"),
    ("elisabeth", "elizabeth"),
    ("ellie", "eleanor"),
    ("flo", "florian"),
    ("frank", "francis"),
    ("franz", "francis"),
    ("fred", "frederick"),
    ("freddy", "frederick"),
    ("friedrich", "frederick"),
    ("fritz", "frederick"),
    ("gabi", "gabriele"),
    ("greg", "gregory"),
    ("hank", "henry"),
    ("hans", "johannes"),
    ("hansi", "johannes"),
    ("harry", "henry"),
    ("heinz", "heinrich"),
    ("jack", "john"),
    ("jake", "jacob"),
    ("jan", "johannes"),
    ("jean", "john"),
    ("jeff", "jeffrey"),
    ("jenny", "jennifer"),
    ("jim", "james"),
    ("jimmy", "james"),
    ("joe", "joseph"),
    ("joey", "joseph"),
    ("johann", "johannes"),
    ("johnny", "john"),
    ("jojo", "joseph"),
    ("jon", "john"),
    ("jonathan", "john"),
    ("josef", "joseph"),
    ("jupp", "joseph"),
    ("kate", "katherine"),
    ("katharina", "katherine"),
    ("kathi", "katherine"),
    ("kathrin", "katherine"),
    ("kathryn", "katherine"),
    ("kathy", "katherine"),
    ("katie", "katherine"),
    ("katrin", "katherine"),
    ("ken", "kenneth"),
    ("kenny", "kenneth"),
    ("larry", "lawrence"),
    ("leni", "helene"),
    ("lenny", "leonard"),
    ("lisa", "elizabeth"),
    ("liz", "elizabeth"),
    ("lou", "louis"),
    ("louise", "louis"),
    ("ludwig", "louis"),
    ("maggie", "margaret"),
    ("manu", "emmanuel"),
    ("margarethe", "margaret"),
    ("marianne", "maria"),
    ("marie", "maria"),
    ("matt", "matthew"),
    ("matthias", "matthew"),
    ("max", "maximilian"),
    ("meg", "margaret"),
    ("michel", "michael"),
    ("mick", "michael"),
    ("mike", "michael"),
    ("molly", "mary"),
    ("nate", "nathaniel"),
    ("nick", "nicholas"),
    ("nico", "nicholas"),
    ("nicolas", "nicholas"),
    ("niklas", "nicholas"),
    ("pat", "patrick"),
    ("patty", "patricia"),
    ("peggy", "margaret"),
    ("pete", "peter"),
    ("phil", "philip"),
    ("philipp", "philip"),
    ("philippe", "philip"),
    ("pierre", "peter"),
    ("polly", "mary"),
    ("resi", "theresa"),
    ("rich", "richard"),
    ("rick", "richard"),
    ("rob", "robert"),
    ("robbie", "robert"),
    ("ron", "ronald"),
    ("sam", "samuel"),
    ("sandy", "alexandra"),
    ("sasha", "alexander"),
    ("seb", "sebastian"),
    ("sebastien", "sebastian"),
    ("sepp", "joseph"),
    ("stefan", "stephen"),
    ("stefanie", "stephanie"),
    ("steffi", "stephanie"),
    ("steve", "stephen"),
    ("steven", "stephen"),
    ("sue", "susan"),
    ("susanne", "susan"),
    ("suzy", "susan"),
    ("ted", "edward"),
    ("teddy", "edward"),
    ("theresia", "theresa"),
    ("tom", "thomas"),
    ("tommy", "thomas"),
    ("toni", "anton"),
    ("tony", "anthony"),
    ("uli", "ulrich"),
    ("will", "william"),
    ("willi", "wilhelm"),
    ("willy", "william"),
    ("wolfi", "wolfgang"),
];

/// The root of a folded given name in the nickname table, if it has one.
pub fn nickname_root(given: &str) -> Option<&'static str> {
    NICKNAMES
        .binary_search_by(|(nick, _)| (*nick).cmp(given))
        .ok()
        .map(|i| NICKNAMES[i].1)
}

/// `folded` with the `e` of spelt-out umlauts removed ("mueller" → "muller"), for comparing
/// with sources that dropped the dots instead of spelling them out.
pub fn without_umlaut_e(folded: &str) -> impl Iterator<Item = char> + '_ {
    let mut previous = ' ';
    folded.chars().filter(move |&c| {
        let keep = !(c == 'e' && matches!(previous, 'a' | 'o' | 'u'));
        previous = c;
        keep
    })
}

/// Legal-form words, compared after [`fold_joining_dots`] (so "S.A." is "sa").
const LEGAL_FORMS: &[&str] = &[
    "ab",
    "ag",
    "aps",
    "as",
    "asa",
    "bv",
    "bvba",
    "co",
    "company",
    "corp",
    "corporation",
    "cv",
    "eg",
    "ek",
    "ev",
    "gbr",
    "gmbh",
    "gk",
    "inc",
    "incorporated",
    "kft",
    "kg",
    "kgaa",
    "kk",
    "limited",
    "llc",
    "llp",
    "lp",
    "ltd",
    "mbh",
    "nv",
    "oao",
    "ohg",
    "ooo",
    "oy",
    "oyj",
    "plc",
    "pte",
    "pty",
    "pvt",
    "sa",
    "sarl",
    "sas",
    "sasu",
    "se",
    "sl",
    "snc",
    "spa",
    "sprl",
    "sro",
    "srl",
    "ug",
    "zoo",
];

/// Legal forms written without spaces in CJK names, removed as substrings.
const CJK_LEGAL_FORMS: &[&str] = &[
    "股份有限公司",
    "有限责任公司",
    "有限責任公司",
    "有限公司",
    "株式会社",
    "有限会社",
    "合同会社",
    "(株)",
    "(有)",
    "주식회사",
];

/// A company name without legal forms and punctuation: "Müller GmbH & Co. KG" and
/// "MUELLER G.m.b.H." both give "mueller". When nothing but legal forms remains, the folded
/// name itself is the key (a company called "AG" is still named).
pub fn company_key(name: &str) -> String {
    let mut text = name.nfkc().collect::<String>();
    for form in CJK_LEGAL_FORMS {
        if text.contains(form) {
            text = text.replace(form, " ");
        }
    }
    let folded = fold_joining_dots(&text.replace(['&', '+'], " and "));
    let mut key = String::with_capacity(folded.len());
    let mut tokens = folded.split(' ').peekable();
    // "sp. z o.o." (Polish) folds to "sp z oo": the leading pair is a legal form only here.
    while let Some(token) = tokens.next() {
        let legal = LEGAL_FORMS.contains(&token)
            || (token == "sp" && tokens.peek() == Some(&"z"))
            || (token == "z" && tokens.peek() == Some(&"oo"))
            || token == "oo";
        if legal {
            continue;
        }
        let token = match token {
            "und" | "et" | "y" => "and",
            t => t,
        };
        if !key.is_empty() {
            key.push(' ');
        }
        key.push_str(token);
    }
    let key = key.trim_end_matches(" and").to_string();
    if key.is_empty() || key == "and" {
        folded
    } else {
        key
    }
}

/// Provider-specific e-mail rules. Addresses are lower-cased always; on a listed provider
/// `+tags` are dropped, dots in the local part optionally too, and alias domains map to the
/// provider's main domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailRules {
    /// Drop `+tag` on every domain, not only on the listed providers.
    #[serde(default)]
    pub strip_plus_tags_everywhere: bool,
    pub providers: Vec<EmailProvider>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailProvider {
    /// The first domain is the canonical one; the others are its aliases.
    pub domains: Vec<String>,
    #[serde(default)]
    pub ignore_dots: bool,
    #[serde(default = "yes")]
    pub strip_plus_tags: bool,
}

fn yes() -> bool {
    true
}

impl Default for EmailRules {
    fn default() -> Self {
        let provider = |domains: &[&str], ignore_dots: bool| EmailProvider {
            domains: domains.iter().map(|d| d.to_string()).collect(),
            ignore_dots,
            strip_plus_tags: true,
        };
        EmailRules {
            strip_plus_tags_everywhere: false,
            providers: vec![
                provider(&["gmail.com", "googlemail.com"], true),
                provider(&["outlook.com", "hotmail.com", "live.com"], false),
                provider(&["icloud.com", "me.com", "mac.com"], false),
                provider(&["fastmail.com"], false),
                provider(&["protonmail.com", "proton.me"], false),
                provider(&["gmx.de", "gmx.net"], false),
            ],
        }
    }
}

/// The comparison form of an e-mail address under `rules`, `None` when it is no address.
pub fn email_key(email: &str, rules: &EmailRules) -> Option<String> {
    let email = super::normalise_email(email)?;
    let (local, domain) = email.split_once('@')?;
    let provider = rules
        .providers
        .iter()
        .find(|p| p.domains.iter().any(|d| d == domain));
    let strip_plus =
        rules.strip_plus_tags_everywhere || provider.is_some_and(|p| p.strip_plus_tags);
    let mut local = local;
    if strip_plus {
        local = local.split('+').next().unwrap_or(local);
    }
    let local: String = match provider {
        Some(p) if p.ignore_dots => local.chars().filter(|&c| c != '.').collect(),
        _ => local.to_string(),
    };
    let domain = provider
        .and_then(|p| p.domains.first())
        .map_or(domain, String::as_str);
    (!local.is_empty()).then(|| format!("{local}@{domain}"))
}

/// A phone number in E.164 (`+4989123456`), read with `region` when it carries no country
/// code. Numbers already in E.164 skip the parser (it is the expensive part of preparing a
/// record); numbers the parser rejects fall back to their digits, so they still compare.
pub fn phone_e164(raw: &str, region: phonenumber::country::Id) -> Option<String> {
    let trimmed = raw.trim();
    if let Some(rest) = trimmed.strip_prefix('+')
        && (8..=15).contains(&rest.len())
        && rest.bytes().all(|b| b.is_ascii_digit())
    {
        return Some(trimmed.to_string());
    }
    match phonenumber::parse(Some(region), trimmed) {
        Ok(number) if phonenumber::is_valid(&number) => {
            Some(number.format().mode(phonenumber::Mode::E164).to_string())
        }
        _ => super::normalise_phone(trimmed),
    }
}

/// A postcode in its national canonical form: GB/UK upper case with one space before the
/// inward code, NL "1234 AB", US the 5-digit zip, DE/FR/IT/ES 5 digits (leading zero
/// restored), AT/CH/BE/DK/NO 4 digits; elsewhere upper-case letters and digits only.
pub fn postcode_key(raw: &str, country: Option<&str>) -> String {
    let compact: String = raw
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_uppercase)
        .collect();
    let digits: String = compact.chars().filter(char::is_ascii_digit).collect();
    let pad = |width: usize| {
        if digits.len() <= width && digits.len() + 1 >= width && !digits.is_empty() {
            format!("{digits:0>width$}")
        } else {
            compact.clone()
        }
    };
    match country.map(|c| c.trim().to_ascii_uppercase()).as_deref() {
        Some("GB" | "UK") if compact.len() > 3 => {
            let (outward, inward) = compact.split_at(compact.len() - 3);
            format!("{outward} {inward}")
        }
        Some("NL") if compact.len() == 6 => {
            let (number, letters) = compact.split_at(4);
            format!("{number} {letters}")
        }
        Some("US") if digits.len() >= 5 => digits[..5].to_string(),
        Some("US") => pad(5),
        Some("DE" | "FR" | "IT" | "ES") => pad(5),
        Some("AT" | "CH" | "BE" | "DK" | "NO") => pad(4),
        _ => compact,
    }
}

/// Street-type words and their canonical abbreviation.
const STREET_TYPES: &[(&str, &str)] = &[
    ("allee", "allee"),
    ("av", "ave"),
    ("ave", "ave"),
    ("avenue", "ave"),
    ("blvd", "blvd"),
    ("boulevard", "blvd"),
    ("cl", "cl"),
    ("close", "cl"),
    ("court", "ct"),
    ("cres", "cres"),
    ("crescent", "cres"),
    ("ct", "ct"),
    ("dr", "dr"),
    ("drive", "dr"),
    ("gasse", "g"),
    ("highway", "hwy"),
    ("hwy", "hwy"),
    ("lane", "ln"),
    ("ln", "ln"),
    ("pl", "pl"),
    ("place", "pl"),
    ("platz", "pl"),
    ("rd", "rd"),
    ("road", "rd"),
    ("sq", "sq"),
    ("square", "sq"),
    ("st", "st"),
    ("str", "str"),
    ("strasse", "str"),
    ("street", "st"),
    ("ter", "ter"),
    ("terrace", "ter"),
    ("weg", "weg"),
];

/// A street line split into the canonical street name and the house number:
/// "Hauptstraße 12a" and "Hauptstr. 12 A" both give ("hauptstr", "12a"); "12 Main Street"
/// gives ("main st", "12"). The house number is the first token holding a digit, with a
/// following single letter joined to it.
pub fn split_street(line: &str) -> (String, String) {
    let folded = fold(line);
    let tokens: Vec<&str> = folded.split(' ').filter(|t| !t.is_empty()).collect();
    let mut number = String::new();
    let mut street = String::new();
    let mut i = 0;
    while i < tokens.len() {
        let token = tokens[i];
        if number.is_empty() && token.bytes().any(|b| b.is_ascii_digit()) {
            number.push_str(token);
            if let Some(next) = tokens.get(i + 1)
                && next.len() == 1
                && next.bytes().all(|b| b.is_ascii_alphabetic())
            {
                number.push_str(next);
                i += 1;
            }
        } else if !token.bytes().any(|b| b.is_ascii_digit()) {
            let canonical = street_type(token);
            if !street.is_empty() {
                street.push(' ');
            }
            street.push_str(&canonical);
        }
        i += 1;
    }
    (street, number)
}

/// One street token in canonical form; German compounds ("hauptstrasse") keep their stem.
fn street_type(token: &str) -> String {
    if let Ok(i) = STREET_TYPES.binary_search_by(|(word, _)| (*word).cmp(token)) {
        return STREET_TYPES[i].1.to_string();
    }
    for (suffix, short) in [
        ("strasse", "str"),
        ("str", "str"),
        ("gasse", "g"),
        ("platz", "pl"),
    ] {
        if let Some(stem) = token.strip_suffix(suffix)
            && stem.len() >= 2
        {
            return format!("{stem}{short}");
        }
    }
    token.to_string()
}

/// A date in ISO (`2024-03-01`), compact (`20240301`) or day-first (`01.03.2024`,
/// `1/3/2024`) form; a first part above 12 in a slash date is read month-first when the
/// second part is above 12. `None` for anything else, including the SAP "no date" sentinels.
pub fn parse_date(text: &str) -> Option<Date> {
    let text = text.trim();
    let parts: Vec<&str> = text
        .split(['-', '.', '/', ' '])
        .filter(|p| !p.is_empty())
        .collect();
    let num = |s: &str| s.parse::<i16>().ok();
    let (year, month, day) = match parts.as_slice() {
        [compact] if compact.len() == 8 => (
            num(&compact[..4])?,
            num(&compact[4..6])?,
            num(&compact[6..])?,
        ),
        [y, m, d] if y.len() == 4 => (num(y)?, num(m)?, num(d)?),
        [a, b, y] if y.len() == 4 => {
            let (a, b) = (num(a)?, num(b)?);
            if b > 12 && a <= 12 {
                (num(y)?, a, b)
            } else {
                (num(y)?, b, a)
            }
        }
        _ => return None,
    };
    if year <= 1 || year >= 9999 {
        return None;
    }
    Date::new(year, month as i8, day as i8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_table() {
        for (input, expected) in [
            ("Müller", "mueller"),
            ("MUELLER", "mueller"),
            ("Straße", "strasse"),
            ("  José  García-Núñez ", "jose garcia nunez"),
            ("Ｆｕｌｌｗｉｄｔｈ", "fullwidth"),
            ("Søren Ærø", "soren aero"),
            ("O'Brien", "o brien"),
            ("Łódź", "lodz"),
            ("", ""),
        ] {
            assert_eq!(fold(input), expected, "fold({input:?})");
        }
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn person_name_table() {
        let cases: &[(
            Option<&str>,
            Option<&str>,
            Option<&str>,
            &str,
            &str,
            &str,
            char,
        )] = &[
            (
                Some("Bob"),
                Some("Smith"),
                None,
                "bob",
                "robert",
                "smith",
                'b',
            ),
            (Some("J."), Some("Müller"), None, "", "", "mueller", 'j'),
            (
                None,
                None,
                Some("Müller, Hans"),
                "hans",
                "johannes",
                "mueller",
                'h',
            ),
            (
                None,
                None,
                Some("Dr. Katherine M. Doe"),
                "katherine",
                "katherine",
                "doe",
                'k',
            ),
            (
                None,
                None,
                Some("Kate Doe"),
                "kate",
                "katherine",
                "doe",
                'k',
            ),
            (
                None,
                None,
                Some("Ludwig van Beethoven"),
                "ludwig",
                "louis",
                "van beethoven",
                'l',
            ),
            (
                None,
                None,
                Some("Bill Gates"),
                "bill",
                "william",
                "gates",
                'b',
            ),
            (
                Some("Hans-Peter"),
                None,
                Some("Hans-Peter Schulz"),
                "hans",
                "johannes",
                "schulz",
                'h',
            ),
            (
                None,
                None,
                Some("Jean Dupont"),
                "jean",
                "john",
                "dupont",
                'j',
            ),
        ];
        for &(given, family, full, g, canonical, f, initial) in cases {
            let name = split_person_name(given, family, full);
            assert_eq!(name.given, g, "{given:?} {family:?} {full:?}");
            assert_eq!(name.given_canonical, canonical, "{given:?} {full:?}");
            assert_eq!(name.family, f, "{family:?} {full:?}");
            assert_eq!(name.initial, Some(initial), "{given:?} {full:?}");
        }
        assert_eq!(split_person_name(None, None, None), PersonName::default());
    }

    #[test]
    fn umlaut_e_is_dropped_for_dotless_spellings() {
        let strip = |s: &str| without_umlaut_e(s).collect::<String>();
        assert_eq!(strip("mueller"), "muller");
        assert_eq!(strip(&fold("Müller")), strip(&fold("Muller")));
        assert_eq!(strip("schroeder"), "schroder");
    }

    #[test]
    fn nickname_table_is_sorted_for_binary_search() {
        assert!(NICKNAMES.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(STREET_TYPES.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(nickname_root("bill"), Some("william"));
        assert_eq!(nickname_root("zebediah"), None);
    }

    #[test]
    fn company_key_table() {
        for (input, expected) in [
            ("Müller GmbH", "mueller"),
            ("MUELLER G.m.b.H.", "mueller"),
            ("Müller GmbH & Co. KG", "mueller"),
            ("Siemens AG", "siemens"),
            ("Acme Ltd", "acme"),
            ("ACME Limited", "acme"),
            ("Acme, Inc.", "acme"),
            ("Acme Corp.", "acme"),
            ("Acme LLC", "acme"),
            ("Renault S.A.", "renault"),
            ("Renault SA", "renault"),
            ("Ferrari S.r.l.", "ferrari"),
            ("Philips B.V.", "philips"),
            ("Philips N.V.", "philips"),
            ("Danone SAS", "danone"),
            ("Boulangerie Paul SARL", "boulangerie paul"),
            ("Nokia Oyj", "nokia"),
            ("Volvo AB", "volvo"),
            ("Tesco plc", "tesco"),
            ("Smith & Sons Ltd", "smith and sons"),
            ("Smith and Sons", "smith and sons"),
            ("华为技术有限公司", "华为技术"),
            ("トヨタ自動車株式会社", "トヨタ自動車"),
            ("Orlen Sp. z o.o.", "orlen"),
            ("AG", "ag"),
        ] {
            assert_eq!(company_key(input), expected, "company_key({input:?})");
        }
    }

    #[test]
    fn email_rules() {
        let rules = EmailRules::default();
        for (input, expected) in [
            ("Anna.Berg+shop@GoogleMail.com", Some("annaberg@gmail.com")),
            ("a.berg+x@outlook.com", Some("a.berg@outlook.com")),
            ("a.berg+x@example.com", Some("a.berg+x@example.com")),
            ("not an address", None),
        ] {
            assert_eq!(email_key(input, &rules).as_deref(), expected, "{input}");
        }
        let everywhere = EmailRules {
            strip_plus_tags_everywhere: true,
            ..EmailRules::default()
        };
        assert_eq!(
            email_key("a.berg+x@example.com", &everywhere).as_deref(),
            Some("a.berg@example.com")
        );
    }

    #[test]
    fn phone_table() {
        use phonenumber::country::Id;
        for (input, region, expected) in [
            ("089 1234567", Id::DE, "+49891234567"),
            ("+49 (0)89 1234-567", Id::DE, "+49891234567"),
            ("0044 20 7946 0958", Id::DE, "+442079460958"),
            ("020 7946 0958", Id::GB, "+442079460958"),
            ("(415) 555-2671", Id::US, "+14155552671"),
            ("06 12 34 56 78", Id::FR, "+33612345678"),
            ("+31 20 123 4567", Id::NL, "+31201234567"),
            ("+14155552671", Id::DE, "+14155552671"),
        ] {
            assert_eq!(
                phone_e164(input, region).as_deref(),
                Some(expected),
                "{input} in {region:?}"
            );
        }
        assert_eq!(phone_e164("12", Id::DE), None);
    }

    #[test]
    fn postcode_table() {
        for (input, country, expected) in [
            ("sw1a1aa", Some("GB"), "SW1A 1AA"),
            ("SW1A  1AA", Some("GB"), "SW1A 1AA"),
            ("1234ab", Some("NL"), "1234 AB"),
            ("1234 AB", Some("NL"), "1234 AB"),
            ("94105-1234", Some("US"), "94105"),
            ("1067", Some("DE"), "01067"),
            ("D-80331", Some("DE"), "80331"),
            ("8001", Some("CH"), "8001"),
            ("a1b 2c3", Some("CA"), "A1B2C3"),
            ("80331", None, "80331"),
        ] {
            assert_eq!(
                postcode_key(input, country),
                expected,
                "{input} {country:?}"
            );
        }
    }

    #[test]
    fn street_table() {
        for (input, street, number) in [
            ("Hauptstraße 12a", "hauptstr", "12a"),
            ("Hauptstr. 12 A", "hauptstr", "12a"),
            ("Hauptstrasse 12a", "hauptstr", "12a"),
            ("Bahnhof Straße 3", "bahnhof str", "3"),
            ("12 Main Street", "main st", "12"),
            ("12 Main St.", "main st", "12"),
            ("221B Baker Street", "baker st", "221b"),
            ("5th Avenue", "ave", "5th"),
            ("1600 Pennsylvania Ave NW", "pennsylvania ave nw", "1600"),
            ("Rue de la Paix 7", "rue de la paix", "7"),
        ] {
            assert_eq!(
                split_street(input),
                (street.to_string(), number.to_string()),
                "{input}"
            );
        }
    }

    #[test]
    fn date_table() {
        let d = |y, m, day| Some(Date::new(y, m, day).unwrap());
        assert_eq!(parse_date("2024-03-01"), d(2024, 3, 1));
        assert_eq!(parse_date("20240301"), d(2024, 3, 1));
        assert_eq!(parse_date("01.03.2024"), d(2024, 3, 1));
        assert_eq!(parse_date("1/3/2024"), d(2024, 3, 1));
        assert_eq!(parse_date("3/25/2024"), d(2024, 3, 25));
        assert_eq!(parse_date("0001-01-01"), None);
        assert_eq!(parse_date("00000000"), None);
        assert_eq!(parse_date("yesterday"), None);
    }
}
