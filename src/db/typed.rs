//! Typed statements for dbjanitor's own tables (the audit history): bind a
//! few value types, read rows with typed getters, on any backend.
//!
//! Why next to the engine's text sessions rather than in the audit: rule SQL
//! is sent as text and read back as text ([`super::Session`]), but the audit
//! table binds times, counts and flags and reads them back typed. Both open
//! their connections here, with the same URL handling, TLS, keepalives and
//! scrubbed errors: PostgreSQL through [`PgConn`] (every statement through
//! the unnamed statement, nothing named is prepared, so it works behind
//! PgBouncer in transaction mode), MySQL/MariaDB and SQLite through the sqlx
//! connection a [`TextConn`] holds.
//!
//! Statements are written once with `?` placeholders; [`numbered`] turns
//! them into PostgreSQL's `$1, $2, ...` in one place, when they are sent.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::mysql::{MySql, MySqlDatabaseError, MySqlRow};
use sqlx::sqlite::{Sqlite, SqliteConnectOptions, SqliteRow};
use sqlx::{Database, Encode, Type};
use tokio_postgres::types::{ToSql, Type as PgType};

use super::pgconn::PgConn;
use super::text::{TextConn, TextDatabase};
use super::{DatabaseConfig, DbError, Dialect, connect_error, mysql_session_options};

/// What a typed connection is for: how it names itself and its bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Purpose {
    /// PostgreSQL `application_name`, unless the URL sets one.
    pub(crate) application_name: &'static str,
    /// Upper bound of the connection attempt.
    pub(crate) connect_timeout: Duration,
    /// SQLite's busy timeout (how long a statement waits for another writer).
    pub(crate) busy_timeout: Duration,
}

/// A value bound to a `?` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    /// A BIGINT (NULL for `None`).
    Int(Option<i64>),
    /// A boolean.
    Bool(bool),
    /// Text (NULL for `None`).
    Text(Option<&'a str>),
    /// A UTC timestamp (NULL for `None`).
    Time(Option<DateTime<Utc>>),
}

impl From<i64> for Value<'_> {
    fn from(v: i64) -> Self {
        Value::Int(Some(v))
    }
}

impl From<Option<i64>> for Value<'_> {
    fn from(v: Option<i64>) -> Self {
        Value::Int(v)
    }
}

impl From<bool> for Value<'_> {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(v: &'a str) -> Self {
        Value::Text(Some(v))
    }
}

impl<'a> From<Option<&'a str>> for Value<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Value::Text(v)
    }
}

impl From<DateTime<Utc>> for Value<'_> {
    fn from(v: DateTime<Utc>) -> Self {
        Value::Time(Some(v))
    }
}

impl From<Option<DateTime<Utc>>> for Value<'_> {
    fn from(v: Option<DateTime<Utc>>) -> Self {
        Value::Time(v)
    }
}

/// One connection for typed statements, of the concrete type of its dialect.
pub(crate) enum TypedConn {
    /// PostgreSQL (unnamed statements only: pooler-safe).
    Postgres(PgConn),
    /// MySQL/MariaDB, with the current schema (for lock names).
    MySql(TextConn<MySql>, String),
    /// SQLite.
    Sqlite(TextConn<Sqlite>),
}

/// One row of a typed query.
pub(crate) enum TypedRow {
    /// PostgreSQL.
    Postgres(tokio_postgres::Row),
    /// MySQL/MariaDB.
    MySql(MySqlRow),
    /// SQLite.
    Sqlite(SqliteRow),
}

/// How a statement sent with [`TypedConn::batch_or_refused`] failed.
#[derive(Debug)]
pub(crate) enum Failed {
    /// The server answered with an error, so the statement was not applied;
    /// with its code (MySQL's error number, else the SQLSTATE).
    Refused(DbError, Option<String>),
    /// No answer (the connection failed): whether it ran is unknown.
    Lost(DbError),
}

