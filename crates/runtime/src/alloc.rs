//! mimalloc as the global allocator, through its plain entry points whenever the alignment
//! asked for is one every block has anyway. (`mimalloc::MiMalloc` calls the aligned entry
//! points for every request, whose path is several times longer; Lua's allocator asks for
//! alignment 8 or 16 on every table, string and closure.)

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment of every mimalloc block of at least this size (as for the system
/// allocator's `malloc` on x86_64).
const MIN_ALIGN: usize = 16;

fn plain(layout: &Layout) -> bool {
    layout.align() <= MIN_ALIGN && layout.align() <= layout.size()
}

pub struct Mi;

// SAFETY: every call forwards to the matching mimalloc function; the plain ones are used
// only where their blocks satisfy the requested alignment (see `plain`).
// (Each method's `# Safety` is `GlobalAlloc`'s: the caller's layout and pointer rules.)
unsafe impl GlobalAlloc for Mi {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's allocation functions take any size and alignment.
        unsafe {
            if plain(&layout) {
                mi::mi_malloc(layout.size()) as *mut u8
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
            }
        }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if plain(&layout) {
                mi::mi_zalloc(layout.size()) as *mut u8
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
            }
        }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract); mi_free takes
        // blocks of every alignment.
        unsafe { mi::mi_free(ptr as *mut c_void) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as in `dealloc`; the block keeps the alignment it was asked with.
        unsafe {
            if layout.align() <= MIN_ALIGN && layout.align() <= new_size {
                mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8
            } else {
                mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            }
        }
    }
}
