//! `funcs`: `call(id, ...)` and `async(id, ...)` run a `function.lua` entry as a
//! short-lived process with its own PID (SPEC §4.9); the waiting is in the prelude. Also
//! the loader `require` uses for `library.lua` imports.

use std::sync::Weak;

use mlua::{Function, Lua, Table, Value as LuaValue};

use crate::catalog::{Catalog, EntryKind};
use crate::vm::current as current_vm;

pub(crate) fn library(lua: &Lua) -> mlua::Result<Table> {
    lua.create_table()
}

/// `R.load_library(id, new_env)`: run a library entry's chunk in a fresh environment of
/// the calling process and return what it returns.
pub(crate) fn load_library_function(lua: &Lua, catalog: Weak<Catalog>) -> mlua::Result<Function> {
    lua.create_function(move |_, (id, new_env): (String, Function)| {
        let catalog = catalog.upgrade().ok_or_else(|| mlua::Error::runtime("the Lua runtime is gone"))?;
        let entry = catalog.entry(&id).map_err(|e| mlua::Error::runtime(format!("import '{id}': {}", e.message)))?;
        if entry.kind != EntryKind::Library {
            return Err(mlua::Error::runtime(format!("import '{id}' is not a library.lua entry")));
        }
        // The library was allowed when the process spawned; the catalog may have changed
        // since (a registry write, a --watch reload): check it against the host again.
        let host = crate::current::state(|st| st.shard.host.clone())?;
        crate::catalog::modules_allowed(&catalog, &entry, &host).map_err(|e| mlua::Error::runtime(format!("import '{id}': {}", e.message)))?;
        // SAFETY: called from Lua code a shard turn is running on this thread.
        let vm = unsafe { current_vm() }.ok_or_else(|| mlua::Error::runtime("require outside a process"))?;
        let code = vm.code(&catalog, &entry).map_err(|e| mlua::Error::runtime(e.message))?;
        let env_mt: Table = vm.lua.registry_value(&code.env_mt)?;
        let chunk: Function = vm.lua.registry_value(&code.chunk)?;
        let env: Table = new_env.call((LuaValue::Nil, env_mt))?;
        chunk.call::<LuaValue>(env)
    })
}
