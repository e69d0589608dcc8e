//! Just enough SQL lexing to split a rule's text into statements.
//!
//! dbjanitor never rewrites rule SQL; it only needs to know where statements
//! end, so it can (a) insist that detect is a single statement, (b) prepare
//! each fix statement in `check --connect`, and (c) refuse DDL in a
//! transactional MySQL rule, where it would commit implicitly. The lexer
//! knows quotes, comments and PostgreSQL dollar quoting; it does not parse.

use crate::db::Dialect;

/// Splits `sql` into its statements, trimmed, without the separating `;`.
/// Empty statements (`;;`, a trailing `;`, comments only) are dropped.
#[must_use]
pub fn split_statements(sql: &str, dialect: Dialect) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let mut statements = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => i = skip_quoted(bytes, i, b'\'', dialect == Dialect::MySql),
            b'"' => i = skip_quoted(bytes, i, b'"', dialect == Dialect::MySql),
            b'`' => i = skip_quoted(bytes, i, b'`', false),
            b'-' if bytes.get(i + 1) == Some(&b'-') => i = skip_line(bytes, i),
            b'#' if dialect == Dialect::MySql => i = skip_line(bytes, i),
            b'/' if bytes.get(i + 1) == Some(&b'*') => i = skip_block_comment(bytes, i),
            b'$' if dialect == Dialect::Postgres => i = skip_dollar_quoted(sql, i),
            b';' => {
                push_statement(&mut statements, &sql[start..i], dialect);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    push_statement(&mut statements, &sql[start..], dialect);
    statements
}

/// The first keyword of a statement, upper-cased, after comments and `(`.
#[must_use]
pub fn first_keyword(statement: &str, dialect: Dialect) -> String {
    let stripped = strip_leading_comments(statement, dialect);
    stripped
        .trim_start_matches(|c: char| c == '(' || c.is_whitespace())
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase()
}

/// Whether a statement changes the schema rather than rows. Its "rows
/// affected" (MariaDB reports every row an `ALTER TABLE` copies) are not rows
/// the fix changed, so they do not count towards `changed` or `max_rows`.
#[must_use]
pub fn is_ddl(statement: &str, dialect: Dialect) -> bool {
    matches!(
        first_keyword(statement, dialect).as_str(),
        "ALTER" | "CREATE" | "DROP" | "RENAME" | "TRUNCATE" | "COMMENT" | "GRANT" | "REVOKE"
    )
}

/// Whether a statement is DDL that MySQL/MariaDB commit implicitly.
#[must_use]
pub fn is_implicit_commit_ddl(statement: &str) -> bool {
    matches!(
        first_keyword(statement, Dialect::MySql).as_str(),
        "ALTER" | "CREATE" | "DROP" | "RENAME" | "TRUNCATE" | "LOCK" | "UNLOCK"
    )
}

fn push_statement<'a>(out: &mut Vec<&'a str>, text: &'a str, dialect: Dialect) {
    let trimmed = text.trim();
    if !strip_leading_comments(trimmed, dialect).trim().is_empty() {
        out.push(trimmed);
    }
}

fn strip_leading_comments(mut s: &str, dialect: Dialect) -> &str {
    loop {
        let t = s.trim_start();
        if let Some(rest) = t.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, r)| r);
        } else if dialect == Dialect::MySql && t.starts_with('#') {
            s = t.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(rest) = t.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, r)| r);
        } else {
            return t;
        }
    }
}

fn skip_quoted(bytes: &[u8], open: usize, quote: u8, backslash_escapes: bool) -> usize {
    let mut i = open + 1;
    while i < bytes.len() {
        let b = bytes[i];
        if backslash_escapes && b == b'\\' {
            i += 2;
        } else if b == quote {
            // A doubled quote is an escaped quote inside the literal.
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    bytes.len()
}

fn skip_line(bytes: &[u8], start: usize) -> usize {
    bytes[start..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |p| start + p + 1)
}

fn skip_block_comment(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 2;
    while i + 1 < bytes.len() {
        if bytes[i] == b'*' && bytes[i + 1] == b'/' {
            return i + 2;
        }
        i += 1;
    }
    bytes.len()
}

/// Skips `$tag$ ... $tag$`; a `$` that does not open a tag (`$1`) is one byte.
fn skip_dollar_quoted(sql: &str, start: usize) -> usize {
    let rest = &sql[start + 1..];
    let tag_len = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let tag = &rest[..tag_len];
    if !rest[tag_len..].starts_with('$') || tag.starts_with(|c: char| c.is_ascii_digit()) {
        return start + 1;
    }
    let delimiter = format!("${tag}$");
    let body_start = start + 1 + tag_len + 1;
    sql[body_start..]
        .find(&delimiter)
        .map_or(sql.len(), |p| body_start + p + delimiter.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_top_level_semicolons_only() {
        let sql = "UPDATE t SET a = ';' WHERE b = 'x''y;'; -- c;\nDELETE FROM u /* ; */ WHERE 1=1;";
        assert_eq!(
            split_statements(sql, Dialect::Postgres),
            vec![
                "UPDATE t SET a = ';' WHERE b = 'x''y;'",
                "-- c;\nDELETE FROM u /* ; */ WHERE 1=1"
            ]
        );
    }

    #[test]
    fn mysql_backslash_and_hash_comments() {
        let sql = r"UPDATE t SET a = 'it\'s;'; # x;y
SELECT 1";
        assert_eq!(split_statements(sql, Dialect::MySql).len(), 2);
        // In PostgreSQL a backslash is an ordinary character in a string.
        assert_eq!(
            split_statements("SELECT 'a\\'; SELECT 2", Dialect::Postgres).len(),
            2
        );
    }

    #[test]
    fn postgres_dollar_quotes_hide_semicolons() {
        let sql = "DO $body$ BEGIN EXECUTE 'x'; END $body$; SELECT $1";
        let parts = split_statements(sql, Dialect::Postgres);
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert!(parts[0].ends_with("$body$"));
        assert_eq!(
            split_statements("DO $$ a; b $$", Dialect::Postgres).len(),
            1
        );
    }

    #[test]
    fn empty_and_comment_only_statements_are_dropped() {
        assert!(split_statements(" ; -- nothing\n ;", Dialect::Sqlite).is_empty());
        assert_eq!(
            split_statements("SELECT 1;\n", Dialect::Sqlite),
            vec!["SELECT 1"]
        );
    }

    #[test]
    fn first_keyword_skips_comments_and_parens() {
        assert_eq!(
            first_keyword("-- x\n /* y */ (select 1)", Dialect::MySql),
            "SELECT"
        );
        assert!(is_implicit_commit_ddl("  alter table t drop primary key"));
        assert!(!is_implicit_commit_ddl("UPDATE t SET created = 1"));
        assert!(is_ddl(
            "ALTER TABLE t DROP CONSTRAINT t_pkey",
            Dialect::Postgres
        ));
        assert!(!is_ddl("DELETE FROM t", Dialect::Postgres));
    }

    #[test]
    fn unterminated_constructs_do_not_panic() {
        for sql in [
            "'abc",
            "/* abc",
            "$tag$ abc",
            "\"x",
            "`y",
            "$",
            "$$",
            "-- x",
        ] {
            let _ = split_statements(sql, Dialect::Postgres);
            let _ = split_statements(sql, Dialect::MySql);
        }
    }
}
