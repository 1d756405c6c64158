//! `fs` (Wippy's `en/lua/storage/filesystem.md`): files in the project's `fs.directory`
//! volumes. `fs.get(id)` (permission `fs.get` on the volume's ID) gives a volume whose paths
//! are `/`-rooted inside its directory: `..` stops at the root and a symlink that leads out
//! of it is refused, so nothing outside the directory is reachable. A volume has `readfile`,
//! `writefile` (modes `w`, `a`, `wx`; a string or an open file as the data), `exists`,
//! `stat`, `isdir`, `mkdir`, `remove`, `readdir` (an iterator), `open` (a file handle with
//! `read`, `write`, `seek`, `stat`, `sync`, `close`, `scanner`), `chdir` and `pwd`.
//!
//! Errors are `nil, err` with Wippy's kinds: Invalid for an empty path, a NUL byte or a bad
//! mode; NotFound for a missing path and for a read at the end of a file; AlreadyExists;
//! PermissionDenied; Internal for the rest and for a closed handle.
//!
//! The calls are the operating system's, made on the worker thread that runs the process
//! (local files answer in microseconds; a process that streams a large file yields to others
//! between its reads like any busy process).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;

use mlua::{Lua, Table, UserData, UserDataMethods, Value as LuaValue};
use parking_lot::Mutex;
use wippy_runtime::{Error, ErrorKind};

use super::{fail, invalid};

type Answer = mlua::Result<(LuaValue, LuaValue)>;

fn ok(lua: &Lua, v: impl mlua::IntoLua) -> Answer {
    Ok((v.into_lua(lua)?, LuaValue::Nil))
}

/// An OS error as a Wippy error of the matching kind, worded as Go's `*PathError`
/// (`open /a.txt: no such file or directory`).
fn io_error(e: std::io::Error, op: &str, path: &str) -> Error {
    use std::io::ErrorKind as K;
    let kind = match e.kind() {
        K::NotFound => ErrorKind::NotFound,
        K::AlreadyExists => ErrorKind::AlreadyExists,
        K::PermissionDenied => ErrorKind::PermissionDenied,
        K::InvalidInput => ErrorKind::Invalid,
        _ => ErrorKind::Internal,
    };
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or("");
    let mut chars = text.chars();
    let text: String = chars.next().map(|c| c.to_lowercase().chain(chars).collect()).unwrap_or_default();
    let mut err = Error::new(kind, format!("{op} {path}: {text}"));
    if matches!(kind, ErrorKind::PermissionDenied | ErrorKind::Internal) {
        err.retryable = Some(false);
    }
    err
}


/// An error whose `retryable()` is nil, as Wippy's page says of these.
fn answer_err(lua: &Lua, e: Error) -> Answer {
    Ok((LuaValue::Nil, LuaValue::UserData(lua.create_userdata(super::errors::LuaError::new(e))?)))
}

/// A volume: its directory (canonical) and the working directory `chdir` sets.
struct Volume {
    id: String,
    root: PathBuf,
    cwd: Mutex<String>,
}

impl Volume {
    /// `path` as a `/`-rooted volume path: relative to the working directory, `.` and `..`
    /// resolved (never above the root).
    fn clean(&self, path: &str) -> Result<String, Error> {
        if path.is_empty() {
            return Err(invalid("path is empty"));
        }
        if path.contains('\0') {
            return Err(invalid("path contains a null byte"));
        }
        let joined = if path.starts_with('/') { path.to_string() } else { format!("{}/{path}", self.cwd.lock()) };
        let mut parts: Vec<&str> = Vec::new();
        for p in joined.split('/') {
            match p {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                p => parts.push(p),
            }
        }
        Ok(format!("/{}", parts.join("/")))
    }

    /// The OS path of a volume path, refusing one that a symlink leads out of the volume.
    fn real(&self, path: &str) -> Result<(String, PathBuf), Error> {
        let clean = self.clean(path)?;
        let full = self.root.join(clean.trim_start_matches('/'));
        // the deepest part that exists must be inside the root once symlinks are followed
        let mut probe = full.as_path();
        loop {
            match probe.canonicalize() {
                Ok(real) if real.starts_with(&self.root) => break,
                Ok(_) => return Err(Error::new(ErrorKind::PermissionDenied, format!("{clean}: leads outside the volume {}", self.id))),
                // a dangling symlink could be written through to anywhere
                Err(_) if probe.symlink_metadata().is_ok() => {
                    return Err(Error::new(ErrorKind::PermissionDenied, format!("{clean}: a link that leads nowhere in the volume {}", self.id)))
                }
                Err(_) => match probe.parent() {
                    Some(parent) if parent.starts_with(&self.root) => probe = parent,
                    _ => break,
                },
            }
        }
        Ok((clean, full))
    }
}

