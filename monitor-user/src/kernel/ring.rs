//! The event ring as the reader holds it: a record is given back to the kernel
//! only once what was made of it is written.
//!
//! aya publishes the consumer position (the first word of the ring's consumer page,
//! shared with the kernel) as each record is dropped, while the event built from
//! it may still sit in an output's buffer. A daemon killed then would lose it with
//! no count; its successor, taking the pinned ring over, starts from the published
//! position. So the reader keeps the published position at the start of the batch
//! and moves it on after the outputs flushed: a successor reads again what a killed
//! daemon had read but not written. aya keeps its own reading position, so holding
//! the published one back only makes the kernel see less free room meanwhile.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, RawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{MapData, RingBuf};

pub struct Ring {
    pub buf: RingBuf<MapData>,
    /// The consumer page, mapped a second time (aya's own mapping is private).
    page: NonNull<AtomicU64>,
    len: usize,
    /// The furthest position aya has published in this batch.
    seen: u64,
}

// SAFETY: the mapping is owned by the Ring and only touched through atomics.
unsafe impl Send for Ring {}

impl Ring {
    pub fn new(buf: RingBuf<MapData>) -> io::Result<Self> {
        let len = page_size();
        // SAFETY: offset 0 of a ring buffer map is its consumer page, which the
        // owner may map read-write; the fd outlives the call.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                buf.as_fd().as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let page = NonNull::new(p.cast::<AtomicU64>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        let seen = unsafe { page.as_ref() }.load(Ordering::Acquire);
        Ok(Self { buf, page, len, seen })
    }

    fn pos(&self) -> &AtomicU64 {
        // SAFETY: mapped for as long as self lives.
        unsafe { self.page.as_ref() }
    }

    /// The published position at the start of a batch.
    pub fn mark(&self) -> u64 {
        self.pos().load(Ordering::Acquire)
    }

    /// After a record was dropped: the published position goes back to `mark`.
    pub fn hold(&mut self, mark: u64) {
        self.seen = self.seen.max(self.pos().load(Ordering::Acquire));
        self.pos().store(mark, Ordering::Release);
    }

    /// What was read is written: the kernel may reuse its room.
    pub fn release(&mut self) {
        self.seen = self.seen.max(self.pos().load(Ordering::Acquire));
        self.pos().store(self.seen, Ordering::Release);
    }
}

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.buf.as_fd().as_raw_fd()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new().
        unsafe { libc::munmap(self.page.as_ptr().cast(), self.len) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as usize
}
