//! The entry kinds a `wippy` node knows: one table, one row per kind. A row's check reads
//! the entry's fields (defaults, durations, references) and adds what the kind needs to
//! the [`Plan`] the node boots from. Adding a kind is a row here and its check; a kind
//! that needs something new at boot also adds a field to `Plan` (plan.rs) and reads it in
//! `boot.rs` (a service kind: `service_specs`).

use std::sync::Arc;

use serde_json::Value as Json;
use wippy_lua::{EntryKind, LuaEntry, ShardOptions};
use wippy_registry::{Checker, EntryId, Lifecycle};
use wippy_runtime::{Actor, ConditionSpec, HostConfig, HostSecurity, PolicySpec, Table};

use crate::plan::{json_value, Command, HostPlan, IdentitySpec, Plan, PolicyPlan, ServicePlan, StorageSpec, TerminalPlan, TestPlan, VarSpec};

pub struct Kind {
    pub name: &'static str,
    pub check: fn(&mut Checker, &mut Plan),
}

pub const KINDS: &[Kind] = &[
    Kind { name: "process.host", check: process_host },
    Kind { name: "terminal.host", check: terminal_host },
    Kind { name: "process.lua", check: |c, p| lua(c, p, EntryKind::Process) },
    Kind { name: "function.lua", check: |c, p| lua(c, p, EntryKind::Function) },
    Kind { name: "library.lua", check: |c, p| lua(c, p, EntryKind::Library) },
    Kind { name: "process.service", check: service },
    Kind { name: "registry.entry", check: |_, _| {} },
    Kind { name: "env.storage.os", check: |c, p| env_storage(c, p, "os") },
    Kind { name: "env.storage.memory", check: |c, p| env_storage(c, p, "memory") },
    Kind { name: "env.storage.file", check: |c, p| env_storage(c, p, "file") },
    Kind { name: "env.storage.static", check: |c, p| env_storage(c, p, "static") },
    Kind { name: "env.storage.router", check: |c, p| env_storage(c, p, "router") },
    Kind { name: "env.variable", check: env_variable },
    Kind { name: "security.policy", check: security_policy },
    Kind { name: "security.token_store", check: token_store },
    Kind { name: "store.memory", check: memory_store },
    Kind { name: "db.sql.sqlite", check: sqlite },
    Kind { name: "contract.definition", check: contract_definition },
    Kind { name: "contract.binding", check: contract_binding },
    Kind { name: "template.set", check: template_set },
    Kind { name: "template.jet", check: template_jet },
    Kind { name: "exec.native", check: exec_native },
    Kind { name: "queue.driver.memory", check: |c, _| c.only("", &["lifecycle"]) },
    Kind { name: "queue.queue", check: queue },
    Kind { name: "queue.consumer", check: queue_consumer },
    // a module's name and documentation (Wippy's: nothing runs from it)
    Kind { name: "ns.definition", check: |c, _| c.only("", &["module", "readme", "wiki"]) },
    // resolved when the project loads (wippy_registry::Project): here only their fields
    Kind { name: "ns.dependency", check: |c, _| c.only("", &["component", "version", "parameters"]) },
    Kind { name: "ns.requirement", check: |c, _| c.only("", &["default", "targets"]) },
    Kind { name: "http.service", check: crate::http::service },
    Kind { name: "http.router", check: crate::http::router },
    Kind { name: "http.endpoint", check: crate::http::endpoint },
    Kind { name: "http.static", check: crate::http::statics },
    Kind { name: "fs.directory", check: crate::http::fs_directory },
];

pub fn find(kind: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == kind)
}

