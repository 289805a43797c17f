#!/usr/bin/env bash
# Runs every test: unit tests, and the kernel integration tests against the real
# probes (root). Starts and stops the services tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# Only the tests need a browser (the HTML replay report is checked as one draws it)
# and a container runtime (a real container, its image a local busybox; runc, as
# crun refuses cgroup v2 in hybrid mode).
SAY_AS=test . ./scripts/lib.sh
apt_ensure chromium podman runc busybox-static
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

cargo build --quiet --all-targets
cargo fmt --all --check
cargo clippy --quiet --all-targets -- -D warnings

# The NATS tests' broker: JetStream on loopback, a throwaway store, stopped on exit.
NATS_DIR="$(mktemp -d)"
NATS_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$NATS_DIR/store" >"$NATS_DIR/log" 2>&1 &
NATS_PID=$!
stop_nats() {
    local rc=$?
    kill "$NATS_PID" 2>/dev/null || true
    wait "$NATS_PID" 2>/dev/null || true
    rm -rf "$NATS_DIR"
    exit "$rc"
}
trap stop_nats EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null && break
    sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null || { cat "$NATS_DIR/log" >&2; echo "nats-server did not start" >&2; exit 1; }
export AGENTMON_TEST_NATS="nats://127.0.0.1:$NATS_PORT"
export AGENTMON_TEST_PYTHON="$PWD/target/pyenv/bin/python"

cargo test --quiet -- --test-threads 2

# The kernel matrix: the kernel tests again on Debian 12's and 13's own kernels, in
# QEMU guests (scripts/vm.sh). AGENTMON_SKIP_VM=1 is the explicit opt-out.
if [ "${AGENTMON_SKIP_VM:-}" = 1 ]; then
    echo "test: kernel matrix skipped (AGENTMON_SKIP_VM=1)" >&2
else
    KERNEL_TESTS="$(cargo test --quiet --no-run --test kernel --message-format=json 2>/dev/null |
        python3 -c 'import json, sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("executable") and m.get("target", {}).get("name") == "kernel":
        print(m["executable"])')"
    [ -n "$KERNEL_TESTS" ] || { echo "test: cannot find the kernel test binary" >&2; exit 1; }
    ./scripts/vm.sh matrix "$KERNEL_TESTS"
fi
