//! Payload buffers recycled on the engine thread: every forwarded packet is decrypted once
//! into one, which every receiver's copy is encrypted from and which the retransmission cache
//! then keeps (one owner: no reference count to touch when the cache lets it go, 1 s later and
//! long out of the CPU's caches); a freed one goes back to a small per-thread free list instead
//! of to malloc (about 1 KB each, just above glibc's per-thread cache, so malloc/free took ~5%
//! of the engine's CPU).

use std::cell::RefCell;
use std::ops::Deref;

/// Free buffers kept per thread at most.
const FREE_BUFFERS: usize = 1024;
/// Capacity of a pooled buffer (browsers keep RTP packets under 1200 bytes; a larger payload
/// grows its buffer).
const CAPACITY: usize = 1200;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// One payload (`0[1]` within the buffer); returns its memory to the thread's free list when
/// dropped.
#[derive(Debug, Default)]
pub(super) struct Buf(Vec<u8>, std::ops::Range<usize>);

impl Buf {
    /// A buffer from the free list (or a new one), with stale contents: for writing into.
    pub fn scratch() -> Vec<u8> {
        let mut v = FREE
            .try_with(|f| f.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        if v.capacity() < CAPACITY {
            v.reserve(CAPACITY - v.len());
        }
        v
    }

    /// `v[range]` as a payload (an empty range when out of bounds).
    pub fn from_vec(v: Vec<u8>, range: std::ops::Range<usize>) -> Buf {
        let range = if range.start <= range.end && range.end <= v.len() {
            range
        } else {
            0..0
        };
        Buf(v, range)
    }

    pub fn copy_of(data: &[u8]) -> Buf {
        let mut v = Buf::scratch();
        v.clear();
        v.reserve(CAPACITY.max(data.len()));
        v.extend_from_slice(data);
        let n = v.len();
        Buf(v, 0..n)
    }

    /// The whole buffer back (the range is forgotten).
    pub fn into_vec(mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

impl Clone for Buf {
    fn clone(&self) -> Buf {
        Buf::copy_of(self)
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        if (CAPACITY..=4 * CAPACITY).contains(&v.capacity()) {
            let _ = FREE.try_with(|f| {
                if let Ok(mut f) = f.try_borrow_mut()
                    && f.len() < FREE_BUFFERS
                {
                    f.push(v);
                }
            });
        }
    }
}

impl Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.get(self.1.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused() {
        let a = Buf::copy_of(&[1, 2, 3]);
        let p = a.0.as_ptr();
        assert_eq!(&a[..], [1, 2, 3]);
        drop(a);
        let b = Buf::copy_of(&[4; 1200]);
        assert_eq!(b.0.as_ptr(), p, "the freed buffer came back");
        assert_eq!(b.len(), 1200);
    }
}
