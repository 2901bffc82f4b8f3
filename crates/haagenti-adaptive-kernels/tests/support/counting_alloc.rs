//! A global allocator that records the largest single request, for tests that must show that a
//! size cap refuses its input *before* allocating the claimed size: on Linux a lazily zeroed
//! multi-GiB allocation would succeed, and a test without the count could not tell.
//!
//! Included by `#[path]` into each test binary that needs it (the kernels' and the nn crate's
//! `tests/caps.rs`); it installs itself as that binary's `#[global_allocator]`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The largest single allocation since [`measured`] last reset it.
static PEAK: AtomicUsize = AtomicUsize::new(0);

struct PeakAlloc;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the only
// addition is a relaxed atomic update, which neither allocates nor touches the memory.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        PEAK.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        PEAK.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        PEAK.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds the rest.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// Tests run one at a time so that one test's allocations do not count against another's.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `f` alone and returns its result with the largest single allocation it made.
pub(crate) fn measured<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    PEAK.store(0, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed))
}