fn process_host(c: &mut Checker, plan: &mut Plan) {
    c.only("", &["host", "security", "lifecycle"]);
    c.only(
        "host",
        &["workers", "queue_size", "local_queue_size", "max_processes", "isolation", "max_process_memory", "time_slice", "max_mailbox", "max_mailbox_bytes"],
    );
    let id = c.entry.id.clone();
    let mut config = HostConfig::new(id.as_str());
    config.workers = c.positive("host.workers", config.workers as u64) as usize;
    config.queue_size = c.positive("host.queue_size", config.queue_size as u64) as usize;
    config.local_queue_size = c.positive("host.local_queue_size", config.local_queue_size as u64) as usize;
    config.max_processes = c.uint("host.max_processes", config.max_processes as u64) as usize;
    let slice = c.duration("host.time_slice", config.time_slice);
    if slice.is_zero() {
        c.error("host.time_slice", "must be longer than 0");
    } else {
        config.time_slice = slice;
    }
    let isolated = c.choice("host.isolation", &["shared", "process"], "shared") == "process";
    let max_process_memory = c.bytes("host.max_process_memory") as usize;
    config.max_mailbox = c.uint("host.max_mailbox", 0) as usize;
    if c.get("host.max_mailbox_bytes").is_some() {
        config.max_mailbox_bytes = c.bytes("host.max_mailbox_bytes") as usize;
    }
    // A process's queued messages count toward its memory limit: its mailbox alone can
    // never hold more.
    if max_process_memory > 0 && (config.max_mailbox_bytes == 0 || config.max_mailbox_bytes > max_process_memory) {
        config.max_mailbox_bytes = max_process_memory;
    }
    let lifecycle = c.lifecycle();
    config.stop_timeout = lifecycle.stop_timeout;
    let shard = ShardOptions { isolated, max_process_memory, ..ShardOptions::default() };
    let identity = host_security(c, plan, &mut config);
    plan.depends(&id, &lifecycle.requires);
    plan.hosts.push(HostPlan { id, config, shard, lifecycle, identity });
}

fn terminal_host(c: &mut Checker, plan: &mut Plan) {
    c.only("", &["hide_logs", "lifecycle"]);
    let hide_logs = c.bool("hide_logs", false);
    let lifecycle = c.lifecycle();
    plan.depends(&c.entry.id, &lifecycle.requires);
    plan.terminals.push(TerminalPlan { id: c.entry.id.clone(), hide_logs, lifecycle });
}

fn lua(c: &mut Checker, plan: &mut Plan, kind: EntryKind) {
    // (`pool`: Wippy's executor pool for a function; a call here is a process on its
    // caller's host, so there is no pool to size)
    c.only("", &["source", "method", "modules", "imports", "security", "pool"]);
    // the entry's own `security:` block (process and function entries)
    if kind == EntryKind::Library && c.get("security").is_some() {
        c.error("security", "a library has no processes of its own to secure; put the block on the entries that import it");
    } else if let Some(spec) = security_block(c, plan, "security", false) {
        plan.entry_security.push((c.entry.id.clone(), spec));
    }
    let entry = c.entry;
    let Some(source) = &entry.source else {
        if c.get("source").is_none() {
            c.error("source", "missing (required): file://path.lua relative to this YAML file, or the Lua text");
        }
        return;
    };
    let method = c.string("method").unwrap_or_else(|| "main".into());
    let modules = c.strings("modules");
    for m in &modules {
        if !wippy_lua::MODULES.contains(&m.as_str()) && !wippy_lua::ALWAYS_PRESENT.contains(&m.as_str()) {
            c.error("modules", format!("unknown module {m:?} (this runtime has: {})", wippy_lua::MODULES.join(", ")));
        }
    }
    let mut imports = Vec::new();
    for (alias, reference) in c.string_map("imports") {
        if let Some(id) = c.resolve(&format!("imports.{alias}"), &reference, &["library.lua"]) {
            imports.push((alias, id.to_string()));
        }
    }
    if kind != EntryKind::Library {
        command(c, plan);
        if entry.meta_str("type") == Some("test") {
            let order = match entry.meta.get("order") {
                None => 0,
                Some(v) => v.as_i64().unwrap_or_else(|| {
                    c.error("meta.order", format!("must be an integer, got {v}"));
                    0
                }),
            };
            let suite = entry.meta_str("suite").unwrap_or_else(|| entry.id.namespace()).to_string();
            plan.tests.push(TestPlan { id: entry.id.clone(), suite, order });
        }
    }
    // a process with meta.default_host (or meta.options.default_host) is also a function
    let default_host = if kind == EntryKind::Process {
        entry
            .meta_str("default_host")
            .or_else(|| entry.meta.get("options").and_then(|o| o.get("default_host")).and_then(|v| v.as_str()))
            .map(str::to_string)
    } else {
        None
    };
    let lua = LuaEntry {
        id: entry.id.to_string(),
        kind,
        source: source.text.clone(),
        chunk_name: source.name.clone(),
        method,
        modules: wippy_lua::bindable(modules),
        imports,
        version: 1,
        default_host,
        label: wippy_runtime::stats::EntryLabel::intern(entry.id.as_str()),
        security: None,
    };
    // Nothing starts with a source that does not compile (typed syntax erased first): the
    // error is Lua's own `file:line: message`.
    if let Some(msg) = wippy_lua::syntax_error(&lua) {
        c.error("source", msg);
    }
    plan.lua.push(lua);
}

