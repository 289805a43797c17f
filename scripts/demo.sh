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

task() {  # a task manifest for one work directory
    cat > "$work/$1.yaml" <<YAML
id: demo-$1
agent: spiffe://example.org/agent/demo
principal: demo@example.org
mode: execute
expires_in: 15m
scope:
  read:    ["$work/$1/**"]
  write:   ["$work/$1/**"]
  delete:  ["$work/$1/build/**"]
  exec:    ["/usr/bin/*"]
  connect: ["127.0.0.1:$port"]
approval_required: [rename]
YAML
}
task repo; task repo2

echo "== agentmon exec --task repo.yaml -- tests/agents/demo.sh   (text view; ALERT lines are alerts)"
DEMO_PORT=$port ./target/release/agentmon exec --task "$work/repo.yaml" --format text -- tests/agents/demo.sh "$work/repo"
DEMO_PORT=$port ./target/release/agentmon exec --quiet --task "$work/repo2.yaml" --events "$events" \
    -- tests/agents/demo.sh "$work/repo2" >/dev/null
echo
echo "== the same run as JSON lines in $events: $(grep -c '"schema":"agentmon.event/1"' "$events") events, $(grep -c '"kind":"alert"' "$events") alerts. First event and first alert:"
grep -m1 '"schema":"agentmon.event/1"' "$events"
grep -m1 '"kind":"alert"' "$events"
report="$work/report.html"
./target/release/agentmon replay --from "$events" --format html -o "$report"
echo
echo "== the responder's view of that run (open it in a browser; no network needed): $report"
