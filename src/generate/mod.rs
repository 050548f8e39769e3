//! A labelled customer data generator for tests and benchmarks:
//! `conflux generate customers --count N --seed S --out DIR`.
//!
//! [`generate_customers`] draws customers ([`Entity`]: people and companies) one at a time
//! from a seeded [`SplitMix64`] and writes each as one to four records spread over three
//! source systems with different CSV layouts:
//! - `crm` (`contacts`, comma-separated): given and family name split, company, e-mail,
//!   landline and mobile in national formats, street and house number split, ISO birth date;
//! - `erp` (`customers`, `;`-separated, SAP-like column names): one name field ("Family,
//!   Given" or "Given Family", or the company with a legal-form variant), street with house
//!   number, `dd.mm.yyyy` birth date, VAT id;
//! - `shop` (`accounts`): e-mail centric (always present), one international phone, country
//!   names instead of codes.
//!
//! Each record is the customer's data with realistic noise: typos and transpositions,
//! nicknames and initials, swapped given/family names, umlaut spellings, missing fields,
//! phone, e-mail and address format variations, moved addresses, legal-form variants, day
//! and month transposed. Households (same family name, address and landline; different
//! given name, birth date, e-mail and mobile) and companies sharing an office address are
//! the hard negatives; their members share a `household_id`.
//!
//! Beside the CSV files it writes `truth.csv` (`system,stream,source_id,entity_id,
//! household_id`) and a ready deployment (`config/customers.toml`, `connectors/gen_*.toml`,
//! `mappings/gen_*.toml`) that `conflux run --config DIR/config/customers.toml` ingests.
//! With [`GenerateSettings::delta`] > 0, that many extra records of already generated
//! customers go to `delta/<system>/` instead, for incremental benchmarks.
//!
//! Invariants: the output depends only on the settings (same seed, same bytes); memory does
//! not grow with `count` (records are written as they are drawn).

pub mod tables;

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::resolver::scoring::SplitMix64;
use tables::{CITIES, City, FAMILY, FAMILY_HEAD, FAMILY_TAIL, GIVEN, LEGAL_FORMS, STREETS};

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateSettings {
    /// Records in the main data set (over all systems).
    pub count: usize,
    pub seed: u64,
    /// Extra records (of customers already in the main set) written under `delta/`.
    pub delta: usize,
}

/// What was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenerateSummary {
    pub records: usize,
    pub delta_records: usize,
    pub entities: u64,
    pub households: u64,
    /// Record pairs of one customer (the pairs a perfect matcher links).
    pub true_pairs: u64,
}

impl std::fmt::Display for GenerateSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} records ({} delta) of {} customers, {} households or shared offices, {} true pairs",
            self.records, self.delta_records, self.entities, self.households, self.true_pairs
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Crm,
    Erp,
    Shop,
}

impl System {
    const ALL: [System; 3] = [System::Crm, System::Erp, System::Shop];

