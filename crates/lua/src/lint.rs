//! `wippy lint`'s static checks of one Lua entry, read from the bytecode Lua itself
//! compiled (so nothing here parses Lua): what can be found cheaply and without false
//! alarms.
//!
//! - `require("name")` with a constant name that is neither a module the entry lists (or
//!   one always present) nor an import alias: an error (it raises at run time).
//! - `mod.fn` / `mod:fn` on a module global the entry may bind, where the module has no
//!   `fn` (`process.spwan`): an error.
//! - a global assigned at the top level of the chunk: a warning (globals are per process;
//!   a `local` says what is meant).
//!
//! Not caught: anything reached through a local alias (`local p = process; p.spwan()`),
//! computed names, fields of fields, types, unused variables.

use std::collections::HashMap;

use mlua::Lua;

use crate::catalog::LuaEntry;
use crate::chunk::{Cursor, HEADER};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One thing lint found in an entry's source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// The line in the entry's source (its file, or its inline text).
    pub line: u32,
    pub message: String,
}

/// The functions and fields of every module a process can bind (what `mod.fn` is checked
/// against), and the modules every process has.
pub struct Modules {
    pub fields: HashMap<String, Vec<String>>,
    pub always: Vec<String>,
}

impl Modules {
    /// What this runtime's modules offer, read from a shard VM as processes get it.
    pub fn of_runtime() -> Result<Modules, String> {
        let vm = crate::vm::sandbox::Vm::new(std::sync::Weak::new(), true).map_err(|e| e.to_string())?;
        let read = || -> mlua::Result<Modules> {
            // (the library parts a VM compiles on first use, compiled now to be listed)
            vm.lua.named_registry_value::<mlua::Function>("wippy.load_lazy")?.call::<()>(())?;
            let libs: mlua::Table = vm.lua.named_registry_value("wippy.libs")?;
            let mut fields = HashMap::new();
            for pair in libs.pairs::<String, mlua::Value>() {
                let (name, lib) = pair?;
                if name.starts_with('_') {
                    continue;
                }
                if let mlua::Value::Table(t) = lib {
                    let mut keys = Vec::new();
                    for p in t.pairs::<mlua::Value, mlua::Value>() {
                        if let (mlua::Value::String(k), _) = p? {
                            keys.push(k.to_string_lossy().to_string());
                        }
                    }
                    fields.insert(name, keys);
                }
            }
            let always: mlua::Table = vm.lua.named_registry_value("wippy.always")?;
            let mut names = Vec::new();
            for p in always.pairs::<String, mlua::Value>() {
                names.push(p?.0);
            }
            Ok(Modules { fields, always: names })
        };
        read().map_err(|e| e.to_string())
    }
}

/// A compiled function, as far as lint reads it.
struct Func {
    code: Vec<u32>,
    k: Vec<Option<String>>,
    upvalue_names: Vec<Option<String>>,
    lines: Vec<u32>,
    protos: Vec<Func>,
}

const OP_LOADK: u32 = 3;
const OP_GETTABUP: u32 = 11;
const OP_GETFIELD: u32 = 14;
const OP_SETTABUP: u32 = 15;
const OP_SELF: u32 = 20;
const OP_CALL: u32 = 68;

fn op(i: u32) -> u32 {
    i & 0x7f
}
fn a(i: u32) -> u32 {
    (i >> 7) & 0xff
}
fn k_flag(i: u32) -> bool {
    (i >> 15) & 1 == 1
}
fn b(i: u32) -> u32 {
    (i >> 16) & 0xff
}
fn c(i: u32) -> u32 {
    (i >> 24) & 0xff
}
fn bx(i: u32) -> u32 {
    i >> 15
}

