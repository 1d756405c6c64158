//! Loading a project: `wippy.lock` (where the sources are), every definition YAML below
//! the source directory, entries with their IDs and `file://` sources. Kinds are not
//! checked here (the embedder's kind table does that through [`crate::Checker`]); this
//! module only knows the file format.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;

use crate::entry::{Data, Entry, Origin, Source};
use crate::{EntryId, LoadError, LoadErrors};

/// A loaded project: its entries (in file order) and the text of every YAML file read.
#[derive(Debug, Clone, Default)]
pub struct Project {
    pub root: PathBuf,
    pub src: PathBuf,
    /// The modules directory (`directories.modules` in wippy.lock, else `.wippy`): with the
    /// source directory, the only place a `file://` source may be read from.
    pub modules: PathBuf,
    pub entries: Vec<Entry>,
    /// YAML text by the file name used in [`Origin::file`].
    pub files: HashMap<String, Arc<str>>,
    /// What loading noticed but did not refuse (an unresolved `ns.requirement`).
    pub warnings: Vec<LoadError>,
    /// The overrides applied to the entries (the `override:` configuration section, then
    /// `-o`), in order: a reload of the files (`--watch`) applies them again.
    pub overrides: Vec<Override>,
}

/// One entry override: `ns:entry:path` and the value it sets.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub target: String,
    pub value: serde_json::Value,
}

#[derive(Deserialize)]
struct Lock {
    #[serde(default)]
    directories: LockDirs,
}

#[derive(Deserialize, Default)]
struct LockDirs {
    src: Option<String>,
    modules: Option<String>,
}

/// The largest source file an entry may name: a source is code, not data, and this bound
/// keeps a `source:` pointing at something huge from exhausting memory at load.
pub const MAX_SOURCE_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Deserialize)]
struct EntriesDoc {
    entries: Vec<Spanned<Value>>,
}

/// A path for messages: relative to the project root when it is inside it.
pub(crate) fn display_path(root: &Path, p: &Path) -> String {
    let rel = p.strip_prefix(root).unwrap_or(p);
    let s = rel.to_string_lossy().to_string();
    s.strip_prefix("./").map(str::to_string).unwrap_or(s)
}

/// A serde-saphyr error as a load error with line and column.
pub(crate) fn yaml_error(file: &str, what: &str, e: &serde_saphyr::Error) -> LoadError {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("").trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // "line 4 column 11: unclosed bracket" -> "unclosed bracket"
    let message = match first.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
        Some((_, m)) => m,
        None => first,
    };
    let err = LoadError::new(format!("{what}: {message}")).file(file);
    match e.location() {
        Some(l) => err.at(l.line(), l.column()),
        None => err,
    }
}

/// The line and column of `field` inside the entry at `origin`: its dotted path walked
/// through the entry's YAML (`list.0` or `list[1]` picks a list's first item), as deep as the
/// text goes (a missing key is reported where its mapping starts); when the path cannot be
/// followed (flow style, or a field the entry does not spell), the first line between the
/// entry's first and last line whose key is the path's last one; else the entry's position.
pub(crate) fn field_line(text: Option<&str>, origin: &Origin, field: &str) -> (u64, u64) {
    let key = field.rsplit('.').next().unwrap_or(field);
    if let Some(text) = text {
        let first = origin.line.saturating_sub(1) as usize;
        let lines: Vec<&str> = text.lines().skip(first).take((origin.end_line + 1 - origin.line) as usize).collect();
        if let Some((i, col)) = walk(&lines, field) {
            return ((first + i) as u64 + 1, col as u64 + 1);
        }
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start().trim_start_matches("- ");
            if t.strip_prefix(key).is_some_and(|r| r.trim_start().starts_with(':')) {
                return ((first + i) as u64 + 1, (line.len() - t.len()) as u64 + 1);
            }
        }
    }
    (origin.line, origin.column)
}

/// One line of block-style YAML: the column of its `-` when it is a list item, and the
/// column and name of its key (after the `-`) when it has one.
struct YamlLine<'a> {
    dash: Option<usize>,
    at: usize,
    key: Option<&'a str>,
}

