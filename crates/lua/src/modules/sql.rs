//! `sql` (Wippy's `en/lua/storage/sql.md`) over `db.sql.sqlite` entries, with rusqlite's
//! bundled SQLite. `sql.get(id)` (permission `db.get` on the ID) gives a handle with
//! `type`, `query`, `execute`, `prepare`, `begin`, `stats` and `release`; a transaction has
//! `db_type`, `query`, `execute`, `prepare`, `commit`, `rollback`, `savepoint`,
//! `rollback_to` and `release`; a statement `query`, `execute` and `close`. Parameters are
//! `?` placeholders bound from an array (`sql.NULL`, `sql.as.int|float|text|binary|null`
//! for an explicit type); a query answers an array of rows keyed by column name, an
//! execution `{last_insert_id, rows_affected}`.
//!
//! As in Wippy, a SQLite database has one connection (WAL for a file), shared by every
//! process. A transaction holds it from `begin` to `commit`/`rollback`: meanwhile another
//! handle's call fails at once with Unavailable (retryable) instead of waiting, so that no
//! worker thread ever sleeps on a lock held by a process that needs that thread to finish.
//! A transaction whose process has exited is rolled back by the next caller. The calls run
//! on the worker thread that runs the process. `sql.builder` (SELECT, INSERT, UPDATE, DELETE
//! and conditions, placeholder formats, `run_with`) is Lua, in `lua/sql_builder.lua`.

use std::sync::{Arc, Weak};

use mlua::{Lua, Table, UserData, UserDataMethods, Value as LuaValue};
use parking_lot::Mutex;
use rusqlite::types::Value as Sql;
use wippy_runtime::{Error, ErrorKind, Pid};

use super::{fail, invalid, or_fail};
use crate::catalog::Catalog;

type Answer = mlua::Result<(LuaValue, LuaValue)>;

/// One `db.sql.sqlite` entry: its connection and who holds it in a transaction.
pub(crate) struct Database {
    id: String,
    state: Mutex<State>,
    next_tx: std::sync::atomic::AtomicU64,
    file: String,
}

#[derive(Default)]
struct State {
    /// Opened on first use.
    conn: Option<rusqlite::Connection>,
    /// The open transaction: its number and the process that began it.
    tx: Option<(u64, Pid)>,
}

impl Database {
    pub(crate) fn new(id: &str, file: &str) -> Database {
        Database { id: id.to_string(), state: Mutex::new(State::default()), next_tx: 1.into(), file: file.to_string() }
    }

    pub(crate) fn file(&self) -> &str {
        &self.file
    }

    /// Run `f` on the connection (opened on first use) for transaction `tx` (None: outside
    /// any), refusing while another transaction holds it. `f` also gets the transaction
    /// slot, to open or end one; both stay locked for the whole call.
    fn with<R>(&self, tx: Option<u64>, f: impl FnOnce(&mut rusqlite::Connection, &mut Option<(u64, Pid)>) -> Result<R, Error>) -> Result<R, Error> {
        let mut st = self.state.lock();
        match (st.tx, tx) {
            (Some((open, _)), Some(mine)) if open == mine => {}
            (_, Some(_)) => return Err(invalid("transaction is not active")),
            (Some((_, owner)), None) => {
                let alive = crate::current::with(|cx, _| Ok(cx.node().is_alive(owner))).unwrap_or(true);
                if alive {
                    let mut e = Error::new(ErrorKind::Unavailable, format!("database {} is busy: a transaction of {owner} holds its connection", self.id));
                    e.retryable = Some(true);
                    return Err(e);
                }
                // its process is gone: roll it back
                st.tx = None;
                if let Some(c) = st.conn.as_mut() {
                    let _ = c.execute_batch("ROLLBACK");
                }
            }
            (None, None) => {}
        }
        if st.conn.is_none() {
            st.conn = Some(open(&self.file).map_err(|e| sql_error(e, &format!("open database {}", self.id)))?);
        }
        let State { conn, tx: slot } = &mut *st;
        f(conn.as_mut().expect("opened above"), slot)
    }
}