impl<'a> Cursor<'a> {
    fn text(&mut self) -> Result<Option<&'a [u8]>, String> {
        let n = self.size()?;
        if n == 0 {
            return Ok(None);
        }
        let start = self.p;
        self.skip(n - 1)?;
        Ok(Some(&self.b[start..self.p]))
    }

    fn int(&mut self) -> Result<i64, String> {
        Ok(self.size()? as i64)
    }

    /// A whole function with what lint reads of it (ldump.c's order).
    fn func(&mut self, parent_line: u32) -> Result<Func, String> {
        self.text()?; // source
        let linedefined = self.int()? as u32;
        self.int()?; // lastlinedefined
        self.skip(3)?;
        let n = self.size()?;
        let mut code = Vec::with_capacity(n);
        for _ in 0..n {
            let mut w = [0u8; 4];
            for x in &mut w {
                *x = self.byte()?;
            }
            code.push(u32::from_le_bytes(w));
        }
        let mut k = Vec::new();
        for _ in 0..self.size()? {
            match self.byte()? {
                0x00 | 0x01 | 0x11 => k.push(None),
                0x03 | 0x13 => {
                    self.skip(8)?;
                    k.push(None)
                }
                0x04 | 0x14 => k.push(self.text()?.map(|t| String::from_utf8_lossy(t).into_owned())),
                t => return Err(format!("unknown constant tag {t:#x}")),
            }
        }
        let nup = self.size()?;
        self.skip(nup.checked_mul(3).ok_or("upvalue count overflows")?)?;
        let base = if linedefined == 0 { parent_line } else { linedefined };
        let mut protos = Vec::new();
        for _ in 0..self.size()? {
            protos.push(self.func(base)?);
        }
        // debug: per-instruction line deltas, absolute lines, locals, upvalue names
        let n = self.size()?;
        let mut deltas = Vec::with_capacity(n);
        for _ in 0..n {
            deltas.push(self.byte()? as i8);
        }
        let mut abs = Vec::new();
        for _ in 0..self.size()? {
            abs.push((self.size()?, self.int()?));
        }
        for _ in 0..self.size()? {
            self.text()?;
            self.size()?;
            self.size()?;
        }
        let mut upvalue_names = Vec::new();
        for _ in 0..self.size()? {
            upvalue_names.push(self.text()?.map(|t| String::from_utf8_lossy(t).into_owned()));
        }
        // luaG_getfuncline, walked once: an absolute entry (delta -0x80) resets the line
        let mut lines = Vec::with_capacity(deltas.len());
        let mut line = linedefined as i64;
        let mut next_abs = abs.iter().peekable();
        for (pc, d) in deltas.iter().enumerate() {
            if *d == -0x80 {
                while let Some((apc, l)) = next_abs.peek() {
                    if *apc < pc {
                        next_abs.next();
                    } else {
                        if *apc == pc {
                            line = *l;
                        }
                        break;
                    }
                }
            } else {
                line += *d as i64;
            }
            lines.push(line.max(0) as u32);
        }
        Ok(Func { code, k, upvalue_names, lines, protos })
    }
}

/// Lint one entry. `Err` when its source does not compile (the load error says so).
pub fn lint(entry: &LuaEntry, modules: &Modules) -> Result<Vec<Finding>, String> {
    let lua = Lua::new();
    let dump = crate::chunk::compile(&lua, &crate::compile::erase(&entry.source), &format!("@{}", entry.chunk_name))
        .map_err(|e| e.to_string())?;
    let mut cur = Cursor { b: &dump, p: HEADER + 1 };
    let main = cur.func(0)?;
    let mut findings = Vec::new();
    let allowed = |name: &str| {
        modules.always.iter().any(|m| m == name)
            || entry.modules.iter().any(|m| m == name)
            || entry.imports.iter().any(|(alias, _)| alias == name)
    };
    walk(&main, true, modules, &allowed, &mut findings);
    findings.sort_by_key(|f| f.line);
    findings.dedup();
    Ok(findings)
}

