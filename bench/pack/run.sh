#!/usr/bin/env bash
# Pack benchmark: `kiln pack` + push of a >= 1 GiB synthetic model to a
# loopback docker-registry, next to `skopeo copy` of the same image between
# two registries, in the same run (interleaved, several rounds).
#
#   bench/pack/run.sh                   # 1 GiB weights, 3 rounds
#   SIZE=$((2<<30)) ROUNDS=5 bench/pack/run.sh
#
# Each round uses fresh target registries (nothing to skip, nothing to mount):
#   kiln cold     kiln pack --push, empty cache: pull 1 GiB (hashing the blob and
#                 its layer as it arrives), upload
#   kiln no-op    the same kiln pack --push again: everything cached, HEADs only
#   kiln pull     kiln pull into an empty cache (what "kiln first" starts from)
#   skopeo copy   skopeo copy --preserve-digests of kiln's image to another registry
#   kiln first    kiln pack --push to a fresh registry right after that pull: the
#                 layer digests came with the pull, so this reads each byte once
#                 and hashes nothing (the like-for-like comparison with skopeo,
#                 which also moves every byte once)
#   kiln rehash   the same with the layer-digest cache cleared: hash, then upload
# Reported per run: median wall time, median client CPU (user + system, from
# /usr/bin/time: the figure that does not depend on how busy the machine is),
# max RSS. "kiln first" and "skopeo copy" swap order every round.
# Targets (issue 18): kiln first <= 0.8x skopeo copy; kiln cold <= 1.1x
# (kiln pull + skopeo copy); no-op under 2 s.
# Not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh

SIZE=${SIZE:-1073741824}
ROUNDS=${ROUNDS:-3}
command -v skopeo >/dev/null || die "skopeo not found; run scripts/setup"
command -v docker-registry >/dev/null || die "docker-registry not found; run scripts/setup"

say "building kiln and kiln-testkit (release)"
cargo build --release --locked -q -p kiln -p kiln-testkit
kiln=$PWD/target/release/kiln
testkit=$PWD/target/release/kiln-testkit

work=$(mktemp -d /tmp/kiln-bench-pack.XXXXXX)
pids=()
cleanup() {
    for fd in "${fds[@]:-}"; do [ -n "$fd" ] && exec {fd}>&- || true; done
    for pid in "${pids[@]:-}"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
fds=()
trap cleanup EXIT

# start_registry VAR WEIGHTS_SIZE: a seeded loopback registry; its URL lands in VAR.
# It runs until its stdin (a pipe we hold) closes.
start_registry() {
    local var=$1 size=$2 fifo_in fifo_out fd_w fd_r url
    fifo_in=$(mktemp -u "$work/in.XXXXXX"); fifo_out=$(mktemp -u "$work/out.XXXXXX")
    mkfifo "$fifo_in" "$fifo_out"
    "$testkit" --model library/gemma3:4b --weights-size "$size" <"$fifo_in" >"$fifo_out" 2>>"$work/testkit.log" &
    pids+=($!)
    exec {fd_w}>"$fifo_in"
    exec {fd_r}<"$fifo_out"
    fds+=("$fd_w")
    read -r url <&"$fd_r"
    printf -v "$var" '%s' "$url"
}
stop_registries() { # closes every registry but the source (the first)
    local i
    for ((i = ${#fds[@]} - 1; i >= 1; i--)); do exec {fds[i]}>&-; done
    for ((i = ${#pids[@]} - 1; i >= 1; i--)); do wait "${pids[i]}" 2>/dev/null || true; done
    fds=("${fds[0]}"); pids=("${pids[0]}")
}

say "seeding a $SIZE-byte model (takes a while)"
start_registry source "$SIZE"
src=${source#http://}
say "source registry $source"

now() { date +%s.%N; }
declare -A times
declare -A rss
declare -A cpu
run() { # name command...
    local name=$1; shift
    sync
    local t0 t1
    t0=$(now)
    /usr/bin/time -f '%M %U %S' -o "$work/rss" "$@" >/dev/null 2>>"$work/run.log" || { tail -5 "$work/run.log"; die "$name failed"; }
    t1=$(now)
    times[$name]+="$(python3 -c "print($t1 - $t0)") "
    read -r kb user sys < <(tail -1 "$work/rss")
    rss[$name]+="$((kb / 1024)) "
    cpu[$name]+="$(python3 -c "print($user + $sys)") "
}
kiln_pack=("$kiln" pack gemma3:4b --source-registry "$source" --base "$src/ollama/ollama:latest"
    --cache-dir "$work/cache" --progress quiet --push)

skopeo_copy() {
    run "skopeo copy" skopeo copy --quiet --preserve-digests --src-tls-verify=false --dest-tls-verify=false \
        "docker://$b/kiln/gemma:4b" "docker://$c/copy/gemma:4b"
}
kiln_first() {
    run "kiln first" "${kiln_pack[@]}" "$d/kiln/gemma:4b"
}

for round in $(seq "$ROUNDS"); do
    say "round $round/$ROUNDS"
    start_registry b 1024; start_registry c 1024; start_registry d 1024; start_registry e 1024
    b=${b#http://}; c=${c#http://}; d=${d#http://}; e=${e#http://}
    rm -rf "$work/cache"
    run "kiln cold" "${kiln_pack[@]}" "$b/kiln/gemma:4b"
    run "kiln no-op" "${kiln_pack[@]}" "$b/kiln/gemma:4b"
    rm -rf "$work/cache"
    run "kiln pull" "$kiln" pull gemma3:4b --source-registry "$source" --cache-dir "$work/cache" --progress quiet
    # Alternate which of the two compared runs goes first: load drifts.
    if ((round % 2)); then skopeo_copy; kiln_first; else kiln_first; skopeo_copy; fi
    rm -rf "$work/cache/layers"
    run "kiln rehash" "${kiln_pack[@]}" "$e/kiln/gemma:4b"
    stop_registries
done

median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" $1; }
printf '\n%-12s %9s %9s %9s   %s\n' "run" "median s" "CPU s" "max RSS" "all runs (s)"
for name in "kiln cold" "kiln pull" "kiln first" "kiln rehash" "skopeo copy" "kiln no-op"; do
    printf '%-12s %9.2f %9.2f %6s MB   %s\n' "$name" "$(median "${times[$name]}")" "$(median "${cpu[$name]}")" \
        "$(median "${rss[$name]}" | cut -d. -f1)" "${times[$name]}"
done
m() { median "${times[$1]}"; }
printf '\nkiln first / skopeo copy = %s (target <= 0.8)\n' \
    "$(python3 -c "print(f'{$(m "kiln first") / $(m "skopeo copy"):.2f}')")"
printf 'kiln cold / (kiln pull + skopeo copy) = %s (target <= 1.1)\n' \
    "$(python3 -c "print(f'{$(m "kiln cold") / ($(m "kiln pull") + $(m "skopeo copy")):.2f}')")"
printf 'kiln rehash / skopeo copy = %s\n' \
    "$(python3 -c "print(f'{$(m "kiln rehash") / $(m "skopeo copy"):.2f}')")"
printf '(size %s bytes, %s rounds, %s)\n' "$SIZE" "$ROUNDS" \
    "$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
