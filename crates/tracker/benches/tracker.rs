//! `cargo bench -p dispatch-tracker [-- --json <path>]`: upsert + delete cost at 10, 1,000 and
//! 100,000 tracked jobs against the whole-file-rewrite baseline, plus changes per second with 16
//! threads sharing one tracker (README, Benchmarks), printed as a table and optionally written as
//! `[{name, value, unit}]` JSON.

use std::process::ExitCode;

use dispatch_tracker::bench_support::{run, BenchConfig};

fn main() -> ExitCode {
    dispatch_test_support::bench_main(
        |scratch| run(scratch, &BenchConfig::default()).map_err(|e| dispatch_util::error_chain(&e)),
        |results| {
            println!("{:<48} {:>14} unit", "measurement", "value");
            for r in results {
                println!("{:<48} {:>14.1} {}", r.name, r.value, r.unit);
            }
        },
    )
}
