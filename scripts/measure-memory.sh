#!/usr/bin/env bash
# The csagent binary's size and its idle memory, connected to a plane, as
# the figures in the README report them:
#   bash scripts/measure-memory.sh [AGENT_BIN] [MGMT_BIN]
# (defaults: target/release/csagent and target/release/csagent-mgmt; build
# them with `cargo build --release --workspace --bins`). Starts a plane on
# loopback with test-made certificates, an agent on qemu:///system, waits
# until it is registered and idle, and prints VmRSS, private and anonymous
# memory from /proc/PID/smaps_rollup. Everything lives in a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
agent=${1:-target/release/csagent}
mgmt=${2:-target/release/csagent-mgmt}
idle_secs=${IDLE_SECS:-15}
work=$(mktemp -d /tmp/csagent-mem.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

host=$(cat /proc/sys/kernel/random/uuid)
"$mgmt" pki init --dir "$work/pki" >/dev/null
"$mgmt" pki issue --dir "$work/pki" --host-uuid "$host" --out "$work/agent" >/dev/null
port=$((20000 + RANDOM % 20000))
"$mgmt" serve --listen "127.0.0.1:$port" --tls-dir "$work/pki" --admin-socket "$work/admin.sock" \
  --state-dir "$work/plane" >"$work/plane.log" 2>&1 &
pids+=($!)
cat >"$work/agent.toml" <<TOML
[agent]
guid = "$host"
state_dir = "$work/state"
[management]
hosts = ["127.0.0.1:$port"]
ca_file = "$work/agent/ca.pem"
cert_file = "$work/agent/agent.pem"
key_file = "$work/agent/agent.key"
[hypervisor]
uri = "qemu:///system"
[status]
socket = "$work/status.sock"
[metrics]
enabled = false
TOML
"$agent" run --config "$work/agent.toml" >"$work/agent.log" 2>&1 &
agent_pid=$!
pids+=("$agent_pid")
for _ in $(seq 1 100); do
  "$mgmt" hosts --admin-socket "$work/admin.sock" 2>/dev/null | grep -q "$host" && break
  sleep 0.1
done
"$mgmt" hosts --admin-socket "$work/admin.sock" | grep -q "$host" || { echo "measure-memory: the agent never registered" >&2; cat "$work/agent.log" >&2; exit 1; }
sleep "$idle_secs"
kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$agent_pid/smaps_rollup"; }
private=$(( $(kib Private_Clean) + $(kib Private_Dirty) ))
printf 'binary: %s bytes (%s)\n' "$(stat -c %s "$agent")" "$agent"
printf 'idle after %s s, connected: VmRSS %s KiB, private %s KiB, anonymous %s KiB\n' \
  "$idle_secs" "$(kib Rss)" "$private" "$(kib Anonymous)"
