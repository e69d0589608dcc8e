//! Detect on PostgreSQL: the read-only cursor, the server-side count, and
//! the mapping of the server's refusals to "unsafe SQL".

use tokio_postgres::SimpleQueryMessage;

use super::{FETCH_CHUNK, PgSession, SERVER_COUNT_ABOVE};
use crate::db::{DbError, Detection, Dialect, sample};
use crate::outcome::Sample;
use crate::sql::first_keyword;

impl PgSession {
    /// Opens the cursor and reads it: the body of [`Session::detect`].
    /// For a single statement without a limit (a report-only rule counts
    /// every row) or with one above [`SERVER_COUNT_ABOVE`] (a fix rule with a
    /// large `max_rows`, e.g. a purge), the server counts: see
    /// [`Self::count_on_server`]. A few rows are cheaper read than counted.
    pub(super) async fn read_cursor(
        &self,
        sql: &str,
        keep: usize,
        limit: Option<u64>,
    ) -> Result<Detection, DbError> {
        if limit.is_none_or(|limit| limit > SERVER_COUNT_ABOVE)
            && let [single] = crate::sql::split_statements(sql, Dialect::Postgres).as_slice()
        {
            return self.count_on_server(single, keep, limit).await;
        }
        self.conn
            .execute_one(
                &format!("DECLARE dbjanitor_detect NO SCROLL CURSOR FOR {sql}"),
                &[],
            )
            .await
            .map_err(|e| unsafe_detect(sql, e))?;
        let keep = keep.min(Sample::MAX_ROWS);
        let mut detection = Detection {
            complete: true,
            ..Detection::default()
        };
        loop {
            // With a limit, one row more than the limit says whether there are more.
            let want = match limit {
                Some(limit) => (limit + 1).saturating_sub(detection.count).min(FETCH_CHUNK),
                None => FETCH_CHUNK,
            };
            let fetched = self
                .fetch(
                    &format!("FETCH FORWARD {want} FROM dbjanitor_detect"),
                    keep,
                    &mut detection,
                )
                .await
                .map_err(|e| unsafe_detect(sql, e))?;
            if let Some(limit) = limit
                && detection.count > limit
            {
                detection.count = limit;
                detection.complete = false;
                return Ok(detection);
            }
            if fetched < want {
                return Ok(detection);
            }
        }
    }

    /// Detect of a report-only rule (or of a fix rule whose `max_rows` is
    /// large: `limit`): ONE statement that counts the query's rows on the
    /// server (with a limit, up to one row past it) and returns only the
    /// sample, so a million rows do not cross the wire to be counted (issue 11). The count and the sample
    /// are the same query's rows from the same snapshot (one statement has
    /// one snapshot at every isolation level); the count comes as the first
    /// column of every sample row (and no row at all means 0), each sample
    /// row as its row value's text (`ROW(sample.*)::text`, each field the
    /// column's own text output, as `psql` prints it).
    ///
    /// The statement is NOT a cursor (issue 11, third round): it runs through
    /// the unnamed extended-protocol statement, fetched whole, so PostgreSQL
    /// may plan the count in parallel as it does for `psql` (it never
    /// parallelises a cursor). The guarantees stay the server's: the unnamed
    /// statement refuses a second statement, the nesting refuses DML and a
    /// data-modifying CTE, and the read-only (sub)transaction of every
    /// detect refuses functions that write. The column names come from a
    /// cursor of no rows, only when there is a sample.
    pub(super) async fn count_on_server(
        &self,
        sql: &str,
        keep: usize,
        limit: Option<u64>,
    ) -> Result<Detection, DbError> {
        let keep = keep.min(Sample::MAX_ROWS);
        // With a limit, counting stops one row past it: that says "more".
        let all = match limit {
            Some(limit) => format!(
                "(SELECT 1 FROM ({sql}\n) AS dbjanitor_all LIMIT {}) AS dbjanitor_limited",
                limit.saturating_add(1)
            ),
            None => format!("({sql}\n) AS dbjanitor_all"),
        };
        let counted = self
            .conn
            .query_one_stmt(
                &format!(
                    "SELECT (SELECT count(*) FROM {all}) AS dbjanitor_count, \
                     ROW(dbjanitor_sample.*)::text AS dbjanitor_row \
                     FROM ({sql}\n) AS dbjanitor_sample LIMIT {}",
                    keep.max(1)
                ),
                &[],
            )
            .await
            .map_err(|e| unsafe_detect(sql, e))?;
        let not_counted = || DbError::Sql("the server's count was not a number".to_owned());
        let count = match counted.first() {
            Some(row) => row
                .try_get::<_, i64>(0)
                .ok()
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(not_counted)?,
            None => 0,
        };
        let (count, complete) = match limit {
            Some(limit) if count > limit => (limit, false),
            _ => (count, true),
        };
        let mut sample = Sample::default();
        if count > 0 && keep > 0 {
            self.conn
                .execute_one(
                    &format!(
                        "DECLARE dbjanitor_detect NO SCROLL CURSOR FOR \
                         SELECT * FROM ({sql}\n) AS dbjanitor_sample LIMIT 0"
                    ),
                    &[],
                )
                .await
                .map_err(|e| unsafe_detect(sql, e))?;
            let mut described = Detection::default();
            self.fetch("FETCH FORWARD 1 FROM dbjanitor_detect", 0, &mut described)
                .await?;
            sample.columns = described.sample.columns;
            for row in counted.iter().take(keep) {
                let text: Option<&str> = row.try_get(1).map_err(|_| not_counted())?;
                let mut fields = text.and_then(sample::record_fields).ok_or_else(|| {
                    DbError::Sql(format!("a sample row was not a row value: {text:?}"))
                })?;
                fields.resize(sample.columns.len(), None);
                sample.rows.push(
                    fields
                        .into_iter()
                        .map(|f| f.as_deref().map(sample::clip))
                        .collect(),
                );
            }
        }
        Ok(Detection {
            count,
            sample,
            complete,
        })
    }

