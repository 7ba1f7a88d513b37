//! Requests whose shapes claim huge tensors (10^12 elements, or more than a `usize` holds) are
//! refused having allocated next to nothing: measured with a counting global allocator, so
//! this binary holds this one test.

use ember::protocol::ErrorCode;
use ember::store::Manifest;
use ember::worker::{RequestLimits, admit};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes live now, and the most live since the last [`reset_peak`].
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most bytes allocated at once while `f` ran, beyond what was live before.
fn peak_while(f: impl FnOnce()) -> usize {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    f();
    PEAK.load(Ordering::Relaxed) - before
}

#[test]
fn shapes_claiming_huge_tensors_are_refused_before_allocation() {
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/digits/1/manifest.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let pixels = vec!["1"; 64].join(",");
    let unlimited = RequestLimits {
        max_request_bytes: usize::MAX,
        ..RequestLimits::default()
    };
    let bombs = [
        // 10^12 elements (4 TB of FP32) claimed, 64 sent.
        ("[15625000000,64]", "elements"),
        // 2^96 elements: more than any machine's address space.
        ("[4294967296,4294967296,4294967296]", "too large"),
    ];
    for (shape, expected) in bombs {
        let body = format!(
            r#"{{"id":"bomb","inputs":[{{"name":"input","shape":{shape},"datatype":"FP32","data":[{pixels}]}}]}}"#
        );
        let mut refusal = None;
        let peak = peak_while(|| {
            refusal = Some(
                admit(body.as_bytes(), None, &manifest, &unlimited)
                    .map(drop)
                    .map_err(|(error, _)| error)
                    .expect_err("refused"),
            );
        });
        let refusal = refusal.unwrap();
        assert_eq!(refusal.code, ErrorCode::InvalidArgument, "{shape}");
        assert!(refusal.message.contains(expected), "{shape}: {refusal:?}");
        // Decoding pre-sizes at most 2^20 elements for a shape it has not checked yet.
        assert!(peak <= 5 << 20, "{shape}: {peak} bytes allocated");
    }
}
