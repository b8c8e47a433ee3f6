#!/usr/bin/env bash
# How long the example policy plugins take on large request bodies, by number of
# JSON values and by bytes: the figures behind the defaults of
# [limits] plugin_max_json_values and plugin_max_body_bytes (docs/PLUGINS.md).
# Each cell is the best of 5 `kiln-proxy plugin run` calls (instantiation,
# copying the body in, the plugin's work and the decision; deadline lifted).
#
# Usage: bench/plugin-body-size/run.sh     (after scripts/build-plugins and
#        cargo build --release -p kiln-proxy)
set -euo pipefail
cd "$(dirname "$0")/../.."
proxy=target/release/kiln-proxy
plugins=target/plugins
[ -x "$proxy" ] || { echo "build it first: cargo build --release -p kiln-proxy" >&2; exit 1; }
[ -f "$plugins/prompt_guard.wasm" ] || { echo "build the plugins first: scripts/build-plugins" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export KILN_PLUGIN_DEADLINE_MS=10000 KILN_PLUGIN_CACHE_DIR="$work/cache"

python3 - "$work" <<'PY'
import json, sys
out = sys.argv[1]
def write(name, body):
    json.dump({"path": "/api/chat", "headers": {}, "body": body}, open(f"{out}/{name}.json", "w"))
for n in (5_000, 20_000, 50_000, 150_000):   # JSON values: 3 per one-character message
    write(f"values-{n}", {"model": "gemma3:4b", "messages": [{"role": "user", "content": "a"}] * (n // 3)})
for mib in (1, 2, 4, 8):                     # bytes: one long prompt
    text = "hello world, this is a long prompt. " * (mib * 1024 * 1024 // 36)
    write(f"bytes-{mib}MiB", {"model": "gemma3:4b", "messages": [{"role": "user", "content": text}]})
PY

declare -A config=(
    [api_key]='{"keys":["k"]}'
    [prompt_guard]='{"deny":["ignore previous instructions"]}'
    [system_prompt]='{"prompt":"Be brief."}'
    [token_cap]='{"max_tokens":64}'
)
printf '%-14s' body; for p in api_key prompt_guard system_prompt token_cap; do printf '%15s' "$p"; done; echo
for body in values-5000 values-20000 values-50000 values-150000 bytes-1MiB bytes-2MiB bytes-4MiB bytes-8MiB; do
    printf '%-14s' "$body"
    for p in api_key prompt_guard system_prompt token_cap; do
        best=
        for _ in 1 2 3 4 5; do
            # grep stops reading at the first match: the proxy's write of a
            # rewritten body may then end with SIGPIPE, which is expected.
            us=$({ "$proxy" plugin run "$plugins/$p.wasm" --plugin-config "${config[$p]}" \
                --request "$work/$body.json" 2>/dev/null || true; } | grep -m1 '"elapsed_us"' | tr -dc 0-9)
            [ -z "$best" ] || [ "$us" -lt "$best" ] && best=$us
        done
        awk -v us="$best" 'BEGIN { printf "%12.1f ms", us / 1000 }'
    done
    echo
done
