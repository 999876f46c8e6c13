#!/usr/bin/env bash
# make demo: the reference management plane and one agent over mutual TLS on
# loopback, driving this machine's libvirt (qemu:///system), through the
# seed's lifecycle: a pool, a template copied in with its checksum, a root
# volume cloned from it, a VXLAN network on an underlay the demo makes (a
# veth pair: no encapsulated packet leaves the machine), a security group,
# a real guest booted with its NIC on that bridge, and the teardown, every
# step a csagent-mgmt command. Everything it makes lives in ./demo-state or
# is named csagent-demo-*/csdemo*, and is removed at the end.
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

[storage]
# Where CopyTemplate may read templates by path (secondary storage).
template_roots = ["$STATE/templates"]
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

step "the test guest: Debian's cloud kernel + a busybox initramfs (scripts/guest-image.sh, cached)"
GUEST_DIR=$(bash scripts/guest-image.sh | tail -n1)

VM_UUID=$(cat /proc/sys/kernel/random/uuid)
VM_NAME="csagent-demo-${VM_UUID:0:8}"
POOL="csagent-demo-${VM_UUID:0:8}"
POOL_DIR="/var/lib/libvirt/images/$POOL"
ROOT="$VM_NAME-root.qcow2"
CONSOLE="/var/log/libvirt/qemu/$VM_NAME-console.log"
# The VXLAN underlay: one end of a veth pair, its peer a dead end.
UNDERLAY="csdemo-u${VM_UUID:0:4}"
VNI=$((14000000 + 0x${VM_UUID:4:4}))
TAP="csdemo-${VM_UUID:0:6}"
MAC="52:54:00:${VM_UUID:0:2}:${VM_UUID:2:2}:${VM_UUID:4:2}"
cleanup_vm() {
  virsh -c qemu:///system destroy "$VM_UUID" >/dev/null 2>&1 || true
  virsh -c qemu:///system undefine "$VM_UUID" --nvram >/dev/null 2>&1 || true
  virsh -c qemu:///system pool-destroy "$POOL" >/dev/null 2>&1 || true
  virsh -c qemu:///system pool-undefine "$POOL" >/dev/null 2>&1 || true
  ip link del "brvx-$VNI" >/dev/null 2>&1 || true
  ip link del "vxlan$VNI" >/dev/null 2>&1 || true
  ip link del "$UNDERLAY" >/dev/null 2>&1 || true
  rm -rf "$POOL_DIR" "$CONSOLE"
}
trap 'cleanup_vm; cleanup' EXIT

step "command: add_pool, a directory pool at $POOL_DIR (defined, started, autostarted by the agent)"
mkdir -p "$POOL_DIR"
"$BIN/csagent-mgmt" send "${ADMIN[@]}" --host "$HOST_UUID" \
  "{\"add_pool\":{\"pool\":{\"name\":\"$POOL\",\"kind\":{\"dir\":{\"path\":\"$POOL_DIR\"}}}}}"

step "command: copy_template, a 64 MiB qcow2 template from secondary storage, its SHA-256 checked"
mkdir -p "$STATE/templates"
qemu-img create -q -f qcow2 "$STATE/templates/demo-template.qcow2" 64M
SHA=$(sha256sum "$STATE/templates/demo-template.qcow2" | cut -d' ' -f1)
"$BIN/csagent-mgmt" send "${ADMIN[@]}" --host "$HOST_UUID" \
  "{\"copy_template\":{\"pool\":\"$POOL\",\"name\":\"template.qcow2\",\"source\":{\"path\":\"$STATE/templates/demo-template.qcow2\"},\"format\":\"QCOW2\",\"checksum_algorithm\":\"SHA256\",\"checksum\":\"$SHA\"}}"

step "command: ensure_network, VXLAN $VNI on $UNDERLAY (a veth pair the demo made, so nothing leaves the machine)"
ip link add "$UNDERLAY" type veth peer name "${UNDERLAY}p"
ip link set "$UNDERLAY" up
ip link set "${UNDERLAY}p" up
"$BIN/csagent-mgmt" send "${ADMIN[@]}" --host "$HOST_UUID" \
  "{\"ensure_network\":{\"vm_uuid\":\"$VM_UUID\",\"network\":{\"vxlan\":{\"vni\":$VNI,\"underlay_device\":\"$UNDERLAY\",\"peers\":[\"192.0.2.1\"]}}}}"
BRIDGE="brvx-$VNI"

# StartVm prepares the root volume (a linked clone of the template) before
# it defines the VM; the guest boots its kernel directly and logs its serial
# console to $CONSOLE. Its NIC joins the bridge ensure_network made.
cat >"$STATE/vm.json" <<JSON
{"start_vm": {
  "spec": {
    "domain_type": "qemu",
    "name": "$VM_NAME",
    "uuid": "$VM_UUID",
    "ids": {"instance_id": "i-2-demo", "account_id": "demo", "zone_id": "demo-zone", "service_offering_id": "small"},
    "memory": {"size_kib": 131072},
    "cpu": {"vcpus": 1},
    "boot": {"arch": "x86_64", "machine": "pc", "kernel": "$GUEST_DIR/vmlinuz",
             "initrd": "$GUEST_DIR/initramfs.cpio.gz", "cmdline": "console=ttyS0 quiet"},
    "features": {"acpi": true},
    "disks": [{"source_type": "file", "target": "vda", "bus": "virtio"}],
    "interfaces": [{"mac": "$MAC", "bridge": "$BRIDGE", "model": "virtio", "target_dev": "$TAP"}],
    "graphics": [{"type": "vnc", "autoport": true, "listen": "127.0.0.1", "passwd": "demo-vnc"}],
    "serial_console": true,
    "serial_console_log": "$CONSOLE"
  },
  "volumes": [{"volume": {"pool": "$POOL", "name": "$ROOT", "template": "template.qcow2", "mode": "LINKED"}, "disk_target": "vda"}]
}}
JSON