fn yaml_line(line: &str) -> Option<YamlLine<'_>> {
    let t = line.trim_start();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    let indent = line.len() - t.len();
    let (dash, rest) = match t.strip_prefix('-').filter(|r| r.is_empty() || r.starts_with(' ')) {
        Some(r) => (Some(indent), r.trim_start()),
        None => (None, t),
    };
    let at = line.len() - rest.len();
    let key = rest.split_once(':').filter(|(_, after)| after.is_empty() || after.starts_with(' ')).map(|(k, _)| k.trim().trim_matches(|c| c == '"' || c == '\'')).filter(|k| !k.is_empty() && !k.contains(['{', '[', ' ']));
    Some(YamlLine { dash, at, key })
}

/// Where `path` is in `lines` (an entry's lines, its first one `- name: ...`): the line and
/// column of the deepest part of the path found, if at least its first part is.
fn walk(lines: &[&str], path: &str) -> Option<(usize, usize)> {
    let parsed: Vec<Option<YamlLine>> = lines.iter().map(|l| yaml_line(l)).collect();
    // the mapping being searched: lines [from, to), its keys at column `level`
    let (mut from, mut to) = (0, lines.len());
    let mut level = parsed.first()?.as_ref()?.at;
    let mut found: Option<(usize, usize)> = None;
    // `a.0.b` (from 0) and `a[1].b` (from 1, as the policy checks write it) both name a list item
    let mut segs: Vec<std::borrow::Cow<str>> = Vec::new();
    for part in path.split('.') {
        match part.split_once('[').and_then(|(k, rest)| Some((k, rest.strip_suffix(']')?.parse::<usize>().ok()?))) {
            Some((k, n)) if n > 0 => {
                segs.push(k.into());
                segs.push((n - 1).to_string().into());
            }
            _ => segs.push(part.into()),
        }
    }
    for seg in segs.iter().map(|s| &**s) {
        let next = if let Ok(n) = seg.parse::<usize>() {
            // the n-th item of the list in [from, to): lines whose `-` is at the list's column
            (|| {
                let col = (from..to).find_map(|i| parsed[i].as_ref().and_then(|l| l.dash))?;
                let items: Vec<usize> = (from..to).filter(|&i| parsed[i].as_ref().is_some_and(|l| l.dash == Some(col))).collect();
                let at = *items.get(n)?;
                let end = items.iter().find(|&&i| i > at).copied().unwrap_or(to);
                let key_at = parsed[at].as_ref()?.at;
                Some(((at, key_at), (at, end, key_at)))
            })()
        } else {
            (|| {
                let i = (from..to).find(|&i| parsed[i].as_ref().is_some_and(|l| l.at == level && l.key == Some(seg)))?;
                // its value: the lines after it indented deeper, or a list at its own column
                let end = (i + 1..to)
                    .find(|&j| {
                        parsed[j].as_ref().is_some_and(|l| {
                            let indent = l.dash.unwrap_or(l.at);
                            indent < level || (indent == level && l.dash.is_none())
                        })
                    })
                    .unwrap_or(to);
                // (an inline value has nothing deeper: the next part, if any, is not found)
                let inner = (i + 1..end).find_map(|j| parsed[j].as_ref()).map_or(level + 1, |l| l.at);
                Some(((i, level), (i + 1, end, inner)))
            })()
        };
        let Some((at, range)) = next else { break };
        found = Some(at);
        (from, to, level) = range;
    }
    found
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut items: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    items.sort_by_key(|e| e.file_name());
    for item in items {
        let path = item.path();
        let ty = item.file_type()?;
        if ty.is_dir() {
            yaml_files(&path, out)?;
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(path);
        }
    }
    Ok(())
}

impl Project {
    /// `-o ns:entry:field=value` (Wippy's `--override`): the value is read as `--set` reads
    /// one (true/false, numbers, else a string); see [`Project::set_override`].
    pub fn apply_override(&mut self, assignment: &str) -> Result<(), String> {
        let (target, raw) = assignment.split_once('=').ok_or("expected ns:entry:field=value (no '=')")?;
        self.set_override(Override { target: target.to_string(), value: crate::scalar(raw) })
    }

