//! The transactional and autocommit modes: one transaction around detect, fix
//! and verify, or the fix's statements committed as they go.

use super::{
    FixProgress, PendingCommit, Run, StepError, backlog_hint, guard, would_fix_without_running,
};
use crate::db::Session;
use crate::outcome::{Outcome, Reason, RunRecord};

impl Run<'_> {
    /// Transactional mode: everything in one transaction under a transaction lock.
    pub(super) async fn transactional<S: Session>(
        &self,
        session: &mut S,
        record: &mut RunRecord,
    ) -> Result<(), StepError> {
        let lock = &self.rule.lock;
        let limit = lock.wait.saturating_add(self.rule.timeout);
        let locked = if self.rule.only_reads() {
            self.step(limit, session.begin_reading(&lock.name, lock.wait))
                .await?
        } else {
            self.step(limit, session.begin_locked(&lock.name, lock.wait))
                .await?
        };
        if !locked {
            self.skipped(record);
            return Ok(());
        }
        self.step(
            self.rule.timeout,
            session.set_statement_timeout(self.rule.timeout, true),
        )
        .await?;
        let commit = self.transactional_steps(session, record).await?;
        if commit {
            self.commit_step(
                PendingCommit::Transaction,
                session.finish_locked(true, &lock.name),
            )
            .await?;
            record.outcome = Outcome::Fixed;
        } else {
            self.step(self.rule.timeout, session.finish_locked(false, &lock.name))
                .await?;
        }
        Ok(())
    }

    /// Steps 3–7 inside the transaction; returns whether to commit.
    pub(super) async fn transactional_steps<S: Session>(
        &self,
        session: &mut S,
        record: &mut RunRecord,
    ) -> Result<bool, StepError> {
        if !self.detect_and_guard(session, record).await? {
            return Ok(false);
        }
        self.images_before(session, record, 0).await?;
        let mut progress = FixProgress::default();
        let within = self.run_fix(session, &mut progress).await?;
        record.changed = Some(progress.changed);
        if within
            && !self
                .images_after(session, record, 0, progress.changed)
                .await?
        {
            return Ok(false);
        }
        if !within {
            guard(
                record,
                Reason::FixOverMaxRows,
                format!(
                    "a fix statement changed {} rows, more than max_rows {}; rolled back. {}",
                    progress.changed,
                    self.rule.max_rows,
                    backlog_hint(&self.rule.name, None)
                ),
            );
            return Ok(false);
        }
        if !self.verify(session, record, "rolled back").await? {
            return Ok(false);
        }
        if self.dry_run {
            record.outcome = Outcome::WouldFix;
            record.message =
                Some("dry-run: the fix ran inside the transaction and was rolled back".to_owned());
            return Ok(false);
        }
        Ok(true)
    }

    /// Autocommit mode: a session lock, no transaction around the fix.
    pub(super) async fn autocommit<S: Session>(
        &self,
        session: &mut S,
        record: &mut RunRecord,
    ) -> Result<(), StepError> {
        if !self.lock_session(session, record).await? {
            return Ok(());
        }
        self.autocommit_steps(session, record).await?;
        self.unlock_session(session).await
    }

    pub(super) async fn autocommit_steps<S: Session>(
        &self,
        session: &mut S,
        record: &mut RunRecord,
    ) -> Result<(), StepError> {
        if !self.detect_and_guard(session, record).await? {
            return Ok(());
        }
        if self.dry_run {
            would_fix_without_running(record);
            return Ok(());
        }
        let mut progress = FixProgress::default();
        let result = self.run_fix(session, &mut progress).await;
        if progress.statements > 0 {
            // Each statement committed as it finished, whatever comes next.
            record.changed = Some(progress.changed);
        }
        if let Err(error) = result {
            let total = self.fix_statements().len();
            record.message = Some(format!(
                "autocommit mode: {} of the fix's {total} statements finished and are committed ({} rows changed); the failing statement and those after it did not commit",
                progress.statements, progress.changed
            ));
            return Err(error);
        }
        if progress.changed > self.rule.max_rows {
            guard(
                record,
                Reason::FixOverMaxRows,
                format!(
                    "a fix statement changed {} rows, more than max_rows {}; autocommit mode: the change is already committed{}",
                    progress.changed,
                    self.rule.max_rows,
                    self.statements_not_run(&progress),
                ),
            );
            return Ok(());
        }
        if self
            .verify(
                session,
                record,
                "autocommit mode: the fix is already committed",
            )
            .await?
        {
            record.outcome = Outcome::Fixed;
        }
        Ok(())
    }

    /// "; the N statements after it were not run", when the fix stopped early.
    pub(super) fn statements_not_run(&self, progress: &FixProgress) -> String {
        let left = self
            .fix_statements()
            .len()
            .saturating_sub(progress.statements);
        if left == 0 {
            String::new()
        } else {
            format!("; the {left} statements after it were not run")
        }
    }
}
