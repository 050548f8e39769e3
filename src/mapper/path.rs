//! Record paths: [`Path`] is a compiled `a.b[0].c` / `group[*]` / `seg[QUALF=002]` expression
//! over a JSON tree.
//!
//! Trees converted from XML put a single child element as an object and repeated children as
//! an array, so resolution is tolerant: `[0]` on a non-array is the value itself, `[n>0]` on a
//! non-array is absent, `[*]` on a non-array yields the value once, `.key` on an array steps
//! into its first element, and an element with attributes (`{"@ATTR": .., "#text": ..}`)
//! reached where a value is expected stands for its `#text`. A selector `[KEY=VALUE]` picks
//! the first element whose child `KEY` reads (by those scalar rules) exactly as `VALUE`; it
//! exists because IDoc segments are told apart by a qualifier field, not by position. A missing
//! step or a selector without a match is absent, never an error. Paths are parsed once, when
//! the mapping is compiled.

use std::fmt;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
    All,
    /// `[key=value]`: the first element whose child `key` reads as `value`.
    Select {
        key: String,
        value: String,
    },
}

/// A compiled path; displays as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    text: String,
    steps: Vec<Step>,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Path {
    /// Parses `a.b[0].c`, `lines[*]`, `seg[KEY=VALUE]`, `@attr`, `#text`. Keys may hold any
    /// character except `.`, `[` and `]`; a selector's key also not `=`. A selector's value runs
    /// to `]`, or is quoted with `'` or `"` to hold `]` or `=`.
    pub fn parse(text: &str) -> Result<Path, String> {
        if text.trim().is_empty() {
            return Err("empty path".to_owned());
        }
        let mut steps = Vec::new();
        let mut rest = text;
        let mut expect_key = true;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('[') {
                let (step, after) =
                    parse_bracket(after).map_err(|e| format!("invalid path `{text}`: {e}"))?;
                if steps.is_empty() && expect_key {
                    return Err(format!("invalid path `{text}`: it must start with a key"));
                }
                steps.push(step);
                rest = after;
                expect_key = false;
            } else if let Some(after) = rest.strip_prefix('.') {
                if expect_key {
                    return Err(format!("invalid path `{text}`: empty key"));
                }
                rest = after;
                expect_key = true;
                if rest.is_empty() {
                    return Err(format!("invalid path `{text}`: it ends with `.`"));
                }
            } else {
                if !expect_key {
                    return Err(format!("invalid path `{text}`: `.` expected after `]`"));
                }
                let end = rest.find(['.', '[', ']']).unwrap_or(rest.len());
                if rest[end..].starts_with(']') {
                    return Err(format!("invalid path `{text}`: `]` without `[`"));
                }
                steps.push(Step::Key(rest[..end].to_owned()));
                rest = &rest[end..];
                expect_key = false;
            }
        }
        Ok(Path {
            text: text.to_owned(),
            steps,
        })
    }

    /// Whether the path holds `[*]` and so may yield several values.
    pub fn is_multi(&self) -> bool {
        self.steps.contains(&Step::All)
    }

    /// The single value at this path, if any. Only for paths without `[*]`.
    pub fn get<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        let mut current = root;
        for step in &self.steps {
            current = match step {
                Step::Key(key) => key_of(current, key)?,
                Step::Index(i) => index_of(current, *i)?,
                // Callers use `get_all` for multi paths; a single lookup takes the first element.
                Step::All => index_of(current, 0)?,
                Step::Select { key, value } => select(current, key, value)?,
            };
        }
        Some(text_of(current))
    }

    /// Every value at this path, in document order, appended to `out`; elements with
    /// attributes stand for their `#text`.
    pub fn get_all<'a>(&self, root: &'a Value, out: &mut Vec<&'a Value>) {
        collect(&self.steps, root, out, true);
    }

    /// Every value of a list source: all matches of a `[*]` path, or the elements of the array
    /// a plain path reaches (a single value counts as one).
    pub fn get_list<'a>(&self, root: &'a Value, out: &mut Vec<&'a Value>) {
        self.elements(root, out, true);
    }

    /// The elements of a repeating group (order lines), as whole elements: an element is a
    /// record of its own, so its `#text` does not stand for it.
    pub fn get_group<'a>(&self, root: &'a Value, out: &mut Vec<&'a Value>) {
        self.elements(root, out, false);
    }

    fn elements<'a>(&self, root: &'a Value, out: &mut Vec<&'a Value>, unwrap_text: bool) {
        let start = out.len();
        collect(&self.steps, root, out, unwrap_text);
        if !self.is_multi()
            && let [Value::Array(items)] = &out[start..]
        {
            let items: &'a Vec<Value> = items;
            out.truncate(start);
            out.extend(
                items
                    .iter()
                    .map(|item| if unwrap_text { text_of(item) } else { item }),
            );
        }
    }
}

