#!/bin/bash
# Alternate two builds of wippy-bench on one benchmark and compare the means of its first
# rate (or bytes-per-process) figure: consecutive runs of one binary swing too much on a
# shared machine for one run of each to tell them apart.
#
#   scripts/ab.sh BENCH RUNS BINARY_A BINARY_B     e.g. scripts/ab.sh lua-ring 10 /tmp/a /tmp/b
set -euo pipefail
if [ $# -ne 4 ]; then
    echo "usage: $0 BENCH RUNS BINARY_A BINARY_B" >&2
    exit 2
fi
bench=$1 runs=$2 a=$3 b=$4
figure() { "$1" "$bench" | grep -E '_rate:|per_process:' | head -1 | awk '{print $2}'; }
for _ in $(seq "$runs"); do
    echo "$(figure "$a") $(figure "$b")"
done | awk '{ print; sa += $1; sb += $2; n++ }
    END { printf "mean A %.0f  B %.0f  B/A %.3f\n", sa / n, sb / n, (sb / n) / (sa / n) }'
