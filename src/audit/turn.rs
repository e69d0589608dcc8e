//! The pair's tell sequence (audit schema v5): messages about one (rule,
//! database) pair are delivered in the order they were decided, across
//! processes, without holding the claim while a notifier answers.
//!
//! Why: a decision is recorded and committed under the pair's claim and
//! delivered afterwards, outside the transaction ([`super::claim`]). When
//! the pair's state changed twice within about one delivery time, two
//! replicas' messages could arrive in the opposite order (A decides `new
//! failed`, B decides `recovered` 53 ms later, B's webhook answers first):
//! people read a channel in arrival order. So each decision that delivers
//! takes a number under the claim ([`Turn`]: `told_seq` + 1) with a
//! deadline by which its delivery is over (`delivering_until`). Before
//! delivering, decision n waits — short reads of the pair row, no lock and
//! no transaction held — until `delivered_seq >= n - 1` or the deadline of
//! decision n - 1 has passed; after delivering (delivered or not) it sets
//! `delivered_seq` to n unless it is already higher. A dead or stuck teller
//! delays the next one by at most its own deadline, never forever; an
//! unreadable audit database, or a stop, ends the wait at once: the message
//! is delivered (an ordering wish never loses a message) and that is logged.
//!
//! The deadlines are taken from the deciding process's clock: clocks that
//! disagree by more than the notifier deadline shorten or lengthen the wait
//! by that much (never beyond the deadline plus the skew).

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{AuditError, AuditStore, Conn};
use crate::db::typed::Value;

/// How often a waiting teller reads the pair row.
const POLL: Duration = Duration::from_millis(100);

/// The claimed pair's `told_seq` and `delivering_until`.
const READ_TURN: &str =
    "SELECT told_seq, delivering_until FROM dbjanitor_pairs WHERE rule = ? AND database_name = ?";
/// Takes the next number: binds `told_seq`, `delivering_until`, rule, database.
const TAKE_TURN: &str = "UPDATE dbjanitor_pairs SET told_seq = ?, delivering_until = ? WHERE rule = ? AND database_name = ?";
/// How far the pair's deliveries are over.
const DELIVERED: &str =
    "SELECT delivered_seq FROM dbjanitor_pairs WHERE rule = ? AND database_name = ?";
/// A delivery is over: binds the number, rule, database, the number again.
const DONE: &str = "UPDATE dbjanitor_pairs SET delivered_seq = ? WHERE rule = ? AND database_name = ? AND delivered_seq < ?";

/// A decision's place in its pair's tell sequence, taken under the claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    rule: String,
    database: String,
    /// This decision's number (1, 2, ...).
    seq: i64,
    /// The deadline of decision `seq - 1` (none: nothing to wait for).
    previous_until: Option<DateTime<Utc>>,
}

