//! The YAML shapes, exactly as written: every field an operator may type and
//! nothing else (`deny_unknown_fields`), with source positions kept through
//! `Spanned` so that checks after parsing can still point at a line.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use crate::outcome::Outcome;
use crate::rule::Mode;

/// `dbjanitor.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) databases: BTreeMap<String, Spanned<RawDatabase>>,
    #[serde(default)]
    pub(crate) rules: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) defaults: Option<RawDefaults>,
    #[serde(default)]
    pub(crate) notifiers: BTreeMap<String, Spanned<RawNotifier>>,
    #[serde(default)]
    pub(crate) audit: Option<Spanned<RawAudit>>,
    #[serde(default)]
    pub(crate) daemon: Option<RawDaemon>,
    #[serde(default)]
    pub(crate) images: Option<Spanned<RawImages>>,
}

/// `images:` of the config: where and how long backup images are kept.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawImages {
    pub(crate) table: Option<Spanned<String>>,
    pub(crate) keep: Option<Spanned<String>>,
}

/// `backup:` of a rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackup {
    pub(crate) table: Spanned<String>,
    pub(crate) key: Vec<Spanned<String>>,
}

/// One entry of `databases:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDatabase {
    pub(crate) url: Option<Spanned<String>>,
    pub(crate) url_file: Option<Spanned<String>>,
    /// SQLite pragmas the application sets on its connections.
    pub(crate) pragmas: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    pub(crate) lock: Option<Spanned<RawDatabaseLock>>,
    /// MySQL/MariaDB replicas whose lag `batch.max_replica_lag` reads.
    pub(crate) replicas: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `lock:` of a database: which kind of lock its rules take.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDatabaseLock {
    pub(crate) kind: Spanned<String>,
}

/// `defaults:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDefaults {
    pub(crate) timezone: Option<Spanned<String>>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) notify: Option<Vec<Spanned<String>>>,
    pub(crate) notify_on: Option<Vec<Spanned<Outcome>>>,
    pub(crate) renotify_after: Option<Spanned<String>>,
}

/// One entry of `notifiers:`: exactly one of `webhook` or `email`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNotifier {
    pub(crate) webhook: Option<Spanned<RawWebhook>>,
    pub(crate) email: Option<Spanned<RawEmail>>,
    /// Skip this notifier (no error) when a `${VAR}` of its URL is unset or
    /// empty: a deployment without, say, Slack leaves the variable out.
    pub(crate) optional: Option<bool>,
}

/// `webhook:` notifier.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebhook {
    pub(crate) url: Spanned<String>,
    pub(crate) format: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, Spanned<String>>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) retries: Option<Spanned<i64>>,
    pub(crate) backoff: Option<Spanned<String>>,
    pub(crate) deadline: Option<Spanned<String>>,
}

/// `email:` notifier.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEmail {
    pub(crate) smtp: Spanned<String>,
    pub(crate) tls: Option<Spanned<String>>,
    pub(crate) from: Spanned<String>,
    pub(crate) to: Spanned<Addresses>,
    pub(crate) cc: Option<Spanned<Addresses>>,
    pub(crate) username: Option<Spanned<String>>,
    pub(crate) password_env: Option<Spanned<String>>,
    pub(crate) password_file: Option<Spanned<String>>,
    pub(crate) ca_file: Option<Spanned<String>>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) retries: Option<Spanned<i64>>,
    pub(crate) backoff: Option<Spanned<String>>,
    pub(crate) deadline: Option<Spanned<String>>,
}

/// `audit:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    pub(crate) database: Spanned<String>,
    pub(crate) keep: Option<Spanned<String>>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) migrate_lock_wait: Option<Spanned<String>>,
}

/// `daemon:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDaemon {
    pub(crate) shutdown_grace: Option<Spanned<String>>,
    pub(crate) jobs: Option<Spanned<i64>>,
    pub(crate) jobs_per_database: Option<Spanned<i64>>,
}

