//! The state of the machine when a group starts, printed beside its figures: the load average and
//! what one `fdatasync` costs right now. A slow disk or a busy machine then reads as such, not as a
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
    let mut rows = Vec::new();
    match load_average() {
        Ok(load) => rows.push(Metric::info(
            format!("{group}: load average (1 min) at start"),
            load,
            "",
        )),
        Err(e) => eprintln!("bench: {group}: no load average: {e:#}"),
    }
    match fdatasync_cost(work) {
        Ok(us) => rows.push(Metric::info(
            format!("{group}: fdatasync cost at start (median of {SYNCS})"),
            us,
            "µs",
        )),
        Err(e) => eprintln!("bench: {group}: no fdatasync figure: {e:#}"),
    }
    rows
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
            2,
            "{:?}",
            rows.iter().map(|r| &r.name).collect::<Vec<_>>()
        );
        assert!(rows[1].value.unwrap() > 0.0);
        assert!(!dir.path().join("fdatasync-probe").exists());
    }
}