fn open(file: &str) -> rusqlite::Result<rusqlite::Connection> {
    if file == ":memory:" {
        return rusqlite::Connection::open_in_memory();
    }
    let c = rusqlite::Connection::open(file)?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    Ok(c)
}


/// A SQLite error as a Wippy error: syntax and misuse are Invalid, a constraint Conflict,
/// a busy database Unavailable (retryable), the rest Internal.
fn sql_error(e: rusqlite::Error, what: &str) -> Error {
    use rusqlite::ErrorCode as C;
    let (kind, retry) = match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            C::ConstraintViolation => (ErrorKind::Conflict, false),
            C::DatabaseBusy | C::DatabaseLocked => (ErrorKind::Unavailable, true),
            C::CannotOpen | C::PermissionDenied | C::ReadOnly => (ErrorKind::PermissionDenied, false),
            _ if f.extended_code == 1 => (ErrorKind::Invalid, false), // SQLITE_ERROR: syntax, no such table
            _ => (ErrorKind::Internal, false),
        },
        rusqlite::Error::InvalidParameterCount(..) | rusqlite::Error::InvalidParameterName(_) | rusqlite::Error::ToSqlConversionFailure(_) => (ErrorKind::Invalid, false),
        rusqlite::Error::SqlInputError { .. } => (ErrorKind::Invalid, false),
        _ => (ErrorKind::Internal, false),
    };
    let mut err = Error::new(kind, format!("{what}: {e}"));
    err.retryable = Some(retry);
    err
}

/// A typed value from `sql.as.*` (and `sql.NULL`).
#[derive(Clone)]
struct Typed(Sql);

impl UserData for Typed {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_meta_method(mlua::MetaMethod::ToString, |_, t, ()| {
            Ok(match &t.0 {
                Sql::Null => "sql.NULL".to_string(),
                Sql::Integer(i) => format!("sql.int({i})"),
                Sql::Real(r) => format!("sql.float({r})"),
                Sql::Text(s) => format!("sql.text({s:?})"),
                Sql::Blob(b) => format!("sql.binary({} bytes)", b.len()),
            })
        });
    }
}

/// A Lua value as a bind parameter.
fn param(v: &LuaValue, i: usize) -> Result<Sql, Error> {
    Ok(match v {
        LuaValue::Nil => Sql::Null,
        LuaValue::Boolean(b) => Sql::Integer(i64::from(*b)),
        LuaValue::Integer(n) => Sql::Integer(*n),
        LuaValue::Number(n) => Sql::Real(*n),
        LuaValue::String(s) => match std::str::from_utf8(&s.as_bytes()) {
            Ok(t) => Sql::Text(t.to_string()),
            Err(_) => Sql::Blob(s.as_bytes().to_vec()),
        },
        LuaValue::UserData(ud) => match ud.borrow::<Typed>() {
            Ok(t) => t.0.clone(),
            Err(_) => return Err(invalid(format!("parameter {i}: a userdata value cannot be bound"))),
        },
        other => return Err(invalid(format!("parameter {i}: a {} cannot be bound", super::lua_type(other)))),
    })
}

fn params(p: &Option<Table>) -> Result<Vec<Sql>, Error> {
    let Some(t) = p else { return Ok(Vec::new()) };
    let n = t.raw_len();
    (1..=n).map(|i| param(&t.raw_get::<LuaValue>(i).unwrap_or(LuaValue::Nil), i)).collect()
}

