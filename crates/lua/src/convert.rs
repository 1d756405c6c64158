//! Lua values <-> runtime [`Value`]s for code that holds mlua values: both directions are
//! the one codec in `vm::raw` (`raw::read`, `raw::push`) run on a stack of their own. Deep
//! copies, cycles rejected, binary-safe strings, integers kept integers, error objects
//! kept; what cannot cross a process boundary (functions, coroutines, channels, userdata
//! other than errors) is refused with an error naming the field.
//!
//! Must never: hand a Lua reference of one process to another (everything is copied).

use mlua::{Lua, Value as LuaValue};
use wippy_runtime::Value;

/// Metatable identities of the prelude's process-local objects.
#[derive(Clone, Copy, Default)]
pub(crate) struct Marks {
    pub(crate) channel: usize,
    pub(crate) payload: usize,
    pub(crate) message: usize,
}

/// Convert one Lua value (`raw::read`, the one reader, on a stack of its own). `what`
/// names it in errors ("payload 2", "argument 1").
pub(crate) fn to_value(v: &LuaValue, marks: &Marks, what: &str) -> Result<Value, String> {
    crate::vm::raw::from_lua(v, marks).map_err(|r| r.describe(what))
}

/// A runtime value as a fresh Lua value (`raw::push`, the one encoder, on a stack of its own).
pub(crate) fn from_value(lua: &Lua, v: &Value) -> mlua::Result<LuaValue> {
    crate::vm::raw::to_lua(lua, v)
}
