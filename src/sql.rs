//! Just enough SQL lexing to split a rule's text into statements and to tell
//! what kind of statement each one is.
//!
//! dbjanitor never rewrites rule SQL; it only needs to know where statements
//! end, so it can (a) insist that detect is a single statement, (b) prepare
//! each fix statement in `check --connect`, (c) refuse fix statements that
//! would end dbjanitor's transaction (COMMIT, ROLLBACK, BEGIN, MySQL's
//! implicitly committing statements) and (d) count only the rows of
//! data-modifying statements. The lexer knows each dialect's quotes and
//! comments: PostgreSQL `E''` strings (backslash escapes), `U&''`, dollar
//! quoting and nested `/* */` comments; MySQL backslash escapes, `#` and
//! `-- ` comments (the dash pair only before whitespace) and executable
//! `/*! */` comments (their content is code); SQLite `[identifiers]`. It does
//! not parse. The lexer is the first line only: the backends make the server
//! check "one statement" and "read only" wherever the engine allows it.
//!
//! (Over 500 lines because of its tests: the lexer is under 400 lines; the
//! cases pin every quoting and comment form of the three dialects.)

use crate::dialect::Dialect;

/// One lexical item that matters for splitting and classifying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// A bare word (keyword or identifier) at the given parenthesis depth.
    Word {
        start: usize,
        end: usize,
        depth: u32,
    },
    /// A top-level-or-nested statement separator.
    Semicolon { at: usize, depth: u32 },
}

/// Splits `sql` into its statements, trimmed, without the separating `;`.
/// Empty statements (`;;`, a trailing `;`, comments only) are dropped.
#[must_use]
pub(crate) fn split_statements(sql: &str, dialect: Dialect) -> Vec<&str> {
    let mut statements = Vec::new();
    let mut start = 0;
    for token in tokens(sql, dialect) {
        if let Token::Semicolon { at, .. } = token {
            push_statement(&mut statements, &sql[start..at], dialect);
            start = at + 1;
        }
    }
    push_statement(&mut statements, &sql[start..], dialect);
    statements
}

/// Lexes `sql` into words and semicolons, skipping quotes and comments.
fn tokens(sql: &str, dialect: Dialect) -> Vec<Token> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut depth = 0u32;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let next = bytes.get(i + 1).copied();
        i = match b {
            b'\'' => skip_quoted(bytes, i, b'\'', backslash_escapes(bytes, i, dialect)),
            b'"' => skip_quoted(bytes, i, b'"', dialect == Dialect::MySql),
            b'`' => skip_quoted(bytes, i, b'`', false),
            b'[' if dialect == Dialect::Sqlite => bytes[i..]
                .iter()
                .position(|&c| c == b']')
                .map_or(bytes.len(), |p| i + p + 1),
            b'-' if next == Some(b'-') && dash_comment(bytes, i, dialect) => skip_line(bytes, i),
            b'#' if dialect == Dialect::MySql => skip_line(bytes, i),
            b'/' if next == Some(b'*') => skip_block_comment(bytes, i, dialect),
            b'$' if dialect == Dialect::Postgres => skip_dollar_quoted(sql, i),
            b'(' => {
                depth += 1;
                i + 1
            }
            b')' => {
                depth = depth.saturating_sub(1);
                i + 1
            }
            b';' => {
                out.push(Token::Semicolon { at: i, depth });
                i + 1
            }
            c if is_word_start(c) => {
                let end = word_end(bytes, i, dialect);
                out.push(Token::Word {
                    start: i,
                    end,
                    depth,
                });
                end
            }
            _ => i + 1,
        };
    }
    out
}

fn is_word_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

/// The end of a bare word; PostgreSQL and MySQL identifiers may hold `$`.
fn word_end(bytes: &[u8], start: usize, dialect: Dialect) -> usize {
    let mut end = start;
    while end < bytes.len() {
        let c = bytes[end];
        let word_char = c.is_ascii_alphanumeric()
            || c == b'_'
            || c >= 0x80
            || (c == b'$' && dialect != Dialect::Sqlite);
        // A quote right after E/U&/N/X/B prefixes is handled by the caller.
        if !word_char {
            break;
        }
        end += 1;
    }
    end
}

