//! Detect counted on the server (issue 11): a report-only detect, and a fix
//! rule's detect whose limit (`max_rows` + 1) is above
//! [`SERVER_COUNT_ABOVE`], is counted by MariaDB/MySQL instead of streaming
//! every row to dbjanitor to count it (a 500 k-row purge sent its 500 k keys
//! before the first batch, about 0.3 s).
//!
//! Why apart from `mysql.rs`: how the count and the sample come from one
//! snapshot is one concern; the session's locks and transactions another.
//!
//! **Two statements, one snapshot.** MySQL cannot count a query and return
//! a few of its rows in order from one statement without rewriting it (a
//! derived table's `ORDER BY` without `LIMIT` may be dropped by the
//! optimizer, so a wrapped sample would lose "newest first"). So the count
//! is `SELECT COUNT(*) FROM (<detect>) ...` and the sample is the detect
//! itself, stopped after the sample's rows (`sql_select_limit`), both in
//! one READ ONLY transaction at REPEATABLE READ: InnoDB gives every
//! consistent read of such a transaction the same read view, so the count
//! and the sample see the same rows. REPEATABLE READ is set explicitly
//! (`SET TRANSACTION ISOLATION LEVEL`, which applies to the next
//! transaction only), whatever the server's or session's default: at READ
//! COMMITTED each statement takes a fresh snapshot and a row committed
//! between the two could be in the sample but not in the count. The
//! transactional rule's read-only detect transaction is opened the same
//! way (`begin_locked`). After the fix (a savepoint inside the fix's
//! read-write transaction, whose isolation level is the session's) detect
//! streams as before. Tables without MVCC (MyISAM, MEMORY) have no read
//! view: there the two statements may see different rows.
//!
//! **Read-only, one statement.** The detect was already parsed by the server
//! as ONE prepared statement (`server_checks_one_statement`); the count runs
//! through the prepared-statement protocol too (the server refuses a second
//! statement), and both run inside `READ ONLY`, where a function that writes
//! is refused (error 1792). A query the server cannot wrap in a derived
//! table (duplicate column names, `SELECT ... INTO @v`) is streamed as before.

use sqlx::{AssertSqlSafe, Row};

use super::{MySqlSession, Txn};
use crate::db::{DbError, Detection};
use crate::outcome::Sample;

/// A detect that may read more rows than this (a fix rule's `max_rows` + 1)
/// is counted by the server; below it, reading the rows costs less than a
/// second statement. The same threshold as PostgreSQL's.
const SERVER_COUNT_ABOVE: u64 = 10_000;

/// The SQLSTATEs of a count the server could not wrap around the detect:
/// duplicate column names in the derived table (42S21), a syntax error
/// (42000) from a query that parsed alone (`SELECT ... INTO @v`).
const CANNOT_WRAP: [&str; 2] = ["(code 42S21)", "(code 42000)"];

impl MySqlSession {
    /// Whether this detect is counted on the server: without a limit or with
    /// one above [`SERVER_COUNT_ABOVE`], and not after the fix (whose
    /// transaction's isolation level dbjanitor does not choose).
    pub(super) fn counts_on_server(&self, limit: Option<u64>) -> bool {
        self.txn != Txn::ReadWrite && limit.is_none_or(|limit| limit > SERVER_COUNT_ABOVE)
    }

    /// Counts on the server and reads the sample in one REPEATABLE READ,
    /// READ ONLY transaction (its own, or the rule's of `begin_locked`).
    /// `Ok(None)` when the server could not wrap the query: the caller
    /// streams it (the rule's transaction, if any, is still open).
    pub(super) async fn counted_read_only(
        &mut self,
        sql: &str,
        keep: usize,
        limit: Option<u64>,
    ) -> Result<Option<Detection>, DbError> {
        let own = self.txn == Txn::None;
        if own {
            self.text
                .run("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .await?;
            self.text
                .run("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                .await?;
        }
        let detection = self.count_and_sample(sql, keep, limit).await;
        if own {
            self.text.run("ROLLBACK").await?;
        }
        detection
    }

    /// The count (with a limit, up to one row past it: that says "more"),
    /// then, when there are rows, the first `keep` of the query itself.
    async fn count_and_sample(
        &mut self,
        sql: &str,
        keep: usize,
        limit: Option<u64>,
    ) -> Result<Option<Detection>, DbError> {
        let counting = match limit {
            Some(limit) => format!(
                "SELECT COUNT(*) FROM (SELECT 1 FROM ({sql}\n) AS dbjanitor_all LIMIT {}) AS dbjanitor_limited",
                limit.saturating_add(1)
            ),
            None => format!("SELECT COUNT(*) FROM ({sql}\n) AS dbjanitor_all"),
        };
        // Cached (sqlx's default), not `persistent(false)`: sqlx closes a
        // one-off statement with a COM_STMT_CLOSE the server never answers,
        // and on its socket (no TCP_NODELAY) the next command then waits for
        // the server's delayed ACK, about 40 ms (benches/run.sh clean:
        // 54 ms against 13 ms for `mariadb -e`). The statement is freed when
        // the connection closes, or when the cache of 100 evicts it.
        let counted = self
            .text
            .fetch_optional_bound(sqlx::query(AssertSqlSafe(counting)))
            .await;
        let row = match counted {
            Err(DbError::Sql(text)) if CANNOT_WRAP.iter().any(|code| text.contains(code)) => {
                tracing::debug!(error = %text, "the server cannot count this detect; it is streamed");
                return Ok(None);
            }
            other => other?,
        };
        let count = match row {
            Some(row) => row
                .try_get::<i64, _>(0)
                .ok()
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| DbError::Sql("the server's count was not a number".to_owned()))?,
            None => 0,
        };
        let (count, complete) = match limit {
            Some(limit) if count > limit => (limit, false),
            _ => (count, true),
        };
        let keep = keep.min(Sample::MAX_ROWS);
        let mut sample = Sample::default();
        if count > 0 && keep > 0 {
            // An explicit LIMIT in the query wins over sql_select_limit: then
            // reading stops after `keep` + 1 rows (the rest is drained unread).
            self.text
                .run(&format!("SET SESSION sql_select_limit = {keep}"))
                .await?;
            let rows = self
                .text
                .detect(sql, keep, Some(u64::try_from(keep).unwrap_or(u64::MAX)))
                .await?;
            self.text
                .run("SET SESSION sql_select_limit = DEFAULT")
                .await?;
            sample = rows.sample;
        }
        Ok(Some(Detection {
            count,
            sample,
            complete,
        }))
    }
}
