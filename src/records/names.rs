//! Model and alias names, checked once where they enter (a request's path, query or body, a job
//! spec): 1–64 of `a-z 0-9 - _ .`, starting with a letter or digit. The rule, its message and the
//! pattern the OpenAPI document publishes come from here alone.
use std::fmt;

use crate::error::{Error, ErrorCode, Result};

/// The rule as a regular expression, for the OpenAPI document.
pub const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9._-]{0,63}$";

/// The end of every refusal's message; `api::parse_json` and the path and query extractors
/// answer a deserialisation error that carries it with `invalid_name`.
pub const INVALID_NAME: &str = "is invalid: use 1-64 of a-z, 0-9, '-', '_', '.', starting with a letter or digit";

/// Checks `name` as the name of a `kind` ("model", "alias").
pub fn check(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::new(ErrorCode::InvalidName, format!("{kind} name {name:?} {INVALID_NAME}")))
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(name: impl Into<String>) -> Result<Self> {
                let name = name.into();
                check($kind, &name)?;
                Ok(Self(name))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(name: String) -> Result<Self> {
                Self::new(name)
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(name: &str) -> Result<Self> {
                Self::new(name)
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some(NAME_PATTERN))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

name_type!(
    /// A model's name.
    ModelName,
    "model"
);
name_type!(
    /// An alias's name (`production`, `staging`, …).
    AliasName,
    "alias"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_one_rule_and_pattern() {
        for ok in ["flowers102", "a", "m-1_2.3", &"x".repeat(64)] {
            assert!(ModelName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Bad", "-x", ".x", "a b", "ä", &"x".repeat(65)] {
            let e = AliasName::new(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidName, "{bad}");
            assert!(e.message.ends_with(INVALID_NAME));
        }
        let e = serde_json::from_str::<ModelName>("\"Bad Name\"").unwrap_err();
        assert!(e.to_string().contains(INVALID_NAME), "{e}");
        assert_eq!(serde_json::to_string(&ModelName::new("m").unwrap()).unwrap(), "\"m\"");
    }
}
