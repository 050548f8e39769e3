//! Record paths: [`Path`] is a compiled `a.b[0].c` / `group[*]` expression over a JSON tree.
//!
//! Trees converted from XML put a single child element as an object and repeated children as
//! an array, so resolution is tolerant: `[0]` on a non-array is the value itself, `[n>0]` on a
//! non-array is absent, `[*]` on a non-array yields the value once, `.key` on an array steps
//! into its first element, and an element with attributes (`{"@ATTR": .., "#text": ..}`)
//! reached where a value is expected stands for its `#text`. A missing step is absent, never
//! an error. Paths are parsed once, when the mapping is compiled.

use std::fmt;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
    All,
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
    /// Parses `a.b[0].c`, `lines[*]`, `@attr`, `#text`. Keys may hold any character except
    /// `.`, `[` and `]`.
    pub fn parse(text: &str) -> Result<Path, String> {
        if text.trim().is_empty() {
            return Err("empty path".to_owned());
        }
        let mut steps = Vec::new();
        let mut rest = text;
        let mut expect_key = true;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('[') {
                let close = after
                    .find(']')
                    .ok_or_else(|| format!("invalid path `{text}`: `[` without `]`"))?;
                let inner = &after[..close];
                let step = if inner == "*" {
                    Step::All
                } else {
                    inner.parse::<usize>().map(Step::Index).map_err(|_| {
                        format!("invalid path `{text}`: `[{inner}]` is neither an index nor `[*]`")
                    })?
                };
                if steps.is_empty() && expect_key {
                    return Err(format!("invalid path `{text}`: it must start with a key"));
                }
                steps.push(step);
                rest = &after[close + 1..];
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
    fn parse_errors_name_the_problem() {
        assert_eq!(Path::parse("").unwrap_err(), "empty path");
        assert_eq!(
            Path::parse("a..b").unwrap_err(),
            "invalid path `a..b`: empty key"
        );
        assert_eq!(
            Path::parse("a[x]").unwrap_err(),
            "invalid path `a[x]`: `[x]` is neither an index nor `[*]`"
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
