#!/usr/bin/env bash
# The main job: a scripted agent runs under `agentmon exec`; its events are shown.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cargo build --release --quiet -p monitor-user

work="$(mktemp -d /tmp/agentmon-demo.XXXXXX)"
events="$work/events.jsonl"
for r in repo repo2; do mkdir -p "$work/$r" && echo "TOKEN=demo" > "$work/$r/.env"; done
port=18080
python3 -m http.server --bind 127.0.0.1 "$port" --directory "$work" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done

echo "== agentmon exec -- tests/agents/demo.sh   (human-readable view; JSON lines in $events)"
DEMO_PORT=$port ./target/release/agentmon exec --format text -- tests/agents/demo.sh "$work/repo"
DEMO_PORT=$port ./target/release/agentmon exec --quiet --events "$events" -- tests/agents/demo.sh "$work/repo2" >/dev/null
echo
echo "== the same run as JSON events (first 3 of $(wc -l < "$events")):"
head -n 3 "$events"
