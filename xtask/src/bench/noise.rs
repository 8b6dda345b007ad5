//! The state of the machine when a group starts, printed beside its figures: the load average,
//! what one `fdatasync` costs right now and what creating a file costs. A slow disk, a busy machine
//! or a file system still stepping over many freshly removed files then reads as such, not as a
//! regression.

use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;

use super::stats::percentile;
use super::Metric;

/// Writes and syncs measured for the fdatasync cost.
const SYNCS: usize = 30;

/// Context rows for `group`: 1-minute load average and the median cost of a 4 KiB write +
/// `fdatasync` in the group's scratch directory (the disk its homes live on).
pub(crate) fn rows(group: &str, work: &Path) -> Vec<Metric> {
    // (row name, what is missing when it fails, unit, figure): a figure that cannot be had is
    // said and left out.
    let figures = [
        (
            "load average (1 min) at start".to_owned(),
            "load average",
            "",
            load_average(),
        ),
        (
            format!("fdatasync cost at start (median of {SYNCS})"),
            "fdatasync figure",
            "µs",
            fdatasync_cost(work),
        ),
        (
            format!("file create cost at start (median of {CREATES})"),
            "file create figure",
            "µs",
            create_cost(work),
        ),
    ];
    let mut rows = Vec::new();
    for (name, missing, unit, figure) in figures {
        match figure {
            Ok(value) => rows.push(Metric::info(format!("{group}: {name}"), value, unit)),
            Err(e) => eprintln!("bench: {group}: no {missing}: {e:#}"),
        }
    }
    rows
}

/// Files created for the create cost.
const CREATES: usize = 200;

/// Median microseconds of creating (and closing) one small file in a fresh directory in `dir`.
/// On ext4 without a journal this grows several times after many files were removed nearby
/// (recently freed inodes are stepped over), which slows every store that creates files.
fn create_cost(dir: &Path) -> anyhow::Result<f64> {
    let probe = dir.join("create-probe");
    std::fs::create_dir_all(&probe)
        .with_context(|| format!("failed to create `{}`", probe.display()))?;
    let mut samples = Vec::with_capacity(CREATES);
    for n in 0..CREATES {
        let path = probe.join(n.to_string());
        let started = Instant::now();
        let mut file = std::fs::File::create(&path)
            .with_context(|| format!("failed to create `{}`", path.display()))?;
        file.write_all(b"{}")?;
        drop(file);
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    let _ = std::fs::remove_dir_all(&probe);
    percentile(&samples, 50.0).context("no samples")
}

fn load_average() -> anyhow::Result<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").context("failed to read /proc/loadavg")?;
    parse_load(&text).with_context(|| format!("unexpected /proc/loadavg: {text:?}"))
}

fn parse_load(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Median microseconds of one 4 KiB append + `fdatasync` on a fresh file in `dir`.
fn fdatasync_cost(dir: &Path) -> anyhow::Result<f64> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("failed to create `{}`", dir.display()))?;
    let path = dir.join("fdatasync-probe");
    let mut file = std::fs::File::create(&path)
        .with_context(|| format!("failed to create `{}`", path.display()))?;
    let block = [0x5au8; 4096];
    let mut samples = Vec::with_capacity(SYNCS);
    for _ in 0..SYNCS {
        let started = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    percentile(&samples, 50.0).context("no samples")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_first_load_figure() {
        assert_eq!(parse_load("0.42 0.30 0.10 1/234 5678\n"), Some(0.42));
        assert_eq!(parse_load(""), None);
        assert_eq!(parse_load("x y"), None);
    }

    #[test]
    fn measures_a_real_sync_in_the_given_directory() {
        let dir = tempfile::tempdir().unwrap();
        let rows = rows("g", dir.path());
        assert_eq!(
            rows.len(),
            3,
            "{:?}",
            rows.iter().map(|r| &r.name).collect::<Vec<_>>()
        );
        assert!(rows[1].value.unwrap() > 0.0);
        assert!(rows[2].value.unwrap() > 0.0);
        assert!(!dir.path().join("fdatasync-probe").exists());
        assert!(!dir.path().join("create-probe").exists());
    }
}