fn stat_table(lua: &Lua, name: &str, meta: &std::fs::Metadata) -> mlua::Result<Table> {
    use std::os::unix::fs::PermissionsExt;
    let t = lua.create_table()?;
    t.raw_set("name", name)?;
    t.raw_set("size", meta.len() as i64)?;
    t.raw_set("mode", i64::from(meta.permissions().mode() & 0o7777))?;
    let modified = meta.modified().ok().and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs() as i64);
    t.raw_set("modified", modified)?;
    t.raw_set("is_dir", meta.is_dir())?;
    t.raw_set("type", if meta.is_dir() { "directory" } else { "file" })?;
    Ok(t)
}

fn base_name(clean: &str) -> &str {
    match clean.rsplit('/').next() {
        Some("") | None => "/",
        Some(n) => n,
    }
}

/// A path argument: a string (a number as Lua prints it).
fn path_arg(v: &LuaValue) -> Result<String, Error> {
    match v {
        LuaValue::String(s) => Ok(s.to_string_lossy().to_string()),
        LuaValue::Integer(i) => Ok(i.to_string()),
        LuaValue::Nil => Err(invalid("path is empty")),
        other => Err(invalid(format!("path must be a string, got {}", super::lua_type(other)))),
    }
}

/// An open file: `None` once closed.
struct File {
    path: String,
    file: Mutex<Option<std::fs::File>>,
}

impl File {
    fn with<R>(&self, f: impl FnOnce(&mut std::fs::File) -> std::io::Result<R>) -> Result<R, Error> {
        let mut g = self.file.lock();
        let Some(file) = g.as_mut() else {
            let mut e = Error::internal(format!("{}: file is closed", self.path));
            e.retryable = Some(false);
            return Err(e);
        };
        f(file).map_err(|e| io_error(e, "file", &self.path))
    }
}

/// A scanner over an open file: lines (without their end), words, bytes or UTF-8 runes.
struct Scanner {
    file: Arc<File>,
    split: Split,
    buf: Vec<u8>,
    eof: bool,
    token: Vec<u8>,
    err: Option<Error>,
}

#[derive(Clone, Copy)]
enum Split {
    Lines,
    Words,
    Bytes,
    Runes,
}

impl Scanner {
    /// Read more into the buffer; false at the end of the file (or on an error, kept).
    fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let mut chunk = vec![0u8; 64 * 1024];
        match self.file.with(|f| f.read(&mut chunk)) {
            Ok(0) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) => {
                self.err = Some(e);
                self.eof = true;
                false
            }
        }
    }

    fn scan(&mut self) -> bool {
        loop {
            let found = match self.split {
                Split::Lines => self.buf.iter().position(|&b| b == b'\n').map(|i| {
                    let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    line
                }),
                Split::Words => {
                    let start = self.buf.iter().position(|b| !b.is_ascii_whitespace());
                    match start {
                        None => {
                            self.buf.clear();
                            None
                        }
                        Some(s) => self.buf[s..].iter().position(|b| b.is_ascii_whitespace()).map(|len| {
                            let word = self.buf[s..s + len].to_vec();
                            self.buf.drain(..s + len);
                            word
                        }),
                    }
                }
                Split::Bytes => (!self.buf.is_empty()).then(|| vec![self.buf.remove(0)]),
                Split::Runes => {
                    let width = match self.buf.first() {
                        None => 0,
                        Some(&b) if b < 0x80 => 1,
                        Some(&b) if b >> 5 == 0b110 => 2,
                        Some(&b) if b >> 4 == 0b1110 => 3,
                        Some(&b) if b >> 3 == 0b11110 => 4,
                        Some(_) => 1,
                    };
                    (width > 0 && self.buf.len() >= width).then(|| self.buf.drain(..width).collect())
                }
            };
            if let Some(tok) = found {
                self.token = tok;
                return true;
            }
            if !self.fill() {
                // the end: what is left is the last token (a last line without its newline)
                let rest = std::mem::take(&mut self.buf);
                let rest = match self.split {
                    Split::Words => rest.split(|b| b.is_ascii_whitespace()).find(|w| !w.is_empty()).map(<[u8]>::to_vec),
                    _ => (!rest.is_empty()).then_some(rest),
                };
                return match rest {
                    Some(tok) if self.err.is_none() => {
                        self.token = tok;
                        true
                    }
                    _ => false,
                };
            }
        }
    }
}

