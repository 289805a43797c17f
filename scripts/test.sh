#!/usr/bin/env bash
# Runs every test: unit tests, and the kernel integration tests against the real
# probes (root). Starts and stops the services tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

cargo build --quiet --all-targets
cargo fmt --all --check
cargo clippy --quiet --all-targets -- -D warnings
cargo test --quiet -- --test-threads 2
