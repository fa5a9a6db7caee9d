//! The one validated form of the identifiers that name things across the
//! fleet: tenant (school) ids and event ids.
//!
//! Both end up inside Redis key names and Postgres index entries, so they
//! are short (at most [`MAX_ID_LEN`] bytes) and drawn from a safe set of
//! characters: ASCII letters, digits, `-`, `_` and `.`. None of `:`, `*`,
//! `?`, `[` or a control character can appear, so the parts of a key can
//! never run into each other and an id is never a glob pattern.

use std::fmt;

/// The longest tenant or event id accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Why a text is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("`{0}` is empty")]
    Empty(&'static str),
    #[error("`{0}` is longer than {MAX_ID_LEN} characters")]
    TooLong(&'static str),
    #[error("`{0}` may only hold letters, digits, `-`, `_` and `.`")]
    BadCharacter(&'static str),
}

/// Checks `text` as the id called `name` (named in the error).
pub fn check_id(name: &'static str, text: &str) -> Result<(), IdError> {
    if text.is_empty() {
        return Err(IdError::Empty(name));
    }
    if text.len() > MAX_ID_LEN {
        return Err(IdError::TooLong(name));
    }
    if !text.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.')) {
        return Err(IdError::BadCharacter(name));
    }
    Ok(())
}

/// A school's id, validated (see the module).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(text: &str) -> Result<Self, IdError> {
        check_id("tenant_id", text)?;
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for TenantId {
    type Err = IdError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_ids_pass() {
        for good in ["184532", "watercolor-school", "a.b_c-D9", &"x".repeat(MAX_ID_LEN)] {
            assert!(check_id("tenant_id", good).is_ok(), "{good}");
        }
    }

    #[test]
    fn unsafe_ids_are_refused() {
        assert_eq!(check_id("tenant_id", ""), Err(IdError::Empty("tenant_id")));
        assert_eq!(check_id("id", &"1".repeat(MAX_ID_LEN + 1)), Err(IdError::TooLong("id")));
        for bad in ["a:b", "*", "a b", "a\0b", "ü", "a?", "[x]", "a/b", "1.2e+29"] {
            assert_eq!(check_id("tenant_id", bad), Err(IdError::BadCharacter("tenant_id")), "{bad:?}");
        }
    }
}
