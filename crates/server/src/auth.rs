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

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, Method};
use sha2::{Digest, Sha256};

use atelier_jobs::gate::Gate;
use atelier_jobs::Platform;

use crate::{ApiError, AppState};

/// The owner name of key-less requests in open mode.
pub const LOCAL_OWNER: &str = "local";

/// How long a verified key is trusted without looking at the database again.
const KEY_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// Argon2 verifications running at once (each holds ~19 MiB and tens of ms of a core): wrong
/// secrets for a real key id queue here instead of growing memory (issue 20: 64 threads of
/// wrong secrets took the server from 188 MB to 6.1 GB).
const MAX_VERIFYING: usize = 2;

/// Verified keys of this process, by SHA-256 of the key.
pub struct KeyCache {
    verified: Mutex<HashMap<[u8; 32], (String, std::time::Instant)>>,
    verifying: Gate,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self {
            verified: Mutex::default(),
            verifying: Gate::new(MAX_VERIFYING),
        }
    }
}

impl KeyCache {
    /// The owner of `key`, or `None` if it is not a valid, unrevoked key.
    pub async fn owner(&self, platform: &Platform, key: &str) -> Result<Option<String>, ApiError> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        if let Some((o, at)) = self.verified.lock().expect("key cache").get(&digest) {
            // Re-checked every minute, so a revoked key stops working within one.
            if at.elapsed() < KEY_TTL {
                return Ok(Some(o.clone()));
            }
        }
        let Some((id, secret)) = atelier_jobs::keys::parse(key) else {
            return Ok(None);
        };
        let secret = secret.to_string();
        let pass = self.verifying.enter().await;
        let owner = platform
            .key_owner(id, move |hash| atelier_jobs::keys::verify(hash, &secret))
            .await;
        drop(pass);
        let Some(owner) = owner? else {
            return Ok(None);
        };
        let mut v = self.verified.lock().expect("key cache");
        if v.len() > 10_000 {
            v.clear();
        }
        v.insert(digest, (owner.clone(), std::time::Instant::now()));
        Ok(Some(owner))
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
                .owner(&state.platform, &k)
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
        if let Err(wait) = state.platform.rate_limit(&owner).await? {
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
