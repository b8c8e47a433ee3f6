#!/usr/bin/env bash
# kiln-proxy next to nginx, the reverse proxy a user would otherwise put in
# front of Ollama, in one run on this machine:
#
#   bench/proxy/vs-nginx.sh                 # 3 interleaved rounds of 4 s per row
#   ROUNDS=5 SECONDS_PER_RUN=8 bench/proxy/vs-nginx.sh
#   BASELINE_PROXY=/tmp/kiln-proxy-old bench/proxy/vs-nginx.sh   # adds rows for another build
#   BASELINE_PLUGINS=/tmp/old-plugins ...                         # and its plugin files (default: the same)
#
# The upstream is nginx answering every request with a fixed, small /api/chat
# JSON (`return 200`, worker_processes 1), so the proxies are measured, not a
# model. wrk (-t1 -c64) POSTs a small non-streaming /api/chat body to:
#   nginx        nginx proxy_pass (worker_processes 1, upstream keepalive 64, no access log)
#   kiln         kiln-proxy, no plugins (limits raised so nothing queues)
#   kiln+3       kiln-proxy with api-key, model-allowlist and token-cap (the quickstart's policy)
#   base, base+3 the same two with the kiln-proxy binary BASELINE_PROXY, when set
#                (to compare two builds in one run on a shared machine)
# Reported per row: median requests/s over the rounds and its ratio to nginx's
# in the same round, median p99, non-2xx answers, and each proxy's CPU time
# (user + system) per request. Not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh

ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-4}
CONNECTIONS=${CONNECTIONS:-64}

apt_ensure nginx wrk
command -v nginx >/dev/null || PATH=$PATH:/usr/sbin
say "building kiln-proxy (release) and the plugins"
cargo build --release --locked -p kiln-proxy -q
scripts/build-plugins >/dev/null 2>&1 || die "scripts/build-plugins failed; run it for details"

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up_port=$(free_port); nginx_port=$(free_port); kiln_port=$(free_port); kiln3_port=$(free_port)
base_port=$(free_port); base3_port=$(free_port)
baseline=${BASELINE_PROXY:-}
[ -z "$baseline" ] || [ -x "$baseline" ] || die "BASELINE_PROXY=$baseline is not an executable"

answer='{"model":"gemma3:4b","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":"The sky is blue."},"done":true,"done_reason":"stop","total_duration":1000,"load_duration":10,"prompt_eval_count":9,"prompt_eval_duration":100,"eval_count":5,"eval_duration":500}'
nginx_conf() { # nginx_conf NAME SERVER_BLOCK
    mkdir -p "$work/$1"
    cat >"$work/$1/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/$1/nginx.pid;
error_log $work/$1/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/$1/body;
    proxy_temp_path $work/$1/proxy;
    fastcgi_temp_path $work/$1/fastcgi;
    uwsgi_temp_path $work/$1/uwsgi;
    scgi_temp_path $work/$1/scgi;
    $2
}
EOF
    nginx -c "$work/$1/nginx.conf" -p "$work/$1" &
    pids+=($!)
}
nginx_conf upstream "server { listen 127.0.0.1:$up_port; keepalive_requests 1000000;
        location / { default_type application/json; return 200 '$answer'; } }"
nginx_conf proxy "upstream ollama { server 127.0.0.1:$up_port; keepalive 64; }
    server { listen 127.0.0.1:$nginx_port; keepalive_requests 1000000;
        location / { proxy_pass http://ollama; proxy_http_version 1.1; proxy_set_header Connection \"\";
                     proxy_set_header Host localhost; } }"
nginx_pid=${pids[-1]}

key=bench-key-0123456789
key_sha=$(printf %s "$key" | sha256sum | cut -d' ' -f1)
plugins_toml() { # plugins_toml DIR: the quickstart's policy with the plugin files of DIR
    cat <<EOF
[[plugins]]
name = "api-key"
path = "$1/api_key.wasm"
[plugins.config]
keys = [{ name = "bench", sha256 = "$key_sha" }]

[[plugins]]
name = "model-allowlist"
path = "$1/model_allowlist.wasm"
[plugins.config]
allow = ["gemma3:4b"]

[[plugins]]
name = "token-cap"
path = "$1/token_cap.wasm"
[plugins.config]
max_tokens = 512
EOF
}
plugins_toml "$PWD/target/plugins" >"$work/plugins.toml"
plugins_toml "${BASELINE_PLUGINS:-$PWD/target/plugins}" >"$work/base-plugins.toml"
: >"$work/empty.toml"
start_kiln() { # start_kiln PORT CONFIG [BINARY]; its pid in $started
    KILN_LISTEN=127.0.0.1:$1 KILN_UPSTREAM=http://127.0.0.1:$up_port \
        KILN_LIMITS_MAX_IN_FLIGHT=4096 KILN_LIMITS_MAX_QUEUE=4096 RUST_LOG=warn \
        KILN_PLUGIN_CACHE_DIR="$work/cache" \
        "${3:-target/release/kiln-proxy}" --config "$2" >"$work/kiln-$1.log" 2>&1 &
    # Not in a $(…) subshell: the pid must reach `pids` for the cleanup.
    started=$!
    pids+=("$started")
}
start_kiln "$kiln_port" "$work/empty.toml"; kiln_pid=$started
start_kiln "$kiln3_port" "$work/plugins.toml"; kiln3_pid=$started
kiln_ports="$kiln_port $kiln3_port"
rows=("nginx $nginx_port $nginx_pid" "kiln $kiln_port $kiln_pid" "kiln+3 $kiln3_port $kiln3_pid")
if [ -n "$baseline" ]; then
    start_kiln "$base_port" "$work/empty.toml" "$baseline"; base_pid=$started
    start_kiln "$base3_port" "$work/base-plugins.toml" "$baseline"; base3_pid=$started
    kiln_ports="$kiln_ports $base_port $base3_port"
    rows+=("base $base_port $base_pid" "base+3 $base3_port $base3_pid")
