//! The `rules:` list expanded into rule files: folders walked once each,
//! symlink loops named instead of followed, each file read once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_saphyr::Spanned;

use super::Loader;

impl Loader<'_> {
    /// Expands the `rules:` list into rule files: files as given, folders
    /// searched recursively for `*.yaml`/`*.yml`, sorted by path.
    pub(super) fn rule_files(
        &mut self,
        file: &Path,
        base: &Path,
        entries: &[Spanned<String>],
    ) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in entries {
            let path = base.join(&entry.value);
            if path.is_dir() {
                let mut walk = RuleWalk::default();
                if let Err(e) = walk.folder(&path) {
                    self.err(
                        file,
                        entry.referenced,
                        format!("cannot read rule folder {}: {e}", path.display()),
                    );
                }
                for (link, target) in &walk.loops {
                    self.err(
                        file,
                        entry.referenced,
                        format!(
                            "rule folder {}: the symlink {} loops back to its own parent folder {} \
                             (remove it, or point it outside the rule folder)",
                            path.display(),
                            link.display(),
                            target.display()
                        ),
                    );
                }
                let mut found = walk.files;
                if found.is_empty() {
                    self.err(
                        file,
                        entry.referenced,
                        format!("rule folder {} holds no .yaml files", path.display()),
                    );
                }
                found.sort();
                files.extend(found);
            } else if path.is_file() {
                files.push(path);
            } else {
                self.err(
                    file,
                    entry.referenced,
                    format!("rule path {} does not exist", path.display()),
                );
            }
        }
        // Read each file once, however many paths (symlinks) lead to it.
        let mut seen = BTreeSet::new();
        files.retain(|f| seen.insert(std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())));
        files
    }
}

/// Collects `*.yaml`/`*.yml` under a rule folder, following symlinks.
///
/// Hidden names are skipped: a Kubernetes ConfigMap mount holds `..data` and
/// `..<timestamp>` folders that would otherwise load every rule twice. Each
/// folder is entered once (by canonical path), so two links to one folder do
/// not read it twice, and a link to one of its own parent folders
/// (`ln -s .. rules/sub/up`) is recorded in `loops` instead of being walked
/// until the kernel's link limit, which multiplied every rule (false
/// "duplicate rule name" errors) and, with two such links, memory without end.
#[derive(Debug, Default)]
struct RuleWalk {
    files: Vec<PathBuf>,
    /// `(the link as found, the parent folder it points back to)`.
    loops: Vec<(PathBuf, PathBuf)>,
    /// Canonical paths of folders already walked.
    visited: BTreeSet<PathBuf>,
    /// Canonical paths of the folders from the root down to the current one.
    ancestors: Vec<PathBuf>,
}

impl RuleWalk {
    fn folder(&mut self, dir: &Path) -> std::io::Result<()> {
        let canonical = std::fs::canonicalize(dir)?;
        if self.ancestors.contains(&canonical) {
            self.loops.push((dir.to_path_buf(), canonical));
            return Ok(());
        }
        if !self.visited.insert(canonical.clone()) {
            return Ok(());
        }
        self.ancestors.push(canonical);
        let result = self.entries(dir);
        self.ancestors.pop();
        result
    }

    fn entries(&mut self, dir: &Path) -> std::io::Result<()> {
        let mut paths = std::fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<std::io::Result<Vec<_>>>()?;
        paths.sort();
        for path in paths {
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
            {
                continue;
            }
            if path.is_dir() {
                self.folder(&path)?;
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e == "yaml" || e == "yml")
            {
                self.files.push(path);
            }
        }
        Ok(())
    }
}
