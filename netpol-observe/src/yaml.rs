//! A guard run on every YAML text from a user before it reaches the parser.
//!
//! The YAML parser (libyaml's scanner behind serde_yaml) stops at 128 nesting levels, but only
//! after scanning: on deeply nested flow collections (`[[[[…`) its time grows with the square
//! of the depth (a 500 KB file took 200 s to be refused). [`check_nesting`] refuses such a text
//! in one linear pass first, naming the line. No Kubernetes object, scenario or configuration
//! comes close to the limit.

/// The deepest nesting of flow collections (`[…]`, `{…}`) accepted.
pub const MAX_FLOW_DEPTH: usize = 64;

/// A text nested too deeply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: more than {MAX_FLOW_DEPTH} nested [ or {{ (refused before parsing)")]
pub struct TooDeep {
    /// 1-based line where the limit is passed.
    pub line: usize,
}

/// Refuses `text` when its flow collections nest deeper than [`MAX_FLOW_DEPTH`]. Quoted
/// scalars and comments are skipped; a bracket counts only where a value can start (after `:`,
/// `-`, `?`, `,`, another bracket or at the start of a line), as in YAML.
pub fn check_nesting(text: &str) -> Result<(), TooDeep> {
    let mut depth = 0usize;
    let mut line = 1usize;
    // The last significant character on this line (None at its start).
    let mut last: Option<char> = None;
    // Whether the previous character was blank (a `#` after a blank starts a comment).
    let mut blank = true;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                line += 1;
                last = None;
                blank = true;
                continue;
            }
            ' ' | '\t' | '\r' => {
                blank = true;
                continue;
            }
            '#' if blank => {
                // A comment: skip to the end of the line.
                while chars.peek().is_some_and(|&n| n != '\n') {
                    chars.next();
                }
                continue;
            }
            _ => {}
        }
        blank = false;
        let value_start = matches!(last, None | Some(':' | '-' | '?' | ',' | '[' | '{'));
        match c {
            '"' | '\'' if value_start => {
                // A quoted scalar, possibly over several lines.
                while let Some(n) = chars.next() {
                    match n {
                        '\n' => line += 1,
                        // An escaped character is skipped (a line break counted).
                        '\\' if c == '"' && chars.next() == Some('\n') => line += 1,
                        n if n == c => {
                            // '' inside single quotes is an escaped quote.
                            if c == '\'' && chars.peek() == Some(&'\'') {
                                chars.next();
                            } else {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                last = Some('x');
                continue;
            }
            '[' | '{' if value_start => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Err(TooDeep { line });
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        last = Some(c);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_yaml_passes() {
        for text in [
            "a: {b: [1, 2, {c: d}]}\n",
            "k: \"[[[[\" # [[[[\n",
            "msg: don't [panic]\nother: 'it''s [ fine'\n",
            "list:\n  - [a, b]\n  - {x: y}\n",
            include_str!("../../deploy/lab/shop.yaml"),
            include_str!("../../deploy/kubernetes/base/daemonset.yaml"),
        ] {
            assert_eq!(check_nesting(text), Ok(()), "{text}");
        }
    }

    #[test]
    fn deep_flow_nesting_is_refused_at_once_with_its_line() {
        let deep = format!("a: 1\nb: {}{}\n", "[".repeat(250_000), "]".repeat(250_000));
        assert_eq!(check_nesting(&deep), Err(TooDeep { line: 2 }));
        let mixed = format!("x:\n  y: {}\n", "{a: [".repeat(40));
        assert_eq!(check_nesting(&mixed), Err(TooDeep { line: 2 }));
        // At the limit it passes.
        let ok = format!(
            "{}{}",
            "[".repeat(MAX_FLOW_DEPTH),
            "]".repeat(MAX_FLOW_DEPTH)
        );
        assert_eq!(check_nesting(&ok), Ok(()));
    }
}
