//! Secrets the fleet is given: the webhook signing keys, the read API's
//! bearer tokens, the operator console's token, the revalidation secret.
//!
//! Each is wrapped in a type whose `Debug` never prints it, parsed by
//! [`SecretValueParser`] (whose errors never quote the value) and compared
//! in constant time where it is checked. URLs, which may carry passwords,
//! are [`crate::urls`]'s.

use std::ffi::OsStr;
use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use fleet_jobs::TenantId;

/// Why a set of webhook keys cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error(
        "no webhook signing key: set THINKIFIC_WEBHOOK_SECRET (keys valid for any school; bodies must name \
         their tenant_id) or THINKIFIC_SCHOOL_KEYS (`school=key` pairs), or both"
    )]
    NoWebhookKey,
    #[error(
        "one webhook key is given two scopes (in both THINKIFIC_WEBHOOK_SECRET and THINKIFIC_SCHOOL_KEYS, \
         or for two schools); give each key one scope"
    )]
    AmbiguousWebhookKey,
}

/// A clap value parser for a value that may hold a secret: its error names
/// the setting and what is wrong, never the value. `T::from_str` must not
/// quote its input either.
pub struct SecretValueParser<T>(PhantomData<fn() -> T>);

impl<T> SecretValueParser<T> {
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T> Default for SecretValueParser<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for SecretValueParser<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<T> TypedValueParser for SecretValueParser<T>
where
    T: FromStr<Err = String> + Clone + Send + Sync + 'static,
{
    type Value = T;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &OsStr) -> Result<T, clap::Error> {
        let setting = arg.map_or_else(|| "a setting".to_owned(), setting_name);
        let reason = match value.to_str() {
            Some(text) => match text.parse() {
                Ok(parsed) => return Ok(parsed),
                Err(reason) => reason,
            },
            None => "not UTF-8".to_owned(),
        };
        let message = format!("invalid {setting}: {reason} (the value is not shown: it may hold a secret)");
        Err(cmd.clone().error(ErrorKind::ValueValidation, message))
    }
}

/// `DATABASE_URL (--database-url)`: the names an operator sets it by.
fn setting_name(arg: &clap::Arg) -> String {
    let env = arg.get_env().map(|env| env.to_string_lossy().into_owned());
    let flag = arg.get_long().map(|long| format!("--{long}"));
    match (env, flag) {
        (Some(env), Some(flag)) => format!("{env} ({flag})"),
        (Some(name), None) | (None, Some(name)) => name,
        (None, None) => arg.get_id().to_string(),
    }
}

/// A bearer token or shared secret; never printed.
#[derive(Clone)]
pub struct ApiToken(String);

impl ApiToken {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for ApiToken {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim().is_empty() {
            return Err("must not be empty".into());
        }
        Ok(Self(text.trim().to_owned()))
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// `FLEET_CONSOLE_TOKEN`: what an operator signs in to the console with;
/// never printed. At least [`ConsoleToken::MIN_LEN`] characters: it opens
/// replay and purge, so it must not be guessable.
#[derive(Clone)]
pub struct ConsoleToken(String);

impl ConsoleToken {
    pub(crate) const MIN_LEN: usize = 16;

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for ConsoleToken {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let token = text.trim();
        if token.chars().count() < Self::MIN_LEN {
            return Err(format!("must be at least {} characters (e.g. `openssl rand -hex 24`)", Self::MIN_LEN));
        }
        Ok(Self(token.to_owned()))
    }
}

impl fmt::Debug for ConsoleToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// `FLEET_API_TOKENS`: each token with the school it may read. A school may
/// have several tokens (rotation) and a token several schools.
#[derive(Clone, Default)]
pub struct SchoolTokens(Vec<(fleet_jobs::TenantId, ApiToken)>);

impl SchoolTokens {
    pub fn pairs(&self) -> &[(fleet_jobs::TenantId, ApiToken)] {
        &self.0
    }
}

impl FromStr for SchoolTokens {
    type Err = String;
    /// Splits each pair on its first `=`. An error names the pair by its
    /// position, never by its text, so a token cannot reach a message.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut pairs = Vec::new();
        for (index, pair) in text.split(',').map(str::trim).enumerate().filter(|(_, pair)| !pair.is_empty()) {
            let position = index + 1;
            let (school, token) =
                pair.split_once('=').ok_or_else(|| format!("item {position} is not of the form school=token"))?;
            let school = fleet_jobs::TenantId::parse(school.trim())
                .map_err(|err| format!("item {position}: the school is not a valid tenant id ({err})"))?;
            let token = token.parse::<ApiToken>().map_err(|_| format!("item {position}: the token is empty"))?;
            pairs.push((school, token));
        }
        Ok(Self(pairs))
    }
}

impl fmt::Debug for SchoolTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SchoolTokens([REDACTED; {} pair(s)])", self.0.len())
    }
}