/// Whether the string opening at `quote` takes backslash escapes: always on
/// MySQL, for `E'...'` on PostgreSQL (the `E` being a word of its own).
fn backslash_escapes(bytes: &[u8], quote: usize, dialect: Dialect) -> bool {
    match dialect {
        Dialect::MySql => true,
        Dialect::Sqlite => false,
        Dialect::Postgres => {
            quote >= 1
                && matches!(bytes[quote - 1], b'E' | b'e')
                && (quote < 2 || !is_word_byte(bytes[quote - 2]))
        }
    }
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// `--` starts a comment everywhere except MySQL, where it must be followed
/// by whitespace or the end (`1--1` is one minus minus one).
fn dash_comment(bytes: &[u8], at: usize, dialect: Dialect) -> bool {
    dialect != Dialect::MySql
        || bytes
            .get(at + 2)
            .is_none_or(|c| c.is_ascii_whitespace() || c.is_ascii_control())
}

/// The upper-cased words of one statement, with their parenthesis depth
/// relative to the statement.
fn words(statement: &str, dialect: Dialect) -> Vec<(String, u32)> {
    tokens(statement, dialect)
        .into_iter()
        .filter_map(|t| match t {
            Token::Word { start, end, depth } => {
                Some((statement[start..end].to_ascii_uppercase(), depth))
            }
            Token::Semicolon { .. } => None,
        })
        .collect()
}

/// The first keyword of a statement, upper-cased, after comments and `(`.
#[must_use]
pub(crate) fn first_keyword(statement: &str, dialect: Dialect) -> String {
    words(statement, dialect)
        .into_iter()
        .next()
        .map(|(w, _)| w)
        .unwrap_or_default()
}

/// Words that start a data-modifying statement.
const DML: [&str; 6] = ["INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE", "UPSERT"];

/// The keyword of the statement proper: the first word, or for `WITH ...`
/// the first top-level word after the common table expressions.
#[must_use]
pub(crate) fn main_keyword(statement: &str, dialect: Dialect) -> String {
    let words = words(statement, dialect);
    let Some((first, _)) = words.first() else {
        return String::new();
    };
    if first != "WITH" {
        return first.clone();
    }
    let top = words.iter().skip(1).filter(|(_, depth)| *depth == 0);
    for (word, _) in top {
        if DML.contains(&word.as_str()) || matches!(word.as_str(), "SELECT" | "VALUES" | "TABLE") {
            return word.clone();
        }
    }
    first.clone()
}

/// Whether a statement changes rows (INSERT, UPDATE, DELETE, MERGE, REPLACE,
/// or a `WITH ...` ending in one of them). Only these statements' rows
/// affected count towards `changed` and `max_rows`: a SELECT's row count, a
/// SET or DDL's "rows affected" (MariaDB reports the rows an `ALTER TABLE`
/// copies) are not rows the fix changed.
#[must_use]
pub(crate) fn modifies_data(statement: &str, dialect: Dialect) -> bool {
    DML.contains(&main_keyword(statement, dialect).as_str())
}

/// Whether a query statement hides a data-modifying statement in a CTE
/// (`WITH d AS (DELETE ... RETURNING *) SELECT ...`, PostgreSQL): its rows
/// affected would not count the rows it changed.
#[must_use]
pub(crate) fn hides_dml(statement: &str, dialect: Dialect) -> bool {
    let words = words(statement, dialect);
    if words.first().is_none_or(|(w, _)| w != "WITH") || modifies_data(statement, dialect) {
        return false;
    }
    words.windows(2).any(|pair| {
        let (before, _) = &pair[0];
        let (word, depth) = &pair[1];
        *depth > 0
            && matches!(word.as_str(), "INSERT" | "UPDATE" | "DELETE" | "MERGE")
            && !matches!(before.as_str(), "FOR" | "KEY" | "ON" | "NO")
    })
}

/// If `statement` controls transactions (and so could end or split the
/// transaction dbjanitor runs the fix in), the words that say so, e.g.
/// `"COMMIT"`. Refused in every fix: dbjanitor owns the transactions.
/// SAVEPOINT, RELEASE and ROLLBACK TO are refused too: they do not end the
/// transaction, but a fix has no use for them and they would make `changed`
/// count rows that were undone.
#[must_use]
pub(crate) fn transaction_control(statement: &str, dialect: Dialect) -> Option<String> {
    let words = words(statement, dialect);
    let first = words.first().map(|(w, _)| w.as_str())?;
    let second = words.get(1).map_or("", |(w, _)| w.as_str());
    match (first, second) {
        ("COMMIT" | "END" | "ROLLBACK" | "ABORT" | "BEGIN" | "SAVEPOINT" | "RELEASE", _) => {
            Some(first.to_owned())
        }
        ("START", "TRANSACTION") | ("PREPARE", "TRANSACTION") | ("SET", "TRANSACTION") => {
            Some(format!("{first} {second}"))
        }
        ("XA", _) if dialect == Dialect::MySql => Some("XA".to_owned()),
        // `SET autocommit = 1` commits the open transaction on MySQL.
        ("SET", _) if words.iter().any(|(w, _)| w == "AUTOCOMMIT") => {
            Some("SET autocommit".to_owned())
        }
        _ => None,
    }
}

/// If `statement` makes MySQL/MariaDB commit the open transaction implicitly
/// (MariaDB's list "SQL statements that cause an implicit commit"), its
/// leading words: DDL, table maintenance, account management, LOCK/UNLOCK,
/// FLUSH, LOAD INDEX, CACHE INDEX, replication control; CALL is refused too,
/// since a procedure may commit inside.
#[must_use]
pub(crate) fn implicit_commit(statement: &str) -> Option<String> {
    let words = words(statement, Dialect::MySql);
    let first = words.first().map(|(w, _)| w.as_str())?;
    let second = words.get(1).map_or("", |(w, _)| w.as_str());
    let commits = match first {
        "ALTER" | "CREATE" | "DROP" | "RENAME" | "TRUNCATE" | "LOCK" | "UNLOCK" | "ANALYZE"
        | "OPTIMIZE" | "REPAIR" | "CHECK" | "FLUSH" | "GRANT" | "REVOKE" | "CACHE" | "RESET"
        | "INSTALL" | "UNINSTALL" | "CALL" | "CHANGE" | "PURGE" => true,
        "LOAD" => second == "INDEX",
        "SET" => second == "PASSWORD",
        "START" | "STOP" => matches!(second, "SLAVE" | "REPLICA" | "ALL"),
        _ => false,
    };
    commits.then(|| {
        if matches!(
            first,
            "LOAD" | "SET" | "START" | "STOP" | "LOCK" | "UNLOCK" | "CACHE"
        ) {
            format!("{first} {second}")
        } else {
            first.to_owned()
        }
    })
}

/// Whether a detect statement is a query: SELECT, WITH ... SELECT, VALUES,
/// TABLE (and SHOW/EXPLAIN-like reads are not allowed: a detect lists rows).
#[must_use]
pub(crate) fn is_query(statement: &str, dialect: Dialect) -> bool {
    matches!(
        main_keyword(statement, dialect).as_str(),
        "SELECT" | "VALUES" | "TABLE"
    ) && !hides_dml(statement, dialect)
}

fn push_statement<'a>(out: &mut Vec<&'a str>, text: &'a str, dialect: Dialect) {
    let trimmed = text.trim();
    if has_code(trimmed, dialect) {
        out.push(trimmed);
    }
}

