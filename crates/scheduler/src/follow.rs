//! Following a run's step output as it is written, for `scheduler run`: the executor writes
//! each step's stdout and stderr to files named in the run record, and this reads what they
//! gained since the last look, cut into whole lines.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::PathBuf;

use dispatch_dag::StepRecord;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// One line of step output, without its newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    pub(crate) step: String,
    pub(crate) stream: Stream,
    pub(crate) text: String,
}

/// How far each output file has been read, and the part of its last line that has no newline
/// yet.
#[derive(Default)]
pub(crate) struct Follower {
    files: HashMap<PathBuf, Tail>,
    /// Paths in the order they were first seen, so output comes out step by step.
    order: Vec<PathBuf>,
}

struct Tail {
    step: String,
    stream: Stream,
    offset: u64,
    partial: Vec<u8>,
}

impl Follower {
    /// The whole lines the output files of `steps` gained since the last call, step by step in
    /// record order, stdout before stderr. A file that does not exist yet (a step that has not
    /// started) is simply empty.
    pub(crate) fn poll(&mut self, steps: &[StepRecord]) -> Vec<Line> {
        for step in steps {
            for (path, stream) in [
                (&step.stdout, Stream::Stdout),
                (&step.stderr, Stream::Stderr),
            ] {
                if path.as_os_str().is_empty() || self.files.contains_key(path) {
                    continue;
                }
                self.order.push(path.clone());
                self.files.insert(
                    path.clone(),
                    Tail {
                        step: step.name.clone(),
                        stream,
                        offset: 0,
                        partial: Vec::new(),
                    },
                );
            }
        }
        let mut lines = Vec::new();
        for path in &self.order {
            let Some(tail) = self.files.get_mut(path) else {
                continue;
            };
            tail.read_new(path);
            while let Some(end) = tail.partial.iter().position(|b| *b == b'\n') {
                let rest = tail.partial.split_off(end + 1);
                let mut line = std::mem::replace(&mut tail.partial, rest);
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                lines.push(tail.line(&line));
            }
        }
        lines
    }

    /// Everything still unread, including last lines without a newline; for the end of a run.
    pub(crate) fn finish(&mut self, steps: &[StepRecord]) -> Vec<Line> {
        let mut lines = self.poll(steps);
        for path in &self.order {
            if let Some(tail) = self.files.get_mut(path) {
                if !tail.partial.is_empty() {
                    let rest = std::mem::take(&mut tail.partial);
                    lines.push(tail.line(&rest));
                }
            }
        }
        lines
    }
}

impl Tail {
    fn read_new(&mut self, path: &PathBuf) {
        let Ok(mut file) = File::open(path) else {
            return;
        };
        let Ok(len) = file.metadata().map(|m| m.len()) else {
            return;
        };
        if len < self.offset {
            // The file was created again (a step's files are truncated when it starts).
            self.offset = 0;
            self.partial.clear();
        }
        if len == self.offset || file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut fresh = Vec::new();
        if let Ok(n) = file.take(len - self.offset).read_to_end(&mut fresh) {
            self.offset += n as u64;
            self.partial.extend_from_slice(&fresh);
        }
    }

    fn line(&self, bytes: &[u8]) -> Line {
        Line {
            step: self.step.clone(),
            stream: self.stream,
            text: String::from_utf8_lossy(bytes).into_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn step(dir: &std::path::Path, name: &str) -> StepRecord {
        StepRecord {
            name: name.into(),
            stdout: dir.join(format!("{name}.out")),
            stderr: dir.join(format!("{name}.err")),
            ..StepRecord::default()
        }
    }

    fn append(path: &std::path::Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn texts(lines: &[Line]) -> Vec<String> {
        lines
            .iter()
            .map(|l| {
                let tag = if l.stream == Stream::Stdout { "" } else { "!" };
                format!("{tag}[{}] {}", l.step, l.text)
            })
            .collect()
    }

    #[test]
    fn whole_lines_as_they_come_and_the_rest_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let steps = vec![step(dir.path(), "build"), step(dir.path(), "test")];
        let mut f = Follower::default();
        assert!(f.poll(&steps).is_empty(), "no file yet");

        append(&steps[0].stdout, "compiling\nlinking");
        append(&steps[0].stderr, "warning: x\r\n");
        assert_eq!(
            texts(&f.poll(&steps)),
            ["[build] compiling", "![build] warning: x"]
        );
        assert!(f.poll(&steps).is_empty(), "nothing new");

        append(&steps[0].stdout, " done\n");
        append(&steps[1].stdout, "ok \u{e9}\n\nno newline");
        assert_eq!(
            texts(&f.poll(&steps)),
            ["[build] linking done", "[test] ok \u{e9}", "[test] "]
        );
        assert_eq!(texts(&f.finish(&steps)), ["[test] no newline"]);
    }

    #[test]
    fn steps_added_later_and_recreated_files_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let mut steps = vec![step(dir.path(), "a")];
        let mut f = Follower::default();
        append(&steps[0].stdout, "one\n");
        assert_eq!(texts(&f.poll(&steps)), ["[a] one"]);

        // A handler shows up in the record once it starts.
        steps.push(step(dir.path(), "on_exit"));
        append(&steps[1].stdout, "bye\n");
        // The step's file is created anew (shorter than what was read).
        std::fs::write(&steps[0].stdout, "2\n").unwrap();
        assert_eq!(texts(&f.poll(&steps)), ["[a] 2", "[on_exit] bye"]);
    }

    #[test]
    fn invalid_utf8_is_shown_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let steps = vec![step(dir.path(), "bin")];
        std::fs::write(&steps[0].stdout, b"a\xffb\n").unwrap();
        let mut f = Follower::default();
        assert_eq!(texts(&f.poll(&steps)), ["[bin] a\u{fffd}b"]);
    }
}