/// Takes the next number of the pair's sequence on `conn` (inside the
/// claim's transaction, its row locked): this decision's delivery is over
/// by `bound` after the previous one's deadline (or after now, if that is
/// already past).
pub(super) async fn take(
    conn: &mut Conn,
    rule: &str,
    database: &str,
    bound: Duration,
) -> Result<Turn, AuditError> {
    let (told, previous_until) = read_turn(conn, rule, database).await?;
    let now = Utc::now();
    let from = previous_until.filter(|at| *at > now).unwrap_or(now);
    // A bound beyond chrono's range (a config of years) is a day: never a panic.
    let span = chrono::Duration::from_std(bound).unwrap_or_else(|_| chrono::Duration::days(1));
    let until = from.checked_add_signed(span).unwrap_or(from);
    let seq = told.saturating_add(1);
    let params: [Value<'_>; 4] = [seq.into(), until.into(), rule.into(), database.into()];
    conn.execute(TAKE_TURN, &params).await?;
    Ok(Turn {
        rule: rule.to_owned(),
        database: database.to_owned(),
        seq,
        previous_until: (seq > 1).then_some(previous_until).flatten(),
    })
}

/// `told_seq` and `delivering_until` of the claimed pair's row on `conn`.
async fn read_turn(
    conn: &mut Conn,
    rule: &str,
    database: &str,
) -> Result<(i64, Option<DateTime<Utc>>), AuditError> {
    let row = conn
        .query_first(READ_TURN, &[rule.into(), database.into()])
        .await?
        .ok_or_else(|| AuditError::Sql("the claimed pair has no row".to_owned()))?;
    Ok((row.get(0)?, row.get(1)?))
}

impl AuditStore {
    /// Waits until the decisions of `turn`'s pair decided before it are
    /// delivered, the previous one's deadline passed, `stop` is cancelled,
    /// or the audit database cannot say (each read within `audit.timeout`).
    /// Never fails: whatever ends the wait, the caller delivers next.
    pub async fn wait_turn(&self, turn: &Turn, stop: &CancellationToken) {
        let Some(until) = turn.previous_until else {
            return;
        };
        let mut conn: Option<Conn> = None;
        let why = loop {
            if Utc::now() >= until {
                break "the previous message about the pair was not delivered by its deadline";
            }
            match self.delivered(&mut conn, turn).await {
                Ok(done) if done >= turn.seq - 1 => {
                    if let Some(c) = conn.take() {
                        c.close().await;
                    }
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, rule = %turn.rule, database = %turn.database, "cannot read the pair's tell sequence: delivering without waiting for the previous message (it may arrive after this one)");
                    if let Some(c) = conn.take() {
                        c.abandon();
                    }
                    return;
                }
            }
            tokio::select! {
                () = stop.cancelled() => break "stopping",
                () = tokio::time::sleep(POLL) => {}
            }
        };
        if let Some(c) = conn.take() {
            c.close().await;
        }
        warn!(rule = %turn.rule, database = %turn.database, seq = turn.seq, "{why}: delivering now (it may arrive before the previous message about the pair)");
    }

    /// `delivered_seq` of `turn`'s pair, on `conn` (opened on first use).
    async fn delivered(&self, conn: &mut Option<Conn>, turn: &Turn) -> Result<i64, AuditError> {
        let read = async {
            if conn.is_none() {
                *conn = Some(self.open().await?);
            }
            let Some(c) = conn.as_mut() else {
                return Err(AuditError::Sql("no connection".to_owned()));
            };
            let (rule, database) = (turn.rule.as_str(), turn.database.as_str());
            let row = c
                .query_first(DELIVERED, &[rule.into(), database.into()])
                .await?;
            let done: Option<i64> = match row {
                Some(row) => Some(row.get(0)?),
                None => None,
            };
            // No row: the pair was pruned meanwhile; nothing to wait for.
            Ok(done.unwrap_or(i64::MAX))
        };
        tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| AuditError::Timeout(self.timeout))?
    }

    /// Says that `turn`'s delivery is over (delivered or not): the next
    /// decision about the pair stops waiting. A failure is logged; the next
    /// teller then waits until this one's deadline.
    pub async fn done_turn(&self, turn: &Turn) {
        let result = async {
            let mut conn = self.open().await?;
            let (rule, database) = (turn.rule.as_str(), turn.database.as_str());
            let seq = turn.seq;
            let params: [Value<'_>; 4] = [seq.into(), rule.into(), database.into(), seq.into()];
            let set = tokio::time::timeout(self.timeout, async {
                Ok(conn.execute(DONE, &params).await.map(drop)?)
            })
            .await;
            super::conn::finish(conn, set, self.timeout).await
        }
        .await;
        match result {
            Ok(()) => {
                debug!(rule = %turn.rule, database = %turn.database, seq = turn.seq, "delivery over")
            }
            Err(e) => {
                warn!(error = %e, rule = %turn.rule, database = %turn.database, "cannot say in the audit table that the pair's message is delivered: the next message about it waits until this one's deadline");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::typed::numbered;

    /// Written once with `?`, the statements bind in one order on every
    /// dialect; on PostgreSQL they were written with `$3`/`$4` first and
    /// DONE's number twice as `$3`: pin what is sent there now.
    #[test]
    fn postgres_texts_of_the_reordered_statements() {
        assert_eq!(
            numbered(TAKE_TURN),
            "UPDATE dbjanitor_pairs SET told_seq = $1, delivering_until = $2 WHERE rule = $3 AND database_name = $4"
        );
        assert_eq!(
            numbered(DONE),
            "UPDATE dbjanitor_pairs SET delivered_seq = $1 WHERE rule = $2 AND database_name = $3 AND delivered_seq < $4"
        );
    }
}