impl UserData for Scanner {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method_mut("scan", |_, s, ()| Ok(s.scan()));
        m.add_method("text", |lua, s, ()| lua.create_string(&s.token));
        m.add_method("err", |lua, s, ()| match &s.err {
            Some(e) => Ok(LuaValue::UserData(lua.create_userdata(super::errors::LuaError::new(e.clone()))?)),
            None => Ok(LuaValue::Nil),
        });
    }
}

struct FileRef(Arc<File>);

impl UserData for FileRef {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("read", |lua, f, size: Option<i64>| {
            let size = size.unwrap_or(4096).clamp(1, 16 << 20) as usize;
            let mut buf = vec![0u8; size];
            match f.0.with(|file| file.read(&mut buf)) {
                Ok(0) => answer_err(lua, Error::not_found(format!("{}: end of file", f.0.path))),
                Ok(n) => ok(lua, lua.create_string(&buf[..n])?),
                Err(e) => fail(lua, e),
            }
        });
        m.add_method("write", |lua, f, data: LuaValue| {
            let LuaValue::String(s) = &data else { return answer_err(lua, invalid("data must be a string")) };
            let bytes = s.as_bytes().to_vec();
            match f.0.with(|file| file.write_all(&bytes)) {
                Ok(()) => ok(lua, bytes.len() as i64),
                Err(e) => fail(lua, e),
            }
        });
        m.add_method("seek", |lua, f, (whence, offset): (Option<String>, Option<i64>)| {
            let offset = offset.unwrap_or(0);
            let pos = match whence.as_deref().unwrap_or("cur") {
                "set" => SeekFrom::Start(offset.max(0) as u64),
                "cur" => SeekFrom::Current(offset),
                "end" => SeekFrom::End(offset),
                other => return answer_err(lua, invalid(format!("invalid whence {other:?} (set, cur or end)"))),
            };
            match f.0.with(|file| file.seek(pos)) {
                Ok(p) => ok(lua, p as i64),
                Err(e) => fail(lua, e),
            }
        });
        m.add_method("stat", |lua, f, ()| match f.0.with(|file| file.metadata()) {
            Ok(meta) => ok(lua, stat_table(lua, base_name(&f.0.path), &meta)?),
            Err(e) => fail(lua, e),
        });
        m.add_method("sync", |lua, f, ()| match f.0.with(|file| file.sync_all()) {
            Ok(()) => ok(lua, true),
            Err(e) => fail(lua, e),
        });
        m.add_method("close", |lua, f, ()| {
            f.0.file.lock().take();
            ok(lua, true)
        });
        m.add_method("scanner", |lua, f, split: Option<String>| {
            if f.0.file.lock().is_none() {
                return answer_err(lua, invalid(format!("{}: file is closed", f.0.path)));
            }
            let split = match split.as_deref().unwrap_or("lines") {
                "lines" => Split::Lines,
                "words" => Split::Words,
                "bytes" => Split::Bytes,
                "runes" => Split::Runes,
                other => return answer_err(lua, invalid(format!("invalid split mode {other:?} (lines, words, bytes or runes)"))),
            };
            let s = Scanner { file: f.0.clone(), split, buf: Vec::new(), eof: false, token: Vec::new(), err: None };
            ok(lua, lua.create_userdata(s)?)
        });
        m.add_meta_method(mlua::MetaMethod::ToString, |_, f, ()| Ok(format!("file: {}", f.0.path)));
    }
}

/// `open`/`writefile` modes: read, write (truncate), append, exclusive create; `+` adds the
/// other direction.
fn open_options(mode: &str) -> Option<std::fs::OpenOptions> {
    let mut o = std::fs::OpenOptions::new();
    let plus = mode.contains('+');
    match mode.trim_end_matches('+').trim_end_matches('b') {
        "r" => o.read(true).write(plus),
        "w" => o.write(true).create(true).truncate(true).read(plus),
        "a" => o.append(true).create(true).read(plus),
        "wx" | "x" => o.write(true).create_new(true).read(plus),
        _ => return None,
    };
    Some(o)
}

