//! Small helpers that several dispatch crates need and none of them owns: the wall clock in
//! milliseconds, lowercase hex, an error with its causes on one line, parse errors that never
//! echo the input (config files hold secrets), and the Prometheus text exposition format.
//!
//! Not for: anything with a dependency beyond `std`, or any knowledge of jobs, DAGs or the wire.

mod hex;
mod parse_error;
pub mod prometheus;

pub use hex::{decode_hex, hex};
pub use parse_error::describe_parse_error;

/// Milliseconds since the Unix epoch; 0 if the clock is before it, saturating far in the future.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The error and each of its causes, joined by `": "`, for one-line logs and messages.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn error_chain_joins_every_cause_once() {
        let e = Layer(
            "top",
            Some(Box::new(Layer(
                "middle",
                Some(Box::new(Layer("root", None))),
            ))),
        );
        assert_eq!(error_chain(&e), "top: middle: root");
        assert_eq!(error_chain(&Layer("alone", None)), "alone");
    }

    #[test]
    fn now_ms_is_after_2020() {
        assert!(now_ms() > 1_577_836_800_000);
    }
}
