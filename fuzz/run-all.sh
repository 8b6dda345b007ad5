#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for <seconds> each, one after the other, on one core.
#
#   fuzz/run-all.sh <seconds> [target...]
#
# Works on the stable toolchain: see fuzz/README.md for why RUSTC_BOOTSTRAP=1 and `-s none`.
# Seeds come from files in the repository (tests/fixtures/github-webhooks among them) and go to
# fuzz/corpus/<target> (git-ignored), which later runs reuse. Crashes land in fuzz/artifacts/<target>.
# Environment: FUZZ_TARGET_DIR (build dir, default fuzz/target), FUZZ_ARGS (extra libFuzzer flags),
# FUZZ_FEATURES (cargo features; default: all targets), FUZZ_SANITIZER (default none).
set -euo pipefail

usage() { echo "usage: $0 <seconds> [runtime_params|dag_yaml|dispatch_job|hub_webhook ...]" >&2; exit 2; }
[[ $# -ge 1 && $1 =~ ^[0-9]+$ ]] || usage
seconds=$1
shift
all=(runtime_params dag_yaml dispatch_job hub_webhook)
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${all[@]}")

fuzz_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$fuzz_dir")
cd "$fuzz_dir"

command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz missing: cargo install cargo-fuzz --locked" >&2; exit 1; }

# `-s none` needs no nightly flag; a sanitizer (FUZZ_SANITIZER=address) makes cargo-fuzz pass
# `-Zsanitizer`, which stable rustc accepts only with RUSTC_BOOTSTRAP=1.
export RUSTC_BOOTSTRAP=1
build_flags=(-s "${FUZZ_SANITIZER:-none}" -a --codegen-units 16 --target-dir "${FUZZ_TARGET_DIR:-$fuzz_dir/target}")
if [[ -n ${FUZZ_FEATURES:-} ]]; then
    build_flags+=(--no-default-features --features "$FUZZ_FEATURES")
fi

seed() {
    local target=$1 dir=corpus/$1
    mkdir -p "$dir" "artifacts/$target"
    case $target in
    runtime_params)
        printf '%s' 'WEBHOOK_PAYLOAD="{\"ref\":\"main\"}" WEBHOOK_HEADERS="{}" GITHUB_EVENT_NAME="push"' >"$dir/seed-built"
        printf '%s' 'A=1 B=`raw "x"` "positional" bare URL=a?b=c C=' >"$dir/seed-mixed"
        printf '%s' 'X="\u00e9\x41\101\U0001F600\a\b\f\n\r\t\v\\\"" Y="\xff"' >"$dir/seed-escapes"
        printf 'payload\0{"h":1}\0GITHUB_REF\001refs/heads/main\0EMPTY\001' >"$dir/seed-build-split"
        ;;
    dag_yaml)
        local f
        for f in "$repo"/crates/dag/tests/fixtures/dags/*.yaml "$repo"/crates/scheduler/demo/dags/*.yaml; do
            [[ -f $f ]] && cp "$f" "$dir/seed-$(basename "$(dirname "$f")")-$(basename "$f")"
        done
        printf 'params: A=1 B="two"\nsteps:\n  - command: echo $A\n\0A=9 extra' >"$dir/seed-with-runtime"
        ;;
    dispatch_job)
        printf '%s' '{"id":"0190a1b2c3d4","binding_id":"b","installation_id":1,"repository_id":2,"repository_name":"o/r","dag_name":"build","event_name":"push","ref":"refs/heads/main","sha":"abc","payload":{"ref":"refs/heads/main","n":[1,2.50,"\u00e9"]},"headers":{"x-github-event":["push"]},"unknown":true}' >"$dir/seed-full"
        printf '%s' '{"id":"j","payload":null,"headers":  { } }' >"$dir/seed-null"
        ;;
    hub_webhook)
        # Byte 0 = index of the event in EVENTS (fuzz_targets/hub_webhook.rs); bit 7 = deliver twice.
        local events=(push pull_request create release check_run issue_comment pull_request_review_comment
            repository_dispatch workflow_dispatch ping issues delete check_suite merge_group deployment workflow_run)
        local fixtures=$repo/tests/fixtures/github-webhooks i f
        for i in "${!events[@]}"; do
            [[ -d $fixtures/${events[$i]} ]] || continue
            for f in "$fixtures/${events[$i]}"/*.json; do
                { printf "\\x$(printf %02x "$i")"; cat "$f"; } >"$dir/seed-${events[$i]}-$(basename "$f")"
            done
        done
        printf '\x05{"action":"created","issue":{"number":5,"pull_request":{}},"comment":{"id":9,"body":"@dispatch ship"},"repository":{"full_name":"octo-org/octo-repo"}}' >"$dir/seed-comment"
        printf '\x80{"ref":"refs/tags/v1.0","after":"abc","repository":{"full_name":"codertocat/hello-world","id":1}}' >"$dir/seed-push-twice"
        ;;
    esac
}

status=0
for target in "${targets[@]}"; do
    seed "$target"
    dict=()
    [[ -f dicts/$target.dict ]] && dict=(-dict="dicts/$target.dict")
    echo "== $target: ${seconds}s" >&2
    start=$(date +%s)
    # One process, one core: libFuzzer's default (no -jobs/-fork) is a single in-process worker.
    if ! nice -n 10 cargo fuzz run "${build_flags[@]}" "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix="artifacts/$target/" -print_final_stats=1 "${dict[@]}" ${FUZZ_ARGS:-}; then
        echo "!! $target failed: see artifacts/$target/" >&2
        status=1
    fi
    echo "== $target: ran $(( $(date +%s) - start ))s" >&2
    # libFuzzer keeps every unit it ever saved; keep only a covering minimum (FUZZ_CMIN=0: keep all).
    if [[ ${FUZZ_CMIN:-1} != 0 ]]; then
        nice -n 10 cargo fuzz cmin "${build_flags[@]}" "$target" "corpus/$target" >/dev/null 2>&1 ||
            echo "!! $target: corpus minimisation failed (corpus kept as is)" >&2
        echo "== $target: corpus $(find "corpus/$target" -type f | wc -l) files" >&2
    fi
done
exit $status