/// Rows as Lua tables keyed by column name (a NULL column is absent).
fn rows(lua: &Lua, conn: &rusqlite::Connection, text: &str, args: &[Sql]) -> Result<mlua::Result<Table>, Error> {
    let mut stmt = conn.prepare_cached(text).map_err(|e| sql_error(e, "query"))?;
    let names: Vec<String> = stmt.column_names().into_iter().map(str::to_string).collect();
    let mut cursor = stmt.query(rusqlite::params_from_iter(args.iter())).map_err(|e| sql_error(e, "query"))?;
    let mut out: Vec<Vec<Sql>> = Vec::new();
    while let Some(row) = cursor.next().map_err(|e| sql_error(e, "query"))? {
        let mut vals = Vec::with_capacity(names.len());
        for i in 0..names.len() {
            vals.push(row.get::<_, Sql>(i).map_err(|e| sql_error(e, "query"))?);
        }
        out.push(vals);
    }
    Ok((|| {
        let list = lua.create_table_with_capacity(out.len(), 0)?;
        for (r, vals) in out.into_iter().enumerate() {
            let t = lua.create_table_with_capacity(0, names.len())?;
            for (name, v) in names.iter().zip(vals) {
                let v = match v {
                    Sql::Null => continue,
                    Sql::Integer(i) => LuaValue::Integer(i),
                    Sql::Real(f) => LuaValue::Number(f),
                    Sql::Text(s) => LuaValue::String(lua.create_string(s)?),
                    Sql::Blob(b) => LuaValue::String(lua.create_string(b)?),
                };
                t.raw_set(name.as_str(), v)?;
            }
            list.raw_set(r + 1, t)?;
        }
        Ok(list)
    })())
}

fn execute(lua: &Lua, conn: &rusqlite::Connection, text: &str, args: &[Sql]) -> Result<mlua::Result<Table>, Error> {
    let mut stmt = conn.prepare_cached(text).map_err(|e| sql_error(e, "execute"))?;
    let n = stmt.execute(rusqlite::params_from_iter(args.iter())).map_err(|e| sql_error(e, "execute"))?;
    let last = conn.last_insert_rowid();
    Ok((|| {
        let t = lua.create_table()?;
        t.raw_set("last_insert_id", last)?;
        t.raw_set("rows_affected", n as i64)?;
        Ok(t)
    })())
}

fn answer(r: Result<mlua::Result<Table>, Error>, lua: &Lua) -> Answer {
    match r {
        Ok(t) => Ok((LuaValue::Table(t?), LuaValue::Nil)),
        Err(e) => fail(lua, e),
    }
}

/// Where statements of a handle run: outside a transaction, or inside one.
#[derive(Clone)]
struct Scope {
    db: Arc<Database>,
    tx: Option<u64>,
}

impl Scope {
    fn query(&self, lua: &Lua, text: &str, p: &Option<Table>) -> Answer {
        let args = or_fail!(lua, params(p));
        answer(self.db.with(self.tx, |c, _| rows(lua, c, text, &args)), lua)
    }

    fn execute(&self, lua: &Lua, text: &str, p: &Option<Table>) -> Answer {
        let args = or_fail!(lua, params(p));
        answer(self.db.with(self.tx, |c, _| execute(lua, c, text, &args)), lua)
    }

    /// A prepared statement: checked now, run later (from the connection's cache).
    fn prepare(&self, lua: &Lua, text: &str) -> Answer {
        match self.db.with(self.tx, |c, _| c.prepare_cached(text).map(|_| ()).map_err(|e| sql_error(e, "prepare"))) {
            Ok(()) => Ok((LuaValue::UserData(lua.create_userdata(Statement { scope: self.clone(), text: text.to_string(), closed: false.into() })?), LuaValue::Nil)),
            Err(e) => fail(lua, e),
        }
    }
}

struct Statement {
    scope: Scope,
    text: String,
    closed: std::sync::atomic::AtomicBool,
}

impl Statement {
    fn open(&self) -> Result<(), Error> {
        if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(invalid("statement is closed"));
        }
        Ok(())
    }
}

