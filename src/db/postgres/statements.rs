//! What a fix statement is, read from its text: whether it modifies data,
//! and whether it is transaction control (refused before it is sent).

use crate::db::Dialect;
use crate::sql::first_keyword;

/// Whether `statement` is data-modifying: INSERT, UPDATE, DELETE, MERGE, or
/// a WITH whose main statement is one of them.
pub(super) fn modifies_data(statement: &str) -> bool {
    match first_keyword(statement, Dialect::Postgres).as_str() {
        "INSERT" | "UPDATE" | "DELETE" | "MERGE" => true,
        "WITH" => matches!(
            main_keyword_after_with(statement).as_deref(),
            Some("INSERT" | "UPDATE" | "DELETE" | "MERGE")
        ),
        _ => false,
    }
}

/// The first keyword at parenthesis depth 0 after the CTE list of a WITH
/// statement (strings, identifiers and comments skipped).
fn main_keyword_after_with(statement: &str) -> Option<String> {
    let bytes = statement.as_bytes();
    let mut depth = 0i32;
    let mut i = 0;
    let mut word = String::new();
    while i <= bytes.len() {
        let c = bytes.get(i).copied().unwrap_or(b' ');
        if c.is_ascii_alphanumeric() || c == b'_' {
            word.push(c.to_ascii_uppercase() as char);
            i += 1;
            continue;
        }
        if depth == 0
            && matches!(
                word.as_str(),
                "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "VALUES" | "TABLE"
            )
        {
            return Some(word);
        }
        word.clear();
        match c {
            b'(' => depth += 1,
            b')' => depth -= 1,
            b'\'' | b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != c {
                    i += 1;
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Statements that end or nest transactions: refused inside dbjanitor's.
pub(super) fn is_transaction_control(statement: &str) -> bool {
    let keyword = first_keyword(statement, Dialect::Postgres);
    matches!(
        keyword.as_str(),
        "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "SAVEPOINT" | "RELEASE"
    ) || (keyword == "PREPARE"
        && statement
            .split_whitespace()
            .nth(1)
            .is_some_and(|w| w.eq_ignore_ascii_case("TRANSACTION")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_modifying_statements_are_recognised() {
        assert!(modifies_data("UPDATE job SET state = 'x'"));
        assert!(modifies_data("/* c */ delete from job"));
        assert!(modifies_data(
            "WITH old AS (SELECT id FROM job WHERE (a) = 'select') DELETE FROM job USING old"
        ));
        assert!(!modifies_data(
            "WITH gone AS (DELETE FROM job RETURNING id) SELECT count(*) FROM gone"
        ));
        assert!(!modifies_data("SELECT pg_sleep(1)"));
        assert!(!modifies_data("ALTER TABLE job ADD COLUMN x int"));
    }

    #[test]
    fn transaction_control_is_recognised() {
        for sql in [
            "COMMIT",
            "end",
            "/* x */ ROLLBACK",
            "BEGIN",
            "prepare transaction 'x'",
            "SAVEPOINT a",
        ] {
            assert!(is_transaction_control(sql), "{sql}");
        }
        assert!(!is_transaction_control("PREPARE q AS SELECT 1"));
        assert!(!is_transaction_control("UPDATE t SET committed = true"));
    }
}
