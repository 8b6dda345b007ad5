//! The pulled-job decoder `dispatch_license::decode_pulled_job` (the one `CloudClient::pull_dispatch`
//! uses) on arbitrary bytes. A decoded job, encoded and decoded again, keeps `payload`
//! and `headers` byte for byte and encodes to the same bytes (the encoding is a fixed point).
#![no_main]

use dispatch_protocol::DispatchJob;
use libfuzzer_sys::fuzz_target;

/// The client's own decoder of a pull answer (empty body, bad JSON or no id: refused).
fn accept(body: &[u8]) -> Option<DispatchJob> {
    dispatch_license::decode_pulled_job(body).ok()
}

fn raw(v: &Option<Box<serde_json::value::RawValue>>) -> Option<&str> {
    v.as_deref().map(|r| r.get())
}

fuzz_target!(|data: &[u8]| {
    let Some(job) = accept(data) else {
        return;
    };
    let encoded = serde_json::to_vec(&job).expect("a decoded job encodes");
    let again = accept(&encoded).unwrap_or_else(|| {
        panic!(
            "re-encoded job is refused: {}",
            String::from_utf8_lossy(&encoded)
        )
    });
    assert_eq!(job.id, again.id);
    assert_eq!(
        raw(&job.payload),
        raw(&again.payload),
        "payload bytes changed"
    );
    assert_eq!(
        raw(&job.headers),
        raw(&again.headers),
        "headers bytes changed"
    );
    let encoded_again = serde_json::to_vec(&again).expect("a decoded job encodes");
    assert_eq!(
        encoded,
        encoded_again,
        "encoding is not stable:\n{}\n{}",
        String::from_utf8_lossy(&encoded),
        String::from_utf8_lossy(&encoded_again)
    );
    // The raw payload/headers must be byte-for-byte slices of the input.
    for field in [raw(&job.payload), raw(&job.headers)].into_iter().flatten() {
        let found = data.windows(field.len()).any(|w| w == field.as_bytes());
        assert!(found, "raw value is not a slice of the input: {field:?}");
    }
});
