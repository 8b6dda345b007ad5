//! `cargo xtask bench`: the README's benchmark numbers, measured on this machine, printed as one table
//! and written to `target/bench/results.json`.
//!
//! Everything that runs is built once, in release mode, before anything is measured (this is
//! the only place release builds happen). Each group of metrics is a function returning
//! `Vec<Metric>`; a group that cannot measure (a binary that does not build, a process that
//! dies) becomes rows with `pass = false` and the reason, and the other groups still run.

mod build;
mod fleet;
mod hostile;
mod http;
mod idle;
mod latency;
mod load;
mod noise;
mod pages;
mod procs;
mod replicas;
mod report;
mod stats;
mod system;
mod throughput;
mod wrapped;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _};

pub(crate) use report::{Metric, Target};

use build::{Artifact, Artifacts};

/// What one group measures and how.
struct Group {
    name: &'static str,
    about: &'static str,
    needs: &'static [Artifact],
    /// The rows the group promises: those that carry a target, or for a group whose figures
    /// have none, its main measurements. Each is reported as not measured, and failed, if the
    /// group cannot produce it, so a group never fails without a row saying so.
    promised: fn() -> Vec<Metric>,
    run: fn(&Context) -> anyhow::Result<Vec<Metric>>,
}

/// What every group gets: built artifacts and a scratch directory of its own.
pub(crate) struct Context {
    pub(crate) root: PathBuf,
    pub(crate) artifacts: Artifacts,
    pub(crate) work: PathBuf,
    /// `--profile`: the profiler run around the scheduler under measurement.
    pub(crate) profile: Option<procs::Profile>,
}

const GROUPS: &[Group] = &[
    Group {
        name: "tracker",
        about: "tracker upsert+delete at 10 / 1,000 / 100,000 jobs vs the whole-file rewrite",
        needs: &[Artifact::TrackerBench],
        promised: wrapped::tracker_targets,
        run: wrapped::tracker,
    },
    Group {
        name: "noop",
        about: "executor: no-op run overhead, enqueue → final status",
        needs: &[Artifact::ExecutorBench],
        promised: wrapped::noop_targets,
        run: wrapped::noop,
    },
    Group {
        name: "latency",
        about: "webhook 202 → first step started, long-poll on and off",
        needs: &[Artifact::Scheduler],
        promised: latency::targets,
        run: latency::run,
    },
    Group {
        name: "throughput",
        about: "2,000 queued jobs pulled + tracked + enqueued + accepted",
        needs: &[Artifact::Scheduler, Artifact::Hub],
        promised: throughput::targets,
        run: throughput::run,
    },
    Group {
        name: "fleet",
        about: "one hub holding 10,000 waiting long-polls: memory, idle CPU, hand-over latency",
        needs: &[Artifact::Hub],
        promised: fleet::targets,
        run: fleet::run,
    },
    Group {
        name: "postgres",
        about: "long-poll hand-over across two hub replicas on one PostgreSQL database, beside \
                one replica and one hub on SQLite",
        needs: &[Artifact::Hub],
        promised: replicas::promised,
        run: replicas::run,
    },
    Group {
        name: "idle",
        about: "scheduler RSS and CPU over 30 s without jobs, embedded and remote hub",
        needs: &[Artifact::Scheduler, Artifact::Hub],
        promised: idle::targets,
        run: idle::run,
    },
    Group {
        name: "pages",
        about: "hub web pages with 100,000 jobs stored: first jobs page and a job page",
        needs: &[Artifact::Hub],
        promised: pages::targets,
        run: pages::run,
    },
    Group {
        name: "hostile",
        about: "hub under 1,000 stalled headers + 40 stalled unsigned uploads: RSS, closes, p99s",
        needs: &[Artifact::Hub],
        promised: hostile::targets,
        run: hostile::run,
    },
];

