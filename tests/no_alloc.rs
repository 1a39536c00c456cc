//! Normalization + routing of an already-normalized path allocates nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;

use http::Method;
use scopegate::config::{parse, Source};
use scopegate::routing::Lookup;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(|a| a.get())
}

#[test]
fn normalize_and_lookup_of_a_normalized_path_do_not_allocate() {
    let mut text = String::from(
        "[server]\nlisten = \"127.0.0.1:1\"\n[upstreams.api]\nservers = [\"127.0.0.1:2\"]\n",
    );
    for i in 0..10_000 {
        let (m, p) = match i % 3 {
            0 => ("GET", format!("/svc{}/items", i / 3)),
            1 => ("DELETE", format!("/svc{}/items/{{id}}", i / 3)),
            _ => ("GET", format!("/svc{}/files/{{*rest}}", i / 3)),
        };
        text.push_str(&format!(
            "[[routes]]\nmethods = [\"{m}\"]\npath = \"{p}\"\npublic = true\n"
        ));
    }
    let loaded = parse(
        Source {
            name: "t.toml".into(),
            text,
        },
        PathBuf::from("."),
    )
    .unwrap();
    let snap = scopegate::compile::build(&loaded, 1).unwrap();
    assert_eq!(snap.routes.len(), 10_000);

    for (method, path, found) in [
        (Method::DELETE, "/svc1500/items/42", true),
        (Method::GET, "/svc3000/files/a/b/c.txt", true),
        (Method::GET, "/svc17/items", true),
        (Method::GET, "/nowhere/at/all", false),
    ] {
        let before = allocations();
        let p = scopegate::routing::normalize(path).unwrap();
        let lookup = snap.route_set(None).router.lookup(&method, &p);
        let after = allocations();
        assert_eq!(matches!(lookup, Lookup::Found(_)), found, "{path}");
        assert_eq!(after - before, 0, "{method} {path} allocated");
    }
    // The counter does count: a path that needs normalizing is rebuilt.
    let before = allocations();
    let p = scopegate::routing::normalize("/svc1/./items/../items/7").unwrap();
    assert_eq!(p, "/svc1/items/7");
    assert!(allocations() > before);
}