/// The keys that may sign a webhook. Several keys let one be rotated
/// without dropping deliveries signed with the other.
#[derive(Clone)]
pub struct WebhookSecrets(Vec<Vec<u8>>);

impl WebhookSecrets {
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().map(Vec::as_slice)
    }

    /// The first key: the one the fleet itself signs with (in `fleet dev`).
    pub(crate) fn signing_key(&self) -> &[u8] {
        self.0.first().map(Vec::as_slice).unwrap_or_default()
    }
}

impl FromStr for WebhookSecrets {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // Empty items between commas are skipped rather than reported, so an
        // error message can never quote a key.
        let keys: Vec<Vec<u8>> =
            text.split(',').map(str::trim).filter(|key| !key.is_empty()).map(|key| key.as_bytes().to_vec()).collect();
        if keys.is_empty() {
            return Err("no key given: set one key, or several separated by commas".into());
        }
        Ok(Self(keys))
    }
}

impl fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookSecrets([REDACTED; {} key(s)])", self.0.len())
    }
}

/// Webhook keys bound to one school each (`THINKIFIC_SCHOOL_KEYS`): a body
/// signed with one belongs to that school.
#[derive(Clone)]
pub struct SchoolKeys(Vec<(TenantId, Vec<u8>)>);

impl FromStr for SchoolKeys {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // An item is named by its position, never quoted: it holds a key.
        let mut pairs = Vec::new();
        for (index, item) in text.split(',').enumerate() {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let position = index + 1;
            // The first `=` ends the school: a school id holds none, a key may.
            let (school, key) = item.split_once('=').ok_or_else(|| format!("item {position} is not `school=key`"))?;
            let school = TenantId::parse(school.trim()).map_err(|err| format!("item {position}: bad school: {err}"))?;
            let key = key.trim();
            if key.is_empty() {
                return Err(format!("item {position}: the key is empty"));
            }
            pairs.push((school, key.as_bytes().to_vec()));
        }
        if pairs.is_empty() {
            return Err("no `school=key` pair given: set one, or several separated by commas".into());
        }
        Ok(Self(pairs))
    }
}

impl fmt::Debug for SchoolKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SchoolKeys([REDACTED; {} key(s)])", self.0.len())
    }
}

/// For whom a webhook key signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyScope {
    /// A key of `THINKIFIC_WEBHOOK_SECRET`, valid for every school: the
    /// signed body must name its `tenant_id`.
    AnySchool,
    /// A key of `THINKIFIC_SCHOOL_KEYS`: what it signs belongs to this school.
    School(TenantId),
}

/// Every key that may sign a webhook, each with its scope.
#[derive(Clone)]
pub struct WebhookKeys(Vec<(Vec<u8>, KeyScope)>);

impl WebhookKeys {
    /// Joins the keys for any school and the keys bound to a school. At
    /// least one key is required, and a key may have only one scope: the
    /// key that signed a body must decide its school without doubt.
    pub fn new(any_school: Option<WebhookSecrets>, schools: Option<SchoolKeys>) -> Result<Self, KeysError> {
        let any_school = any_school.into_iter().flat_map(|secrets| secrets.0).map(|key| (key, KeyScope::AnySchool));
        let schools = schools.into_iter().flat_map(|keys| keys.0).map(|(school, key)| (key, KeyScope::School(school)));
        let keys: Vec<(Vec<u8>, KeyScope)> = any_school.chain(schools).collect();
        if keys.is_empty() {
            return Err(KeysError::NoWebhookKey);
        }
        let two_scopes = keys.iter().enumerate().any(|(index, (key, scope))| {
            keys[..index].iter().any(|(earlier, earlier_scope)| earlier == key && earlier_scope != scope)
        });
        if two_scopes {
            return Err(KeysError::AmbiguousWebhookKey);
        }
        Ok(Self(keys))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &KeyScope)> {
        self.0.iter().map(|(key, scope)| (key.as_slice(), scope))
    }

