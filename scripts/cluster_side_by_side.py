#!/usr/bin/env python3
"""wippy's cluster beside Erlang distribution (../shared/anchors/erlang/dist.erl), interleaved,
every run fresh OS processes; prints a Markdown table of medians (min-max).

    python3 scripts/cluster_side_by_side.py --reps 5

Build first: `cargo build --release -p wippy-bench`; needs `nats-server` and `erl`/`erlc` on
PATH (the Erlang anchor is compiled into a temporary directory here).
"""
import argparse, os, socket, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from side_by_side import run_one  # noqa: E402  (one reader of `name: value` lines)

ROWS = [  # (wippy metric, erlang metric, unit, label)
    ("cluster_pingpong_rate", "dist_pingpong_rate", "round trips/s", "ping-pong across nodes"),
    ("cluster_stream_rate", "dist_stream_rate", "msgs/s", "stream a -> b"),
    ("nats_pingpong_rate", "dist_pingpong_rate", "round trips/s", "the transport alone: async-nats ping-pong"),
    ("nats_raw_pingpong_rate", "dist_pingpong_rate", "round trips/s", "the transport alone: NATS wire on two blocking sockets"),
    ("down_kill_ms", "dist_down_ms", "ms", "node down after kill -9"),
    ("down_stop_ms", None, "ms", "node down after SIGSTOP"),
    ("consistent_register_us", None, "us", "CONSISTENT register (each)"),
    ("consistent_lookup_rate", None, "lookups/s", "CONSISTENT lookup (replica)"),
    ("eventual_lookup_rate", None, "lookups/s", "EVENTUAL lookup (replica)"),
]


def wippy(bench, rep):
    r = run_one("wippy", "cluster", rep, [bench, "cluster"]) or {}
    r.update(run_one("wippy", "nats-pingpong", rep, [bench, "nats-pingpong"]) or {})
    return r


def erlang(beam, rep):
    host = socket.gethostname().split(".")[0]
    tag = str(os.getpid()) + str(time.time_ns() % 100000)
    b = subprocess.Popen(["erl", "-noshell", "-sname", "b" + tag, "-setcookie", "anchors", "-pa", beam], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):  # until node b answers a ping (upper bound 10 s)
            r = subprocess.run(["erl", "-noshell", "-sname", "p" + tag, "-setcookie", "anchors", "-eval",
                                f"io:format(\"~p\", [net_adm:ping('b{tag}@{host}')]), halt()."], capture_output=True, text=True)
            if "pong" in r.stdout:
                break
        argv = ["erl", "-noshell", "-sname", "a" + tag, "-setcookie", "anchors", "-pa", beam, "-s", "dist", "main", f"b{tag}@{host}"]
        return run_one("erlang", "dist", rep, argv) or {}
    finally:
        b.kill()


def cell(vals):
    if not vals:
        return "-"
    med = statistics.median(vals)
    return f"{med:,.1f} ({min(vals):,.1f}-{max(vals):,.1f})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--bench", default="target/release/wippy-bench")
    args = ap.parse_args()
    beam = tempfile.mkdtemp()
    subprocess.run(["erlc", "-o", beam, os.path.join(os.path.dirname(__file__), "../../shared/anchors/erlang/dist.erl")], check=True)
    w, e = [], []
    for i in range(args.reps):
        w.append(wippy(args.bench, i))
        e.append(erlang(beam, i))
        print(f"rep {i + 1}/{args.reps}", file=sys.stderr)
    print("| metric | unit | wippy (NATS) | Erlang distribution | wippy / Erlang |")
    print("|---|---|---|---|---|")
    for wm, em, unit, label in ROWS:
        wv = [r[wm] for r in w if wm in r]
        ev = [r[em] for r in e if em and em in r]
        ratio = f"{statistics.median(wv) / statistics.median(ev):.2f}" if wv and ev and statistics.median(ev) else "-"
        print(f"| {label} | {unit} | {cell(wv)} | {cell(ev)} | {ratio} |")


if __name__ == "__main__":
    main()
