#!/usr/bin/env bash
# Build one fuzz target with cargo-afl and fuzz it with afl-fuzz for a while
# (docs/fuzzing.md).
#
#   fuzz/run.sh <target> <seconds>          # e.g. fuzz/run.sh xml_stream 120
#
# Starts from fuzz/corpus/<target> (or resumes fuzz/out/<target> if it exists), writes
# findings to fuzz/out/<target>/default/{queue,crashes,hangs} and prints the run's
# execs_done / saved_crashes. Exits 1 if afl-fuzz saved a crash.
#
# Needs cargo-afl (cargo install cargo-afl --version =0.15.10 --locked) and Debian's afl++
# (apt-get install afl++: afl-fuzz 4.04c). The instrumented build goes to fuzz/target/afl.
#
# The binaries are linked with Debian's AFL++ runtime (/usr/lib/afl/afl-compiler-rt.o), not
# the one cargo-afl builds from its bundled AFL++ 4.21c: Debian's afl-fuzz cannot talk to
# the newer fork server ("Unable to request new process from fork server"). To use
# cargo-afl's own AFL++ instead: AFL_RT=none AFL_FUZZ=<its afl-fuzz> fuzz/run.sh ...
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage() { echo "usage: fuzz/run.sh <target> <seconds>; targets: $(ls "$HERE/corpus" | tr '\n' ' ')" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
target="$1"
secs="$2"
[[ -d "$HERE/corpus/$target" && "$secs" =~ ^[0-9]+$ ]] || usage

cd "$HERE"
export CARGO_TARGET_DIR="$HERE/target/afl"

# cargo-afl links libafl-llvm-rt.a from
# $XDG_DATA_HOME/afl.rs/rustc-<release>-<commit>/afl.rs-<cargo-afl version>/afl-llvm/;
# give it one made of Debian's runtime object, in a directory named after that object so
# that an upgraded afl++ changes RUSTFLAGS and rebuilds everything.
rt="${AFL_RT:-/usr/lib/afl/afl-compiler-rt.o}"
if [[ "$rt" != none ]]; then
    [[ -f "$rt" ]] || { echo "no AFL++ runtime at $rt (apt-get install afl++, or set AFL_RT)" >&2; exit 1; }
    rustc_id=$(rustc -vV | awk '/^release:/ {r = $2} /^commit-hash:/ {c = substr($2, 1, 7)} END {print "rustc-" r (c != "" ? "-" c : "")}')
    cargo_afl_version=$(cargo afl --version | awk '{print $2}')
    export XDG_DATA_HOME="$HERE/target/afl-rt/$(sha1sum "$rt" | cut -c1-12)"
    lib="$XDG_DATA_HOME/afl.rs/$rustc_id/afl.rs-$cargo_afl_version/afl-llvm"
    if [[ ! -f "$lib/libafl-llvm-rt.a" ]]; then
        mkdir -p "$lib"
        cp "$rt" "$lib/libafl-llvm-rt.o"
        ar rcs "$lib/libafl-llvm-rt.a" "$lib/libafl-llvm-rt.o"
    fi
fi
cargo afl build --release --features afl --bin "$target"
bin="$CARGO_TARGET_DIR/release/$target"

case "$target" in
    xml_stream | bosh_body | jingle | colibri2) dict="$HERE/dict/xml.dict" ;;
    bridge_channel) dict="$HERE/dict/json.dict" ;;
    sasl) dict="$HERE/dict/sasl.dict" ;;
    *) dict="" ;;
esac

out="$HERE/out/$target"
mkdir -p "$out"
if [[ -f "$out/default/fuzzer_stats" ]]; then
    input=(-i -) # resume where the last run stopped
else
    input=(-i "$HERE/corpus/$target")
fi

# Containers and shared machines: no CPU governor or core_pattern tuning, no CPU pinning,
# no curses UI.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1 AFL_NO_UI=1
"${AFL_FUZZ:-afl-fuzz}" "${input[@]}" -o "$out" -V "$secs" ${dict:+-x "$dict"} -- "$bin"

stats="$out/default/fuzzer_stats"
echo "== $target: $stats"
grep -E '^(run_time|execs_done|execs_per_sec|corpus_count|bitmap_cvg|saved_crashes|unique_crashes|saved_hangs|unique_hangs) ' "$stats"
crashes=$(awk -F: '/^(saved|unique)_crashes/ {gsub(/ /, "", $2); print $2; exit}' "$stats")
if [[ "${crashes:-0}" -gt 0 ]]; then
    echo "== $target: $crashes crash(es) in $out/default/crashes" >&2
    exit 1
fi
