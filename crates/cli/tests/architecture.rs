//! The dependency arrows ARCHITECTURE.md draws are the ones the crates have: a crate that
//! starts to use one it must not (the runtime importing Lua or the registry, HTTP importing
//! Lua), or an arrow the file lists that no longer exists, fails here. So do the two rules
//! of the Lua crate's VM boundary: Lua's C API is used only inside `vm/`, and every
//! `unsafe fn` says what its caller must hold (`# Safety`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The crate folder names and their package names (`wippy-lua` -> `lua`).
const CRATES: [(&str, &str); 7] =
    [("runtime", "wippy-runtime"), ("registry", "wippy-registry"), ("lua", "wippy-lua"), ("http", "wippy-http"), ("cluster", "wippy-cluster"), ("cli", "wippy"), ("bench", "wippy-bench")];

fn folder_of(package: &str) -> Option<&'static str> {
    CRATES.iter().find(|(_, p)| *p == package).map(|(f, _)| *f)
}

/// `(from, to)` for every arrow of the "Arrows point one way only" line: `a -> b -> c` is
/// a -> b and b -> c.
fn drawn() -> BTreeSet<(String, String)> {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md at the repository root");
    let start = doc.find("Arrows point one way only:").expect("ARCHITECTURE.md lists the arrows");
    let para = &doc[start..doc[start..].find("\n\n").map_or(doc.len(), |e| start + e)];
    let sentence = &para[..para.find('.').unwrap_or(para.len())];
    let mut arrows = BTreeSet::new();
    for chain in sentence.split('`').skip(1).step_by(2) {
        let parts: Vec<&str> = chain.split("->").map(str::trim).collect();
        assert!(parts.len() >= 2, "not an arrow: `{chain}`");
        for w in parts.windows(2) {
            for p in w {
                assert!(CRATES.iter().any(|(f, _)| f == p), "ARCHITECTURE.md names a crate that does not exist: {p}");
            }
            arrows.insert((w[0].to_string(), w[1].to_string()));
        }
    }
    arrows
}

/// `(from, to)` for every workspace crate a crate's Cargo.toml depends on (in any
/// dependency table, dev and target-specific ones included) or its sources name.
fn actual() -> BTreeSet<(String, String)> {
    let mut arrows = BTreeSet::new();
    for (folder, _) in CRATES {
        let dir = root().join("crates").join(folder);
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        for line in manifest.lines() {
            let name = line.split(['.', '=', ' ']).next().unwrap_or("");
            if let Some(to) = folder_of(name) {
                if !line.starts_with("name") && to != folder {
                    arrows.insert((folder.to_string(), to.to_string()));
                }
            }
        }
        for p in rust_files(&[dir.join("src"), dir.join("tests"), dir.join("benches")]) {
            let src = std::fs::read_to_string(&p).unwrap();
            for (to, package) in CRATES {
                let ident = package.replace('-', "_");
                if to != folder && package != "wippy" && src.contains(&format!("{ident}::")) {
                    arrows.insert((folder.to_string(), to.to_string()));
                }
            }
        }
    }
    arrows
}

/// Every `.rs` file under `dirs`.
fn rust_files(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = dirs.to_vec();
    let mut out = Vec::new();
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn lua_s_c_api_is_used_only_inside_the_vm_module() {
    let src = root().join("crates/lua/src");
    let vm = src.join("vm");
    let mut outside = Vec::new();
    for p in rust_files(&[src]) {
        if p.starts_with(&vm) {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("mlua::ffi") || code.contains("ffi::lua") || code.contains("ffi::LUA") || code.contains("{ffi") || code.contains(" ffi,") {
                outside.push(format!("{}:{}: {}", p.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(outside.is_empty(), "Lua's C API outside crates/lua/src/vm:\n{}", outside.join("\n"));
}

#[test]
fn every_unsafe_fn_says_what_its_caller_must_hold() {
    let mut missing = Vec::new();
    for (folder, _) in CRATES {
        for p in rust_files(&[root().join("crates").join(folder).join("src")]) {
            let text = std::fs::read_to_string(&p).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            // (the methods of an `unsafe impl` of a trait have the trait's contract)
            let mut in_trait_impl = false;
            for (n, line) in lines.iter().enumerate() {
                let t = line.trim_start();
                if t.starts_with("unsafe impl") && t.contains(" for ") {
                    in_trait_impl = true;
                } else if line.starts_with('}') {
                    in_trait_impl = false;
                }
                let is_fn = !t.starts_with("//") && (t.contains("unsafe fn ") || t.contains("unsafe extern \"C-unwind\" fn ") || t.contains("unsafe extern \"C\" fn "));
                if !is_fn || in_trait_impl {
                    continue;
                }
                let mut doc = lines[..n].iter().rev().map(|l| l.trim_start()).take_while(|l| l.starts_with("///") || l.starts_with("#["));
                if !doc.any(|l| l.contains("# Safety")) {
                    missing.push(format!("{}:{}: {}", p.display(), n + 1, t));
                }
            }
        }
    }
    assert!(missing.is_empty(), "unsafe fns without a `# Safety` section:\n{}", missing.join("\n"));
}

#[test]
fn the_crates_depend_on_each_other_only_as_architecture_md_draws() {
    let (drawn, actual) = (drawn(), actual());
    let undrawn: Vec<_> = actual.difference(&drawn).collect();
    assert!(undrawn.is_empty(), "dependencies ARCHITECTURE.md does not allow: {undrawn:?}");
    let stale: Vec<_> = drawn.difference(&actual).collect();
    assert!(stale.is_empty(), "arrows in ARCHITECTURE.md that no crate has: {stale:?}");
    // the two rules the file states in words
    for (from, to) in &actual {
        assert!(from != "runtime", "the runtime must not import {to}");
        assert!(!(from == "http" && to == "lua"), "HTTP must not know Lua");
    }
}
