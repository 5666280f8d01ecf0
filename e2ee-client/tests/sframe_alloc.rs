//! The per-frame SFrame paths reuse caller buffers and do not touch the heap after warm-up.
//!
//! A counting global allocator counts allocations made by the current thread while
//! counting is switched on, so parallel tests in this binary do not disturb each other.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

use e2ee_client::sframe::{CipherSuite, Receiver, Sender};

struct CountingAlloc;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn note_alloc() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
    }
}

// SAFETY: forwards every call unchanged to the system allocator; the bookkeeping only
// touches const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Allocations made by `f` on this thread.
fn count_allocs(f: impl FnOnce()) -> u64 {
    ALLOCS.with(|c| c.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCS.with(Cell::get)
}

const FRAME: usize = 1200;

#[test]
fn seal_into_reuses_capacity() {
    for suite in CipherSuite::ALL {
        // Start at CTR 1000 so every frame has the same header length (two-byte CTR).
        let mut tx = Sender::with_counter(suite, 3, b"capacity test key", 1000);
        let pt = vec![0x5a; FRAME];
        let mut out = Vec::new();
        tx.seal_into(b"", &pt, &mut out).unwrap();
        let (ptr, cap) = (out.as_ptr(), out.capacity());
        for _ in 0..1000 {
            let n = tx.seal_into(b"", &pt, &mut out).unwrap();
            assert_eq!(n, out.len());
            assert_eq!(out.as_ptr(), ptr, "{suite}: buffer moved");
            assert_eq!(out.capacity(), cap, "{suite}: capacity changed");
        }
    }
}

#[test]
fn open_into_reuses_capacity() {
    let suite = CipherSuite::AesGcm128Sha256;
    let mut tx = Sender::with_counter(suite, 3, b"k", 1000);
    let mut rx = Receiver::new();
    rx.add_key(suite, 3, b"k");
    let frames: Vec<Vec<u8>> = (0..100)
        .map(|_| tx.seal(b"", &[7u8; FRAME]).unwrap())
        .collect();
    let mut out = Vec::new();
    rx.open_into(b"", &frames[0], &mut out).unwrap();
    let (ptr, cap) = (out.as_ptr(), out.capacity());
    for f in &frames[1..] {
        rx.open_into(b"", f, &mut out).unwrap();
        assert_eq!((out.as_ptr(), out.capacity(), out.len()), (ptr, cap, FRAME));
    }
}

#[test]
fn hot_paths_do_not_allocate_after_warm_up() {
    for suite in CipherSuite::ALL {
        for metadata in [&b""[..], &b"frame metadata (RTP descriptor)"[..]] {
            let mut tx = Sender::with_counter(suite, 9, b"no-alloc key", 1000);
            let mut rx = Receiver::new();
            rx.add_key(suite, 9, b"no-alloc key");
            let pt = vec![0x11; FRAME];
            let mut sealed = Vec::new();
            let mut in_place = Vec::with_capacity(FRAME + 64);
            let mut fixed = vec![0u8; FRAME + 64];
            let mut opened = Vec::new();

            // Warm-up: grows `sealed`, `opened` and the internal AAD scratch buffers.
            tx.seal_into(metadata, &pt, &mut sealed).unwrap();
            rx.open_into(metadata, &sealed, &mut opened).unwrap();

            let allocs = count_allocs(|| {
                for _ in 0..200 {
                    tx.seal_into(metadata, &pt, &mut sealed).unwrap();
                    let r = rx.open_in_place(metadata, &mut sealed).unwrap();
                    assert_eq!(&sealed[r.plaintext], &pt[..]);

                    in_place.clear();
                    in_place.extend_from_slice(&pt);
                    tx.seal_in_place(metadata, &mut in_place).unwrap();
                    rx.open_into(metadata, &in_place, &mut opened).unwrap();

                    let n = tx.seal_to_slice(metadata, &pt, &mut fixed).unwrap();
                    rx.open_in_place(metadata, &mut fixed[..n]).unwrap();
                }
            });
            assert_eq!(allocs, 0, "{suite} metadata={}", metadata.len());
        }
    }
}

/// Sanity check that the counter does see allocations, so the zero above means something.
#[test]
fn allocation_counter_works() {
    let n = count_allocs(|| {
        let v: Vec<u8> = Vec::with_capacity(std::hint::black_box(64));
        std::hint::black_box(v);
    });
    assert_eq!(n, 1);
}
