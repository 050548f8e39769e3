//! Coercion of source values (JSON) into target types: [`text`], [`integer`], [`decimal`],
//! [`boolean`], [`date`] and [`datetime`], plus the [`DateFormat`] that steers date parsing.
//!
//! Every function is total over JSON: it returns the typed value, `Ok(None)` for a date
//! sentinel (`00000000`, `0001-01-01`, `9999-12-31` mean "no date" in ERP systems), or an
//! error message of the form `not a decimal: "12,5"` that the caller prefixes with the field
//! and path. Decimals never pass through `f64`: a JSON number is parsed from its shortest
//! textual form, so `0.1` stays exactly `0.1`. Instants are UTC; naive date-times are read as
//! UTC.

use std::str::FromStr;

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use rust_decimal::Decimal;
use serde_json::Value;

/// How a date or date-time string is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DateFormat {
    /// Any of the forms below, recognised by shape.
    Auto,
    /// `2024-05-01`, `2024-05-01T10:20:30Z`, `2024-05-01T10:20:30+02:00`, naive
    /// `2024-05-01T10:20:30`.
    Iso,
    /// SAP / Microsoft JSON: `/Date(1714521600000)/`, `/Date(1714521600000+0000)/`.
    SapJson,
    /// `20240501`, or `20240501102030` for a date-time.
    Yyyymmdd,
    /// Odoo's naive UTC `2024-05-01 10:20:30` (or a plain `2024-05-01`).
    Odoo,
    /// A strptime format, e.g. `%d.%m.%Y`.
    Strptime(String),
}

impl DateFormat {
    /// A named format or a strptime format (anything holding a `%` directive).
    pub fn parse(name: &str) -> Result<DateFormat, String> {
        Ok(match name {
            "iso" => DateFormat::Iso,
            "sap_json" => DateFormat::SapJson,
            "yyyymmdd" => DateFormat::Yyyymmdd,
            "odoo" => DateFormat::Odoo,
            other if other.contains('%') => {
                // Formatting a zoned value exercises every directive; an unknown one fails here
                // rather than on the first record.
                let probe = Zoned::new(Timestamp::UNIX_EPOCH, TimeZone::UTC);
                jiff::fmt::strtime::format(other, &probe)
                    .map_err(|e| format!("invalid date format {other:?}: {e}"))?;
                DateFormat::Strptime(other.to_owned())
            }
            other => {
                return Err(format!(
                    "unknown date format {other:?} (expected iso, sap_json, yyyymmdd, odoo or a \
                     strptime format such as \"%d.%m.%Y\")"
                ));
            }
        })
    }

    fn describe(&self) -> String {
        match self {
            DateFormat::Auto => String::new(),
            DateFormat::Iso => " in format \"iso\"".to_owned(),
            DateFormat::SapJson => " in format \"sap_json\"".to_owned(),
            DateFormat::Yyyymmdd => " in format \"yyyymmdd\"".to_owned(),
            DateFormat::Odoo => " in format \"odoo\"".to_owned(),
            DateFormat::Strptime(f) => format!(" in format {f:?}"),
        }
    }
}

/// A value shown in an error message: JSON, so strings are quoted and numbers are not;
/// long values are cut.
pub fn show(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 80 {
        let cut: String = text.chars().take(77).collect();
        format!("{cut}...")
    } else {
        text
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A scalar as text: strings as they are, numbers and booleans rendered.
pub fn text(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("not a string: {} {}", kind_of(other), show(other))),
    }
}

/// SAP writes negative numbers with a trailing minus (`10.500-`).
fn split_trailing_minus(s: &str) -> (bool, &str) {
    match s.strip_suffix('-') {
        Some(body) if !body.is_empty() && !body.starts_with(['-', '+']) => (true, body.trim_end()),
        _ => (false, s),
    }
}

pub fn integer(value: &Value) -> Result<i64, String> {
    let fail = || format!("not an integer: {}", show(value));
    match value {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Ok(i);
            }
            match n.as_f64() {
                // Exact: an integral f64 inside the i64 range converts without loss.
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
                _ => Err(fail()),
            }
        }
        Value::String(s) => {
            let (negative, body) = split_trailing_minus(s.trim());
            let parsed: i64 = body.parse().map_err(|_| fail())?;
            Ok(if negative { -parsed } else { parsed })
        }
        _ => Err(fail()),
    }
}

fn parse_decimal_text(s: &str) -> Option<Decimal> {
    // rust_decimal accepts `_` and we refuse to guess thousands separators.
    if s.is_empty() || s.contains([',', '_', ' ']) {
        return None;
    }
    if s.contains(['e', 'E']) {
        Decimal::from_scientific(s).ok()
    } else {
        Decimal::from_str(s).ok()
    }
}

