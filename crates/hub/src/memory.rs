//! The hub binary's memory allocator: jemalloc, set to give freed memory back to the system.
//!
//! A hub holding thousands of long-polls keeps, per waiting connection, two 8 KiB buffers of
//! hyper's of which a waiting pull writes a few hundred bytes. jemalloc puts blocks of that size
//! on whole pages of their own, with no header in front, so the untouched pages never become
//! resident; glibc's malloc puts a header on the first page of each and packs small blocks
//! around them. Measured with `cargo xtask bench --only fleet` (10,000 waiting pulls): 10.1 KiB
//! of hub memory per waiting pull with jemalloc, 14.0 KiB with glibc; see `docs/performance.md`
//! ("Fleet").
//!
//! A background thread of jemalloc's returns pages left unused for a second (`dirty_decay_ms`),
//! straight to the system (`muzzy_decay_ms:0`: no `MADV_FREE` stage that would still count as the
//! hub's memory), so the memory of 10,000 pulls that leave is given back within seconds even when
//! the hub then sits idle. `_RJEM_MALLOC_CONF` in the environment overrides these settings.
//!
//! Not for: the scheduler's embedded hub (the scheduler binary keeps the system allocator).

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, as the C string it reads.
const CONF: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// jemalloc's settings, read once at its start from this symbol (a `const char *`; the `_rjem_`
/// prefix is the one `tikv-jemallocator` builds jemalloc with).
// The symbol is jemalloc's documented way to take settings from the program; exporting a name
// is what `unsafe_code` flags, and a thin pointer to a NUL-terminated static string is all it
// exports.
#[allow(unsafe_code, non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &u8 = &CONF[0];