    fn name(self) -> &'static str {
        match self {
            System::Crm => "crm",
            System::Erp => "erp",
            System::Shop => "shop",
        }
    }

    fn stream(self) -> &'static str {
        match self {
            System::Crm => "contacts",
            System::Erp => "customers",
            System::Shop => "accounts",
        }
    }

    fn header(self) -> &'static [&'static str] {
        match self {
            System::Crm => &[
                "contact_id",
                "type",
                "first_name",
                "last_name",
                "company",
                "email",
                "phone",
                "mobile",
                "street",
                "house_no",
                "zip",
                "city",
                "country",
                "birthday",
            ],
            System::Erp => &[
                "KUNNR",
                "KTOKD",
                "NAME1",
                "STRAS",
                "PSTLZ",
                "ORT01",
                "LAND1",
                "TELF1",
                "SMTP_ADDR",
                "GBDAT",
                "STCEG",
            ],
            System::Shop => &[
                "account_no",
                "account_type",
                "customer_email",
                "first_name",
                "last_name",
                "company",
                "phone",
                "address",
                "zip",
                "city",
                "country_name",
                "date_of_birth",
            ],
        }
    }

    fn delimiter(self) -> u8 {
        match self {
            System::Erp => b';',
            _ => b',',
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Address {
    street: usize,
    street_type: usize,
    number: u32,
    suffix: Option<char>,
    city: usize,
    postcode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Phone {
    country_code: &'static str,
    /// Area code (or mobile prefix) without the trunk 0.
    area: String,
    subscriber: String,
}

/// One real customer.
#[derive(Debug, Clone)]
struct Entity {
    id: u64,
    household: Option<u64>,
    person: bool,
    given: usize,
    family: String,
    birth: (i16, i8, i8),
    company: Option<(String, usize)>,
    vat: Option<String>,
    email: String,
    other_email: Option<String>,
    mobile: Option<Phone>,
    landline: Option<Phone>,
    address: Address,
    moved_to: Option<Address>,
}

/// What household members (or companies at one address) share.
struct Shared {
    id: u64,
    family: String,
    address: Address,
    landline: Option<Phone>,
    remaining: usize,
    person: bool,
    /// Given names taken by members so far: members of a household have different names.
    given: Vec<usize>,
}

struct Writers {
    main: Vec<csv::Writer<BufWriter<File>>>,
    delta: Vec<csv::Writer<BufWriter<File>>>,
    truth: csv::Writer<BufWriter<File>>,
    counters: [u64; 3],
}

/// Generates the data set and the deployment under `out` (created if missing); see the
/// module header.
pub fn generate_customers(out: &Path, settings: &GenerateSettings) -> io::Result<GenerateSummary> {
    write_deployment(out)?;
    let open = |dir: PathBuf, system: System, file: &str| -> io::Result<_> {
        fs::create_dir_all(&dir)?;
        let mut writer = csv::WriterBuilder::new()
            .delimiter(system.delimiter())
            .from_writer(BufWriter::new(File::create(dir.join(file))?));
        writer.write_record(system.header())?;
        Ok(writer)
    };
    let mut writers = Writers {
        main: Vec::new(),
        delta: Vec::new(),
        truth: csv::Writer::from_writer(BufWriter::new(File::create(out.join("truth.csv"))?)),
        counters: [0; 3],
    };
    writers
        .truth
        .write_record(["system", "stream", "source_id", "entity_id", "household_id"])?;
    for system in System::ALL {
        let sub = Path::new(system.name());
        writers
            .main
            .push(open(out.join("data").join(sub), system, "customers.csv")?);
        if settings.delta > 0 {
            writers.delta.push(open(
                out.join("delta").join(sub),
                system,
                "customers_delta.csv",
            )?);
        }
    }

    let mut rng = SplitMix64::new(settings.seed ^ 0xc0ff_ee00_d00d_f00d);
    let mut summary = GenerateSummary::default();
    let mut shared: Option<Shared> = None;
    let mut next_household = 1u64;
    let delta_rate = settings.delta as f64 / settings.count.max(1) as f64;
    while summary.records < settings.count || summary.delta_records < settings.delta {
        summary.entities += 1;
        let entity = draw_entity(&mut rng, summary.entities, &mut shared, &mut next_household);
        let copies = match rng.unit() {
            x if x < 0.40 => 1,
            x if x < 0.75 => 2,
            x if x < 0.95 => 3,
            _ => 4,
        };
        let mut systems = System::ALL;
        for i in (1..3).rev() {
            systems.swap(i, rng.below(i + 1));
        }
        let mut written = 0u64;
        for copy in 0..copies {
            let system = if copy < 3 {
                systems[copy]
            } else {
                systems[rng.below(3)]
            };
            let main_full = summary.records >= settings.count;
            let to_delta = settings.delta > 0
                && summary.delta_records < settings.delta
                && (main_full || (copy > 0 && rng.unit() < delta_rate * 2.0));
            if main_full && !to_delta {
                break;
            }
            write_record(&mut rng, &mut writers, &entity, system, copy, to_delta)?;
            if to_delta {
                summary.delta_records += 1;
            } else {
                summary.records += 1;
            }
            written += 1;
        }
        summary.true_pairs += written * written.saturating_sub(1) / 2;
    }
    summary.households = next_household - 1;
    for mut writer in writers.main.into_iter().chain(writers.delta) {
        writer.flush()?;
    }
    writers.truth.flush()?;
    Ok(summary)
}

fn pick<'a, T>(rng: &mut SplitMix64, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len())]
}

/// An index skewed towards the start of a list of `n` (frequent names first).
fn skewed(rng: &mut SplitMix64, n: usize) -> usize {
    let u = rng.unit();
    ((u * u * n as f64) as usize).min(n - 1)
}

fn digits(rng: &mut SplitMix64, n: usize) -> String {
    (0..n)
        .map(|i| {
            let d = if i == 0 {
                1 + rng.below(9)
            } else {
                rng.below(10)
            };
            char::from(b'0' + d as u8)
        })
        .collect()
}

fn draw_address(rng: &mut SplitMix64, city: Option<usize>) -> Address {
    let city = city.unwrap_or_else(|| skewed(rng, CITIES.len()));
    let base = CITIES[city].postcode;
    Address {
        street: rng.below(STREETS.len()),
        street_type: skewed(rng, tables::STREET_TYPES.len()),
        number: 1 + rng.below(120) as u32,
        suffix: (rng.unit() < 0.08).then(|| char::from(b'a' + rng.below(3) as u8)),
        city,
        postcode: base + rng.below(60) as u32,
    }
}

fn draw_landline(rng: &mut SplitMix64, city: &City) -> Phone {
    let area = pick(rng, city.area_codes).to_string();
    let len = if area.len() <= 2 {
        7 + rng.below(2)
    } else {
        6 + rng.below(2)
    };
    Phone {
        country_code: country_code(city.country),
        area,
        subscriber: digits(rng, len),
    }
}

fn draw_mobile(rng: &mut SplitMix64) -> Phone {
    let area = pick(rng, tables::MOBILE_PREFIXES).to_string();
    let len = 7 + rng.below(2);
    Phone {
        country_code: "49",
        area,
        subscriber: digits(rng, len),
    }
}

fn country_code(country: &str) -> &'static str {
    match country {
        "AT" => "43",
        "CH" => "41",
        _ => "49",
    }
}

fn family_name(rng: &mut SplitMix64) -> String {
    if rng.unit() < 0.7 {
        FAMILY[skewed(rng, FAMILY.len())].to_string()
    } else {
        format!("{}{}", pick(rng, FAMILY_HEAD), pick(rng, FAMILY_TAIL))
    }
}

fn ascii_key(text: &str) -> String {
    text.chars()
        .flat_map(|c| match c {
            'ä' | 'Ä' => "ae".chars().collect::<Vec<_>>(),
            'ö' | 'Ö' => "oe".chars().collect(),
            'ü' | 'Ü' => "ue".chars().collect(),
            'ß' => "ss".chars().collect(),
            'é' | 'è' | 'ê' => vec!['e'],
            'á' | 'à' => vec!['a'],
            'ı' => vec!['i'],
            'ş' => vec!['s'],
            c if c.is_ascii_alphanumeric() => vec![c.to_ascii_lowercase()],
            _ => Vec::new(),
        })
        .collect()
}

/// A private address; the entity id in it keeps two people's addresses apart, as
/// mailbox providers do.
fn private_email(rng: &mut SplitMix64, id: u64, given: &str, family: &str, year: i16) -> String {
    let (g, f) = (ascii_key(given), ascii_key(family));
    let tag = format!("{id:x}");
    let local = match rng.below(5) {
        0 => format!("{g}.{f}.{tag}"),
        1 => format!("{}{f}{tag}", &g[..1]),
        2 => format!("{g}{f}{}{tag}", year % 100),
        3 => format!("{g}_{f}_{tag}"),
        _ => format!("{f}.{g}{tag}"),
    };
    format!("{local}@{}", pick(rng, tables::PROVIDERS))
}

fn draw_entity(
    rng: &mut SplitMix64,
    id: u64,
    shared: &mut Option<Shared>,
    next_household: &mut u64,
) -> Entity {
    // Continue a household or office, or maybe start one.
    let joining = shared.as_mut().filter(|s| s.remaining > 0).map(|s| {
        s.remaining -= 1;
        (s.id, s.person)
    });
    let person = match joining {
        Some((_, person)) => person,
        None => rng.unit() < 0.75,
    };
    let household = match joining {
        Some((hid, _)) => Some(hid),
        None => {
            let start = if person {
                rng.unit() < 0.15
            } else {
                rng.unit() < 0.08
            };
            start.then(|| {
                let hid = *next_household;
                *next_household += 1;
                let address = draw_address(rng, None);
                let landline = draw_landline(rng, &CITIES[address.city]);
                *shared = Some(Shared {
                    id: hid,
                    family: family_name(rng),
                    address,
                    landline: Some(landline),
                    remaining: 1 + (rng.unit() < 0.35) as usize + (rng.unit() < 0.1) as usize,
                    person,
                    given: Vec::new(),
                });
                hid
            })
        }
    };
    let mut given = skewed(rng, GIVEN.len());
    if let Some(s) = household.and(shared.as_mut()) {
        // Parents do not give two children one name, nor names one letter apart.
        let prefix = |i: usize| GIVEN[i].0.chars().take(3).collect::<String>();
        while s.given.iter().any(|&g| prefix(g) == prefix(given)) {
            given = rng.below(GIVEN.len());
        }
        s.given.push(given);
    }
    let shared_now = household.and(shared.as_ref());

    let family = match shared_now {
        Some(s) if person => s.family.clone(),
        _ => family_name(rng),
    };
    let birth = (
        1940 + rng.below(66) as i16,
        1 + rng.below(12) as i8,
        1 + rng.below(28) as i8,
    );
    let address = match shared_now {
        Some(s) => s.address,
        None => draw_address(rng, None),
    };
    let city = &CITIES[address.city];
    let landline = match shared_now {
        // Companies at one address have their own switchboards.
        Some(s) if person => s.landline.clone(),
        _ => (rng.unit() < 0.6).then(|| draw_landline(rng, city)),
    };
    let mobile = (rng.unit() < if person { 0.75 } else { 0.2 }).then(|| draw_mobile(rng));
    let moved_to = (rng.unit() < 0.08).then(|| draw_address(rng, None));

    let (company, vat, email) = if person {
        let email = private_email(rng, id, GIVEN[given].0, &family, birth.0);
        (None, None, email)
    } else {
        let base = match rng.below(4) {
            0 => format!("{} {}", family, pick(rng, tables::COMPANY_WORDS)),
            1 => format!(
                "{} {}",
                pick(rng, tables::BRANDS),
                pick(rng, tables::COMPANY_WORDS)
            ),
            2 => format!("{} & {}", family, family_name(rng)),
            _ => format!("{} {}", pick(rng, tables::BRANDS), family),
        };
        let form = skewed(rng, LEGAL_FORMS.len());
        let domain = format!("{}-{id:x}.example", ascii_key(&base));
        let local = pick(
            rng,
            &[
                "info",
                "einkauf",
                "buchhaltung",
                "kontakt",
                "office",
                "orders",
            ],
        );
        let vat = (rng.unit() < 0.5).then(|| format!("{}{}", city.country, digits(rng, 9)));
        (Some((base, form)), vat, format!("{local}@{domain}"))
    };
    let other_email = (rng.unit() < 0.25).then(|| {
        if person {
            private_email(rng, id, GIVEN[given].0, &family, birth.0)
        } else {
            format!(
                "{}.{}@{}",
                ascii_key(GIVEN[given].0),
                ascii_key(&family),
                email.split_once('@').map_or("firma.example", |(_, d)| d)
            )
        }
    });
    Entity {
        id,
        household,
        person,
        given,
        family,
        birth,
        company,
        vat,
        email,
        other_email,
        mobile,
        landline,
        address,
        moved_to,
    }
}

/// One noisy record of `entity` in `system`.
fn write_record(
    rng: &mut SplitMix64,
    writers: &mut Writers,
    entity: &Entity,
    system: System,
    copy: usize,
    delta: bool,
) -> io::Result<()> {
    let s = system as usize;
    writers.counters[s] += 1;
    let n = writers.counters[s];
    let source_id = match system {
        System::Crm => format!("C{n:07}"),
        System::Erp => format!("{:010}", 1_000_000 + n),
        System::Shop => format!("S{n:08}"),
    };
    let (given_name, _, nickname) = GIVEN[entity.given];

    // Names.
    let mut given = given_name.to_string();
    let r = rng.unit();
    if r < 0.05 {
        if let Some(nick) = nickname {
            given = nick.to_string();
        }
    } else if r < 0.10 {
        given = format!("{}.", given.chars().next().unwrap_or('X'));
    } else if r < 0.16 {
        given = typo(rng, &given);
    }
    let mut family = entity.family.clone();
    let r = rng.unit();
    if r < 0.07 {
        family = typo(rng, &family);
    } else if r < 0.22 {
        family = transliterate(&family);
    }
    if rng.unit() < 0.04 {
        family = family.to_uppercase();
    }
    let swapped = rng.unit() < 0.02;
    if swapped {
        std::mem::swap(&mut given, &mut family);
    }
    let company = entity.company.as_ref().map(|(base, form)| {
        let mut name = base.clone();
        if rng.unit() < 0.1 {
            name = name.replace(" & ", " und ");
        }
        if rng.unit() < 0.05 {
            name = typo(rng, &name);
        }
        if rng.unit() < 0.15 {
            name = transliterate(&name);
        }
        if rng.unit() > 0.12 {
            name = format!("{name} {}", pick(rng, LEGAL_FORMS[*form].1));
        }
        if rng.unit() < 0.05 {
            name = name.to_uppercase();
        }
        name
    });

    // Contacts.
    let email = {
        let address = match &entity.other_email {
            Some(other) if rng.unit() < 0.35 => other.clone(),
            _ => entity.email.clone(),
        };
        let r = rng.unit();
        if r < 0.04 {
            let (local, domain) = address.split_once('@').unwrap_or((&address, "x.example"));
            format!("{}@{domain}", typo(rng, local))
        } else if r < 0.10 {
            capitalise_email(&address)
        } else {
            address
        }
    };
    let email_missing = system != System::Shop && rng.unit() < 0.2;
    let email = if email_missing { String::new() } else { email };
    let mut phone_text = |phone: Option<&Phone>| {
        let phone = phone.filter(|_| rng.unit() < 0.8)?;
        let phone = maybe_typo_phone(rng, phone);
        Some(format_phone(rng, &phone, system))
    };
    let landline = phone_text(entity.landline.as_ref());
    let mobile = phone_text(entity.mobile.as_ref());

    // Address: moved customers have old and new addresses across systems.
    let address = match entity.moved_to {
        Some(new) if copy % 2 == 1 || rng.unit() < 0.3 => new,
        _ => entity.address,
    };
    let city = &CITIES[address.city];
    let street_name = {
        let stem = STREETS[address.street];
        let (full, abbreviations) = tables::STREET_TYPES[address.street_type];
        let kind = match rng.below(3) {
            0 => pick(rng, abbreviations).to_string(),
            _ => full.to_string(),
        };
        let mut name = format!("{stem}{kind}");
        if rng.unit() < 0.04 {
            name = typo(rng, &name);
        }
        name
    };
    let house = {
        let suffix = address.suffix.map(String::from).unwrap_or_default();
        if !suffix.is_empty() && rng.unit() < 0.3 {
            format!("{} {}", address.number, suffix)
        } else {
            format!("{}{suffix}", address.number)
        }
    };
    let house = if rng.unit() < 0.03 {
        String::new()
    } else {
        house
    };
    let mut postcode = match city.country {
        "DE" => format!("{:05}", address.postcode),
        _ => format!("{:04}", address.postcode),
    };
    if rng.unit() < 0.02 {
        postcode = typo_digits(rng, &postcode);
    }
    let city_name = match rng.below(10) {
        0 => transliterate(city.name),
        1 => city.name.to_uppercase(),
        _ => city.name.to_string(),
    };

    // Birth date (people only), with the systems' different habits.
    let missing_birth = match system {
        System::Crm => 0.25,
        System::Erp => 0.5,
        System::Shop => 0.6,
    };
    let birth = (entity.person && rng.unit() > missing_birth).then(|| {
        let (y, mut m, mut d) = entity.birth;
        let r = rng.unit();
        if r < 0.02 && d <= 12 {
            std::mem::swap(&mut m, &mut d);
        } else if r < 0.04 {
            d = if d < 28 { d + 1 } else { d - 1 };
        }
        (y, m, d)
    });

    let person_name = entity.person || rng.unit() < 0.5;
    let (given, family) = if person_name {
        (given, family)
    } else {
        (String::new(), String::new())
    };
    let company = company.unwrap_or_default();
    let writer = if delta {
        &mut writers.delta[s]
    } else {
        &mut writers.main[s]
    };
    match system {
        System::Crm => {
            let birthday = birth
                .map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}"))
                .unwrap_or_default();
            writer.write_record([
                source_id.as_str(),
                if entity.person { "P" } else { "B" },
                &given,
                &family,
                &company,
                &email,
                landline.as_deref().unwrap_or(""),
                mobile.as_deref().unwrap_or(""),
                &street_name,
                &house,
                &postcode,
                &city_name,
                city.country,
                &birthday,
            ])?;
        }
        System::Erp => {
            let name = if entity.person {
                match rng.below(3) {
                    0 => format!("{family}, {given}"),
                    _ => format!("{given} {family}"),
                }
            } else {
                company.clone()
            };
            let phone = landline.or(mobile).unwrap_or_default();
            let birthday = birth
                .map(|(y, m, d)| format!("{d:02}.{m:02}.{y:04}"))
                .unwrap_or_default();
            let vat = entity
                .vat
                .as_ref()
                .filter(|_| rng.unit() < 0.9)
                .map(|v| {
                    if rng.unit() < 0.3 {
                        format!("{} {} {}", &v[..2], &v[2..5], &v[5..])
                    } else {
                        v.clone()
                    }
                })
                .unwrap_or_default();
            writer.write_record([
                source_id.as_str(),
                if entity.person { "PERS" } else { "FIRM" },
                &name,
                format!("{street_name} {house}").trim(),
                &postcode,
                &city_name,
                city.country,
                &phone,
                &email,
                &birthday,
                &vat,
            ])?;
        }
        System::Shop => {
            let phone = mobile.or(landline).unwrap_or_default();
            let country_name = match city.country {
                "AT" => "Austria",
                "CH" => "Switzerland",
                _ => "Germany",
            };
            let birthday = birth
                .map(|(y, m, d)| format!("{d:02}/{m:02}/{y:04}"))
                .unwrap_or_default();
            let email = if email.is_empty() {
                entity.email.clone()
            } else {
                email
            };
            writer.write_record([
                source_id.as_str(),
                if company.is_empty() {
                    "private"
                } else {
                    "business"
                },
                email.as_str(),
                &given,
                &family,
                &company,
                &phone,
                format!("{street_name} {house}").trim(),
                &postcode,
                &city_name,
                country_name,
                &birthday,
            ])?;
        }
    }
    let household = entity.household.map(|h| h.to_string()).unwrap_or_default();
    writers.truth.write_record([
        system.name(),
        system.stream(),
        &source_id,
        &entity.id.to_string(),
        &household,
    ])?;
    Ok(())
}