/// Whether text holds anything but whitespace and comments (numbers,
/// operators: `SELECT` is a word, but `1` alone is still a statement).
fn has_code(text: &str, dialect: Dialect) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let next = bytes.get(i + 1).copied();
        i = match bytes[i] {
            c if c.is_ascii_whitespace() => i + 1,
            b'-' if next == Some(b'-') && dash_comment(bytes, i, dialect) => skip_line(bytes, i),
            b'#' if dialect == Dialect::MySql => skip_line(bytes, i),
            b'/' if next == Some(b'*') && !executable_comment(bytes, i, dialect) => {
                skip_block_comment(bytes, i, dialect)
            }
            _ => return true,
        };
    }
    false
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

/// MySQL/MariaDB run the content of `/*! ... */` and `/*M! ... */`.
fn executable_comment(bytes: &[u8], start: usize, dialect: Dialect) -> bool {
    dialect == Dialect::MySql
        && (bytes.get(start + 2) == Some(&b'!')
            || (bytes.get(start + 2) == Some(&b'M') && bytes.get(start + 3) == Some(&b'!')))
}

/// Skips a block comment. PostgreSQL nests them; MySQL's executable comments
/// are code, so only their opener (and version number) is skipped.
fn skip_block_comment(bytes: &[u8], start: usize, dialect: Dialect) -> usize {
    if executable_comment(bytes, start, dialect) {
        let mut i = start + 2;
        while i < bytes.len() && (bytes[i] == b'!' || bytes[i] == b'M' || bytes[i].is_ascii_digit())
        {
            i += 1;
        }
        return i;
    }
    let nests = dialect == Dialect::Postgres;
    let mut depth = 1u32;
    let mut i = start + 2;
    while i + 1 < bytes.len() {
        if bytes[i] == b'*' && bytes[i + 1] == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else if nests && bytes[i] == b'/' && bytes[i + 1] == b'*' {
            depth += 1;
            i += 2;
        } else {
            i += 1;
        }
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
        assert!(implicit_commit("  alter table t drop primary key").is_some());
        assert!(implicit_commit("UPDATE t SET created = 1").is_none());
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

    #[test]
    fn postgres_e_strings_nested_comments_and_dollar_identifiers() {
        // The smuggling string of issue 8: E'\\'' is one backslash and a quote.
        let smuggle =
            "SELECT E'\\'' AS a; COMMIT; UPDATE job SET state = 'pwned'; SELECT 1 AS b --'";
        assert_eq!(split_statements(smuggle, Dialect::Postgres).len(), 4);
        assert_eq!(
            split_statements("SELECT e'it\\'s; x' AS a", Dialect::Postgres).len(),
            1
        );
        // A word ending in E is not an E'' prefix: 'abc\' ends at the quote.
        assert_eq!(
            split_statements("SELECT 1 AS some'x\\'; DELETE FROM t", Dialect::Postgres).len(),
            2
        );
        assert_eq!(
            split_statements("SELECT U&'d\\0061t\\+000061;' AS u", Dialect::Postgres).len(),
            1
        );
        assert_eq!(
            split_statements(
                "SELECT 1 /* a /* b */ ; */; DELETE FROM t",
                Dialect::Postgres
            ),
            vec!["SELECT 1 /* a /* b */ ; */", "DELETE FROM t"]
        );
        // `x$a$` is an identifier, not a dollar quote hiding the DELETE.
        assert_eq!(
            split_statements(
                "SELECT 1 AS x$a$; DELETE FROM t; SELECT $a$",
                Dialect::Postgres
            )
            .len(),
            3
        );
    }

    #[test]
    fn mysql_executable_comments_dash_rule_and_sqlite_brackets() {
        assert_eq!(
            split_statements("SELECT 1 /*! ; DELETE FROM t */", Dialect::MySql).len(),
            2
        );
        assert_eq!(
            split_statements("SELECT 1 /*M!100000 ; DELETE FROM t */", Dialect::MySql).len(),
            2
        );
        // `1--1` is arithmetic on MySQL, not a comment hiding the DELETE.
        assert_eq!(
            split_statements("SELECT 1--1; DELETE FROM t", Dialect::MySql).len(),
            2
        );
        assert_eq!(
            split_statements("SELECT 1 -- x; y", Dialect::MySql).len(),
            1
        );
        assert_eq!(
            split_statements("SELECT [x'] ; DELETE FROM t; --']", Dialect::Sqlite).len(),
            2
        );
    }

    #[test]
    fn classifies_statements() {
        let pg = Dialect::Postgres;
        assert!(modifies_data("update t set a = 1", pg));
        assert!(modifies_data(
            "WITH x AS (SELECT 1) DELETE FROM t USING x",
            pg
        ));
        assert!(!modifies_data("SELECT pg_sleep(1)", pg));
        assert!(!modifies_data("ALTER TABLE t ADD c int", Dialect::MySql));
        assert!(modifies_data("REPLACE INTO t VALUES (1)", Dialect::MySql));
        assert!(hides_dml(
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            pg
        ));
        assert!(!hides_dml(
            "WITH d AS (SELECT * FROM t FOR UPDATE) SELECT * FROM d",
            pg
        ));
        assert!(is_query(
            "WITH RECURSIVE c(x) AS (SELECT 1) SELECT x FROM c",
            pg
        ));
        assert!(is_query("(SELECT 1) UNION SELECT 2", pg));
        assert!(!is_query("DELETE FROM t RETURNING id", pg));
        assert!(!is_query(
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            pg
        ));
        for (sql, words) in [
            ("commit", "COMMIT"),
            ("END", "END"),
            ("rollback to savepoint a", "ROLLBACK"),
            ("start transaction read only", "START TRANSACTION"),
            ("PREPARE TRANSACTION 'x'", "PREPARE TRANSACTION"),
            ("SET autocommit = 1", "SET autocommit"),
            ("/* c */ BEGIN", "BEGIN"),
        ] {
            assert_eq!(
                transaction_control(sql, Dialect::MySql).as_deref(),
                Some(words),
                "{sql}"
            );
        }
        assert_eq!(transaction_control("SET search_path = x", pg), None);
        assert_eq!(transaction_control("DO $$ BEGIN NULL; END $$", pg), None);
        for sql in [
            "ANALYZE TABLE job",
            "optimize table job",
            "LOCK TABLES job WRITE",
            "FLUSH TABLES",
            "GRANT SELECT ON t TO u",
            "LOAD INDEX INTO CACHE t",
            "CACHE INDEX t IN c",
            "SET PASSWORD = 'x'",
            "CALL cleanup()",
            "CHECK TABLE t",
            "TRUNCATE t",
        ] {
            assert!(implicit_commit(sql).is_some(), "{sql}");
        }
        assert!(implicit_commit("SELECT * FROM t LOCK IN SHARE MODE").is_none());
        assert!(implicit_commit("SET @a = 1").is_none());
    }

    /// Every split of tricky text is made of pieces of the original, in
    /// order, never panicking on any byte boundary.
    #[test]
    fn fuzzish_inputs_never_panic_and_keep_text() {
        let pieces = [
            "'", "\"", "`", "[", "]", "$$", "$a$", "E'", "U&'", "\\", "/*", "*/", "/*!", "--",
            "-- ", "#", ";", "(", ")", "é", "x", " ", "\n", "1",
        ];
        let mut seed = 7u64;
        for _ in 0..3000 {
            let mut sql = String::new();
            for _ in 0..12 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                sql.push_str(pieces[(seed >> 33) as usize % pieces.len()]);
            }
            for dialect in Dialect::ALL {
                let parts = split_statements(&sql, dialect);
                let mut at = 0;
                for part in parts {
                    let found = sql[at..].find(part).map(|p| p + at);
                    assert!(found.is_some(), "{sql:?} {dialect}: {part:?}");
                    at = found.unwrap_or(at) + part.len();
                }
                let _ = transaction_control(&sql, dialect);
                let _ = modifies_data(&sql, dialect);
                let _ = implicit_commit(&sql);
            }
        }
    }
}
