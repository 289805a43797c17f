#!/usr/bin/env bash
# Installs what agentmon needs to build, test and run on Debian 12 (as root).
# Idempotent: every step checks first, so a second run does nothing.
set -euo pipefail

TOOLCHAIN=1.98.0          # last stable on LLVM 22; must match bpf-linker's LLVM
BPF_LINKER_VERSION=0.13   # built against Debian's llvm-22
APT_PKGS=(llvm-22-dev libpolly-22-dev libzstd-dev build-essential pkg-config
          bpftrace auditd strace nats-server python3 python3-venv)

SAY_AS=setup
. "$(dirname "$0")/lib.sh"
die() { say "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and mounts tracefs/bpffs)"

apt_ensure "${APT_PKGS[@]}"

command -v rustup >/dev/null || die "rustup not found; install it from the Rust project, then re-run"
if ! rustup toolchain list | grep -q "^$TOOLCHAIN"; then
    say "installing Rust $TOOLCHAIN"
    rustup toolchain install "$TOOLCHAIN" --profile minimal --component rust-src,clippy,rustfmt \
        || die "could not install Rust $TOOLCHAIN (needed: its LLVM must match bpf-linker's)"
fi
rustup component list --toolchain "$TOOLCHAIN" --installed | grep -q rust-src \
    || rustup component add rust-src --toolchain "$TOOLCHAIN"

CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$CARGO_BIN:$PATH"
if ! bpf-linker --version 2>/dev/null | grep -q " $BPF_LINKER_VERSION\."; then
    say "building bpf-linker $BPF_LINKER_VERSION against llvm-22 (about a minute)"
    LLVM_PREFIX=/usr/lib/llvm-22 cargo "+$TOOLCHAIN" install bpf-linker --version "~$BPF_LINKER_VERSION" \
        --locked --no-default-features --features llvm-22 --quiet \
        || die "bpf-linker build failed"
fi

mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing \
    || die "cannot mount tracefs at /sys/kernel/tracing"
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || die "cannot mount bpffs at /sys/fs/bpf"
[ -r /sys/kernel/btf/vmlinux ] || die "kernel has no BTF (/sys/kernel/btf/vmlinux); agentmon needs CONFIG_DEBUG_INFO_BTF"
# An independent NATS client for the tests that prove the wire format is standard.
NATS_PY_VERSION=2.16.0
PYENV="$(cd "$(dirname "$0")/.." && pwd)/target/pyenv"
if ! "$PYENV/bin/python" -c 'import nats' 2>/dev/null; then
    say "installing nats-py $NATS_PY_VERSION into target/pyenv"
    python3 -m venv "$PYENV" && "$PYENV/bin/pip" install -q "nats-py==$NATS_PY_VERSION" \
        || die "could not install nats-py"
fi

# An independent OCSF 1.3.0 validator (the schema's classes as JSON Schema, checked by
# jsonschema) for the test that every OCSF record agentmon makes conforms.
OCSF_SCHEMA_VERSION=1.2.0
JSONSCHEMA_VERSION=4.26.0
if ! "$PYENV/bin/python" -c 'import ocsf_json_schema, jsonschema' 2>/dev/null; then
    say "installing ocsf-json-schema $OCSF_SCHEMA_VERSION and jsonschema $JSONSCHEMA_VERSION into target/pyenv"
    "$PYENV/bin/pip" install -q "ocsf-json-schema==$OCSF_SCHEMA_VERSION" "jsonschema==$JSONSCHEMA_VERSION" \
        || die "could not install the OCSF validator"
fi

say "ready (Rust $TOOLCHAIN, $(bpf-linker --version 2>/dev/null | head -1))"
