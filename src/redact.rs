//! What conflux prints never carries a secret, and its logs carry no readable e-mail address
//! or phone number at info level and above.
//!
//! Secrets: config resolution ([`crate::config`]'s `${VAR}` and `${file:/path}` references)
//! calls [`register_secret`] for every value that is a secret by its source: a secret file, a
//! variable whose name says password, secret, token, key or credential, and the password part
//! of any URL that came from the environment. [`redact`] replaces every registered secret in a
//! text with `***`. The CLI passes its output and errors through it, and [`RedactingWriter`]
//! does the same for every log line, so a secret that reaches a message by any path (an error
//! from a driver quoting its connection string, a debug dump) is still masked.
//!
//! Personal data: [`mask_personal`] masks e-mail addresses (`j***@example.com`) and
//! international phone numbers (`+49******89`) in free text; [`RedactingWriter`] applies it to
//! log lines at INFO, WARN and ERROR, so quarantine warnings quoting raw values stay safe to
//! ship to a log service while `CONFLUX_LOG=debug` still shows the data for troubleshooting.
//!
//! Invariant: the secret list only grows during a process; values shorter than
//! [`MIN_SECRET_LEN`] are not registered, since masking every `a` or `1` would garble the
//! output without protecting anything.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::io;
use std::sync::{LazyLock, RwLock};

use regex::Regex;
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Shorter values are not treated as secrets (see the module invariant).
pub const MIN_SECRET_LEN: usize = 4;

static SECRETS: RwLock<BTreeSet<String>> = RwLock::new(BTreeSet::new());

// The patterns are literals checked by the tests; failing to compile one is a programming
// error caught by any test run, never by an operator.
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"([A-Za-z0-9._%+\-]+)@([A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,})")
        .expect("the e-mail pattern is a valid regex literal")
});
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:\+|\b00)[1-9][0-9 ()/.\-]{5,20}[0-9]")
        .expect("the phone pattern is a valid regex literal")
});

/// Remembers `value` as a secret to mask from now on.
pub fn register_secret(value: &str) {
    if value.chars().count() < MIN_SECRET_LEN {
        return;
    }
    let mut secrets = SECRETS
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    secrets.insert(value.to_string());
}

/// Whether a variable with this name holds a secret by its name.
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    [
        "PASSWORD",
        "PASSWD",
        "PASS",
        "SECRET",
        "TOKEN",
        "KEY",
        "CREDENTIAL",
        "AUTH",
    ]
    .iter()
    .any(|word| upper.contains(word))
}

/// The password of a `scheme://user:password@host` URL, if it has one.
pub fn url_password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

/// `text` with every registered secret replaced by [`MASK`], longest first so a secret that
/// contains another is masked whole.
pub fn redact(text: &str) -> Cow<'_, str> {
    let secrets = SECRETS
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !secrets.iter().any(|secret| text.contains(secret.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut ordered: Vec<&String> = secrets.iter().collect();
    ordered.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    let mut out = text.to_string();
    for secret in ordered {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), MASK);
        }
    }
    Cow::Owned(out)
}

/// `jane.doe@example.com` → `j***@example.com`.
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}{MASK}@{domain}")
        }
        None => MASK.to_string(),
    }
}

/// `+49 170 1234589` → `+49******89`: the country code and the last two digits stay, so two
/// log lines can still be told apart; every other digit is masked and the grouping dropped.
pub fn mask_phone(phone: &str) -> String {
    let digits: Vec<char> = phone.chars().filter(char::is_ascii_digit).collect();
    let prefix = if phone.starts_with('+') { "+" } else { "" };
    if digits.len() <= 4 {
        return format!("{prefix}{}", "*".repeat(digits.len()));
    }
    let head: String = digits[..2].iter().collect();
    let tail: String = digits[digits.len() - 2..].iter().collect();
    format!("{prefix}{head}{}{tail}", "*".repeat(digits.len() - 4))
}

