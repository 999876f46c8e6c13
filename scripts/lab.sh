#!/usr/bin/env bash
# lab.sh: N libvirt "hosts" on one machine, for csagent's multi-host tests
# (live migration, shared storage, host-to-host libvirt connections).
#
#   lab.sh up N     build hosts cslab-h1..cslab-hN (runs the cleanup first)
#   lab.sh down     tear everything down, including a crashed run's leftovers
#   lab.sh status   hosts, addresses, daemon pids, remote libvirt reachability
#   lab.sh enter I [CMD...]   run CMD (default: bash) inside host I
#   lab.sh cut I    power cut of host I: SIGKILL to all its processes (HA fence)
#   lab.sh revive I host I down and up again, with a fresh libvirtd
#
# Each host is a libvirtd + virtlogd + virtlockd in its own network, mount and
# UTS namespaces; see docs/lab.md. The hosts' virtlockds keep their disk
# leases in one lockspace on the shared storage, so a VM running on one host
# cannot be started on another (libvirt's guard against split brain).
# Everything the lab creates carries the prefix "cslab" and is found again
# only through the lab's own state (pidfiles, namespace handles, mountinfo
# entries under the lab's dirs), never by process name: the machine's main
# libvirtd must not be touched.
set -Eeuo pipefail

SELF=$(readlink -f "$0")
RUN=/run/cslab                      # runtime state (pidfiles, ns handles)
NSDIR="$RUN/ns"                     # persistent mnt/uts handles (private mount)
VAR=/var/lib/cslab                  # per-host persistent dirs + shared storage
SHARED="$VAR/shared"                # same path in every host: shared storage
# Disk leases of every host: fcntl locks on files here (one per disk, named by
# a hash of its path). It must be on the shared storage, or each host would
# only see its own locks.
LOCKSPACE="$SHARED/.csagent-lockspace"
LABNET=cslab-net                    # netns holding the lab bridge
BRIDGE=cslab-br0
SUBNET=10.251.0
BRIDGE_ADDR="$SUBNET.1"
MAX_HOSTS=50
DAEMON_ENV=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8)

STEP="start"
log() { echo "lab: $*"; }
warn() { echo "lab: warning: $*" >&2; }
die() { echo "lab: FAILED at step '$STEP': $*" >&2; exit 1; }
on_err() {
  echo "lab: FAILED at step '$STEP' (line $1, exit status $2)" >&2
  case "$STEP" in down*|status*) ;; *) echo "lab: a partial lab may be left for inspection; '$SELF down' removes it" >&2 ;; esac
}
trap 'on_err "$LINENO" "$?"' ERR
step() { STEP="$*"; log "$*"; }

host_addr() { echo "$SUBNET.$((10 + $1))"; }
host_name() { echo "cslab-h$1"; }
host_run() { echo "$RUN/h$1"; }         # its /run/libvirt lives in $(host_run)/run
host_var() { echo "$VAR/h$1"; }

# nsfs inode of a namespace handle or /proc/PID/ns/X, empty when unreadable.
ns_inode() { stat -L -c %i "$1" 2>/dev/null || true; }
# The netns lab.sh itself runs in (the root one for up/down/status). Not
# /proc/1: on this machine PID 1's ns links are unreadable even for root.
root_net_inode() { ns_inode /proc/self/ns/net; }

is_mountpoint() { mountpoint -q "$1" 2>/dev/null; }