/// One typing error: a substituted, dropped, doubled or transposed letter (not the first).
fn typo(rng: &mut SplitMix64, text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    if chars.len() < 3 {
        return text.to_string();
    }
    let i = 1 + rng.below(chars.len() - 2);
    match rng.below(4) {
        0 => {
            let c = chars[i];
            chars[i] = if c.is_alphabetic() {
                let letters = "aeinrstlouhmgdbkw";
                let pick = letters.chars().nth(rng.below(letters.len())).unwrap_or('e');
                if c.is_uppercase() {
                    pick.to_ascii_uppercase()
                } else {
                    pick
                }
            } else {
                c
            };
        }
        1 => {
            chars.remove(i);
        }
        2 => {
            let c = chars[i];
            chars.insert(i, c);
        }
        _ => chars.swap(i, i + 1),
    }
    chars.into_iter().collect()
}

fn typo_digits(rng: &mut SplitMix64, text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    if bytes.len() < 2 {
        return text.to_string();
    }
    let i = 1 + rng.below(bytes.len() - 1);
    bytes[i] = b'0' + ((bytes[i] - b'0' + 1 + rng.below(8) as u8) % 10);
    String::from_utf8(bytes).unwrap_or_else(|_| text.to_string())
}

/// "Müller" → "Mueller", "Groß" → "Gross".
fn transliterate(text: &str) -> String {
    text.replace('ä', "ae")
        .replace('ö', "oe")
        .replace('ü', "ue")
        .replace('Ä', "Ae")
        .replace('Ö', "Oe")
        .replace('Ü', "Ue")
        .replace('ß', "ss")
}

