//! Heap buffers aligned to the disk block, as O_DIRECT requires.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use crate::io::FixedTag;

/// The unit of every O_DIRECT transfer: buffer addresses, file offsets and lengths are multiples
/// of it.
pub const BLOCK_BYTES: usize = 4096;

/// Rounds `n` up to the next multiple of [`BLOCK_BYTES`].
pub const fn align_up(n: u64) -> u64 {
    n.div_ceil(BLOCK_BYTES as u64) * BLOCK_BYTES as u64
}

/// Rounds `n` down to a multiple of [`BLOCK_BYTES`].
pub const fn align_down(n: u64) -> u64 {
    n / BLOCK_BYTES as u64 * BLOCK_BYTES as u64
}

/// A zero-initialised, block-aligned byte buffer whose capacity is a whole number of blocks.
///
/// It is moved into the I/O backend for the duration of an operation and handed back in the
/// completion, so its memory cannot be freed or reused while the kernel may still touch it.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    capacity: usize,
    /// Set while the buffer is registered with a ring: its drop then hands the memory to that
    /// ring, which unregisters it before freeing it.
    fixed: Option<FixedTag>,
}

// SAFETY: AlignedBuf owns its allocation exclusively (like Vec<u8>); moving it between threads
// moves that ownership.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `bytes` rounded up to whole blocks (at least one), zero-filled.
    pub fn zeroed(bytes: usize) -> Self {
        let capacity = (align_up(bytes.max(1) as u64)) as usize;
        let layout = Self::layout(capacity);
        // SAFETY: the layout has a non-zero size (at least one block).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        Self {
            ptr,
            capacity,
            fixed: None,
        }
    }

    fn layout(capacity: usize) -> Layout {
        match Layout::from_size_align(capacity, BLOCK_BYTES) {
            Ok(layout) => layout,
            // Only reachable for capacities near isize::MAX, which no caller asks for.
            Err(_) => panic!("aligned buffer of {capacity} bytes is not allocatable"),
        }
    }

    /// Capacity in bytes, a multiple of [`BLOCK_BYTES`].
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The whole buffer.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is a live allocation of `capacity` initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.capacity) }
    }

    /// The whole buffer, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity) }
    }

    /// Raw pointer for the I/O backend; valid while `self` is alive and not moved out of the
    /// backend's custody.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The ring registration this buffer carries, if any.
    pub(crate) fn fixed_tag(&self) -> Option<&FixedTag> {
        self.fixed.as_ref()
    }

    /// Marks the buffer registered (replacing an older, lapsed registration).
    pub(crate) fn set_fixed_tag(&mut self, tag: FixedTag) {
        self.fixed = Some(tag);
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Some(tag) = self.fixed.take() {
            // The same memory, untagged: the ring frees it once it is unregistered.
            let raw = AlignedBuf {
                ptr: self.ptr,
                capacity: self.capacity,
                fixed: None,
            };
            tag.give_back(raw);
            return;
        }
        // SAFETY: ptr was allocated in `zeroed` with exactly this layout and is freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.capacity)) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("capacity", &self.capacity)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_zeroed_and_whole_blocks() {
        let mut buf = AlignedBuf::zeroed(5000);
        assert_eq!(buf.capacity(), 8192);
        assert_eq!(buf.as_mut_ptr() as usize % BLOCK_BYTES, 0);
        assert!(buf.as_slice().iter().all(|&b| b == 0));
        assert_eq!(align_up(0), 0);
        assert_eq!(align_up(1), 4096);
        assert_eq!(align_down(8191), 4096);
    }
}
