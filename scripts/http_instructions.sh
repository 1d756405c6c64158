#!/bin/bash
# User-space instructions per HTTP request, counted rather than timed (valgrind's callgrind
# over the whole node, so repeatable on a noisy machine): the node is started under
# callgrind once with no load (its start and stop), once under `wrk -t1 -c4 -d10s`; the
# difference divided by the requests served.
#
#   scripts/http_instructions.sh [BINARY]      (default target/release/wippy)
#
# Needs valgrind and wrk (apt-get install -y valgrind wrk). Serves examples/http-hello on
# 127.0.0.1:8080.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/target/release/wippy}
url='http://127.0.0.1:8080/hello?name=Ann'
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
count() { # load(0|1) -> "instructions requests"
    local log=$work/vg.log n=0
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$bin" run -d "$root/examples/http-hello" >"$log" 2>&1 &
    local pid=$!
    for _ in $(seq 240); do curl -sf "$url" >/dev/null && break; sleep 0.5; done
    if [ "$1" = 1 ]; then
        n=$(wrk -t1 -c4 -d10s "$url" | awk '/requests in/ {print $1}')
    fi
    kill -INT "$pid"
    wait "$pid" || true
    echo "$(awk '/Collected/ {gsub(",", "", $4); print $4}' "$log") $((n + 1))"
}
read -r base _ < <(count 0)
read -r total n < <(count 1)
echo "requests: $((n - 1))  instructions: $total (start and stop alone: $base)"
echo "instructions per request: $(( (total - base) / (n - 1) ))"
