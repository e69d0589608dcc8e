//! `${VAR}` references in config values: where their values come from
//! ([`Environment`]: the process, or a map in tests) and how the loader
//! expands them, reporting an unset, empty or non-UTF-8 variable once.

use std::collections::BTreeMap;
use std::path::Path;

use serde_saphyr::{Location, Spanned};

use super::Loader;

/// Where `${VAR}` values come from: the process environment, or a map in tests.
pub trait Environment {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<String>;

    /// Whether `name` is set but not valid UTF-8 (so [`Environment::var`]
    /// says `None` for a variable that is, in fact, set): the error then says
    /// what is wrong instead of "not set".
    fn is_set_but_not_unicode(&self, _name: &str) -> bool {
        false
    }
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn is_set_but_not_unicode(&self, name: &str) -> bool {
        matches!(std::env::var(name), Err(std::env::VarError::NotUnicode(_)))
    }
}

impl Environment for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Loader<'_> {
    /// Expands `${VAR}` references; `None` (with an error recorded) if one is
    /// unset, empty or not UTF-8. `$${` is a literal `${` (as in Compose files).
    pub(super) fn expand(&mut self, file: &Path, value: &Spanned<String>) -> Option<String> {
        let text = &value.value;
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(start) = rest.find('$') {
            out.push_str(&rest[..start]);
            let after_dollar = &rest[start + 1..];
            if let Some(literal) = after_dollar.strip_prefix("${") {
                out.push_str("${");
                rest = literal;
                continue;
            }
            let Some(after) = after_dollar.strip_prefix('{') else {
                out.push('$');
                rest = after_dollar;
                continue;
            };
            let Some(end) = after.find('}') else {
                self.err(
                    file,
                    value.referenced,
                    "unterminated ${ in value (expected ${VARIABLE}; write $${ for a literal ${)",
                );
                return None;
            };
            let name = &after[..end];
            out.push_str(&self.env_value(file, value.referenced, name)?);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Some(out)
    }

    /// The value of `${name}`, or `None` with the reason recorded.
    fn env_value(&mut self, file: &Path, at: Location, name: &str) -> Option<String> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            self.err(
                file,
                at,
                format!(
                    "invalid variable name {name:?} in ${{...}} (write $${{ for a literal ${{)"
                ),
            );
            return None;
        }
        let problem = match self.env.var(name) {
            Some(v) if !v.is_empty() => return Some(v),
            Some(_) => "is empty",
            None if self.env.is_set_but_not_unicode(name) => "is not valid UTF-8",
            None => "is not set",
        };
        if self.failed.variables.insert(name.to_owned()) {
            self.err(file, at, format!("environment variable {name} {problem}"));
        }
        None
    }
}
