//! The plugin's memory allocator: a bump arena inside the module's initial
//! memory, then Rust's standard allocator once the arena is used up.
//!
//! Why not only the standard allocator: kiln-proxy gives every request a
//! fresh instance, and the standard wasm32 allocator takes all of its memory
//! with `memory.grow`. So every call grew the instance's memory, and the
//! host had to shrink the pooled slot back before the next instance: two
//! `mprotect` calls (and a TLB flush) per plugin call, about half of what a
//! call of a small plugin cost (docs/BENCHMARKS.md, "Next to nginx"). The arena lives in the module's zero-initialised
//! data (its `.bss`), which is part of the initial memory, so a request that
//! fits in it never grows memory, and the host resets only the pages it
//! wrote. One request per instance makes a bump arena a good fit: memory is
//! given back only when the last allocation is freed (the common
//! build-then-drop of a temporary), and all of it when the instance ends.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes of the arena: a typical request (a few KiB of JSON, parsed and
/// re-serialised) takes tens of KiB. Not more: the host scans the whole
/// initial memory for written pages after every call (the chain of three
/// small plugins cost about 15 % more CPU with 1 MiB), and a request that
/// outgrows the arena is one whose own parsing costs far more than the
/// memory growth it then pays for.
pub const ARENA_BYTES: usize = 256 << 10;

/// A bump allocator over `N` bytes of its own, falling back to [`System`].
#[repr(C, align(16))]
pub struct Arena<const N: usize> {
    bytes: UnsafeCell<[u8; N]>,
    /// Offset of the first free byte.
    next: AtomicUsize,
}

// SAFETY: wasm32-unknown-unknown plugins are single-threaded; natively (in
// tests) `next` is only moved with compare-exchange, so two threads never
// get overlapping ranges.
unsafe impl<const N: usize> Sync for Arena<N> {}

impl<const N: usize> Arena<N> {
    pub const fn new() -> Self {
        Arena {
            bytes: UnsafeCell::new([0; N]),
            next: AtomicUsize::new(0),
        }
    }

    fn base(&self) -> usize {
        self.bytes.get() as usize
    }

    /// The offset of `ptr` in the arena, if it points into it.
    fn offset_of(&self, ptr: *mut u8) -> Option<usize> {
        let addr = ptr as usize;
        (self.base()..self.base() + N)
            .contains(&addr)
            .then(|| addr - self.base())
    }

    /// Moves `next` from `from` to `to` if nothing moved it meanwhile.
    fn bump(&self, from: usize, to: usize) -> bool {
        self.next
            .compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    fn try_alloc(&self, layout: Layout) -> Option<*mut u8> {
        let next = self.next.load(Ordering::Relaxed);
        // Align the address, not the offset: the arena's own alignment may
        // be smaller than the layout's.
        let start = (self.base() + next).checked_next_multiple_of(layout.align())? - self.base();
        let end = start.checked_add(layout.size())?;
        (end <= N && self.bump(next, end)).then(|| (self.base() + start) as *mut u8)
    }
}

impl<const N: usize> Default for Arena<N> {
    fn default() -> Self {
        Self::new()
    }
}

unsafe impl<const N: usize> GlobalAlloc for Arena<N> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.try_alloc(layout) {
            Some(ptr) => ptr,
            // SAFETY: forwarded with the caller's layout.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match self.offset_of(ptr) {
            // The last allocation is given back; others stay until the
            // instance ends.
            Some(offset) => {
                self.bump(offset + layout.size(), offset);
            }
            // SAFETY: not ours, so System allocated it with this layout.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if let Some(offset) = self.offset_of(ptr) {
            // Shrinking, or growing the last allocation while it fits: in place.
            if new_size <= layout.size() {
                self.bump(offset + layout.size(), offset + new_size);
                return ptr;
            }
            if offset + new_size <= N && self.bump(offset + layout.size(), offset + new_size) {
                return ptr;
            }
        } else {
            // SAFETY: not ours, so System allocated it with this layout.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: the caller guarantees new_size makes a valid layout with
        // this alignment; the old block is valid for layout.size() bytes.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size());
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn allocations_are_aligned_and_disjoint_and_fall_back_when_full() {
        let arena = Box::new(Arena::<256>::new());
        unsafe {
            let a = arena.alloc(layout(3, 1));
            let b = arena.alloc(layout(8, 8));
            assert!(arena.offset_of(a).is_some() && arena.offset_of(b).is_some());
            assert_eq!(b as usize % 8, 0);
            assert!(b as usize >= a as usize + 3);
            // Too big for what is left: from the system allocator.
            let big = arena.alloc(layout(512, 8));
            assert!(!big.is_null() && arena.offset_of(big).is_none());
            big.write_bytes(7, 512);
            arena.dealloc(big, layout(512, 8));
        }
    }

    #[test]
    fn the_last_allocation_grows_in_place_and_is_given_back() {
        let arena = Box::new(Arena::<256>::new());
        unsafe {
            let a = arena.alloc(layout(16, 1));
            a.write_bytes(1, 16);
            let grown = arena.realloc(a, layout(16, 1), 64);
            assert_eq!(grown, a, "the last allocation grows where it is");
            arena.dealloc(grown, layout(64, 1));
            assert_eq!(arena.alloc(layout(16, 1)), a, "freed memory is reused");
        }
    }

    #[test]
    fn an_earlier_allocation_moves_when_it_grows_and_keeps_its_bytes() {
        let arena = Box::new(Arena::<256>::new());
        unsafe {
            let a = arena.alloc(layout(4, 1));
            a.copy_from_nonoverlapping(b"kiln".as_ptr(), 4);
            let _b = arena.alloc(layout(4, 1));
            let moved = arena.realloc(a, layout(4, 1), 8);
            assert_ne!(moved, a);
            assert_eq!(std::slice::from_raw_parts(moved, 4), b"kiln");
            // Past the arena: moved to the system allocator, bytes kept.
            let out = arena.realloc(moved, layout(8, 1), 1024);
            assert!(arena.offset_of(out).is_none());
            assert_eq!(std::slice::from_raw_parts(out, 4), b"kiln");
            arena.dealloc(out, layout(1024, 1));
        }
    }
}
