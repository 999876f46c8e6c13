#!/usr/bin/env bash
# Makes sure the services csagent's tests and demo talk to are running:
# virtlogd and libvirtd (qemu:///system). Works with and without systemd as
# PID 1 (CI containers often have none). Also makes /dev/kvm usable by the
# qemu user when it exists but is closed to it; `csagent check` reports the
# same condition on a production host instead of changing it.
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# A daemon is ours if its pidfile (what `--daemon` writes for root) names
# a live process; never found by process name, because other libvirtds
# (the lab's hosts, containers) may run on this machine in other namespaces.
running() {
  local pid
  if [ -d /run/systemd/system ] && systemctl is-active --quiet "$1" 2>/dev/null; then
    return 0
  fi
  pid=$(cat "/run/$1.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

start_daemon() {
  local name=$1
  if running "$name"; then
    return 0
  fi
  if [ -d /run/systemd/system ] && $SUDO systemctl start "$name" 2>/dev/null; then
    :
  else
    $SUDO "/usr/sbin/$name" --daemon
  fi
  for _ in $(seq 1 50); do
    running "$name" && return 0
    sleep 0.1
  done
  echo "start-services: $name did not start" >&2
  return 1
}

if [ -e /dev/kvm ] && getent group kvm >/dev/null; then
  $SUDO chgrp kvm /dev/kvm || true
  $SUDO chmod 0660 /dev/kvm || true
fi

start_daemon virtlogd
start_daemon libvirtd

for _ in $(seq 1 50); do
  if virsh -c qemu:///system version >/dev/null 2>&1; then
    echo "start-services: libvirtd is up ($(virsh -c qemu:///system version --daemon 2>/dev/null | awk '/Running hypervisor/{print $3, $4}'))"
    exit 0
  fi
  sleep 0.2
done
echo "start-services: libvirtd does not answer on qemu:///system" >&2
exit 1