pub fn decimal(value: &Value) -> Result<Decimal, String> {
    let fail = || format!("not a decimal: {}", show(value));
    match value {
        // The shortest round-trip text of a float is what the source system wrote.
        Value::Number(n) => parse_decimal_text(&n.to_string()).ok_or_else(fail),
        Value::String(s) => {
            let (negative, body) = split_trailing_minus(s.trim());
            let parsed = parse_decimal_text(body).ok_or_else(fail)?;
            Ok(if negative { -parsed } else { parsed })
        }
        _ => Err(fail()),
    }
}

pub fn boolean(value: &Value) -> Result<bool, String> {
    let fail = || format!("not a boolean: {}", show(value));
    match value {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) => match n.as_i64() {
            Some(1) => Ok(true),
            Some(0) => Ok(false),
            _ => Err(fail()),
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "x" | "1" | "yes" => Ok(true),
            // SAP flags are "X" or blank.
            "false" | "" | "0" | "no" => Ok(false),
            _ => Err(fail()),
        },
        _ => Err(fail()),
    }
}

/// What a date/time string turned out to be.
enum Parsed {
    Date(Date),
    /// No offset: read as UTC for instants.
    Naive(DateTime),
    /// An instant, with the civil date-time as written (its date is what `date` takes).
    Instant(DateTime, Timestamp),
}

const SENTINELS: [&str; 7] = [
    "00000000",
    "0000-00-00",
    "0001-01-01",
    "00010101",
    "9999-12-31",
    "99991231",
    "00000000000000",
];

fn is_sentinel_text(s: &str) -> bool {
    SENTINELS.iter().any(|p| {
        s.strip_prefix(p).is_some_and(|rest| {
            rest.is_empty() || rest.starts_with(['T', ' ']) || rest.bytes().all(|b| b == b'0')
        })
    })
}

fn is_sentinel_date(d: Date) -> bool {
    (d.year() == 9999 && d.month() == 12 && d.day() == 31)
        || (d.year() == 1 && d.month() == 1 && d.day() == 1)
}

/// 9999-01-01T00:00:00Z: SAP's "no end date" instants lie beyond this, and past the range
/// of `jiff::Timestamp`, so they are read as the sentinel they are.
const FAR_FUTURE_MS: i64 = 253_370_764_800_000;

fn sap_json(s: &str) -> Option<Result<Option<Timestamp>, ()>> {
    let inner = s.strip_prefix("/Date(")?.strip_suffix(")/")?;
    // The milliseconds are UTC; a trailing `+hhmm` only says which zone the writer was in.
    let digits_end = inner
        .char_indices()
        .skip(1)
        .find(|(_, c)| *c == '+' || *c == '-')
        .map_or(inner.len(), |(i, _)| i);
    let (ms, offset) = inner.split_at(digits_end);
    let valid_offset =
        offset.is_empty() || (offset.len() == 5 && offset[1..].bytes().all(|b| b.is_ascii_digit()));
    let Some(ms) = ms.parse::<i64>().ok().filter(|_| valid_offset) else {
        return Some(Err(()));
    };
    if ms >= FAR_FUTURE_MS {
        return Some(Ok(None));
    }
    Some(Timestamp::from_millisecond(ms).map(Some).map_err(|_| ()))
}

fn all_digits(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit())
}

fn parse_yyyymmdd(s: &str) -> Option<Parsed> {
    let num = |r: std::ops::Range<usize>| s[r].parse::<i16>().ok();
    if all_digits(s, 8) {
        let date = Date::new(num(0..4)?, num(4..6)? as i8, num(6..8)? as i8).ok()?;
        return Some(Parsed::Date(date));
    }
    if all_digits(s, 14) {
        let date = Date::new(num(0..4)?, num(4..6)? as i8, num(6..8)? as i8).ok()?;
        let dt = DateTime::new(
            date.year(),
            date.month(),
            date.day(),
            num(8..10)? as i8,
            num(10..12)? as i8,
            num(12..14)? as i8,
            0,
        )
        .ok()?;
        return Some(Parsed::Naive(dt));
    }
    None
}

