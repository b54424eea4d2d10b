#!/usr/bin/env bash
# Builds every fuzz target, then runs each for a short, bounded time, one
# after another (one process, one thread); fails if any target crashes,
# hangs or runs out of memory, naming the input that did it.
#
#   bash fuzz/run-short.sh                         # every target, 20 s each
#   FUZZ_SECONDS=600 bash fuzz/run-short.sh config # one target, 10 minutes
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`) and a C++ compiler
# (libfuzzer-sys builds libFuzzer). On stable Rust, cargo fuzz's -Z flags
# are accepted through RUSTC_BOOTSTRAP=1 (docs/fuzzing.md says why and what
# else was tried). FUZZ_SANITIZER=none builds without AddressSanitizer;
# FUZZ_CODEGEN_UNITS (default 16; cargo fuzz's own default is 1) trades
# build time for a little speed of the fuzzed code.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-20}
sanitizer=${FUZZ_SANITIZER:-address}
codegen_units=${FUZZ_CODEGEN_UNITS:-16}
export RUSTC_BOOTSTRAP=1
# Everything this crate builds stays under fuzz/target, including the web
# client that node/build.rs compiles into $CARGO_TARGET_DIR/wasm-client, so
# the workspace's own target/ is never rebuilt with these settings.
export CARGO_TARGET_DIR="$PWD/target"

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

start=$(date +%s)
build=(--sanitizer "$sanitizer" --debug-assertions --codegen-units "$codegen_units")
if [ "$#" -gt 0 ]; then
  for t in "${targets[@]}"; do
    cargo fuzz build "${build[@]}" "$t"
  done
else
  cargo fuzz build "${build[@]}"
fi
echo "fuzz: built ${#targets[@]} targets in $(($(date +%s) - start)) s"
# The binaries are run directly, as cargo fuzz run would run them, so that
# sources edited after the build do not trigger a rebuild between targets.
bin="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0}

dict() {
  case "$1" in
    ws_message | mesh_request | mesh_record) echo dicts/json.dict ;;
    stun_turn) echo dicts/stun.dict ;;
    config) echo dicts/toml.dict ;;
  esac
}

failed=()
for t in "${targets[@]}"; do
  # New inputs go to target/corpus/<t>; the committed seeds are only read.
  work="target/corpus/$t"
  mkdir -p "$work" "artifacts/$t"
  args=(-artifact_prefix="artifacts/$t/" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048
    -print_final_stats=1)
  d=$(dict "$t")
  if [ -n "$d" ]; then
    args+=(-dict="$d")
  fi
  echo "fuzz: $t for ${seconds} s"
  if ! "$bin/$t" "${args[@]}" "$work" "corpus/$t" >"target/$t.log" 2>&1; then
    failed+=("$t")
    tail -n 60 "target/$t.log" >&2
  fi
  grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)' "target/$t.log" | sed "s/^/fuzz: $t: /" || true
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (inputs in fuzz/artifacts/<target>/; reproduce with" \
    "fuzz/target/x86_64-unknown-linux-gnu/release/<target> <input>, see docs/fuzzing.md)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets ran ${seconds} s each without a crash ($(($(date +%s) - start)) s in all)"