fn collect<'a>(steps: &[Step], current: &'a Value, out: &mut Vec<&'a Value>, unwrap_text: bool) {
    let Some((step, rest)) = steps.split_first() else {
        out.push(if unwrap_text {
            text_of(current)
        } else {
            current
        });
        return;
    };
    match step {
        Step::Key(key) => {
            if let Some(next) = key_of(current, key) {
                collect(rest, next, out, unwrap_text);
            }
        }
        Step::Index(i) => {
            if let Some(next) = index_of(current, *i) {
                collect(rest, next, out, unwrap_text);
            }
        }
        Step::All => match current {
            Value::Array(items) => {
                for item in items {
                    collect(rest, item, out, unwrap_text);
                }
            }
            Value::Null => {}
            single => collect(rest, single, out, unwrap_text),
        },
        Step::Select { key, value } => {
            if let Some(next) = select(current, key, value) {
                collect(rest, next, out, unwrap_text);
            }
        }
    }
}

/// Parses what follows a `[` up to and including its `]`: `*`, an index or a selector.
/// Returns the step and the text after the `]`; errors name only the problem, the caller adds
/// the path.
fn parse_bracket(after: &str) -> Result<(Step, &str), String> {
    let unclosed = || "`[` without `]`".to_owned();
    let stop = after.find(['=', ']']).ok_or_else(unclosed)?;
    if after[stop..].starts_with(']') {
        let inner = &after[..stop];
        let step = if inner == "*" {
            Step::All
        } else {
            inner.parse::<usize>().map(Step::Index).map_err(|_| {
                format!("`[{inner}]` is neither an index, `[*]` nor a selector `[KEY=VALUE]`")
            })?
        };
        return Ok((step, &after[stop + 1..]));
    }
    let key = &after[..stop];
    if key.is_empty() {
        return Err("selector `[=...]` has an empty key".to_owned());
    }
    if key.contains(['.', '[']) {
        return Err(format!(
            "selector key `{key}` must be one child name, without `.` or `[`"
        ));
    }
    let literal = &after[stop + 1..];
    let (value, rest) = match literal.chars().next() {
        Some(quote @ ('\'' | '"')) => {
            let body = &literal[1..];
            let close = body
                .find(quote)
                .ok_or_else(|| format!("selector `[{key}=` has an unclosed {quote} quote"))?;
            let value = &body[..close];
            let rest = body[close + 1..].strip_prefix(']').ok_or_else(|| {
                format!("selector `[{key}={quote}{value}{quote}` must end with `]` after the quote")
            })?;
            (value, rest)
        }
        _ => {
            let close = literal.find(']').ok_or_else(unclosed)?;
            let value = &literal[..close];
            if value.is_empty() {
                return Err(format!(
                    "selector `[{key}=]` has an empty value; write `[{key}='']` to select an empty one"
                ));
            }
            if value.contains('=') {
                return Err(format!(
                    "selector `[{key}={value}]` holds a second `=`; quote the value: `[{key}='{value}']`"
                ));
            }
            (value, &literal[close + 1..])
        }
    };
    Ok((
        Step::Select {
            key: key.to_owned(),
            value: value.to_owned(),
        },
        rest,
    ))
}

/// The first element of an array (or the single object itself) whose child `key` reads as
/// `value`. Elements that are not objects never match.
fn select<'a>(current: &'a Value, key: &str, value: &str) -> Option<&'a Value> {
    let matches = |element: &Value| match element {
        Value::Object(map) => map.get(key).is_some_and(|child| reads_as(child, value)),
        _ => false,
    };
    match current {
        Value::Array(items) => items.iter().find(|item| matches(item)),
        single if matches(single) => Some(single),
        _ => None,
    }
}