fn parse_iso(s: &str, odoo_only: bool) -> Option<Parsed> {
    if s.len() == 10 {
        return Date::from_str(s).ok().map(Parsed::Date);
    }
    let separator = s.as_bytes().get(10).copied()?;
    if odoo_only {
        return (separator == b' ')
            .then(|| DateTime::from_str(s).ok().map(Parsed::Naive))
            .flatten();
    }
    if !matches!(separator, b'T' | b't' | b' ') {
        return None;
    }
    if let Ok(ts) = Timestamp::from_str(s) {
        let civil = DateTime::from_str(s).unwrap_or_else(|_| ts.to_zoned(TimeZone::UTC).datetime());
        return Some(Parsed::Instant(civil, ts));
    }
    DateTime::from_str(s).ok().map(Parsed::Naive)
}

fn parse_strptime(format: &str, s: &str) -> Option<Parsed> {
    let tm = jiff::fmt::strtime::parse(format, s).ok()?;
    if tm.offset().is_some() {
        let ts = tm.to_timestamp().ok()?;
        let civil = tm.to_datetime().ok()?;
        return Some(Parsed::Instant(civil, ts));
    }
    if tm.hour().is_some() {
        return tm.to_datetime().ok().map(Parsed::Naive);
    }
    tm.to_date().ok().map(Parsed::Date)
}

/// Ok(None) for a sentinel, Err(()) when the text is not in the format.
fn parse_temporal(value: &Value, format: &DateFormat) -> Result<Option<Parsed>, ()> {
    let owned;
    let s = match value {
        Value::String(s) => s.trim(),
        Value::Number(n) if n.is_u64() => {
            owned = n.to_string();
            owned.as_str()
        }
        _ => return Err(()),
    };
    if is_sentinel_text(s) {
        return Ok(None);
    }
    let from_ms = |ts: Timestamp| Parsed::Instant(ts.to_zoned(TimeZone::UTC).datetime(), ts);
    let parsed = match format {
        DateFormat::Auto => match sap_json(s) {
            Some(Ok(Some(ts))) => Some(from_ms(ts)),
            Some(Ok(None)) => return Ok(None),
            Some(Err(())) => return Err(()),
            None => parse_yyyymmdd(s).or_else(|| parse_iso(s, false)),
        },
        DateFormat::Iso => parse_iso(s, false),
        DateFormat::SapJson => match sap_json(s) {
            Some(Ok(Some(ts))) => Some(from_ms(ts)),
            Some(Ok(None)) => return Ok(None),
            _ => None,
        },
        DateFormat::Yyyymmdd => parse_yyyymmdd(s),
        DateFormat::Odoo => parse_iso(s, true),
        DateFormat::Strptime(f) => parse_strptime(f, s),
    }
    .ok_or(())?;
    let date = match &parsed {
        Parsed::Date(d) => *d,
        Parsed::Naive(dt) | Parsed::Instant(dt, _) => dt.date(),
    };
    Ok((!is_sentinel_date(date)).then_some(parsed))
}

/// A calendar date; a date-time gives the date as written.
pub fn date(value: &Value, format: &DateFormat) -> Result<Option<Date>, String> {
    let parsed = parse_temporal(value, format)
        .map_err(|()| format!("not a date{}: {}", format.describe(), show(value)))?;
    Ok(parsed.map(|p| match p {
        Parsed::Date(d) => d,
        Parsed::Naive(dt) | Parsed::Instant(dt, _) => dt.date(),
    }))
}

/// A UTC instant; a naive date-time is UTC and a plain date is midnight UTC.
pub fn datetime(value: &Value, format: &DateFormat) -> Result<Option<Timestamp>, String> {
    let fail = || format!("not a date/time{}: {}", format.describe(), show(value));
    let Some(parsed) = parse_temporal(value, format).map_err(|()| fail())? else {
        return Ok(None);
    };
    let naive = match parsed {
        Parsed::Instant(_, ts) => return Ok(Some(ts)),
        Parsed::Date(d) => d.to_datetime(jiff::civil::Time::midnight()),
        Parsed::Naive(dt) => dt,
    };
    TimeZone::UTC
        .to_timestamp(naive)
        .map(Some)
        .map_err(|_| fail())
}

#[cfg(test)]
mod tests {
    use jiff::civil::date as d;
    use serde_json::json;

