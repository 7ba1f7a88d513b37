//! Validated model names and versions: the only way a request's words reach a store key.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// A model name: `^[a-z0-9][a-z0-9-]{0,62}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ModelName(String);

/// A version or alias: `^[0-9A-Za-z._-]{1,64}$`, and never `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Version(String);

/// A name that breaks the naming rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {rule}")]
pub struct NameError {
    kind: &'static str,
    value: String,
    rule: &'static str,
}

impl ModelName {
    /// Parses and validates a model name.
    pub fn parse(value: &str) -> Result<Self, NameError> {
        let bytes = value.as_bytes();
        let valid = (1..=63).contains(&bytes.len())
            && bytes[0] != b'-'
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if valid {
            Ok(Self(value.to_owned()))
        } else {
            Err(NameError {
                kind: "model name",
                value: truncate(value),
                rule: "use 1-63 of a-z, 0-9 and '-', not starting with '-'",
            })
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Version {
    /// Parses and validates a version or alias.
    pub fn parse(value: &str) -> Result<Self, NameError> {
        let bytes = value.as_bytes();
        let valid = (1..=64).contains(&bytes.len())
            && value != "."
            && value != ".."
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b));
        if valid {
            Ok(Self(value.to_owned()))
        } else {
            Err(NameError {
                kind: "version",
                value: truncate(value),
                rule: "use 1-64 of A-Z, a-z, 0-9, '.', '_' and '-', not '.' or '..'",
            })
        }
    }

    /// The version.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number, for versions that are numbers (ordering and "next version").
    pub fn number(&self) -> Option<u64> {
        self.0.parse().ok()
    }
}

/// Error values quote at most this much of what they refuse.
fn truncate(value: &str) -> String {
    value.chars().take(80).collect()
}

macro_rules! name_impls {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
        impl std::str::FromStr for $t {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }
    };
}
name_impls!(ModelName);
name_impls!(Version);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_follow_the_design_rule() {
        for ok in ["digits", "a", "resnet-50", "0abc"] {
            assert!(ModelName::parse(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            "-x",
            "Digits",
            "a_b",
            "a/b",
            "..",
            "../etc",
            "/abs",
            "a b",
            long.as_str(),
        ] {
            assert!(ModelName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions_refuse_path_traversal() {
        for ok in ["1", "production", "v1.2_rc-3", "..."] {
            assert!(Version::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "../1", "1/2", "/1", "a\\b", "\u{e9}"] {
            assert!(Version::parse(bad).is_err(), "{bad}");
        }
    }
}
