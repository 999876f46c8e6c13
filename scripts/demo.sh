#!/usr/bin/env bash
# make demo: the reference management plane and one agent over mutual TLS on
# loopback, driving this machine's libvirt (qemu:///system). Everything it
# makes lives in ./demo-state and is removed by the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

STATE="$PWD/demo-state"
PORT="${CSAGENT_DEMO_PORT:-18250}"
BIN="$PWD/target/release"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
  [ -n "${AGENT_PID:-}" ] && kill "$AGENT_PID" 2>/dev/null || true
  [ -n "${PLANE_PID:-}" ] && kill "$PLANE_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

step "build (release)"
cargo build --release --bins --quiet

rm -rf "$STATE" && mkdir -p "$STATE"
HOST_UUID=$(cat /proc/sys/kernel/random/uuid)

step "PKI: a CA, the plane's certificate, and this host's (identity = host UUID $HOST_UUID)"
"$BIN/csagent-mgmt" pki init --dir "$STATE/pki" --name localhost --name 127.0.0.1
"$BIN/csagent-mgmt" pki issue --dir "$STATE/pki" --host-uuid "$HOST_UUID" --out "$STATE/agent-tls"

step "start the management plane on 127.0.0.1:$PORT"
"$BIN/csagent-mgmt" serve --listen "127.0.0.1:$PORT" --tls-dir "$STATE/pki" \
  --admin-socket "$STATE/admin.sock" --plane-id demo-plane >"$STATE/plane.log" 2>&1 &
PLANE_PID=$!

cat >"$STATE/agent.toml" <<TOML
[agent]
guid = "$HOST_UUID"
state_dir = "$STATE/agent-state"
zone = "demo-zone"

[management]
hosts = ["localhost:$PORT"]
ca_file = "$STATE/agent-tls/ca.pem"
cert_file = "$STATE/agent-tls/agent.pem"
key_file = "$STATE/agent-tls/agent.key"

[hypervisor]
uri = "qemu:///system"
TOML

step "start the agent (csagent run -c $STATE/agent.toml)"
"$BIN/csagent" run -c "$STATE/agent.toml" >"$STATE/agent.log" 2>&1 &
AGENT_PID=$!

ADMIN=(--admin-socket "$STATE/admin.sock")
for _ in $(seq 1 100); do
  if "$BIN/csagent-mgmt" hosts "${ADMIN[@]}" 2>/dev/null | grep -q "$HOST_UUID.*UP"; then break; fi
  sleep 0.1
done

step "the plane's view of its hosts"
"$BIN/csagent-mgmt" hosts "${ADMIN[@]}"

step "command: get_host_facts"
"$BIN/csagent-mgmt" send "${ADMIN[@]}" --host "$HOST_UUID" '{"get_host_facts":{}}'

step "command: list_vms (every domain on this hypervisor)"
"$BIN/csagent-mgmt" send "${ADMIN[@]}" --host "$HOST_UUID" '{"list_vms":{}}'

VM_UUID=$(cat /proc/sys/kernel/random/uuid)
VM_NAME="csagent-demo-${VM_UUID:0:8}"
DISK="/var/lib/libvirt/images/$VM_NAME.qcow2"
qemu-img create -q -f qcow2 "$DISK" 64M
cleanup_vm() {
  virsh -c qemu:///system destroy "$VM_UUID" >/dev/null 2>&1 || true
  virsh -c qemu:///system undefine "$VM_UUID" --nvram >/dev/null 2>&1 || true
  rm -f "$DISK"
}
trap 'cleanup_vm; cleanup' EXIT
cat >"$STATE/vm.json" <<JSON
{"start_vm": {"spec": {
  "domain_type": "qemu",
  "name": "$VM_NAME",
  "uuid": "$VM_UUID",
  "ids": {"instance_id": "i-2-demo", "account_id": "demo", "zone_id": "demo-zone", "service_offering_id": "small"},
  "memory": {"size_kib": 131072},
  "cpu": {"vcpus": 1},
  "disks": [{"source_type": "file", "source": "$DISK", "format": "qcow2", "target": "vda", "bus": "virtio"}],
  "graphics": [{"type": "vnc", "autoport": true, "listen": "127.0.0.1"}]
}}}
JSON

step "deploy a VM ($VM_NAME, TCG, empty 64 MiB disk): events Starting -> Running, then the result with its VNC port"
"$BIN/csagent-mgmt" send "${ADMIN[@]}" --host "$HOST_UUID" "$(cat "$STATE/vm.json")"

step "the VM as libvirt sees it"
virsh -c qemu:///system domstate "$VM_UUID"

step "the VM's state through the agent"
"$BIN/csagent-mgmt" send "${ADMIN[@]}" --host "$HOST_UUID" "{\"get_vm_state\":{\"vm_uuid\":\"$VM_UUID\"}}"

step "stop it: a graceful shutdown first (no OS answers ACPI here), then power off (force)"
"$BIN/csagent-mgmt" send "${ADMIN[@]}" --host "$HOST_UUID" \
  "{\"stop_vm\":{\"vm_uuid\":\"$VM_UUID\",\"force\":true,\"timeout_ms\":2000}}"

step "destroy it (undefine, NVRAM and snapshot metadata too)"
"$BIN/csagent-mgmt" send "${ADMIN[@]}" --host "$HOST_UUID" "{\"destroy_vm\":{\"vm_uuid\":\"$VM_UUID\"}}"

step "command with a deadline it cannot meet (echo waits 2 s, deadline 300 ms)"
"$BIN/csagent-mgmt" send "${ADMIN[@]}" --host "$HOST_UUID" --deadline-ms 300 \
  '{"echo":{"payload":"too slow","delay_ms":2000}}' || echo "(exit code $?: the command failed, as it should)"

step "stop the agent with SIGTERM (what systemctl stop does)"
kill -TERM "$AGENT_PID"
wait "$AGENT_PID" && echo "agent exited with code 0"
AGENT_PID=""
sleep 0.3
"$BIN/csagent-mgmt" hosts "${ADMIN[@]}"

step "agent log"
cat "$STATE/agent.log"
echo
echo "demo done; logs and certificates are in $STATE"