/// One rule file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub(crate) name: Spanned<String>,
    pub(crate) description: Option<String>,
    pub(crate) database: Spanned<OneOrMany>,
    pub(crate) schedule: Option<Spanned<String>>,
    pub(crate) timezone: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) tags: Vec<String>,
    pub(crate) detect: Spanned<RawSql>,
    /// Absent: a report-only rule. Present but empty (`fix:`) is an error, not
    /// report-only: serde reads a YAML null as `None` for an `Option`, which
    /// silently dropped the fix someone meant to write.
    #[serde(default, deserialize_with = "present_sql")]
    pub(crate) fix: Option<Spanned<RawSql>>,
    pub(crate) max_rows: Option<Spanned<i64>>,
    pub(crate) verify: Option<bool>,
    pub(crate) mode: Option<Mode>,
    pub(crate) batch: Option<Spanned<RawBatch>>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) lock: Option<RawLock>,
    pub(crate) notify: Option<Vec<Spanned<String>>>,
    pub(crate) notify_on: Option<Vec<Outcome>>,
    pub(crate) renotify_after: Option<Spanned<String>>,
    pub(crate) enabled: Option<bool>,
    pub(crate) backup: Option<Spanned<RawBackup>>,
}

/// `batch:` of a rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBatch {
    pub(crate) pause: Option<Spanned<String>>,
    pub(crate) max_batches: Option<Spanned<i64>>,
    pub(crate) size: Option<Spanned<i64>>,
    pub(crate) min_size: Option<Spanned<i64>>,
    pub(crate) max_size: Option<Spanned<i64>>,
    pub(crate) target: Option<Spanned<String>>,
    pub(crate) max_replica_lag: Option<Spanned<String>>,
    pub(crate) max_lag_wait: Option<Spanned<String>>,
    // Keyset batches (issue 11): the column each batch walks.
    pub(crate) key: Option<Spanned<String>>,
}

/// `lock:` of a rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLock {
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) wait: Option<Spanned<String>>,
}

/// `database: name` or `database: [a, b]`.
#[derive(Debug)]
pub(crate) struct OneOrMany(pub(crate) Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor;
        impl<'de> Visitor<'de> for OneOrManyVisitor {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a database name or a list of database names")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                Ok(OneOrMany(names))
            }
        }
        deserializer.deserialize_any(OneOrManyVisitor)
    }
}

/// `to: dba@example.org` or `to: [a@example.org, b@example.org]` (issue
/// 12.5: one address is a list of one, as an operator would write it).
#[derive(Debug)]
pub(crate) struct Addresses(pub(crate) Vec<String>);

impl<'de> Deserialize<'de> for Addresses {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AddressesVisitor;
        impl<'de> Visitor<'de> for AddressesVisitor {
            type Value = Addresses;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an email address or a list of email addresses")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Addresses, E> {
                Ok(Addresses(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Addresses, A::Error> {
                let mut addresses = Vec::new();
                while let Some(address) = seq.next_element::<String>()? {
                    addresses.push(address);
                }
                Ok(Addresses(addresses))
            }
        }
        deserializer.deserialize_any(AddressesVisitor)
    }
}

/// A key that, when written, must hold SQL: a null (`fix:` with nothing
/// after it) reaches [`RawSql`]'s visitor and is refused there with the
/// key's position, instead of reading as "no fix".
fn present_sql<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Spanned<RawSql>>, D::Error> {
    Spanned::<RawSql>::deserialize(deserializer).map(Some)
}

/// `detect:`/`fix:`: one SQL text for every dialect, or a map by dialect.
#[derive(Debug)]
pub(crate) enum RawSql {
    Any(String),
    ByDialect(RawSqlByDialect),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSqlByDialect {
    pub(crate) mysql: Option<String>,
    pub(crate) postgres: Option<String>,
    pub(crate) sqlite: Option<String>,
}

impl<'de> Deserialize<'de> for RawSql {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RawSqlVisitor;
        impl<'de> Visitor<'de> for RawSqlVisitor {
            type Value = RawSql;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("SQL text, or a map with keys mysql, postgres, sqlite")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSql, E> {
                Ok(RawSql::Any(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawSql, A::Error> {
                RawSqlByDialect::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawSql::ByDialect)
            }
        }
        deserializer.deserialize_any(RawSqlVisitor)
    }
}