impl UserData for Statement {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("query", |lua, s, p: Option<Table>| match s.open() {
            Ok(()) => s.scope.query(lua, &s.text, &p),
            Err(e) => fail(lua, e),
        });
        m.add_method("execute", |lua, s, p: Option<Table>| match s.open() {
            Ok(()) => s.scope.execute(lua, &s.text, &p),
            Err(e) => fail(lua, e),
        });
        m.add_method("close", |_, s, ()| {
            s.closed.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok((true, LuaValue::Nil))
        });
    }
}

/// A handle from `sql.get`: usable until `release()`.
struct Handle {
    db: Arc<Database>,
    released: std::sync::atomic::AtomicBool,
}

impl Handle {
    fn scope(&self) -> Result<Scope, Error> {
        if self.released.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(invalid(format!("database {} is released", self.db.id)));
        }
        Ok(Scope { db: self.db.clone(), tx: None })
    }
}

fn text_arg(v: &LuaValue) -> Result<String, Error> {
    match v {
        LuaValue::String(s) if !s.as_bytes().is_empty() => Ok(s.to_string_lossy().to_string()),
        _ => Err(invalid("SQL text must be a non-empty string")),
    }
}

/// `scope_of(handle)` then the SQL text, or return the error from the calling method.
macro_rules! scoped {
    ($lua:expr, $scope:expr, $text:expr) => {
        match ($scope, text_arg(&$text)) {
            (Ok(s), Ok(t)) => (s, t),
            (Err(e), _) | (_, Err(e)) => return fail($lua, e),
        }
    };
}

impl UserData for Handle {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("type", |lua, h, ()| match h.scope() {
            Ok(_) => Ok((LuaValue::String(lua.create_string("sqlite")?), LuaValue::Nil)),
            Err(e) => fail(lua, e),
        });
        m.add_method("query", |lua, h, (text, p): (LuaValue, Option<Table>)| {
            let (s, t) = scoped!(lua, h.scope(), text);
            s.query(lua, &t, &p)
        });
        m.add_method("execute", |lua, h, (text, p): (LuaValue, Option<Table>)| {
            let (s, t) = scoped!(lua, h.scope(), text);
            s.execute(lua, &t, &p)
        });
        m.add_method("prepare", |lua, h, text: LuaValue| {
            let (s, t) = scoped!(lua, h.scope(), text);
            s.prepare(lua, &t)
        });
        m.add_method("begin", |lua, h, opts: Option<Table>| {
            let s = or_fail!(lua, h.scope());
            let read_only = opts.as_ref().is_some_and(|o| matches!(o.raw_get::<LuaValue>("read_only"), Ok(LuaValue::Boolean(true))));
            let me = crate::current::with(|cx, _| Ok(cx.pid()))?;
            let id = s.db.next_tx.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // (SQLite's transactions are serializable whatever the level asked for)
            let began = s.db.with(None, |c, slot| {
                c.execute_batch(if read_only { "BEGIN DEFERRED" } else { "BEGIN IMMEDIATE" }).map_err(|e| sql_error(e, "begin"))?;
                *slot = Some((id, me));
                Ok(())
            });
            match began {
                Ok(()) => {
                    let tx = Transaction { scope: Scope { db: s.db.clone(), tx: Some(id) } };
                    Ok((LuaValue::UserData(lua.create_userdata(tx)?), LuaValue::Nil))
                }
                Err(e) => fail(lua, e),
            }
        });
        m.add_method("stats", |lua, h, ()| {
            if let Err(e) = h.scope() {
                return fail(lua, e);
            }
            let t = lua.create_table()?;
            let (open, busy) = {
                let st = h.db.state.lock();
                (st.conn.is_some(), st.tx.is_some())
            };
            for (k, v) in [("max_open_connections", 1), ("open_connections", i64::from(open)), ("in_use", i64::from(busy)), ("idle", i64::from(open && !busy))] {
                t.raw_set(k, v)?;
            }
            for k in ["wait_count", "wait_duration", "max_idle_closed", "max_idle_time_closed", "max_lifetime_closed"] {
                t.raw_set(k, 0)?;
            }
            Ok((LuaValue::Table(t), LuaValue::Nil))
        });
        m.add_method("release", |_, h, ()| {
            h.released.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok((true, LuaValue::Nil))
        });
        m.add_meta_method(mlua::MetaMethod::ToString, |_, h, ()| Ok(format!("sql: {}", h.db.id)));
    }
}

