#!/usr/bin/env bash
# Removes what an earlier, crashed test run left on this machine, before a
# new run starts (scripts/test.sh). Only objects with the suite's own name
# prefixes are touched: libvirt domains and pools on the system
# libvirtd named csat-* or cstest-*, network links named the same way
# in this network namespace, and files or directories with those prefixes
# in /var/lib/libvirt/images and the temp directory. The lab's hosts
# (cslab-*) are lab.sh's business. Prints one line: what it removed.
set -uo pipefail
URI=${CSAGENT_SWEEP_URI:-qemu:///system}
IMAGES=${CSAGENT_SWEEP_IMAGES:-/var/lib/libvirt/images}
TMP=${TMPDIR:-/tmp}
# The suite's prefixes, "|"-separated (its own test narrows them).
prefixes=${CSAGENT_SWEEP_PREFIXES:-csat-|cstest-}
ours="^(${prefixes})"
removed=0

note() { removed=$((removed + 1)); }

if command -v virsh >/dev/null && virsh -q -c "$URI" uri >/dev/null 2>&1; then
  while read -r dom; do
    [ -n "$dom" ] || continue
    virsh -q -c "$URI" destroy "$dom" >/dev/null 2>&1
    virsh -q -c "$URI" undefine "$dom" --nvram >/dev/null 2>&1 ||
      virsh -q -c "$URI" undefine "$dom" >/dev/null 2>&1
    note
  done < <(virsh -q -c "$URI" list --all --name 2>/dev/null | grep -E "$ours")
  while read -r pool; do
    [ -n "$pool" ] || continue
    virsh -q -c "$URI" pool-destroy "$pool" >/dev/null 2>&1
    virsh -q -c "$URI" pool-undefine "$pool" >/dev/null 2>&1
    note
  done < <(virsh -q -c "$URI" pool-list --all --name 2>/dev/null | grep -E "$ours")
fi

# Links: a VLAN sub-interface (name.N) before its parent, so delete the
# dotted ones first.
links=()
for path in /sys/class/net/*; do
  l=${path##*/}
  [[ $l =~ $ours ]] && links+=("$l")
done
for l in "${links[@]}"; do [[ $l == *.* ]] && ip link del "$l" >/dev/null 2>&1 && note; done
for l in "${links[@]}"; do [[ $l != *.* ]] && ip link del "$l" >/dev/null 2>&1 && note; done

for dir in "$IMAGES" "$TMP"; do
  [ -d "$dir" ] || continue
  while read -r f; do
    [ -n "$f" ] || continue
    # A FUSE mount a hung-storage test left: detach it before removing.
    if mountpoint -q "$f" 2>/dev/null; then
      umount -l "$f" >/dev/null 2>&1
    fi
    rm -rf --one-file-system "$f" 2>/dev/null && note
  done < <(find "$dir" -mindepth 1 -maxdepth 1 -regextype posix-extended -regex ".*/(${prefixes})[^/]*" 2>/dev/null)
done

echo "sweep: removed ${removed} leftover(s) of earlier test runs"
