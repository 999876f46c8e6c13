#!/usr/bin/env bash
# Installs every system package csagent needs to build, test and demo on a
# fresh Debian/Ubuntu machine, then verifies that every command the project
# runs is really there (scripts/verify-tools.sh). Idempotent.
#
# qemu-system-x86 and qemu-utils are always installed in one transaction:
# a machine that came with a newer qemu-utils (bookworm-backports) loses it
# when apt pulls in qemu-system-x86 alone, since the two versions conflict.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  pkg-config
  protobuf-compiler      # build.rs compiles proto/ with protoc
  libvirt-dev            # the virt crate links libvirt
  libvirt-clients        # virsh, virt-xml-validate (+ RelaxNG schemas)
  libxml2-utils          # xmllint: virt-xml-validate runs it (domain golden tests)
  libvirt-daemon-system  # libvirtd, virtlogd, virtlockd (the lab's disk leases) for end-to-end tests and the demo
  nftables
  iproute2
  kmod                   # modprobe: tests load 8021q where the kernel has it as a module
  ovmf                   # UEFI firmware (secure boot) for UEFI guests and the Windows golden domain
  swtpm                  # TPM 2.0 emulator behind <tpm><backend type='emulator'>
  swtpm-tools            # swtpm_setup: libvirt creates a vTPM's state with it
  busybox-static         # scripts/guest-image.sh: the test guest's userland
  cpio                   # scripts/guest-image.sh: packs the test guest's initramfs
  dpkg-dev               # dpkg-shlibdeps: cargo-deb computes the .deb's library Depends
  rpm                    # rpm -qpl/-qpR: package-test inspects the .rpm
  systemd                # systemd-analyze verify on the unit (works without systemd as PID 1)
  man-db                 # man: systemd-analyze verify resolves the unit's Documentation=
  procps                 # ps/kill in scripts
  python3                # scripts read cargo metadata with it
)
# Installed together, every time they are not both at one consistent version.
qemu_pair=(qemu-system-x86 qemu-utils)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
for p in "${packages[@]}"; do
  installed "$p" || missing+=("$p")
done

# The pair is consistent when both are installed and qemu-utils' version
# equals qemu-system-x86's (a backports qemu-utils next to bookworm's QEMU
# would be removed by the next apt run that touches QEMU).
qemu_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }
if ! installed qemu-system-x86 || ! installed qemu-utils \
  || [ "$(qemu_version qemu-system-x86)" != "$(qemu_version qemu-utils)" ]; then
  missing+=("${qemu_pair[@]}")
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all system packages present"
else
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # --allow-downgrades: the pair is pinned to one suite's version, which may
  # be older than a preinstalled backports qemu-utils.
  # policy-rc.d is not touched: libvirtd is started explicitly by start-services.sh.
  pins=()
  if [[ " ${missing[*]} " == *" qemu-utils "* ]]; then
    v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $2}')
    [ -n "$v" ] && [ "$v" != "(none)" ] && pins=("qemu-system-x86=$v" "qemu-utils=$v")
  fi
  rest=()
  for p in "${missing[@]}"; do
    case "$p" in qemu-system-x86|qemu-utils) [ ${#pins[@]} -gt 0 ] || rest+=("$p") ;; *) rest+=("$p") ;; esac
  done
  $SUDO apt-get install -y -qq --no-install-recommends --allow-downgrades "${rest[@]}" "${pins[@]}"
fi

bash scripts/verify-tools.sh