/// Flags of `cargo xtask bench`.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    only: Option<String>,
    out: Option<PathBuf>,
    /// Keep the scratch homes (logs, run records) after the run.
    keep: bool,
    /// `--profile '<command>'`: see [`procs::Profile`].
    profile: Option<String>,
}

fn parse_options(args: &[String]) -> anyhow::Result<Options> {
    let mut options = Options {
        only: None,
        out: None,
        keep: false,
        profile: None,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--only" => {
                let name = args.next().context("`--only` needs a group name")?;
                if !GROUPS.iter().any(|g| g.name == name) {
                    bail!("unknown bench group `{name}` (groups: {})", group_names());
                }
                options.only = Some(name.clone());
            }
            "--out" => {
                let path = args.next().context("`--out` needs a file path")?;
                options.out = Some(PathBuf::from(path));
            }
            "--keep" => options.keep = true,
            "--profile" => {
                let command = args.next().context("`--profile` needs a command")?;
                options.profile = Some(command.clone());
            }
            other => {
                bail!(
                    "unknown bench flag `{other}` (flags: --only <group>, --out <file>, --keep, \
                     --profile <command>)"
                )
            }
        }
    }
    Ok(options)
}

fn group_names() -> String {
    GROUPS.iter().map(|g| g.name).collect::<Vec<_>>().join(", ")
}

pub(crate) fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let options = parse_options(args)?;
    let groups: Vec<&Group> = GROUPS
        .iter()
        .filter(|g| options.only.as_deref().is_none_or(|only| only == g.name))
        .collect();
    let bench_dir = root.join("target").join("bench");
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| bench_dir.join("results.json"));
    std::fs::create_dir_all(&bench_dir)
        .with_context(|| format!("failed to create `{}`", bench_dir.display()))?;
    // Two benches at once would share the scratch directory and each other's cores.
    let _lock = lock_bench(&bench_dir)?;
    let work = bench_dir.join("work");
    // A previous run may have been interrupted or kept; its scratch files are of no use. They
    // are moved aside and removed only after measuring: on ext4 without a journal, creating
    // files right after tens of thousands were removed costs several times more (the allocator
    // steps over recently freed inodes), which the throughput group would measure.
    if work.exists() {
        let aside = bench_dir.join(format!("{STALE_PREFIX}{}", std::process::id()));
        std::fs::rename(&work, &aside)
            .with_context(|| format!("failed to move `{}` aside", work.display()))?;
    }
    std::fs::create_dir_all(&work)
        .with_context(|| format!("failed to create `{}`", work.display()))?;

    let started = Instant::now();
    let mut needed: Vec<Artifact> = Vec::new();
    for group in &groups {
        for artifact in group.needs {
            if !needed.contains(artifact) {
                needed.push(*artifact);
            }
        }
    }
    eprintln!("bench: building in release mode: {needed:?}");
    let artifacts = build::build(root, &needed);

    let mut metrics = Vec::new();
    for group in &groups {
        eprintln!(
            "bench: [{:>5.0}s] {}: {}",
            started.elapsed().as_secs_f64(),
            group.name,
            group.about
        );
        let context = Context {
            root: root.to_path_buf(),
            artifacts: artifacts.clone(),
            work: work.join(group.name),
            profile: options.profile.clone().map(procs::Profile),
        };
        metrics.extend(noise::rows(group.name, &context.work));
        metrics.extend(run_group(group, &context));
    }
    eprintln!("bench: done in {:.0}s", started.elapsed().as_secs_f64());

    println!("{}", report::table(&metrics));
    let json = serde_json::to_string_pretty(&report::to_json(&metrics))?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create `{}`", dir.display()))?;
    }
    std::fs::write(&out, json + "\n")
        .with_context(|| format!("failed to write `{}`", out.display()))?;
    println!("results written to {}", out.display());
    // The scratch homes hold thousands of run records; only worth keeping to read the logs of
    // a group that could not measure, or when asked.
    let unmeasured = metrics.iter().any(|m| m.value.is_none());
    if options.keep || unmeasured {
        println!("scratch homes and logs kept in {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    remove_stale(&bench_dir);
    Ok(())
}

/// Holds `<bench_dir>/lock` for the whole run, waiting for another `cargo xtask bench` (of any
/// engineer sharing this tree) to finish first.
fn lock_bench(bench_dir: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    let path = bench_dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("failed to open `{}`", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((file, _)) => {
            eprintln!(
                "bench: another `cargo xtask bench` is running; waiting for it (`{}`)",
                path.display()
            );
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| {
                anyhow::anyhow!("failed to lock `{}`: {errno}", path.display())
            })
        }
    }
}

