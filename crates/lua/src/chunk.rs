//! An entry's source compiled as a chunk of its own, then bound to a process's `_ENV`
//! without ever pasting its text into other text.
//!
//! A chunk compiled by Lua is a vararg function whose one upvalue is `_ENV`. A shard needs
//! a fresh closure of that function per process (each with the process's environment), and
//! the C API cannot make a second closure of a loaded prototype. So the entry's compiled
//! prototype is spliced, as bytecode, into a fixed loader compiled from our own text:
//!
//! ```lua
//! return function(_ENV, ...) return (function(...) return _ENV end)(...) end
//! ```
//!
//! The inner function is replaced by the entry's main prototype. Its `_ENV` upvalue is
//! described exactly as the inner function's is (the enclosing function's first register,
//! the `_ENV` parameter), so every call of the loader makes a new closure of the entry's
//! chunk over that process's environment, and runs it. Source text can only ever be
//! compiled as the whole chunk it is: a source that tries to close the wrapper fails to
//! compile, as it would on its own.
//!
//! Reading the dump follows Lua 5.4's `ldump.c` (header; then per function: source, lines,
//! parameters, code, constants, upvalues, nested functions, debug information). The layout
//! is checked by the tests below against what the vendored Lua produces.

use std::ops::Range;

use mlua::chunk::ChunkMode;
use mlua::Lua;

/// The loader the entry's prototype is spliced into (ours, never user text).
const LOADER: &str = "return function(_ENV, ...) return (function(...) return _ENV end)(...) end";

/// The header of a Lua 5.4 dump: signature, version, format, LUAC_DATA, three sizes,
/// LUAC_INT, LUAC_NUM.
pub(crate) const HEADER: usize = 4 + 1 + 1 + 6 + 3 + 8 + 8;

pub(crate) struct Cursor<'a> {
    pub(crate) b: &'a [u8],
    pub(crate) p: usize,
}

/// One function of a dump: where it is, its upvalue descriptions and its children.
struct Func {
    upvalues: Vec<[u8; 3]>,
    children: Vec<Range<usize>>,
}

impl Cursor<'_> {
    pub(crate) fn byte(&mut self) -> Result<u8, String> {
        let b = *self.b.get(self.p).ok_or("the chunk ends early")?;
        self.p += 1;
        Ok(b)
    }
    pub(crate) fn skip(&mut self, n: usize) -> Result<(), String> {
        let end = self.p.checked_add(n).filter(|e| *e <= self.b.len()).ok_or("the chunk ends early")?;
        self.p = end;
        Ok(())
    }
    /// `dumpSize`: 7 bits a byte, most significant first, the last byte marked with 0x80.
    pub(crate) fn size(&mut self) -> Result<usize, String> {
        let mut x: usize = 0;
        loop {
            let b = self.byte()?;
            x = x.checked_mul(128).ok_or("a size overflows")? | (b & 0x7f) as usize;
            if b & 0x80 != 0 {
                return Ok(x);
            }
        }
    }
    pub(crate) fn string(&mut self) -> Result<(), String> {
        let n = self.size()?;
        if n > 0 {
            self.skip(n - 1)?;
        }
        Ok(())
    }
    fn function(&mut self) -> Result<Func, String> {
        self.string()?; // source
        self.size()?; // linedefined
        self.size()?; // lastlinedefined
        self.skip(3)?; // numparams, is_vararg, maxstacksize
        let code = self.size()?;
        self.skip(code.checked_mul(4).ok_or("code size overflows")?)?;
        for _ in 0..self.size()? {
            match self.byte()? {
                0x00 | 0x01 | 0x11 => {}     // nil, false, true
                0x03 | 0x13 => self.skip(8)?, // integer, float
                0x04 | 0x14 => self.string()?, // short, long string
                t => return Err(format!("unknown constant tag {t:#x}")),
            }
        }
        let mut upvalues = Vec::new();
        for _ in 0..self.size()? {
            upvalues.push([self.byte()?, self.byte()?, self.byte()?]);
        }
        let mut children = Vec::new();
        for _ in 0..self.size()? {
            let start = self.p;
            self.function()?;
            children.push(start..self.p);
        }
        // debug: line info, absolute line info, locals, upvalue names
        let n = self.size()?;
        self.skip(n)?;
        for _ in 0..self.size()? {
            self.size()?;
            self.size()?;
        }
        for _ in 0..self.size()? {
            self.string()?;
            self.size()?;
            self.size()?;
        }
        for _ in 0..self.size()? {
            self.string()?;
        }
        Ok(Func { upvalues, children })
    }
}

/// Parse a whole dump: its main function, which must end the dump.
fn main_function(dump: &[u8]) -> Result<(Range<usize>, Func), String> {
    let mut c = Cursor { b: dump, p: HEADER + 1 };
    if dump.len() < HEADER + 1 || &dump[..4] != b"\x1bLua" || dump[4] != 0x54 {
        return Err("not a Lua 5.4 binary chunk".into());
    }
    let start = c.p;
    let f = c.function()?;
    if c.p != dump.len() {
        return Err("bytes after the main function".into());
    }
    Ok((start..c.p, f))
}

