//! The `databases:` entries of the config: URL (with `${VAR}` or `url_file`),
//! dialect, lock kind, SQLite pragmas and MySQL replicas, each checked so a
//! bad entry is a file:line:col error before anything connects.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use serde_saphyr::{Location, Spanned};

use super::raw::RawDatabase;
use super::{Loader, valid_name};
use crate::db::{DatabaseConfig, Dialect};
use crate::secret::SecretUrl;

impl Loader<'_> {
    /// One entry of `databases:`: its URL (with `${VAR}` expanded, or read
    /// from `url_file`), dialect, lock kind, pragmas and replicas.
    pub(super) fn database(
        &mut self,
        file: &Path,
        base: &Path,
        name: &str,
        db: &Spanned<RawDatabase>,
    ) -> Option<DatabaseConfig> {
        if !valid_name(name) {
            self.err(
                file,
                db.referenced,
                format!("invalid database name {name:?}: use [a-z0-9._-]+"),
            );
            return None;
        }
        let (text, at) = self.database_url_text(file, base, name, db)?;
        let (dialect, url) = self.database_url(file, at, &format!("database {name:?}"), text)?;
        if dialect == Dialect::MySql && names_no_database(&url) {
            // Issue 12.7: else it surfaced as "No database selected" at prepare time.
            self.err(
                file,
                at,
                format!(
                    "database {name:?}: the MySQL URL {} names no database: add /DBNAME, e.g. mysql://user@host:3306/shop",
                    url.redacted()
                ),
            );
            return None;
        }
        let lock = self.database_lock(file, name, dialect, db)?;
        let pragmas = self.pragmas(file, name, dialect, db.value.pragmas.as_ref());
        let replicas = self.replicas(file, name, dialect, db.value.replicas.as_ref())?;
        Some(DatabaseConfig {
            name: name.to_owned(),
            dialect,
            url,
            lock,
            pragmas,
            replicas,
        })
    }

    /// The URL text of a database, from exactly one of `url` and `url_file`,
    /// and where it was given.
    pub(super) fn database_url_text(
        &mut self,
        file: &Path,
        base: &Path,
        name: &str,
        db: &Spanned<RawDatabase>,
    ) -> Option<(String, Location)> {
        match (&db.value.url, &db.value.url_file) {
            (Some(url), None) => Some((self.expand(file, url)?, url.referenced)),
            (None, Some(url_file)) => {
                let path = base.join(self.expand(file, url_file)?);
                match std::fs::read_to_string(&path) {
                    Ok(text) => Some((text.trim().to_owned(), url_file.referenced)),
                    Err(e) => {
                        self.err(
                            file,
                            url_file.referenced,
                            format!("cannot read url_file {}: {e}", path.display()),
                        );
                        None
                    }
                }
            }
            _ => {
                self.err(
                    file,
                    db.referenced,
                    format!("database {name:?}: give exactly one of url or url_file"),
                );
                None
            }
        }
    }

    /// A database (or replica) URL: its dialect from the scheme, `mariadb://`
    /// rewritten to `mysql://`, and checked by the driver's own parser.
    /// `subject` names it in errors (`database "shop"`); the URL itself is
    /// only ever shown redacted.
    pub(super) fn database_url(
        &mut self,
        file: &Path,
        at: Location,
        subject: &str,
        text: String,
    ) -> Option<(Dialect, SecretUrl)> {
        let secret = SecretUrl::new(text);
        let scheme = secret.expose().split_once("://").map(|(s, _)| s.to_owned());
        let Some(dialect) = scheme.as_deref().and_then(Dialect::from_scheme) else {
            self.err(
                file,
                at,
                format!(
                    "{subject}: unsupported URL {}: expected postgres://, postgresql://, mysql://, mariadb:// or sqlite://",
                    secret.redacted()
                ),
            );
            return None;
        };
        let secret = if secret.expose().starts_with("mariadb://") {
            // sqlx only knows mysql://; MariaDB speaks the same protocol.
            SecretUrl::new(secret.expose().replacen("mariadb://", "mysql://", 1))
        } else {
            secret
        };
        if let Err(e) = check_url(dialect, &secret) {
            self.err(
                file,
                at,
                format!("{subject}: invalid URL {}: {e}", secret.redacted()),
            );
            return None;
        }
        Some((dialect, secret))
    }

    /// `lock:` of a database: `auto` unless it says; `lease` not on SQLite.
    pub(super) fn database_lock(
        &mut self,
        file: &Path,
        name: &str,
        dialect: Dialect,
        db: &Spanned<RawDatabase>,
    ) -> Option<crate::db::LockKind> {
        let Some(lock) = &db.value.lock else {
            return Some(crate::db::LockKind::Auto);
        };
        let Some(kind) = crate::db::LockKind::parse(&lock.value.kind.value) else {
            self.err(
                file,
                lock.value.kind.referenced,
                format!(
                    "database {name:?}: unknown lock kind {:?}: expected advisory, lease or auto",
                    lock.value.kind.value
                ),
            );
            return None;
        };
        if kind == crate::db::LockKind::Lease && dialect == Dialect::Sqlite {
            // SQLite's lock is the file's (BEGIN IMMEDIATE); a lease adds nothing.
            self.err(
                file,
                lock.value.kind.referenced,
                format!("database {name:?}: lock kind lease is for PostgreSQL and MySQL/MariaDB; SQLite locks its file"),
            );
            return None;
        }
        Some(kind)
    }

    /// `pragmas:` of a SQLite database: known names that change how SQL
    /// behaves on a connection, with values the pragma accepts.
    pub(super) fn pragmas(
        &mut self,
        file: &Path,
        name: &str,
        dialect: Dialect,
        raw: Option<&Spanned<BTreeMap<String, String>>>,
    ) -> Vec<(String, String)> {
        let Some(raw) = raw else {
            return Vec::new();
        };
        if dialect != Dialect::Sqlite {
            self.err(
                file,
                raw.referenced,
                format!("database {name:?}: pragmas: is for SQLite databases only"),
            );
            return Vec::new();
        }
        let mut pragmas = Vec::new();
        for (key, value) in &raw.value {
            let value = value.trim().to_ascii_lowercase();
            let valid = match key.as_str() {
                "foreign_keys"
                | "recursive_triggers"
                | "case_sensitive_like"
                | "defer_foreign_keys"
                | "ignore_check_constraints"
                | "trusted_schema"
                | "reverse_unordered_selects"
                | "automatic_index" => {
                    matches!(
                        value.as_str(),
                        "on" | "off" | "true" | "false" | "1" | "0" | "yes" | "no"
                    )
                }
                "temp_store" => matches!(
                    value.as_str(),
                    "default" | "file" | "memory" | "0" | "1" | "2"
                ),
                "cache_size" => value.parse::<i64>().is_ok(),
                _ => {
                    self.err(
                        file,
                        raw.referenced,
                        format!(
                            "database {name:?}: unknown pragma {key:?}; accepted: foreign_keys, recursive_triggers, case_sensitive_like, defer_foreign_keys, ignore_check_constraints, trusted_schema, reverse_unordered_selects, automatic_index, temp_store, cache_size"
                        ),
                    );
                    continue;
                }
            };
            if valid {
                pragmas.push((key.clone(), value));
            } else {
                self.err(
                    file,
                    raw.referenced,
                    format!("database {name:?}: invalid value {value:?} for pragma {key}"),
                );
            }
        }
        pragmas
    }
}

/// Whether a (MySQL) URL has no database in its path (`mysql://h:3306`,
/// `mysql://h:3306/`): every unqualified table name would fail at run time.
fn names_no_database(url: &SecretUrl) -> bool {
    url::Url::parse(url.expose()).is_ok_and(|u| u.path().trim_matches('/').is_empty())
}

/// Parses a URL with the driver's own parser, so a malformed URL is a
/// configuration error (exit 2) and not a failure at run time.
fn check_url(dialect: Dialect, url: &SecretUrl) -> Result<(), String> {
    let text = url.expose();
    let result = match dialect {
        Dialect::Postgres => return crate::db::pgconn::check_url(url),
        Dialect::MySql => sqlx::mysql::MySqlConnectOptions::from_str(text).map(|_| ()),
        Dialect::Sqlite => sqlx::sqlite::SqliteConnectOptions::from_str(text).map(|_| ()),
    };
    result.map_err(|e| url.scrub(&e.to_string()))
}