    /// Set one field of a loaded entry before anything is checked or started (Wippy's entry
    /// overrides: `-o`, or the `override:` section of the configuration, whose values keep
    /// their YAML type). The target is `ns:entry:path`; the path is `kind` (the entry's kind,
    /// a non-empty string), `meta.NAME` (its metadata), `data.NAME` or a bare `NAME` (its
    /// fields), dotted for a field inside a mapping (`host.workers`).
    pub fn set_override(&mut self, o: Override) -> Result<(), String> {
        let (id, field) = o.target.rsplit_once(':').filter(|(id, f)| id.contains(':') && !f.is_empty()).ok_or("expected ns:entry:field")?;
        if field.split('.').any(str::is_empty) {
            return Err(format!("empty segment in field {field:?}"));
        }
        let entry = self.entries.iter_mut().find(|e| e.id.as_str() == id).ok_or_else(|| format!("no entry {id}"))?;
        if field == "kind" {
            match o.value.as_str() {
                Some(k) if !k.is_empty() => entry.kind = k.to_string(),
                _ => return Err(format!("kind must be a non-empty string, got {}", o.value)),
            }
            self.overrides.push(o);
            return Ok(());
        }
        if field == "meta" || field == "data" {
            return Err(format!("give a field inside {field} ({field}.NAME)"));
        }
        let (mut map, path) = match (field.strip_prefix("meta."), field.strip_prefix("data.").unwrap_or(field)) {
            (Some(rest), _) => (&mut entry.meta, rest),
            (None, "source" | "name") => return Err(format!("{field} cannot be overridden (write it in the entry's file)")),
            (None, rest) => (&mut entry.fields, rest),
        };
        let mut parts: Vec<&str> = path.split('.').collect();
        let last = parts.pop().unwrap_or_default();
        for p in parts {
            let slot = map.entry(p.to_string()).or_insert_with(|| serde_json::Value::Object(Default::default()));
            map = slot.as_object_mut().ok_or_else(|| format!("{p} is not a mapping in {id}"))?;
        }
        map.insert(last.to_string(), o.value.clone());
        self.overrides.push(o);
        Ok(())
    }

    /// Load every definition file of the project in `root`. All errors are collected.
    pub fn load(root: &Path) -> Result<Project, LoadErrors> {
        let mut errors = Vec::new();
        let (src, modules) = source_dir(root)?;
        if !src.is_dir() {
            return Err(LoadError::new(format!(
                "source directory {} not found (set directories.src in wippy.lock, or create ./src)",
                src.display()
            ))
            .into());
        }
        let mut files = Vec::new();
        yaml_files(&src, &mut files)
            .map_err(|e| LoadError::new(format!("cannot read source directory {}: {e}", src.display())))?;
        let mut project = Project { root: root.to_path_buf(), src, modules, ..Project::default() };
        for path in files {
            project.load_file(&path, &mut errors);
        }
        project.load_dependencies(&mut errors);
        project.resolve_requirements(&mut errors);
        project.check_duplicates(&mut errors);
        if errors.is_empty() {
            Ok(project)
        } else {
            Err(LoadErrors(errors))
        }
    }