/// A path argument resolved in volume `v`, or return its error from the calling method.
macro_rules! resolved {
    ($lua:expr, $v:expr, $path:expr) => {
        match path_arg(&$path).and_then(|p| $v.real(&p)) {
            Ok(p) => p,
            Err(e) => return answer_err($lua, e),
        }
    };
}

impl UserData for Volume {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        fn readfile(lua: &Lua, v: &Volume, path: LuaValue) -> Answer {
            let (clean, full) = resolved!(lua, v, path);
            match std::fs::read(&full) {
                Ok(b) => ok(lua, lua.create_string(b)?),
                Err(e) => answer_err(lua, io_error(e, "open", &clean)),
            }
        }
        fn writefile(lua: &Lua, v: &Volume, (path, data, mode): (LuaValue, LuaValue, Option<String>)) -> Answer {
            let (clean, full) = resolved!(lua, v, path);
            let mode = mode.unwrap_or_else(|| "w".into());
            let Some(opts) = open_options(&mode).filter(|_| matches!(mode.as_str(), "w" | "a" | "wx")) else {
                return answer_err(lua, invalid(format!("invalid mode {mode:?} (w, a or wx)")));
            };
            let mut file = match opts.open(&full) {
                Ok(f) => f,
                Err(e) => return answer_err(lua, io_error(e, "open", &clean)),
            };
            let written = match &data {
                LuaValue::String(s) => file.write_all(&s.as_bytes()),
                LuaValue::UserData(ud) => match ud.borrow::<FileRef>() {
                    Ok(src) => match src.0.with(|f| std::io::copy(f, &mut file)) {
                        Ok(_) => Ok(()),
                        Err(e) => return fail(lua, e),
                    },
                    Err(_) => return answer_err(lua, invalid("data must be a string or an open file")),
                },
                LuaValue::Integer(_) | LuaValue::Number(_) => file.write_all(LuaValue::to_string(&data)?.as_bytes()),
                other => return answer_err(lua, invalid(format!("data must be a string or an open file, got {}", super::lua_type(other)))),
            };
            match written {
                Ok(()) => ok(lua, true),
                Err(e) => answer_err(lua, io_error(e, "write", &clean)),
            }
        }
        m.add_method("readfile", |lua, v, p| readfile(lua, v, p));
        m.add_method("read_file", |lua, v, p| readfile(lua, v, p));
        m.add_method("writefile", |lua, v, a| writefile(lua, v, a));
        m.add_method("write_file", |lua, v, a| writefile(lua, v, a));
        m.add_method("exists", |lua, v, path: LuaValue| match path_arg(&path).and_then(|p| v.real(&p)) {
            Ok((_, full)) => ok(lua, full.symlink_metadata().is_ok()),
            Err(e) => answer_err(lua, e),
        });
        m.add_method("isdir", |lua, v, path: LuaValue| match path_arg(&path).and_then(|p| v.real(&p)) {
            Ok((_, full)) => ok(lua, full.is_dir()),
            Err(e) => answer_err(lua, e),
        });
        m.add_method("stat", |lua, v, path: LuaValue| {
            let (clean, full) = resolved!(lua, v, path);
            match std::fs::metadata(&full) {
                Ok(meta) => ok(lua, stat_table(lua, base_name(&clean), &meta)?),
                Err(e) => answer_err(lua, io_error(e, "stat", &clean)),
            }
        });
        m.add_method("mkdir", |lua, v, path: LuaValue| {
            let (clean, full) = resolved!(lua, v, path);
            match std::fs::create_dir(&full) {
                Ok(()) => ok(lua, true),
                Err(e) => answer_err(lua, io_error(e, "mkdir", &clean)),
            }
        });
        m.add_method("remove", |lua, v, path: LuaValue| {
            let (clean, full) = resolved!(lua, v, path);
            if clean == "/" {
                return answer_err(lua, Error::new(ErrorKind::PermissionDenied, "the volume's root cannot be removed"));
            }
            let r = if full.symlink_metadata().is_ok_and(|m| m.is_dir()) { std::fs::remove_dir(&full) } else { std::fs::remove_file(&full) };
            match r {
                Ok(()) => ok(lua, true),
                Err(e) => answer_err(lua, io_error(e, "remove", &clean)),
            }
        });
        m.add_method("readdir", |lua, v, path: LuaValue| {
            let (clean, full) = resolved!(lua, v, path);
            let mut list = Vec::new();
            match std::fs::read_dir(&full) {
                Ok(rd) => {
                    for item in rd {
                        match item {
                            Ok(item) => {
                                let is_dir = item.file_type().is_ok_and(|t| t.is_dir());
                                list.push((item.file_name().to_string_lossy().into_owned(), is_dir));
                            }
                            Err(e) => return answer_err(lua, io_error(e, "readdir", &clean)),
                        }
                    }
                }
                Err(e) => return answer_err(lua, io_error(e, "open", &clean)),
            }
            list.sort();
            let next = std::cell::Cell::new(0usize);
            let iter = lua.create_function(move |lua, _: mlua::MultiValue| {
                let i = next.get();
                let Some((name, is_dir)) = list.get(i) else { return Ok(LuaValue::Nil) };
                next.set(i + 1);
                let t = lua.create_table()?;
                t.raw_set("name", name.as_str())?;
                t.raw_set("type", if *is_dir { "directory" } else { "file" })?;
                Ok(LuaValue::Table(t))
            })?;
            Ok((LuaValue::Function(iter), LuaValue::Nil))
        });
        m.add_method("open", |lua, v, (path, mode): (LuaValue, Option<String>)| {
            let (clean, full) = resolved!(lua, v, path);
            let mode = mode.unwrap_or_else(|| "r".into());
            let Some(opts) = open_options(&mode) else {
                return answer_err(lua, invalid(format!("invalid mode {mode:?} (r, w, a or wx, with an optional +)")));
            };
            match opts.open(&full) {
                Ok(f) => ok(lua, lua.create_userdata(FileRef(Arc::new(File { path: clean, file: Mutex::new(Some(f)) })))?),
                Err(e) => answer_err(lua, io_error(e, "open", &clean)),
            }
        });
        m.add_method("chdir", |lua, v, path: LuaValue| {
            let (clean, full) = resolved!(lua, v, path);
            if !full.is_dir() {
                return answer_err(lua, Error::not_found(format!("{clean}: not a directory")));
            }
            *v.cwd.lock() = clean;
            ok(lua, true)
        });
        m.add_method("pwd", |lua, v, ()| ok(lua, v.cwd.lock().clone()));
        m.add_meta_method(mlua::MetaMethod::ToString, |_, v, ()| Ok(format!("fs: {}", v.id)));
    }
}

