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
}
