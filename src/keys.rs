//! API keys: the configured keys of `[[security.keys]]` (each stored as the
//! SHA-256 of the key, never the key), hashing a key, and finding which
//! configured key a request presented. The presented key is hashed and
//! compared with every configured hash in constant time (`subtle`), so
//! neither the answer time nor an early exit tells how much of a guess was
//! right. Knows nothing of HTTP: `api::auth` reads the headers and answers
//! 401/403; `api::rate_limit` keeps a bucket per key.

use crate::config::KeyConfig;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// What a key may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every route: the admin routes and, as a client, the client routes.
    Admin,
    /// The client routes: `/v1/recommend`, `/v1/events`, `/v1/stream`,
    /// `/v1/features/item/{id}`.
    Client,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Client => "client",
        }
    }
}

/// Errors in `[[security.keys]]`; each names the entry.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("security.keys[{index}]: `name` must be 1 to 64 letters, digits, '-', '_' or '.'")]
    BadName { index: usize },
    #[error(
        "security.keys[{index}] ({name}): `sha256` must be 64 hex digits, the SHA-256 of the key \
         (`nextbest keys hash`), not the key itself"
    )]
    BadHash { index: usize, name: String },
    #[error("security.keys: the name `{name}` is used by two keys")]
    DuplicateName { name: String },
    #[error("security.keys: key {first} and key {second} have the same sha256")]
    DuplicateHash { first: String, second: String },
    #[error("security.keys[{index}] ({name}): `per_second` must be a finite number >= 0")]
    BadRate { index: usize, name: String },
}

/// One configured key.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// Its place in the ring (rate limiters are kept by it).
    pub index: usize,
    /// Its name, for logs and metric labels (never the key).
    pub name: Arc<str>,
    pub role: Role,
    /// Overrides of `[security.rate_limit]` for this key.
    pub per_second: Option<f64>,
    pub burst: Option<u32>,
    hash: [u8; 32],
}

/// Every configured key.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: Vec<ApiKey>,
}

impl KeyRing {
    /// Checks `[[security.keys]]` and builds the ring.
    pub fn from_config(entries: &[KeyConfig]) -> Result<KeyRing, KeysError> {
        let mut keys: Vec<ApiKey> = Vec::with_capacity(entries.len());
        for (index, e) in entries.iter().enumerate() {
            let name_ok = (1..=64).contains(&e.name.len())
                && e.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !name_ok {
                return Err(KeysError::BadName { index });
            }
            let hash = parse_hash(&e.sha256).ok_or_else(|| KeysError::BadHash {
                index,
                name: e.name.clone(),
            })?;
            if e.per_second.is_some_and(|r| !r.is_finite() || r < 0.0) {
                return Err(KeysError::BadRate {
                    index,
                    name: e.name.clone(),
                });
            }
            if let Some(k) = keys.iter().find(|k| *k.name == *e.name) {
                return Err(KeysError::DuplicateName {
                    name: k.name.to_string(),
                });
            }
            if let Some(k) = keys.iter().find(|k| k.hash == hash) {
                return Err(KeysError::DuplicateHash {
                    first: k.name.to_string(),
                    second: e.name.clone(),
                });
            }
            keys.push(ApiKey {
                index,
                name: e.name.as_str().into(),
                role: e.role,
                per_second: e.per_second,
                burst: e.burst,
                hash,
            });
        }
        Ok(KeyRing { keys })
    }

    /// No key configured: every route is open.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether some key has `role`.
    pub fn has(&self, role: Role) -> bool {
        self.keys.iter().any(|k| k.role == role)
    }

    /// Every key, in config order.
    pub fn keys(&self) -> &[ApiKey] {
        &self.keys
    }

    /// The configured key `presented` is, if any. Every configured hash is
    /// compared, each in constant time, whatever matched before.
    pub fn identify(&self, presented: &[u8]) -> Option<&ApiKey> {
        let hash: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for k in &self.keys {
            if bool::from(k.hash.ct_eq(&hash)) {
                found = Some(k);
            }
        }
        found
    }

    /// How many keys have `role`.
    pub fn count(&self, role: Role) -> usize {
        self.keys.iter().filter(|k| k.role == role).count()
    }
}

/// The SHA-256 of a key, as the 64 lower-case hex digits `sha256` takes
/// (the same as `printf %s "$KEY" | sha256sum`).
pub fn hash_hex(key: &[u8]) -> String {
    let hash: [u8; 32] = Sha256::digest(key).into();
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random key: `nbk_` and 64 hex digits from two v4 UUIDs (the
/// operating system's random source; 244 random bits).
pub fn generate() -> String {
    format!(
        "nbk_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, role: Role, key: &str) -> KeyConfig {
        KeyConfig {
            name: name.into(),
            role,
            sha256: hash_hex(key.as_bytes()),
            per_second: None,
            burst: None,
        }
    }

    #[test]
    fn hash_is_sha256_hex() {
        // printf %s test | sha256sum
        assert_eq!(
            hash_hex(b"test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        let k = generate();
        assert!(k.starts_with("nbk_") && k.len() == 68, "{k}");
        assert_ne!(generate(), k);
    }

    #[test]
    fn identifies_configured_keys_only() {
        let ring = KeyRing::from_config(&[
            entry("ops", Role::Admin, "admin-secret"),
            entry("shop", Role::Client, "client-secret"),
        ])
        .expect("valid keys");
        assert_eq!(
            ring.identify(b"admin-secret").map(|k| (&*k.name, k.role)),
            Some(("ops", Role::Admin))
        );
        assert_eq!(ring.identify(b"client-secret").map(|k| k.index), Some(1));
        assert!(ring.identify(b"client-secre").is_none());
        assert!(ring.identify(b"").is_none());
        // the hash itself is not a key
        assert!(ring
            .identify(hash_hex(b"admin-secret").as_bytes())
            .is_none());
        assert!(ring.has(Role::Admin) && ring.has(Role::Client));
        // upper-case hex is the same hash
        let mut upper = entry("x", Role::Client, "k");
        upper.sha256 = upper.sha256.to_uppercase();
        let ring = KeyRing::from_config(&[upper]).expect("valid");
        assert!(ring.identify(b"k").is_some());
    }

    #[test]
    fn bad_entries_are_named() {
        let mut raw = entry("shop", Role::Client, "k");
        raw.sha256 = "my-secret-key".into();
        let e = KeyRing::from_config(&[raw]).unwrap_err().to_string();
        assert!(
            e.contains("security.keys[0] (shop)") && e.contains("nextbest keys hash"),
            "{e}"
        );
        let e =
            KeyRing::from_config(&[entry("a", Role::Admin, "1"), entry("a", Role::Client, "2")])
                .unwrap_err();
        assert!(matches!(e, KeysError::DuplicateName { .. }), "{e}");
        let e =
            KeyRing::from_config(&[entry("a", Role::Admin, "1"), entry("b", Role::Client, "1")])
                .unwrap_err();
        assert!(matches!(e, KeysError::DuplicateHash { .. }), "{e}");
        let e = KeyRing::from_config(&[entry("", Role::Admin, "1")]).unwrap_err();
        assert!(matches!(e, KeysError::BadName { index: 0 }), "{e}");
    }
}