step "deploy a real Linux guest ($VM_NAME, TCG): root volume cloned from the template, NIC $TAP on $BRIDGE, events Starting -> Running, then the result with its VNC port"
"$BIN/csagent-mgmt" send "${ADMIN[@]}" --host "$HOST_UUID" "$(cat "$STATE/vm.json")"

step "command: apply_security_group on $TAP: SSH and ICMP in, anything out; anti-spoofing for its MAC"
"$BIN/csagent-mgmt" send "${ADMIN[@]}" --host "$HOST_UUID" \
  "{\"apply_security_group\":{\"vm_uuid\":\"$VM_UUID\",\"nics\":[{\"tap\":\"$TAP\",\"bridge\":\"$BRIDGE\",\"mac\":\"$MAC\"}],\"rules\":[{\"direction\":\"INGRESS\",\"protocol\":\"TCP\",\"ports\":{\"start\":22,\"end\":22}},{\"direction\":\"INGRESS\",\"protocol\":\"ICMP\"}]}}"
nft list table bridge csagent | grep -E "$TAP|ether saddr" | head -5 || true

step "the VM as libvirt sees it"
virsh -c qemu:///system domstate "$VM_UUID"
virsh -c qemu:///system vncdisplay "$VM_UUID"

step "the guest runs: its console ($CONSOLE)"
for _ in $(seq 1 600); do
  grep -q "CSAGENT-NIC" "$CONSOLE" 2>/dev/null && break
  sleep 0.1
done
grep -E "^CSAGENT-" "$CONSOLE" || { echo "no marker yet; the console so far:"; cat "$CONSOLE"; }
if grep -q "^CSAGENT-NIC: eth0 $MAC" "$CONSOLE"; then
  echo "the guest booted with its NIC (eth0, $MAC) on $BRIDGE: $(ip -o link show master "$BRIDGE" | cut -d: -f2 | tr -d ' ' | tr '\n' ' ')"
else
  echo "the guest's console does not show its NIC $MAC" >&2
  exit 1
fi

step "the VM's state through the agent"
"$BIN/csagent-mgmt" send "${ADMIN[@]}" --host "$HOST_UUID" "{\"get_vm_state\":{\"vm_uuid\":\"$VM_UUID\"}}"

step "the VM's stats: two samples a second apart by one collector (CPU % needs the collector's previous sample)"
STATS="{\"get_vm_stats\":{\"collector\":\"demo\",\"vm_uuids\":[\"$VM_UUID\"]}}"
"$BIN/csagent-mgmt" send "${ADMIN[@]}" --host "$HOST_UUID" "$STATS" >/dev/null
sleep 1
"$BIN/csagent-mgmt" send "${ADMIN[@]}" --host "$HOST_UUID" "$STATS"

step "its console, as a viewer would reach it"
"$BIN/csagent-mgmt" send "${ADMIN[@]}" --host "$HOST_UUID" "{\"get_console\":{\"vm_uuid\":\"$VM_UUID\"}}"

step "stop it gracefully: ACPI power button, the guest's acpid powers it off"
"$BIN/csagent-mgmt" send "${ADMIN[@]}" --host "$HOST_UUID" \
  "{\"stop_vm\":{\"vm_uuid\":\"$VM_UUID\",\"force\":true,\"timeout_ms\":30000}}"
grep -E "^CSAGENT-GUEST-POWEROFF" "$CONSOLE" || true

step "command: remove_security_group, then release_network (the stopped VM was its only user: the bridge and VXLAN device go)"
"$BIN/csagent-mgmt" send "${ADMIN[@]}" --host "$HOST_UUID" "{\"remove_security_group\":{\"vm_uuid\":\"$VM_UUID\"}}"
"$BIN/csagent-mgmt" send "${ADMIN[@]}" --host "$HOST_UUID" \
  "{\"release_network\":{\"vm_uuid\":\"$VM_UUID\",\"bridge\":\"$BRIDGE\"}}"

step "destroy it (undefine, NVRAM and snapshot metadata too)"
"$BIN/csagent-mgmt" send "${ADMIN[@]}" --host "$HOST_UUID" "{\"destroy_vm\":{\"vm_uuid\":\"$VM_UUID\"}}"

step "command: remove_pool (stopped and undefined; its files are kept, and removed by this script)"
"$BIN/csagent-mgmt" send "${ADMIN[@]}" --host "$HOST_UUID" \
  "{\"remove_pool\":{\"name\":\"$POOL\"}}"
ip link del "$UNDERLAY"
rm -rf "$POOL_DIR" "$CONSOLE"

step "nothing left: virsh and ip show none of the demo's domain, pool, bridge or links"
left=$( { virsh -c qemu:///system list --all --name; virsh -c qemu:///system pool-list --all --name; ls /sys/class/net; } | grep -E "$VM_NAME|$POOL|brvx-$VNI|vxlan$VNI|$TAP|$UNDERLAY" || true)
if [ -n "$left" ]; then echo "left behind: $left" >&2; exit 1; fi
echo "nothing left"

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