/// Whether a scalar reads as `literal`: strings exactly, numbers and booleans by their written
/// form (so the number 12 does not read as `012`), an element with attributes by its `#text`.
fn reads_as(value: &Value, literal: &str) -> bool {
    match text_of(value) {
        Value::String(text) => text == literal,
        Value::Number(number) => number.to_string() == literal,
        Value::Bool(flag) => flag.to_string() == literal,
        _ => false,
    }
}

fn key_of<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => map.get(key),
        Value::Array(items) => key_of(items.first()?, key),
        _ => None,
    }
}

fn index_of(value: &Value, index: usize) -> Option<&Value> {
    match value {
        Value::Array(items) => items.get(index),
        Value::Null => None,
        single if index == 0 => Some(single),
        _ => None,
    }
}

/// An XML element with attributes carries its text under `#text`.
fn text_of(value: &Value) -> &Value {
    match value {
        Value::Object(map) => map.get("#text").unwrap_or(value),
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn get(path: &str, value: &Value) -> Option<Value> {
        Path::parse(path).unwrap().get(value).cloned()
    }

    fn all(path: &str, value: &Value) -> Vec<Value> {
        let mut out = Vec::new();
        Path::parse(path).unwrap().get_all(value, &mut out);
        out.into_iter().cloned().collect()
    }

    #[test]
    fn plain_keys_and_indexes() {
        let v = json!({"a": {"b": [{"c": 1}, {"c": 2}]}});
        assert_eq!(get("a.b[1].c", &v), Some(json!(2)));
        assert_eq!(get("a.b[0].c", &v), Some(json!(1)));
        assert_eq!(get("a.b[2].c", &v), None);
        assert_eq!(get("a.x", &v), None);
        assert_eq!(
            get("a.b.c", &v),
            Some(json!(1)),
            "`.key` on an array takes element 0"
        );
    }

    #[test]
    fn single_child_is_tolerated_as_an_array() {
        let single = json!({"E1KNVKM": {"SMTP_ADDR": "a@b.de"}});
        let repeated = json!({"E1KNVKM": [{"SMTP_ADDR": "a@b.de"}, {"SMTP_ADDR": "c@d.de"}]});
        for v in [&single, &repeated] {
            assert_eq!(get("E1KNVKM[0].SMTP_ADDR", v), Some(json!("a@b.de")));
            assert_eq!(get("E1KNVKM.SMTP_ADDR", v), Some(json!("a@b.de")));
        }
        assert_eq!(get("E1KNVKM[1].SMTP_ADDR", &single), None);
        assert_eq!(
            get("E1KNVKM[1].SMTP_ADDR", &repeated),
            Some(json!("c@d.de"))
        );
        assert_eq!(all("E1KNVKM[*].SMTP_ADDR", &single), vec![json!("a@b.de")]);
        assert_eq!(
            all("E1KNVKM[*].SMTP_ADDR", &repeated),
            vec![json!("a@b.de"), json!("c@d.de")]
        );
        assert_eq!(all("MISSING[*]", &repeated), Vec::<Value>::new());
    }

    #[test]
    fn lists_and_groups() {
        let v =
            json!({"M": [{"#text": "a", "@t": "1"}, "b"], "G": {"@id": "1", "#text": "x", "Q": 2}});
        let mut out = Vec::new();
        Path::parse("M").unwrap().get_list(&v, &mut out);
        assert_eq!(out, [&json!("a"), &json!("b")]);
        out.clear();
        Path::parse("G").unwrap().get_group(&v, &mut out);
        assert_eq!(out, [&v["G"]], "a group element stays whole");
        out.clear();
        Path::parse("G[*]").unwrap().get_group(&v, &mut out);
        assert_eq!(out, [&v["G"]]);
    }

    #[test]
    fn xml_text_and_attributes() {
        let v = json!({"NAME": {"@lang": "de", "#text": "Müller"}});
        assert_eq!(get("NAME", &v), Some(json!("Müller")));
        assert_eq!(get("NAME.@lang", &v), Some(json!("de")));
        assert_eq!(get("NAME.#text", &v), Some(json!("Müller")));
    }

    #[test]
    fn selector_picks_the_first_qualified_segment_wherever_it_stands() {
        let v = json!({
            "E1EDK03": [
                {"@SEGMENT": "1", "IDDAT": "002", "DATUM": "20240424"},
                {"@SEGMENT": "1", "IDDAT": "012", "DATUM": "20240318"},
                {"@SEGMENT": "1", "IDDAT": "012", "DATUM": "20990101"},
            ],
        });
        assert_eq!(
            get("E1EDK03[IDDAT=012].DATUM", &v),
            Some(json!("20240318")),
            "the first match, not the first element"
        );
        assert_eq!(get("E1EDK03[IDDAT=002].DATUM", &v), Some(json!("20240424")));
        assert_eq!(
            get("E1EDK03[IDDAT=099].DATUM", &v),
            None,
            "no match is absent"
        );
        assert_eq!(
            get("E1EDK03[IDDAT=12].DATUM", &v),
            None,
            "compared as strings"
        );
        assert_eq!(get("E1EDK03[QUALF=012].DATUM", &v), None, "missing key");
        assert_eq!(
            all("E1EDK03[IDDAT=012].DATUM", &v),
            vec![json!("20240318")],
            "a selector yields one element, also in multi lookups"
        );
    }

    #[test]
    fn selector_on_a_single_object_is_the_object_or_absent() {
        let v = json!({"E1EDS01": {"SUMID": "002", "SUMME": "1850.00"}});
        assert_eq!(get("E1EDS01[SUMID=002].SUMME", &v), Some(json!("1850.00")));
        assert_eq!(get("E1EDS01[SUMID=001].SUMME", &v), None);
        assert_eq!(get("MISSING[SUMID=002].SUMME", &v), None);
        let scalars = json!({"M": ["002", {"SUMID": "002", "X": 1}], "S": "002", "N": null});
        assert_eq!(
            get("M[SUMID=002].X", &scalars),
            Some(json!(1)),
            "elements that are not objects never match"
        );
        assert_eq!(get("S[SUMID=002]", &scalars), None);
        assert_eq!(get("N[SUMID=002]", &scalars), None);
    }

    #[test]
    fn selector_reads_the_key_as_a_scalar() {
        let v = json!({
            "P": [
                {"Q": {"@src": "x", "#text": "AG"}, "V": "text"},
                {"Q": 12, "V": "number"},
                {"Q": 1.5, "V": "decimal"},
                {"Q": true, "V": "bool"},
                {"Q": ["LS"], "V": "list"},
                {"@role": "WE", "V": "attribute"},
            ],
        });
        assert_eq!(
            get("P[Q=AG].V", &v),
            Some(json!("text")),
            "`#text` stands for it"
        );
        assert_eq!(get("P[Q=12].V", &v), Some(json!("number")));
        assert_eq!(get("P[Q=012].V", &v), None, "the number 12 is written `12`");
        assert_eq!(get("P[Q=1.5].V", &v), Some(json!("decimal")));
        assert_eq!(get("P[Q=true].V", &v), Some(json!("bool")));
        assert_eq!(get("P[@role=WE].V", &v), Some(json!("attribute")));
        assert_eq!(get("P[Q=ag].V", &v), None, "exact, case included");
        assert_eq!(get("P[Q=LS].V", &v), None, "a repeated child is no scalar");
    }

    #[test]
    fn selector_values_may_be_quoted() {
        let v = json!({"T": [{"K": "a]b", "V": 1}, {"K": "x=y", "V": 2}, {"K": "", "V": 3}, {"K": "it's", "V": 4}]});
        assert_eq!(get("T[K='a]b'].V", &v), Some(json!(1)));
        assert_eq!(get("T[K=\"x=y\"].V", &v), Some(json!(2)));
        assert_eq!(get("T[K=''].V", &v), Some(json!(3)));
        assert_eq!(get("T[K=\"it's\"].V", &v), Some(json!(4)));
        assert_eq!(get("T[K=a b].V", &v), None);
        assert_eq!(
            Path::parse("T[K='a]b'].V").unwrap().to_string(),
            "T[K='a]b'].V",
            "displays as written"
        );
    }

    #[test]
    fn selector_inside_groups_and_lists() {
        let v = json!({
            "E1EDP01": [
                {"POSEX": "10", "E1EDP19": [{"QUALF": "003", "IDTNR": "GTIN-1"}, {"QUALF": "002", "IDTNR": "MAT-1"}]},
                {"POSEX": "20", "E1EDP19": {"QUALF": "002", "IDTNR": "MAT-2"}},
                {"POSEX": "30", "E1EDP19": {"QUALF": "003", "IDTNR": "GTIN-3"}},
            ],
        });
        assert_eq!(
            all("E1EDP01[*].E1EDP19[QUALF=002].IDTNR", &v),
            vec![json!("MAT-1"), json!("MAT-2")]
        );
        let mut out = Vec::new();
        Path::parse("E1EDP01[POSEX=20]")
            .unwrap()
            .get_group(&v, &mut out);
        assert_eq!(out, [&v["E1EDP01"][1]], "a selected group is one element");
        out.clear();
        Path::parse("E1EDP01[0].E1EDP19[QUALF=002].IDTNR")
            .unwrap()
            .get_list(&v, &mut out);
        assert_eq!(out, [&json!("MAT-1")]);
        assert!(!Path::parse("E1EDP01[POSEX=20]").unwrap().is_multi());
    }

    #[test]
    fn selector_parse_errors_name_the_problem() {
        let cases = [
            (
                "a[=012].b",
                "invalid path `a[=012].b`: selector `[=...]` has an empty key",
            ),
            ("a[IDDAT=012", "invalid path `a[IDDAT=012`: `[` without `]`"),
            ("a[IDDAT", "invalid path `a[IDDAT`: `[` without `]`"),
            (
                "a[IDDAT].b",
                "invalid path `a[IDDAT].b`: `[IDDAT]` is neither an index, `[*]` nor a selector `[KEY=VALUE]`",
            ),
            (
                "a[IDDAT=]",
                "invalid path `a[IDDAT=]`: selector `[IDDAT=]` has an empty value; write `[IDDAT='']` to select an empty one",
            ),
            (
                "a[K=x=y]",
                "invalid path `a[K=x=y]`: selector `[K=x=y]` holds a second `=`; quote the value: `[K='x=y']`",
            ),
            (
                "a[K='x]",
                "invalid path `a[K='x]`: selector `[K=` has an unclosed ' quote",
            ),
            (
                "a[K=\"x\"y]",
                "invalid path `a[K=\"x\"y]`: selector `[K=\"x\"` must end with `]` after the quote",
            ),
            (
                "a[b.c=1]",
                "invalid path `a[b.c=1]`: selector key `b.c` must be one child name, without `.` or `[`",
            ),
            (
                "[K=1].b",
                "invalid path `[K=1].b`: it must start with a key",
            ),
            ("a[K=1]b", "invalid path `a[K=1]b`: `.` expected after `]`"),
        ];
        for (path, message) in cases {
            assert_eq!(Path::parse(path).unwrap_err(), message, "{path}");
        }
    }

    #[test]
    fn parse_errors_name_the_problem() {
        assert_eq!(Path::parse("").unwrap_err(), "empty path");
        assert_eq!(
            Path::parse("a..b").unwrap_err(),
            "invalid path `a..b`: empty key"
        );
        assert_eq!(
            Path::parse("a[x]").unwrap_err(),
            "invalid path `a[x]`: `[x]` is neither an index, `[*]` nor a selector `[KEY=VALUE]`"
        );
        assert_eq!(
            Path::parse("a[0").unwrap_err(),
            "invalid path `a[0`: `[` without `]`"
        );
        assert_eq!(
            Path::parse("a.").unwrap_err(),
            "invalid path `a.`: it ends with `.`"
        );
        assert_eq!(
            Path::parse("a[0]b").unwrap_err(),
            "invalid path `a[0]b`: `.` expected after `]`"
        );
        assert_eq!(
            Path::parse("[0]").unwrap_err(),
            "invalid path `[0]`: it must start with a key"
        );
        assert!(Path::parse("lines[*]").unwrap().is_multi());
        assert!(!Path::parse("a[0].b").unwrap().is_multi());
    }
}
