# The two commands of the README:
#   make run   set up if needed, build, serve on 127.0.0.1:8080 with the embedded local registry
#   make test  set up if needed, lint, run every test
# Everything runs through scripts/env.sh, which points the build at the venv's libtorch and
# onnxruntime (LIBTORCH_USE_PYTORCH, ORT_DYLIB_PATH, PATH).
ENV := scripts/env.sh
CARGO_TEST_FLAGS ?=

.PHONY: run test setup build lint fmt openapi doctor clean-venv

run: setup
	$(ENV) cargo build --release
	$(ENV) target/release/petal serve

test: setup lint
	$(ENV) cargo test --all-targets --no-fail-fast $(CARGO_TEST_FLAGS)

setup:
	@bash scripts/setup.sh

build: setup
	$(ENV) cargo build --release

lint: setup
	$(ENV) cargo fmt --check
	$(ENV) cargo clippy --all-targets -- -D warnings
	# cargo deny reads `cargo metadata` for every platform: fetch them all first
	# (the build only downloads the host's), then check without the network.
	$(ENV) cargo fetch --locked
	$(ENV) cargo deny --offline check licenses bans sources

fmt:
	cargo fmt

# Regenerates the committed OpenAPI document from the code.
openapi: setup
	$(ENV) cargo run --quiet -- openapi --out openapi/openapi.json

doctor: setup
	$(ENV) cargo run --quiet -- doctor

clean-venv:
	rm -rf .venv tools