/// `text` with e-mail addresses and international phone numbers masked.
pub fn mask_personal(text: &str) -> Cow<'_, str> {
    let emails = EMAIL.replace_all(text, |caps: &regex::Captures<'_>| mask_email(&caps[0]));
    match emails {
        Cow::Borrowed(text) => {
            PHONE.replace_all(text, |caps: &regex::Captures<'_>| mask_phone(&caps[0]))
        }
        Cow::Owned(text) => Cow::Owned(
            PHONE
                .replace_all(&text, |caps: &regex::Captures<'_>| mask_phone(&caps[0]))
                .into_owned(),
        ),
    }
}

/// A [`MakeWriter`] for the log subscriber that redacts secrets from every line and masks
/// personal data in lines at INFO and above, then hands them to the inner writer.
pub struct RedactingWriter<M> {
    inner: M,
}

impl<M> RedactingWriter<M> {
    pub fn new(inner: M) -> RedactingWriter<M> {
        RedactingWriter { inner }
    }
}

/// One log line on its way out; see [`RedactingWriter`].
pub struct RedactingLine<W: io::Write> {
    inner: W,
    mask_personal: bool,
}

impl<W: io::Write> io::Write for RedactingLine<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The fmt subscriber writes each event with one call, so a whole line is seen here;
        // text split across calls would only be masked per piece.
        let text = String::from_utf8_lossy(buf);
        let redacted = redact(&text);
        let masked = if self.mask_personal {
            Cow::Owned(mask_personal(&redacted).into_owned())
        } else {
            redacted
        };
        self.inner.write_all(masked.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for RedactingWriter<M> {
    type Writer = RedactingLine<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingLine {
            inner: self.inner.make_writer(),
            mask_personal: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        RedactingLine {
            inner: self.inner.make_writer_for(meta),
            // Levels compare by verbosity: INFO <= INFO, WARN and ERROR are less verbose.
            mask_personal: *meta.level() <= Level::INFO,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn registered_secrets_are_masked_longest_first() {
        register_secret("hunter2-redact-test");
        register_secret("hunter2-redact-test-longer");
        register_secret("abc");
        assert_eq!(
            redact("pw=hunter2-redact-test-longer and hunter2-redact-test; abc stays"),
            "pw=*** and ***; abc stays"
        );
        assert!(matches!(redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn secret_names_and_url_passwords_are_recognised() {
        for name in ["SAP_PASSWORD", "odoo_api_key", "BC_CLIENT_SECRET", "TOKEN"] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in ["SAP_BASE_URL", "SAP_USER", "CONFLUX_ROOT"] {
            assert!(!is_secret_name(name), "{name}");
        }
        assert_eq!(
            url_password("amqps://app:p%40ss@rabbit.internal:5671/%2f"),
            Some("p%40ss")
        );
        assert_eq!(url_password("postgres://app@db/x"), None);
        assert_eq!(url_password("https://example.com/a:b@c"), None);
    }

    #[test]
    fn emails_and_phone_numbers_are_masked_but_dates_and_counts_are_not() {
        assert_eq!(
            mask_personal(
                "quarantined c9 (jane.doe@example.com, +49 170 1234589, 0049-30-1234567): \
                 line 3 at 2024-05-01T10:00:00Z, 12345 records"
            ),
            "quarantined c9 (j***@example.com, +49********89, 00*********67): \
             line 3 at 2024-05-01T10:00:00Z, 12345 records"
        );
        assert_eq!(mask_phone("+4917012345"), "+49******45");
        assert_eq!(mask_email("x@y.de"), "x***@y.de");
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn log_lines_are_redacted_and_masked_at_info_and_above_only() {
        register_secret("s3cr3t-in-a-log-line");
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::DEBUG)
            .with_ansi(false)
            .with_writer(RedactingWriter::new(move || sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                raw = "anna@example.com,+4917012345",
                "record quarantined; connection amqp://app:s3cr3t-in-a-log-line@rabbit failed"
            );
            tracing::debug!(email = "otto@example.com", "debug keeps the data");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("s3cr3t-in-a-log-line"), "{text}");
        assert!(text.contains("amqp://app:***@rabbit"), "{text}");
        assert!(text.contains("a***@example.com,+49******45"), "{text}");
        assert!(!text.contains("anna@example.com"), "{text}");
        assert!(text.contains("otto@example.com"), "{text}");
    }
}
