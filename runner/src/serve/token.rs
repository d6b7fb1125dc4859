//! The console's and API's access token: 32 random bytes, shown once (in the URL `serve`
//! prints when it makes one) and kept in the store only as its SHA-256, so that a copy of
//! the store opens nothing. `pgferry serve rotate-token` replaces it.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::store::Store;

/// A new token: 64 hex digits from the operating system's random source.
pub fn generate() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("the operating system's random source failed: {e}"))?;
    Ok(hex::encode(bytes))
}

pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `given` is the token whose hash is `stored`; compares the hashes in constant time.
pub fn matches(stored: &str, given: &str) -> bool {
    let given = hash(given);
    stored.len() == given.len() && stored.bytes().zip(given.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// The token of a first start: made and stored when the store has none (`Some(token)`, to
/// show once); `None` when one was made before.
pub fn ensure(store: &mut Store) -> Result<Option<String>> {
    if store.api_token_hash()?.is_some() {
        return Ok(None);
    }
    rotate(store).map(Some)
}

/// Makes a new token and stores its hash in place of the old one: the old stops working at once.
pub fn rotate(store: &mut Store) -> Result<String> {
    let token = generate()?;
    store.set_api_token_hash(&hash(&token)).context("storing the access token's hash")?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_only_the_right_one_matches_its_hash() {
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        let stored = hash(&a);
        assert!(matches(&stored, &a));
        assert!(!matches(&stored, &b));
        assert!(!matches(&stored, ""));
        assert!(!stored.contains(&a), "the hash does not hold the token");
    }
}
