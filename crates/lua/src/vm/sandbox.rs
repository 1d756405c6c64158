//! Building a shard's VM: the minimal base library, the shared library tables (reached by
//! processes only through per-process proxies), the locked string metatable, the Rust
//! primitives the prelude uses, and the prelude itself.
//!
//! Must never: put `io`, `os.execute`, `dofile`, `loadfile`, `package`, `debug`, binary
//! `load` or `string.dump` where process code can reach them.

use std::cell::RefCell;
use std::os::raw::c_int;
use std::sync::{Arc, Weak};

use mlua::{ffi, Function, Lua, LuaOptions, RegistryKey, StdLib, Table, Value as LuaValue};
use rustc_hash::FxHashMap;
use parking_lot::Mutex;

use crate::catalog::{Catalog, EntryKind, LuaEntry};
use crate::convert::Marks;
use crate::modules;

const PRELUDE: &str = include_str!("../lua/prelude.lua");

/// A library's nested tables (`http.STATUS`, `crypto.random`...) as read-only userdata
/// (see [`read_only`]).
pub(crate) fn lock_nested(lua: &Lua, lib: &Table) -> mlua::Result<()> {
    let mut nested = Vec::new();
    for p in lib.pairs::<LuaValue, LuaValue>() {
        let (k, v) = p?;
        if let LuaValue::Table(t) = v {
            nested.push((k, t));
        }
    }
    for (k, t) in nested {
        lib.raw_set(k, read_only(lua, t)?)?;
    }
    Ok(())
}

/// A constant table process code may read but never change (`http.STATUS`,
/// `process.event`, ...): an empty userdata whose own metatable indexes the table, so a
/// lookup is the VM's table fast path, not a call. It has no fields to `rawset`, its
/// metatable is hidden (`__metatable`), an assignment raises, and `pairs` walks a fresh
/// copy: the shared table itself never reaches process code.
pub(crate) fn read_only(lua: &Lua, t: Table) -> mlua::Result<LuaValue> {
    let mt = lua.create_table_with_capacity(0, 5)?;
    mt.raw_set("__index", t.clone())?;
    mt.raw_set(
        "__newindex",
        lua.create_function(|_, (_, k, _v): (LuaValue, LuaValue, LuaValue)| -> mlua::Result<()> {
            Err(mlua::Error::runtime(format!("attempt to change a read-only table (field {})", k.to_string().unwrap_or_default())))
        })?,
    )?;
    let next: Function = lua.named_registry_value("wippy.next")?;
    mt.raw_set(
        "__pairs",
        lua.create_function(move |lua, _: LuaValue| {
            let copy = lua.create_table()?;
            for p in t.pairs::<LuaValue, LuaValue>() {
                let (k, v) = p?;
                copy.raw_set(k, v)?;
            }
            Ok((next.clone(), copy, LuaValue::Nil))
        })?,
    )?;
    mt.raw_set("__name", "read-only table")?;
    mt.raw_set("__metatable", "read-only table")?;
    // SAFETY: the one argument (the metatable) is on the stack; a new empty userdata is
    // pushed, given that metatable, and left alone on the stack as the result.
    unsafe {
        lua.exec_raw(mt, |state| {
            ffi::lua_newuserdatauv(state, 0, 0);
            ffi::lua_pushvalue(state, -2);
            ffi::lua_setmetatable(state, -2);
            ffi::lua_remove(state, -2);
        })
    }
}

/// What a shard keeps per entry, in its registry: the loaded chunk, the environment
/// metatable (which also holds the modules the entry may bind and its imports), and the
/// entry's ID and main method as Lua strings. A process's start pushes them by reference
/// (no handle, no string interned per spawn).
pub(crate) struct EntryCode {
    pub(crate) chunk: RegistryKey,
    pub(crate) env_mt: RegistryKey,
    pub(crate) id: RegistryKey,
    pub(crate) method: RegistryKey,
}

/// A thread of a shard's VM: its main thread (for the raw calls made between resumes, a
/// process's start and end, that need a stack of their own), or a pooled coroutine.
#[derive(Clone, Copy)]
pub(crate) struct Thread(pub(crate) *mut ffi::lua_State);

// SAFETY: only used inside a turn of its shard, whose VM lock serialises every use.
unsafe impl Send for Thread {}

/// The most finished coroutines a shard keeps for reuse.
pub(crate) const POOL_MAX: usize = 256;