/// `security.token_store`: tokens are kept in the node's memory (SPEC §12.9);
/// `default_expiration` is how long one lives when `create` names none (absent: never).
/// Wippy's `store`, `token_length` and `token_key` are accepted: a token here is 256 random
/// bits looked up in that memory, so there is no backing store to name and nothing to sign.
fn token_store(c: &mut Checker, plan: &mut Plan) {
    c.only("", &["store", "token_length", "default_expiration", "token_key", "token_key_env"]);
    let ttl = Some(c.duration("default_expiration", std::time::Duration::ZERO)).filter(|d| !d.is_zero());
    plan.token_stores.push((c.entry.id.to_string(), ttl));
}

/// `store.memory`: the `store` module's in-memory key-value store (Wippy's fields; expired
/// keys are invisible at once, so `cleanup_interval` only paces reclaiming their memory).
fn memory_store(c: &mut Checker, plan: &mut Plan) {
    c.only("", &["max_size", "cleanup_interval", "lifecycle"]);
    let max = c.uint("max_size", 0) as usize;
    let _ = c.duration("cleanup_interval", std::time::Duration::from_secs(300));
    plan.stores.push((c.entry.id.to_string(), max));
}

/// `db.sql.sqlite`: the `sql` module's SQLite database, a file (relative to the project)
/// or `:memory:`. As in Wippy there is one connection, so of `pool` only `max_lifetime` is
/// read (and a connection here lives as long as its entry), and `options` are ignored.
fn sqlite(c: &mut Checker, plan: &mut Plan) {
    c.only("", &["file", "pool", "options", "lifecycle"]);
    c.only("pool", &["max_open", "max_idle", "max_lifetime"]);
    let _ = c.duration("pool.max_lifetime", std::time::Duration::from_secs(3600));
    let Some(file) = c.required_string("file") else { return };
    if file.is_empty() {
        c.error("file", "must name a database file or :memory:");
        return;
    }
    plan.databases.push((c.entry.id.to_string(), file));
}

/// `contract.definition`: a contract's methods (`name`, `description`, `input_schemas`,
/// `output_schemas`), read by the `contract` module from the registry.
fn contract_definition(c: &mut Checker, _plan: &mut Plan) {
    c.only("", &["methods", "context_required"]);
    let Some(methods) = c.get("methods") else { return };
    let Some(list) = methods.as_array() else {
        c.error("methods", "must be a list of {name, description, input_schemas, output_schemas}");
        return;
    };
    let mut seen = std::collections::HashSet::new();
    for (i, m) in list.iter().enumerate() {
        match m.get("name").and_then(|n| n.as_str()) {
            Some(n) if !n.is_empty() => {
                if !seen.insert(n.to_string()) {
                    c.error(&format!("methods.{i}.name"), format!("method {n:?} is defined twice"));
                }
            }
            _ => c.error(&format!("methods.{i}.name"), "missing (required): the method's name"),
        }
    }
}

