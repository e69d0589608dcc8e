//! What every backend shares: rule SQL is sent as text (PostgreSQL simple
//! query protocol, MySQL `COM_QUERY`, SQLite's own), so it means what it means
//! in `psql` or `mariadb`, and its values come back in a form that renders as
//! text whatever the column type. Each backend says only how to render one
//! cell and how to read rows affected ([`TextDatabase`]).

use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::{AssertSqlSafe, Column, Connection, Database, Executor, Row, SqlSafeStr};

use super::{CLOSE_TIMEOUT, DbError, Detection, connect_error, sql_error};
use crate::outcome::Sample;
use crate::secret::SecretUrl;

/// The per-dialect pieces of [`TextConn`].
pub(crate) trait TextDatabase: Database {
    /// One cell of a row as text (`None` for NULL).
    fn cell(row: &Self::Row, index: usize) -> Option<String>;

    /// One cell of dbjanitor's own SQL, whose columns are text: whole, never clipped.
    fn full_text(row: &Self::Row, index: usize) -> Option<String>;

    /// Rows affected by a finished statement.
    fn rows_affected(result: &Self::QueryResult) -> u64;
}

/// One pinned connection and the URL whose secrets its errors must not show.
/// The fields are private so that every error a backend returns goes through
/// the URL's scrubbing.
pub(crate) struct TextConn<DB: Database> {
    conn: DB::Connection,
    url: SecretUrl,
}

