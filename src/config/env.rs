//! `${VAR}` and `${file:/path}` references in string values, resolved after parsing.
//!
//! [`expand`] rewrites one string value: `${NAME}` anywhere inside it is replaced by the
//! variable's value, `${file:/run/secrets/db_password}` by the content of that file with one
//! trailing line break removed (the form secret stores such as Docker and Kubernetes mount),
//! and `$${` stands for a literal `${`. A secret file path must be absolute, so its meaning does
//! not depend on the directory the daemon starts in. The lookup of a file reference goes
//! through the same [`Env`] function with the key `file:/path` ([`lookup`] is the real one),
//! so resolution itself does no I/O. Resolution happens on values already
//! deserialized, so TOML spans keep pointing at the text the operator wrote. The environment is
//! a lookup function ([`Env`]) rather than `std::env` directly, so tests provide their own.
//!
//! Every resolved value that is a secret by its source (a secret file, a variable named like a
//! password or token, the password of a URL) is registered with [`crate::redact`], which masks
//! it in everything printed from then on.
//!
//! Invariant: no error message ever contains a variable's value or a secret file's content,
//! only the variable's name or the file's path.

use std::fmt;

/// Looks up one environment variable, or with a `file:` prefix one secret file.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The prefix of a secret-file reference: `${file:/run/secrets/name}`.
pub const FILE_PREFIX: &str = "file:";

/// The real lookup: `file:/path` reads that file (one trailing `\n` or `\r\n` removed),
/// anything else is an environment variable.
pub fn lookup(name: &str) -> Option<String> {
    match name.strip_prefix(FILE_PREFIX) {
        Some(path) => std::fs::read_to_string(path).ok().map(|mut text| {
            if text.ends_with('\n') {
                text.pop();
                if text.ends_with('\r') {
                    text.pop();
                }
            }
            text
        }),
        None => std::env::var(name).ok(),
    }
}

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
    /// A secret file that cannot be read, by its path.
    SecretFile(String),
    /// A secret file path that is not absolute.
    RelativeSecretFile(String),
    Unterminated,
    InvalidName(String),
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvError::Missing(name) => write!(f, "environment variable {name} is not set"),
            EnvError::SecretFile(path) => write!(
                f,
                "secret file {path} cannot be read (missing, or not readable by this process)"
            ),
            EnvError::RelativeSecretFile(path) => write!(
                f,
                "secret file path `{path}` is not absolute; write `${{file:/full/path}}`"
            ),
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
            if let Some(path) = name.strip_prefix(FILE_PREFIX) {
                if !std::path::Path::new(path).is_absolute() {
                    errors.push(EnvError::RelativeSecretFile(path.to_string()));
                } else if let Some(found) = env(name) {
                    crate::redact::register_secret(&found);
                    value.push_str(&found);
                    from_env = true;
                } else if required {
                    errors.push(EnvError::SecretFile(path.to_string()));
                } else {
                    value.push_str(&tail[..close + 3]);
                }
            } else if !is_variable_name(name) {
                errors.push(EnvError::InvalidName(name.to_string()));
            } else if let Some(found) = env(name) {
                if crate::redact::is_secret_name(name) {
                    crate::redact::register_secret(&found);
                }
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
    if from_env && let Some(password) = crate::redact::url_password(&value) {
        crate::redact::register_secret(password);
    }
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
            "file:/run/secrets/db" => Some("pa:ss@word".into()),
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
    fn secret_files_resolve_through_the_lookup_and_are_marked_secret() {
        let expanded = expand("postgres://app:${file:/run/secrets/db}@db/x", &env, true).unwrap();
        assert_eq!(expanded.value, "postgres://app:pa:ss@word@db/x");
        assert!(expanded.from_env);
        let errors: Vec<String> = expand("${file:/run/secrets/nope}${file:secrets/db}", &env, true)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            [
                "secret file /run/secrets/nope cannot be read (missing, or not readable by this process)",
                "secret file path `secrets/db` is not absolute; write `${file:/full/path}`"
            ]
        );
    }

    #[test]
    fn the_real_lookup_reads_a_secret_file_without_its_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "t0ken-value\r\n").unwrap();
        let key = format!("{FILE_PREFIX}{}", path.display());
        assert_eq!(lookup(&key).as_deref(), Some("t0ken-value"));
        std::fs::write(&path, "two\nlines\n\n").unwrap();
        assert_eq!(
            lookup(&key).as_deref(),
            Some("two\nlines\n"),
            "only one line break goes"
        );
        assert_eq!(lookup(&format!("{FILE_PREFIX}/nonexistent/x")), None);
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