/// `contract.binding`: `contracts: [{contract, default, methods: {name: function}}]`; every
/// method named must be one of its contract's, and every function a `function.lua` entry.
fn contract_binding(c: &mut Checker, _plan: &mut Plan) {
    c.only("", &["contracts", "context_values"]);
    let Some(list) = c.get("contracts").and_then(|v| v.as_array()) else {
        c.error("contracts", "missing (required): a list of {contract, default, methods}");
        return;
    };
    for (i, item) in list.iter().enumerate() {
        let field = format!("contracts.{i}");
        let Some(def) = required_ref(c, &format!("{field}.contract"), &["contract.definition"]) else { continue };
        let _ = c.bool(&format!("{field}.default"), false);
        let known: Vec<String> = c
            .index_entry(&def)
            .and_then(|e| e.fields.get("methods").and_then(|m| m.as_array()).map(|ms| ms.iter().filter_map(|m| m.get("name").and_then(|n| n.as_str()).map(str::to_string)).collect()))
            .unwrap_or_default();
        let Some(methods) = item.get("methods").and_then(|m| m.as_object()) else {
            c.error(&format!("{field}.methods"), "missing (required): a mapping of method name to function entry");
            continue;
        };
        for name in methods.keys() {
            let mfield = format!("{field}.methods.{name}");
            if !known.iter().any(|k| k == name) {
                c.error(&mfield, format!("contract {def} has no method {name:?} (its methods: {})", known.join(", ")));
                continue;
            }
            let _ = c.reference(&mfield, &["function.lua"]);
        }
    }
}

/// A `template.set`'s action delimiters (Jet's `{{ }}` unless `engine.delimiters` says).
fn delimiters(set: &wippy_registry::Entry) -> (String, String) {
    let d = |k: &str, default: &str| set.get(&format!("engine.delimiters.{k}")).and_then(|v| v.as_str()).filter(|s| !s.is_empty()).unwrap_or(default).to_string();
    (d("left", "{{"), d("right", "}}"))
}

/// `template.set`: a set of Jet templates; `engine.globals` are variables every template
/// sees, `engine.delimiters.left`/`right` its action delimiters (the comment delimiters and
/// `extensions` are checked and, as in Wippy, not applied; `development_mode` changes
/// nothing here, where a set is parsed once per load).
fn template_set(c: &mut Checker, plan: &mut Plan) {
    c.only("", &["engine", "lifecycle"]);
    c.only("engine", &["development_mode", "delimiters", "extensions", "globals"]);
    c.only("engine.delimiters", &["left", "right", "comment_left", "comment_right"]);
    let _ = c.bool("engine.development_mode", false);
    for k in ["left", "right", "comment_left", "comment_right"] {
        let field = format!("engine.delimiters.{k}");
        if let Some(v) = c.get(&field) {
            if v.as_str().is_none_or(|s| s.is_empty()) {
                c.error(&field, "must be a non-empty string");
            }
        }
    }
    let _ = c.strings("engine.extensions");
    let globals = match c.get("engine.globals") {
        None => Vec::new(),
        Some(serde_json::Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), json_value(v))).collect(),
        Some(_) => {
            c.error("engine.globals", "must be a mapping of names to values");
            Vec::new()
        }
    };
    let (left, right) = delimiters(c.entry);
    plan.template_sets.push(wippy_lua::TemplateSetSpec { id: c.entry.id.to_string(), left, right, globals, templates: Vec::new() });
}

/// `template.jet`: one template of a set, named by its entry name or `meta.name`; its
/// source is parsed at load, so a syntax error names the file, entry and line.
fn template_jet(c: &mut Checker, plan: &mut Plan) {
    c.only("", &["set", "source", "data_func"]);
    let set = required_ref(c, "set", &["template.set"]);
    let name = c.entry.meta_str("name").map(str::to_string).unwrap_or_else(|| c.entry.id.name().to_string());
    let Some(source) = c.entry.source.clone() else {
        if c.get("source").is_none() {
            c.error("source", "missing (required): the template text, or file://path relative to this YAML file");
        }
        return;
    };
    let Some(set) = set else { return };
    let (left, right) = c.index_entry(&set).map(delimiters).unwrap_or_else(|| ("{{".into(), "}}".into()));
    if let Err(e) = wippy_lua::jet::parse(&source.text, &left, &right) {
        c.error("source", format!("{}: {e}", source.name));
        return;
    }
    if plan.templates.iter().any(|(s, n, _)| *s == set.to_string() && *n == name) {
        c.error("", format!("template set {set} already has a template named {name:?}"));
        return;
    }
    plan.templates.push((set.to_string(), name, source.text.to_string()));
}

