//! Reading and writing flow records as JSON lines.
//!
//! A corrupt line never stops the reading: each line yields either a record or an error naming
//! the file and the line number, so callers report the bad lines and keep the good ones. A line
//! that is not UTF-8 is such a bad line (the reading goes on), and a UTF-8 byte-order mark at
//! the start of the input is skipped ([`text_lines`]).

use std::{
    io::{self, BufRead, Write},
    path::{Path, PathBuf},
};

use super::{FlowNameError, FlowRecord};

/// A flow line that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FlowLineError {
    /// The file could not be opened or read.
    #[error("cannot read {path}")]
    Io {
        /// File being read.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The line is not UTF-8 text.
    #[error("{path}:{line}: not UTF-8 text (invalid byte at column {column})")]
    Encoding {
        /// File being read.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// 1-based byte offset of the first invalid byte in the line.
        column: usize,
    },
    /// The line is not a valid flow record.
    #[error("{path}:{line}: invalid flow record")]
    Parse {
        /// File being read.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What serde said, including the field at fault.
        #[source]
        source: serde_json::Error,
    },
    /// The line is a flow record, but what the reader also takes from it (the `verdict` an
    /// agent or `evaluate` wrote) is not valid.
    #[error("{path}:{line}: invalid {field}")]
    Extra {
        /// File being read.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The field at fault.
        field: &'static str,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// The line is a flow record, but a name in it (namespace, pod, label…) breaks the
    /// Kubernetes rules: the record is rejected, never used.
    #[error("{path}:{line}: rejected flow record")]
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
pub(crate) type FlowLine = (usize, Result<FlowRecord, FlowLineError>);

/// The UTF-8 byte-order mark some editors put at the start of a file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The text lines of `reader`, numbered from 1 (`\n` or `\r\n` end a line): a leading UTF-8
/// byte-order mark is skipped, a line that is not UTF-8 is an [`FlowLineError::Encoding`] and
/// the reading goes on. An I/O error is the last item. `path` names the source in errors.
pub fn text_lines<R: BufRead>(path: &Path, reader: R) -> TextLines<R> {
    TextLines {
        path: path.to_owned(),
        reader,
        number: 0,
        buf: Vec::new(),
        done: false,
    }
}

/// The iterator of [`text_lines`].
#[derive(Debug)]
pub struct TextLines<R> {
    path: PathBuf,
    reader: R,
    number: usize,
    buf: Vec<u8>,
    done: bool,
}

impl<R: BufRead> Iterator for TextLines<R> {
    type Item = (usize, Result<String, FlowLineError>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        self.buf.clear();
        let read = loop {
            match self.reader.read_until(b'\n', &mut self.buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        self.number += 1;
        match read {
            Ok(0) => {
                self.done = true;
                None
            }
            Ok(_) => {
                let mut bytes = self.buf.as_slice();
                if self.number == 1 {
                    bytes = bytes.strip_prefix(BOM).unwrap_or(bytes);
                }
                bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
                bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
                let line = match std::str::from_utf8(bytes) {
                    Ok(text) => Ok(text.to_owned()),
                    Err(e) => Err(FlowLineError::Encoding {
                        path: self.path.clone(),
                        line: self.number,
                        column: e.valid_up_to() + 1,
                    }),
                };
                Some((self.number, line))
            }
            Err(source) => {
                self.done = true;
                Some((
                    self.number,
                    Err(FlowLineError::Io {
                        path: self.path.clone(),
                        source,
                    }),
                ))
            }
        }
    }
}

/// Reads every non-blank line of `reader`; `path` names the source in errors (`-` for stdin).
pub fn read_lines(path: &Path, reader: impl BufRead) -> Vec<FlowLine> {
    read_lines_with(path, reader, "", |_| Ok(()))
        .into_iter()
        .map(|(n, line)| (n, line.map(|(record, ())| record)))
        .collect()
}

/// One line read by [`read_lines_with`]: the record and what `extra` took from the same line.
pub(crate) type FlowLineWith<T> = (usize, Result<(FlowRecord, T), FlowLineError>);

/// [`read_lines`], also handing each good line's text to `extra`, which reads more of it (such
/// as the `verdict` of an agent's answer); its error makes the line bad
/// ([`FlowLineError::Extra`] naming `field`).
pub(crate) fn read_lines_with<T: Send>(
    path: &Path,
    reader: impl BufRead,
    field: &'static str,
    extra: impl Fn(&str) -> Result<T, serde_json::Error> + Sync,
) -> Vec<FlowLineWith<T>> {
    let mut out = Vec::new();
    for_each_line_with(path, reader, field, extra, |line| out.push(line));
    out
}

/// Lines parsed per batch by [`for_each_line_with`]'s workers.
const BATCH: usize = 1024;

/// [`read_lines_with`] as a stream: `each` gets every line as it is read, in the order of the
/// input (nothing is held but a few batches in flight).
///
/// Parsing (JSON, name checks, `extra`) is most of the cost of a large flow file, so the lines
/// are parsed on [`for_each_batch`]'s workers and handed to `each` in order.
pub(crate) fn for_each_line_with<T: Send>(
    path: &Path,
    reader: impl BufRead,
    field: &'static str,
    extra: impl Fn(&str) -> Result<T, serde_json::Error> + Sync,
    mut each: impl FnMut(FlowLineWith<T>),
) {
    for_each_batch(
        path,
        reader,
        |batch| {
            batch
                .into_iter()
                .filter_map(|line| parse_text_line(path, field, &extra, line))
                .collect::<Vec<_>>()
        },
        |parsed| parsed.into_iter().for_each(&mut each),
    );
}

/// One text line of [`text_lines`]: its 1-based number and the text or the error.
pub(crate) type TextLine = (usize, Result<String, FlowLineError>);

/// Parses one text line with [`read_lines_with`]'s `extra`: `None` for a blank line, an error
/// line passed through; a record whose names break the rules is an error (reported before a
/// bad `extra`).
pub(crate) fn parse_text_line<T>(
    path: &Path,
    field: &'static str,
    extra: &impl Fn(&str) -> Result<T, serde_json::Error>,
    line: TextLine,
) -> Option<FlowLineWith<T>> {
    let (number, parsed) = parse_text_line_unchecked(path, field, extra, line)?;
    Some((
        number,
        parsed.and_then(|(record, more)| {
            check_line_names(path, number, &record)?;
            Ok((record, more))
        }),
    ))
}

/// [`parse_text_line`] without the name check of a good line: for a reader that checks only
/// the records it keeps, with [`check_line_names`] (a record equal to one already checked need
/// not be checked again). A line whose `extra` fails is checked first: a bad name is reported
/// before a bad `extra`, as [`parse_text_line`] does.
pub(crate) fn parse_text_line_unchecked<T>(
    path: &Path,
    field: &'static str,
    extra: &impl Fn(&str) -> Result<T, serde_json::Error>,
    (number, line): TextLine,
) -> Option<FlowLineWith<T>> {
    match line {
        Ok(text) if text.trim().is_empty() => None,
        Ok(text) => Some((
            number,
            parse_json(path, number, &text).and_then(|record| match extra(&text) {
                Ok(more) => Ok((record, more)),
                Err(source) => {
                    check_line_names(path, number, &record)?;
                    Err(FlowLineError::Extra {
                        path: path.to_owned(),
                        line: number,
                        field,
                        source,
                    })
                }
            }),
        )),
        Err(e) => Some((number, Err(e))),
    }
}

/// The name check of [`parse_text_line`] ([`FlowRecord::check_names`]) as the error of line
/// `line` of `path`.
pub(crate) fn check_line_names(
    path: &Path,
    line: usize,
    record: &FlowRecord,
) -> Result<(), FlowLineError> {
    record.check_names().map_err(|source| FlowLineError::Name {
        path: path.to_owned(),
        line,
        source,
    })
}

/// The text lines of `reader` ([`text_lines`]) in batches of [`BATCH`]: `work` turns each
/// batch into a `B` on a worker thread (one per available CPU, at most 8) while this thread
/// reads the next lines, and `each` gets the `B`s here, in the order of the input (nothing is
/// held but a few batches in flight). An input of one batch, or a machine of one CPU, runs
/// `work` here.
///
/// `work` is where the cost of a large flow file goes (parsing, and whatever is done with the
/// records that needs no order), `each` what must see the input in order.
pub(crate) fn for_each_batch<B: Send>(
    path: &Path,
    reader: impl BufRead,
    work: impl Fn(Vec<TextLine>) -> B + Sync,
    mut each: impl FnMut(B),
) {
    let mut lines = text_lines(path, reader);
    let first: Vec<_> = lines.by_ref().take(BATCH).collect();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if first.len() < BATCH || workers < 2 {
        let mut batch = first;
        while !batch.is_empty() {
            each(work(batch));
            batch = lines.by_ref().take(BATCH).collect();
        }
        return;
    }
    let (work_tx, work_rx) = std::sync::mpsc::channel::<(usize, Vec<TextLine>)>();
    let work_rx = std::sync::Mutex::new(work_rx);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<(usize, B)>();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (work_rx, done_tx, work) = (&work_rx, done_tx.clone(), &work);
            scope.spawn(move || {
                loop {
                    let next = work_rx.lock().map(|rx| rx.recv());
                    let Ok(Ok((seq, batch))) = next else { break };
                    if done_tx.send((seq, work(batch))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        // Batches sent, batches handed to `each`, and the ones done ahead of their turn.
        let (mut sent, mut handed) = (0, 0);
        let mut ahead = std::collections::BTreeMap::new();
        let mut batch = Some(first);
        loop {
            while let Some(b) = batch.take() {
                if work_tx.send((sent, b)).is_err() {
                    break;
                }
                sent += 1;
                if sent - handed < 2 * workers {
                    let next: Vec<_> = lines.by_ref().take(BATCH).collect();
                    batch = (!next.is_empty()).then_some(next);
                }
            }
            if handed == sent {
                break;
            }
            // The next batch in order (workers finish out of order).
            let done = loop {
                if let Some(d) = ahead.remove(&handed) {
                    break Some(d);
                }
                match done_rx.recv() {
                    Ok((seq, d)) => {
                        ahead.insert(seq, d);
                    }
                    Err(_) => break None,
                }
            };
            let Some(done) = done else { break };
            each(done);
            handed += 1;
            let next: Vec<_> = lines.by_ref().take(BATCH).collect();
            batch = (!next.is_empty()).then_some(next);
        }
        drop(work_tx);
    });
}

/// Parses one line into a record, its names not checked.
fn parse_json(path: &Path, line: usize, text: &str) -> Result<FlowRecord, FlowLineError> {
    serde_json::from_str(text).map_err(|source| FlowLineError::Parse {
        path: path.to_owned(),
        line,
        source,
    })
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

/// [`read_file`] with [`read_lines_with`]'s `extra`.
pub(crate) fn read_file_with<T: Send>(
    path: &Path,
    field: &'static str,
    extra: impl Fn(&str) -> Result<T, serde_json::Error> + Sync,
) -> Vec<FlowLineWith<T>> {
    let mut out = Vec::new();
    for_each_file_line_with(path, field, extra, |line| out.push(line));
    out
}

/// [`read_file_with`] as a stream ([`for_each_line_with`]).
pub(crate) fn for_each_file_line_with<T: Send>(
    path: &Path,
    field: &'static str,
    extra: impl Fn(&str) -> Result<T, serde_json::Error> + Sync,
    mut each: impl FnMut(FlowLineWith<T>),
) {
    for_each_file_batch(
        path,
        |batch| {
            batch
                .into_iter()
                .filter_map(|line| parse_text_line(path, field, &extra, line))
                .collect::<Vec<_>>()
        },
        |parsed| parsed.into_iter().for_each(&mut each),
    );
}

/// [`for_each_batch`] of the file `path` (`-`: stdin); a file that cannot be opened is a batch
/// of one error line (number 0).
pub(crate) fn for_each_file_batch<B: Send>(
    path: &Path,
    work: impl Fn(Vec<TextLine>) -> B + Sync,
    mut each: impl FnMut(B),
) {
    if path == Path::new("-") {
        return for_each_batch(path, io::stdin().lock(), work, each);
    }
    match std::fs::File::open(path) {
        Ok(file) => for_each_batch(
            path,
            io::BufReader::with_capacity(1 << 16, file),
            work,
            each,
        ),
        Err(source) => each(work(vec![(
            0,
            Err(FlowLineError::Io {
                path: path.to_owned(),
                source,
            }),
        )])),
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
        let err = crate::report::Chain(lines[1].1.as_ref().unwrap_err()).to_string();
        assert!(err.starts_with("f.jsonl:2: invalid flow record"), "{err}");
        let err = crate::report::Chain(lines[2].1.as_ref().unwrap_err()).to_string();
        assert!(
            err.starts_with("f.jsonl:4:") && err.contains("XTP"),
            "{err}"
        );
        assert_eq!(lines[3].0, 5);
        assert!(lines[3].1.is_ok());
    }

    #[test]
    fn a_non_utf8_line_is_reported_and_reading_goes_on() {
        let good =
            br#"{"protocol":"TCP","src":{"ip":"10.0.0.1"},"dst":{"ip":"10.0.0.2","port":80}}"#;
        let mut input = Vec::new();
        input.extend_from_slice(BOM);
        input.extend_from_slice(good);
        input.extend_from_slice(b"\r\n{\"protocol\":\"TCP\",\"src\":{\"ip\":\"10.0.0.1\xff\"}}\n");
        input.extend_from_slice(good);
        input.extend_from_slice(b"\n\xEF\xBB\xBF");
        input.extend_from_slice(good);
        let lines = read_lines(Path::new("f.jsonl"), input.as_slice());
        assert_eq!(lines.len(), 4);
        // The byte-order mark costs nothing; `\r\n` ends a line.
        assert_eq!(lines[0].0, 1);
        assert!(lines[0].1.is_ok(), "{:?}", lines[0].1);
        let err = crate::report::Chain(lines[1].1.as_ref().unwrap_err()).to_string();
        assert_eq!(err, "f.jsonl:2: not UTF-8 text (invalid byte at column 40)");
        assert_eq!(lines[2].0, 3);
        assert!(lines[2].1.is_ok());
        // A byte-order mark elsewhere is not skipped: that line is bad JSON.
        let err = crate::report::Chain(lines[3].1.as_ref().unwrap_err()).to_string();
        assert!(err.starts_with("f.jsonl:4: invalid flow record"), "{err}");
    }

    #[test]
    fn an_io_error_ends_the_reading_with_its_line() {
        struct Failing(usize);
        impl io::Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("disk on fire"));
                }
                self.0 = 0;
                let line = b"{\"protocol\":\"TCP\",\"src\":{\"ip\":\"10.0.0.1\"},\"dst\":{\"ip\":\"10.0.0.2\"}}\n";
                buf[..line.len()].copy_from_slice(line);
                Ok(line.len())
            }
        }
        let lines = read_lines(Path::new("f.jsonl"), io::BufReader::new(Failing(1)));
        assert_eq!(lines.len(), 2);
        assert!(lines[0].1.is_ok());
        assert_eq!(lines[1].0, 2);
        let err = crate::report::Chain(lines[1].1.as_ref().unwrap_err()).to_string();
        assert_eq!(err, "cannot read f.jsonl: disk on fire");
    }

    #[test]
    fn records_with_invalid_names_are_rejected_with_file_line_and_field() {
        let input = "{\"protocol\":\"TCP\",\"src\":{\"ip\":\"10.0.0.1\",\"namespace\":\"../../../../var/x/escaped\"},\"dst\":{\"ip\":\"10.0.0.2\",\"port\":80}}\n\
                     {\"protocol\":\"TCP\",\"src\":{\"ip\":\"10.0.0.1\"},\"dst\":{\"ip\":\"10.0.0.2\",\"port\":80,\"namespace\":\"shop\",\"labels\":{\"app\":\"Shop Space\"}}}\n\
                     {\"protocol\":\"TCP\",\"src\":{\"ip\":\"10.0.0.1\"},\"dst\":{\"ip\":\"10.0.0.2\",\"port\":80,\"namespace\":\"shop\"}}\n";
        let lines = read_lines(Path::new("f.jsonl"), input.as_bytes());
        assert_eq!(lines.len(), 3);
        let err = crate::report::Chain(lines[0].1.as_ref().unwrap_err()).to_string();
        assert!(
            err.starts_with("f.jsonl:1: rejected flow record: field src.namespace: \"../../../../var/x/escaped\" is not a valid namespace name"),
            "{err}"
        );
        let err = crate::report::Chain(lines[1].1.as_ref().unwrap_err()).to_string();
        assert!(
            err.starts_with("f.jsonl:2: rejected flow record: field dst.labels[\"app\"]: \"Shop Space\" is not a valid label value"),
            "{err}"
        );
        assert!(lines[2].1.is_ok());
    }

    #[test]
    fn many_batches_come_in_input_order_with_their_bad_lines() {
        // Several batches per worker, bad and blank lines in between, an unfinished last batch.
        let mut input = String::new();
        for i in 0..(BATCH * 9 + 17) {
            match i % 101 {
                7 => input.push_str("not json\n"),
                8 => input.push_str("   \n"),
                9 => input.push_str("{\"protocol\":\"TCP\",\"src\":{\"ip\":\"10.0.0.1\",\"namespace\":\"Bad\"},\"dst\":{\"ip\":\"10.0.0.2\"}}\n"),
                _ => input.push_str(&format!(
                    "{{\"protocol\":\"UDP\",\"src\":{{\"ip\":\"10.0.0.1\",\"port\":{}}},\"dst\":{{\"ip\":\"10.0.0.2\",\"port\":53}}}}\n",
                    i % 65536
                )),
            }
        }
        let mut seen = Vec::new();
        for_each_line_with(
            Path::new("f"),
            input.as_bytes(),
            "",
            |_| Ok(()),
            |(n, line)| {
                seen.push((n, line.map(|(r, ())| r.src.port).map_err(|e| e.to_string())));
            },
        );
        let expected: Vec<_> = text_lines(Path::new("f"), input.as_bytes())
            .filter(|(_, l)| l.as_ref().map_or(true, |t| !t.trim().is_empty()))
            .map(|(n, l)| {
                let r = l.and_then(|t| {
                    let record = parse_json(Path::new("f"), n, &t)?;
                    check_line_names(Path::new("f"), n, &record).map(|()| record)
                });
                (n, r.map(|r| r.src.port).map_err(|e| e.to_string()))
            })
            .collect();
        let count = |k| (0..BATCH * 9 + 17).filter(|i| i % 101 == k).count();
        assert_eq!(seen.len(), BATCH * 9 + 17 - count(8));
        assert_eq!(seen, expected);
        let bad = seen.iter().filter(|(_, r)| r.is_err()).count();
        assert_eq!(bad, count(7) + count(9));
    }
}
