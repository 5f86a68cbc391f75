//! Reading and writing flow records as JSON lines.
//!
//! A corrupt line never stops the reading: each line yields either a record or an error naming
//! the file and the line number, so callers report the bad lines and keep the good ones.

use std::{
    io::{self, BufRead, Write},
    path::{Path, PathBuf},
};

use super::{FlowNameError, FlowRecord};

/// A flow line that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FlowLineError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// File being read.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The line is not a valid flow record.
    #[error("{path}:{line}: invalid flow record: {source}")]
    Parse {
        /// File being read.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What serde said, including the field at fault.
        #[source]
        source: serde_json::Error,
    },
    /// The line is a flow record, but a name in it (namespace, pod, label…) breaks the
    /// Kubernetes rules: the record is rejected, never used.
    #[error("{path}:{line}: rejected flow record: {source}")]
    Name {
        /// File being read.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The field and what is wrong with its name.
        #[source]
        source: FlowNameError,
    },
}

/// One line of a flow file: its 1-based number and the record or the error.
pub type FlowLine = (usize, Result<FlowRecord, FlowLineError>);

/// Reads every non-blank line of `reader`; `path` names the source in errors (`-` for stdin).
pub fn read_lines(path: &Path, reader: impl BufRead) -> Vec<FlowLine> {
    let mut out = Vec::new();
    for (idx, line) in reader.lines().enumerate() {
        let number = idx + 1;
        match line {
            Ok(text) if text.trim().is_empty() => {}
            Ok(text) => out.push((number, parse_line(path, number, &text))),
            Err(source) => {
                out.push((
                    number,
                    Err(FlowLineError::Io {
                        path: path.to_owned(),
                        source,
                    }),
                ));
                break;
            }
        }
    }
    out
}

/// Parses one line into a record whose names are valid ([`FlowRecord::check_names`]).
fn parse_line(path: &Path, line: usize, text: &str) -> Result<FlowRecord, FlowLineError> {
    let record: FlowRecord = serde_json::from_str(text).map_err(|source| FlowLineError::Parse {
        path: path.to_owned(),
        line,
        source,
    })?;
    record.check_names().map_err(|source| FlowLineError::Name {
        path: path.to_owned(),
        line,
        source,
    })?;
    Ok(record)
}

/// Opens `path` (or stdin for `-`) and reads its lines; an unreadable file is one error line.
pub fn read_file(path: &Path) -> Vec<FlowLine> {
    if path == Path::new("-") {
        return read_lines(path, io::stdin().lock());
    }
    match std::fs::File::open(path) {
        Ok(file) => read_lines(path, io::BufReader::new(file)),
        Err(source) => vec![(
            0,
            Err(FlowLineError::Io {
                path: path.to_owned(),
                source,
            }),
        )],
    }
}

/// Writes one record as a JSON line.
pub fn write_line(mut out: impl Write, record: &impl serde::Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut out, record)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_are_reported_and_good_lines_kept() {
        let input = "{\"protocol\":\"TCP\",\"src\":{\"ip\":\"10.0.0.1\"},\"dst\":{\"ip\":\"10.0.0.2\",\"port\":80}}\n\
                     not json\n\
                     \n\
                     {\"protocol\":\"XTP\",\"src\":{\"ip\":\"10.0.0.1\"},\"dst\":{\"ip\":\"10.0.0.2\"}}\n\
                     {\"protocol\":\"UDP\",\"src\":{\"ip\":\"10.0.0.1\"},\"dst\":{\"ip\":\"10.0.0.3\",\"port\":53}}\n";
        let lines = read_lines(Path::new("f.jsonl"), input.as_bytes());
        assert_eq!(lines.len(), 4);
        assert!(lines[0].1.is_ok());
        let err = lines[1].1.as_ref().unwrap_err().to_string();
        assert!(err.starts_with("f.jsonl:2: invalid flow record"), "{err}");
        let err = lines[2].1.as_ref().unwrap_err().to_string();
        assert!(
            err.starts_with("f.jsonl:4:") && err.contains("XTP"),
            "{err}"
        );
        assert_eq!(lines[3].0, 5);
        assert!(lines[3].1.is_ok());
    }

    #[test]
    fn records_with_invalid_names_are_rejected_with_file_line_and_field() {
        let input = "{\"protocol\":\"TCP\",\"src\":{\"ip\":\"10.0.0.1\",\"namespace\":\"../../../../var/x/escaped\"},\"dst\":{\"ip\":\"10.0.0.2\",\"port\":80}}\n\
                     {\"protocol\":\"TCP\",\"src\":{\"ip\":\"10.0.0.1\"},\"dst\":{\"ip\":\"10.0.0.2\",\"port\":80,\"namespace\":\"shop\",\"labels\":{\"app\":\"Shop Space\"}}}\n\
                     {\"protocol\":\"TCP\",\"src\":{\"ip\":\"10.0.0.1\"},\"dst\":{\"ip\":\"10.0.0.2\",\"port\":80,\"namespace\":\"shop\"}}\n";
        let lines = read_lines(Path::new("f.jsonl"), input.as_bytes());
        assert_eq!(lines.len(), 3);
        let err = lines[0].1.as_ref().unwrap_err().to_string();
        assert!(
            err.starts_with("f.jsonl:1: rejected flow record: field src.namespace: \"../../../../var/x/escaped\" is not a valid namespace name"),
            "{err}"
        );
        let err = lines[1].1.as_ref().unwrap_err().to_string();
        assert!(
            err.starts_with("f.jsonl:2: rejected flow record: field dst.labels[\"app\"]: \"Shop Space\" is not a valid label value"),
            "{err}"
        );
        assert!(lines[2].1.is_ok());
    }
}
