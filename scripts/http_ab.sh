#!/bin/bash
# Two builds of the node side by side on the hello endpoint: alternating, a fresh node each
# round, `wrk -t2 -c64 -d10s` against examples/http-hello (port 8080); prints requests/s and
# the node's user and system CPU per request (from /proc). On a shared machine the rate
# swings with the neighbours: compare the two binaries' medians over several rounds.
#
#   scripts/http_ab.sh ROUNDS BINARY_A BINARY_B
#
# e.g. build the older commit in a worktree with CARGO_TARGET_DIR=target-base, then
#   scripts/http_ab.sh 6 target-base/release/wippy target/release/wippy
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=$1
url='http://127.0.0.1:8080/hello?name=Ann'
for _ in $(seq "$rounds"); do
    for bin in "$2" "$3"; do
        "$bin" run -d "$root/examples/http-hello" >/dev/null 2>&1 &
        pid=$!
        for _ in $(seq 100); do curl -sf "$url" >/dev/null && break; sleep 0.1; done
        read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
        out=$(wrk -t2 -c64 -d10s "$url")
        read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
        kill -INT "$pid"
        wait "$pid" || true
        n=$(echo "$out" | awk '/requests in/ {print $1}')
        rate=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
        tick=$(getconf CLK_TCK)
        awk -v b="$bin" -v r="$rate" -v n="$n" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v t="$tick" \
            'BEGIN {printf "%-40s %9.0f req/s  user %.2f us/req  sys %.2f us/req\n", b, r, u * 1e6 / t / n, s * 1e6 / t / n}'
    done
done
