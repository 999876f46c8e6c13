#!/usr/bin/env bash
# Installs every system package csagent needs to build, test and demo on a
# fresh Debian/Ubuntu machine. Idempotent: packages already present are skipped.
set -euo pipefail

packages=(
  pkg-config
  protobuf-compiler      # build.rs compiles proto/ with protoc
  libvirt-dev            # the virt crate links libvirt
  libvirt-clients        # virsh, virt-xml-validate (+ RelaxNG schemas)
  libxml2-utils          # xmllint: virt-xml-validate runs it (domain golden tests)
  libvirt-daemon-system  # libvirtd for end-to-end tests and the demo
  qemu-system-x86        # QEMU for real guests (TCG when KVM is unusable)
  qemu-utils             # qemu-img; installing qemu-system-x86 may remove it
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
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all system packages present"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# policy-rc.d is not touched: libvirtd is started explicitly by start-services.sh.
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
