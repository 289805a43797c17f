//! The state of one hook's check, kept per thread (task local storage), not per CPU.
//!
//! A climb up the directory tree and the sensitive-set match do not fit the stack,
//! and kept there they would not verify (see [`super::Climb`]). Per CPU, as first
//! built, they were safe only while the kernel never preempted a BPF program: an LSM
//! program runs with preemption on (no recursion guard keeps a second one off its
//! CPU), so on a kernel that preempts kernel code (`preempt=full`, `lazy`, RT)
//! another thread's hook on the same CPU could overwrite a check half done, and
//! one thread's write be judged by another's path. A thread runs one hook at a
//! time, so its own storage is its check's alone, wherever it is preempted or
//! moved. The storage is made at a thread's first check and goes with the thread.

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE},
    helpers::generated as h,
    macros::btf_map,
};

use super::{Climb, SensUp};
use crate::file::NameScan;

/// A BTF-defined task storage map (aya-ebpf has none): the fields are the map's
/// definition as the loader reads it from BTF, never dereferenced.
#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: placeholders the loader reads from BTF; no state behind them.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    pub const fn new() -> Self {
        Self {
            r#type: ptr::null(),
            key: ptr::null(),
            value: ptr::null(),
            max_entries: ptr::null(),
            map_flags: ptr::null(),
        }
    }

    /// The current thread's value, made (zeroed) if `create` and it has none yet.
    #[inline(always)]
    pub fn current(&self, create: bool) -> Option<*mut T> {
        let flags = if create { BPF_LOCAL_STORAGE_GET_F_CREATE as u64 } else { 0 };
        let p = unsafe {
            h::bpf_task_storage_get(
                ptr::from_ref(self).cast_mut().cast::<c_void>(),
                h::bpf_get_current_task_btf(),
                ptr::null_mut(),
                flags,
            )
        };
        (!p.is_null()).then_some(p.cast::<T>())
    }
}

/// One thread's check in progress.
#[repr(C)]
pub struct LsmState {
    pub climb: Climb,
    pub up: SensUp,
    /// The sensitive prefilter's hashes of the file's name (file::sensitive_name_in).
    pub scan: NameScan,
    /// The name it read.
    pub name: [u8; 256],
}

#[btf_map]
pub static LSM_STATE: TaskStorage<LsmState> = TaskStorage::new();

/// The current thread's check state (made at its first check: `create`), or None:
/// no memory for it, or (before 6.2, where every task storage call takes a per-CPU
/// try-lock) another thread preempted inside such a call on this CPU, which is why
/// agentmon does not use this tier on an older kernel that preempts. Every check
/// then refuses: a climb grants nothing, a file is taken for sensitive.
#[inline(always)]
pub fn state(create: bool) -> Option<*mut LsmState> {
    LSM_STATE.current(create)
}
