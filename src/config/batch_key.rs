//! `batch.key` of a rule (issue 11, keyset batches) and where its
//! placeholders `{batch_first_key}`/`{batch_last_key}` may appear: in every
//! dialect's fix when `batch.key` is set, nowhere else (never in detect).

use std::path::Path;

use serde_saphyr::Spanned;

use super::Loader;
use super::raw::{RawBatch, RawRule};
use crate::db::Dialect;
use crate::rule::{BatchKey, DialectSql, FIRST_KEY_PLACEHOLDER, LAST_KEY_PLACEHOLDER};

/// Whether `text` uses either key placeholder.
fn uses_a_key(text: &str) -> bool {
    text.contains(FIRST_KEY_PLACEHOLDER) || text.contains(LAST_KEY_PLACEHOLDER)
}

impl Loader<'_> {
    /// `batch.key`, checked with the placeholders of detect and the fix.
    pub(super) fn batch_key(
        &mut self,
        file: &Path,
        raw: &RawRule,
        (detect, fix): (&DialectSql, Option<&DialectSql>),
        dialects: &[Dialect],
    ) -> Option<BatchKey> {
        if [&detect.any, &detect.mysql, &detect.postgres, &detect.sqlite]
            .into_iter()
            .flatten()
            .any(|text| uses_a_key(text))
        {
            self.err(
                file,
                raw.detect.referenced,
                format!("{FIRST_KEY_PLACEHOLDER} and {LAST_KEY_PLACEHOLDER} belong in a batch fix with batch.key, not in detect"),
            );
        }
        let batch: Option<&RawBatch> = raw.batch.as_ref().map(|b| &b.value);
        let key = batch.and_then(|b| b.key.as_ref());
        if let (Some(fix), Some(raw_fix)) = (fix, raw.fix.as_ref()) {
            for &dialect in dialects {
                let text = fix.for_dialect(dialect).unwrap_or_default();
                let both =
                    text.contains(FIRST_KEY_PLACEHOLDER) && text.contains(LAST_KEY_PLACEHOLDER);
                if key.is_none() && uses_a_key(text) {
                    self.err(
                        file,
                        raw_fix.referenced,
                        format!("the {dialect} fix uses a key placeholder, which needs batch.key"),
                    );
                } else if key.is_some() && !both {
                    self.err(file, raw_fix.referenced, format!("batch.key is set, so the {dialect} fix must use both {FIRST_KEY_PLACEHOLDER} and {LAST_KEY_PLACEHOLDER} (e.g. WHERE id BETWEEN {FIRST_KEY_PLACEHOLDER} AND {LAST_KEY_PLACEHOLDER} AND ...)"));
                }
            }
        }
        let key: &Spanned<String> = key?;
        if batch.is_some_and(|b| b.size.is_none()) {
            self.err(
                file,
                key.referenced,
                "batch.key needs batch.size: the number of rows of each batch's key window",
            );
        }
        let column = key.value.trim();
        let plain = column
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && column
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !plain {
            self.err(
                file,
                key.referenced,
                format!("batch.key must name one column of detect's rows (letters, digits, _), found {column:?}"),
            );
            return None;
        }
        Some(BatchKey {
            column: column.to_owned(),
        })
    }
}