impl<DB> TextConn<DB>
where
    DB: TextDatabase,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
{
    /// Connects with `options` (parsed from `url`) within `timeout`.
    pub(crate) async fn connect(
        url: &SecretUrl,
        options: &<DB::Connection as Connection>::Options,
        timeout: Duration,
    ) -> Result<Self, DbError> {
        let conn = tokio::time::timeout(timeout, DB::Connection::connect_with(options))
            .await
            .map_err(|_| DbError::Connect(format!("timed out after {timeout:?}")))?
            .map_err(|e| connect_error(url, &e))?;
        Ok(Self {
            conn,
            url: url.clone(),
        })
    }

    /// Runs statements and hands back the driver's own error, for a backend
    /// that tells errors apart by code (SQLite's busy); [`Self::error`] turns
    /// it into a [`DbError`].
    pub(crate) async fn run_raw(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        self.conn
            .execute(sqlx::raw_sql(AssertSqlSafe(sql.to_owned())))
            .await
            .map(|_| ())
    }

    /// A driver error of this connection, secrets masked.
    pub(crate) fn error(&self, err: &sqlx::Error) -> DbError {
        sql_error(&self.url, err)
    }

    /// Runs one statement with bound parameters (dbjanitor's own SQL, e.g.
    /// the lease table's); rows affected.
    pub(crate) async fn execute_bound<'q, E>(&mut self, query: E) -> Result<u64, DbError>
    where
        E: 'q + sqlx::Execute<'q, DB>,
    {
        self.conn
            .execute(query)
            .await
            .map(|done| DB::rows_affected(&done))
            .map_err(|e| sql_error(&self.url, &e))
    }

    /// The first row, if any, of a query with bound parameters.
    pub(crate) async fn fetch_optional_bound<'q, E>(
        &mut self,
        query: E,
    ) -> Result<Option<DB::Row>, DbError>
    where
        E: 'q + sqlx::Execute<'q, DB>,
    {
        self.conn
            .fetch_optional(query)
            .await
            .map_err(|e| sql_error(&self.url, &e))
    }

    /// Every row of a query with bound parameters (dbjanitor's own SQL, e.g.
    /// the audit table's, see `typed`).
    pub(crate) async fn fetch_all_bound<'q, E>(&mut self, query: E) -> Result<Vec<DB::Row>, DbError>
    where
        E: 'q + sqlx::Execute<'q, DB>,
    {
        self.conn
            .fetch_all(query)
            .await
            .map_err(|e| sql_error(&self.url, &e))
    }

    /// Runs statements for their effect.
    pub(crate) async fn run(&mut self, sql: &str) -> Result<(), DbError> {
        self.execute(sql).await.map(|_| ())
    }

    /// The first row of a query.
    pub(crate) async fn fetch_one(&mut self, sql: &str) -> Result<DB::Row, DbError> {
        self.conn
            .fetch_one(sqlx::raw_sql(AssertSqlSafe(sql.to_owned())))
            .await
            .map_err(|e| sql_error(&self.url, &e))
    }

    /// The first cell of the first row, as text.
    pub(crate) async fn fetch_text(&mut self, sql: &str) -> Result<Option<String>, DbError> {
        self.fetch_one(sql).await.map(|row| DB::cell(&row, 0))
    }

    /// Counts a query's rows as they stream past, keeping `keep` of them;
    /// stops reading after `limit` rows (one more is read to learn whether
    /// the result was complete).
    pub(crate) async fn detect(
        &mut self,
        sql: &str,
        keep: usize,
        limit: Option<u64>,
    ) -> Result<Detection, DbError> {
        let keep = keep.min(Sample::MAX_ROWS);
        let mut detection = Detection {
            complete: true,
            ..Detection::default()
        };
        let mut rows = self
            .conn
            .fetch(sqlx::raw_sql(AssertSqlSafe(sql.to_owned())));
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(|e| sql_error(&self.url, &e))?
        {
            if limit.is_some_and(|limit| detection.count >= limit) {
                detection.complete = false;
                break;
            }
            if detection.count == 0 {
                detection.sample.columns =
                    row.columns().iter().map(|c| c.name().to_owned()).collect();
            }
            if detection.sample.rows.len() < keep {
                detection
                    .sample
                    .rows
                    .push((0..row.len()).map(|i| DB::cell(&row, i)).collect());
            }
            detection.count += 1;
        }
        Ok(detection)
    }

    /// Runs one statement and returns its rows affected.
    pub(crate) async fn execute(&mut self, sql: &str) -> Result<u64, DbError> {
        self.conn
            .execute(sqlx::raw_sql(AssertSqlSafe(sql.to_owned())))
            .await
            .map(|done| DB::rows_affected(&done))
            .map_err(|e| sql_error(&self.url, &e))
    }

    /// dbjanitor's own SQL (see `Session::own`): one statement whose result
    /// columns are all text; every row, unclipped.
    pub(crate) async fn own(&mut self, sql: &str) -> Result<super::Own, DbError> {
        use futures_util::StreamExt;
        let mut own = super::Own::default();
        let mut stream = self
            .conn
            .fetch_many(sqlx::raw_sql(AssertSqlSafe(sql.to_owned())));
        while let Some(item) = stream.next().await {
            match item.map_err(|e| sql_error(&self.url, &e))? {
                sqlx::Either::Left(done) => own.rows_affected = DB::rows_affected(&done),
                sqlx::Either::Right(row) => own
                    .rows
                    .push((0..row.len()).map(|i| DB::full_text(&row, i)).collect()),
            }
        }
        Ok(own)
    }

    /// Parses and plans a statement on the server without running it.
    pub(crate) async fn prepare(&mut self, sql: &str) -> Result<(), DbError> {
        (&mut self.conn)
            .prepare(AssertSqlSafe(sql.to_owned()).into_sql_str())
            .await
            .map(|_| ())
            .map_err(|e| sql_error(&self.url, &e))
    }

    /// Closes politely, within [`CLOSE_TIMEOUT`].
    pub(crate) async fn close(self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.conn.close()).await;
    }

    /// Drops the connection: the socket closes at once and the server rolls
    /// back and releases the connection's locks. (`close_hard` can wait on a
    /// TLS shutdown after an error, the last thing an abort should do.)
    pub(crate) fn abort(self) {
        drop(self.conn);
    }
}
