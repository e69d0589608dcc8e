//! The audit table's statements, each written once.
//!
//! Why one text per statement: the PostgreSQL and the MySQL/SQLite versions
//! used to be written side by side and differed only in placeholders
//! (`$1` / `?`) and boolean tests (`NOT dry_run` / `dry_run = 0`), so a fix
//! to one could miss the other. Booleans are now tested the way all three
//! engines read (`NOT dry_run`, `notified`), placeholders are written `?`, and
//! `db::typed` numbers them for PostgreSQL (`$1, $2, ...`) when it sends them.
//! The statements of the claim and of the tell sequence sit in `claim.rs`
//! and `turn.rs`, next to their one use.

/// One row per record; the columns `record::run_params` binds, in order.
pub(super) const INSERT: &str = "INSERT INTO dbjanitor_runs (rule, database_name, started_at, finished_at, duration_ms, \
    outcome, reason, message, error, detected, changed, remaining, batches, dry_run, notified, host, dbjanitor_version, run_id) \
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// The last non-dry run of a pair, with the columns `LastRun` needs.
pub(super) const LAST: &str = "SELECT outcome, started_at, duration_ms, detected, changed FROM dbjanitor_runs \
    WHERE rule = ? AND database_name = ? AND NOT dry_run ORDER BY started_at DESC, id DESC LIMIT 1";

/// The last real run of a pair that looked at the data (not skipped): its state.
pub(super) const STATE: &str = "SELECT outcome, started_at FROM dbjanitor_runs WHERE rule = ? AND database_name = ? \
    AND NOT dry_run AND outcome <> 'skipped' ORDER BY started_at DESC, id DESC LIMIT 1";

/// The last real run of a pair whose notification was delivered.
pub(super) const NOTIFIED: &str = "SELECT outcome, started_at FROM dbjanitor_runs WHERE rule = ? AND database_name = ? \
    AND NOT dry_run AND notified ORDER BY started_at DESC, id DESC LIMIT 1";

/// When a pair last succeeded (the list is `Outcome::is_success`, checked by a test).
pub(super) const SUCCESS: &str = "SELECT MAX(started_at) FROM dbjanitor_runs WHERE rule = ? AND database_name = ? \
    AND NOT dry_run AND outcome IN ('clean', 'found', 'fixed')";

/// `EXISTS` a newer real run of the same pair as `r` that also satisfies `$and`.
macro_rules! newer_real_run {
    ($and:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM dbjanitor_runs n WHERE n.rule = r.rule AND n.database_name = r.database_name \
             AND (n.started_at > r.started_at OR (n.started_at = r.started_at AND n.id > r.id)) AND NOT n.dry_run",
            $and,
            ")"
        )
    };
}

/// Retention (`?` cutoff, `?` limit): rows older than the cutoff, except each
/// pair's latest rows that `run --due`, notifications and `--metrics-file`
/// read (the latest real run, the latest real state, the latest delivered
/// notification, the latest success), whatever their age. A dry run's row is
/// never needed. The derived table (with its LIMIT) is what lets MySQL delete
/// from the table its subquery reads (error 1093 otherwise).
pub(super) const PRUNE: &str = concat!(
    "DELETE FROM dbjanitor_runs WHERE id IN (SELECT id FROM (SELECT r.id FROM dbjanitor_runs r WHERE r.started_at < ?",
    " AND (r.dry_run OR (",
    newer_real_run!(""),
    " AND (r.outcome = 'skipped' OR ",
    newer_real_run!(" AND n.outcome <> 'skipped'"),
    ") AND (NOT r.notified OR ",
    newer_real_run!(" AND n.notified"),
    ") AND (r.outcome NOT IN ('clean', 'found', 'fixed') OR ",
    newer_real_run!(" AND n.outcome IN ('clean', 'found', 'fixed')"),
    "))) ORDER BY r.started_at LIMIT ?) AS t)"
);

/// `dbjanitor history`: newest first; each filter (rule, database, since)
/// is bound twice and NULL means "any"; the last parameter is the limit.
/// PostgreSQL binds every parameter with its type (`db::typed`), so `$1 IS
/// NULL` needs no cast there.
pub(super) const RUNS: &str = "SELECT run_id, rule, database_name, started_at, duration_ms, outcome, reason, message, error, \
    detected, changed, dry_run, host FROM dbjanitor_runs \
    WHERE (? IS NULL OR rule = ?) AND (? IS NULL OR database_name = ?) AND (? IS NULL OR started_at >= ?) \
    ORDER BY started_at DESC, id DESC LIMIT ?";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::typed::numbered;
    use crate::outcome::Outcome;

    #[test]
    fn every_placeholder_is_numbered_for_postgres() {
        assert!(
            numbered(INSERT).ends_with("$17, $18)"),
            "{}",
            numbered(INSERT)
        );
        assert!(numbered(PRUNE).contains("r.started_at < $1"));
        assert!(numbered(PRUNE).contains("LIMIT $2)"));
        for sql in [INSERT, LAST, STATE, NOTIFIED, SUCCESS, PRUNE, RUNS] {
            assert!(!numbered(sql).contains('?'), "{sql}");
        }
    }

    /// The PostgreSQL texts are the ones written out by hand before the
    /// statements were written once (schema and plans unchanged).
    #[test]
    fn postgres_texts_are_the_hand_written_ones() {
        assert_eq!(
            numbered(LAST),
            "SELECT outcome, started_at, duration_ms, detected, changed FROM dbjanitor_runs \
             WHERE rule = $1 AND database_name = $2 AND NOT dry_run ORDER BY started_at DESC, id DESC LIMIT 1"
        );
        assert_eq!(
            numbered(NOTIFIED),
            "SELECT outcome, started_at FROM dbjanitor_runs WHERE rule = $1 AND database_name = $2 \
             AND NOT dry_run AND notified ORDER BY started_at DESC, id DESC LIMIT 1"
        );
        assert_eq!(
            numbered(SUCCESS),
            "SELECT MAX(started_at) FROM dbjanitor_runs WHERE rule = $1 AND database_name = $2 \
             AND NOT dry_run AND outcome IN ('clean', 'found', 'fixed')"
        );
    }

    /// Issue 13.3: the audit SQL's outcome lists are the ones `Outcome`'s
    /// methods decide (the statements are `concat!` constants, so they are
    /// checked here rather than built at run time).
    #[test]
    fn sql_outcome_lists_follow_the_outcome_methods() {
        let success = crate::outcome::sql_list(Outcome::is_success);
        for sql in [SUCCESS, PRUNE] {
            let lists: Vec<&str> = sql
                .match_indices("IN ('")
                .map(|(at, _)| {
                    let list = &sql[at + 3..];
                    &list[..=list.find(')').unwrap_or(list.len() - 1)]
                })
                .collect();
            assert!(!lists.is_empty(), "{sql}");
            assert!(lists.iter().all(|l| *l == success), "{lists:?} / {success}");
        }
        let not_state = crate::outcome::sql_list(|o| !o.is_state());
        assert_eq!(
            not_state, "('skipped')",
            "the SQL writes it as = / <> 'skipped'"
        );
    }
}