    /// How many keys there are, in every scope.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never: a `WebhookKeys` has at least one key.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `key` is one of the keys, in any scope.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.0.iter().any(|(configured, _)| configured == key)
    }
}

impl fmt::Debug for WebhookKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookKeys([REDACTED; {} key(s)])", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug() {
        let secrets: WebhookSecrets = "old-key, new-key".parse().expect("two keys");
        assert_eq!(secrets.keys().count(), 2);
        let shown = format!("{secrets:?}");
        assert!(!shown.contains("old-key") && !shown.contains("new-key"), "{shown}");
        assert!(" , ".parse::<WebhookSecrets>().is_err());
    }

    #[test]
    fn school_keys_split_on_the_first_equals_sign() {
        let keys: SchoolKeys = " 184532=k=ey==, ,watercolor-school = other ,".parse().expect("two pairs");
        assert_eq!(keys.0.len(), 2);
        assert_eq!((keys.0[0].0.as_str(), keys.0[0].1.as_slice()), ("184532", b"k=ey==".as_slice()));
        assert_eq!((keys.0[1].0.as_str(), keys.0[1].1.as_slice()), ("watercolor-school", b"other".as_slice()));
        let shown = format!("{keys:?}");
        assert!(!shown.contains("k=ey") && !shown.contains("other"), "{shown}");
    }

    #[test]
    fn school_key_refusals_never_quote_an_item() {
        for bad in
            ["secret-without-school", "a:b=secret", "=secret", "school=", ",", &format!("{}=secret", "s".repeat(65))]
        {
            let refusal = bad.parse::<SchoolKeys>().err().unwrap_or_else(|| panic!("{bad:?} was accepted"));
            assert!(!refusal.contains("secret") && !refusal.contains("a:b"), "{refusal}");
        }
    }

    #[test]
    fn webhook_keys_need_one_key_and_one_scope_per_key() {
        let any = |text: &str| Some(text.parse::<WebhookSecrets>().expect("keys"));
        let bound = |text: &str| Some(text.parse::<SchoolKeys>().expect("school keys"));
        assert!(matches!(WebhookKeys::new(None, None), Err(KeysError::NoWebhookKey)));
        let keys = WebhookKeys::new(any("k1,k2"), bound("a=k3,a=k4,b=k5")).expect("valid");
        assert_eq!(keys.iter().count(), 5);
        assert!(keys.contains(b"k4") && !keys.contains(b"k6"));
        assert!(!format!("{keys:?}").contains("k1"));
        assert!(WebhookKeys::new(any("k1,k1"), bound("a=k2,a=k2")).is_ok(), "a repeated key keeps its scope");
        for (any_school, schools) in [(any("k1"), bound("a=k1")), (None, bound("a=k1,b=k1"))] {
            assert!(matches!(WebhookKeys::new(any_school, schools), Err(KeysError::AmbiguousWebhookKey)));
        }
    }

    #[test]
    fn school_tokens_split_on_the_first_equals_sign_and_never_show() {
        let tokens: SchoolTokens = "184532=abc=def, other=abc,184532=second".parse().expect("three pairs");
        let pairs: Vec<(&str, &str)> =
            tokens.pairs().iter().map(|(school, token)| (school.as_str(), token.expose())).collect();
        assert_eq!(pairs, [("184532", "abc=def"), ("other", "abc"), ("184532", "second")]);
        assert!(!format!("{tokens:?}").contains("abc"));
        assert!("".parse::<SchoolTokens>().expect("none").pairs().is_empty());
        for bad in ["s3cret-no-equals-sign", "a:b=s3cret", "=s3cret", "school=", &format!("{}=s3cret", "x".repeat(65))]
        {
            let err = bad.parse::<SchoolTokens>().expect_err(bad);
            assert!(!err.contains("s3cret"), "{bad}: {err}");
        }
    }
}