    use super::*;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        Timestamp::from_str(s).unwrap()
    }

    #[test]
    fn text_renders_scalars_and_rejects_structures() {
        assert_eq!(text(&json!("a")).unwrap(), "a");
        assert_eq!(text(&json!(12)).unwrap(), "12");
        assert_eq!(text(&json!(1.5)).unwrap(), "1.5");
        assert_eq!(text(&json!(true)).unwrap(), "true");
        assert_eq!(
            text(&json!({"a": 1})).unwrap_err(),
            r#"not a string: an object {"a":1}"#
        );
        assert_eq!(
            text(&json!([1, 2])).unwrap_err(),
            "not a string: an array [1,2]"
        );
    }

    #[test]
    fn integers() {
        assert_eq!(integer(&json!(12)).unwrap(), 12);
        assert_eq!(integer(&json!("  12 ")).unwrap(), 12);
        assert_eq!(integer(&json!("5-")).unwrap(), -5);
        assert_eq!(integer(&json!(3.0)).unwrap(), 3);
        assert_eq!(
            integer(&json!("12.5")).unwrap_err(),
            r#"not an integer: "12.5""#
        );
        assert_eq!(integer(&json!(12.5)).unwrap_err(), "not an integer: 12.5");
        assert_eq!(integer(&json!(true)).unwrap_err(), "not an integer: true");
    }

    #[test]
    fn decimals_from_strings_including_sap_trailing_minus() {
        assert_eq!(decimal(&json!("1234.50")).unwrap(), dec("1234.50"));
        assert_eq!(decimal(&json!("-3.2")).unwrap(), dec("-3.2"));
        assert_eq!(decimal(&json!(" 10.500- ")).unwrap(), dec("-10.500"));
        assert_eq!(decimal(&json!("10.500-")).unwrap().to_string(), "-10.500");
        assert_eq!(
            decimal(&json!("12,5")).unwrap_err(),
            r#"not a decimal: "12,5""#
        );
        assert_eq!(
            decimal(&json!("1,234.50")).unwrap_err(),
            r#"not a decimal: "1,234.50""#
        );
        assert_eq!(
            decimal(&json!("1_000")).unwrap_err(),
            r#"not a decimal: "1_000""#
        );
        assert_eq!(
            decimal(&json!("--1")).unwrap_err(),
            r#"not a decimal: "--1""#
        );
        assert_eq!(
            decimal(&json!("abc")).unwrap_err(),
            r#"not a decimal: "abc""#
        );
    }

    #[test]
    fn decimals_from_json_floats_are_exact() {
        assert_eq!(decimal(&json!(0.1)).unwrap().to_string(), "0.1");
        assert_eq!(
            decimal(&json!(0.1)).unwrap() + decimal(&json!(0.2)).unwrap(),
            dec("0.3")
        );
        assert_eq!(decimal(&json!(1234.5)).unwrap(), dec("1234.5"));
        assert_eq!(decimal(&json!(42)).unwrap(), dec("42"));
        assert_eq!(decimal(&json!(1e-7)).unwrap(), dec("0.0000001"));
        assert_eq!(decimal(&json!([1])).unwrap_err(), "not a decimal: [1]");
    }

    #[test]
    fn booleans_including_sap_flags() {
        for t in [
            json!(true),
            json!("true"),
            json!("X"),
            json!("1"),
            json!("yes"),
            json!(1),
        ] {
            assert!(boolean(&t).unwrap(), "{t}");
        }
        for f in [
            json!(false),
            json!("false"),
            json!(""),
            json!("0"),
            json!("no"),
            json!(0),
        ] {
            assert!(!boolean(&f).unwrap(), "{f}");
        }
        assert_eq!(
            boolean(&json!("maybe")).unwrap_err(),
            r#"not a boolean: "maybe""#
        );
    }

    #[test]
    fn dates_in_every_erp_shape() {
        let auto = DateFormat::Auto;
        let may1 = Some(d(2024, 5, 1));
        assert_eq!(date(&json!("2024-05-01"), &auto).unwrap(), may1);
        assert_eq!(date(&json!("20240501"), &auto).unwrap(), may1);
        assert_eq!(date(&json!(20240501), &auto).unwrap(), may1);
        assert_eq!(date(&json!("/Date(1714521600000)/"), &auto).unwrap(), may1);
        assert_eq!(
            date(&json!("/Date(1714521600000+0000)/"), &auto).unwrap(),
            may1
        );
        assert_eq!(
            date(&json!("2024-05-01T23:30:00-05:00"), &auto).unwrap(),
            may1
        );
        assert_eq!(date(&json!("2024-05-01T10:20:30Z"), &auto).unwrap(), may1);
        assert_eq!(date(&json!("2024-05-01 10:20:30"), &auto).unwrap(), may1);
        assert_eq!(
            date(&json!("2024-13-01"), &auto).unwrap_err(),
            r#"not a date: "2024-13-01""#
        );
        assert_eq!(
            date(&json!("/Date(abc)/"), &auto).unwrap_err(),
            r#"not a date: "/Date(abc)/""#
        );
        assert_eq!(
            date(&json!("soon"), &auto).unwrap_err(),
            r#"not a date: "soon""#
        );
    }

    #[test]
    fn date_sentinels_are_absent() {
        let auto = DateFormat::Auto;
        for s in [
            "00000000",
            "0001-01-01",
            "9999-12-31",
            "99991231",
            "9999-12-31T00:00:00Z",
            "0001-01-01 00:00:00",
            "00000000000000",
            "/Date(253402214400000)/",
        ] {
            assert_eq!(date(&json!(s), &auto).unwrap(), None, "{s}");
            assert_eq!(datetime(&json!(s), &auto).unwrap(), None, "{s}");
        }
    }

    #[test]
    fn datetimes_in_every_erp_shape() {
        let auto = DateFormat::Auto;
        let t = Some(ts("2024-05-01T10:20:30Z"));
        assert_eq!(datetime(&json!("2024-05-01T10:20:30Z"), &auto).unwrap(), t);
        assert_eq!(
            datetime(&json!("2024-05-01T12:20:30+02:00"), &auto).unwrap(),
            t
        );
        assert_eq!(datetime(&json!("2024-05-01T10:20:30"), &auto).unwrap(), t);
        assert_eq!(
            datetime(&json!("2024-05-01 10:20:30"), &auto).unwrap(),
            t,
            "Odoo naive UTC"
        );
        assert_eq!(datetime(&json!("20240501102030"), &auto).unwrap(), t);
        assert_eq!(datetime(&json!("/Date(1714558830000)/"), &auto).unwrap(), t);
        assert_eq!(
            datetime(&json!("/Date(1714558830000+0200)/"), &auto).unwrap(),
            t
        );
        let midnight = Some(ts("2024-05-01T00:00:00Z"));
        assert_eq!(datetime(&json!("2024-05-01"), &auto).unwrap(), midnight);
        assert_eq!(datetime(&json!("20240501"), &auto).unwrap(), midnight);
        assert_eq!(
            datetime(&json!("20240501256000"), &auto).unwrap_err(),
            r#"not a date/time: "20240501256000""#
        );
    }

    #[test]
    fn named_and_strptime_formats() {
        let german = DateFormat::parse("%d.%m.%Y").unwrap();
        assert_eq!(
            date(&json!("01.05.2024"), &german).unwrap(),
            Some(d(2024, 5, 1))
        );
        assert_eq!(
            datetime(&json!("01.05.2024"), &german).unwrap(),
            Some(ts("2024-05-01T00:00:00Z"))
        );
        assert_eq!(
            date(&json!("2024-05-01"), &german).unwrap_err(),
            r#"not a date in format "%d.%m.%Y": "2024-05-01""#
        );
        let with_time = DateFormat::parse("%d/%m/%Y %H:%M").unwrap();
        assert_eq!(
            datetime(&json!("01/05/2024 10:20"), &with_time).unwrap(),
            Some(ts("2024-05-01T10:20:00Z"))
        );
        let zoned = DateFormat::parse("%Y-%m-%d %H:%M:%S %z").unwrap();
        assert_eq!(
            datetime(&json!("2024-05-01 12:20:30 +0200"), &zoned).unwrap(),
            Some(ts("2024-05-01T10:20:30Z"))
        );
        let odoo = DateFormat::parse("odoo").unwrap();
        assert_eq!(
            datetime(&json!("2024-05-01 10:20:30"), &odoo).unwrap(),
            Some(ts("2024-05-01T10:20:30Z"))
        );
        assert_eq!(
            datetime(&json!("2024-05-01T10:20:30Z"), &odoo).unwrap_err(),
            r#"not a date/time in format "odoo": "2024-05-01T10:20:30Z""#
        );
        let sap = DateFormat::parse("sap_json").unwrap();
        assert_eq!(
            date(&json!("20240501"), &sap).unwrap_err(),
            r#"not a date in format "sap_json": "20240501""#
        );
        let ymd = DateFormat::parse("yyyymmdd").unwrap();
        assert_eq!(date(&json!("20240501"), &ymd).unwrap(), Some(d(2024, 5, 1)));
        assert_eq!(DateFormat::parse("iso").unwrap(), DateFormat::Iso);
        assert_eq!(
            DateFormat::parse("german").unwrap_err(),
            "unknown date format \"german\" (expected iso, sap_json, yyyymmdd, odoo or a \
             strptime format such as \"%d.%m.%Y\")"
        );
        assert!(
            DateFormat::parse("%d.%K")
                .unwrap_err()
                .starts_with("invalid date format \"%d.%K\": ")
        );
    }
}
