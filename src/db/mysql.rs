//! MySQL and MariaDB backend.
//!
//! sqlx changes a new connection's `sql_mode` (adds `PIPES_AS_CONCAT`,
//! `NO_ENGINE_SUBSTITUTION`) and sets `time_zone='+00:00'`; both would change
//! what rule SQL means (`||`, `NOW()` against DATETIME columns). They are
//! turned off here, so a rule means what it means in the `mariadb` client.
//!
//! Locks: `GET_LOCK` on the pinned connection for every mode (MySQL has no
//! transaction-scoped lock). The lock survives COMMIT and is released
//! explicitly, or by the server when the connection closes — which is why a
//! connection is closed, never reused, after anything goes wrong.
//! Timeouts: `max_statement_time` on MariaDB (covers UPDATE/DELETE/DDL), and
//! `max_execution_time` on MySQL (SELECT only); `innodb_lock_wait_timeout` and
//! `lock_wait_timeout` so a blocked row or metadata lock cannot outlast it.

use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySql, MySqlConnectOptions, MySqlConnection, MySqlQueryResult, MySqlRow};
use sqlx::{Connection, Decode, Row, TypeInfo, ValueRef};

use super::text::{TextConn, TextDatabase};
use super::{
    ConnectSettings, DatabaseConfig, DbError, Detection, Session, connect_error, millis,
    mysql_lock_name, sample,
};

impl TextDatabase for MySql {
    fn cell(row: &MySqlRow, index: usize) -> Option<String> {
        let value = row.try_get_raw(index).ok()?;
        if value.is_null() {
            return None;
        }
        let type_name = value.type_info().name().to_owned();
        let raw = <&[u8] as Decode<MySql>>::decode(value).ok()?;
        let binary = type_name.contains("BINARY")
            || type_name.contains("BLOB")
            || type_name == "BIT"
            || type_name == "GEOMETRY";
        Some(if binary {
            sample::bytes(raw)
        } else {
            sample::clip(&String::from_utf8_lossy(raw))
        })
    }

    fn rows_affected(result: &MySqlQueryResult) -> u64 {
        result.rows_affected()
    }
}

/// One pinned MySQL/MariaDB connection.
pub struct MySqlSession {
    text: TextConn<MySql>,
    mariadb: bool,
    schema: String,
}

impl MySqlSession {
    /// Connects with the URL of `db`, undoing sqlx's session defaults.
    pub async fn connect(db: &DatabaseConfig, settings: &ConnectSettings) -> Result<Self, DbError> {
        let options = MySqlConnectOptions::from_str(db.url.expose())
            .map_err(|e| connect_error(&db.url, &e))?
            .pipes_as_concat(false)
            .no_engine_substitution(false)
            .timezone(None);
        let conn = tokio::time::timeout(settings.timeout, MySqlConnection::connect_with(&options))
            .await
            .map_err(|_| DbError::Connect(format!("timed out after {:?}", settings.timeout)))?
            .map_err(|e| connect_error(&db.url, &e))?;
        let mut text = TextConn {
            conn,
            url: db.url.clone(),
        };
        let row = text
            .fetch_one("SELECT VERSION(), COALESCE(DATABASE(), '')")
            .await?;
        Ok(Self {
            mariadb: MySql::cell(&row, 0).is_some_and(|v| v.contains("MariaDB")),
            schema: MySql::cell(&row, 1).unwrap_or_default(),
            text,
        })
    }

    async fn get_lock(&mut self, lock_name: &str, wait: Duration) -> Result<bool, DbError> {
        let name = quote(&mysql_lock_name(&self.schema, lock_name));
        // GET_LOCK takes whole seconds on every server version; a negative value would
        // wait forever on MySQL, so the wait is never negative.
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        match self
            .text
            .fetch_text(&format!("SELECT GET_LOCK({name}, {seconds})"))
            .await?
            .as_deref()
        {
            Some("1") => Ok(true),
            Some("0") => Ok(false),
            other => Err(DbError::Sql(format!(
                "GET_LOCK returned {other:?} (an error, or a Galera cluster where GET_LOCK is unsupported)"
            ))),
        }
    }

    async fn release_lock(&mut self, lock_name: &str) -> Result<(), DbError> {
        let name = quote(&mysql_lock_name(&self.schema, lock_name));
        self.text.run(&format!("DO RELEASE_LOCK({name})")).await
    }
}

/// Quotes a string literal for MySQL (our own lock names only).
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

impl Session for MySqlSession {
    async fn begin_locked(&mut self, lock_name: &str, wait: Duration) -> Result<bool, DbError> {
        if !self.get_lock(lock_name, wait).await? {
            return Ok(false);
        }
        self.text.run("START TRANSACTION").await?;
        Ok(true)
    }

    async fn finish_locked(&mut self, commit: bool, lock_name: &str) -> Result<(), DbError> {
        self.text
            .run(if commit { "COMMIT" } else { "ROLLBACK" })
            .await?;
        self.release_lock(lock_name).await
    }

    async fn lock_session(&mut self, lock_name: &str, wait: Duration) -> Result<bool, DbError> {
        self.get_lock(lock_name, wait).await
    }

    async fn unlock_session(&mut self, lock_name: &str) -> Result<(), DbError> {
        self.release_lock(lock_name).await
    }

    async fn begin(&mut self) -> Result<(), DbError> {
        self.text.run("START TRANSACTION").await
    }

    async fn commit(&mut self) -> Result<(), DbError> {
        self.text.run("COMMIT").await
    }

    async fn rollback(&mut self) -> Result<(), DbError> {
        self.text.run("ROLLBACK").await
    }

    async fn set_statement_timeout(
        &mut self,
        timeout: Duration,
        _in_transaction: bool,
    ) -> Result<(), DbError> {
        // Session scope: the connection belongs to this run alone and is closed after it.
        let seconds = timeout.as_secs_f64().max(0.001);
        let whole_seconds = timeout.as_secs().max(1);
        let limit = if self.mariadb {
            format!("max_statement_time = {seconds}")
        } else {
            format!("max_execution_time = {}", millis(timeout))
        };
        self.text
            .run(&format!(
                "SET SESSION {limit}, SESSION innodb_lock_wait_timeout = {whole_seconds}, SESSION lock_wait_timeout = {whole_seconds}"
            ))
            .await
    }

    async fn detect(
        &mut self,
        sql: &str,
        keep: usize,
        _limit: Option<u64>,
    ) -> Result<Detection, DbError> {
        self.text.detect(sql, keep).await
    }

    async fn execute(&mut self, sql: &str) -> Result<super::Executed, DbError> {
        let rows = self.text.execute(sql).await?;
        Ok(super::Executed {
            rows,
            modifies_data: !crate::sql::is_ddl(sql, super::Dialect::MySql),
        })
    }

    async fn prepare(&mut self, sql: &str) -> Result<(), DbError> {
        self.text.prepare(sql).await
    }

    async fn close(self) {
        self.text.close().await;
    }

    async fn abort(self) {
        self.text.abort();
    }

    async fn abort_after_commit(self) -> super::CommitOutcome {
        self.text.abort();
        super::CommitOutcome::Unknown("the COMMIT reply was lost".to_owned())
    }

    fn abandon_bound(&self) -> Duration {
        Duration::from_secs(28_800)
    }
}
