//! The one release build of everything the selected groups run, with the path of each
//! executable taken from cargo's own JSON messages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cargo;

/// An executable a group needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Artifact {
    Scheduler,
    Hub,
    TrackerBench,
    ExecutorBench,
}

impl Artifact {
    /// Package, cargo target selection flag, target name.
    fn spec(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Artifact::Scheduler => ("dispatch-scheduler", "--bin", "scheduler"),
            Artifact::Hub => ("dispatch-hub", "--bin", "hub"),
            Artifact::TrackerBench => ("dispatch-tracker", "--bench", "tracker"),
            Artifact::ExecutorBench => ("dispatch-executor", "--bench", "noop"),
        }
    }
}

/// Built executables, or why each one is missing.
#[derive(Clone, Default)]
pub(crate) struct Artifacts(BTreeMap<Artifact, Result<PathBuf, String>>);

impl Artifacts {
    pub(crate) fn path(&self, artifact: Artifact) -> Result<PathBuf, String> {
        self.0
            .get(&artifact)
            .cloned()
            .unwrap_or_else(|| Err(format!("{artifact:?} was not built")))
    }

    /// [`Artifacts::path`] as an `anyhow` result.
    pub(crate) fn exe(&self, artifact: Artifact) -> anyhow::Result<PathBuf> {
        self.path(artifact).map_err(anyhow::Error::msg)
    }

    #[cfg(test)]
    pub(crate) fn failed_for_tests(artifact: Artifact, reason: &str) -> Artifacts {
        Artifacts(BTreeMap::from([(artifact, Err(reason.to_owned()))]))
    }
}

/// Builds `needed` in release mode. The binaries build in one cargo call; each bench target in
/// its own, so a bench another engineer has not finished cannot keep the rest from building.
pub(crate) fn build(root: &Path, needed: &[Artifact]) -> Artifacts {
    let mut artifacts = Artifacts::default();
    let bins: Vec<Artifact> = needed
        .iter()
        .copied()
        .filter(|a| matches!(a, Artifact::Scheduler | Artifact::Hub))
        .collect();
    let mut batches: Vec<Vec<Artifact>> = Vec::new();
    if !bins.is_empty() {
        batches.push(bins);
    }
    for artifact in needed {
        if matches!(artifact, Artifact::TrackerBench | Artifact::ExecutorBench) {
            batches.push(vec![*artifact]);
        }
    }
    for batch in batches {
        let outcome = cargo_build(root, &batch);
        for artifact in batch {
            let result = match &outcome {
                Ok(paths) => paths
                    .get(&artifact.spec().2.to_owned())
                    .cloned()
                    .ok_or_else(|| format!("cargo built no executable for {artifact:?}")),
                Err(reason) => Err(reason.clone()),
            };
            artifacts.0.insert(artifact, result);
        }
    }
    artifacts
}

/// `cargo build --release` of `batch`; target name → executable.
fn cargo_build(root: &Path, batch: &[Artifact]) -> Result<BTreeMap<String, PathBuf>, String> {
    let mut args: Vec<String> = vec![
        "build".into(),
        "--release".into(),
        "--message-format=json-render-diagnostics".into(),
    ];
    for artifact in batch {
        let (package, kind, name) = artifact.spec();
        args.extend(["-p".into(), package.into(), kind.into(), name.into()]);
    }
    eprintln!("$ cargo {}", args.join(" "));
    let output = Command::new(cargo())
        .args(&args)
        .current_dir(root)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("failed to run cargo build: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprint!("{stderr}");
    if !output.status.success() {
        let first_error = stderr
            .lines()
            .find(|l| l.starts_with("error"))
            .unwrap_or("see the build output above");
        return Err(format!(
            "release build of {batch:?} failed: {}",
            first_error.trim()
        ));
    }
    Ok(executables(&String::from_utf8_lossy(&output.stdout)))
}

/// Target name → executable, from cargo's `compiler-artifact` messages.
fn executables(messages: &str) -> BTreeMap<String, PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter_map(|m| {
            let name = m["target"]["name"].as_str()?.to_owned();
            let exe = m["executable"].as_str()?;
            Some((name, PathBuf::from(exe)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executables_come_from_artifact_messages_only() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"serde","kind":["lib"]},"executable":null}
{"reason":"compiler-artifact","target":{"name":"scheduler","kind":["bin"]},"executable":"/t/release/scheduler"}
{"reason":"build-script-executed","target":{"name":"x"},"executable":"/nope"}
not json
{"reason":"compiler-artifact","target":{"name":"tracker","kind":["bench"]},"executable":"/t/release/deps/tracker-abc"}
{"reason":"build-finished","success":true}"#;
        let found = executables(messages);
        assert_eq!(found.len(), 2);
        assert_eq!(found["scheduler"], PathBuf::from("/t/release/scheduler"));
        assert_eq!(
            found["tracker"],
            PathBuf::from("/t/release/deps/tracker-abc")
        );
    }

    #[test]
    fn an_artifact_that_was_not_built_says_so() {
        let artifacts = Artifacts::default();
        assert!(artifacts
            .path(Artifact::Hub)
            .unwrap_err()
            .contains("Hub was not built"));
    }
}
