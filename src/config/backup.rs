//! `backup:` of a rule and `images:` of the config (issue 14), kept apart
//! from the rest of the loader.

use std::path::Path;

use serde_saphyr::Spanned;

use super::Loader;
use super::raw::{RawBackup, RawImages};
use crate::backup::{Backup, Images, valid_identifier};
use crate::rule::Mode;

/// `images.keep`: a hundred years, like `audit.keep`.
const IMAGES_KEEP: (&str, std::time::Duration) =
    ("images.keep", std::time::Duration::from_hours(36_525 * 24));

impl Loader<'_> {
    /// `images:`; defaults when absent.
    pub(super) fn images(&mut self, file: &Path, raw: Option<&Spanned<RawImages>>) -> Images {
        let mut images = Images::default();
        let Some(raw) = raw else {
            return images;
        };
        if let Some(table) = &raw.value.table {
            if valid_identifier(&table.value, true) {
                images.table.clone_from(&table.value);
            } else {
                self.err(
                    file,
                    table.referenced,
                    format!(
                        "images.table {:?} is not a plain table name ([A-Za-z_][A-Za-z0-9_]*, optionally schema.table)",
                        table.value
                    ),
                );
            }
        }
        if let Some(keep) = &raw.value.keep
            && let Some(keep) = self.bounded_duration(file, keep, IMAGES_KEEP, true)
        {
            images.keep = keep;
        }
        images
    }

    /// `backup:` of a rule: plain names, never with `mode: autocommit` (its
    /// changes commit statement by statement, so no image could commit with
    /// them).
    pub(super) fn backup(
        &mut self,
        file: &Path,
        raw: Option<&Spanned<RawBackup>>,
        mode: Mode,
    ) -> Option<Backup> {
        let raw = raw?;
        let before = self.errors.len();
        if mode == Mode::Autocommit {
            self.err(
                file,
                raw.referenced,
                "backup: is not possible with mode: autocommit (each statement commits on its own, so the images could not commit with the change); remove backup: or use mode: transactional",
            );
        }
        let table = &raw.value.table;
        if !valid_identifier(&table.value, true) {
            self.err(
                file,
                table.referenced,
                format!(
                    "backup.table {:?} is not a plain table name ([A-Za-z_][A-Za-z0-9_]*, optionally schema.table)",
                    table.value
                ),
            );
        }
        if raw.value.key.is_empty() {
            self.err(
                file,
                raw.referenced,
                "backup.key: name the table's key columns (detect must return them)",
            );
        }
        for column in &raw.value.key {
            if !valid_identifier(&column.value, false) {
                self.err(
                    file,
                    column.referenced,
                    format!(
                        "backup.key {:?} is not a plain column name ([A-Za-z_][A-Za-z0-9_]*)",
                        column.value
                    ),
                );
            }
        }
        if self.errors.len() > before {
            return None;
        }
        Some(Backup {
            table: table.value.clone(),
            key: raw.value.key.iter().map(|k| k.value.clone()).collect(),
            images: Images::default(),
        })
    }
}