fn walk(f: &Func, top: bool, modules: &Modules, allowed: &dyn Fn(&str) -> bool, out: &mut Vec<Finding>) {
    let env = f.upvalue_names.iter().position(|n| n.as_deref() == Some("_ENV")).map(|i| i as u32);
    let kstr = |i: u32| f.k.get(i as usize).and_then(|k| k.as_deref());
    let line = |pc: usize| f.lines.get(pc).copied().unwrap_or(0);
    for (pc, &ins) in f.code.iter().enumerate() {
        match op(ins) {
            OP_GETTABUP if Some(b(ins)) == env => {
                let Some(global) = kstr(c(ins)) else { continue };
                let reg = a(ins);
                let next = f.code.get(pc + 1).copied();
                // require("name")
                if global == "require" {
                    let (Some(load), Some(call)) = (next, f.code.get(pc + 2).copied()) else { continue };
                    if op(load) == OP_LOADK && a(load) == reg + 1 && op(call) == OP_CALL && a(call) == reg {
                        if let Some(name) = kstr(bx(load)) {
                            if !allowed(name) {
                                out.push(Finding {
                                    severity: Severity::Error,
                                    line: line(pc),
                                    message: format!("require '{name}': not a module this entry lists in modules: nor an alias of its imports:"),
                                });
                            }
                        }
                    }
                    continue;
                }
                // mod.fn / mod:fn on a module the entry may bind
                let Some(fields) = modules.fields.get(global) else { continue };
                if !allowed(global) {
                    continue;
                }
                let Some(n) = next else { continue };
                let field = match op(n) {
                    OP_GETFIELD if b(n) == reg => kstr(c(n)),
                    OP_SELF if b(n) == reg && k_flag(n) => kstr(c(n)),
                    _ => None,
                };
                if let Some(field) = field {
                    if !fields.iter().any(|x| x == field) {
                        out.push(Finding {
                            severity: Severity::Error,
                            line: line(pc + 1),
                            message: format!("{global}.{field}: the {global} module has no {field}"),
                        });
                    }
                }
            }
            OP_SETTABUP if top && Some(a(ins)) == env => {
                // (`type X = …` is erased to `X = __wippy_type("X", …)` on its line: a declared
                // type, not a stray global)
                let declared_type = (0..pc).rev().take_while(|&q| line(q) == line(pc)).any(|q| op(f.code[q]) == OP_GETTABUP && kstr(c(f.code[q])) == Some("__wippy_type"));
                if let (Some(name), false) = (kstr(b(ins)), declared_type) {
                    out.push(Finding {
                        severity: Severity::Warning,
                        line: line(pc),
                        message: format!("global '{name}' assigned at the top level (globals are per process; use a local)"),
                    });
                }
            }
            _ => {}
        }
    }
    for p in &f.protos {
        walk(p, false, modules, allowed, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modules() -> Modules {
        let mut fields = HashMap::new();
        fields.insert("process".to_string(), vec!["send".to_string(), "pid".to_string()]);
        fields.insert("json".to_string(), vec!["encode".to_string()]);
        Modules { fields, always: vec!["process".into()] }
    }

    #[test]
    fn finds_misspelt_functions_unknown_requires_and_top_level_globals() {
        let src = "counter = 0\n\
                   local json = require('json')\n\
                   local x = require('nope')\n\
                   type Task = {id: string}\n\
                   return { main = function()\n\
                     process.send(process.pid(), 't')\n\
                     process.spwan('x')\n\
                     process:sned()\n\
                     counter = counter + 1\n\
                   end }";
        let e = LuaEntry::process("app:x", src).modules(&["json"]);
        let f = lint(&e, &modules()).unwrap();
        let got: Vec<(u32, Severity, &str)> = f.iter().map(|f| (f.line, f.severity, f.message.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (1, Severity::Warning, "global 'counter' assigned at the top level (globals are per process; use a local)"),
                (3, Severity::Error, "require 'nope': not a module this entry lists in modules: nor an alias of its imports:"),
                (7, Severity::Error, "process.spwan: the process module has no spwan"),
                (8, Severity::Error, "process.sned: the process module has no sned"),
            ]
        );
    }

    #[test]
    fn line_numbers_survive_long_functions_and_imports_count_as_modules() {
        let mut src = String::from("local t = {}\n");
        for i in 0..400 {
            src.push_str(&format!("t[1] = {}\n", i % 7));
        }
        src.push_str("\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\nprocess.spwan()\nlocal u = require('util')\nreturn t");
        let e = LuaEntry::process("app:y", &src).import("util", "app:util");
        let f = lint(&e, &modules()).unwrap();
        let lines = src.lines().count() as u32;
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].line, lines - 2, "{f:?}");
    }

    #[test]
    fn a_source_that_does_not_compile_is_an_error() {
        let e = LuaEntry::process("app:z", "return {");
        assert!(lint(&e, &modules()).is_err());
    }
}

#[cfg(test)]
mod runtime_tests {
    use super::Modules;

    #[test]
    fn the_runtime_modules_are_read_from_a_shard_vm() {
        let m = Modules::of_runtime().unwrap();
        let has = |module: &str, f: &str| m.fields.get(module).is_some_and(|fs| fs.iter().any(|x| x == f));
        assert!(has("process", "send") && has("process", "spawn") && has("process", "registry"));
        assert!(has("time", "sleep") && has("json", "encode") && has("channel", "new"));
        assert!(!has("process", "spwan"));
        // the parts a VM compiles on first use are listed too
        assert!(has("contract", "open") && has("exec", "get") && has("sql", "builder"));
        for always in ["process", "channel", "errors", "string"] {
            assert!(m.always.iter().any(|a| a == always), "{always}");
        }
        // what `modules:` accepts without binding is what the prelude always binds
        let mut prelude: Vec<&str> = m.always.iter().map(String::as_str).collect();
        let mut listed = crate::catalog::ALWAYS_PRESENT.to_vec();
        prelude.sort_unstable();
        listed.sort_unstable();
        assert_eq!(prelude, listed);
    }
}