pub(crate) fn library(lua: &Lua, catalog: std::sync::Weak<crate::catalog::Catalog>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set(
        "get",
        lua.create_function(move |lua, id: LuaValue| {
            let LuaValue::String(id) = &id else { return answer_err(lua, invalid("volume ID must be a string")) };
            let id = id.to_string_lossy().to_string();
            if let Err(e) = crate::current::with(|cx, _| Ok(cx.allow("fs.get", &id)))? {
                return fail(lua, e);
            }
            let Some(dir) = catalog.upgrade().and_then(|c| c.volumes.read().get(&id).cloned()) else {
                return answer_err(lua, Error::not_found(format!("filesystem not found: {id}")));
            };
            let root = match dir.canonicalize() {
                Ok(r) => r,
                Err(e) => return answer_err(lua, io_error(e, "open", &format!("filesystem {id} ({})", dir.display()))),
            };
            ok(lua, lua.create_userdata(Volume { id, root, cwd: Mutex::new("/".into()) })?)
        })?,
    )?;
    let types = lua.create_table()?;
    types.raw_set("FILE", "file")?;
    types.raw_set("DIR", "directory")?;
    t.raw_set("type", types)?;
    let seek = lua.create_table()?;
    seek.raw_set("SET", "set")?;
    seek.raw_set("CUR", "cur")?;
    seek.raw_set("END", "end")?;
    t.raw_set("seek", seek)?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_paths_never_climb_above_the_root() {
        let v = Volume { id: "t".into(), root: PathBuf::from("/srv"), cwd: Mutex::new("/a/b".into()) };
        assert_eq!(v.clean("../../../../etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(v.clean("c/./d/../e").unwrap(), "/a/b/c/e");
        assert_eq!(v.clean("/x//y/").unwrap(), "/x/y");
        assert_eq!(v.clean("..").unwrap(), "/a");
        assert!(v.clean("").is_err() && v.clean("a\0b").is_err());
    }
}
