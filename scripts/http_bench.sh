#!/bin/bash
# HTTP beside the anchor (../shared/anchors/http/nginx-lua.conf, nginx + Lua), same machine,
# same wrk settings, alternated for REPS rounds:
#   nginx+lua   GET /hello?name=Ann        (content_by_lua: "Hello, NAME!")
#   wippy       GET /hello?name=Ann        (examples/http-hello: a Lua handler process per request)
#   wippy-svc   POST /api/count            (examples/http-workers: the handler asks a service
#                                           process and waits for its reply)
# Prints requests/s, p50 and p99 latency, and the server's RSS at the end of each run.
#
#   scripts/http_bench.sh [REPS] [DURATION]     e.g. scripts/http_bench.sh 3 10s
set -euo pipefail
reps=${1:-3} dur=${2:-10s}
root=$(cd "$(dirname "$0")/.." && pwd)
anchor=$(cd "$root/../shared/anchors/http" && pwd)
bin="$root/target/release/wippy"
[ -x "$bin" ] || (cd "$root" && cargo build --release -q)
mkdir -p /tmp/anchor-nginx
nginx -p /tmp/anchor-nginx -c "$anchor/nginx-lua.conf" -s stop 2>/dev/null || true
sleep 0.5
nginx -p /tmp/anchor-nginx -c "$anchor/nginx-lua.conf"
"$bin" run -d "$root/examples/http-hello" 2>/dev/null &
hello=$!
"$bin" run -d "$root/examples/http-workers" 2>/dev/null &
workers=$!
trap 'kill $hello $workers 2>/dev/null; nginx -p /tmp/anchor-nginx -c "$anchor/nginx-lua.conf" -s stop 2>/dev/null || true' EXIT
post=$(mktemp --suffix=.lua)
echo 'wrk.method = "POST"' > "$post"
for _ in $(seq 50); do
    curl -sf 'http://127.0.0.1:18080/hello?name=Ann' >/dev/null && curl -sf 'http://127.0.0.1:8080/hello?name=Ann' >/dev/null \
        && curl -sf -X POST http://127.0.0.1:8081/api/count >/dev/null && break
    sleep 0.1
done
rss() { # kB of the process (nginx: all of its workers)
    if [ "$1" = nginx ]; then ps -C nginx -o rss= | awk '{s+=$1} END {print s}'; else ps -o rss= -p "$1"; fi
}
run() { # name url pid [wrk args]
    local name=$1 url=$2 pid=$3; shift 3
    local out; out=$(wrk -t2 -c64 -d"$dur" --latency "$@" "$url")
    local rps p50 p99
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    printf "%-10s %12s req/s  p50 %8s  p99 %8s  rss %6d kB\n" "$name" "$rps" "$p50" "$p99" "$(rss "$pid")"
}
for i in $(seq "$reps"); do
    echo "== round $i"
    run nginx+lua 'http://127.0.0.1:18080/hello?name=Ann' nginx
    run wippy 'http://127.0.0.1:8080/hello?name=Ann' $hello
    run wippy-svc 'http://127.0.0.1:8081/api/count' $workers -s "$post"
done
