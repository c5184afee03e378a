//! A growable array of `u32` in memory mapped for it alone: grown and shrunk by the kernel
//! (`mremap`, which moves page tables rather than bytes), and given back to the system whole
//! when shrunk or dropped.
//!
//! The holder table keeps each shard's entries in one of these instead of a `Vec`: vectors
//! growing in step leave free pieces between them in the heap, which the allocator cannot
//! give back; mapped arrays leave at most a page each.
//!
//! Every word up to the capacity is initialised (an anonymous mapping is zero-filled, and
//! words once written keep their value), so the length can be set anywhere within the
//! capacity safely: words never written read as 0.

use std::alloc::{Layout, handle_alloc_error};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::OnceLock;

pub(super) struct Words {
    /// The mapping, or dangling (and aligned) while nothing is mapped.
    start: NonNull<u32>,
    len: usize,
    /// Bytes mapped, a whole number of pages.
    mapped: usize,
}

// SAFETY: `Words` owns its mapping as a `Vec<u32>` owns its buffer; nothing else refers to it.
unsafe impl Send for Words {}
// SAFETY: shared references only read it.
unsafe impl Sync for Words {}

fn page() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(size).ok().filter(|s| s.is_power_of_two()).unwrap_or(4096)
    })
}

/// The bytes mapped for `words`: whole pages.
fn bytes_for(words: usize) -> usize {
    let bytes = words.checked_mul(4).unwrap_or_else(|| too_large(words));
    bytes.checked_next_multiple_of(page()).unwrap_or_else(|| too_large(words))
}

fn too_large(words: usize) -> ! {
    panic!("{words} words do not fit in memory")
}

/// What an allocation that cannot be had does in Rust: report it and abort.
fn out_of_memory(bytes: usize) -> ! {
    handle_alloc_error(Layout::from_size_align(bytes, 4).unwrap_or(Layout::new::<u32>()))
}

impl Words {
    pub fn new() -> Self {
        Words { start: NonNull::dangling(), len: 0, mapped: 0 }
    }

    /// `len` words, all 0.
    pub fn zeroed(len: usize) -> Self {
        let mut words = Words::new();
        words.reserve_total(len);
        words.set_len(len);
        words
    }

    pub fn capacity(&self) -> usize {
        self.mapped / 4
    }

    /// Makes the capacity at least `words`, keeping every word (the mapping may move).
    pub fn reserve_total(&mut self, words: usize) {
        if words <= self.capacity() {
            return;
        }
        self.remap(bytes_for(words));
    }

    /// Sets the length; `len` must be within the capacity. Words beyond the old length keep
    /// what they last held, 0 if never written.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity(), "length {len} beyond capacity {}", self.capacity());
        self.len = len;
    }

    /// Gives back the pages beyond what `words` (at least the length) takes.
    pub fn shrink_to(&mut self, words: usize) {
        let bytes = bytes_for(words.max(self.len));
        if bytes < self.mapped {
            self.remap(bytes);
        }
    }

    /// Maps `bytes` (whole pages) in place of the present mapping, keeping its contents up to
    /// the shorter of the two.
    fn remap(&mut self, bytes: usize) {
        let old = self.start.as_ptr().cast::<libc::c_void>();
        if bytes == 0 {
            // SAFETY: `old` is our mapping of `self.mapped` bytes, not used after this.
            unsafe { libc::munmap(old, self.mapped) };
            (self.start, self.len, self.mapped) = (NonNull::dangling(), 0, 0);
            return;
        }
        let new = if self.mapped == 0 {
            // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    bytes,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            }
        } else {
            // SAFETY: `old` is our mapping of `self.mapped` bytes; `&mut self` means no
            // reference into it outlives this call, so it may move.
            unsafe { libc::mremap(old, self.mapped, bytes, libc::MREMAP_MAYMOVE) }
        };
        if new == libc::MAP_FAILED {
            out_of_memory(bytes);
        }
        self.start = NonNull::new(new.cast::<u32>()).unwrap_or_else(|| out_of_memory(bytes));
        self.mapped = bytes;
        self.len = self.len.min(self.capacity());
    }
}

impl Default for Words {
    fn default() -> Self {
        Words::new()
    }
}

impl Drop for Words {
    fn drop(&mut self) {
        if self.mapped > 0 {
            // SAFETY: our mapping, not used after this.
            unsafe { libc::munmap(self.start.as_ptr().cast(), self.mapped) };
        }
    }
}

impl Deref for Words {
    type Target = [u32];

    fn deref(&self) -> &[u32] {
        // SAFETY: `len` words from `start` are mapped and initialised (see the module docs),
        // and `start` is aligned and non-null even when nothing is mapped.
        unsafe { std::slice::from_raw_parts(self.start.as_ptr(), self.len) }
    }
}

impl DerefMut for Words {
    fn deref_mut(&mut self) -> &mut [u32] {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.start.as_ptr(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_keeps_and_shrinks() {
        let mut words = Words::new();
        assert!(words.is_empty());
        words.reserve_total(10);
        assert!(words.capacity() >= 10);
        words.set_len(10);
        assert!(words.iter().all(|&w| w == 0), "fresh words read as 0");
        for (i, w) in words.iter_mut().enumerate() {
            *w = i as u32;
        }
        // Grown far past a page: the first words are kept, the new ones are 0.
        words.reserve_total(1 << 20);
        words.set_len(1 << 20);
        assert_eq!(&words[..10], &(0..10).collect::<Vec<u32>>()[..]);
        assert!(words[10..].iter().all(|&w| w == 0));
        words[(1 << 20) - 1] = 7;
        words.set_len(5);
        words.shrink_to(5);
        assert_eq!(words.capacity(), page() / 4);
        assert_eq!(&words[..], &[0, 1, 2, 3, 4]);
        words.set_len(0);
        words.shrink_to(0);
        assert_eq!(words.capacity(), 0);
        assert!(words.is_empty());
        let zeroed = Words::zeroed(3000);
        assert_eq!(zeroed.len(), 3000);
        assert!(zeroed.iter().all(|&w| w == 0));
    }
}
