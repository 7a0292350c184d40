//! The heap a plugin call grows, measured by the allocator itself: the process's global
//! allocator is the system one with a per-thread byte count that is on only while a plugin
//! runs on that thread. The sandbox reads it after every rhai operation and stops a script
//! whose heap has grown past its limit — whatever built-in or data structure the growth came
//! from, which size limits on single values cannot promise.
//!
//! Off (every thread outside a plugin call), the cost is one thread-local flag test per
//! allocation. The count is net: bytes allocated minus bytes freed on this thread since the
//! meter started.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    // Const-initialised and without destructors: reading them never allocates, which an
    // allocator requires.
    static ON: Cell<bool> = const { Cell::new(false) };
    static NET: Cell<isize> = const { Cell::new(0) };
}

/// The system allocator, counting while a [`Meter`] is running on the thread.
pub struct Counting;

#[inline]
fn count(delta: isize) {
    let _ = ON.try_with(|on| {
        if on.get() {
            let _ = NET.try_with(|n| n.set(n.get().saturating_add(delta)));
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the wrapper only adds to a
// thread-local counter, which does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        count(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Counts this thread's heap growth from its start until it is dropped.
pub struct Meter {
    was_on: bool,
    outer: isize,
}

impl Meter {
    pub fn start() -> Self {
        let was_on = ON.with(|on| on.replace(true));
        let outer = NET.with(|n| n.replace(0));
        Meter { was_on, outer }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        // A meter started inside another one gives the outer count back what it measured.
        let inner = NET.with(|n| n.get());
        NET.with(|n| n.set(self.outer.saturating_add(inner)));
        ON.with(|on| on.set(self.was_on));
    }
}

/// Net bytes allocated on this thread since the innermost running [`Meter`] started (0 when
/// none runs).
pub fn net() -> isize {
    NET.with(|n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_growth_on_this_thread_only() {
        let m = Meter::start();
        let _ = &m;
        let v: Vec<u8> = vec![1; 1 << 20];
        assert!(net() >= 1 << 20, "{}", net());
        let other = std::thread::spawn(|| vec![0u8; 8 << 20].len())
            .join()
            .unwrap();
        assert_eq!(other, 8 << 20);
        assert!(
            net() < 2 << 20,
            "another thread's allocation counted: {}",
            net()
        );
        drop(v);
        assert!(net() < 1 << 16, "{}", net());
        drop(m);
        let before = net();
        let _w = vec![0u8; 1 << 20];
        assert_eq!(net(), before, "no meter: no count");
    }
}