fn capitalise_email(address: &str) -> String {
    let mut out = String::with_capacity(address.len());
    let mut upper = true;
    for c in address.chars() {
        out.push(if upper { c.to_ascii_uppercase() } else { c });
        upper = c == '.' || c == '@';
    }
    out
}

fn maybe_typo_phone(rng: &mut SplitMix64, phone: &Phone) -> Phone {
    if rng.unit() < 0.02 {
        Phone {
            subscriber: typo_digits(rng, &phone.subscriber),
            ..phone.clone()
        }
    } else {
        phone.clone()
    }
}

/// The number in one of the formats people and systems write.
fn format_phone(rng: &mut SplitMix64, phone: &Phone, system: System) -> String {
    let Phone {
        country_code,
        area,
        subscriber,
    } = phone;
    let national_ok = *country_code == "49" && system != System::Shop;
    let choice = if national_ok {
        rng.below(6)
    } else {
        rng.below(3)
    };
    match choice {
        0 => format!("+{country_code}{area}{subscriber}"),
        1 => format!("+{country_code} {area} {subscriber}"),
        2 => format!("00{country_code} {area} {subscriber}"),
        3 => format!("0{area} {subscriber}"),
        4 => format!("0{area}/{subscriber}"),
        _ => {
            let (a, b) = subscriber.split_at(subscriber.len() / 2);
            format!("(0{area}) {a} {b}")
        }
    }
}