struct Transaction {
    scope: Scope,
}

impl Transaction {
    /// This transaction's scope (its calls fail with "not active" once it ended).
    fn active(&self) -> Result<Scope, Error> {
        Ok(self.scope.clone())
    }

    /// `COMMIT` or `ROLLBACK`: the end of the transaction either way.
    fn finish(&self, lua: &Lua, verb: &str) -> Answer {
        let r = self.scope.db.with(self.scope.tx, |c, slot| {
            *slot = None;
            c.execute_batch(verb).map_err(|e| {
                // a failed COMMIT leaves SQLite's transaction open: end it
                let _ = c.execute_batch("ROLLBACK");
                sql_error(e, &verb.to_ascii_lowercase())
            })
        });
        match r {
            Ok(()) => Ok((LuaValue::Boolean(true), LuaValue::Nil)),
            Err(e) => fail(lua, e),
        }
    }

    fn savepoint(&self, lua: &Lua, verb: &str, name: &LuaValue) -> Answer {
        let name = match name {
            LuaValue::String(n) if !n.as_bytes().is_empty() && n.as_bytes().iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_') => n.to_string_lossy().to_string(),
            _ => return fail(lua, invalid("invalid savepoint name (letters, digits and _ only)")),
        };
        match self.scope.db.with(self.scope.tx, |c, _| c.execute_batch(&format!("{verb} {name}")).map_err(|e| sql_error(e, "savepoint"))) {
            Ok(()) => Ok((LuaValue::Boolean(true), LuaValue::Nil)),
            Err(e) => fail(lua, e),
        }
    }
}

impl UserData for Transaction {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("db_type", |lua, _, ()| Ok((LuaValue::String(lua.create_string("sqlite")?), LuaValue::Nil)));
        m.add_method("query", |lua, t, (text, p): (LuaValue, Option<Table>)| {
            let (s, q) = scoped!(lua, t.active(), text);
            s.query(lua, &q, &p)
        });
        m.add_method("execute", |lua, t, (text, p): (LuaValue, Option<Table>)| {
            let (s, q) = scoped!(lua, t.active(), text);
            s.execute(lua, &q, &p)
        });
        m.add_method("prepare", |lua, t, text: LuaValue| {
            let (s, q) = scoped!(lua, t.active(), text);
            s.prepare(lua, &q)
        });
        m.add_method("commit", |lua, t, ()| t.finish(lua, "COMMIT"));
        m.add_method("rollback", |lua, t, ()| t.finish(lua, "ROLLBACK"));
        m.add_method("savepoint", |lua, t, name: LuaValue| t.savepoint(lua, "SAVEPOINT", &name));
        m.add_method("rollback_to", |lua, t, name: LuaValue| t.savepoint(lua, "ROLLBACK TO", &name));
        m.add_method("release", |lua, t, name: LuaValue| t.savepoint(lua, "RELEASE", &name));
    }
}

