#!/usr/bin/env bash
# Pull benchmark: `kiln pull` of a >= 1 GiB blob from a loopback docker-registry,
# next to curl of the same blob in the same run (interleaved, several rounds).
#
#   bench/pull/run.sh                 # 1 GiB, 3 rounds
#   SIZE=$((2<<30)) ROUNDS=5 bench/pull/run.sh
#   SKIP_BUILD=1 bench/pull/run.sh    # use the release binaries already built
#
# Reported: median throughput of
#   curl            curl -o FILE (no digest check: the baseline to beat)
#   curl+sha256sum  curl | tee FILE | sha256sum (a single stream with the check)
#   kiln            kiln pull with its defaults (1 connection for a loopback registry,
#                   sha256 verified while streaming, atomic rename into the cache)
#   kiln -p4        kiln pull --parallel 4
#   kiln -p16       kiln pull --parallel 16 (the default for remote registries)
# and kiln / curl. Not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh

SIZE=${SIZE:-1073741824}
ROUNDS=${ROUNDS:-3}
command -v curl >/dev/null || die "curl not found; apt-get install -y curl"
command -v docker-registry >/dev/null || die "docker-registry not found; run scripts/setup"

if [ -z "${SKIP_BUILD:-}" ]; then
    say "building kiln and kiln-testkit (release)"
    cargo build --release --locked -q -p kiln -p kiln-testkit
fi
kiln=./target/release/kiln

work=$(mktemp -d /tmp/kiln-bench-pull.XXXXXX)
coproc REGISTRY { exec ./target/release/kiln-testkit --model library/gemma3:4b --weights-size "$SIZE"; }
trap 'exec {REGISTRY[1]}>&-; wait; rm -rf "$work"' EXIT
say "seeding a $SIZE-byte model (takes a while)"
read -r url <&"${REGISTRY[0]}"
manifest=$(curl -fsS -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' "$url/v2/library/gemma3/manifests/4b")
digest=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["layers"][0]["digest"])' "$manifest")
blob="$url/v2/library/gemma3/blobs/$digest"
say "registry $url, weights $digest"

now() { date +%s.%N; }
mbps() { python3 -c "import sys; print(f'{$SIZE / (float(sys.argv[1])) / 1e6:.0f}')" "$1"; }

declare -A times cpus
# CPU seconds (user + sys) of this shell's finished children, from a `times` dump.
child_cpu() {
    python3 - "$1" <<'PY'
import re, sys
children = open(sys.argv[1]).read().splitlines()[-1]
print(sum(int(m) * 60 + float(s) for m, s in re.findall(r"(\d+)m([\d.]+)s", children)))
PY
}
run() { # name command...
    local name=$1; shift
    sync
    local t0 t1
    times >"$work/times0"
    t0=$(now)
    "$@"
    t1=$(now)
    times >"$work/times1"
    times[$name]+="$(python3 -c "print(f'{$t1 - $t0:.2f}')") "
    cpus[$name]+="$(python3 -c "print(f'{$(child_cpu "$work/times1") - $(child_cpu "$work/times0"):.2f}')") "
}

curl_plain() { curl -fsS -o "$work/curl.bin" "$blob"; rm -f "$work/curl.bin"; }
curl_sha() {
    local got
    got=$(curl -fsS "$blob" | tee "$work/curl.bin" | sha256sum | cut -d' ' -f1)
    [ "sha256:$got" = "$digest" ] || die "curl+sha256sum: digest mismatch"
    rm -f "$work/curl.bin"
}
kiln_pull() { # extra flags...
    rm -rf "$work/cache"
    "$kiln" pull gemma3:4b --source-registry "$url" --cache-dir "$work/cache" --progress quiet "$@" >/dev/null
    rm -rf "$work/cache"
}

for round in $(seq "$ROUNDS"); do
    say "round $round/$ROUNDS"
    run curl curl_plain
    run kiln kiln_pull
    run curl+sha256sum curl_sha
    run kiln-p4 kiln_pull --parallel 4
    run kiln-p16 kiln_pull --parallel 16
done

median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" $1; }
printf '\n%-16s %10s %10s %12s   %s\n' "client" "median s" "MB/s" "median CPU s" "all runs (s)"
for name in curl curl+sha256sum kiln kiln-p4 kiln-p16; do
    m=$(median "${times[$name]}")
    printf '%-16s %10.2f %10s %12.2f   %s\n' "$name" "$m" "$(mbps "$m")" "$(median "${cpus[$name]}")" "${times[$name]}"
done
ratio=$(python3 -c "print(f'{$(median "${times[curl]}") / $(median "${times[kiln]}") * 100:.0f}')")
printf '\nkiln throughput = %s%% of curl (size %s bytes, %s rounds, %s, load average %s)\n' \
    "$ratio" "$SIZE" "$ROUNDS" "$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores" "$(cut -d' ' -f1-3 /proc/loadavg)"
