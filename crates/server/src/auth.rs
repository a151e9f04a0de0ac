//! API keys and the caller of a request.
//!
//! A key is `atl_<id>_<secret>`: the id finds the row, the secret is checked against its
//! argon2id hash (never stored in clear). Verifying argon2 costs tens of milliseconds, so a
//! verified key is remembered by the SHA-256 of the whole key for a minute (so a revoked key
//! stops working within one).
//! Keys come as `Authorization: Bearer <key>`, or as `?key=` on GET requests (the page's
//! `<img>` and `EventSource` cannot send headers).

use std::collections::HashMap;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, Method};
use sha2::{Digest, Sha256};

use atelier_store::db::{new_id, now, Db, KeyRow};

use crate::{ApiError, AppState};

/// The owner name of key-less requests in open mode.
pub const LOCAL_OWNER: &str = "local";

/// A freshly made key: the row to store and the key to show once.
pub fn generate(owner: &str, label: &str) -> Result<(KeyRow, String), String> {
    let id = new_id("k", 10);
    let secret = new_id("", 32);
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    let hash = Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map_err(|e| e.to_string())?
        .to_string();
    Ok((
        KeyRow {
            id: id.clone(),
            owner: owner.to_string(),
            hash,
            label: label.to_string(),
            created: now(),
            revoked: false,
        },
        format!("atl_{id}_{secret}"),
    ))
}

/// Creates and stores a key for `owner`; returns the key (shown once, not recoverable).
pub async fn create_key(db: &Db, owner: &str, label: &str) -> Result<String, String> {
    let (owner, label) = (owner.to_string(), label.to_string());
    let (row, key) = tokio::task::spawn_blocking(move || generate(&owner, &label))
        .await
        .map_err(|e| e.to_string())??;
    db.insert_key(&row).await.map_err(|e| e.to_string())?;
    Ok(key)
}

/// Valid owner names for keys.
pub fn valid_owner(owner: &str) -> bool {
    (1..=64).contains(&owner.len())
        && owner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && owner != crate::BUILTIN_OWNER
}

/// How long a verified key is trusted without looking at the database again.
const KEY_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// Argon2 verifications running at once (each holds ~19 MiB and tens of ms of a core): wrong
/// secrets for a real key id queue here instead of growing memory (issue 20: 64 threads of
/// wrong secrets took the server from 188 MB to 6.1 GB).
const MAX_VERIFYING: usize = 2;

/// Verified keys of this process, by SHA-256 of the key.
pub struct KeyCache {
    verified: Mutex<HashMap<[u8; 32], (String, std::time::Instant)>>,
    verifying: crate::gate::Gate,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self {
            verified: Mutex::default(),
            verifying: crate::gate::Gate::new(MAX_VERIFYING),
        }
    }
}

impl KeyCache {
    /// The owner of `key`, or `None` if it is not a valid, unrevoked key.
    pub async fn owner(&self, db: &Db, key: &str) -> Result<Option<String>, ApiError> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        if let Some((o, at)) = self.verified.lock().expect("key cache").get(&digest) {
            // Re-checked every minute, so a revoked key stops working within one.
            if at.elapsed() < KEY_TTL {
                return Ok(Some(o.clone()));
            }
        }
        let Some(rest) = key.strip_prefix("atl_") else {
            return Ok(None);
        };
        let Some((id, secret)) = rest.split_once('_') else {
            return Ok(None);
        };
        if id.len() > 40 || secret.len() > 128 {
            return Ok(None);
        }
        let Some(row) = db.key(id).await? else {
            return Ok(None);
        };
        if row.revoked {
            return Ok(None);
        }
        let secret = secret.to_string();
        let hash = row.hash.clone();
        let pass = self.verifying.enter().await;
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|h| {
                Argon2::default()
                    .verify_password(secret.as_bytes(), &h)
                    .is_ok()
            })
        })
        .await;
        drop(pass);
        let ok = ok.map_err(ApiError::internal)?;
        if !ok {
            return Ok(None);
        }
        let mut v = self.verified.lock().expect("key cache");
        if v.len() > 10_000 {
            v.clear();
        }
        v.insert(digest, (row.owner.clone(), std::time::Instant::now()));
        Ok(Some(row.owner))
    }

    /// The most argon2 verifications that ran at once so far (at most two).
    pub fn peak_verifying(&self) -> usize {
        self.verifying.peak()
    }

    /// Forgets every verified key (after a revocation).
    pub fn clear(&self) {
        self.verified.lock().expect("key cache").clear();
    }
}

/// The owner a request acts for. Extracting it authenticates and rate-limits the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub owner: String,
}

fn query_key(parts: &Parts) -> Option<String> {
    let q = parts.uri.query()?;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "key").then(|| v.to_string())
    })
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header_key = match parts.headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => {
                let v = v
                    .to_str()
                    .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
                let token = v.strip_prefix("Bearer ").ok_or_else(|| {
                    ApiError::unauthorized("Authorization must be `Bearer <key>`")
                })?;
                Some(token.trim().to_string())
            }
        };
        let key = header_key.or_else(|| {
            (parts.method == Method::GET || parts.method == Method::HEAD)
                .then(|| query_key(parts))
                .flatten()
        });
        let owner = match key {
            Some(k) => state
                .keys
                .owner(&state.db, &k)
                .await?
                .ok_or_else(|| ApiError::unauthorized("unknown or revoked API key"))?,
            None if state.config.is_open() => LOCAL_OWNER.to_string(),
            None => {
                return Err(ApiError::unauthorized(
                    "this server needs an API key: send `Authorization: Bearer <key>` \
                     (`atelier admin create-key` makes one)",
                ))
            }
        };
        if let Err(wait) = state.limiter.check(&owner) {
            state.metrics.inc(crate::metrics::RATE_LIMITED, &[]);
            return Err(ApiError::too_many(
                "rate_limited",
                format!(
                    "more than {} requests per minute; retry in {wait} s",
                    state.config.rate_limit_per_minute
                ),
                wait,
            ));
        }
        Ok(Caller { owner })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_verify_and_differ() {
        let (row, key) = generate("alice", "").unwrap();
        assert!(key.starts_with(&format!("atl_{}_", row.id)));
        assert!(!row.hash.contains(key.rsplit('_').next().unwrap()));
        let secret = key.rsplit('_').next().unwrap();
        let h = PasswordHash::new(&row.hash).unwrap();
        assert!(Argon2::default()
            .verify_password(secret.as_bytes(), &h)
            .is_ok());
        assert!(Argon2::default().verify_password(b"wrong", &h).is_err());
        let (_, other) = generate("alice", "").unwrap();
        assert_ne!(key, other);
    }
}