    /// One FETCH: counts rows and keeps the first `keep`; returns the rows fetched.
    pub(super) async fn fetch(
        &self,
        sql: &str,
        keep: usize,
        detection: &mut Detection,
    ) -> Result<u64, DbError> {
        use futures_util::StreamExt;
        let stream = self
            .conn
            .client
            .simple_query_raw(sql)
            .await
            .map_err(|e| self.conn.error(&e))?;
        let mut stream = std::pin::pin!(stream);
        let mut fetched = 0u64;
        while let Some(message) = stream.next().await {
            match message.map_err(|e| self.conn.error(&e))? {
                SimpleQueryMessage::RowDescription(columns)
                    if detection.sample.columns.is_empty() =>
                {
                    detection.sample.columns =
                        columns.iter().map(|c| c.name().to_owned()).collect();
                }
                SimpleQueryMessage::Row(row) => {
                    if detection.sample.rows.len() < keep {
                        detection.sample.rows.push(
                            (0..row.len())
                                .map(|i| row.get(i).map(sample::clip))
                                .collect(),
                        );
                    }
                    fetched += 1;
                    detection.count += 1;
                }
                _ => {}
            }
        }
        Ok(fetched)
    }
}

/// Maps the server's refusals of a detect to [`DbError::Unsafe`]: a
/// statement that cannot be a cursor (`DELETE ... RETURNING` is a syntax
/// error after `DECLARE ... FOR`) or a data-modifying CTE. A typo in a real
/// SELECT stays the server's error.
fn unsafe_detect(sql: &str, error: DbError) -> DbError {
    let reads = matches!(
        first_keyword(sql, Dialect::Postgres).as_str(),
        "SELECT" | "WITH" | "VALUES" | "TABLE"
    );
    match error {
        DbError::Sql(text)
            if (!reads && text.contains("(code 42601)"))
                || text.contains("data-modifying statements in WITH")
                || text.contains("data-modifying statement must be at the top level") =>
        {
            DbError::Unsafe(format!(
                "detect must be one read-only query (SELECT, WITH ... SELECT, VALUES, TABLE): {text}"
            ))
        }
        DbError::Unsafe(text) if text.contains("(code 25006)") => DbError::Unsafe(format!(
            "detect tried to write, which the server refused (it runs read-only): {text}"
        )),
        other => other,
    }
}