# Runs a command inside host I's namespaces (net + mount + uts).
in_host() {
  local i=$1; shift
  nsenter --net="/run/netns/$(host_name "$i")" --mount="$NSDIR/h$i.mnt" \
    --uts="$NSDIR/h$i.uts" -- "$@"
}
# Starts daemon CMD inside host I with a clean environment and only fds 0-2.
# The daemons do not close what they inherit, and they live on after lab.sh:
# an inherited fd of `flock LOCK lab.sh up` would hold that lock (a flock
# belongs to the open file) until the lab goes down, and an inherited pipe
# keeps its reader waiting for EOF.
start_in_host() {
  local i=$1 fd; shift
  (
    for fd in /proc/self/fd/*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    in_host "$i" "${DAEMON_ENV[@]}" "$@"
  )
}
# Only the network namespace of host I (enough for a TCP client).
in_host_net() {
  local i=$1; shift
  nsenter --net="/run/netns/$(host_name "$i")" -- "$@"
}

# Host indexes known from any trace a (possibly crashed) run may have left.
known_hosts() {
  {
    local f
    for f in "$RUN"/h* "$VAR"/h* "$NSDIR"/h*.mnt "$NSDIR"/h*.uts /run/netns/cslab-h*; do
      [ -e "$f" ] || continue
      f=${f##*/}; f=${f#cslab-}; f=${f#h}; f=${f%%.*}
      if [[ "$f" =~ ^[0-9]+$ ]]; then echo "$f"; fi
    done
  } | sort -n -u
}

# ---------------------------------------------------------------- teardown
# True if PID is a live (non-zombie) process inside network namespace inode
# NETINO, which must not be the root netns. The only test used before any
# signal is sent: a pid from a stale pidfile may since belong to anybody.
pid_in_ns() {
  local pid=$1 netino=$2 ino
  [[ "$pid" =~ ^[0-9]+$ ]] && [ -n "$netino" ] || return 1
  ino=$(ns_inode "/proc/$pid/ns/net")
  [ -n "$ino" ] && [ "$ino" = "$netino" ] && [ "$ino" != "$(root_net_inode)" ]
}

