# wmr developer commands. `just --list` shows them.

guest_dir := "target/guests/wasm32-wasip2/release"

# Install what the build needs: the wasm32-wasip2 target.
setup:
    rustup target add wasm32-wasip2

# Build the example and test guests (Wasm components) into target/guests.
guests: setup
    cargo build --release --target wasm32-wasip2 --manifest-path examples/Cargo.toml --target-dir target/guests

# Build the wmr binary.
build:
    cargo build --release

# Word count over the bundled books with the embedded default.
demo: guests build
    rm -rf out/wordcount
    ./target/release/wmr run --map {{guest_dir}}/wordcount.wasm --input examples/data --output out/wordcount --reducers 4
    @echo "top words:" && cat out/wordcount/part-r-* | sort -k2 -n -r | head -5

# Every test: unit, simulation, sandbox and end-to-end.
test: guests
    cargo test --release --workspace

# Formatting and lints, as CI checks them.
lint:
    cargo fmt --all --check
    cargo fmt --all --check --manifest-path examples/Cargo.toml
    cargo clippy --release --all-targets -- -D warnings
    cargo clippy --release --target wasm32-wasip2 --manifest-path examples/Cargo.toml --target-dir target/guests -- -D warnings

# Word-count throughput: native baselines, the guest, `wmr run`.
bench size_mib="256": guests build
    cargo build --release -p wmr-bench
    ./target/release/wmr-bench --size-mib {{size_mib}} --guest {{guest_dir}}/wordcount.wasm

# The differential test at length: CASES random jobs (default 200) through
# `wmr run` (and a fifth as many through a cluster) against `wmr seq`.
# SEED replays a run; `random` draws a new one (printed at the start).
differential cases="200" seed="": guests
    WMR_DIFF_CASES={{cases}} WMR_DIFF_SEED={{seed}} cargo test --release --test differential -- --nocapture

# Shuffle: unique lines by `wmr run` vs `sort | uniq -c` (time, peak RSS; one row per size), and an emit flood.
bench-shuffle sizes_mib="600,2048": guests
    cargo build --release -p wmr -p wmr-bench
    ${CARGO_TARGET_DIR:-target}/release/wmr-bench shuffle --sizes-mib {{sizes_mib}} --wmr ${CARGO_TARGET_DIR:-target}/release/wmr --guests {{guest_dir}}
