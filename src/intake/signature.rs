//! Thinkific's webhook signature: the lowercase hex HMAC-SHA256 of the raw
//! body, checked against the configured keys, each in constant time.
//!
//! An HMAC hashes the whole body once per key, so a request with a wrong
//! signature must not cost one hash per school. The keys tried are those
//! for any school and those of the school the request names (its path
//! `/webhooks/thinkific/<tenant>`, else its body's `tenant_id`): unsigned,
//! only a hint of where to look, never what decides the tenant. Only when
//! the fleet has at most [`FEW_KEYS`] keys in all are the others tried too.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use fleet_jobs::TenantId;

use crate::secrets::{KeyScope, WebhookKeys};

/// Up to this many keys in all, every key is tried: a signature matches
/// whatever school the request names (and a mismatch gets its 403).
pub(crate) const FEW_KEYS: usize = 16;

/// Signs `body` the way Thinkific does: lowercase hex HMAC-SHA256.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The scope of the key that signed `body`, if any did. `signature` is
/// checked against the keys for any school and those of `named`; then,
/// with [`FEW_KEYS`] keys or fewer in all, against the rest. At most that
/// many hashes, however many schools there are.
pub(super) fn signer<'k>(
    keys: &'k WebhookKeys,
    body: &[u8],
    signature: &str,
    named: Option<&TenantId>,
) -> Option<&'k KeyScope> {
    let expected = hex::decode(signature.trim()).ok()?;
    let first = |scope: &KeyScope| match scope {
        KeyScope::AnySchool => true,
        KeyScope::School(school) => Some(school) == named,
    };
    let matched_among = |chosen: &dyn Fn(&KeyScope) -> bool| {
        keys.iter().filter(|(_, scope)| chosen(scope)).fold(None, |matched, (key, scope)| {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
            mac.update(body);
            // No early exit: the answer takes as long whichever key matched.
            let this_key = mac.verify_slice(&expected).is_ok().then_some(scope);
            matched.or(this_key)
        })
    };
    matched_among(&first).or_else(|| (keys.len() <= FEW_KEYS).then(|| matched_among(&|scope| !first(scope))).flatten())
}

/// The school a body names (`tenant_id`), read without trusting it: where
/// to look for its key.
pub(super) fn named_school(body: &[u8]) -> Option<TenantId> {
    #[derive(serde::Deserialize)]
    struct Named {
        tenant_id: Option<serde_json::Value>,
    }
    let named: Named = serde_json::from_slice(body).ok()?;
    let text = match named.tenant_id? {
        serde_json::Value::String(text) => text,
        serde_json::Value::Number(number) => number.to_string(),
        _ => return None,
    };
    TenantId::parse(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_jobs::TenantId;

    fn school(id: &str) -> TenantId {
        TenantId::parse(id).expect("a valid id")
    }

    #[test]
    fn the_signer_is_whichever_configured_key_matched() {
        let keys = WebhookKeys::new(
            Some("old,new".parse().expect("keys")),
            Some("school-a=key-a,school-b=key=b".parse().expect("school keys")),
        )
        .expect("keys");
        let body = br#"{"id":"1"}"#;
        assert_eq!(signer(&keys, body, &sign(b"old", body), None), Some(&KeyScope::AnySchool));
        assert_eq!(signer(&keys, body, &sign(b"new", body), None), Some(&KeyScope::AnySchool));
        assert_eq!(signer(&keys, body, &sign(b"new", body).to_uppercase(), None), Some(&KeyScope::AnySchool));
        assert_eq!(signer(&keys, body, &sign(b"key-a", body), None), Some(&KeyScope::School(school("school-a"))));
        assert_eq!(signer(&keys, body, &sign(b"key=b", body), None), Some(&KeyScope::School(school("school-b"))));
        assert_eq!(signer(&keys, body, &sign(b"other", body), None), None);
        assert_eq!(signer(&keys, body, "not hex", None), None);
        assert_eq!(signer(&keys, b"tampered", &sign(b"old", body), None), None);
    }

    /// With many schools, a request tries only the keys for any school and
    /// those of the school it names: a school's key signing a body that
    /// names no school, or another, is not found (and costs nothing more).
    #[test]
    fn with_many_schools_only_the_named_schools_keys_are_tried() {
        let pairs: Vec<String> = (0..100).map(|n| format!("school-{n}=key-{n}")).collect();
        let keys = WebhookKeys::new(Some("any".parse().expect("keys")), Some(pairs.join(",").parse().expect("pairs")))
            .expect("keys");
        let body = br#"{"id":"1"}"#;
        let named = school("school-42");
        assert_eq!(signer(&keys, body, &sign(b"key-42", body), Some(&named)), Some(&KeyScope::School(named.clone())));
        assert_eq!(signer(&keys, body, &sign(b"any", body), Some(&named)), Some(&KeyScope::AnySchool));
        assert_eq!(signer(&keys, body, &sign(b"any", body), None), Some(&KeyScope::AnySchool));
        assert_eq!(signer(&keys, body, &sign(b"key-42", body), None), None);
        assert_eq!(signer(&keys, body, &sign(b"key-42", body), Some(&school("school-7"))), None);
        assert_eq!(named_school(br#"{"tenant_id":"school-42","id":"1"}"#), Some(named));
        assert_eq!(named_school(br#"{"tenant_id":42}"#), Some(school("42")));
        assert_eq!(named_school(b"not json"), None);
    }
}