# SIGTERMs PID if pid_in_ns; returns 1 (after saying why) when it did not.
kill_in_ns() {
  local pid=$1 netino=$2 what=$3 st
  [ -d "/proc/$pid" ] || return 1
  if pid_in_ns "$pid" "$netino"; then
    kill -TERM "$pid" 2>/dev/null
    return
  fi
  st=$(awk '/^State:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
  if [ -z "$st" ] || [ "$st" = Z ]; then
    log "down: $what: pid $pid already exited"
  else
    warn "$what: pid $pid is not in the lab host's netns (net:$(ns_inode "/proc/$pid/ns/net"), want ${netino:-unknown}); leaving it alone"
  fi
  return 1
}

wait_gone() { # netino pids...: wait up to 10 s, then SIGKILL those still in the netns
  local netino=$1 pid t alive; shift
  for t in $(seq 1 100); do
    alive=0
    for pid in "$@"; do if pid_in_ns "$pid" "$netino"; then alive=1; fi; done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
  for pid in "$@"; do
    if pid_in_ns "$pid" "$netino"; then
      warn "pid $pid ignored SIGTERM, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  sleep 0.3
}

# All pids whose network namespace is NETINO (never the root netns).
pids_in_netns() {
  local netino=$1 p
  [ -n "$netino" ] || return 0
  [ "$netino" != "$(root_net_inode)" ] || { warn "refusing to sweep the root netns"; return 0; }
  for p in /proc/[0-9]*; do
    if [ "$(ns_inode "$p/ns/net")" = "$netino" ]; then echo "${p#/proc/}"; fi
  done
  return 0
}

down_host() {
  local i=$1 name hrun netino pids=() f pid seen=" "
  name=$(host_name "$i"); hrun=$(host_run "$i")
  netino=$(ns_inode "/run/netns/$name")
  [ -n "$netino" ] || netino=$(cat "$hrun/netns.inode" 2>/dev/null || true)
  log "down: $name (netns inode ${netino:-none})"

  # 1. Guests first, through the host's own libvirtd, while it still answers.
  if [ -S "$hrun/run/libvirt-sock" ] && [ -e "$NSDIR/h$i.mnt" ] && [ -e "/run/netns/$name" ]; then
    local dom
    while read -r dom; do
      [ -n "$dom" ] || continue
      log "down: $name: destroying domain $dom"
      in_host "$i" timeout 20 virsh -q -c qemu:///system destroy "$dom" >/dev/null 2>&1 || true
    done < <(in_host "$i" timeout 10 virsh -q -c qemu:///system list --name 2>/dev/null || true)
  fi

  # 2. Daemons and guests by pidfile (host's own /run/libvirt view + lab copies).
  for f in "$hrun/run/libvirtd.pid" "$hrun/libvirtd.pid" "$hrun/run/virtlogd.pid" \
    "$hrun/virtlogd.pid" "$hrun/run/virtlockd.pid" "$hrun/virtlockd.pid" "$hrun"/run/qemu/*.pid; do
    [ -f "$f" ] || continue
    pid=$(tr -dc '0-9' <"$f" || true)
    [ -n "$pid" ] || continue
    case "$seen" in *" $pid "*) continue ;; esac
    seen="$seen$pid "
    if kill_in_ns "$pid" "$netino" "$f"; then pids+=("$pid"); fi
  done
  [ "${#pids[@]}" -eq 0 ] || wait_gone "$netino" "${pids[@]}"

  # 3. Sweep: anything else still living in this host's netns (qemu children,
  #    helpers of a crashed run). Identified by namespace, never by name.
  mapfile -t pids < <(pids_in_netns "$netino")
  if [ "${#pids[@]}" -gt 0 ]; then
    log "down: $name: stray processes in its netns: ${pids[*]}"
    for pid in "${pids[@]}"; do
      if pid_in_ns "$pid" "$netino"; then kill -TERM "$pid" 2>/dev/null || true; fi
    done
    wait_gone "$netino" "${pids[@]}"
  fi

  # 4. Namespace handles.
  for f in "$NSDIR/h$i.mnt" "$NSDIR/h$i.uts"; do
    if is_mountpoint "$f"; then umount "$f" || umount -l "$f" || warn "cannot unmount $f"; fi
    rm -f "$f"
  done
  if [ -e "/run/netns/$name" ]; then
    ip netns del "$name" 2>/dev/null || warn "ip netns del $name failed"
  fi
}

# A power cut of host I (the HA fence of the lab): SIGKILL at once to every
# process in its netns (libvirtd, virtlogd, QEMUs), no shutdown of anything.
# The namespaces and the config stay; `revive I` brings the host back.
cmd_cut() {
  local i=${1:-} name netino pids
  [[ "$i" =~ ^[0-9]+$ ]] && [ -e "/run/netns/$(host_name "$i")" ] ||
    { echo "usage: lab.sh cut I   (I: a lab host that is up)" >&2; exit 2; }
  name=$(host_name "$i"); STEP="cut $name"
  netino=$(ns_inode "/run/netns/$name")
  mapfile -t pids < <(pids_in_netns "$netino")
  log "cut: $name: SIGKILL to ${#pids[@]} process(es): ${pids[*]:-none}"
  [ "${#pids[@]}" -eq 0 ] || kill -KILL "${pids[@]}" 2>/dev/null || true
  local t
  for t in $(seq 1 50); do
    [ -z "$(pids_in_netns "$netino")" ] && { log "cut: $name is off"; return 0; }
    sleep 0.1
  done
  die "processes of $name outlived SIGKILL: $(pids_in_netns "$netino" | tr '\n' ' ')"
}

# Host I down (whatever state it is in) and up again with a fresh libvirtd.
cmd_revive() {
  local i=${1:-}
  [[ "$i" =~ ^[0-9]+$ ]] && [ "$i" -ge 1 ] && [ "$i" -le "$(cat "$RUN/hosts.count" 2>/dev/null || echo 0)" ] ||
    { echo "usage: lab.sh revive I   (I: a host of the lab that is up)" >&2; exit 2; }
  preflight
  down_host "$i"
  up_host "$i"
  # The other hosts still have the old eth0's MAC for this address.
  local j n
  n=$(cat "$RUN/hosts.count")
  for j in $(seq 1 "$n"); do
    [ "$j" = "$i" ] && continue
    ip -n "$(host_name "$j")" neigh flush all 2>/dev/null || true
    wait_for 30 "$(host_name "$j") reaching revived $(host_name "$i")" \
      in_host_net "$j" timeout 10 virsh -q -c "qemu+tcp://$(host_addr "$i")/system" version
  done
  STEP="revive"
  log "revive: $(host_name "$i") is up again"
}

# Unmounts, deepest first, every root-namespace mount under the lab's dirs.
unmount_lab_paths() {
  local mp
  while read -r mp; do
    umount "$mp" 2>/dev/null || umount -l "$mp" || warn "cannot unmount $mp"
  done < <(awk -v a="$RUN" -v b="$VAR" '
      { mp = $5; if (mp == a || index(mp, a "/") == 1 || mp == b || index(mp, b "/") == 1) print length(mp), mp }' \
      /proc/self/mountinfo | sort -rn | cut -d' ' -f2-)
}

cmd_down() {
  STEP="down"
  local i link
  for i in $(known_hosts); do down_host "$i"; done
  if [ -e "/run/netns/$LABNET" ]; then
    log "down: removing lab netns $LABNET (bridge $BRIDGE and the veths go with it)"
    ip netns del "$LABNET" || warn "ip netns del $LABNET failed"
  fi
  # Older/crashed layouts may have left cslab-* links in the root netns.
  while read -r link; do
    [ -n "$link" ] || continue
    ip link show dev "$link" >/dev/null 2>&1 || continue   # went with its veth peer
    log "down: deleting root-netns link $link"
    ip link del "$link" 2>/dev/null || warn "cannot delete link $link"
  done < <(ip -o link show | awk -F': ' '{sub(/@.*/, "", $2); if ($2 ~ /^cslab/) print $2}')
  unmount_lab_paths
  if awk -v a="$RUN" -v b="$VAR" '{ if (index($5, a) == 1 || index($5, b) == 1) f = 1 } END { exit !f }' /proc/self/mountinfo; then
    die "mounts under $RUN or $VAR remain; not deleting them"
  fi
  rm -rf "$RUN" "$VAR"
  log "down: done"
}

