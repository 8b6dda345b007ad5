//! `cargo xtask ci`: the whole check suite, stopping at the first failing step.
//!
//! The test steps get a PostgreSQL server (see [`crate::postgres`]), started before the first of
//! them and stopped when the suite ends, passed or failed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cargo;
use crate::postgres::TestServer;

/// Puts the hub's test stores in PostgreSQL (`crates/hub/src/store/testing.rs`).
const STORE_VAR: &str = "DISPATCH_TEST_STORE";
use dispatch_test_support::POSTGRES_URL_VAR;

/// One step of the suite: either a command or an in-process check.
enum Action {
    Cargo {
        args: &'static [&'static str],
        env: &'static [(&'static str, &'static str)],
    },
    Layering,
    Tidy,
    Imports,
}

struct Step {
    name: &'static str,
    action: Action,
    /// Runs tests, which need the PostgreSQL server.
    tests: bool,
}

const fn cargo_step(name: &'static str, args: &'static [&'static str]) -> Step {
    Step {
        name,
        action: Action::Cargo { args, env: &[] },
        tests: false,
    }
}

const fn test_step(name: &'static str, args: &'static [&'static str]) -> Step {
    Step {
        tests: true,
        ..cargo_step(name, args)
    }
}

fn steps(nextest: bool) -> Vec<Step> {
    let mut steps = vec![
        cargo_step("fmt", &["fmt", "--all", "--check"]),
        cargo_step(
            "clippy",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ),
    ];
    if nextest {
        // nextest does not run doc tests. They go first so that the suite's closing summary is
        // nextest's count of every test, not the doc-test result of the last crate.
        steps.push(test_step("doc tests", &["test", "--workspace", "--doc"]));
        steps.push(test_step(
            "test (nextest)",
            &["nextest", "run", "--workspace"],
        ));
    } else {
        steps.push(test_step("test", &["test", "--workspace"]));
    }
    // The hub's tests once more with their stores in PostgreSQL (tests that are about SQLite
    // itself keep SQLite).
    steps.push(Step {
        name: "hub on postgres",
        action: Action::Cargo {
            args: if nextest {
                &["nextest", "run", "-p", "dispatch-hub"]
            } else {
                &["test", "-p", "dispatch-hub"]
            },
            env: &[(STORE_VAR, "postgres")],
        },
        tests: true,
    });
    steps.push(Step {
        name: "doc",
        action: Action::Cargo {
            args: &["doc", "--workspace", "--no-deps"],
            env: &[("RUSTDOCFLAGS", "-D warnings")],
        },
        tests: false,
    });
    for (name, action) in [
        ("layering", Action::Layering),
        ("tidy", Action::Tidy),
        ("imports", Action::Imports),
    ] {
        steps.push(Step {
            name,
            action,
            tests: false,
        });
    }
    steps
}

fn nextest_installed(root: &Path) -> bool {
    Command::new(cargo())
        .args(["nextest", "--version"])
        .current_dir(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

pub(crate) fn run(root: &Path) -> anyhow::Result<()> {
    let nextest = nextest_installed(root);
    if !nextest {
        println!("xtask: cargo-nextest not found, running tests with `cargo test`");
    }
    let started = Instant::now();
    let mut timings: Vec<(&str, Duration)> = Vec::new();
    // Dropped when this function returns, also on a failed step: that stops our cluster.
    let mut postgres: Option<TestServer> = None;
    for step in steps(nextest) {
        println!("\n==> {}", step.name);
        let step_started = Instant::now();
        if step.tests && postgres.is_none() {
            match TestServer::prepare() {
                Ok(server) => postgres = Some(server),
                Err(err) => {
                    println!("<== {} FAILED: no PostgreSQL server", step.name);
                    return Err(err.context(format!("ci step `{}` failed", step.name)));
                }
            }
        }
        let postgres_env = postgres
            .as_ref()
            .filter(|_| step.tests)
            .map(TestServer::env_to_set)
            .unwrap_or_default();
        let wants_store = matches!(&step.action, Action::Cargo { env, .. }
            if env.iter().any(|(key, _)| *key == STORE_VAR));
        if wants_store && postgres_env.is_empty() && std::env::var_os(POSTGRES_URL_VAR).is_none() {
            // Only outside CI: there, a missing server already failed the first test step.
            println!(
                "<== {} skipped: no PostgreSQL server on this machine",
                step.name
            );
            continue;
        }
        let result = match &step.action {
            Action::Cargo { args, env } => run_cargo(root, args, env, &postgres_env),
            Action::Layering => crate::layering::run(root),
            Action::Tidy => crate::tidy::run(root),
            Action::Imports => crate::imports::run(root),
        };
        let elapsed = step_started.elapsed();
        if let Err(err) = result {
            println!("<== {} FAILED after {}", step.name, seconds(elapsed));
            return Err(err.context(format!("ci step `{}` failed", step.name)));
        }
        println!("<== {} ok in {}", step.name, seconds(elapsed));
        timings.push((step.name, elapsed));
    }
    println!("\nci summary:");
    for (name, elapsed) in &timings {
        println!("  {name:<16} {}", seconds(*elapsed));
    }
    println!("  {:<16} {}", "total", seconds(started.elapsed()));
    Ok(())
}

fn run_cargo(
    root: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    postgres_env: &[(&str, String)],
) -> anyhow::Result<()> {
    let mut command = Command::new(cargo());
    command.args(args).current_dir(root);
    for (key, value) in env {
        command.env(key, value);
    }
    for (key, value) in postgres_env {
        command.env(key, value);
    }
    let printed = format!("cargo {}", args.join(" "));
    println!("$ {printed}");
    let status = command
        .status()
        .with_context(|| format!("failed to start `{printed}`"))?;
    if !status.success() {
        bail!("`{printed}` exited with {status}");
    }
    Ok(())
}

fn seconds(elapsed: Duration) -> String {
    format!("{:.1}s", elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(nextest: bool) -> Vec<&'static str> {
        steps(nextest).iter().map(|step| step.name).collect()
    }

    #[test]
    fn step_order_matches_the_documented_suite() {
        assert_eq!(
            names(false),
            [
                "fmt",
                "clippy",
                "test",
                "hub on postgres",
                "doc",
                "layering",
                "tidy",
                "imports"
            ]
        );
        assert_eq!(
            names(true),
            [
                "fmt",
                "clippy",
                "doc tests",
                "test (nextest)",
                "hub on postgres",
                "doc",
                "layering",
                "tidy",
                "imports"
            ]
        );
    }

    #[test]
    fn only_the_test_steps_get_postgres() {
        for nextest in [false, true] {
            let tests: Vec<&str> = steps(nextest)
                .iter()
                .filter(|step| step.tests)
                .map(|step| step.name)
                .collect();
            let want: &[&str] = if nextest {
                &["doc tests", "test (nextest)", "hub on postgres"]
            } else {
                &["test", "hub on postgres"]
            };
            assert_eq!(tests, want);
        }
    }

    #[test]
    fn doc_step_denies_warnings() {
        let steps = steps(false);
        let doc = steps.iter().find(|step| step.name == "doc").unwrap();
        match &doc.action {
            Action::Cargo { env, .. } => assert_eq!(*env, [("RUSTDOCFLAGS", "-D warnings")]),
            Action::Layering | Action::Tidy | Action::Imports => {
                panic!("doc step must run cargo doc")
            }
        }
    }
}
