#!/usr/bin/env bash
# Builds the .deb and .rpm, inspects both, installs the .deb on this
# machine, checks what it put where, runs the installed `csagent check`
# and `systemd-analyze verify`, removes and purges it, and checks that
# configuration and state survive a remove and are gone after a purge.
#
# Leaves the machine as it found it: it refuses to run the install part
# when csagent is already installed or /etc/csagent or /var/lib/csagent
# exist, and a trap purges what it installed even when a check fails.
#
# PROFILE=dev (default here) packages the debug binaries the test suite
# has already built; `make package` builds release. Ends with one line,
# "package-test: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
export PROFILE=${PROFILE:-dev}

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok    $*"; }
bad() { failed=$((failed + 1)); echo "FAIL  $*"; }
check() { # <description> <command...>
  local what=$1; shift
  if "$@" >/dev/null 2>&1; then ok "$what"; else bad "$what"; fi
}
finish() {
  echo "package-test: ${passed} passed, ${failed} failed"
  [ "$failed" -eq 0 ]
  exit $?
}

start=$(date +%s)
if ! bash scripts/package.sh; then
  bad "scripts/package.sh builds both packages"
  finish
fi
echo "package-test: packages built in $(( $(date +%s) - start )) s"
deb=$(ls target/package/*.deb)
rpm=$(ls target/package/*.rpm)

# --- the .deb, inspected -----------------------------------------------------
info=$(dpkg-deb -I "$deb")
field() { dpkg-deb -f "$deb" "$1"; }
check "deb Provides cloudstack-agent" grep -qw cloudstack-agent <<<"$(field Provides)"
check "deb Conflicts cloudstack-agent" grep -qw cloudstack-agent <<<"$(field Conflicts)"
check "deb Replaces cloudstack-agent" grep -qw cloudstack-agent <<<"$(field Replaces)"
for dep in libvirt0 "libvirt-daemon-system | libvirt-daemon" qemu-utils nftables; do
  check "deb Depends on $dep" grep -qF "$dep" <<<"$(field Depends)"
done
check "deb conffiles has /etc/csagent/agent.toml" grep -qx /etc/csagent/agent.toml <<<"$(dpkg-deb --info "$deb" conffiles)"
check "deb has maintainer scripts" grep -q "postinst" <<<"$info"
listing=$(dpkg-deb -c "$deb")
for f in ./usr/bin/csagent ./usr/bin/csagent-mgmt ./lib/systemd/system/csagent.service \
         ./etc/csagent/agent.toml ./usr/share/man/man1/csagent.1.gz ./usr/share/man/man1/csagent-status.1.gz \
         ./usr/share/man/man1/csagent-mgmt.1.gz ./usr/share/bash-completion/completions/csagent \
         ./usr/share/zsh/vendor-completions/_csagent ./usr/share/fish/vendor_completions.d/csagent.fish; do
  check "deb contains $f" grep -qE " $f\$" <<<"$listing"
done

# --- the .rpm, inspected (Debian's rpm tool) --------------------------------
rlist=$(rpm -qpl "$rpm" 2>/dev/null)
for f in /usr/bin/csagent /usr/bin/csagent-mgmt /usr/lib/systemd/system/csagent.service \
         /etc/csagent/agent.toml /usr/share/man/man1/csagent.1.gz /usr/share/bash-completion/completions/csagent; do
  check "rpm contains $f" grep -qx "$f" <<<"$rlist"
done
rreq=$(rpm -qpR "$rpm" 2>/dev/null)
for dep in libvirt-libs libvirt-daemon-kvm qemu-img nftables; do
  check "rpm Requires $dep" grep -qw "$dep" <<<"$rreq"
done
check "rpm Provides cloudstack-agent" grep -qw cloudstack-agent <<<"$(rpm -qp --provides "$rpm" 2>/dev/null)"
check "rpm Conflicts cloudstack-agent" grep -qw cloudstack-agent <<<"$(rpm -qp --conflicts "$rpm" 2>/dev/null)"
check "rpm Obsoletes cloudstack-agent" grep -qw cloudstack-agent <<<"$(rpm -qp --obsoletes "$rpm" 2>/dev/null)"
check "rpm marks agent.toml as config" grep -qx /etc/csagent/agent.toml <<<"$(rpm -qpc "$rpm" 2>/dev/null)"
rscripts=$(rpm -qp --scripts "$rpm" 2>/dev/null)
check "rpm %post creates /etc/csagent, /var/lib/csagent" grep -q "install -d -m 0750" <<<"$rscripts"
check "rpm %preun stops and disables on erase" grep -q "disable --now csagent.service" <<<"$rscripts"

# --- the .deb, installed on this machine -------------------------------------
if dpkg-query -W -f='${Status}' csagent 2>/dev/null | grep -q installed || [ -e /etc/csagent ] || [ -e /var/lib/csagent ]; then
  echo "SKIP  install checks: csagent, /etc/csagent or /var/lib/csagent already exist here; not touching them"
  finish
fi
trap 'dpkg --purge csagent >/dev/null 2>&1; rm -rf "$work"' EXIT
work=$(mktemp -d /tmp/csagent-pkgtest-XXXXXX)

check "dpkg -i installs the .deb" dpkg -i "$deb"
check "reinstalling over itself is fine (idempotent postinst)" dpkg -i "$deb"
mode() { stat -c '%a %U:%G' "$1" 2>/dev/null; }
[ "$(mode /usr/bin/csagent)" = "755 root:root" ] && ok "/usr/bin/csagent 755 root" || bad "/usr/bin/csagent mode: $(mode /usr/bin/csagent)"
[ "$(mode /usr/bin/csagent-mgmt)" = "755 root:root" ] && ok "/usr/bin/csagent-mgmt 755 root" || bad "/usr/bin/csagent-mgmt mode"
[ "$(mode /etc/csagent)" = "750 root:root" ] && ok "/etc/csagent 750" || bad "/etc/csagent mode: $(mode /etc/csagent)"
[ "$(mode /etc/csagent/agent.toml)" = "640 root:root" ] && ok "agent.toml 640" || bad "agent.toml mode: $(mode /etc/csagent/agent.toml)"
[ "$(mode /var/lib/csagent)" = "750 root:root" ] && ok "/var/lib/csagent 750" || bad "/var/lib/csagent mode: $(mode /var/lib/csagent)"
check "unit installed" test -f /lib/systemd/system/csagent.service
check "unit enabled (multi-user.target.wants)" test -L /etc/systemd/system/multi-user.target.wants/csagent.service
check "unit aliased as cloudstack-agent.service" test -L /etc/systemd/system/cloudstack-agent.service
check "man csagent resolves" man -w csagent
check "systemd-analyze verify on the installed unit" systemd-analyze verify /lib/systemd/system/csagent.service
check "installed csagent --version" /usr/bin/csagent --version

# `csagent check` "passes" here when it runs to the end and reports the
# truth: unconfigured, it must exit 1 (not crash: no 2, 101 or signal)
# naming management.hosts; with an endpoint that is not there, it must
# print the full table (kvm, libvirt, qemu-img rows) and exit 1 too.
out=$(/usr/bin/csagent check 2>&1); rc=$?
[ "$rc" -eq 1 ] && grep -q "FAIL  config.*management.hosts" <<<"$out" \
  && ok "installed csagent check: unconfigured -> exit 1 naming management.hosts" \
  || bad "installed csagent check (unconfigured): rc=$rc: $out"
sed 's/^hosts = \[\]/hosts = ["127.0.0.1:1"]/' /etc/csagent/agent.toml >"$work/agent.toml"
out=$(/usr/bin/csagent check -c "$work/agent.toml" 2>&1); rc=$?
echo "$out" | sed 's/^/      /'
[ "$rc" -eq 1 ] && grep -q "^pass  config" <<<"$out" && [ "$(grep -cE '^(pass|WARN|FAIL) ' <<<"$out")" -ge 5 ] \
  && ok "installed csagent check: configured, no plane -> full table, exit 1" \
  || bad "installed csagent check (configured): rc=$rc"

# Remove keeps configuration and state; purge removes them.
echo "# operator edit" >>/etc/csagent/agent.toml
check "dpkg -r removes the package" dpkg -r csagent
check "remove: binary gone" test ! -e /usr/bin/csagent
check "remove: edited agent.toml kept" grep -q "operator edit" /etc/csagent/agent.toml
check "remove: /var/lib/csagent kept" test -d /var/lib/csagent
check "dpkg --purge purges it" dpkg --purge csagent
check "purge: /etc/csagent gone" test ! -e /etc/csagent
check "purge: /var/lib/csagent gone" test ! -e /var/lib/csagent
check "purge: no enablement or alias left" test ! -e /etc/systemd/system/cloudstack-agent.service -a ! -e /etc/systemd/system/multi-user.target.wants/csagent.service -a ! -L /etc/systemd/system/csagent.service
echo "package-test: took $(( $(date +%s) - start )) s"
finish
