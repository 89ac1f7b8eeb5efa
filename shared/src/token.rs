//! API tokens and device node keys: generated once, shown once, stored only as a SHA-256 hash.
//!
//! Tokens carry 256 bits of randomness, so a fast hash is enough: there is nothing to brute-force
//! that a slow password hash would protect.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// The permission the refresh endpoint and the job-status call require.
pub const PERMISSION_DEVICE_INFO: &str = "mdm.windows.device.info";

/// The permission `GET /v1/ops/queues` requires.
pub const PERMISSION_OPS_QUEUES: &str = "ops.queues.read";

/// The permission the inventory read requires.
pub const PERMISSION_DEVICE_READ: &str = "mdm.windows.device.read";

/// The permission adding, listing and removing webhook endpoints requires.
pub const PERMISSION_WEBHOOKS_MANAGE: &str = "mdm.windows.webhooks.manage";

const TOKEN_PREFIX: &str = "drt_";
/// Node keys look different from API tokens, so one pasted in the wrong place is recognisable.
const NODE_KEY_PREFIX: &str = "dnk_";

/// A freshly generated token: the plaintext for the caller, the hash for the store.
pub struct NewToken {
    pub plaintext: String,
    pub hash: String,
}

pub fn generate() -> NewToken {
    with_prefix(TOKEN_PREFIX)
}

/// A device's node key: what its agent reports with.
pub fn generate_node_key() -> NewToken {
    with_prefix(NODE_KEY_PREFIX)
}

fn with_prefix(prefix: &str) -> NewToken {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let plaintext = format!("{prefix}{}", hex::encode(secret));
    let hash = hash(&plaintext);
    NewToken { plaintext, hash }
}

/// The lowercase hex SHA-256 of a presented token: the key tokens are stored and looked up by.
pub fn hash(plaintext: &str) -> String {
    hex::encode(Sha256::digest(plaintext.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_unique_and_only_their_hash_matches() {
        let a = generate();
        let b = generate();
        assert_ne!(a.plaintext, b.plaintext);
        assert!(a.plaintext.starts_with(TOKEN_PREFIX));
        assert_eq!(a.hash.len(), 64);
        assert!(!a.hash.contains(&a.plaintext));
        assert_eq!(a.hash, hash(&a.plaintext));
        assert_ne!(a.hash, hash(&b.plaintext));
        assert!(generate_node_key().plaintext.starts_with(NODE_KEY_PREFIX));
    }
}
