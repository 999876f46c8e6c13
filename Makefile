# The two commands of the README, plus the pieces they are made of.
# Every target installs what it needs first, so each works on a fresh Debian.

CARGO ?= cargo

.PHONY: all deps tools services build test lint demo bench package clean

all: build

deps:
	bash scripts/install-deps.sh
	bash scripts/install-rust.sh

services: deps
	bash scripts/start-services.sh

build: deps
	$(CARGO) build --release --workspace --bins

lint: deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) fmt --manifest-path crates/cloudstack/Cargo.toml --check
	$(CARGO) clippy --manifest-path crates/cloudstack/Cargo.toml --all-targets --all-features -- -D warnings

# clippy --all-targets already type-checks the benches; building them in
# release here would double CI's compile time for nothing.
# Every command the scripts, tests and demo run, each missing one named with
# its package: test and demo check it before anything else of theirs runs,
# so a tool lost since install is one clear line, not thirty failed tests.
tools: deps
	bash scripts/verify-tools.sh

test: tools services lint
	bash scripts/test.sh

demo: tools services
	bash scripts/demo.sh

# The benches spawn the release csagent and csagent-mgmt beside them.
bench: services
	$(CARGO) build --release --workspace --bins
	$(CARGO) bench

# A .deb and an .rpm of the release build in target/package/.
package: deps
	bash scripts/package.sh

clean:
	$(CARGO) clean
