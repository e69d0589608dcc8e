//! Lock identities derived from a rule's lock name.
//!
//! Both derivations are stable across versions and documented in the README,
//! so an operator can see in `pg_locks` or `performance_schema.metadata_locks`
//! which rule holds what.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Which kind of lock a database's rules take (`lock: {kind: ...}` on a
/// database in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LockKind {
    /// Advisory locks (`pg_try_advisory_xact_lock`/`pg_try_advisory_lock`,
    /// MySQL `GET_LOCK`): right for a direct connection.
    Advisory,
    /// A lease in the table `dbjanitor_leases` of the target database: right
    /// behind a transaction-mode pooler (PgBouncer), where a session lock
    /// would land on a random server connection, and on a Galera cluster,
    /// where `GET_LOCK` holds on one node only.
    Lease,
    /// PostgreSQL: a lease when a pooler is detected, else advisory locks.
    /// MySQL/MariaDB: a lease on a Galera node (`wsrep_on`), else `GET_LOCK`.
    /// SQLite: its file lock.
    #[default]
    Auto,
}

impl LockKind {
    /// The config spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            LockKind::Advisory => "advisory",
            LockKind::Lease => "lease",
            LockKind::Auto => "auto",
        }
    }

    /// Parses the config spelling.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "advisory" => Some(LockKind::Advisory),
            "lease" => Some(LockKind::Lease),
            "auto" => Some(LockKind::Auto),
            _ => None,
        }
    }
}

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

/// The PostgreSQL advisory lock key for a lock name on a connection whose
/// effective schemas (`current_schemas(false)`, in order) are `schemas`.
///
/// Two configured databases may be one PostgreSQL database seen through
/// different `search_path`s (`tenant1`, `tenant2`): different data, so they
/// must not exclude each other. With the default schemas (`public` only) the
/// key is [`postgres_lock_key`] of the name, exactly as in earlier versions,
/// so an older dbjanitor running during an upgrade still excludes this one;
/// otherwise it is [`postgres_lock_key`] of `"<schemas joined by ,>:<name>"`.
#[must_use]
pub fn postgres_schema_lock_key(schemas: &[String], name: &str) -> i64 {
    if schemas.len() == 1 && schemas[0] == "public" {
        return postgres_lock_key(name);
    }
    postgres_lock_key(&format!("{}:{name}", schemas.join(",")))
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
    fn postgres_key_is_the_first_eight_bytes_of_sha256() {
        // The derivation itself (the literal values are pinned below).
        assert_ne!(postgres_lock_key("a"), postgres_lock_key("b"));
        let digest = Sha256::digest(b"dbjanitor:x");
        let expected = i64::from_be_bytes([
            digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
        ]);
        assert_eq!(postgres_lock_key("x"), expected);
    }

    #[test]
    fn postgres_keys_are_pinned() {
        // A compatibility promise: these literal values never change.
        assert_eq!(
            postgres_lock_key("dragonfly.scheduler"),
            -5_326_665_867_046_896_741
        );
        let public = vec!["public".to_owned()];
        assert_eq!(
            postgres_schema_lock_key(&public, "dragonfly.scheduler"),
            postgres_lock_key("dragonfly.scheduler")
        );
        let tenant1 = vec!["tenant1".to_owned(), "public".to_owned()];
        let tenant2 = vec!["tenant2".to_owned(), "public".to_owned()];
        assert_eq!(
            postgres_schema_lock_key(&tenant1, "r"),
            postgres_lock_key("tenant1,public:r")
        );
        assert_eq!(
            postgres_schema_lock_key(&tenant1, "r"),
            -9_170_602_778_006_415_825
        );
        assert_ne!(
            postgres_schema_lock_key(&tenant1, "r"),
            postgres_schema_lock_key(&tenant2, "r")
        );
    }

    #[test]
    fn mysql_names_fit_in_64_characters() {
        assert_eq!(mysql_lock_name("app", "r1"), "dbjanitor:app:r1");
        let long = "x".repeat(100);
        let a = mysql_lock_name("app", &long);
        let b = mysql_lock_name("app", &format!("{long}y"));
        assert_eq!(a.chars().count(), 64);
        assert_ne!(a, b);
        // A compatibility promise, like the PostgreSQL keys: a new version
        // must name a long rule's lock exactly as the old one did.
        assert_eq!(
            a,
            "dbjanitor:app:xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx~2d5a5091e816a945"
        );
    }
}
