#!/bin/sh
# Runs one fuzz target for a while: fuzz/run.sh TARGET [SECONDS] (default 600).
# New inputs go to fuzz/work/TARGET (not committed); the seeds in fuzz/corpus/TARGET are
# read, never written; a crash is saved under fuzz/artifacts/TARGET and ends the run.
# Needs the nightly toolchain and cargo-fuzz (installed from crates.io on first use).
set -eu
cd "$(dirname "$0")"
target=${1:?usage: fuzz/run.sh TARGET [SECONDS]}
seconds=${2:-600}
[ -d "corpus/$target" ] || { echo "no target $target; see fuzz/corpus/" >&2; exit 2; }
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
mkdir -p "work/$target" "artifacts/$target"
exec cargo +nightly fuzz run "$target" "work/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -artifact_prefix="artifacts/$target/"
