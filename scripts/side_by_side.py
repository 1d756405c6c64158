#!/usr/bin/env python3
"""Run wippy-bench beside the anchor programs (../shared/anchors), interleaved, and print
a Markdown table of medians (min-max). Every run is a fresh OS process.

    python3 scripts/side_by_side.py --reps 3 [--benches spawn,pingpong] \
        [--erlang-beam DIR] [--actix PATH] [--lua]

With --lua, a "wippy-lua" column runs the Lua variants (`wippy-bench lua-<bench>`, metrics
prefixed `lua_`) for spawn, memory, pingpong, ring and cpu, plus `lua-memory-isolated`.
`cpu` runs only for wippy-lua (1- and 2-worker hosts in one process) and Erlang (`erl +S 1`
and `+S 2`, one process each).

Build first: `cargo build --release -p wippy-bench`; the Erlang anchor with
`erlc -o DIR ../shared/anchors/erlang/bench.erl`; actix (mimalloc) with
`CARGO_TARGET_DIR=DIR cargo build --release --locked -p anchors-actix
--features anchors-common/mimalloc` inside ../shared/anchors. Systems whose program is
missing are skipped.
"""
import argparse, os, re, statistics, subprocess, sys

BENCHES = ["spawn", "memory", "pingpong", "ring", "fanin", "skynet", "cpu"]
ROWS = [  # (bench, metric, unit, label)
    ("spawn", "spawn_rate", "spawns/s", "spawn 1M: rate"),
    ("spawn", "peak_rss", "KiB", "spawn 1M: peak RSS"),
    ("memory", "mem_rss_per_process", "bytes", "memory 100k: RSS / parked process"),
    ("pingpong", "pingpong_rate", "round trips/s", "ping-pong 1M: rate"),
    ("ring", "ring_rate", "hops/s", "ring 10k x 100: rate"),
    ("ring", "ring_setup", "ms", "ring 10k: setup"),
    ("fanin", "fanin_rate", "msgs/s", "fan-in 1000 x 1000: rate"),
    ("fanin", "peak_rss", "KiB", "fan-in: peak RSS"),
    ("skynet", "skynet_wall", "ms", "skynet 1M leaves: wall"),
    ("skynet", "peak_rss", "KiB", "skynet: peak RSS"),
    ("cpu", "cpu_wall_1", "ms", "cpu 2 x 120 jobs: wall, 1 worker (erl +S 1)"),
    ("cpu", "cpu_wall_2", "ms", "cpu 2 x 120 jobs: wall, 2 workers (erl +S 2)"),
    ("cpu", "cpu_speedup", "x", "cpu: speedup 1 -> 2 workers"),
]
LUA_BENCHES = ["spawn", "memory", "pingpong", "ring", "cpu"]
# Only these systems run `cpu` (the native wippy and actix benches have no such job set).
CPU_SYSTEMS = ["wippy-lua", "erlang"]
LINE = re.compile(r"^([A-Za-z0-9_]+): (\S+)")


def run_one(name, b, rep, argv):
    """Run one benchmark process; its `name: value` lines (lua_ prefixes dropped)."""
    p = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        print(f"# {name} {b} rep {rep}: exit {p.returncode}: {p.stderr[-300:]}", file=sys.stderr)
        return None
    out = {}
    for line in p.stdout.splitlines():
        m = LINE.match(line)
        if m:
            metric = re.sub(r"^lua_(isolated_)?", "", m.group(1))
            try:
                out[metric] = float(m.group(2))
            except ValueError:
                pass
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--benches", default=",".join(BENCHES))
    ap.add_argument("--erlang-beam", default="/tmp/erlbeam")
    ap.add_argument("--actix", default="/tmp/anchors-target/mimalloc/release/bench-actix")
    ap.add_argument("--lua", action="store_true")
    a = ap.parse_args()
    bench_bin = os.path.join(root, "target/release/wippy-bench")
    systems = {"wippy": [bench_bin]}
    if a.lua:
        systems["wippy-lua"] = [bench_bin]
        systems["wippy-lua-isolated"] = [bench_bin]
    if os.path.exists(os.path.join(a.erlang_beam, "bench.beam")):
        systems["erlang"] = ["erl", "-noshell", "+P", "4194304", "-pa", a.erlang_beam, "-s", "bench", "main"]
    if os.path.exists(a.actix):
        systems["actix-mimalloc"] = [a.actix]
    benches = a.benches.split(",")
    results = {}  # (system, bench, metric) -> [values]
    for rep in range(a.reps):
        for b in benches:
            for name, cmd in systems.items():
                arg = b
                if name == "wippy-lua":
                    if b not in LUA_BENCHES:
                        continue
                    arg = "lua-" + b
                elif name == "wippy-lua-isolated":
                    if b != "memory":
                        continue
                    arg = "lua-memory-isolated"
                if b == "cpu" and name not in CPU_SYSTEMS:
                    continue
                if b == "cpu" and name == "erlang":
                    # one run per scheduler count; the speedup is their ratio
                    walls = {}
                    for s in (1, 2):
                        out = run_one(name, b, rep, [cmd[0], "+S", str(s)] + cmd[1:] + [arg])
                        if out is not None:
                            walls[s] = out.get("cpu_wall")
                    for s, w in walls.items():
                        if w is not None:
                            results.setdefault((name, b, f"cpu_wall_{s}"), []).append(w)
                    if walls.get(1) and walls.get(2):
                        results.setdefault((name, b, "cpu_speedup"), []).append(walls[1] / walls[2])
                    continue
                out = run_one(name, b, rep, cmd + [arg])
                for metric, v in (out or {}).items():
                    results.setdefault((name, b, metric), []).append(v)
                print(f"# rep {rep} {b} {name} done", file=sys.stderr)
    names = list(systems)
    print("| benchmark | unit | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for b, metric, unit, label in ROWS:
        if b not in benches:
            continue
        cells = []
        for n in names:
            v = results.get((n, b, metric))
            if not v:
                cells.append("n/a")
                continue
            fmt = (lambda x: f"{x:,.0f}") if max(v) >= 100 else (lambda x: f"{x:,.1f}")
            cells.append(f"{fmt(statistics.median(v))} ({fmt(min(v))}–{fmt(max(v))}) n={len(v)}")
        print(f"| {label} | {unit} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
