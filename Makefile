# The two commands of the README, plus the pieces they are made of.
# Every target installs what it needs first, so each works on a fresh Debian.

CARGO ?= cargo

.PHONY: all deps services build test lint demo bench package clean

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
test: services lint
	bash scripts/test.sh

demo: services
	bash scripts/demo.sh

bench: services
	$(CARGO) bench

# A .deb and an .rpm of the release build in target/package/.
package: deps
	bash scripts/package.sh

clean:
	$(CARGO) clean