impl TypedConn {
    /// Connects to `db` for `purpose`. MySQL/MariaDB sessions are pinned to
    /// UTC (`time_zone = '+00:00'`), since times are bound as UTC DATETIME
    /// values, and the current schema is read once.
    pub(crate) async fn open(db: &DatabaseConfig, purpose: &Purpose) -> Result<Self, DbError> {
        let url = &db.url;
        match db.dialect {
            Dialect::Postgres => Ok(TypedConn::Postgres(
                PgConn::connect(url, purpose.application_name, purpose.connect_timeout).await?,
            )),
            Dialect::MySql => {
                let options = mysql_session_options(url.expose())
                    .map_err(|e| connect_error(url, &e))?
                    .timezone(Some(String::from("+00:00")));
                let mut text =
                    TextConn::<MySql>::connect(url, &options, purpose.connect_timeout).await?;
                let row = text.fetch_one("SELECT COALESCE(DATABASE(), '')").await?;
                let schema = MySql::full_text(&row, 0).unwrap_or_default();
                Ok(TypedConn::MySql(text, schema))
            }
            Dialect::Sqlite => {
                let options = SqliteConnectOptions::from_str(url.expose())
                    .map_err(|e| connect_error(url, &e))?
                    .busy_timeout(purpose.busy_timeout);
                Ok(TypedConn::Sqlite(
                    TextConn::<Sqlite>::connect(url, &options, purpose.connect_timeout).await?,
                ))
            }
        }
    }