fi
for port in $up_port $nginx_port; do
    for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.05; done
done
for port in $kiln_ports; do
    for _ in $(seq 200); do curl -sf -o /dev/null "http://127.0.0.1:$port/healthz/ready" && break; sleep 0.05; done
    curl -sf -o /dev/null "http://127.0.0.1:$port/healthz/ready" || die "kiln-proxy on $port did not become ready: $(cat "$work/kiln-$port.log")"
done

cat >"$work/chat.lua" <<EOF
wrk.method = "POST"
wrk.body = '{"model":"gemma3:4b","messages":[{"role":"user","content":"Why is the sky blue?"}],"stream":false}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"
EOF
# Check the plugin row is really guarded (no key: 401) and answers with one.
status=$(curl -s -o /dev/null -w '%{http_code}' -d '{"model":"gemma3:4b","messages":[]}' "http://127.0.0.1:$kiln3_port/api/chat")
[ "$status" = 401 ] || die "the plugin row answered $status without a key; expected 401"

cpu_ticks() { # user + system ticks of a process and its children (nginx's workers)
    local t=0 p
    for p in "$1" $(pgrep -P "$1"); do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
    echo "$t"
}
hz=$(getconf CLK_TCK)
results=$work/results
: >"$results"
run_row() { # run_row ROUND NAME PORT [PID]
    local out ticks0=0 ticks1=0
    [ -n "${4:-}" ] && ticks0=$(cpu_ticks "$4")
    out=$(wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency -s "$work/chat.lua" "http://127.0.0.1:$3/api/chat")
    [ -n "${4:-}" ] && ticks1=$(cpu_ticks "$4")
    WRK_OUT=$out python3 - "$1" "$2" "$((ticks1 - ticks0))" "$hz" >>"$results" <<'PY'
import os, re, sys
out = os.environ["WRK_OUT"]
rnd, name, ticks, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
reqs = int(re.search(r"(\d+) requests in", out).group(1))
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m|h)$", v)
    if not m:
        sys.exit(f"{name}: cannot read wrk's p99 {v!r}:\n{out}")
    n, unit = m.groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}[unit]
p99 = ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
errs = re.search(r"Socket errors:.*", out)
cpu_us = ticks * 1e6 / hz / reqs if ticks else 0
print(rnd, name, rps, p99, int(bad.group(1)) if bad else 0, cpu_us, (errs.group(0) if errs else "").replace(" ", "_") or "-")
PY
}
for round in $(seq "$ROUNDS"); do
    say "round $round of $ROUNDS"
    # Rotate the order every round, so a slow moment of the machine does not land on one row.
    for k in "${!rows[@]}"; do
        # shellcheck disable=SC2086
        run_row "$round" ${rows[$(((k + round) % ${#rows[@]}))]}
    done
done

python3 - "$results" "$(nproc)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for rnd, name, rps, p99, bad, cpu, errs in rows:
    by.setdefault(name, {})[rnd] = (float(rps), float(p99), int(bad), float(cpu), errs)
nginx = by["nginx"]
print(f"\nkiln-proxy vs nginx, wrk -t1 -c64, small non-streaming /api/chat, {len(nginx)} rounds; {sys.argv[2]} cores, {sys.argv[3]}\n")
print("| path | req/s (median) | ratio to nginx (median of rounds) | with plugins / without (median of rounds) | p99 ms (median) | non-2xx | proxy CPU per request |")
print("|---|---|---|---|---|---|---|")
for name in ["nginx", "kiln", "kiln+3", "base", "base+3"]:
    if name not in by:
        continue
    r = by[name]
    rps = statistics.median(v[0] for v in r.values())
    ratio = statistics.median(r[k][0] / nginx[k][0] for k in r)
    # The plugin row over the same build without plugins, in the same round.
    plain = by.get(name[:-2]) if name.endswith("+3") else None
    vs_plain = f"{statistics.median(r[k][0] / plain[k][0] for k in r):.2f}×" if plain else "–"
    p99 = statistics.median(v[1] for v in r.values())
    bad = sum(v[2] for v in r.values())
    cpu = statistics.median(v[3] for v in r.values())
    cpu_s = f"{cpu:.1f} µs"
    print(f"| {name} | {rps:,.0f} | {ratio:.2f}× | {vs_plain} | {p99:.2f} | {bad} | {cpu_s} |")
PY