pub(crate) struct Vm {
    pub(crate) lua: Lua,
    pub(crate) main: Thread,
    /// Registry references of the prelude's `new_process` and `main_body`.
    pub(crate) new_process: c_int,
    pub(crate) main_body: c_int,
    /// Coroutines of processes that returned, for the next processes (a thread that
    /// returned is as good as a new one: empty stack, no frame); `pool_ref` is the registry
    /// table keeping them (slots 1..=POOL_MAX made up front, so adding one never
    /// allocates), `pool` the same in order.
    pub(crate) pool: RefCell<Vec<Thread>>,
    pub(crate) pool_ref: c_int,
    pub(crate) marks: Marks,
    /// Registry reference of the prelude's shard table `S` (`S[1]` is the running
    /// process's state).
    pub(crate) s_ref: c_int,
    /// Per entry ID: the version loaded and its code (a new version replaces the old).
    /// Behind a `RefCell` because a turn reaches the VM only shared (`current_vm`); borrowed
    /// only by `code`, and never while Lua runs.
    code: RefCell<FxHashMap<String, (u64, Arc<EntryCode>)>>,
    /// Bytes in use right after setup (what an empty shard costs).
    pub(crate) baseline: usize,
}

impl Vm {
    pub(crate) fn new(catalog: Weak<Catalog>, grants_io: bool) -> mlua::Result<Vm> {
        let libs = StdLib::COROUTINE | StdLib::TABLE | StdLib::STRING | StdLib::UTF8 | StdLib::MATH | StdLib::OS;
        let lua = Lua::new_with(libs, LuaOptions::default())?;
        let g = lua.globals();
        let shared = lua.create_table()?;

        // The base library: only what cannot reach outside the process.
        let base = lua.create_table()?;
        for name in [
            "assert", "error", "ipairs", "next", "pairs", "rawequal", "rawget", "rawlen", "rawset", "select", "tonumber",
            "tostring", "getmetatable", "setmetatable", "load", "_VERSION",
        ] {
            base.raw_set(name, g.raw_get::<LuaValue>(name)?)?;
        }
        // (`type` is ours: Lua's names pushed from upvalues, vm/prims.rs)
        base.raw_set("type", super::prims::fast_type(&lua)?)?;
        base.raw_set("unpack", g.raw_get::<Table>("table")?.raw_get::<LuaValue>("unpack")?)?;
        lua.set_named_registry_value("wippy.next", g.raw_get::<Function>("next")?)?;
        let raw_cg: Function = g.raw_get("collectgarbage")?;
        base.raw_set(
            "collectgarbage",
            lua.create_function(move |_, (opt, _arg): (Option<String>, LuaValue)| {
                let opt = opt.unwrap_or_else(|| "collect".into());
                match opt.as_str() {
                    "count" | "isrunning" => raw_cg.call::<mlua::MultiValue>(opt),
                    other => Err(mlua::Error::runtime(format!(
                        "collectgarbage: option '{other}' is not allowed (a process may only query 'count' and 'isrunning')"
                    ))),
                }
            })?,
        )?;
        shared.raw_set("_base", base)?;

        // `table.create(narr, nhash)` (Wippy's Lua has it): a table with room for that many
        // array and hash items. Bounded, so a typo cannot ask for terabytes.
        const MAX_PREALLOC: i64 = 1 << 24;
        g.raw_get::<Table>("table")?.raw_set(
            "create",
            lua.create_function(|lua, (narr, nhash): (Option<i64>, Option<i64>)| {
                let (a, h) = (narr.unwrap_or(0), nhash.unwrap_or(0));
                if !(0..=MAX_PREALLOC).contains(&a) || !(0..=MAX_PREALLOC).contains(&h) {
                    return Err(mlua::Error::runtime(format!("bad argument to 'create' (sizes must be between 0 and {MAX_PREALLOC})")));
                }
                lua.create_table_with_capacity(a as usize, h as usize)
            })?,
        )?;
        // Standard libraries, minus what a process must not have.
        for name in ["table", "math", "utf8"] {
            shared.raw_set(name, g.raw_get::<Table>(name)?)?;
        }
        let string: Table = g.raw_get("string")?;
        string.raw_set("dump", LuaValue::Nil)?;
        // Error objects are strings to the string library (SPEC §12.1.1): each function
        // takes an error argument as its message (raw.rs string_coerced; a plain call pays
        // a tag check per argument).
        let err_mt = {
            let probe = lua.create_userdata(crate::modules::errors::LuaError::new(wippy_runtime::Error::internal("")))?;
            // SAFETY: pushes the userdata, replaces it with its metatable, returns that.
            unsafe {
                lua.exec_raw::<Table>(probe, |st| {
                    ffi::lua_getmetatable(st, -1);
                    ffi::lua_remove(st, -2);
                })?
            }
        };
        let mut wrapped = Vec::new();
        for pair in string.pairs::<LuaValue, LuaValue>() {
            let (k, v) = pair?;
            if let LuaValue::Function(f) = v {
                // `format` shows an error with its context ("%s": SPEC §12.1.1)
                let full = matches!(&k, LuaValue::String(n) if n.as_bytes() == b"format");
                // SAFETY: pushes the function, the metatable and the flag, leaves one C closure.
                let c: Function = unsafe {
                    lua.exec_raw((f, err_mt.clone(), full), |st| ffi::lua_pushcclosure(st, crate::vm::raw::string_coerced, 3))?
                };
                wrapped.push((k, c));
            }
        }
        for (k, c) in wrapped {
            string.raw_set(k, c)?;
        }
        shared.raw_set("string", string)?;
        // The VM's own os table (also in its registry's _LOADED) keeps only the safe four:
        // nothing anywhere in the VM can run a command, end the node or touch a file.
        let os: Table = g.raw_get("os")?;
        for name in ["execute", "exit", "remove", "rename", "tmpname", "getenv", "setlocale"] {
            os.raw_set(name, LuaValue::Nil)?;
        }
        // Wippy's `os.time{...}`: a missing year, month or day is today's, a missing hour,
        // min or sec is 0 (Lua's own raises for the first three and takes 12 for the hour);
        // and `os.platform` names the runtime. (The chunk gets what it calls as arguments: the
        // VM's globals are emptied once the sandbox is built.)
        let wippy_time: Function = lua
            .load(
                r#"local raw, date, type = ...
                return function(t)
                  if type(t) ~= "table" then return raw(t) end
                  local now = date("*t")
                  return raw({ year = t.year or now.year, month = t.month or now.month, day = t.day or now.day,
                    hour = t.hour or 0, min = t.min or 0, sec = t.sec or 0, isdst = t.isdst })
                end"#,
            )
            .set_name("=os.time")
            .call((os.raw_get::<Function>("time")?, os.raw_get::<Function>("date")?, g.raw_get::<Function>("type")?))?;
        os.raw_set("time", wippy_time)?;
        os.raw_set("platform", "wippy")?;
        shared.raw_set("os", os)?;
        // The string metatable is shared by every string: lock it.
        let smt: Table = lua.load("return getmetatable('')").eval()?;
        smt.raw_set("__metatable", false)?;

        // Rust primitives for the prelude, and the Rust parts of the modules.
        let r = lua.create_table()?;
        let marks = Arc::new(Mutex::new(Marks::default()));
        modules::install(&lua, &r, &shared, &marks, catalog, grants_io)?;

        // The prelude runs with a private copy of the globals; the VM's real global table is
        // emptied below, so no chunk that ever sees it (none should) finds anything there.
        let prelude_env = lua.create_table()?;
        for pair in g.pairs::<LuaValue, LuaValue>() {
            let (k, v) = pair?;
            prelude_env.raw_set(k, v)?;
        }
        let prelude: Table =
            lua.load(PRELUDE).set_name("@wippy/prelude.lua").set_environment(prelude_env).call((r, shared.clone()))?;
        // Nested constant tables become read-only userdata: a library proxy then needs
        // no per-process copies (a table could be changed with rawset by anyone).
        for pair in shared.pairs::<String, LuaValue>() {
            let (_, lib) = pair?;
            if let LuaValue::Table(lib) = lib {
                lock_nested(&lua, &lib)?;
            }
        }
        // (for lint: what each module offers, and which are always present)
        lua.set_named_registry_value("wippy.libs", shared.clone())?;
        lua.set_named_registry_value("wippy.always", prelude.get::<Table>("always")?)?;
        lua.set_named_registry_value("wippy.load_lazy", prelude.get::<Function>("load_lazy")?)?;
        let s: Table = prelude.get("S")?;
        let new_process: Function = prelude.get("new_process")?;
        let env_mt: Function = prelude.get("env_mt")?;
        lua.set_named_registry_value("wippy.env_mt", env_mt)?;
        // Nothing of the shard's own globals stays reachable by name.
        g.clear()?;
        lua.gc_collect()?;
        // Generational collection: a shard's garbage is mostly young (a finished process's
        // tables, a message's copy), and a minor collection does not walk every parked
        // process the way each incremental cycle does. Measured with one worker under
        // valgrind: lua-spawn -6% instructions, lua-pingpong/lua-ring/lua-memory unchanged.
        // SAFETY: LUA_GCGEN takes no stack values and cannot raise.
        unsafe { lua.exec_raw::<()>((), |st| _ = mlua::ffi::lua_gc(st, mlua::ffi::LUA_GCGEN, 0, 0))? };
        let baseline = lua.used_memory();
        let marks = *marks.lock();
        // SAFETY: luaL_ref pops each value exec_raw pushed and leaves its reference; the
        // main thread is in the registry for the VM's whole life.
        let main_body: Function = prelude.get("main_body")?;
        let (s_ref, new_process, main_body, pool_ref, main): (i64, i64, i64, i64, LuaValue) = unsafe {
            lua.exec_raw((s.clone(), new_process, main_body), |state| {
                let mb = ffi::luaL_ref(state, ffi::LUA_REGISTRYINDEX);
                let np = ffi::luaL_ref(state, ffi::LUA_REGISTRYINDEX);
                let s = ffi::luaL_ref(state, ffi::LUA_REGISTRYINDEX);
                ffi::lua_createtable(state, POOL_MAX as c_int, 0);
                let pool = ffi::luaL_ref(state, ffi::LUA_REGISTRYINDEX);
                ffi::lua_pushinteger(state, s as ffi::lua_Integer);
                ffi::lua_pushinteger(state, np as ffi::lua_Integer);
                ffi::lua_pushinteger(state, mb as ffi::lua_Integer);
                ffi::lua_pushinteger(state, pool as ffi::lua_Integer);
                ffi::lua_rawgeti(state, ffi::LUA_REGISTRYINDEX, ffi::LUA_RIDX_MAINTHREAD);
                let main = ffi::lua_tothread(state, -1);
                ffi::lua_pop(state, 1);
                ffi::lua_pushlightuserdata(state, main as *mut _);
            })?
        };
        let LuaValue::LightUserData(main) = main else {
            return Err(mlua::Error::runtime("the VM has no main thread"));
        };
        Ok(Vm {
            lua,
            main: Thread(main.0 as *mut ffi::lua_State),
            new_process: new_process as c_int,
            main_body: main_body as c_int,
            pool: RefCell::new(Vec::new()),
            pool_ref: pool_ref as c_int,
            marks,
            s_ref: s_ref as c_int,
            code: RefCell::new(FxHashMap::default()),
            baseline,
        })
    }

