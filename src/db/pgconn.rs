//! PostgreSQL connections on tokio-postgres: connecting, the unnamed
//! statement, error texts.
//!
//! Why not sqlx: sqlx sends the startup parameters `DateStyle=ISO, MDY`,
//! `TimeZone=UTC` and `extra_float_digits`, which override the database's and
//! role's own defaults (`ALTER DATABASE ... SET timezone`) and which PgBouncer
//! refuses, and it prepares named server-side statements, which collide
//! behind a transaction-mode pooler. tokio-postgres sends only `user`,
//! `dbname`, `application_name` and `client_encoding`, so a session gets
//! exactly the settings `psql` gets, and it can run statements through the
//! unnamed statement (`execute_typed`, `query_typed`), which poolers handle.
//!
//! URLs and TLS are read in `pgurl`.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::DbError;
pub(crate) use super::pgurl::check_url;
use super::pgurl::{Target, Tls, parse_url, rustls_config};
use crate::secret::SecretUrl;

/// Client-side TCP keepalive: idle time before the first probe.
pub(crate) const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Client-side TCP keepalive: time between probes.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Client-side TCP keepalive: unanswered probes before the socket is dead.
pub(crate) const KEEPALIVE_RETRIES: u32 = 3;

/// One PostgreSQL connection: the client, the task driving its socket, and
/// the URL whose secrets its errors must not show.
pub(crate) struct PgConn {
    pub(crate) client: Client,
    task: JoinHandle<()>,
    pub(crate) url: SecretUrl,
    /// Host and port as given in the URL (the first of each), for pooler detection.
    pub(crate) host: Option<String>,
    /// The port connected to.
    pub(crate) port: u16,
}

impl PgConn {
    /// Connects within `timeout`; `application_name` unless the URL sets one.
    pub(crate) async fn connect(
        url: &SecretUrl,
        application_name: &str,
        timeout: Duration,
    ) -> Result<Self, DbError> {
        let Target { mut config, tls } = parse_url(url).map_err(DbError::Connect)?;
        if config.get_application_name().is_none() {
            config.application_name(application_name);
        }
        config
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_RETRIES);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        let host = config.get_hosts().first().map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        });
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let connect = async {
            if tls == Tls::Disable {
                let (client, connection) = config.connect(NoTls).await?;
                Ok((client, tokio::spawn(drive(connection))))
            } else {
                let rustls = rustls_config(&tls).map_err(DbErrorText)?;
                let make = tokio_postgres_rustls::MakeRustlsConnect::new(rustls);
                let (client, connection) = config.connect(make).await?;
                Ok((client, tokio::spawn(drive(connection))))
            }
        };
        let result: Result<_, ConnectFailure> = match tokio::time::timeout(timeout, connect).await {
            Ok(result) => result,
            Err(_) => {
                return Err(DbError::Connect(format!(
                    "no answer within {}",
                    humantime::format_duration(timeout)
                )));
            }
        };
        let (client, task) = result.map_err(|e| match e {
            ConnectFailure::Pg(e) => DbError::Connect(url.scrub(&describe(&e))),
            ConnectFailure::Text(DbErrorText(text)) => DbError::Connect(url.scrub(&text)),
        })?;
        Ok(Self {
            client,
            task,
            url: url.clone(),
            host,
            port,
        })
    }

    /// A driver error as a [`DbError`], scrubbed of the URL's secrets.
    pub(crate) fn error(&self, err: &tokio_postgres::Error) -> DbError {
        classify(&self.url, err)
    }

    /// Runs our own SQL (several statements allowed) through the simple protocol.
    pub(crate) async fn batch(&self, sql: &str) -> Result<(), DbError> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(|e| self.error(&e))
    }

    /// The first cell of the first row of our own SQL, as text.
    pub(crate) async fn text(&self, sql: &str) -> Result<Option<String>, DbError> {
        let messages = self
            .client
            .simple_query(sql)
            .await
            .map_err(|e| self.error(&e))?;
        Ok(messages
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
                _ => None,
            })
            .flatten())
    }

    /// Runs ONE statement with bound parameters through the unnamed statement
    /// (Parse, Bind, Execute, Sync): the server refuses a second statement,
    /// and nothing named stays behind on the server connection.
    pub(crate) async fn execute_one(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<u64, DbError> {
        self.client
            .execute_typed(sql, params)
            .await
            .map_err(|e| self.error(&e))
    }

    /// Rows of ONE statement with bound parameters, through the unnamed statement.
    /// Only for our own queries, whose result columns have built-in types.
    pub(crate) async fn query_one_stmt(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<tokio_postgres::Row>, DbError> {
        self.client
            .query_typed(sql, params)
            .await
            .map_err(|e| self.error(&e))
    }

    /// Closes politely (Terminate), within [`super::CLOSE_TIMEOUT`].
    pub(crate) async fn close(self) {
        let Self { client, task, .. } = self;
        drop(client);
        let abort = task.abort_handle();
        if tokio::time::timeout(super::CLOSE_TIMEOUT, task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }

    /// Drops the socket at once: the server rolls back what was open and
    /// releases the connection's locks as soon as it notices.
    pub(crate) fn abort(self) {
        self.task.abort();
    }
}

struct DbErrorText(String);

enum ConnectFailure {
    Pg(tokio_postgres::Error),
    Text(DbErrorText),
}

impl From<tokio_postgres::Error> for ConnectFailure {
    fn from(e: tokio_postgres::Error) -> Self {
        ConnectFailure::Pg(e)
    }
}

impl From<DbErrorText> for ConnectFailure {
    fn from(e: DbErrorText) -> Self {
        ConnectFailure::Text(e)
    }
}

async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "PostgreSQL connection ended with an error");
    }
}

/// A driver error as text: the server's message and code, or the error chain.
pub(crate) fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return format!("{} (code {})", db.message(), db.code().code());
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Sorts a driver error: the server's own statement timeout is
/// [`DbError::Timeout`]; a statement cancelled by someone else
/// (`pg_cancel_backend`, also SQLSTATE 57014) and everything else is
/// [`DbError::Sql`]; a refused read-only or multi-statement query is
/// [`DbError::Unsafe`].
pub(crate) fn classify(url: &SecretUrl, err: &tokio_postgres::Error) -> DbError {
    let text = url.scrub(&describe(err));
    let Some(db) = err.as_db_error() else {
        return DbError::Sql(text);
    };
    let code = db.code();
    if *code == SqlState::QUERY_CANCELED && db.message().contains("statement timeout") {
        return DbError::Timeout(text);
    }
    if *code == SqlState::READ_ONLY_SQL_TRANSACTION
        || (*code == SqlState::SYNTAX_ERROR
            && db.message().contains("cannot insert multiple commands"))
    {
        return DbError::Unsafe(text);
    }
    DbError::Sql(text)
}
