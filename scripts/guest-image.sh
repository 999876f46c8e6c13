#!/usr/bin/env bash
# Builds the tiny Linux guest the end-to-end tests and the demo boot: Debian's
# cloud kernel (taken out of its .deb, never installed on this host) and a
# busybox-static initramfs whose /init prints CSAGENT-GUEST-UP on the serial
# console, lists the disks and NICs it sees, then stays up until ACPI power
# button (StopVm's graceful path) or forever.
#
# Idempotent and cached: downloads go to $CACHE, the two boot files to $OUT
# (readable by libvirt-qemu), each written to a temp name and renamed, so a
# run interrupted half way leaves the previous good files in place. Prints the
# output directory on its last line.
#
#   CSAGENT_GUEST_CACHE  download cache    (default /var/cache/csagent-test/guest)
#   CSAGENT_GUEST_DIR    vmlinuz/initramfs (default /var/lib/libvirt/images/csagent-guest)
set -euo pipefail

CACHE="${CSAGENT_GUEST_CACHE:-/var/cache/csagent-test/guest}"
OUT="${CSAGENT_GUEST_DIR:-/var/lib/libvirt/images/csagent-guest}"
MARKER="CSAGENT-GUEST-UP"
# Load order matters: busybox insmod does not resolve dependencies.
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
  virtio_blk failover net_failover virtio_net button evdev)

log() { echo "guest-image: $*" >&2; }
die() { log "$*"; exit 1; }

for tool in apt-get apt-cache dpkg-deb cpio gzip; do
  command -v "$tool" >/dev/null || die "$tool is missing; run scripts/install-deps.sh"
done
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || BUSYBOX=/usr/bin/busybox
[ -x "$BUSYBOX" ] || die "busybox is missing; run scripts/install-deps.sh (busybox-static)"
# A dynamically linked busybox would need its libraries in the initramfs.
if file_out=$(LC_ALL=C readelf -l "$BUSYBOX" 2>/dev/null) && grep -q 'INTERP' <<<"$file_out"; then
  die "$BUSYBOX is dynamically linked; install busybox-static"
fi

mkdir -p "$CACHE" "$OUT"

# The meta package depends on exactly one versioned kernel package.
KPKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
  awk '/Depends: linux-image-[0-9].*-cloud-amd64/ {print $2; exit}')
[ -n "$KPKG" ] || die "cannot resolve linux-image-cloud-amd64 (apt-get update? Debian sources?)"
KVER=${KPKG#linux-image-}

# The stamp names everything the outputs depend on: kernel, busybox, this script.
STAMP="$KVER $(sha256sum "$BUSYBOX" "$0" | awk '{print $1}' | tr '\n' ' ')"
if [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initramfs.cpio.gz" ] &&
  [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$STAMP" ]; then
  log "up to date ($KVER) in $OUT"
  echo "$OUT"
  exit 0
fi

WORK=$(mktemp -d "$CACHE/work.XXXXXX")
# apt-get download drops privileges to _apt, which must reach the directory.
chmod 0755 "$WORK"
trap 'rm -rf "$WORK"' EXIT

deb=$(ls "$CACHE"/"${KPKG}"_*.deb 2>/dev/null | head -n1 || true)
if [ -z "$deb" ]; then
  log "downloading $KPKG"
  (cd "$WORK" && apt-get download -q "$KPKG" >&2)
  deb=$(ls "$WORK"/"${KPKG}"_*.deb | head -n1)
  mv "$deb" "$CACHE/"
  deb="$CACHE/$(basename "$deb")"
fi
dpkg-deb -x "$deb" "$WORK/kernel"
vmlinuz="$WORK/kernel/boot/vmlinuz-$KVER"
[ -f "$vmlinuz" ] || die "$deb has no boot/vmlinuz-$KVER"

root="$WORK/root"
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,run,etc/acpi/PWRF,lib/modules}
cp "$BUSYBOX" "$root/bin/busybox"
for m in "${MODULES[@]}"; do
  f=$(find "$WORK/kernel/lib/modules/$KVER" -name "$m.ko" | head -n1)
  [ -n "$f" ] || die "module $m.ko not in $KPKG"
  cp "$f" "$root/lib/modules/"
done
printf '%s\n' "${MODULES[@]}" >"$root/lib/modules/order"

cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /lib/modules/order); do
  insmod /lib/modules/$m.ko 2>/dev/console || echo "CSAGENT-INSMOD-FAILED: $m" >/dev/console
done
# Give udev-less device discovery a moment: virtio probes asynchronously.
sleep 1
acpid -c /etc/acpi -l /tmp/acpid.log
echo "CSAGENT-GUEST-UP" >/dev/console
echo "CSAGENT-DISKS: $(ls /sys/block | tr '\n' ' ')" >/dev/console
for n in /sys/class/net/*; do
  echo "CSAGENT-NIC: $(basename "$n") $(cat "$n/address")" >/dev/console
done
# Proof beyond the console: the kernel log has it too (dmesg).
echo "csagent guest init ran" >/dev/kmsg
# A guest that is seen alive by its disk alone (HA tests): with
# csagent.disk_ticks on the kernel command line it writes its first virtio
# disk's first sector every second, synced, so the image file on the host
# keeps changing while the guest runs.
if grep -q csagent.disk_ticks /proc/cmdline && [ -b /dev/vda ]; then
  n=0
  while true; do
    n=$((n + 1))
    echo "csagent tick $n" | dd of=/dev/vda bs=512 count=1 conv=fsync 2>/dev/null
    sleep 1
  done &
fi
while true; do sleep 3600; done
INIT
chmod 0755 "$root/init"
cat >"$root/etc/acpi/PWRF/00000080" <<'PWR'
#!/bin/sh
echo "CSAGENT-GUEST-POWEROFF" >/dev/console
poweroff -f
PWR
chmod 0755 "$root/etc/acpi/PWRF/00000080"

(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9) >"$WORK/initramfs.cpio.gz"

install -m 0644 "$vmlinuz" "$OUT/.vmlinuz.tmp"
install -m 0644 "$WORK/initramfs.cpio.gz" "$OUT/.initramfs.tmp"
mv -f "$OUT/.vmlinuz.tmp" "$OUT/vmlinuz"
mv -f "$OUT/.initramfs.tmp" "$OUT/initramfs.cpio.gz"
echo "$STAMP" >"$OUT/.stamp.tmp" && mv -f "$OUT/.stamp.tmp" "$OUT/stamp"
chmod 0755 "$OUT"
log "built kernel $KVER and busybox initramfs (marker $MARKER) in $OUT"
echo "$OUT"
