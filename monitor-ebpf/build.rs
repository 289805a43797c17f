//! The eBPF build needs `bpf-linker` on PATH; rebuild when it changes.
fn main() {
    match which::which("bpf-linker") {
        Ok(p) => println!("cargo:rerun-if-changed={}", p.display()),
        Err(e) => println!("cargo:warning=bpf-linker not found on PATH ({e}); run scripts/setup.sh"),
    }
}