# ---------------------------------------------------------------- bring-up
preflight() {
  step "preflight"
  [ "$(id -u)" -eq 0 ] || die "must run as root"
  local t
  for t in unshare nsenter ip mountpoint virsh /usr/sbin/libvirtd /usr/sbin/virtlogd /usr/sbin/virtlockd; do
    command -v "$t" >/dev/null || die "$t is missing"
  done
  [ -d /etc/libvirt ] || die "/etc/libvirt missing (libvirt-daemon-system not installed?)"
  ip netns list >/dev/null || die "ip netns does not work here"
}

setup_state() {
  step "state dirs $RUN, $VAR"
  mkdir -p "$RUN" "$NSDIR" "$SHARED" "$LOCKSPACE"
  chmod 0755 "$VAR" "$SHARED"
  # Only the virtlockds (root) open the lock files.
  chmod 0700 "$LOCKSPACE"
  # Mount-namespace handles may only live on a mount that does not propagate
  # (else the kernel refuses the bind: a ns could pin itself).
  if ! is_mountpoint "$NSDIR"; then mount --bind "$NSDIR" "$NSDIR"; fi
  mount --make-private "$NSDIR"
}

setup_labnet() {
  step "lab netns $LABNET with bridge $BRIDGE ($BRIDGE_ADDR/24)"
  ip netns add "$LABNET"
  ip -n "$LABNET" link set lo up
  ip -n "$LABNET" link add "$BRIDGE" type bridge
  ip -n "$LABNET" addr add "$BRIDGE_ADDR/24" dev "$BRIDGE"
  ip -n "$LABNET" link set "$BRIDGE" up
}

write_hosts_file() {
  local n=$1 i
  {
    echo "127.0.0.1 localhost"
    echo "::1 localhost ip6-localhost ip6-loopback"
    echo "$BRIDGE_ADDR cslab-gw"
    for i in $(seq 1 "$n"); do echo "$(host_addr "$i") $(host_name "$i")"; done
  } >"$RUN/hosts"
}