    /// `ns.dependency` entries (SPEC §12.13): each names a component `<org>/<module>`
    /// installed in the modules directory (`<modules>/<org>/<module>` or
    /// `<modules>/vendor/<org>/<module>`), whose definition files then load like the
    /// project's. One that is not installed is a load error.
    fn load_dependencies(&mut self, errors: &mut Vec<LoadError>) {
        let deps: Vec<Entry> = self.entries.iter().filter(|e| e.kind == "ns.dependency").cloned().collect();
        let mut loaded: Vec<PathBuf> = Vec::new();
        for dep in deps {
            let at = |field: &str, m: String| {
                let (line, column) = field_line(self.files.get(&dep.origin.file).map(|t| &**t), &dep.origin, field);
                LoadError::new(m).file(&dep.origin.file).at(line, column).entry(dep.id.as_str()).field(field)
            };
            let Some(component) = dep.fields.get("component").and_then(|v| v.as_str()).map(str::to_string) else {
                errors.push(at("component", "missing (required): the module, as \"<org>/<module>\"".into()));
                continue;
            };
            let valid = component.split('/').count() == 2 && component.split('/').all(|p| !p.is_empty() && p != "." && p != "..");
            if !valid {
                errors.push(at("component", format!("must be \"<org>/<module>\", got {:?}", crate::truncate(&component, 200))));
                continue;
            }
            let dir = [self.modules.join(&component), self.modules.join("vendor").join(&component)].into_iter().find(|d| d.is_dir());
            let Some(dir) = dir else {
                let modules = display_path(&self.root, &self.modules);
                errors.push(at("component", format!("component {component} is not installed in the modules directory ({modules}): it must be installed (wippy install) before the project loads")));
                continue;
            };
            if loaded.contains(&dir) {
                continue;
            }
            loaded.push(dir.clone());
            let mut files = Vec::new();
            if let Err(e) = yaml_files(&dir, &mut files) {
                errors.push(at("component", format!("cannot read {}: {e}", dir.display())));
                continue;
            }
            for path in files {
                self.load_file(&path, errors);
            }
        }
    }

    /// `ns.requirement` entries (SPEC §12.13): the value comes from the `parameters` of the
    /// `ns.dependency` entries (a parameter named as the requirement's name or ID); two
    /// different values are a load error, none means `default`, and with neither the
    /// requirement is left unresolved (a warning). The value is written into each target
    /// entry at its dotted `path` (`meta.x` into meta).
    fn resolve_requirements(&mut self, errors: &mut Vec<LoadError>) {
        let mut params: Vec<(String, serde_json::Value, String)> = Vec::new();
        for dep in self.entries.iter().filter(|e| e.kind == "ns.dependency") {
            if let Some(list) = dep.fields.get("parameters").and_then(|v| v.as_array()) {
                for p in list {
                    if let (Some(name), Some(value)) = (p.get("name").and_then(|n| n.as_str()), p.get("value")) {
                        params.push((name.to_string(), value.clone(), dep.id.to_string()));
                    }
                }
            }
        }
        let reqs: Vec<Entry> = self.entries.iter().filter(|e| e.kind == "ns.requirement").cloned().collect();
        for req in reqs {
            let at = |field: &str, m: String| {
                if field.is_empty() {
                    return LoadError::new(m).file(&req.origin.file).at(req.origin.line, req.origin.column).entry(req.id.as_str());
                }
                let (line, column) = field_line(self.files.get(&req.origin.file).map(|t| &**t), &req.origin, field);
                LoadError::new(m).file(&req.origin.file).at(line, column).entry(req.id.as_str()).field(field)
            };
            let given: Vec<&(String, serde_json::Value, String)> =
                params.iter().filter(|(n, _, _)| n == req.id.name() || n == req.id.as_str()).collect();
            let value = match given.first() {
                Some(first) => {
                    if let Some(other) = given.iter().find(|g| g.1 != first.1) {
                        errors.push(at("", format!("parameter conflict: {} gives {} and {} gives {}", first.2, first.1, other.2, other.1)));
                        continue;
                    }
                    Some(first.1.clone())
                }
                None => req.fields.get("default").cloned(),
            };
            let Some(value) = value else {
                self.warnings.push(at("", "unresolved requirement: no ns.dependency parameter gives it and it has no default".into()));
                continue;
            };
            let targets = req.fields.get("targets").and_then(|t| t.as_array()).cloned().unwrap_or_default();
            for t in targets {
                let (Some(target), Some(path)) = (t.get("entry").and_then(|v| v.as_str()), t.get("path").and_then(|v| v.as_str())) else {
                    errors.push(at("targets", "each target needs entry and path".into()));
                    continue;
                };
                let target_id = if target.contains(':') { target.to_string() } else { format!("{}:{target}", req.id.namespace()) };
                let Some(entry) = self.entries.iter_mut().find(|e| e.id.as_str() == target_id) else {
                    errors.push(at("targets", format!("target entry {target_id} not found")));
                    continue;
                };
                let mut parts: Vec<&str> = path.split('.').collect();
                let mut map = if parts.first() == Some(&"meta") {
                    parts.remove(0);
                    &mut entry.meta
                } else {
                    &mut entry.fields
                };
                let Some(last) = parts.pop() else { continue };
                for p in parts {
                    let slot = map.entry(p.to_string()).or_insert_with(|| serde_json::Value::Object(Default::default()));
                    if !slot.is_object() {
                        *slot = serde_json::Value::Object(Default::default());
                    }
                    map = slot.as_object_mut().expect("just made an object");
                }
                map.insert(last.to_string(), value.clone());
            }
        }
    }

