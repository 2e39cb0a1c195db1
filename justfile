# wmr developer commands. `just --list` shows them.

guest_dir := "target/guests/wasm32-wasip2/release"

# Install what the build needs: the wasm32-wasip2 target.
setup:
    rustup target add wasm32-wasip2

# Build the example and test guests (Wasm components) into target/guests.
guests: setup
    cargo build --release --target wasm32-wasip2 --manifest-path examples/Cargo.toml --target-dir target/guests

tools := "target/tools"

# Install componentize-py (PyPI, pinned) into target/tools/venv, once.
setup-py:
    #!/usr/bin/env bash
    set -euo pipefail
    # Its real path: scripts name their interpreter by absolute path, and
    # target/ may be a link into a cache shared by several clones.
    mkdir -p {{tools}} && venv="$(cd {{tools}} && pwd -P)/venv"
    # Debian splits venv out of python3; install it where we may (root).
    if ! python3 -c 'import ensurepip' 2>/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq python3-venv
    fi
    if ! "$venv/bin/componentize-py" --version 2>/dev/null | grep -qx "componentize-py 0.25.1"; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check componentize-py==0.25.1
    fi

# Install the S3-protocol test server (s3s-fs, crates.io, pinned) into
# target/tools/s3s, once; the object-store tests start it on loopback.
setup-s3:
    #!/usr/bin/env bash
    set -euo pipefail
    root={{tools}}/s3s
    if ! "$root/bin/s3s-fs" --version 2>/dev/null | grep -q "0.14.1"; then
        # Its own temporary target dir: s3s-fs's features must not mix with ours.
        env -u CARGO_TARGET_DIR cargo install s3s-fs --version 0.14.1 --features binary --locked --root "$root"
    fi

# guest-sdk/js/node_modules links to target/tools/js, installed once per lock file.
# Install componentize-js and rolldown (guest-sdk/js/package-lock.json) into target/tools/js.
setup-js:
    #!/usr/bin/env bash
    set -euo pipefail
    dir={{tools}}/js
    if ! command -v npm >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq nodejs npm
    fi
    command -v npm >/dev/null || { echo "error: npm (node 20) is needed to build the JavaScript guests" >&2; exit 1; }
    if ! cmp -s guest-sdk/js/package-lock.json "$dir/package-lock.json" || [ ! -d "$dir/node_modules" ]; then
        rm -rf "$dir" && mkdir -p "$dir"
        cp guest-sdk/js/package.json guest-sdk/js/package-lock.json "$dir/"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    fi
    ln -sfn "$(cd "$dir" && pwd -P)/node_modules" guest-sdk/js/node_modules

# Only those whose sources changed are rebuilt (componentize-py, ~10 s each).
# Build the Python guests (examples/python/*, tests/guests/python/*) into target/guests/py.
guests-py: setup-py
    #!/usr/bin/env bash
    set -euo pipefail
    mkdir -p target/guests/py
    for dir in examples/python/*/ tests/guests/python/*/; do
        name=$(basename "$dir") out=target/guests/py/$(basename "$dir").wasm
        if [ -f "$out" ] && [ -z "$(find "$dir" guest-sdk/python wit -newer "$out" -name '*.py' -o -newer "$out" -name '*.wit' | head -1)" ]; then continue; fi
        echo "componentize-py: $out"
        {{tools}}/venv/bin/componentize-py -d wit/mapreduce.wit -w job componentize -p guest-sdk/python -p "$dir" "$name" -o "$out"
    done

# Only those whose sources changed are rebuilt (componentize-js, ~15 s each).
# Build the JavaScript guests (examples/js/*, tests/guests/js/*) into target/guests/js.
guests-js: setup-js
    #!/usr/bin/env bash
    set -euo pipefail
    mkdir -p target/guests/js
    for dir in examples/js/*/ tests/guests/js/*/; do
        name=$(basename "$dir") out=target/guests/js/$(basename "$dir").wasm
        if [ -f "$out" ] && [ -z "$(find "$dir" guest-sdk/js/*.js guest-sdk/js/build.mjs wit -newer "$out" -name '*.js' -o -newer "$out" -name '*.mjs' -o -newer "$out" -name '*.wit' | head -1)" ]; then continue; fi
        node guest-sdk/js/build.mjs "$dir/$name.js" -o "$out"
    done