/// `exec.native`: the `exec` module's executor of OS commands (`default_work_dir`,
/// `default_env`, `command_whitelist` of exact commands).
fn exec_native(c: &mut Checker, plan: &mut Plan) {
    c.only("", &["default_work_dir", "default_env", "command_whitelist", "lifecycle"]);
    let default_work_dir = c.string("default_work_dir").filter(|s| !s.is_empty()).map(std::path::PathBuf::from);
    let default_env = match c.get("default_env") {
        None => Vec::new(),
        Some(serde_json::Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))).collect(),
        Some(_) => {
            c.error("default_env", "must be a mapping of names to values");
            Vec::new()
        }
    };
    let command_whitelist = c.strings("command_whitelist");
    plan.executors.push((c.entry.id.to_string(), wippy_lua::ExecConfig { default_work_dir, default_env, command_whitelist }));
}

/// `queue.queue`: a queue on the memory driver (the only driver here; an AMQP or SQS
/// driver entry is an unknown kind). `driver_options.memory.max_length` bounds it (Wippy's
/// default 1000); `codec` is checked as Wippy's (an unknown one fails at load); other
/// drivers' options and `dead_letter` are accepted and, as in Wippy's memory driver, unused.
fn queue(c: &mut Checker, plan: &mut Plan) {
    c.only("", &["driver", "codec", "queue_name", "driver_options", "options", "dead_letter", "lifecycle"]);
    c.only("dead_letter", &["queue", "max_attempts"]);
    let _ = required_ref(c, "driver", &["queue.driver.memory"]);
    let codec = c.string("codec").unwrap_or_else(|| "json/plain".into());
    if !["json/plain", "application/msgpack"].contains(&codec.as_str()) {
        c.error("codec", format!("unknown codec {codec:?} (known: json/plain, application/msgpack)"));
    }
    let _ = c.string("queue_name");
    let _ = c.uint("dead_letter.max_attempts", 0);
    if c.get("dead_letter.queue").is_some() {
        let _ = c.reference("dead_letter.queue", &["queue.queue"]);
    }
    // (`options.max_length`: the older spelling)
    let max = if c.get("driver_options.memory.max_length").is_some() { c.uint("driver_options.memory.max_length", 0) } else { c.uint("options.max_length", 0) };
    plan.queues.push((c.entry.id.to_string(), max as usize));
}

/// `queue.consumer`: a service that runs `func` once per message of `queue`, at most
/// `concurrency` at once, holding at most `prefetch` taken messages (Wippy's limits: 1000
/// and 10000). Its handlers run on a host of its own, `<consumer>#workers`.
fn queue_consumer(c: &mut Checker, plan: &mut Plan) {
    c.only("", &["queue", "func", "concurrency", "prefetch", "auto_ack", "driver_options", "lifecycle"]);
    let queue = required_ref(c, "queue", &["queue.queue"]);
    let func = required_ref(c, "func", &["function.lua"]);
    let concurrency = c.positive("concurrency", 1);
    if concurrency > 1000 {
        c.error("concurrency", format!("must be at most 1000, got {concurrency}"));
    }
    let prefetch = c.positive("prefetch", 10);
    if prefetch > 10_000 {
        c.error("prefetch", format!("must be at most 10000, got {prefetch}"));
    }
    let _ = c.bool("auto_ack", false);
    let lifecycle: Lifecycle = c.lifecycle();
    let identity = c.get("lifecycle.security").map(|_| identity_spec(c, plan, "lifecycle.security"));
    let id = c.entry.id.clone();
    let (Some(queue), Some(func)) = (queue, func) else { return };
    let host = HostConfig::new(&format!("{id}#workers"));
    if service_on_own_host(c, plan, host, lifecycle, identity) {
        plan.consumers.push(wippy_lua::ConsumerConfig { id: id.to_string(), queue: queue.to_string(), func: func.to_string(), concurrency: concurrency as usize, prefetch: prefetch as usize });
    }
}