/// The loader's bytecode, made once per node.
pub(crate) fn loader(lua: &Lua) -> Result<Vec<u8>, String> {
    let f = lua
        .load(LOADER)
        .set_name("=wippy/loader")
        .set_mode(ChunkMode::Text)
        .into_function()
        .map_err(|e| format!("the loader does not compile: {e}"))?;
    Ok(f.dump(false))
}

/// Compile `source` as a chunk of its own (text only). A first line starting with `#` is
/// blanked, as `lua` does for script files; line numbers stay the source's own.
pub(crate) fn compile(lua: &Lua, source: &str, name: &str) -> mlua::Result<Vec<u8>> {
    let text = if source.starts_with('#') { &source[source.find('\n').unwrap_or(source.len())..] } else { source };
    let f = lua.load(text).set_name(name).set_mode(ChunkMode::Text).into_function()?;
    Ok(f.dump(false))
}

/// The loader with `chunk` (a dump made by [`compile`]) in place of its inner function:
/// loaded and called, it gives `function(_ENV, ...)` that runs the chunk with that `_ENV`.
pub(crate) fn bind(loader: &[u8], chunk: &[u8]) -> Result<Vec<u8>, String> {
    if loader.get(..HEADER) != chunk.get(..HEADER) {
        return Err("the chunk was compiled by another Lua".into());
    }
    let (_, outer) = main_function(loader)?;
    let wrapper = outer.children.first().ok_or("the loader has no function")?;
    let inner = {
        let mut c = Cursor { b: loader, p: wrapper.start };
        let f = c.function()?;
        f.children.first().cloned().ok_or("the loader has no inner function")?
    };
    let expected = Cursor { b: loader, p: inner.start }.function()?.upvalues;
    let (span, user) = main_function(chunk)?;
    // A chunk's only upvalue is _ENV, and the inner function's only upvalue is the
    // wrapper's _ENV parameter: the same description makes the spliced chunk see it.
    if user.upvalues.len() != 1 || expected.len() != 1 || user.upvalues[0] != expected[0] {
        return Err("the chunk's upvalues are not the loader's".into());
    }
    let mut out = Vec::with_capacity(loader.len() + chunk.len());
    out.extend_from_slice(&loader[..inner.start]);
    out.extend_from_slice(&chunk[span]);
    out.extend_from_slice(&loader[inner.end..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlua::{Function, Table, Value};

    fn bound(lua: &Lua, src: &str) -> mlua::Result<Function> {
        let code = compile(lua, src, "@test.lua")?;
        let code = bind(&loader(lua).unwrap(), &code).map_err(mlua::Error::runtime)?;
        let outer = lua.load(&code[..]).set_mode(ChunkMode::Binary).set_environment(lua.create_table()?).into_function()?;
        outer.call(())
    }

    #[test]
    fn each_call_runs_the_chunk_over_its_own_env() {
        let lua = Lua::new();
        let f = bound(&lua, "x = (x or 0) + 1\nlocal a = ...\nreturn function() return x, a end").unwrap();
        let (e1, e2): (Table, Table) = (lua.create_table().unwrap(), lua.create_table().unwrap());
        e2.set("x", 10).unwrap();
        let g1: Function = f.call((e1.clone(), "one")).unwrap();
        let g2: Function = f.call((e2.clone(), "two")).unwrap();
        assert_eq!(g1.call::<(i64, String)>(()).unwrap(), (1, "one".into()));
        assert_eq!(g2.call::<(i64, String)>(()).unwrap(), (11, "two".into()));
        assert_eq!(e1.get::<i64>("x").unwrap(), 1);
        assert_eq!(lua.globals().get::<Value>("x").unwrap(), Value::Nil);
    }

    #[test]
    fn a_source_cannot_close_the_wrapper() {
        let lua = Lua::new();
        let escape = "return { main = function() return 'x' end } end,\n  os.execute('true'),\n  function()";
        let err = bound(&lua, escape).expect_err("must not compile");
        assert!(err.to_string().contains("test.lua:1:"), "{err}");
    }

    #[test]
    fn line_numbers_and_shebang_stay_the_sources() {
        let lua = Lua::new();
        let f = bound(&lua, "#!/usr/bin/env lua\n\nerror('boom')").unwrap();
        let env = lua.create_table().unwrap();
        env.set("error", lua.globals().get::<Function>("error").unwrap()).unwrap();
        let err = f.call::<()>(env).unwrap_err();
        assert!(err.to_string().contains("test.lua:3: boom"), "{err}");
    }

    #[test]
    fn every_constant_kind_and_nesting_survives() {
        let lua = Lua::new();
        let src = "local t = {nil, false, true, 1, 2.5, 'short', string.rep('long', 20)}\n\
                   local function deep() return function() return function() return t[7]:len() + t[4] end end end\n\
                   return deep()()()";
        let f = bound(&lua, src).unwrap();
        let env = lua.create_table().unwrap();
        env.set("string", lua.globals().get::<Table>("string").unwrap()).unwrap();
        assert_eq!(f.call::<i64>(env).unwrap(), 81);
    }

    #[test]
    fn malformed_dumps_are_refused() {
        let lua = Lua::new();
        let l = loader(&lua).unwrap();
        let c = compile(&lua, "return 1", "@x").unwrap();
        assert!(bind(&l, &c[..c.len() - 1]).is_err());
        assert!(bind(&l, b"not a chunk").is_err());
        let mut longer = c.clone();
        longer.push(0);
        assert!(bind(&l, &longer).is_err());
    }
}
