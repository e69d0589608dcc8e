//! serde's messages in the README's words (issue 12.5).
//!
//! `invalid i64`, `expected sequence start` and `invalid type: unit value`
//! are what the YAML library says; an operator needs the key, what it
//! expects and what was found. The key is read from the line the error points
//! at (or the nearest line above holding `key:`), the value from after it.

/// Rewrites a YAML shape error at `line` (1-based) of `text`; messages it
/// does not know are returned unchanged.
pub(super) fn in_plain_words(text: &str, line: u64, message: &str) -> String {
    let Some((key, value)) = key_at(text, line) else {
        return message.to_owned();
    };
    let found = if value.is_empty() {
        String::new()
    } else {
        format!(", found {value}")
    };
    if is_integer_error(message) {
        return format!("{key} must be a whole number such as 50{found}");
    }
    if message.starts_with("invalid boolean") {
        return format!("{key} must be true or false{found}");
    }
    if message == "expected sequence start" {
        return format!("{key} must be a list such as [a, b]{found}");
    }
    if message == "expected mapping start" {
        return format!("{key} must be a map of settings (indented `name: value` lines){found}");
    }
    if message == "expected string scalar" {
        return format!("{key} must be text, not a list or a map");
    }
    if let Some(expected) = message.strip_prefix("invalid type: unit value, expected ") {
        return empty_value(&key, expected);
    }
    if let Some((kind, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.split_once(", expected "))
    {
        let kind = match kind {
            "sequence" => "a list",
            "map" => "a map",
            other => other,
        };
        return format!("{key} must be {expected}, found {kind}");
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        return format!("{key}: unknown value {rest}");
    }
    message.to_owned()
}

/// `invalid i64`, `invalid u32`, ...: a number that does not parse.
fn is_integer_error(message: &str) -> bool {
    message.strip_prefix("invalid ").is_some_and(|t| {
        matches!(
            t,
            "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64"
        )
    })
}

/// "detect is empty: write ...", saying what belongs there (for a key
/// written with no value, and for SQL that is only blanks or `;`).
pub(crate) fn empty_value(key: &str, expected: &str) -> String {
    match key {
        "detect" => "detect is empty: write the query that finds the rows to fix \
                     (SQL text, or a map with keys mysql, postgres, sqlite)"
            .to_owned(),
        "fix" => "fix is empty: write the statement that fixes the rows detect finds, \
                  or remove fix: for a rule that only reports"
            .to_owned(),
        _ => format!("{key} is empty: write {expected}"),
    }
}

/// The key of the entry at `line` and the value written after it: that line
/// if it holds `key:`, else the nearest line above with less indentation
/// (the key of a block list or map the error is inside).
fn key_at(text: &str, line: u64) -> Option<(String, String)> {
    let index = usize::try_from(line).ok()?.checked_sub(1)?;
    let lines: Vec<&str> = text.lines().collect();
    let here = lines.get(index)?;
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut limit = indent(here) + 1;
    for candidate in lines[..=index].iter().rev() {
        let trimmed = candidate.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || indent(candidate) >= limit {
            continue;
        }
        let entry = trimmed.trim_start_matches("- ");
        if let Some((key, value)) = entry.split_once(':') {
            let key = key.trim().trim_matches(['"', '\'']);
            if !key.is_empty() && !key.contains(' ') {
                let value = value.split(" #").next().unwrap_or_default().trim();
                return Some((printable(key), printable(value)));
            }
        }
        limit = indent(candidate);
    }
    None
}

/// Control characters (a tab, say) escaped, so a message stays one line.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::in_plain_words;

    #[test]
    fn library_words_become_the_readmes() {
        let text = "name: a\nmax_rows: \"50 rows\"\ndetect:\ntags: x\nlock: x\nto:\n  - [a]\n";
        assert_eq!(
            in_plain_words(text, 2, "invalid i64"),
            "max_rows must be a whole number such as 50, found \"50 rows\""
        );
        assert!(
            in_plain_words(text, 3, "invalid type: unit value, expected SQL text")
                .starts_with("detect is empty: write the query")
        );
        assert_eq!(
            in_plain_words(text, 4, "expected sequence start"),
            "tags must be a list such as [a, b], found x"
        );
        assert_eq!(
            in_plain_words(text, 7, "expected string scalar"),
            "to must be text, not a list or a map"
        );
        assert_eq!(in_plain_words(text, 99, "odd"), "odd");
    }
}