/// Writes the deployment that ingests the generated files.
fn write_deployment(out: &Path) -> io::Result<()> {
    for dir in ["config", "connectors", "mappings"] {
        fs::create_dir_all(out.join(dir))?;
    }
    let files: [(&str, &str); 7] = [
        ("config/customers.toml", CONFIG),
        ("connectors/gen_crm.toml", CRM_CONNECTOR),
        ("connectors/gen_erp.toml", ERP_CONNECTOR),
        ("connectors/gen_shop.toml", SHOP_CONNECTOR),
        ("mappings/gen_crm.contact.toml", CRM_MAPPING),
        ("mappings/gen_erp.customer.toml", ERP_MAPPING),
        ("mappings/gen_shop.account.toml", SHOP_MAPPING),
    ];
    for (path, body) in files {
        let mut file = File::create(out.join(path))?;
        file.write_all(body.as_bytes())?;
    }
    Ok(())
}

const CONFIG: &str = r#"# Generated by `conflux generate customers`: three source systems of synthetic customers.
#
#   conflux run --config config/customers.toml
#   conflux identities evaluate --truth truth.csv --config config/customers.toml

instance = "generated"

[store]
url = "sqlite://.conflux/customers.db"

[feed]
sink = "file"
path = ".conflux/feed.ndjson"

