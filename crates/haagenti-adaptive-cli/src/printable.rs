//! Text from files (tensor names, paths) made safe to print on a terminal.

/// `text` with every control character escaped (`\u{1b}`, `\n`, ...), so that a name read from a
/// file cannot move the cursor, recolour the terminal or split one line of output into two.
pub(crate) fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escape_controls("blk.0.weight"), "blk.0.weight");
        assert_eq!(
            escape_controls("a\u{1b}[31mb\nc\r\u{7}\u{9b}"),
            "a\\u{1b}[31mb\\nc\\r\\u{7}\\u{9b}"
        );
        assert_eq!(escape_controls("é 名前"), "é 名前");
    }
}
