//! Everything that talks to the kernel: BTF offsets, tracepoint formats, loading.
pub mod btf;
pub mod detach;
pub mod ident;
pub mod loader;
pub mod lsm;
pub mod observe;
pub mod pin;
pub mod preempt;
pub mod sysnr;
pub mod tracefs;