    /// The dialect of the connection.
    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            TypedConn::Postgres(_) => Dialect::Postgres,
            TypedConn::MySql(..) => Dialect::MySql,
            TypedConn::Sqlite(_) => Dialect::Sqlite,
        }
    }

    /// The current schema on MySQL/MariaDB (lock names are per schema); empty elsewhere.
    pub(crate) fn schema(&self) -> &str {
        match self {
            TypedConn::MySql(_, schema) => schema,
            TypedConn::Postgres(_) | TypedConn::Sqlite(_) => "",
        }
    }

    /// Sends our own SQL as text, without parameters (BEGIN, COMMIT, DDL; on
    /// PostgreSQL several statements at once).
    pub(crate) async fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        match self {
            TypedConn::Postgres(c) => c.batch(sql).await,
            TypedConn::MySql(c, _) => c.run(sql).await,
            TypedConn::Sqlite(c) => c.run(sql).await,
        }
    }

    /// [`Self::batch`], telling a statement the server refused (not applied)
    /// from one whose answer was lost (fate unknown).
    pub(crate) async fn batch_or_refused(&mut self, sql: &str) -> Result<(), Failed> {
        match self {
            TypedConn::Postgres(c) => c.client.batch_execute(sql).await.map_err(|e| {
                let code = e.as_db_error().map(|db| db.code().code().to_owned());
                sort(c.error(&e), code)
            }),
            TypedConn::MySql(c, _) => c.run_raw(sql).await.map_err(|e| {
                let code = e.as_database_error().map(|db| {
                    db.try_downcast_ref::<MySqlDatabaseError>().map_or_else(
                        || db.code().unwrap_or_default().into_owned(),
                        |m| m.number().to_string(),
                    )
                });
                sort(c.error(&e), code)
            }),
            TypedConn::Sqlite(c) => c.run_raw(sql).await.map_err(|e| {
                let code = e
                    .as_database_error()
                    .map(|db| db.code().unwrap_or_default().into_owned());
                sort(c.error(&e), code)
            }),
        }
    }

    /// Runs ONE statement (`?` placeholders) with `params`; rows affected.
    pub(crate) async fn execute(
        &mut self,
        sql: &'static str,
        params: &[Value<'_>],
    ) -> Result<u64, DbError> {
        match self {
            TypedConn::Postgres(c) => c.execute_one(&numbered(sql), &pg_params(params)).await,
            TypedConn::MySql(c, _) => c.execute_bound(bound(sql, params)).await,
            TypedConn::Sqlite(c) => c.execute_bound(bound(sql, params)).await,
        }
    }

    /// Every row of ONE query (`?` placeholders) with `params`.
    pub(crate) async fn query(
        &mut self,
        sql: &'static str,
        params: &[Value<'_>],
    ) -> Result<Vec<TypedRow>, DbError> {
        Ok(match self {
            TypedConn::Postgres(c) => c
                .query_one_stmt(&numbered(sql), &pg_params(params))
                .await?
                .into_iter()
                .map(TypedRow::Postgres)
                .collect(),
            TypedConn::MySql(c, _) => c
                .fetch_all_bound(bound(sql, params))
                .await?
                .into_iter()
                .map(TypedRow::MySql)
                .collect(),
            TypedConn::Sqlite(c) => c
                .fetch_all_bound(bound(sql, params))
                .await?
                .into_iter()
                .map(TypedRow::Sqlite)
                .collect(),
        })
    }

    /// The first row, if any, of [`Self::query`].
    pub(crate) async fn query_first(
        &mut self,
        sql: &'static str,
        params: &[Value<'_>],
    ) -> Result<Option<TypedRow>, DbError> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    /// Closes the connection politely, within `db::CLOSE_TIMEOUT`.
    pub(crate) async fn close(self) {
        match self {
            TypedConn::Postgres(c) => c.close().await,
            TypedConn::MySql(c, _) => c.close().await,
            TypedConn::Sqlite(c) => c.close().await,
        }
    }

    /// Drops the connection at once, without waiting for a stalled server:
    /// it rolls back what was open and frees the locks when it notices.
    pub(crate) fn abandon(self) {
        match self {
            TypedConn::Postgres(c) => c.abort(),
            TypedConn::MySql(c, _) => c.abort(),
            TypedConn::Sqlite(c) => c.abort(),
        }
    }
}

/// A server's answer (`code` known) is a refusal; no answer is a loss.
fn sort(error: DbError, code: Option<String>) -> Failed {
    match code {
        Some(code) => Failed::Refused(error, Some(code)),
        None => Failed::Lost(error),
    }
}

/// The parameters with the PostgreSQL types they are bound as.
fn pg_params<'a>(params: &'a [Value<'_>]) -> Vec<(&'a (dyn ToSql + Sync), PgType)> {
    params
        .iter()
        .map(|p| -> (&'a (dyn ToSql + Sync), PgType) {
            match p {
                Value::Int(v) => (v, PgType::INT8),
                Value::Bool(v) => (v, PgType::BOOL),
                Value::Text(v) => (v, PgType::TEXT),
                Value::Time(v) => (v, PgType::TIMESTAMPTZ),
            }
        })
        .collect()
}

/// A sqlx query of `sql` with `params` bound in order.
fn bound<DB>(
    sql: &'static str,
    params: &[Value<'_>],
) -> sqlx::query::Query<'static, DB, <DB as Database>::Arguments>
where
    DB: Database,
    Option<i64>: for<'t> Encode<'t, DB> + Type<DB>,
    bool: for<'t> Encode<'t, DB> + Type<DB>,
    Option<String>: for<'t> Encode<'t, DB> + Type<DB>,
    Option<DateTime<Utc>>: for<'t> Encode<'t, DB> + Type<DB>,
{
    params
        .iter()
        .fold(sqlx::query(sql), |query, param| match *param {
            Value::Int(v) => query.bind(v),
            Value::Bool(v) => query.bind(v),
            Value::Text(v) => query.bind(v.map(str::to_owned)),
            Value::Time(v) => query.bind(v),
        })
}

/// A column type [`TypedRow::get`] reads.
pub(crate) trait Cell: Sized {
    /// From a PostgreSQL row.
    fn postgres(row: &tokio_postgres::Row, index: usize) -> Result<Self, String>;
    /// From a MySQL/MariaDB row.
    fn mysql(row: &MySqlRow, index: usize) -> Result<Self, String>;
    /// From an SQLite row.
    fn sqlite(row: &SqliteRow, index: usize) -> Result<Self, String>;
}

/// [`Cell`] through each driver's own decoding of `$t`.
macro_rules! cell {
    ($($t:ty),*) => {$(
        impl Cell for $t {
            fn postgres(row: &tokio_postgres::Row, index: usize) -> Result<Self, String> {
                row.try_get::<_, $t>(index).map_err(|e| e.to_string())
            }
            fn mysql(row: &MySqlRow, index: usize) -> Result<Self, String> {
                sqlx::Row::try_get::<$t, _>(row, index).map_err(|e| e.to_string())
            }
            fn sqlite(row: &SqliteRow, index: usize) -> Result<Self, String> {
                sqlx::Row::try_get::<$t, _>(row, index).map_err(|e| e.to_string())
            }
        }
    )*};
}

cell!(
    bool,
    String,
    Option<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>
);

/// An INTEGER column of PostgreSQL (the schema version) read as BIGINT.
fn pg_int(row: &tokio_postgres::Row, index: usize) -> Result<Option<i64>, String> {
    row.try_get::<_, Option<i64>>(index)
        .or_else(|_| {
            row.try_get::<_, Option<i32>>(index)
                .map(|v| v.map(i64::from))
        })
        .map_err(|e| e.to_string())
}

impl Cell for Option<i64> {
    fn postgres(row: &tokio_postgres::Row, index: usize) -> Result<Self, String> {
        pg_int(row, index)
    }
    fn mysql(row: &MySqlRow, index: usize) -> Result<Self, String> {
        sqlx::Row::try_get::<Option<i64>, _>(row, index).map_err(|e| e.to_string())
    }
    fn sqlite(row: &SqliteRow, index: usize) -> Result<Self, String> {
        sqlx::Row::try_get::<Option<i64>, _>(row, index).map_err(|e| e.to_string())
    }
}

impl Cell for i64 {
    fn postgres(row: &tokio_postgres::Row, index: usize) -> Result<Self, String> {
        pg_int(row, index)?.ok_or_else(|| "unexpected NULL".to_owned())
    }
    fn mysql(row: &MySqlRow, index: usize) -> Result<Self, String> {
        <Option<i64>>::mysql(row, index)?.ok_or_else(|| "unexpected NULL".to_owned())
    }
    fn sqlite(row: &SqliteRow, index: usize) -> Result<Self, String> {
        <Option<i64>>::sqlite(row, index)?.ok_or_else(|| "unexpected NULL".to_owned())
    }
}

impl TypedRow {
    /// Column `index` as a `T` (a column of another type, or NULL where `T`
    /// is not an `Option`, is an error naming the column).
    pub(crate) fn get<T: Cell>(&self, index: usize) -> Result<T, DbError> {
        match self {
            TypedRow::Postgres(row) => T::postgres(row, index),
            TypedRow::MySql(row) => T::mysql(row, index),
            TypedRow::Sqlite(row) => T::sqlite(row, index),
        }
        .map_err(|e| DbError::Sql(format!("column {index}: {e}")))
    }
}

/// `sql` with each `?` outside quotes replaced by PostgreSQL's `$1`, `$2`, ...
pub(crate) fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut quoted = false;
    let mut next = 0u32;
    for ch in sql.chars() {
        match ch {
            '\'' => {
                quoted = !quoted;
                out.push(ch);
            }
            '?' if !quoted => {
                next += 1;
                out.push('$');
                out.push_str(&next.to_string());
            }
            _ => out.push(ch),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_outside_quotes() {
        assert_eq!(
            numbered("SELECT '?' FROM t WHERE a = ? AND b IN (?, ?)"),
            "SELECT '?' FROM t WHERE a = $1 AND b IN ($2, $3)"
        );
    }

    #[test]
    fn each_value_is_bound_as_its_postgres_type() {
        let at = Utc::now();
        let params = [
            Value::from(1i64),
            Value::from(true),
            Value::from("a"),
            Value::from(at),
        ];
        let types: Vec<PgType> = pg_params(&params).into_iter().map(|(_, t)| t).collect();
        assert_eq!(
            types,
            [
                PgType::INT8,
                PgType::BOOL,
                PgType::TEXT,
                PgType::TIMESTAMPTZ
            ]
        );
    }
}
