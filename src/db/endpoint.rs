//! Where a network database lives, as an operator reads it in a connection
//! error (issue 12.7): host and port, never user or password.

use super::DatabaseConfig;

/// `host:port` of a network database (the dialect's default port when the
/// URL has none); `None` for SQLite files and socket-only URLs.
#[must_use]
pub(crate) fn endpoint(database: &DatabaseConfig) -> Option<String> {
    let url = url::Url::parse(database.url.redacted()).ok()?;
    let host = url.host_str().filter(|h| !h.is_empty())?;
    let port = url.port().or(match url.scheme() {
        "postgres" | "postgresql" => Some(5432),
        "mysql" | "mariadb" => Some(3306),
        _ => None,
    })?;
    Some(format!("{host}:{port}"))
}

/// A connection error with the server's address in it (when it lacks it):
/// `cannot connect to database D at host:port: …`. The engine names it before
/// the run is logged, so the log line, the report, the audit row and the
/// notification all say which server could not be reached.
#[must_use]
pub fn name_endpoint(error: &str, database: &DatabaseConfig) -> String {
    let Some(at) = endpoint(database) else {
        return error.to_owned();
    };
    if error.contains(&at) {
        return error.to_owned();
    }
    match error.strip_prefix("cannot connect to database: ") {
        Some(rest) => format!(
            "cannot connect to database {} at {at}: {rest}",
            database.name
        ),
        None => format!("{error} (database {} at {at})", database.name),
    }
}
