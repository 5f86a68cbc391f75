//! Errors in log lines. A `#[source]` cause is not part of its error's message (the error
//! chain carries it); a log line shows the whole chain with [`Chain`].

use std::{error::Error, fmt};

/// Displays an error and its causes joined by `: `.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn Error + 'static));

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
        let io = std::io::Error::other("No such device");
        let e = crate::datapath::DatapathError::Netlink {
            what: "listing links".into(),
            source: io.into(),
        };
        assert_eq!(
            Chain(&e).to_string(),
            "netlink: listing links: No such device"
        );
    }
}