pub(crate) fn library(lua: &Lua, catalog: Weak<Catalog>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set(
        "get",
        lua.create_function(move |lua, id: LuaValue| {
            let id = or_fail!(lua, super::resource_id(&id, "database"));
            if let Err(e) = crate::current::with(|cx, _| Ok(cx.allow("db.get", &id)))? {
                return fail(lua, e);
            }
            let Some(db) = catalog.upgrade().and_then(|c| c.databases.read().get(&id).cloned()) else {
                let mut e = Error::not_found(format!("database not found: {id}"));
                e.retryable = Some(false);
                return fail(lua, e);
            };
            Ok((LuaValue::UserData(lua.create_userdata(Handle { db, released: false.into() })?), LuaValue::Nil))
        })?,
    )?;
    let types = lua.create_table()?;
    for (k, v) in [("POSTGRES", "postgres"), ("MYSQL", "mysql"), ("SQLITE", "sqlite"), ("UNKNOWN", "unknown")] {
        types.raw_set(k, v)?;
    }
    t.raw_set("type", types)?;
    let iso = lua.create_table()?;
    for (k, v) in [
        ("DEFAULT", "default"),
        ("READ_UNCOMMITTED", "read_uncommitted"),
        ("READ_COMMITTED", "read_committed"),
        ("WRITE_COMMITTED", "write_committed"),
        ("REPEATABLE_READ", "repeatable_read"),
        ("SERIALIZABLE", "serializable"),
    ] {
        iso.raw_set(k, v)?;
    }
    t.raw_set("isolation", iso)?;
    t.raw_set("NULL", Typed(Sql::Null))?;
    let as_ = lua.create_table()?;
    as_.raw_set("int", lua.create_function(|_, v: LuaValue| match v {
        LuaValue::Integer(i) => Ok(Typed(Sql::Integer(i))),
        LuaValue::Number(n) => Ok(Typed(Sql::Integer(n as i64))),
        LuaValue::String(s) => s.to_string_lossy().trim().parse::<i64>().map(|i| Typed(Sql::Integer(i))).map_err(|_| mlua::Error::runtime("sql.as.int: not an integer")),
        _ => Err(mlua::Error::runtime("sql.as.int: not an integer")),
    })?)?;
    as_.raw_set("float", lua.create_function(|_, v: LuaValue| match v {
        LuaValue::Integer(i) => Ok(Typed(Sql::Real(i as f64))),
        LuaValue::Number(n) => Ok(Typed(Sql::Real(n))),
        LuaValue::String(s) => s.to_string_lossy().trim().parse::<f64>().map(|f| Typed(Sql::Real(f))).map_err(|_| mlua::Error::runtime("sql.as.float: not a number")),
        _ => Err(mlua::Error::runtime("sql.as.float: not a number")),
    })?)?;
    as_.raw_set("text", lua.create_function(|_, v: LuaValue| Ok(Typed(Sql::Text(v.to_string()?))))?)?;
    as_.raw_set("binary", lua.create_function(|_, v: mlua::LuaString| Ok(Typed(Sql::Blob(v.as_bytes().to_vec()))))?)?;
    as_.raw_set("null", lua.create_function(|_, ()| Ok(Typed(Sql::Null)))?)?;
    t.raw_set("as", as_)?;
    Ok(t)
}

/// `R.sql_builder(env, sql)`: the query builder (Lua: it only writes text and arguments), compiled
/// when a VM's first process binds `sql` (the prelude's LAZY) and read-only as every
/// shared library table is.
pub(crate) fn builder_loader(lua: &Lua) -> mlua::Result<mlua::Function> {
    lua.create_function(move |lua, (env, sql): (Table, Table)| {
        let is_null = lua.create_function(|_, v: LuaValue| Ok(matches!(&v, LuaValue::UserData(ud) if ud.borrow::<Typed>().is_ok_and(|t| matches!(t.0, Sql::Null)))))?;
        let make_invalid = lua.create_function(|lua, m: String| lua.create_userdata(super::errors::LuaError::new(invalid(m))))?;
        let null: LuaValue = sql.raw_get("NULL")?;
        let builder: Table = lua.load(include_str!("../lua/sql_builder.lua")).set_name("@sql.builder").set_environment(env).call((is_null, null, make_invalid))?;
        crate::vm::sandbox::read_only(lua, builder)
    })
}
