//! Running a program to its end from xtask.

use std::process::Command;

use anyhow::{bail, Context};

/// Runs `command` to its end and fails with its output when it fails.
pub(crate) fn run(command: &mut Command) -> anyhow::Result<()> {
    // The whole command in the messages: as root, a missing `runuser` is a likely cause.
    let output = command
        .output()
        .with_context(|| format!("failed to start {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} exited with {}:\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    Ok(())
}