/// The entry as a service (its process is the entry itself, a native one) on a host of its
/// own, `host`, that starts before it and stops after it (an HTTP server's handlers, a queue
/// consumer's). False when the host's name is not an entry ID (reported).
pub(crate) fn service_on_own_host(c: &mut Checker, plan: &mut Plan, mut host: HostConfig, lifecycle: Lifecycle, identity: Option<IdentitySpec>) -> bool {
    let id = c.entry.id.clone();
    let host_id: EntryId = match host.name.parse() {
        Ok(h) => h,
        Err(e) => {
            c.error("", format!("{e}"));
            return false;
        }
    };
    host.stop_timeout = lifecycle.stop_timeout;
    plan.hosts.push(HostPlan { id: host_id.clone(), config: host, shard: Default::default(), lifecycle: lifecycle.clone(), identity: None });
    let mut deps = lifecycle.requires.clone();
    deps.push(host_id.clone());
    plan.depends(&host_id, &lifecycle.requires);
    plan.depends(&id, &deps);
    plan.services.push(ServicePlan { id: id.clone(), process: id, host: host_id, input: Vec::new(), lifecycle, identity });
    true
}

/// `meta.command: {name, short}` makes a process a named CLI command.
fn command(c: &mut Checker, plan: &mut Plan) {
    let Some(cmd) = c.get("meta.command") else { return };
    if !cmd.is_object() {
        c.error("meta.command", "must be a mapping {name, short}");
        return;
    }
    let Some(name) = c.required_string("meta.command.name") else { return };
    if name.is_empty() || name.contains(char::is_whitespace) || name == "list" {
        c.error("meta.command.name", format!("{name:?} cannot be a command name"));
        return;
    }
    let short = c.string("meta.command.short").unwrap_or_default();
    // `meta.command.security`: who the command runs as when the CLI launches it (Wippy's
    // command security, where an empty block is an error too)
    let identity = security_block(c, plan, "meta.command.security", true);
    // as in Wippy, names are not unique: the first entry in registry order answers to it
    if let Some(other) = plan.commands.iter().find(|x| x.name == name) {
        let msg = format!("command name {name:?} is already used by {}, which `wippy run {name}` runs; this one is reachable with -x {}", other.entry, c.entry.id);
        c.warn("meta.command.name", msg);
    }
    plan.commands.push(Command { name, short, entry: c.entry.id.clone(), identity });
}

fn service(c: &mut Checker, plan: &mut Plan) {
    c.only("", &["process", "host", "input", "lifecycle"]);
    let process = required_ref(c, "process", &["process.lua"]);
    let host = required_ref(c, "host", &["process.host"]);
    let input = match c.get("input") {
        None => Vec::new(),
        Some(serde_json::Value::Array(items)) => items.iter().map(json_value).collect(),
        Some(other) => vec![json_value(other)],
    };
    let lifecycle: Lifecycle = c.lifecycle();
    let identity = c.get("lifecycle.security").map(|_| identity_spec(c, plan, "lifecycle.security"));
    let id = c.entry.id.clone();
    let mut deps = lifecycle.requires.clone();
    deps.extend(host.iter().cloned());
    plan.depends(&id, &deps);
    if let (Some(process), Some(host)) = (process, host) {
        plan.services.push(ServicePlan { id, process, host, input, lifecycle, identity });
    }
}

fn required_ref(c: &mut Checker, field: &str, kinds: &[&str]) -> Option<EntryId> {
    if c.get(field).is_none() {
        c.error(field, format!("missing (required): the {} entry to use", kinds.join(" or ")));
        return None;
    }
    c.reference(field, kinds)
}

const STORAGES: &[&str] = &["env.storage.os", "env.storage.memory", "env.storage.file", "env.storage.static", "env.storage.router"];

