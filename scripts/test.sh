#!/usr/bin/env bash
# Runs every test (unit, integration, CLI) and ends with one total line,
# "N passed, N failed, N skipped", so a reader of the last line sees the
# whole run. libtest has no "skipped": a test that cannot run here calls
# csagent_testkit::skip!, which appends "<test><TAB><reason>" to
# $CSAGENT_SKIP_FILE and returns (libtest counts it "ok"); those are listed
# under "Skipped:" and moved from passed to skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
skips=$(mktemp)
export CSAGENT_SKIP_FILE="$skips"
# The lab of hosts on one machine (scripts/lab.sh) comes up once per run
# for the multi-host tests and goes down however the run ends; without it
# those tests skip and say why.
trap 'bash scripts/lab.sh down >/dev/null 2>&1; rm -f "$log" "$skips"' EXIT
# What a crashed earlier run left (its own prefixes only) goes first.
bash scripts/sweep.sh
if ! bash scripts/lab.sh up 2 >"$log" 2>&1; then
  echo "test: the lab did not come up; its tests will skip:" >&2
  tail -5 "$log" >&2
  bash scripts/lab.sh down >/dev/null 2>&1
fi
# The real Linux guest tests/vm_guest.rs boots (cached after the first run).
bash scripts/guest-image.sh >/dev/null
# csagent-mgmt is found beside csagent by the agent's tests: build every binary first.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast --lib --bins --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The CloudStack codec builds outside the workspace (see Cargo.toml).
cargo test --manifest-path crates/cloudstack/Cargo.toml --all-features --no-fail-fast 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
passed=$(grep -oE '^test result: .* ([0-9]+) passed' "$log" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -oE '; [0-9]+ failed' "$log" | grep -oE '[0-9]+' | awk '{s+=$1} END {print s+0}')
# Packages: build both from the binaries just tested, inspect, install,
# purge (scripts/package-test.sh); its checks join the totals.
bash scripts/package-test.sh 2>&1 | tee "$log"
pkg_status=${PIPESTATUS[0]}
[ "$pkg_status" -eq 0 ] || status=$pkg_status
read -r pkg_passed pkg_failed < <(sed -nE 's/^package-test: ([0-9]+) passed, ([0-9]+) failed$/\1 \2/p' "$log" | tail -1)
passed=$((passed + ${pkg_passed:-0}))
failed=$((failed + ${pkg_failed:-1}))
skipped=$(grep -c . "$skips")
passed=$((passed - skipped))
echo
if [ "$skipped" -gt 0 ]; then
  echo "Skipped:"
  sort "$skips" | while IFS=$'\t' read -r test reason; do
    echo "  ${test}: ${reason}"
  done
fi
echo "${passed} passed, ${failed} failed, ${skipped} skipped"
exit "$status"