/// Scratch directories of earlier runs, moved aside at the start of this one.
const STALE_PREFIX: &str = "stale-work-";

fn remove_stale(bench_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(bench_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(STALE_PREFIX)
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Runs one group; an error, or a target row the group did not produce, becomes a failed row.
fn run_group(group: &Group, context: &Context) -> Vec<Metric> {
    let missing: Vec<String> = group
        .needs
        .iter()
        .filter_map(|a| context.artifacts.path(*a).err())
        .collect();
    let outcome = if missing.is_empty() {
        std::fs::create_dir_all(&context.work)
            .with_context(|| format!("failed to create `{}`", context.work.display()))
            .and_then(|()| (group.run)(context))
    } else {
        Err(anyhow::anyhow!("{}", missing.join("; ")))
    };
    match outcome {
        Ok(rows) => report::complete(rows, (group.promised)(), "not reported by the group"),
        Err(err) => {
            let reason = format!("not measured: {err:#}");
            eprintln!("bench: {}: {reason}", group.name);
            report::complete(Vec::new(), (group.promised)(), &reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_take_a_known_group_and_an_output_file() {
        assert_eq!(
            parse_options(&args(&[
                "--only",
                "idle",
                "--out",
                "x.json",
                "--keep",
                "--profile",
                "strace -c -f -p {pid}"
            ]))
            .unwrap(),
            Options {
                only: Some("idle".into()),
                out: Some(PathBuf::from("x.json")),
                keep: true,
                profile: Some("strace -c -f -p {pid}".into()),
            }
        );
        assert_eq!(
            parse_options(&[]).unwrap(),
            Options {
                only: None,
                out: None,
                keep: false,
                profile: None,
            }
        );
    }

    #[test]
    fn options_reject_unknown_groups_and_flags() {
        let err = parse_options(&args(&["--only", "speed"])).unwrap_err();
        assert!(err.to_string().contains("unknown bench group `speed`"));
        assert!(err
            .to_string()
            .contains("tracker, noop, latency, throughput, fleet, postgres, idle"));
        assert!(parse_options(&args(&["--only"])).is_err());
        assert!(parse_options(&args(&["--fast"])).is_err());
    }

    #[test]
    fn every_group_promises_rows_with_unique_names() {
        let mut names: Vec<String> = GROUPS
            .iter()
            .flat_map(|g| (g.promised)())
            .map(|m| m.name)
            .collect();
        let total = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), total);
        for group in GROUPS {
            assert!(!(group.promised)().is_empty(), "{}", group.name);
        }
    }

    #[test]
    fn a_group_without_its_artifact_reports_failed_rows() {
        let context = Context {
            root: PathBuf::from("."),
            artifacts: Artifacts::failed_for_tests(Artifact::Hub, "hub did not build"),
            work: std::env::temp_dir().join("xtask-bench-unused"),
            profile: None,
        };
        // A group with targets, and one whose figures have none.
        for name in ["idle", "postgres"] {
            let group = GROUPS.iter().find(|g| g.name == name).unwrap();
            let rows = run_group(group, &context);
            assert!(!rows.is_empty());
            for row in &rows {
                assert_eq!(row.pass(), Some(false), "{name}: {}", row.name);
                assert!(row.note.as_deref().unwrap().contains("hub did not build"));
            }
        }
    }
}