/// A file or directory mode: an octal string ("0644") or a number written in octal (644).
fn mode(c: &mut Checker, field: &str, default: u32) -> u32 {
    let Some(v) = c.get(field) else { return default };
    let text = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        other => {
            c.error(field, format!("must be an octal mode such as \"0644\", got {other}"));
            return default;
        }
    };
    match u32::from_str_radix(text.trim_start_matches("0o"), 8) {
        Ok(m) if m <= 0o7777 => m,
        _ => {
            c.error(field, format!("must be an octal mode such as \"0644\", got {text:?}"));
            default
        }
    }
}

/// `env.storage.*` (SPEC §12.11).
fn env_storage(c: &mut Checker, plan: &mut Plan, which: &str) {
    let spec = match which {
        "os" => {
            c.only("", &[]);
            StorageSpec::Os
        }
        "memory" => {
            c.only("", &[]);
            StorageSpec::Memory
        }
        "static" => {
            c.only("", &["values"]);
            StorageSpec::Static(c.string_map("values").into_iter().collect())
        }
        "file" => {
            c.only("", &["file_path", "auto_create", "file_mode", "dir_mode"]);
            let path = match c.string("file_path") {
                Some(p) if !p.is_empty() => p,
                _ => {
                    c.error("file_path", "missing (required): the .env file to read and write");
                    return;
                }
            };
            let auto_create = c.bool("auto_create", false);
            let file_mode = mode(c, "file_mode", 0o644);
            let dir_mode = mode(c, "dir_mode", 0o755);
            StorageSpec::File { path: path.into(), auto_create, file_mode, dir_mode }
        }
        _ => {
            c.only("", &["storages"]);
            let ids = c.references("storages", STORAGES);
            if ids.is_empty() {
                c.error("storages", "missing (required): the storages to try, in order");
                return;
            }
            StorageSpec::Router(ids)
        }
    };
    plan.env_storages.push((c.entry.id.clone(), spec));
}

/// `env.variable`: `variable` (the key in its storage, default: the entry ID), `storage`,
/// `default` (when the storage lacks the key or holds ""), `readonly`.
fn env_variable(c: &mut Checker, plan: &mut Plan) {
    c.only("", &["variable", "storage", "default", "readonly"]);
    let variable = c.string("variable").unwrap_or_else(|| c.entry.id.to_string());
    let storage = c.reference("storage", STORAGES);
    let default = match c.get("default") {
        None => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    let readonly = c.bool("readonly", false);
    plan.env_vars.push(VarSpec { id: c.entry.id.clone(), variable, storage, default, readonly });
}

/// `policy: {actions, resources, effect, conditions}` and `groups: [ns:group, ...]`.
/// Unknown fields and operators, bad regexes and a missing effect are load errors.
fn security_policy(c: &mut Checker, plan: &mut Plan) {
    c.only_known("", &["policy", "groups"]);
    if c.get("policy").is_none() {
        c.error("policy", "missing (required): {actions, resources, effect, conditions}");
        return;
    }
    c.only_known("policy", &["actions", "resources", "effect", "conditions"]);
    let list = |c: &mut Checker, field: &str| match c.get(field) {
        Some(Json::String(s)) => vec![s.clone()],
        Some(Json::Array(_)) => c.strings(field),
        Some(other) => {
            c.error(field, format!("must be a string or a list of strings, got {other}"));
            Vec::new()
        }
        None => Vec::new(),
    };
    let actions = list(c, "policy.actions");
    let resources = list(c, "policy.resources");
    let effect = c.string("policy.effect").unwrap_or_default();
    let mut conditions = Vec::new();
    match c.get("policy.conditions") {
        None => {}
        Some(Json::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let at = format!("policy.conditions[{}]", i + 1);
                let Some(m) = item.as_object() else {
                    c.error("policy.conditions", format!("item {} must be a mapping {{field, operator, value}}", i + 1));
                    continue;
                };
                if let Some(k) = m.keys().find(|k| !["field", "operator", "value", "value_from"].contains(&k.as_str())) {
                    c.error("policy.conditions", format!("{at}: unknown field {k} (known: field, operator, value, value_from)"));
                }
                let text = |k: &str| m.get(k).and_then(|v| v.as_str()).map(str::to_string);
                conditions.push(ConditionSpec {
                    field: text("field").unwrap_or_default(),
                    op: text("operator").unwrap_or_default(),
                    value: m.get("value").map(json_value),
                    value_from: text("value_from"),
                });
            }
        }
        Some(other) => c.error("policy.conditions", format!("must be a list, got {other}")),
    }
    let groups = group_names(c, "groups");
    let spec = PolicySpec { id: c.entry.id.to_string(), actions, resources, effect, conditions };
    match spec.compile() {
        Ok(policy) => plan.policies.push(PolicyPlan { policy: Arc::new(policy), groups }),
        Err(e) => c.error(&e.field, e.message),
    }
}

