//! On-disk record format of the tracker journal and the scan that reads it back.
//!
//! File layout: the 8-byte magic [`MAGIC`], then records. A record is
//! `len: u32 LE | crc: u32 LE | payload (len bytes)`, where `crc` is CRC-32 over the four length bytes
//! followed by the payload, so a flipped length is caught as surely as a flipped payload byte.
//! The payload is one JSON-encoded [`Entry`], or a JSON array of entries: a batch of concurrent
//! changes committed together (one record, so one checksum covers the whole batch and a torn batch
//! write is a torn last record like any other).

use serde::{Deserialize, Serialize};

use crate::crc32;
use crate::error::TrackerError;
use crate::job::TrackedJob;

/// First bytes of every journal file; the trailing digit is the format version.
pub(crate) const MAGIC: &[u8; 8] = b"DTRKJNL1";

/// Bytes before the payload of each record.
pub(crate) const HEADER_LEN: usize = 8;

/// Largest encoded [`Entry`] accepted, far above any real job (a few hundred bytes).
pub(crate) const MAX_ENTRY: usize = 1 << 20;

/// Largest record payload, so also the largest batch: at least [`MAX_ENTRY`] plus the brackets.
///
/// The cap also keeps JSON text from ever reading as a valid header: every JSON byte serde_json emits
/// is at least `0x20`, so four of them as a little-endian `u32` are at least `0x2000_0000`, well over
/// this limit. That is what lets [`scan`] search the bytes after a bad record for a later good one
/// without being fooled by the inside of an earlier payload.
pub(crate) const MAX_PAYLOAD: usize = 1 << 24;

/// One change to the map of tracked jobs, as read back.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Entry {
    /// Insert or replace the job with this id.
    Upsert {
        /// The job as it is now.
        job: TrackedJob,
    },
    /// Forget the job with this id.
    Delete {
        /// Id of the job removed.
        job_id: String,
    },
}

/// One change to the map of tracked jobs, as written; same JSON shape as [`Entry`].
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum EntryRef<'a> {
    /// See [`Entry::Upsert`].
    Upsert {
        /// The job as it is now.
        job: &'a TrackedJob,
    },
    /// See [`Entry::Delete`].
    Delete {
        /// Id of the job removed.
        job_id: &'a str,
    },
}

/// Encodes one entry (the payload of a record of its own, or an element of a batch), refusing one
/// over [`MAX_ENTRY`].
pub(crate) fn encode_entry(entry: &EntryRef<'_>) -> Result<Vec<u8>, TrackerError> {
    let job_id = match entry {
        EntryRef::Upsert { job } => &job.job_id,
        EntryRef::Delete { job_id } => *job_id,
    };
    let payload = serde_json::to_vec(entry).map_err(|source| TrackerError::Encode {
        job_id: job_id.to_owned(),
        source,
    })?;
    if payload.len() > MAX_ENTRY {
        return Err(TrackerError::TooLarge {
            job_id: job_id.to_owned(),
            len: payload.len(),
            max: MAX_ENTRY,
        });
    }
    Ok(payload)
}

/// Encodes one entry as a record of its own.
pub(crate) fn encode_record(entry: &EntryRef<'_>) -> Result<Vec<u8>, TrackerError> {
    let payload = encode_entry(entry)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    frame(&payload, &mut out);
    Ok(out)
}

/// Frames `payload` as one record (header + payload).
///
/// The caller guarantees `0 < payload.len() <= MAX_PAYLOAD`.
pub(crate) fn frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len())
        .unwrap_or(u32::MAX)
        .to_le_bytes();
    let crc = crc32::update(crc32::update(0, &len), payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Why the record at some offset is not a complete, intact record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Defect {
    /// Fewer than [`HEADER_LEN`] bytes are left.
    ShortHeader,
    /// The length is zero or above [`MAX_PAYLOAD`].
    BadLength(u32),
    /// The length points past the end of the file.
    ShortPayload { len: u32, available: usize },
    /// The checksum does not match.
    BadChecksum,
}

impl std::fmt::Display for Defect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Defect::ShortHeader => write!(f, "record header is cut short"),
            Defect::BadLength(len) => write!(f, "record length {len} is out of range"),
            Defect::ShortPayload { len, available } => {
                write!(f, "record of {len} bytes has only {available} bytes left")
            }
            Defect::BadChecksum => write!(f, "record checksum mismatch"),
        }
    }
}

/// Reads the record starting at `at`, returning its payload range.
fn record_at(buf: &[u8], at: usize) -> Result<std::ops::Range<usize>, Defect> {
    let rest = &buf[at..];
    if rest.len() < HEADER_LEN {
        return Err(Defect::ShortHeader);
    }
    let len_bytes = [rest[0], rest[1], rest[2], rest[3]];
    let len = u32::from_le_bytes(len_bytes);
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    let len_usize = len as usize;
    if len == 0 || len_usize > MAX_PAYLOAD {
        return Err(Defect::BadLength(len));
    }
    let available = rest.len() - HEADER_LEN;
    if len_usize > available {
        return Err(Defect::ShortPayload { len, available });
    }
    let payload = &rest[HEADER_LEN..HEADER_LEN + len_usize];
    if crc32::update(crc32::update(0, &len_bytes), payload) != crc {
        return Err(Defect::BadChecksum);
    }
    let start = at + HEADER_LEN;
    Ok(start..start + len_usize)
}

