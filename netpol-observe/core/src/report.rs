//! Errors in messages. A `#[source]` cause is not part of its error's message (the error chain
//! carries it); whatever shows an error to a person — a log line, an HTTP answer, a per-line
//! report on stderr — shows the whole chain with [`Chain`].

use std::{error::Error, fmt};

/// Displays an error and its causes joined by `: `.
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_once_in_order() {
        let e = crate::inventory::InventoryError::Io {
            path: "/nonexistent".into(),
            source: std::io::Error::other("No such file or directory"),
        };
        assert_eq!(
            Chain(&e).to_string(),
            "cannot read /nonexistent: No such file or directory"
        );
    }
}
