//! Builds the kernel programs (monitor-ebpf) for the BPF target with aya-build, so a
//! plain `cargo build` produces a binary with its eBPF object embedded.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let meta = cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let pkg = meta
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "monitor-ebpf")
        .ok_or_else(|| anyhow!("monitor-ebpf package not found"))?;
    let root = pkg.manifest_path.parent().ok_or_else(|| anyhow!("no parent for {}", pkg.manifest_path))?;
    // Stable toolchain: -Z build-std for the bpf target needs RUSTC_BOOTSTRAP in the
    // inner cargo only. SAFETY: build scripts are single-threaded here.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let toolchain = env!("CARGO_PKG_RUST_VERSION");
    aya_build::build_ebpf(
        [aya_build::Package { name: "monitor-ebpf", root_dir: root.as_str(), ..Default::default() }],
        aya_build::Toolchain::Custom(toolchain),
    )
}