/// Result of reading a whole journal.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Payload ranges of the intact records, in file order.
    pub(crate) payloads: Vec<std::ops::Range<usize>>,
    /// End of the last intact record: where the next append goes.
    pub(crate) valid_end: usize,
    /// Set when bytes after `valid_end` were a torn tail: the offending defect.
    pub(crate) torn_tail: Option<Defect>,
}

/// A bad record with intact records after it: damage in the middle, not a torn append.
#[derive(Debug)]
pub(crate) struct MidCorruption {
    /// Offset of the bad record.
    pub(crate) offset: usize,
    /// What was wrong with it.
    pub(crate) defect: Defect,
    /// Offset of the first intact record found after it.
    pub(crate) next_good: usize,
}

/// Walks the records of `buf` (which starts right after the magic, at file offset `base`).
///
/// A crash can tear only the last append, so a bad record is accepted as a torn tail only when no
/// intact record follows it anywhere in the file; otherwise the damage is in the middle and the
/// caller must refuse to open rather than drop what follows. The search is byte by byte, which is
/// linear in the tail length times the (rejected early) header check, and runs only when a bad
/// record is found.
pub(crate) fn scan(buf: &[u8], base: usize) -> Result<Scan, MidCorruption> {
    let mut payloads = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        match record_at(buf, at) {
            Ok(range) => {
                at = range.end;
                payloads.push(range);
            }
            Err(defect) => {
                if let Some(next) = (at + 1..buf.len()).find(|&q| record_at(buf, q).is_ok()) {
                    return Err(MidCorruption {
                        offset: base + at,
                        defect,
                        next_good: base + next,
                    });
                }
                return Ok(Scan {
                    payloads: shift(payloads, base),
                    valid_end: base + at,
                    torn_tail: Some(defect),
                });
            }
        }
    }
    Ok(Scan {
        payloads: shift(payloads, base),
        valid_end: base + at,
        torn_tail: None,
    })
}

fn shift(ranges: Vec<std::ops::Range<usize>>, base: usize) -> Vec<std::ops::Range<usize>> {
    ranges
        .into_iter()
        .map(|r| r.start + base..r.end + base)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            frame(p, &mut out);
        }
        out
    }

    #[test]
    fn reads_back_every_framed_record() {
        let buf = records(&[b"{\"a\":1}", b"{}", b"[1,2,3]"]);
        let scan = scan(&buf, 8).unwrap();
        assert_eq!(scan.payloads.len(), 3);
        assert_eq!(
            &buf[scan.payloads[2].start - 8..scan.payloads[2].end - 8],
            b"[1,2,3]"
        );
        assert_eq!(scan.valid_end, buf.len() + 8);
        assert!(scan.torn_tail.is_none());
    }

    #[test]
    fn every_cut_of_the_last_record_is_a_torn_tail() {
        let full = records(&[b"{\"first\":true}", b"{\"second\":true}"]);
        let first_len = HEADER_LEN + b"{\"first\":true}".len();
        for cut in first_len + 1..full.len() {
            let scan = scan(&full[..cut], 0).unwrap();
            assert_eq!(scan.payloads.len(), 1, "cut at {cut}");
            assert_eq!(scan.valid_end, first_len, "cut at {cut}");
            assert!(scan.torn_tail.is_some(), "cut at {cut}");
        }
    }

    #[test]
    fn zero_filled_tail_is_torn() {
        // A crash after the file size grew but before the data reached the disk leaves zeros.
        let mut buf = records(&[b"{\"x\":1}"]);
        let end = buf.len();
        buf.extend_from_slice(&[0u8; 4096]);
        let scan = scan(&buf, 0).unwrap();
        assert_eq!(scan.valid_end, end);
        assert_eq!(scan.torn_tail, Some(Defect::BadLength(0)));
    }

    #[test]
    fn flipped_byte_in_the_middle_is_reported_with_its_offset() {
        let mut buf = records(&[b"{\"a\":1}", b"{\"b\":2}", b"{\"c\":3}"]);
        let second = HEADER_LEN + 7;
        buf[second + HEADER_LEN + 2] ^= 0x01;
        let err = scan(&buf, 8).unwrap_err();
        assert_eq!(err.offset, second + 8);
        assert_eq!(err.defect, Defect::BadChecksum);
        assert_eq!(err.next_good, 2 * second + 8);
    }

    #[test]
    fn flipped_length_in_the_middle_is_not_mistaken_for_a_tail() {
        let mut buf = records(&[b"{\"a\":1}", b"{\"b\":2}", b"{\"c\":3}"]);
        // Make the first record claim to run past the end of the file.
        buf[2] = 0x01;
        let err = scan(&buf, 0).unwrap_err();
        assert_eq!(err.offset, 0);
    }
}