    fn load_file(&mut self, path: &Path, errors: &mut Vec<LoadError>) {
        let name = display_path(&self.root, path);
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => return errors.push(LoadError::new(format!("cannot read: {e}")).file(&name)),
        };
        let doc: Value = match serde_saphyr::from_str(&text) {
            Ok(v) => v,
            Err(e) => return errors.push(yaml_error(&name, "YAML syntax error", &e)),
        };
        let Some(top) = doc.as_object() else { return };
        let single = top.contains_key("name") && top.contains_key("kind");
        let listed = top.contains_key("entries");
        if !single && !listed {
            return; // not a definition file
        }
        let namespace = match top.get("namespace") {
            Some(Value::String(ns)) if ns.contains(':') => {
                let line = text.lines().position(|l| l.trim_start().starts_with("namespace:")).map_or(1, |i| i as u64 + 1);
                return errors.push(
                    LoadError::new(format!("namespace {:?} must not contain ':' (an entry ID is namespace:name, split at the first colon)", crate::truncate(ns, 200)))
                        .file(&name)
                        .at(line, 1)
                        .field("namespace"),
                );
            }
            Some(Value::String(ns)) if !ns.is_empty() => ns.clone(),
            Some(other) if !other.is_null() => {
                return errors.push(LoadError::new(format!("namespace must be a string, got {other}")).file(&name).field("namespace"))
            }
            _ => {
                return errors.push(
                    LoadError::new("missing namespace (every definition file needs `namespace: <name>`)").file(&name).at(1, 1),
                )
            }
        };
        let line_count = text.lines().count() as u64;
        let mut raw: Vec<(Value, u64, u64)> = Vec::new();
        if listed {
            match serde_saphyr::from_str::<EntriesDoc>(&text) {
                Ok(d) => raw.extend(d.entries.into_iter().map(|s| (s.value, s.referenced.line(), s.referenced.column()))),
                Err(e) => return errors.push(yaml_error(&name, "entries must be a list of mappings", &e)),
            }
        } else {
            let mut one = top.clone();
            one.remove("namespace");
            one.remove("version");
            raw.push((Value::Object(one), 1, 1));
        }
        self.files.insert(name.clone(), Arc::from(text.as_str()));
        let ends: Vec<u64> = raw.iter().skip(1).map(|(_, l, _)| l.saturating_sub(1)).chain([line_count.max(1)]).collect();
        let dir = path.parent().unwrap_or(Path::new("."));
        for ((value, line, column), end_line) in raw.into_iter().zip(ends) {
            let origin = Origin { file: name.clone(), line, column, end_line: end_line.max(line) };
            match self.entry(value, &namespace, origin, dir, &text) {
                Ok((e, source_error)) => {
                    self.entries.push(e);
                    errors.extend(source_error);
                }
                Err(e) => errors.push(e),
            }
        }
    }

    /// The entry, and the error about its source if it has one (the entry is kept so its
    /// other fields are still checked).
    fn entry(&self, value: Value, namespace: &str, origin: Origin, dir: &Path, text: &str) -> Result<(Entry, Option<LoadError>), LoadError> {
        let at = |e: LoadError| e.file(&origin.file).at(origin.line, origin.column);
        let Value::Object(mut map) = value else {
            return Err(at(LoadError::new("an entry must be a mapping with name and kind")));
        };
        let name = match map.remove("name") {
            Some(Value::String(n)) => n,
            Some(other) => return Err(at(LoadError::new(format!("must be a string, got {other}")).field("name"))),
            None => return Err(at(LoadError::new("missing name"))),
        };
        let id: EntryId = format!("{namespace}:{name}").parse().map_err(|e: crate::EntryIdError| at(LoadError::new(e.to_string()).field("name")))?;
        let kind = match map.remove("kind") {
            Some(Value::String(k)) => k,
            Some(other) => return Err(at(LoadError::new(format!("must be a string, got {other}")).entry(id.as_str()).field("kind"))),
            None => return Err(at(LoadError::new("missing kind").entry(id.as_str()))),
        };
        let meta: Data = match map.remove("meta") {
            Some(Value::Object(m)) => m,
            None | Some(Value::Null) => Data::new(),
            Some(other) => return Err(at(LoadError::new(format!("must be a mapping, got {other}")).entry(id.as_str()).field("meta"))),
        };
        let source_error = |m: String| {
            let (line, column) = field_line(Some(text), &origin, "source");
            LoadError::new(m).file(&origin.file).at(line, column).entry(id.as_str()).field("source")
        };
        let (source, error) = match map.get("source") {
            None | Some(Value::Null) => (None, None),
            Some(Value::String(s)) => match self.read_source(s, &id, dir) {
                Ok(src) => (Some(src), None),
                Err(m) => (None, Some(source_error(m))),
            },
            Some(other) => (None, Some(source_error(format!("must be a string, got {other}")))),
        };
        Ok((Entry { id, kind, meta, fields: map, origin, source }, error))
    }

    /// An entry's `source:` value: inline Lua text, or `file://` relative to `dir` (a
    /// regular file inside the source or modules directory, at most [`MAX_SOURCE_BYTES`]).
    pub fn read_source(&self, s: &str, id: &EntryId, dir: &Path) -> Result<Source, String> {
        let Some(rel) = s.strip_prefix("file://") else {
            return Ok(Source { name: id.to_string(), path: None, text: Arc::from(s) });
        };
        let path = dir.join(rel);
        let name = display_path(&self.root, &path);
        let outside = || {
            let (src, modules) = (display_path(&self.root, &self.src), display_path(&self.root, &self.modules));
            format!("source file {name} is outside the project's source directory ({src}) and modules directory ({modules})")
        };
        // Only regular files inside the source or modules directory: first as written
        // (`..` taken away lexically, so the answer does not depend on what exists out
        // there), then after links are followed. Not /etc/passwd through `..`, not a
        // device, a FIFO or a directory.
        let dirs = [&self.src, &self.modules];
        if !dirs.iter().any(|d| lexical(&path).starts_with(lexical(d))) {
            return Err(outside());
        }
        let real = match path.canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(format!("source file {name} not found")),
            Err(e) => return Err(format!("cannot read source file {name}: {e}")),
        };
        if !dirs.iter().any(|d| d.canonicalize().is_ok_and(|d| real.starts_with(d))) {
            return Err(outside());
        }
        let meta = std::fs::metadata(&real).map_err(|e| format!("cannot read source file {name}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("source file {name} is not a regular file"));
        }
        if meta.len() > MAX_SOURCE_BYTES {
            return Err(format!("source file {name} is {} bytes, more than the limit of {MAX_SOURCE_BYTES}", meta.len()));
        }
        let mut text = String::new();
        let read = std::fs::File::open(&real).and_then(|f| {
            use std::io::Read;
            f.take(MAX_SOURCE_BYTES + 1).read_to_string(&mut text)
        });
        match read {
            Ok(n) if n as u64 > MAX_SOURCE_BYTES => Err(format!("source file {name} is larger than the limit of {MAX_SOURCE_BYTES} bytes")),
            Ok(_) => Ok(Source { name, path: Some(path), text: Arc::from(text.as_str()) }),
            Err(e) => Err(format!("cannot read source file {name}: {e}")),
        }
    }

    fn check_duplicates(&self, errors: &mut Vec<LoadError>) {
        let mut seen: HashMap<&EntryId, &Origin> = HashMap::new();
        for e in &self.entries {
            if let Some(first) = seen.insert(&e.id, &e.origin) {
                errors.push(
                    LoadError::new(format!("duplicate entry ID (first defined at {}:{})", first.file, first.line))
                        .file(&e.origin.file)
                        .at(e.origin.line, e.origin.column)
                        .entry(e.id.as_str()),
                );
                seen.insert(&e.id, first);
            }
        }
    }
}

