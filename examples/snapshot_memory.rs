//! How much memory a config costs: live heap after parsing, after building the snapshot, and
//! the snapshot alone, counted by a wrapping allocator.
//!
//!   cargo run --release --example snapshot_memory -- path/to/scopegate.toml

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
struct C;
static CUR: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
unsafe impl GlobalAlloc for C {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let c = CUR.fetch_add(l.size(), Relaxed) + l.size();
        PEAK.fetch_max(c, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        CUR.fetch_sub(l.size(), Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}
#[global_allocator]
static G: C = C;
fn mb(x: usize) -> f64 {
    x as f64 / 1048576.0
}
fn main() {
    let path = std::path::PathBuf::from(std::env::args().nth(1).unwrap());
    let loaded = scopegate::config::load(&path).unwrap();
    println!(
        "after parse: cur {:.1} MB peak {:.1} MB",
        mb(CUR.load(Relaxed)),
        mb(PEAK.load(Relaxed))
    );
    let snap = scopegate::compile::build(&loaded, 1).unwrap();
    println!(
        "after build: cur {:.1} MB peak {:.1} MB",
        mb(CUR.load(Relaxed)),
        mb(PEAK.load(Relaxed))
    );
    drop(loaded);
    println!("snapshot alone: cur {:.1} MB", mb(CUR.load(Relaxed)));
    std::hint::black_box(snap);
}
