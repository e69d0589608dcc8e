//! Rendering of sample cells, shared by the backends.

use crate::outcome::Sample;

/// Cuts a cell to [`Sample::MAX_CELL_CHARS`] characters.
pub(crate) fn clip(text: &str) -> String {
    if text.chars().count() <= Sample::MAX_CELL_CHARS {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(Sample::MAX_CELL_CHARS - 1).collect();
    out.push('…');
    out
}

/// Renders bytes: as text when they are printable UTF-8, else as `0x…` hex.
pub(crate) fn bytes(raw: &[u8]) -> String {
    if let Ok(text) = std::str::from_utf8(raw)
        && !text.chars().any(|c| c.is_control() && !c.is_whitespace())
    {
        return clip(text);
    }
    hex(raw)
}

/// Renders bytes as `0x…` hex, cut to fit a cell.
pub(crate) fn hex(raw: &[u8]) -> String {
    let max_bytes = (Sample::MAX_CELL_CHARS - 3) / 2;
    let mut out = String::from("0x");
    for b in raw.iter().take(max_bytes) {
        out.push_str(&format!("{b:02x}"));
    }
    if raw.len() > max_bytes {
        out.push('…');
    }
    out
}

/// The fields of a PostgreSQL row value in its text form (`record_out`:
/// `(1,stuck,,"a ""b"",c")`), each as the column's own text output, as
/// `psql` shows it; `None` for NULL (an empty unquoted field). `None` when
/// `text` is not a row value. Lets one extended-protocol statement (whose
/// typed columns dbjanitor cannot render in general) return sample rows as
/// text: `ROW(sample.*)::text`.
pub(crate) fn record_fields(text: &str) -> Option<Vec<Option<String>>> {
    let inner = text.strip_prefix('(')?.strip_suffix(')')?;
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut in_quotes = false;
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if in_quotes && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' => {
                in_quotes = !in_quotes;
                quoted = true;
            }
            '\\' => field.push(chars.next()?),
            ',' if !in_quotes => {
                fields.push((quoted || !field.is_empty()).then(|| std::mem::take(&mut field)));
                quoted = false;
            }
            c => field.push(c),
        }
    }
    if in_quotes {
        return None;
    }
    // `()` is one NULL column (or none: the caller knows the column count).
    fields.push((quoted || !field.is_empty()).then_some(field));
    Some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_renders_as_hex_and_text_as_text() {
        assert_eq!(bytes(b"abc"), "abc");
        assert_eq!(bytes(&[0x00, 0xff, 0x10]), "0x00ff10");
        let long = "é".repeat(500);
        assert_eq!(clip(&long).chars().count(), Sample::MAX_CELL_CHARS);
    }

    #[test]
    fn row_values_split_into_psql_texts() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            record_fields(r#"(1,stuck,,"a ""b"",c","",x\\y,"2020-01-01 00:00:00")"#),
            Some(vec![
                some("1"),
                some("stuck"),
                None,
                some(r#"a "b",c"#),
                some(""),
                some("x\\y"),
                some("2020-01-01 00:00:00"),
            ])
        );
        assert_eq!(record_fields("(,)"), Some(vec![None, None]));
        assert_eq!(record_fields("(7,)"), Some(vec![some("7"), None]));
        assert_eq!(record_fields("(7)"), Some(vec![some("7")]));
        assert_eq!(record_fields("()"), Some(vec![None]));
        assert_eq!(
            record_fields(r#"("{""k"": 1}",(1\,2))"#),
            Some(vec![some(r#"{"k": 1}"#), some("(1,2)")])
        );
        assert_eq!(record_fields("7"), None);
        assert_eq!(record_fields(r#"("open)"#), None);
    }
}
