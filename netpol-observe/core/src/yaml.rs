//! YAML, read and written in one place: serde-saphyr with the limits for text from a user, its
//! errors in their user-facing wording, multi-document streams with each document's number, an
//! untyped [`Value`] that keeps mapping order, and a guard run on every user's text before it
//! reaches the parser ([`check_nesting`]).
//!
//! Text from a user (inventory and policy files, subnets, the agent's configuration, lab
//! scenarios) is read with [`options`]: the counts serde-saphyr budgets (nodes, events,
//! documents, scalar bytes) grow with the text, since a file can only hold as many as it has
//! bytes, and what aliases replay is capped at the same size, so an alias bomb is refused while
//! a large file written out is not refused for its size; nesting stops at [`MAX_DEPTH`] (the
//! former serde_yaml stopped at 128).
//!
//! [`check_nesting`] refuses deeply nested flow collections (`[[[[…`) in one linear pass before
//! parsing, naming the line: the libyaml scanner behind the former serde_yaml took time growing
//! with the square of the depth there (a 500 KB file took 200 s to be refused). serde-saphyr
//! refuses such a text at its depth budget too; the guard stays as a cheap first line with the
//! same message for every reader. No Kubernetes object, scenario or configuration comes close
//! to either limit.

mod value;

use std::fmt;

use serde::{Serialize, de::DeserializeOwned};

pub use value::{Value, ValueDeserializer};

/// The deepest nesting of block and flow collections accepted (serde-saphyr's default;
/// Kubernetes objects, `managedFields` included, nest far less). Reading is recursive: a debug
/// build needs about 20 KB of stack per level, and a spawned thread (a test, a tokio worker)
/// has 2 MB.
pub const MAX_DEPTH: usize = 64;

/// The least any count is budgeted at, however short the text (room for a few aliases).
const MIN_BUDGET: usize = 64 * 1024;

/// The parser options for `text` from a user: budgets scaled to its size (see the module
/// documentation), duplicate mapping keys refused, errors without a source snippet (every
/// caller names the file itself), and YAML 1.2's scalars where no type says otherwise, as the
/// former serde_yaml read them: `yes`, `on`, `y` are strings, not booleans, and so are `017`
/// and `1_000`, not numbers.
pub fn options(text: &str) -> serde_saphyr::Options {
    let size = text.len().max(MIN_BUDGET);
    serde_saphyr::options! {
        with_snippet: false,
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            max_documents: size,
            max_nodes: size,
            max_events: 2 * size,
            max_total_scalar_bytes: 2 * size,
            max_recorded_anchor_events: size,
            max_recorded_anchor_bytes: 2 * size,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: size,
        },
    }
}

/// YAML that was refused: serde-saphyr's error in its user-facing wording, with line and column
/// (`unclosed bracket '[' at line 3, column 4`). Boxed: serde-saphyr's error is large, and it
/// rides in every error type of the crate that reads YAML.
#[derive(Debug)]
pub struct Error(Box<serde_saphyr::Error>);

impl Error {
    /// The 1-based line and column the parser stopped at, when it knows.
    pub fn location(&self) -> Option<(usize, usize)> {
        let l = self.0.location()?;
        let number = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        (l.line() > 0).then(|| (number(l.line()), number(l.column())))
    }

    /// The 1-based line the parser stopped at (0 when unknown).
    pub fn line(&self) -> usize {
        self.location().map_or(0, |(line, _)| line)
    }
}

impl From<serde_saphyr::Error> for Error {
    fn from(e: serde_saphyr::Error) -> Self {
        Error(Box::new(e))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.render_to(
            f,
            serde_saphyr::render_options! {
                formatter: &serde_saphyr::UserMessageFormatter,
                snippets: serde_saphyr::SnippetMode::Off,
            },
        )
    }
}

// The message is the whole story: the parser's own causes are already in it.
impl std::error::Error for Error {}

/// Reads one YAML document from a user into `T` (an empty text is what `T` makes of no value).
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, Error> {
    Ok(serde_saphyr::from_str_with_options(text, options(text))?)
}

/// [`from_str`], also naming the field at fault when it fails (`metrics.seriesBudget`, `.` for
/// the document itself).
pub fn from_str_naming_field<T: DeserializeOwned>(text: &str) -> Result<T, (String, Error)> {
    let mut track = serde_path_to_error::Track::new();
    serde_saphyr::with_deserializer_from_str_with_options(text, options(text), |de| {
        T::deserialize(serde_path_to_error::Deserializer::new(de, &mut track))
    })
    .map_err(|e| (track.path().to_string(), e.into()))
}

/// A document of a YAML stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Document<T> {
    /// 1-based number of the document in the stream (empty documents are counted).
    pub number: usize,
    /// The document.
    pub value: T,
}

/// A YAML stream that was refused: the document where, and why.
#[derive(Debug, thiserror::Error)]
#[error("document {document}: {error}")]
pub struct StreamError {
    /// 1-based number of the document the parser stopped in.
    pub document: usize,
    /// Why (with the line and column in the stream).
    #[source]
    pub error: Error,
}

/// Reads every document of a YAML stream from a user (`---`-separated, or one), each with its
/// number; empty and null documents are counted but not returned.
pub fn documents<T: DeserializeOwned>(text: &str) -> Result<Vec<Document<T>>, StreamError> {
    let numbers = document_numbers(text);
    let number_at = |line: usize| {
        numbers
            .get(line.saturating_sub(1).min(numbers.len().saturating_sub(1)))
            .copied()
            .unwrap_or(1)
    };
    let docs: Vec<serde_saphyr::Spanned<T>> =
        serde_saphyr::from_multiple_with_options(text, options(text)).map_err(|e| {
            let error = Error::from(e);
            StreamError {
                document: number_at(error.line()),
                error,
            }
        })?;
    Ok(docs
        .into_iter()
        .map(|d| Document {
            number: number_at(usize::try_from(d.referenced.line()).unwrap_or(usize::MAX)),
            value: d.value,
        })
        .collect())
}

