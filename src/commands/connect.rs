//! Connection failures as an operator reads them (issue 12.7): the error
//! names the server (host and port, never user or password), and the text
//! report states it once per database, not once per rule: four rules on a
//! database that is down are one problem, not four.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::db::DatabaseConfig;
use crate::outcome::{Reason, RunRecord};

/// `host:port` of a network database (the dialect's default port when the
/// URL has none); `None` for SQLite files and socket-only URLs.
#[must_use]
pub fn endpoint(database: &DatabaseConfig) -> Option<String> {
    let url = url::Url::parse(database.url.redacted()).ok()?;
    let host = url.host_str().filter(|h| !h.is_empty())?;
    let port = url.port().or(match url.scheme() {
        "postgres" | "postgresql" => Some(5432),
        "mysql" | "mariadb" => Some(3306),
        _ => None,
    })?;
    Some(format!("{host}:{port}"))
}

/// Puts the server's address into each connection error that lacks it, for
/// the report, the audit row and the notification alike.
pub fn name_endpoints(records: &mut [RunRecord], config: &Config) {
    for record in records.iter_mut() {
        if record.reason != Some(Reason::Connect) {
            continue;
        }
        let Some(at) = config
            .databases
            .get(&record.database)
            .and_then(|db| endpoint(db))
        else {
            continue;
        };
        if let Some(error) = &mut record.error
            && !error.contains(&at)
        {
            *error = match error.strip_prefix("cannot connect to database: ") {
                Some(rest) => format!(
                    "cannot connect to database {} at {at}: {rest}",
                    record.database
                ),
                None => format!("{error} (database {} at {at})", record.database),
            };
        }
    }
}

/// For the text report: the first connection failure on each database keeps
/// its error; the later ones on the same database point back to it.
#[must_use]
pub fn grouped(records: &[RunRecord]) -> Vec<RunRecord> {
    let mut first: BTreeMap<String, String> = BTreeMap::new();
    records
        .iter()
        .map(|record| {
            let mut record = record.clone();
            if record.reason == Some(Reason::Connect) {
                match first.get(&record.database) {
                    Some(rule) => {
                        record.error = Some(format!(
                            "database {} unreachable, see {rule} @ {} above",
                            record.database, record.database
                        ));
                    }
                    None => {
                        first.insert(record.database.clone(), record.rule.clone());
                    }
                }
            }
            record
        })
        .collect()
}
