//! `exec` (Wippy's `exec.native` and the `exec` module): OS commands with a clean
//! environment, streams, stdin, signals, exact-command allowlists, and no child left
//! behind by the Lua process that made it.

mod common;

use std::process::Command;

const PROJECT: &str = r#"
version: "1.0"
namespace: app
entries:
  - name: terminal
    kind: terminal.host
    lifecycle:
      auto_start: true
  - name: shell
    kind: exec.native
    default_env:
      GREETING: hi
  - name: locked
    kind: exec.native
    command_whitelist: ["echo allowed"]
  - name: main
    kind: process.lua
    meta:
      command: {name: check}
    modules: [exec, io]
    method: main
    source: |
      local exec = require("exec")
      local function all(st)
        local o = {}
        while true do local c = st:read() if not c then break end o[#o + 1] = c end
        return table.concat(o)
      end
      return { main = function()
        local ex = assert(exec.get("app:shell"))
        -- a clean environment: the executor's and the call's variables only
        local p = assert(ex:exec("sh -c 'echo out $GREETING $EXTRA $HOME; echo err 1>&2; exit 3'", { env = { EXTRA = "x" } }))
        local out, errs = p:stdout_stream(), p:stderr_stream()
        assert(p:start())
        assert(all(out) == "out hi x\n" and all(errs) == "err\n")
        assert(p:wait() == 3)
        local _, again = p:start()
        assert(again:kind() == errors.INVALID)
        -- stdin
        local h = assert(ex:exec("head -n 2"))
        local hs = h:stdout_stream()
        assert(h:start())
        assert(h:write_stdin("a\nb\nc\n"))
        assert(all(hs) == "a\nb\n" and h:wait() == 0)
        -- a signal; then the handle is closed
        local s = assert(ex:exec("sleep 30"))
        assert(s:start())
        assert(s:signal(9) and s:wait() == -1)
        assert(s:close() and select(2, s:wait()):message() == "process closed")
        -- bad commands
        assert(select(2, ex:exec("echo 'open")):message() == "unclosed quote in command")
        assert(select(2, ex:exec("no-such-binary-x")):kind() == errors.NOT_FOUND)
        assert(select(2, ex:exec("echo", { pty = {} })):kind() == errors.INVALID)
        local lk = assert(exec.get("app:locked"))
        assert(select(2, lk:exec("echo nope")):kind() == errors.INVALID)
        local ok = assert(lk:exec("echo allowed"))
        local os_ = ok:stdout_stream()
        ok:start()
        assert(all(os_) == "allowed\n" and ok:wait() == 0)
        assert(select(2, exec.get("app:none")):kind() == errors.NOT_FOUND)
        -- left running: killed when this process ends
        local bg = assert(ex:exec("sleep 77.5"))
        assert(bg:start())
        io.print("exec ok")
        return 0
      end }
"#;

#[test]
fn exec_runs_os_commands_without_a_shell_and_reaps_them() {
    let out = common::run_project("exec", &[("src/_index.yaml", PROJECT)], &["run", "check"]);
    assert_eq!(out.trim(), "exec ok");
    // the node has exited: `sleep 77.5` was killed with the process that started it (the
    // wait is for the kernel to finish the kill, not a synchronisation of ours)
    let alive = || Command::new("pgrep").args(["-f", "sleep 77.5"]).output().map(|o| o.status.success()).unwrap_or(false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while alive() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!alive(), "the child outlived the process that made it");
}