/// Group names: `ns:group`, or a bare name in the entry's namespace.
fn group_names(c: &mut Checker, field: &str) -> Vec<String> {
    let ns = c.entry.id.namespace().to_string();
    c.strings(field).into_iter().map(|g| if g.contains(':') { g } else { format!("{ns}:{g}") }).collect()
}

/// A `security: {actor, policies, groups}` block at `field`, fail-closed as Wippy checks one:
/// not a mapping, or a field it does not know, is an error (and so, with `empty_is_error`,
/// is a block that names nothing); its policies and groups must resolve (`identity_spec`).
/// `None` when there is no block or it is wrong.
fn security_block(c: &mut Checker, plan: &mut Plan, field: &str, empty_is_error: bool) -> Option<IdentitySpec> {
    match c.get(field)? {
        Json::Object(m) if m.is_empty() && empty_is_error => {
            c.error(field, "empty: give an actor, policies or groups (or leave the block out)");
            None
        }
        Json::Object(_) => {
            c.only_known(field, &["actor", "policies", "groups"]);
            Some(identity_spec(c, plan, field))
        }
        other => {
            c.error(field, format!("must be a mapping {{actor, policies, groups}}, got {other}"));
            None
        }
    }
}

/// `{actor: {id, meta}, policies: [ids], groups: [ids]}` under `prefix`.
pub(crate) fn identity_spec(c: &mut Checker, plan: &mut Plan, prefix: &str) -> IdentitySpec {
    let actor = match c.get(&format!("{prefix}.actor")) {
        None => None,
        Some(Json::Object(m)) => {
            c.only_known(&format!("{prefix}.actor"), &["id", "meta"]);
            let id = c.required_string(&format!("{prefix}.actor.id")).unwrap_or_default();
            let meta = match m.get("meta").map(json_value) {
                Some(v) => v.as_table().cloned().unwrap_or_default(),
                None => Table::new(),
            };
            Some(Arc::new(Actor::new(id).with_meta(meta)))
        }
        Some(other) => {
            c.error(&format!("{prefix}.actor"), format!("must be a mapping {{id, meta}}, got {other}"));
            None
        }
    };
    let policies = c.references(&format!("{prefix}.policies"), &["security.policy"]);
    let groups = group_names(c, &format!("{prefix}.groups"));
    for g in &groups {
        plan.group_refs.push((c.entry.id.clone(), format!("{prefix}.groups"), g.clone()));
    }
    IdentitySpec { actor, policies, groups }
}

/// A host's `security:` block: `modules`, `send_to`, `receive_from`, and a forced actor
/// and scope (`actor`, `policies`, `groups`).
fn host_security(c: &mut Checker, plan: &mut Plan, config: &mut HostConfig) -> Option<IdentitySpec> {
    c.get("security")?;
    c.only_known("security", &["modules", "send_to", "receive_from", "actor", "policies", "groups"]);
    let hosts = |c: &mut Checker, field: &str| -> Option<Vec<String>> {
        c.get(field)?;
        Some(c.references(field, &["process.host", "terminal.host"]).into_iter().map(|h| h.to_string()).collect())
    };
    let modules = c.get("security.modules").is_some().then(|| c.strings("security.modules"));
    let send_to = hosts(c, "security.send_to");
    let receive_from = hosts(c, "security.receive_from");
    config.security = Arc::new(HostSecurity { modules, send_to, receive_from, identity: None });
    let forced = ["actor", "policies", "groups"].iter().any(|k| c.get(&format!("security.{k}")).is_some());
    forced.then(|| identity_spec(c, plan, "security"))
}