# Regenerate the SDKs' tables of Rust's `char::is_alphabetic` (for `words`).
alphabetic-tables:
    mkdir -p target/tools
    rustc -O --edition 2024 -o target/tools/gen-alphabetic guest-sdk/gen-alphabetic.rs
    ./target/tools/gen-alphabetic

# Build the wmr binary.
build:
    cargo build --release

# Word count over the bundled books with the embedded default.
demo: guests build
    rm -rf out/wordcount
    ./target/release/wmr run --map {{guest_dir}}/wordcount.wasm --input examples/data --output out/wordcount --reducers 4
    @echo "top words:" && cat out/wordcount/part-r-* | sort -k2 -n -r | head -5

# Install Debian's chromium and chromedriver for the web UI's browser tests (tests/webui.rs), once.
setup-browser:
    #!/usr/bin/env bash
    set -euo pipefail
    if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then exit 0; fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq chromium chromium-driver
    fi
    command -v chromium >/dev/null && command -v chromedriver >/dev/null || { echo "error: tests/webui.rs needs chromium and chromedriver (apt-get install chromium chromium-driver)" >&2; exit 1; }

# iproute2 (`ip netns`, veth) for tests/partition.rs, installed where we may (root, Debian).
setup-net:
    #!/usr/bin/env bash
    set -euo pipefail
    if ! command -v ip >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq iproute2
    fi

# Every test: unit, simulation, sandbox, end-to-end, partitions, polyglot and the browser's (installs componentize-py, componentize-js, chromium, iproute2, s3s-fs).
test: guests guests-py guests-js setup-browser setup-net setup-s3
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

# Word count over the SIZE_MIB corpus read from a local S3 server (s3s-fs) vs from local files, in turns, ROUNDS times; the ratio (target >= 0.8).
bench-s3 size_mib="256" rounds="3": guests setup-s3
    cargo build --release -p wmr -p wmr-bench
    ${CARGO_TARGET_DIR:-target}/release/wmr-bench s3 --size-mib {{size_mib}} --rounds {{rounds}} --wmr ${CARGO_TARGET_DIR:-target}/release/wmr --guest {{guest_dir}}/wordcount.wasm --s3s-fs {{tools}}/s3s/bin/s3s-fs

# Two one-slot workers, one slowed by SIGSTOP/SIGCONT cycles (host/bench/speculate.py).
# Speculation: a word count ROUNDS times without and with --speculate; median job times and their ratio.
bench-speculate rounds="3": guests build
    python3 host/bench/speculate.py --wmr ${CARGO_TARGET_DIR:-target}/release/wmr --guest {{guest_dir}}/wordcount.wasm --rounds {{rounds}}

# Input: the books COPIES times, one split per file; one worker each.
# Map throughput of the word count in Rust, Python and JavaScript on the same input.
bench-polyglot copies="2": guests guests-py guests-js build
    #!/usr/bin/env bash
    set -euo pipefail
    input=target/bench-polyglot/input
    rm -rf target/bench-polyglot && mkdir -p "$input"
    for i in $(seq {{copies}}); do
        for f in examples/data/*.txt; do cp "$f" "$input/$i-$(basename "$f")"; done
    done
    for guest in {{guest_dir}}/wordcount.wasm target/guests/py/wordcount.wasm target/guests/js/wordcount.wasm; do
        ${CARGO_TARGET_DIR:-target}/release/wmr run --map "$guest" --input "$input" \
            --output target/bench-polyglot/out --workers 1 --reducers 1 --json >target/bench-polyglot/summary.json
        rm -rf target/bench-polyglot/out
        python3 - "$guest" target/bench-polyglot/summary.json <<'PY'
    import json, sys
    s = json.load(open(sys.argv[2]))
    maps = [a["stats"] for a in s["attempt_log"] if "Map" in a["task"]]
    size = sum(m["bytes_in"] for m in maps)
    ms = sum(m["wall_ms"] for m in maps)
    fuel = sum(m["fuel_used"] for m in maps)
    print(f"{sys.argv[1]}: map {size / 1e6:.1f} MB in {ms / 1e3:.2f} s = {size / 1e3 / max(ms, 1):.2f} MB/s, "
          f"{fuel / size:.0f} fuel/byte; job {s['wall_ms'] / 1e3:.2f} s")
    PY
    done
