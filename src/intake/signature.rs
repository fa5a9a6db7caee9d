//! Thinkific's webhook signature: the lowercase hex HMAC-SHA256 of the raw
//! body, checked against every configured key in constant time.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::secrets::{KeyScope, WebhookKeys};

/// Signs `body` the way Thinkific does: lowercase hex HMAC-SHA256.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The scope of the key that signed `body`, if any did. `signature` is
/// checked against every key, each in constant time.
pub(super) fn signer<'k>(keys: &'k WebhookKeys, body: &[u8], signature: &str) -> Option<&'k KeyScope> {
    let expected = hex::decode(signature.trim()).ok()?;
    keys.iter().fold(None, |matched, (key, scope)| {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
        mac.update(body);
        // No early exit: the answer takes as long whichever key matched.
        let this_key = mac.verify_slice(&expected).is_ok().then_some(scope);
        matched.or(this_key)
    })
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
        assert_eq!(signer(&keys, body, &sign(b"old", body)), Some(&KeyScope::AnySchool));
        assert_eq!(signer(&keys, body, &sign(b"new", body)), Some(&KeyScope::AnySchool));
        assert_eq!(signer(&keys, body, &sign(b"new", body).to_uppercase()), Some(&KeyScope::AnySchool));
        assert_eq!(signer(&keys, body, &sign(b"key-a", body)), Some(&KeyScope::School(school("school-a"))));
        assert_eq!(signer(&keys, body, &sign(b"key=b", body)), Some(&KeyScope::School(school("school-b"))));
        assert_eq!(signer(&keys, body, &sign(b"other", body)), None);
        assert_eq!(signer(&keys, body, "not hex"), None);
        assert_eq!(signer(&keys, b"tampered", &sign(b"old", body)), None);
    }
}
