#!/usr/bin/env bash
# Verifies that every command csagent's scripts, tests and demo run exists,
# and names the package that provides each one missing. Runs at the end of
# install-deps and at the start of `make test` and `make demo`, so a tool
# lost later (apt removing qemu-utils, say) is named at once instead of
# surfacing as thirty failed tests.
#
#   PATH=... scripts/verify-tools.sh     checks against that PATH
#   VERIFY_TOOLS_LIST=file               reads "command package" pairs from file
set -uo pipefail
cd "$(dirname "$0")/.."

list=${VERIFY_TOOLS_LIST:-scripts/tools.txt}
missing=0
while read -r cmd pkg _; do
  case "$cmd" in ''|'#'*) continue ;; esac
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ] && [ ! -x "/sbin/$cmd" ]; then
    echo "verify-tools: missing command '$cmd' (Debian package: $pkg)" >&2
    missing=$((missing + 1))
  fi
done <"$list"
if [ "$missing" -gt 0 ]; then
  echo "verify-tools: $missing command(s) missing; run: bash scripts/install-deps.sh" >&2
  exit 1
fi
echo "verify-tools: every command the project runs is present"
