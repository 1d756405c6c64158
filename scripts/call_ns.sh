#!/bin/bash
# Nanoseconds a call of json.encode, json.decode and process.pid() take inside a Lua
# process (the node's own code path, no HTTP): a throwaway project whose one process calls
# each in a loop and times it with os.clock. The document is 12 values:
# {id, name, tags[3], price, ok, nested{x, y}}.
#
#   scripts/call_ns.sh [BINARY ...]     (default target/release/wippy; several binaries are
#                                        run in turn, twice each, to compare on a noisy machine)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -gt 0 ] || set -- "$root/target/release/wippy"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src"
cat > "$work/src/_index.yaml" <<'YAML'
version: "1.0"
namespace: app
entries:
  - name: main
    kind: process.lua
    meta:
      command:
        name: calls
    source: file://main.lua
    method: main
    modules: [json, io]
YAML
cat > "$work/src/main.lua" <<'LUA'
local json = require("json")
local io = require("io")
local function ns(n, f)
  local t0 = os.clock()
  for _ = 1, n do f() end
  return (os.clock() - t0) / n * 1e9
end
local function main()
  local v = { id = 42, name = "widget", tags = { "a", "b", "c" }, price = 9.99, ok = true, nested = { x = 1, y = 2 } }
  local s = json.encode(v)
  io.print(string.format("json.encode %.0f ns  json.decode %.0f ns  process.pid %.0f ns",
    ns(200000, function() return json.encode(v) end),
    ns(200000, function() return json.decode(s) end),
    ns(1000000, function() return process.pid() end)))
end
return { main = main }
LUA
for _ in 1 2; do
    for bin in "$@"; do
        echo "$bin: $("$bin" run -d "$work" calls)"
    done
done