/// The source directory (`wippy.lock`'s `directories.src`, else `./src`) and the modules
/// directory (`directories.modules`, else `.wippy`).
fn source_dir(root: &Path) -> Result<(PathBuf, PathBuf), LoadErrors> {
    let lock = root.join("wippy.lock");
    let dirs = match std::fs::read_to_string(&lock) {
        Ok(text) => {
            let l: Lock = serde_saphyr::from_str(&text).map_err(|e| yaml_error("wippy.lock", "invalid wippy.lock", &e))?;
            l.directories
        }
        Err(_) => LockDirs::default(),
    };
    let src = dirs.src.unwrap_or_else(|| "./src".into());
    let modules = dirs.modules.unwrap_or_else(|| ".wippy".into());
    Ok((root.join(src), root.join(modules)))
}

/// `path` with `.` dropped and each `..` taking away the component before it, without
/// looking at the file system (a `..` above the root stays at the root; a relative
/// path keeps its leading `..`s).
fn lexical(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(".."),
            },
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod lexical_tests {
    use super::lexical;
    use std::path::Path;

    #[test]
    fn dot_dot_is_taken_away_without_the_file_system() {
        assert_eq!(lexical(Path::new("/a/src/../../../../etc/passwd")), Path::new("/etc/passwd"));
        assert_eq!(lexical(Path::new("./src/./x/../y.lua")), Path::new("src/y.lua"));
        assert_eq!(lexical(Path::new("src/../../../etc")), Path::new("../../etc"));
        assert!(!lexical(Path::new("p/src/../../q")).starts_with(lexical(Path::new("p/src"))));
    }
}

