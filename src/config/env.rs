//! `${VAR}` references in string values, resolved from the environment after parsing.
//!
//! [`expand`] rewrites one string value: `${NAME}` anywhere inside it is replaced by the
//! variable's value and `$${` stands for a literal `${`. Resolution happens on values already
//! deserialized, so TOML spans keep pointing at the text the operator wrote. The environment is
//! a lookup function ([`Env`]) rather than `std::env` directly, so tests provide their own.
//!
//! Invariant: no error message ever contains a variable's value, only its name.

use std::fmt;

/// Looks up one environment variable.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A string value after resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expanded {
    pub value: String,
    /// True when any part of the value came from the environment: such a value may be a
    /// secret and is never echoed in messages.
    pub from_env: bool,
}

/// Why a value could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EnvError {
    Missing(String),
    Unterminated,
    InvalidName(String),
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvError::Missing(name) => write!(f, "environment variable {name} is not set"),
            EnvError::Unterminated => {
                write!(f, "unterminated `${{` (write `$${{` for a literal `${{`)")
            }
            EnvError::InvalidName(name) => write!(
                f,
                "invalid environment variable name `{name}` in `${{{name}}}` \
                 (use letters, digits and `_`, not starting with a digit)"
            ),
        }
    }
}

/// Resolves every `${NAME}` in `raw`. With `required` false an unset variable is not an
/// error: its reference stays in the value verbatim (used for files no job depends on).
pub(crate) fn expand(raw: &str, env: Env<'_>, required: bool) -> Result<Expanded, Vec<EnvError>> {
    let mut value = String::with_capacity(raw.len());
    let mut errors = Vec::new();
    let mut from_env = false;
    let mut rest = raw;
    while let Some(dollar) = rest.find('$') {
        value.push_str(&rest[..dollar]);
        let tail = &rest[dollar..];
        if let Some(after) = tail.strip_prefix("$${") {
            value.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let Some(close) = after.find('}') else {
                errors.push(EnvError::Unterminated);
                value.push_str(tail);
                rest = "";
                break;
            };
            let name = &after[..close];
            if !is_variable_name(name) {
                errors.push(EnvError::InvalidName(name.to_string()));
            } else if let Some(found) = env(name) {
                value.push_str(&found);
                from_env = true;
            } else if required {
                errors.push(EnvError::Missing(name.to_string()));
            } else {
                value.push_str(&tail[..close + 3]);
            }
            rest = &after[close + 1..];
        } else {
            value.push('$');
            rest = &tail[1..];
        }
    }
    value.push_str(rest);
    if errors.is_empty() {
        Ok(Expanded { value, from_env })
    } else {
        Err(errors)
    }
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("broker.internal".into()),
            "PASSWORD" => Some("s3cr3t".into()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_references_anywhere_in_the_value() {
        let expanded = expand("amqp://app:${PASSWORD}@${HOST}:5672/%2f", &env, true).unwrap();
        assert_eq!(expanded.value, "amqp://app:s3cr3t@broker.internal:5672/%2f");
        assert!(expanded.from_env);
    }

    #[test]
    fn plain_values_are_untouched_and_not_marked_as_from_env() {
        let expanded = expand("price in $ and $5", &env, true).unwrap();
        assert_eq!(expanded.value, "price in $ and $5");
        assert!(!expanded.from_env);
    }

    #[test]
    fn double_dollar_escapes_a_literal_reference() {
        let expanded = expand("$${HOST} is ${HOST}", &env, true).unwrap();
        assert_eq!(expanded.value, "${HOST} is broker.internal");
    }

    #[test]
    fn missing_variables_are_all_named_and_values_never_shown() {
        let errors = expand("${PASSWORD}:${A_USER}@${A_HOST}", &env, true).unwrap_err();
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "environment variable A_USER is not set",
                "environment variable A_HOST is not set"
            ]
        );
        assert!(!messages.concat().contains("s3cr3t"));
    }

    #[test]
    fn optional_resolution_keeps_unset_references_verbatim() {
        let expanded = expand("${HOST}/${UNSET_DIR}/x", &env, false).unwrap();
        assert_eq!(expanded.value, "broker.internal/${UNSET_DIR}/x");
    }

    #[test]
    fn malformed_references_are_errors() {
        assert_eq!(
            expand("x${HOST", &env, true).unwrap_err()[0].to_string(),
            "unterminated `${` (write `$${` for a literal `${`)"
        );
        assert_eq!(
            expand("${1X}", &env, true).unwrap_err()[0].to_string(),
            "invalid environment variable name `1X` in `${1X}` \
             (use letters, digits and `_`, not starting with a digit)"
        );
    }
}
