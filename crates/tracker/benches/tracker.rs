//! `cargo bench -p dispatch-tracker [-- --json <path>]`: upsert + delete cost at 10, 1,000 and
//! 100,000 tracked jobs against the whole-file-rewrite baseline, plus changes per second with 16
//! threads sharing one tracker (README, Benchmarks), printed as a table and optionally written as
//! `[{name, value, unit}]` JSON.

use std::process::ExitCode;

use dispatch_tracker::bench_support::{run, BenchConfig};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut json_path = None;
    while let Some(arg) = args.next() {
        // Cargo passes `--bench`; other harness flags are ignored the same way.
        if arg == "--json" {
            json_path = args.next();
        }
    }
    let scratch = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: failed to create scratch directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let results = match run(scratch.path(), &BenchConfig::default()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}", dispatch_util::error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    println!("{:<48} {:>14} unit", "measurement", "value");
    for r in &results {
        println!("{:<48} {:>14.1} {}", r.name, r.value, r.unit);
    }
    if let Some(path) = json_path {
        let json = serde_json::to_vec_pretty(&results).unwrap_or_default();
        if let Err(e) = std::fs::write(&path, json) {
            eprintln!("error: failed to write `{path}`: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
