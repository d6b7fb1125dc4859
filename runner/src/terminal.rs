//! Text from outside the runner (a plugin's findings) on its way to a terminal: control
//! characters are shown, not obeyed, so a plugin cannot recolour, move the cursor, retitle
//! the window, hide lines or fake ones in the table output.

/// `text` with every control character written out as `\u{..}` (ESC: `\u{1b}`): C0, DEL,
/// C1 (which holds the 8-bit CSI) and the bidirectional overrides that reorder what is
/// shown. A `\n` stays a line break only with `keep_newlines`, where the layout indents the
/// lines that follow.
pub fn printable(text: &str, keep_newlines: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}');
        if (c == '\n' && keep_newlines) || !(c.is_control() || bidi) {
            out.push(c);
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(printable("\u{1b}[2J\u{1b}]0;pwned\u{7}red", false), "\\u{1b}[2J\\u{1b}]0;pwned\\u{7}red");
        assert_eq!(printable("a\nb\r\tc\u{7f}\u{9b}31m", false), "a\\u{a}b\\u{d}\\u{9}c\\u{7f}\\u{9b}31m");
        assert_eq!(printable("line one\nline two", true), "line one\nline two");
        assert_eq!(printable("abc\u{202e}fed", true), "abc\\u{202e}fed");
        // Ordinary text, accents and all, is left alone.
        assert_eq!(printable("Tabelle „Kunden“ hat keinen Primärschlüssel — 表", false), "Tabelle „Kunden“ hat keinen Primärschlüssel — 表");
        for c in (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            assert!(!printable(&c.to_string(), false).chars().any(char::is_control), "{c:?}");
        }
    }
}