[identity]
# Household members share a landline, so a phone number is evidence, not a key.
match_on = ["email", "identifier:vat"]

[profile]
base_currency = "EUR"
source_priority = ["erp", "crm", "shop"]

[[job]]
name = "customers"
sync = ["gen_crm", "gen_erp", "gen_shop"]
"#;

const CRM_CONNECTOR: &str = r#"# CRM contacts export: comma-separated UTF-8, names split, ISO dates.
kind = "file"
system = "crm"
dir = "data/crm"
empty_values = [""]

[[stream]]
name = "contacts"
pattern = "*.csv"
format = "csv"
mapping = "gen_crm.contact"
"#;

const ERP_CONNECTOR: &str = r#"# ERP customer master (SAP-like KNA1 columns): `;`-separated, dd.mm.yyyy dates.
kind = "file"
system = "erp"
dir = "data/erp"
empty_values = [""]

[[stream]]
name = "customers"
pattern = "*.csv"
format = "csv"
delimiter = ";"
mapping = "gen_erp.customer"
"#;

const SHOP_CONNECTOR: &str = r#"# Web shop accounts: every account has an e-mail address; one international phone.
kind = "file"
system = "shop"
dir = "data/shop"
empty_values = [""]

[[stream]]
name = "accounts"
pattern = "*.csv"
format = "csv"
mapping = "gen_shop.account"
"#;

