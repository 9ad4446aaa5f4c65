//! Tenant API keys: `tly_<key id>_<secret>`. The key id is public (listings,
//! logs, revoking); the whole key is shown once when it is made and only its
//! SHA-256 is stored, so a leaked database does not leak working keys.

use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::{Digest, Sha256};

const PREFIX: &str = "tly_";

/// A key just made: shown once, then only `key_id` and `hash` remain.
pub struct NewKey {
    pub key_id: String,
    pub key: String,
    pub hash: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

fn random_alphanumeric(len: usize) -> String {
    rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A new random key: a 12-character id and a 43-character secret (over 250
/// bits), from the operating system's random source.
pub fn generate() -> NewKey {
    let key_id = random_alphanumeric(12).to_ascii_lowercase();
    let key = format!("{PREFIX}{key_id}_{}", random_alphanumeric(43));
    let hash = hash(&key);
    NewKey { key_id, key, hash }
}

/// Hex SHA-256 of a whole key, as stored.
pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The key in an `Authorization: Bearer <key>` header, if it looks like one.
pub fn from_authorization(header: Option<&str>) -> Option<&str> {
    let (scheme, key) = header?.trim().split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && key.starts_with(PREFIX)).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_hash_to_what_is_stored() {
        let (a, b) = (generate(), generate());
        assert_ne!(a.key, b.key);
        assert!(a.key.starts_with(&format!("tly_{}_", a.key_id)));
        assert_eq!(a.key.len(), 4 + 12 + 1 + 43);
        assert_eq!(hash(&a.key), a.hash);
        assert_eq!(a.hash.len(), 64);
        assert!(!format!("{a:?}").contains(&a.key));
    }

    #[test]
    fn bearer_headers_are_read_strictly() {
        assert_eq!(
            from_authorization(Some("Bearer tly_abc_def")),
            Some("tly_abc_def")
        );
        assert_eq!(
            from_authorization(Some("bearer  tly_abc_def ")),
            Some("tly_abc_def")
        );
        assert_eq!(from_authorization(Some("Basic tly_abc_def")), None);
        assert_eq!(from_authorization(Some("Bearer sk_live_123")), None);
        assert_eq!(from_authorization(Some("Bearer")), None);
        assert_eq!(from_authorization(None), None);
    }
}