    /// The shard's code for an entry (loaded on first use).
    pub(crate) fn code(&self, catalog: &Catalog, entry: &LuaEntry) -> Result<Arc<EntryCode>, wippy_runtime::Error> {
        if let Some((version, c)) = self.code.borrow().get(entry.id.as_str()) {
            if *version == entry.version {
                return Ok(c.clone());
            }
        }
        // (the borrow ended: loading runs Lua, which may `require` and come back here)
        let chunk = catalog.load(&self.lua, entry)?;
        let internal = |e: mlua::Error| wippy_runtime::Error::internal(format!("entry '{}': {e}", entry.id));
        let allowed = self.lua.create_table().map_err(internal)?;
        for m in &entry.modules {
            allowed.raw_set(m.as_str(), true).map_err(internal)?;
        }
        let env_mt_fn: Function = self.lua.named_registry_value("wippy.env_mt").map_err(internal)?;
        let imports = if entry.imports.is_empty() {
            None
        } else {
            let t = self.lua.create_table().map_err(internal)?;
            for (alias, id) in &entry.imports {
                t.raw_set(alias.as_str(), id.as_str()).map_err(internal)?;
            }
            Some(t)
        };
        let brief = entry.kind == EntryKind::Function;
        let env_mt: Table = env_mt_fn.call((allowed, imports, brief)).map_err(internal)?;
        let code = Arc::new(EntryCode {
            chunk: self.lua.create_registry_value(chunk).map_err(internal)?,
            env_mt: self.lua.create_registry_value(env_mt).map_err(internal)?,
            id: self.lua.create_registry_value(entry.id.as_str()).map_err(internal)?,
            method: self.lua.create_registry_value(entry.method.as_str()).map_err(internal)?,
        });
        self.code.borrow_mut().insert(entry.id.clone(), (entry.version, code.clone()));
        Ok(code)
    }
}
