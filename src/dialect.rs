//! [`Dialect`]: which SQL a database speaks, taken from its URL scheme.
//!
//! Its own module, below both [`crate::db`] (which opens a session per
//! dialect) and [`crate::sql`] (which lexes each dialect's quotes and
//! comments), so neither imports the other for it (issue 13.4: no import
//! cycles). `crate::db::Dialect` re-exports it.

use std::fmt;

use serde::Serialize;

/// The SQL dialect of a database, taken from its URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    /// `postgres://` or `postgresql://`.
    Postgres,
    /// `mysql://` or `mariadb://` (MySQL and MariaDB share rule SQL).
    MySql,
    /// `sqlite://`.
    Sqlite,
}

impl Dialect {
    /// Every dialect, in the order rule files list them.
    pub const ALL: [Dialect; 3] = [Dialect::MySql, Dialect::Postgres, Dialect::Sqlite];

    /// The dialect for a URL scheme, if dbjanitor supports it.
    #[must_use]
    pub fn from_scheme(scheme: &str) -> Option<Self> {
        match scheme.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => Some(Dialect::Postgres),
            "mysql" | "mariadb" => Some(Dialect::MySql),
            "sqlite" => Some(Dialect::Sqlite),
            _ => None,
        }
    }

    /// The key of this dialect in a rule's `detect:`/`fix:` map.
    #[must_use]
    pub fn key(self) -> &'static str {
        match self {
            Dialect::Postgres => "postgres",
            Dialect::MySql => "mysql",
            Dialect::Sqlite => "sqlite",
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}
