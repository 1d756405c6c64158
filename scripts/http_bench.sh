#!/bin/bash
# HTTP beside the anchor (../shared/anchors/http/nginx-lua.conf, nginx + Lua), same machine,
# same wrk settings, alternated for REPS rounds:
#   nginx+lua   GET /hello?name=Ann        (content_by_lua: "Hello, NAME!")
#   wippy       GET /hello?name=Ann        (examples/http-hello: a Lua handler process per request)
#   wippy-svc   POST /api/count            (examples/http-workers: the handler asks a service
#                                           process and waits for its reply)
#   wippy-404   GET /nothere               (examples/http-hello: the router's 404, no Lua: what
#                                           hyper, tokio and the kernel cost alone)
# Prints requests/s, p50 and p99 latency, the server's RSS at the end of each run, and the
# server's CPU time per request (user and system, from /proc; wrk shares the machine, so the
# rate is what is left of two cores once wrk has its share, and CPU per request is the
# steadier figure).
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
pids() { # the server's processes (nginx: its master and workers)
    if [ "$1" = nginx ]; then pgrep -x nginx; else echo "$1"; fi
}
rss() { # kB of the server
    pids "$1" | while read -r p; do ps -o rss= -p "$p"; done | awk '{s+=$1} END {print s}'
}
ticks() { # user and system clock ticks the server has used
    pids "$1" | while read -r p; do awk '{print $14, $15}' "/proc/$p/stat"; done | awk '{u+=$1; s+=$2} END {print u, s}'
}
hz=$(getconf CLK_TCK)
run() { # name url pid [wrk args]
    local name=$1 url=$2 pid=$3; shift 3
    local before after; before=$(ticks "$pid")
    local out; out=$(wrk -t2 -c64 -d"$dur" --latency "$@" "$url")
    after=$(ticks "$pid")
    local rps p50 p99 n
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    local cpu; cpu=$(echo "$before $after" | awk -v n="$n" -v hz="$hz" '{printf "user %5.2f sys %5.2f", ($3-$1)*1e6/hz/n, ($4-$2)*1e6/hz/n}')
    printf "%-10s %12s req/s  p50 %8s  p99 %8s  rss %6d kB  us/req: %s\n" "$name" "$rps" "$p50" "$p99" "$(rss "$pid")" "$cpu"
}
for i in $(seq "$reps"); do
    echo "== round $i"
    run nginx+lua 'http://127.0.0.1:18080/hello?name=Ann' nginx
    run wippy 'http://127.0.0.1:8080/hello?name=Ann' $hello
    run wippy-svc 'http://127.0.0.1:8081/api/count' $workers -s "$post"
    run wippy-404 'http://127.0.0.1:8080/nothere' $hello
done