#[cfg(test)]
mod field_line_tests {
    use super::field_line;
    use crate::Origin;

    const YAML: &str = "\
entries:
  - name: svc
    kind: process.service
    host:
      workers: 2
      name: inner
    methods:
      - name: a
        params:
          - name: x
          - name: y
      - description: no name
    list:
    - one
    - two: 2
  - name: next
";

    fn at(field: &str) -> (u64, u64) {
        let origin = Origin { file: "f.yaml".into(), line: 2, column: 5, end_line: 15 };
        field_line(Some(YAML), &origin, field)
    }

    #[test]
    fn a_path_is_followed_through_mappings_and_list_items() {
        assert_eq!(at("kind"), (3, 5));
        // the entry's own name, not the nested host.name
        assert_eq!(at("name"), (2, 5));
        assert_eq!(at("host.name"), (6, 7));
        assert_eq!(at("methods.0.name"), (8, 9));
        assert_eq!(at("methods.0.params.1.name"), (11, 13));
        assert_eq!(at("methods[1].params[2].name"), (11, 13));
        // a list at its key's own column
        assert_eq!(at("list.1.two"), (15, 7));
    }

    #[test]
    fn a_missing_part_is_reported_where_the_path_stops() {
        // the item that has no name
        assert_eq!(at("methods.1.name"), (12, 9));
        // the mapping a missing key belongs in
        assert_eq!(at("host.timeout"), (4, 5));
        // nothing of the path: the entry
        assert_eq!(at("nowhere.at.all"), (2, 5));
        // an index past the list's end: the list's key
        assert_eq!(at("methods.5.name"), (7, 5));
    }
}
