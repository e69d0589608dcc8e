//! Connection failures as an operator reads them (issue 12.7): the engine
//! names the server in the error ([`crate::db::name_endpoint`]) and does not
//! try a database's later rules once it was unreachable; the text report
//! states the failure once per database, not once per rule: four rules on a
//! database that is down are one problem, not four.

use std::collections::BTreeMap;

use crate::outcome::{Reason, RunRecord};

/// For the text report: the first connection failure on each database keeps
/// its error; the later ones on the same database point back to it.
#[must_use]
pub(crate) fn grouped(records: &[RunRecord]) -> Vec<RunRecord> {
    let mut first: BTreeMap<String, String> = BTreeMap::new();
    records
        .iter()
        .map(|record| {
            let mut record = record.clone();
            if record.reason == Some(Reason::Connect) {
                match first.get(&record.database) {
                    Some(rule) => {
                        record.error = Some(format!(
                            "database {} unreachable, see {rule} @ {} above",
                            record.database, record.database
                        ));
                    }
                    None => {
                        first.insert(record.database.clone(), record.rule.clone());
                    }
                }
            }
            record
        })
        .collect()
}