# Copies /etc/libvirt and makes it this host's: own UUID, TCP listener.
make_config() {
  local i=$1 etc uuid
  etc="$(host_var "$i")/etc"
  uuid=$(cat /proc/sys/kernel/random/uuid)
  cp -a /etc/libvirt/. "$etc/"
  # Domains/networks/pools of the main config must not leak into the lab.
  rm -rf "$etc/qemu"/*.xml "$etc/qemu/autostart" "$etc/qemu/networks/autostart"/* "$etc/storage"/*.xml \
    "$etc/storage/autostart" "$etc/secrets"/* 2>/dev/null || true
  local keys='listen_tls|listen_tcp|auth_tcp|listen_addr|tcp_port|host_uuid|host_uuid_source|log_outputs|unix_sock_group|unix_sock_rw_perms'
  grep -Ev "^[[:space:]]*($keys)[[:space:]]*=" /etc/libvirt/libvirtd.conf >"$etc/libvirtd.conf" || true
  cat >>"$etc/libvirtd.conf" <<EOF

# ---- cslab host $i ----
listen_tls = 0
listen_tcp = 1
auth_tcp = "none"
listen_addr = "$(host_addr "$i")"
host_uuid = "$uuid"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
  keys='security_driver|cgroup_controllers|migration_address|vnc_listen|spice_listen|lock_manager'
  grep -Ev "^[[:space:]]*($keys)[[:space:]]*=" /etc/libvirt/qemu.conf >"$etc/qemu.conf" || true
  cat >>"$etc/qemu.conf" <<EOF

# ---- cslab host $i ----
# No SELinux/AppArmor here; DAC (user libvirt-qemu) stays on.
security_driver = "none"
# All lab hosts share one cgroup tree with the main daemon; domain cgroups are
# named qemu-<id>-<name> and would collide between source and destination of
# a migration. The lab runs its guests without cgroups.
cgroup_controllers = [ ]
migration_address = "$(host_addr "$i")"
# Disk leases through this host's virtlockd (qemu-lockd.conf below).
lock_manager = "lockd"
EOF
  # Every writable disk gets a lease without the domain XML naming one, a
  # domain whose disks have none is refused, and the leases are files in the
  # shared lockspace: what one host holds, the others see.
  cat >"$etc/qemu-lockd.conf" <<EOF
# ---- cslab host $i ----
auto_disk_leases = 1
require_lease_for_disks = 1
file_lockspace_dir = "$LOCKSPACE"
EOF
  echo "$uuid" >"$(host_run "$i")/host_uuid"
}

# Runs INSIDE the host's fresh mount+uts+net namespaces (via nsenter).
inner_setup() {
  local i=$1 hv hr t mp
  hv=$(host_var "$i"); hr=$(host_run "$i")
  # Handles of other hosts were copied into this mount ns; drop them so no
  # namespace pins another one.
  for mp in "$NSDIR" /run/netns; do
    if is_mountpoint "$mp"; then umount -l "$mp"; fi
  done
  hostname "$(host_name "$i")"
  # A sysfs that shows this netns (/sys/class/net: lo, eth0), carrying over
  # the machine's submounts of /sys (cgroup hierarchies etc.).
  t="$hr/sys"
  mkdir -p "$t"
  mount -t sysfs sysfs "$t"
  while read -r mp; do
    [ -d "$t${mp#/sys}" ] || continue
    mount --move "$mp" "$t${mp#/sys}"
  done < <(awk '{ mp = $5; if (index(mp, "/sys/") == 1) { n = split(mp, p, "/"); print n, mp } }' /proc/self/mountinfo |
    sort -n | awk 'NR == 1 { min = $1 } $1 == min { print $2 }')
  umount -l /sys
  mount --move "$t" /sys
  rmdir "$t"
  mount --bind "$hr/run" /run/libvirt
  mount --bind "$hv/lib" /var/lib/libvirt
  mount --bind "$hv/etc" /etc/libvirt
  mount --bind "$hv/log" /var/log/libvirt
  mount --bind "$hv/cache" /var/cache/libvirt
  mount --bind "$RUN/hosts" /etc/hosts
}

wait_for() { # seconds description command...
  local secs=$1 what=$2; shift 2
  local t
  for t in $(seq 1 $((secs * 10))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "$what did not happen within ${secs}s"
}

pid_alive() { local p; p=$(cat "$1" 2>/dev/null) && [ -n "$p" ] && [ -d "/proc/$p" ]; }

up_host() {
  local i=$1 name addr hr hv netino
  name=$(host_name "$i"); addr=$(host_addr "$i")
  hr=$(host_run "$i"); hv=$(host_var "$i")

  step "$name: dirs and config"
  mkdir -p "$hr/run" "$hv"/{lib,etc,log,cache}
  chmod 0755 "$hr/run" "$hv" "$hv"/{lib,etc,cache}
  chmod 0700 "$hv/log"
  make_config "$i"

  step "$name: netns, veth into $BRIDGE, $addr/24"
  ip netns add "$name"
  netino=$(ns_inode "/run/netns/$name")
  echo "$netino" >"$hr/netns.inode"
  ip -n "$LABNET" link add "cslab-h$i" type veth peer name eth0 netns "$name"
  ip -n "$LABNET" link set "cslab-h$i" master "$BRIDGE" up
  ip -n "$name" link set lo up
  ip -n "$name" addr add "$addr/24" dev eth0
  ip -n "$name" link set eth0 up
  ip -n "$name" route add default via "$BRIDGE_ADDR"

  step "$name: mount + uts namespaces (handles $NSDIR/h$i.{mnt,uts})"
  touch "$NSDIR/h$i.mnt" "$NSDIR/h$i.uts"
  nsenter --net="/run/netns/$name" -- \
    unshare --mount="$NSDIR/h$i.mnt" --uts="$NSDIR/h$i.uts" --propagation private true
  ns_inode "$NSDIR/h$i.mnt" >"$hr/mntns.inode"

  step "$name: bind mounts over /run/libvirt /var/lib/libvirt /etc/libvirt /var/log/libvirt /var/cache/libvirt, own /sys"
  in_host "$i" "$SELF" _inner-setup "$i"

  step "$name: virtlogd"
  start_in_host "$i" /usr/sbin/virtlogd -d -p /run/libvirt/virtlogd.pid
  wait_for 10 "$name virtlogd pidfile" pid_alive "$hr/run/virtlogd.pid"
  wait_for 10 "$name virtlogd socket" test -S "$hr/run/virtlogd-sock"
  cp "$hr/run/virtlogd.pid" "$hr/virtlogd.pid"

  # Before libvirtd: its lockd plugin connects at the first domain start,
  # and a domain with disks does not start without it.
  step "$name: virtlockd (lockspace $LOCKSPACE)"
  start_in_host "$i" /usr/sbin/virtlockd -d -p /run/libvirt/virtlockd.pid
  wait_for 10 "$name virtlockd pidfile" pid_alive "$hr/run/virtlockd.pid"
  wait_for 10 "$name virtlockd socket" test -S "$hr/run/virtlockd-sock"
  cp "$hr/run/virtlockd.pid" "$hr/virtlockd.pid"

  step "$name: libvirtd --listen (tcp $addr:16509, auth none)"
  start_in_host "$i" /usr/sbin/libvirtd -d --listen -p /run/libvirt/libvirtd.pid
  wait_for 20 "$name libvirtd pidfile" pid_alive "$hr/run/libvirtd.pid"
  cp "$hr/run/libvirtd.pid" "$hr/libvirtd.pid"
  if ! wait_for_quiet 60 in_host "$i" virsh -q -c qemu:///system version; then
    tail -n 20 "$hv/log/libvirtd.log" >&2 || true
    die "$name libvirtd does not answer on qemu:///system (log: $hv/log/libvirtd.log)"
  fi
  log "$name: up: $addr libvirtd $(cat "$hr/libvirtd.pid") virtlogd $(cat "$hr/virtlogd.pid") virtlockd $(cat "$hr/virtlockd.pid")"
}

wait_for_quiet() { # like wait_for but returns 1 instead of dying
  local secs=$1; shift
  local t
  for t in $(seq 1 $((secs * 10))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

cmd_up() {
  local n=${1:-}
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le "$MAX_HOSTS" ] ||
    { echo "usage: lab.sh up N   (1 <= N <= $MAX_HOSTS)" >&2; exit 2; }
  preflight
  step "cleanup of leftovers"
  cmd_down
  setup_state
  echo "$n" >"$RUN/hosts.count"
  write_hosts_file "$n"
  setup_labnet
  local i
  for i in $(seq 1 "$n"); do up_host "$i"; done
  STEP="up"
  log "up: $n host(s); shared storage $SHARED; try: $0 status"
}

# ---------------------------------------------------------------- status
cmd_status() {
  STEP="status"
  local n i j name addr hr lpid vpid kpid answer
  if [ ! -f "$RUN/hosts.count" ]; then
    log "status: lab is down"
    [ -z "$(known_hosts)" ] || log "status: leftovers of hosts: $(known_hosts | tr '\n' ' ')(run: $0 down)"
    return 0
  fi
  n=$(cat "$RUN/hosts.count")
  log "status: $n host(s), bridge $BRIDGE in netns $LABNET, shared $SHARED"
  printf '%-10s %-12s %-14s %-14s %-14s %s\n' HOST ADDRESS LIBVIRTD VIRTLOGD VIRTLOCKD "REMOTE CHECK"
  for i in $(seq 1 "$n"); do
    name=$(host_name "$i"); addr=$(host_addr "$i"); hr=$(host_run "$i")
    lpid=$(cat "$hr/run/libvirtd.pid" 2>/dev/null || echo -)
    vpid=$(cat "$hr/run/virtlogd.pid" 2>/dev/null || echo -)
    kpid=$(cat "$hr/run/virtlockd.pid" 2>/dev/null || echo -)
    [ "$lpid" != - ] && [ ! -d "/proc/$lpid" ] && lpid="$lpid(dead)"
    [ "$vpid" != - ] && [ ! -d "/proc/$vpid" ] && vpid="$vpid(dead)"
    [ "$kpid" != - ] && [ ! -d "/proc/$kpid" ] && kpid="$kpid(dead)"
    if [ "$n" -gt 1 ]; then
      j=$(( i % n + 1 ))
      if answer=$(in_host_net "$j" timeout 10 virsh -c "qemu+tcp://$addr/system" version 2>&1 |
        awk '/Running hypervisor/ { print $3, $4 }') && [ -n "$answer" ]; then
        answer="from $(host_name "$j"): OK ($answer)"
      else
        answer="from $(host_name "$j"): NO ANSWER"
      fi
    else
      if answer=$(nsenter --net="/run/netns/$LABNET" timeout 10 virsh -c "qemu+tcp://$addr/system" version 2>&1 |
        awk '/Running hypervisor/ { print $3, $4 }') && [ -n "$answer" ]; then
        answer="from $LABNET: OK ($answer)"
      else
        answer="from $LABNET: NO ANSWER"
      fi
    fi
    printf '%-10s %-12s %-14s %-14s %-14s %s\n' "$name" "$addr" "$lpid" "$vpid" "$kpid" "$answer"
  done
}

cmd_enter() {
  local i=${1:-}
  [[ "$i" =~ ^[0-9]+$ ]] && [ -e "$NSDIR/h$i.mnt" ] || { echo "usage: lab.sh enter I [CMD...] (host I must be up)" >&2; exit 2; }
  shift
  [ "$#" -gt 0 ] || set -- bash
  trap - ERR
  exec nsenter --net="/run/netns/$(host_name "$i")" --mount="$NSDIR/h$i.mnt" --uts="$NSDIR/h$i.uts" -- "$@"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) [ "$(id -u)" -eq 0 ] || { echo "lab: must run as root" >&2; exit 1; }; cmd_down ;;
  status) cmd_status ;;
  enter) shift; cmd_enter "$@" ;;
  cut) shift; cmd_cut "$@" ;;
  revive) shift; cmd_revive "$@" ;;
  _inner-setup) shift; STEP="inner setup of host $1"; inner_setup "$1" ;;
  *) echo "usage: lab.sh up N | down | status | enter I [CMD...] | cut I | revive I" >&2; exit 2 ;;
esac
