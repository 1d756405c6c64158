//! Loading fixture projects: wippy.lock's source directory, nested files, the single-entry
//! form, file:// sources relative to their YAML file, IDs with dots, skipped non-definition
//! YAML, configuration layering, and versioned snapshots.

use std::path::{Path, PathBuf};

use wippy_registry::{Change, Config, EntryId, Project, Registry};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn loads_every_definition_file_below_the_lock_source_dir() {
    let p = Project::load(&fixture("project")).unwrap();
    let ids: Vec<&str> = p.entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["app.core:processes", "app.core:worker.v2", "app.extra:settings"]);

    let worker = &p.entries[1];
    assert_eq!(worker.id.namespace(), "app.core");
    assert_eq!(worker.id.name(), "worker.v2");
    assert_eq!(worker.kind, "process.lua");
    assert_eq!(worker.meta_str("comment"), Some("dotted names are fine"));
    assert_eq!(worker.origin.file, "code/_index.yaml");
    assert_eq!(worker.origin.line, 10);
    let src = worker.source.as_ref().unwrap();
    assert_eq!(src.name, "code/sub/worker.lua");
    assert!(src.text.contains("return 1"));
    assert_eq!(worker.get("modules").unwrap()[0], "time");

    let settings = &p.entries[2];
    assert_eq!(settings.origin.file, "code/sub/more.yaml");
    assert_eq!(settings.get("limits.max").unwrap(), 10);
    assert_eq!(settings.meta_str("type"), Some("config"));
    assert!(settings.get("namespace").is_none(), "namespace is not a field of the entry");
}

#[test]
fn bare_references_resolve_in_the_entry_namespace() {
    let id = EntryId::resolve("processes", "app.core").unwrap();
    assert_eq!(id.as_str(), "app.core:processes");
    assert_eq!(EntryId::resolve("other:x", "app.core").unwrap().as_str(), "other:x");
}

#[test]
fn configuration_layers_and_overrides() {
    let dir = fixture("project");
    let none: [&Path; 0] = [];
    let c = Config::load(&dir, &none, &[]).unwrap();
    assert_eq!(c.str("logger.level"), Some("warn"));
    let c = Config::load(&dir, &[dir.join("override.yaml")], &["logger.color=true".into()]).unwrap();
    assert_eq!(c.str("logger.level"), Some("debug"), "--config wins over .wippy.yaml");
    assert_eq!(c.get("logger.color"), Some(&serde_json::Value::Bool(true)), "--set wins over files");
    assert_eq!(c.get("extra"), Some(&serde_json::Value::from(1)));
    let err = Config::load(&dir, &[dir.join("nope.yaml")], &[]).unwrap_err();
    assert!(err.to_string().contains("nope.yaml not found"), "{err}");
}

#[test]
fn snapshots_stay_consistent_while_versions_move_on() {
    let p = Project::load(&fixture("project")).unwrap();
    let mut extra = p.entries[2].clone();
    let reg = Registry::new(p.entries);
    let v1 = reg.snapshot();
    assert_eq!((v1.version, v1.len()), (1, 3));

    extra.id = "app.extra:more".parse().unwrap();
    let v = reg.apply([Change::Put(extra), Change::Delete("app.core:processes".parse().unwrap())]).unwrap();
    assert_eq!(v, 2);
    let v2 = reg.snapshot();
    assert_eq!(v2.version, 2);
    assert!(v2.get_str("app.extra:more").is_some());
    assert!(v2.get_str("app.core:processes").is_none());
    // The old snapshot is untouched.
    assert_eq!(v1.len(), 3);
    assert!(v1.get_str("app.core:processes").is_some());
    assert!(v1.get_str("app.extra:more").is_none());
}

#[test]
fn a_missing_source_directory_is_named() {
    let err = Project::load(&fixture("does-not-exist")).unwrap_err();
    assert!(err.to_string().contains("source directory") && err.to_string().contains("not found"), "{err}");
}