const CRM_MAPPING: &str = r#"entity = "customer"
description = "Generated CRM contacts → customer"

[fields]
source_id = "contact_id"
kind = { path = "type", transforms = [{ map = { values = { P = "person", B = "organization" } } }] }
given_name = { path = "first_name", transforms = ["trim"] }
family_name = { path = "last_name", transforms = ["trim"] }
company = { path = "company", transforms = ["trim"] }
email = { path = "email", transforms = ["trim"] }
phone = { path = "phone", transforms = ["trim"] }
phones = { path = "mobile", transforms = ["trim"] }
"address.line1" = { concat = ["street", "house_no"], separator = " ", transforms = ["trim"] }
"address.postcode" = "zip"
"address.city" = "city"
"address.country" = "country"
birth_date = { path = "birthday", transforms = [{ date = "%Y-%m-%d" }] }
"#;

const ERP_MAPPING: &str = r#"entity = "customer"
description = "Generated ERP customer master → customer"

[fields]
source_id = "KUNNR"
kind = { path = "KTOKD", transforms = [{ map = { values = { PERS = "person", FIRM = "organization" } } }] }
name = { path = "NAME1", transforms = ["trim"] }
"address.line1" = { path = "STRAS", transforms = ["trim"] }
"address.postcode" = "PSTLZ"
"address.city" = "ORT01"
"address.country" = "LAND1"
phone = { path = "TELF1", transforms = ["trim"] }
email = { path = "SMTP_ADDR", transforms = ["trim"] }
birth_date = { path = "GBDAT", transforms = [{ date = "%d.%m.%Y" }] }
"identifier.vat" = { path = "STCEG", transforms = ["trim"] }
"#;

const SHOP_MAPPING: &str = r#"entity = "customer"
description = "Generated web shop accounts → customer"

[fields]
source_id = "account_no"
kind = { path = "account_type", transforms = [{ map = { values = { private = "person", business = "organization" } } }] }
given_name = { path = "first_name", transforms = ["trim"] }
family_name = { path = "last_name", transforms = ["trim"] }
company = { path = "company", transforms = ["trim"] }
email = { path = "customer_email", transforms = ["trim"] }
phone = { path = "phone", transforms = ["trim"] }
"address.line1" = { path = "address", transforms = ["trim"] }
"address.postcode" = "zip"
"address.city" = "city"
"address.country" = { path = "country_name", transforms = [{ map = { values = { Germany = "DE", Austria = "AT", Switzerland = "CH" } } }] }
birth_date = { path = "date_of_birth", transforms = [{ date = "%d/%m/%Y" }] }
"#;
