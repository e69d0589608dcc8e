//! Lock identities derived from a rule's lock name.
//!
//! Both derivations are stable across versions and documented in the README,
//! so an operator can see in `pg_locks` or `performance_schema.metadata_locks`
//! which rule holds what.

use sha2::{Digest, Sha256};

/// The PostgreSQL advisory lock key for a lock name: the first 8 bytes,
/// big-endian, of SHA-256 over `"dbjanitor:" + name`, read as a signed
/// 64-bit integer. PostgreSQL advisory locks are per database, so the database
/// needs no place in the key.
#[must_use]
pub fn postgres_lock_key(name: &str) -> i64 {
    let digest = Sha256::digest(format!("dbjanitor:{name}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// The MySQL/MariaDB `GET_LOCK` name for a lock name in a schema.
///
/// `GET_LOCK` names are server-wide, so the schema (from `DATABASE()`) is part
/// of the name: `dbjanitor:<schema>:<name>`. MySQL limits names to 64
/// characters; a longer name keeps its first 37 characters and appends `~`
/// and 16 hex digits of SHA-256 over the full name, so it stays unique.
#[must_use]
pub fn mysql_lock_name(schema: &str, name: &str) -> String {
    const LIMIT: usize = 64;
    let full = format!("dbjanitor:{schema}:{name}");
    if full.chars().count() <= LIMIT {
        return full;
    }
    let digest = Sha256::digest(full.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let prefix: String = full.chars().take(LIMIT - 1 - hex.len()).collect();
    format!("{prefix}~{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_key_is_stable() {
        // Pinned: changing the derivation would let two versions run one rule at once.
        assert_eq!(
            postgres_lock_key("dragonfly.scheduler"),
            postgres_lock_key("dragonfly.scheduler")
        );
        assert_ne!(postgres_lock_key("a"), postgres_lock_key("b"));
        let digest = Sha256::digest(b"dbjanitor:x");
        let expected = i64::from_be_bytes([
            digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
        ]);
        assert_eq!(postgres_lock_key("x"), expected);
    }

    #[test]
    fn mysql_names_fit_in_64_characters() {
        assert_eq!(mysql_lock_name("app", "r1"), "dbjanitor:app:r1");
        let long = "x".repeat(100);
        let a = mysql_lock_name("app", &long);
        let b = mysql_lock_name("app", &format!("{long}y"));
        assert_eq!(a.chars().count(), 64);
        assert_ne!(a, b);
    }
}
