//! API keys: `atl_<id>_<secret>`. The id finds the stored key, the secret is checked against
//! its argon2id hash (never stored in clear).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use atelier_store::db::{new_id, now, Db, KeyRow};

use crate::JobsError;

/// Valid owner names for keys (not the built-in models' owner).
pub fn valid_owner(owner: &str) -> bool {
    (1..=64).contains(&owner.len())
        && owner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && owner != crate::catalog::BUILTIN_OWNER
}

/// A fresh key for `owner`: the row to store and the key to show once.
fn generate(owner: &str, label: &str) -> Result<(KeyRow, String), JobsError> {
    let internal = |e: &dyn std::fmt::Display| JobsError::Internal(e.to_string());
    let id = new_id("k", 10);
    let secret = new_id("", 32);
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| internal(&e))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| internal(&e))?;
    let hash = Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map_err(|e| internal(&e))?
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
pub async fn create(db: &Db, owner: &str, label: &str) -> Result<String, JobsError> {
    if !valid_owner(owner) {
        return Err(JobsError::BadRequest(format!(
            "owner `{owner}`: 1–64 letters, digits, `-` or `_` (and not `{}`)",
            crate::catalog::BUILTIN_OWNER
        )));
    }
    let (owner, label) = (owner.to_string(), label.to_string());
    let (row, key) = tokio::task::spawn_blocking(move || generate(&owner, &label))
        .await
        .map_err(|e| JobsError::Internal(e.to_string()))??;
    db.insert_key(&row).await?;
    Ok(key)
}

/// Splits a key into its id and secret (`None` if it is not shaped like one).
pub fn parse(key: &str) -> Option<(&str, &str)> {
    let (id, secret) = key.strip_prefix("atl_")?.split_once('_')?;
    (id.len() <= 40 && secret.len() <= 128).then_some((id, secret))
}

/// Does `secret` match the stored argon2 `hash`? (Tens of milliseconds: call it off the async
/// threads.)
pub fn verify(hash: &str, secret: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(secret.as_bytes(), &h)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_verify_and_differ() {
        let (row, key) = generate("alice", "").unwrap();
        assert!(key.starts_with(&format!("atl_{}_", row.id)));
        let (id, secret) = parse(&key).unwrap();
        assert_eq!(id, row.id);
        assert!(!row.hash.contains(secret));
        assert!(verify(&row.hash, secret));
        assert!(!verify(&row.hash, "wrong"));
        assert!(!verify("not a hash", secret));
        let (_, other) = generate("alice", "").unwrap();
        assert_ne!(key, other);
        assert_eq!(parse("atl_nounderscore"), None);
        assert_eq!(parse("sk_x_y"), None);
    }

    #[test]
    fn owners() {
        assert!(valid_owner("alice-2"));
        assert!(!valid_owner(""));
        assert!(!valid_owner("a b"));
        assert!(!valid_owner(crate::catalog::BUILTIN_OWNER));
    }
}
