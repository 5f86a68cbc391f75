//! The commands' output. `print!`, `println!` and `eprintln!` panic when a write fails (a
//! closed pipe: `recommend … | head -c 100`, a full disk: `verify … > /dev/full`); the commands
//! write through these helpers instead, which map the errors:
//! - stdout closed by its reader: [`OutputError::Closed`], and the command ends quietly with
//!   status [`CLOSED_PIPE_STATUS`] (what a shell reports for a process killed by `SIGPIPE`);
//! - stdout not writable otherwise (a full disk): [`OutputError::Write`], reported as
//!   `error: cannot write to stdout: No space left on device (os error 28)`, status 2;
//! - stderr not writable: nothing to do (it is where errors go), the line is dropped.

use std::{
    fmt,
    io::{self, Write},
};

/// Exit status when stdout was closed by its reader: 128 + `SIGPIPE` (13).
pub(crate) const CLOSED_PIPE_STATUS: u8 = 141;

/// Writing to stdout failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OutputError {
    /// The reader of stdout went away (`… | head`): the command ends quietly.
    #[error("stdout was closed by its reader")]
    Closed(#[source] io::Error),
    /// stdout cannot be written (a full disk, an I/O error).
    #[error("cannot write to stdout")]
    Write(#[source] io::Error),
}

impl From<io::Error> for OutputError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            OutputError::Closed(e)
        } else {
            OutputError::Write(e)
        }
    }
}

/// Writes `bytes` to stdout and flushes.
pub(super) fn stdout(bytes: impl AsRef<[u8]>) -> Result<(), OutputError> {
    let mut out = io::stdout().lock();
    out.write_all(bytes.as_ref())?;
    out.flush()?;
    Ok(())
}

/// Writes one line to stderr; a failure is ignored (stderr is where it would be reported).
pub(crate) fn stderr_line(args: fmt::Arguments<'_>) {
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// Whether `err` (anywhere in its chain) is stdout closed by its reader.
pub(crate) fn is_closed_stdout(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        matches!(
            e.downcast_ref::<OutputError>(),
            Some(OutputError::Closed(_))
        )
    })
}

/// `eprintln!` that never panics: [`stderr_line`].
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::out::stderr_line(format_args!($($arg)*))
    };
}
pub(crate) use errln;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_pipe_is_closed_and_others_are_write_errors() {
        let closed = OutputError::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(matches!(closed, OutputError::Closed(_)));
        assert!(is_closed_stdout(
            &anyhow::Error::new(closed).context("writing")
        ));
        let full = OutputError::from(io::Error::from_raw_os_error(28));
        let err = anyhow::Error::new(full);
        assert!(!is_closed_stdout(&err));
        assert!(
            format!("{err:#}").starts_with("cannot write to stdout: No space left on device"),
            "{err:#}"
        );
    }
}
