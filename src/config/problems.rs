//! What a configuration problem looks like, and how problems are collected and shown.
//!
//! Validation never stops at the first problem: each one is recorded with the key it is about,
//! a usable fallback is taken, and validation goes on, so one run names every mistake in the file.
//! No message ever contains a secret's value, not even one typed where another type was expected.

use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A configuration problem, with the key it concerns and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

/// Why a configuration could not be loaded. Printed as one message that lists every problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "config file {path} does not exist: create it (config/example.toml documents every key) or pass --config PATH"
    )]
    Missing { path: PathBuf },
    #[error("{}", render_problems(.path, .problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<ConfigProblem>,
    },
}

pub(super) fn render_problems(path: &Path, problems: &[ConfigProblem]) -> String {
    let mut out = format!("invalid configuration in {}:", path.display());
    for problem in problems {
        out.push_str(&format!("\n  - {}: {}", problem.key, problem.message));
    }
    out
}

/// The problems found so far, in the order they were found.
#[derive(Debug, Default)]
pub(super) struct Problems(Vec<ConfigProblem>);

impl Problems {
    pub(super) fn report(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// The problems of one table of the file, e.g. `mailboxes[2]` or `identities.app`.
    pub(super) fn within(&mut self, table: String) -> Table<'_> {
        Table {
            prefix: table,
            problems: self,
        }
    }

    /// `value` when nothing was found, else every problem.
    pub(super) fn into_result<T>(self, value: T) -> Result<T, Vec<ConfigProblem>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }
}

/// Reports problems of one table by the key inside it (`dispose` becomes `mailboxes[0].dispose`).
pub(super) struct Table<'a> {
    prefix: String,
    problems: &'a mut Problems,
}

impl Table<'_> {
    pub(super) fn key(&self, field: &str) -> String {
        format!("{}.{field}", self.prefix)
    }

    pub(super) fn report(&mut self, field: &str, message: impl Into<String>) {
        let key = self.key(field);
        self.problems.report(key, message);
    }

    /// Parses a key with a closed set of values: `default` when the key is absent; a value outside
    /// the set is reported (the parse error names the allowed values) and `default` is taken, so
    /// that validation goes on to find the other problems.
    pub(super) fn choice<T: FromStr<Err = String>>(
        &mut self,
        field: &str,
        text: Option<&str>,
        default: T,
    ) -> T {
        match text.map(str::parse) {
            None => default,
            Some(Ok(value)) => value,
            Some(Err(message)) => {
                self.report(field, message);
                default
            }
        }
    }
}

/// The allowed values of a closed set as messages list them: `"seen", "move" or "delete"`.
pub(super) fn alternatives(words: &[&str]) -> String {
    let quoted: Vec<String> = words.iter().map(|word| format!("\"{word}\"")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, init)) => format!("{} or {last}", init.join(", ")),
    }
}

/// Turns figment's errors into problems without ever echoing the offending value: a mistyped
/// secret would otherwise be printed.
pub(super) fn figment_problems(error: figment::Error) -> Vec<ConfigProblem> {
    use figment::error::Kind;
    error
        .into_iter()
        .map(|e| {
            let key = if e.path.is_empty() {
                "(top level)".to_string()
            } else {
                e.path.join(".")
            };
            let message = match &e.kind {
                Kind::UnknownField(field, expected) => {
                    // Some providers (figment's `Serialized`) put the field in the path already.
                    let key_path = if e.path.last() == Some(field) {
                        e.path.join(".")
                    } else if e.path.is_empty() {
                        field.to_string()
                    } else {
                        format!("{}.{}", e.path.join("."), field)
                    };
                    return ConfigProblem {
                        key: key_path,
                        message: format!("unknown key; expected one of: {}", expected.join(", ")),
                    };
                }
                Kind::MissingField(field) => {
                    let key_path = if e.path.is_empty() {
                        field.to_string()
                    } else {
                        format!("{}.{}", e.path.join("."), field)
                    };
                    return ConfigProblem {
                        key: key_path,
                        message: "missing; this key is required (see config/example.toml)".into(),
                    };
                }
                Kind::InvalidType(actual, expected) => {
                    format!("expected {expected}, found {}", actual_kind(actual))
                }
                Kind::InvalidValue(actual, expected) => {
                    format!("expected {expected}, found {}", actual_kind(actual))
                }
                Kind::UnknownVariant(_, expected) => {
                    format!("unknown value; expected one of: {}", expected.join(", "))
                }
                Kind::DuplicateField(field) => format!("key `{field}` is given twice"),
                Kind::InvalidLength(len, expected) => {
                    format!("expected {expected}, found {len} elements")
                }
                Kind::Message(message) => message.clone(),
                Kind::ISizeOutOfRange(_) | Kind::USizeOutOfRange(_) => "number out of range".into(),
                Kind::Unsupported(actual) => format!("unsupported value: {}", actual_kind(actual)),
                Kind::UnsupportedKey(actual, _) => {
                    format!("unsupported key type: {}", actual_kind(actual))
                }
            };
            let message = match e.metadata.as_ref().map(|m| m.name.as_ref()) {
                Some(source) if source.contains("environment") => {
                    format!("{message} (set by an environment variable)")
                }
                _ => message,
            };
            ConfigProblem { key, message }
        })
        .collect()
}

/// The kind of a value, never the value itself.
fn actual_kind(actual: &figment::error::Actual) -> &'static str {
    use figment::error::Actual;
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Unit => "nothing",
        Actual::Option => "an optional value",
        Actual::NewtypeStruct => "a newtype",
        Actual::Seq => "a list",
        Actual::Map => "a table",
        Actual::Enum => "an enum",
        Actual::UnitVariant | Actual::NewtypeVariant | Actual::TupleVariant => "an enum variant",
        Actual::StructVariant => "a struct variant",
        Actual::Other(_) => "another type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternatives_are_listed_as_messages_say_them() {
        assert_eq!(alternatives(&["seen"]), "\"seen\"");
        assert_eq!(
            alternatives(&["normal", "shadow"]),
            "\"normal\" or \"shadow\""
        );
        assert_eq!(
            alternatives(&["seen", "move", "delete"]),
            "\"seen\", \"move\" or \"delete\""
        );
    }

    #[derive(Debug, PartialEq)]
    struct Even(u32);

    impl FromStr for Even {
        type Err = String;
        fn from_str(text: &str) -> Result<Even, String> {
            match text.parse::<u32>() {
                Ok(n) if n % 2 == 0 => Ok(Even(n)),
                _ => Err("must be an even number".into()),
            }
        }
    }

    #[test]
    fn a_bad_choice_is_reported_under_its_key_and_the_default_taken() {
        let mut problems = Problems::default();
        let mut table = problems.within("mailboxes[1]".into());
        assert_eq!(table.choice("a", None, Even(0)), Even(0));
        assert_eq!(table.choice("b", Some("4"), Even(0)), Even(4));
        assert_eq!(table.choice("c", Some("3"), Even(0)), Even(0));
        assert_eq!(table.choice("d", Some("x"), Even(2)), Even(2));
        let problems = problems.into_result(()).unwrap_err();
        assert_eq!(
            problems,
            [
                ConfigProblem {
                    key: "mailboxes[1].c".into(),
                    message: "must be an even number".into(),
                },
                ConfigProblem {
                    key: "mailboxes[1].d".into(),
                    message: "must be an even number".into(),
                },
            ]
        );
        assert!(Problems::default().into_result(7).is_ok());
    }
}
