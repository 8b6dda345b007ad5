//! `cargo xtask tidy`: every tracked file stays inside the repository.
//!
//! A test or a doc that reads a sibling directory of the checkout, or an absolute path into
//! someone's home or work directory passes on the machine that wrote it and fails on every other
//! one. This check reads every file git tracks and fails naming each such reference (file, line,
//! the path).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// Directories under `/` that hold one machine's own files.
const PRIVATE_ROOTS: [&str; 4] = ["work", "home", "root", "Users"];

/// One reference to a path outside the repository.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Finding {
    pub(crate) file: String,
    pub(crate) line: usize,
    pub(crate) path: String,
}

pub(crate) fn run(root: &Path) -> anyhow::Result<()> {
    let output = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output()
        .context("failed to run `git ls-files` (tidy needs a git checkout)")?;
    if !output.status.success() {
        bail!(
            "`git ls-files` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let mut findings = Vec::new();
    let mut files = 0;
    for name in output.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        let path = root.join(&name);
        // A file deleted in the work tree but still in the index is not there to read.
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        files += 1;
        if bytes.contains(&0) {
            continue;
        }
        findings.extend(scan(&name, &String::from_utf8_lossy(&bytes)));
    }
    if findings.is_empty() {
        println!("tidy: {files} tracked files, none refers to a path outside the repository");
        return Ok(());
    }
    for f in &findings {
        println!(
            "{}:{}: refers to `{}`, outside the repository",
            f.file, f.line, f.path
        );
    }
    bail!(
        "{} reference(s) to paths outside the repository; carry what is needed inside it \
         (fixtures under tests/fixtures/, paths from CARGO_MANIFEST_DIR)",
        findings.len()
    )
}

/// The references to outside paths in one file's text.
pub(crate) fn scan(file: &str, text: &str) -> Vec<Finding> {
    let sibling = format!("..{}shared", '/');
    let roots: Vec<String> = PRIVATE_ROOTS.iter().map(|d| format!("/{d}/")).collect();
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let mut hits: Vec<usize> = line
            .match_indices(sibling.as_str())
            .map(|(i, _)| i)
            .collect();
        for root in &roots {
            hits.extend(
                line.match_indices(root.as_str())
                    .map(|(i, _)| i)
                    .filter(|&i| starts_a_path(line, i)),
            );
        }
        hits.sort_unstable();
        hits.dedup();
        for start in hits {
            out.push(Finding {
                file: file.to_owned(),
                line: index + 1,
                path: path_at(line, start),
            });
        }
    }
    out
}

/// True when the `/` at `at` begins an absolute path rather than continuing a word or a URL
/// (a slash inside a URL continues the URL; one after a quote or a blank starts a path).
fn starts_a_path(line: &str, at: usize) -> bool {
    match line[..at].chars().next_back() {
        None => true,
        Some(c) => c.is_whitespace() || "\"'`([{<=,;".contains(c),
    }
}

/// The path-like run of text starting at `start`, for the message.
fn path_at(line: &str, start: usize) -> String {
    line[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && !"\"'`)]}>,;".contains(*c))
        .take(120)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(text: &str) -> Vec<String> {
        scan("f", text).into_iter().map(|f| f.path).collect()
    }

    #[test]
    fn flags_the_sibling_directory_and_private_absolute_paths() {
        let sibling = format!("..{}shared/fixtures/x.json", '/');
        let work = format!("/{}/shared/fixtures", "work");
        let home = format!("/{}/alice/src", "home");
        let text = format!(
            "read(\"{sibling}\")\nconst F: &str = \"{work}\";\ncd {home}\nlet p = `/{}/me`;\n",
            "Users"
        );
        assert_eq!(
            paths(&text),
            [sibling, work, home, format!("/{}/me", "Users")]
        );
        let found = scan("a.rs", &format!("x\ny = \"/{}/x\"\n", "root"));
        assert_eq!(found[0].line, 2);
        assert_eq!(found[0].file, "a.rs");
    }

    #[test]
    fn leaves_urls_relative_paths_and_other_roots_alone() {
        let text = format!(
            "https://github.com/{h}/x\nsee docs/{h}/y\n/usr/share/unicode/UnicodeData.txt\n\
             /nonexistent/{h}/dags\n~/.dispatch\nhttps://api.github.com/users/octocat\n",
            h = "home"
        );
        assert_eq!(paths(&text), Vec::<String>::new());
    }
}