/// The 1-based number of the document each line of a YAML stream is in (index 0: line 1): a
/// `---` line starts a document, `...` ends one, content outside a document starts one (a
/// directive belongs to the document after it). Document markers are only ever at the start of
/// a line, where YAML forbids them inside content.
fn document_numbers(text: &str) -> Vec<usize> {
    let marker = |line: &str, m: &str| {
        line.strip_prefix(m)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
    };
    let mut out = Vec::new();
    let mut number = 0usize;
    let mut open = false;
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let line = if i == 0 {
            line.strip_prefix('\u{feff}').unwrap_or(line)
        } else {
            line
        };
        let trimmed = line.trim_start();
        if marker(line, "---") {
            number += 1;
            open = true;
        } else if marker(line, "...") {
            open = false;
        } else if !open && !trimmed.is_empty() && !trimmed.starts_with('#') {
            if line.starts_with('%') {
                out.push(number + 1);
                continue;
            }
            number += 1;
            open = true;
        }
        out.push(number.max(1));
    }
    out
}

/// Writes `value` as one YAML document (no `---`): block style, strings quoted where a YAML 1.1
/// or 1.2 reader would take them for something else, multi-line strings as literal blocks, long
/// ones on one line (never folded).
pub fn to_string<T: Serialize>(value: &T) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string_with_options(
        value,
        serde_saphyr::ser_options! {
            folded_wrap_chars: usize::MAX,
        },
    )
}

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
    fn documents_are_numbered_as_written() {
        let text = "# head\na: 1\n---\n---\nb: 2\n...\n%YAML 1.2\n---\n~\n---\nc: [3]\n";
        let docs: Vec<Document<Value>> = documents(text).unwrap();
        let numbers: Vec<usize> = docs.iter().map(|d| d.number).collect();
        assert_eq!(numbers, [1, 3, 5]);
        assert_eq!(document_numbers(text), [1, 1, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5]);
        let err = documents::<Value>("a: 1\n---\nb: 2\n---\nc: [3\n").unwrap_err();
        assert_eq!(err.document, 3);
        assert_eq!(err.error.line(), 5, "{err}");
        assert!(err.to_string().starts_with("document 3: "), "{err}");
        assert!(documents::<Value>("").unwrap().is_empty());
    }

    #[test]
    fn plain_scalars_are_read_as_yaml_1_2_has_them() {
        let v: Value = from_str("[yes, on, y, True, 017, 1_000, 0x10, 1e3, ~, '7']").unwrap();
        let s = |t: &str| Value::String(t.into());
        assert_eq!(
            v,
            Value::Sequence(vec![
                s("yes"),
                s("on"),
                s("y"),
                Value::Bool(true),
                s("017"),
                s("1_000"),
                Value::U64(16),
                Value::F64(1000.0),
                Value::Null,
                s("7"),
            ])
        );
    }

    #[test]
    fn errors_are_one_line_with_their_place() {
        let err = from_str::<Value>("a: 1\na: 2\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "duplicate mapping key `a` is not allowed here at line 2, column 1"
        );
        assert_eq!(err.location(), Some((2, 1)));
    }

    #[test]
    fn an_alias_bomb_is_refused_a_large_file_is_not() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
        {
            bomb.push_str(&format!(
                "{name}: &{name} [{}]\n",
                vec![format!("*{prev}"); 10].join(", ")
            ));
        }
        let err = from_str::<Value>(&bomb).unwrap_err();
        assert!(
            err.to_string().contains("too large or too complex")
                || err.to_string().contains("budget"),
            "{err}"
        );
        // More nodes than serde-saphyr's default budget (250,000), written out.
        let big = "- x\n".repeat(300_000);
        let v: Value = from_str(&big).unwrap();
        assert!(matches!(v, Value::Sequence(ref items) if items.len() == 300_000));
        // Nesting deeper than the limit.
        let deep: String = (0..=MAX_DEPTH)
            .map(|i| format!("{}k:\n", " ".repeat(i)))
            .collect();
        assert!(from_str::<Value>(&deep).is_err());
        let at_limit: String = (0..MAX_DEPTH - 1)
            .map(|i| format!("{}k:\n", " ".repeat(i)))
            .collect();
        assert!(from_str::<Value>(&at_limit).is_ok());
    }

    #[test]
    fn written_yaml_reads_back_and_long_strings_stay_on_one_line() {
        let long = "word ".repeat(40);
        let value = std::collections::BTreeMap::from([
            ("long", long.trim()),
            ("yes", "yes"),
            ("time", "2026-11-18T11:48:40Z"),
            ("lines", "a\nb"),
        ]);
        let text = to_string(&value).unwrap();
        assert_eq!(
            text,
            format!(
                "lines: |-\n  a\n  b\nlong: {}\ntime: \"2026-11-18T11:48:40Z\"\n\"yes\": \"yes\"\n",
                long.trim()
            )
        );
        let back: std::collections::BTreeMap<String, String> = from_str(&text).unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(back["yes"], "yes");
    }

    #[test]
    fn ordinary_yaml_passes() {
        for text in [
            "a: {b: [1, 2, {c: d}]}\n",
            "k: \"[[[[\" # [[[[\n",
            "msg: don't [panic]\nother: 'it''s [ fine'\n",
            "list:\n  - [a, b]\n  - {x: y}\n",
            include_str!("../../../deploy/lab/shop.yaml"),
            include_str!("../../../deploy/kubernetes/base/daemonset.yaml"),
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
