//! Groups measured by a crate's own bench target (`--json <path>` → `[{name, value, unit}]`):
//! the tracker's and the executor's. Their rows are passed through; the targeted row is derived
//! here so its name stays stable whatever the bench calls its rows.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _};

use super::build::Artifact;
use super::{Context, Metric, Target};

const TRACKER_RATIO: &str = "tracker_ratio_100k_vs_10";
const NOOP_OVERHEAD: &str = "noop_run_overhead_ms";

pub(crate) fn tracker_targets() -> Vec<Metric> {
    vec![Metric::promised(TRACKER_RATIO, "x", Target::AtMost(2.0))]
}

pub(crate) fn noop_targets() -> Vec<Metric> {
    vec![Metric::promised(NOOP_OVERHEAD, "ms", Target::AtMost(5.0))]
}

pub(crate) fn tracker(context: &Context) -> anyhow::Result<Vec<Metric>> {
    let rows = run_bench(context, Artifact::TrackerBench)?;
    let derived = tracker_ratio(&rows)?;
    Ok(rows.into_iter().chain([derived]).collect())
}

pub(crate) fn noop(context: &Context) -> anyhow::Result<Vec<Metric>> {
    let rows = run_bench(context, Artifact::ExecutorBench)?;
    let derived = noop_overhead(&rows)?;
    Ok(rows.into_iter().chain([derived]).collect())
}

/// Ours at 100,000 tracked jobs over ours at 10.
fn tracker_ratio(rows: &[Metric]) -> anyhow::Result<Metric> {
    let at = |n: &str| {
        let name = format!("tracker/upsert+delete/n={n}");
        rows.iter()
            .find(|r| r.name == name)
            .and_then(|r| r.value)
            .with_context(|| format!("the tracker bench reported no `{name}`"))
    };
    let (small, large) = (at("10")?, at("100000")?);
    if small <= 0.0 {
        bail!("the tracker bench reported a non-positive cost at n=10 ({small})");
    }
    Ok(tracker_targets()
        .remove(0)
        .measured(large / small)
        .with_note("tracker/upsert+delete/n=100000 ÷ n=10"))
}

/// The mean enqueue → final status of a single-step `true` run over the durable file stores.
fn noop_overhead(rows: &[Metric]) -> anyhow::Result<Metric> {
    let row = rows
        .iter()
        .find(|r| {
            r.name.contains("no-op single-step run")
                && r.name.ends_with("mean")
                && !r.name.contains("memory")
        })
        .context("the executor bench reported no `no-op single-step run, mean` row")?;
    let value = row
        .value
        .with_context(|| format!("`{}` has no value", row.name))?;
    let ms = match row.unit.as_str() {
        "ms" => value,
        "us" | "µs" => value / 1000.0,
        "ns" => value / 1e6,
        "s" => value * 1000.0,
        other => bail!("`{}` is in an unknown unit `{other}`", row.name),
    };
    Ok(noop_targets()
        .remove(0)
        .measured(ms)
        .with_note(format!("= `{}`", row.name)))
}

/// Runs a bench executable with `--json` and reads its rows.
fn run_bench(context: &Context, artifact: Artifact) -> anyhow::Result<Vec<Metric>> {
    let exe = context.artifacts.exe(artifact)?;
    let json = context.work.join("bench.json");
    let log = context.work.join("bench.log");
    let status = Command::new(&exe)
        .arg("--bench")
        .arg("--json")
        .arg(&json)
        .current_dir(&context.root)
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(context.work.join("bench.err"))?)
        .status()
        .with_context(|| format!("failed to run `{}`", exe.display()))?;
    if !status.success() {
        let err = std::fs::read_to_string(context.work.join("bench.err")).unwrap_or_default();
        bail!("`{}` failed ({status}): {}", exe.display(), err.trim());
    }
    read_rows(&json)
}

fn read_rows(path: &Path) -> anyhow::Result<Vec<Metric>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read `{}`", path.display()))?;
    parse_rows(&text).with_context(|| format!("unexpected content in `{}`", path.display()))
}

fn parse_rows(text: &str) -> anyhow::Result<Vec<Metric>> {
    let value: serde_json::Value = serde_json::from_str(text)?;
    let rows = value.as_array().context("not a JSON array")?;
    rows.iter()
        .map(|row| {
            let name = row["name"].as_str().context("a row without `name`")?;
            let value = row["value"]
                .as_f64()
                .with_context(|| format!("row `{name}` has no numeric `value`"))?;
            let unit = row["unit"].as_str().unwrap_or_default();
            Ok(Metric::info(name, value, unit))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_ratio_divides_the_large_by_the_small_cost() {
        let rows = parse_rows(
            r#"[{"name":"tracker/upsert+delete/n=10","value":40.0,"unit":"us"},
                {"name":"tracker/upsert+delete/n=1000","value":41.0,"unit":"us"},
                {"name":"tracker/upsert+delete/n=100000","value":60.0,"unit":"us"},
                {"name":"baseline-rewrite/upsert+delete/n=100000","value":9e5,"unit":"us"}]"#,
        )
        .unwrap();
        let ratio = tracker_ratio(&rows).unwrap();
        assert_eq!(ratio.name, TRACKER_RATIO);
        assert_eq!(ratio.value, Some(1.5));
        assert_eq!(ratio.pass(), Some(true));
        let missing =
            parse_rows(r#"[{"name":"tracker/upsert+delete/n=10","value":1,"unit":"us"}]"#).unwrap();
        assert!(tracker_ratio(&missing)
            .unwrap_err()
            .to_string()
            .contains("n=100000"));
    }

    #[test]
    fn noop_overhead_uses_the_durable_mean_in_ms() {
        let rows = parse_rows(
            r#"[{"name":"executor (memory stores): no-op single-step run, mean","value":0.4,"unit":"ms"},
                {"name":"executor: no-op single-step run, p50","value":3.0,"unit":"ms"},
                {"name":"executor: no-op single-step run, mean","value":6500,"unit":"us"}]"#,
        )
        .unwrap();
        let row = noop_overhead(&rows).unwrap();
        assert_eq!(row.value, Some(6.5));
        assert_eq!(row.pass(), Some(false));
    }

    #[test]
    fn bench_json_must_have_the_documented_shape() {
        assert!(parse_rows("{}").is_err());
        assert!(parse_rows(r#"[{"value":1,"unit":"us"}]"#).is_err());
        assert!(parse_rows(r#"[{"name":"x","value":"fast","unit":"us"}]"#).is_err());
        assert_eq!(parse_rows("[]").unwrap(), vec![]);
    }
}
