//! Golden tests of load and command-line errors: each folder under fixtures/bad is a
//! project; `args` holds the command line (one argument per line), `expected.txt` the
//! exact stderr. The binary must exit 1 and print nothing on stdout (nothing started).
//! `WIPPY_BLESS=1 cargo test -p wippy --test errors` rewrites the expected files.

use std::path::Path;
use std::process::Command;

#[test]
fn every_bad_input_has_its_clear_error() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad");
    let mut cases: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).collect();
    cases.sort();
    assert!(cases.len() >= 12, "fixtures missing");
    let bless = std::env::var_os("WIPPY_BLESS").is_some();
    let mut failures = Vec::new();
    for case in cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let args: Vec<String> = std::fs::read_to_string(case.join("args")).unwrap().lines().map(str::to_string).collect();
        let out = Command::new(env!("CARGO_BIN_EXE_wippy")).arg("-d").arg(&case).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let expected_path = case.join("expected.txt");
        if bless {
            std::fs::write(&expected_path, &stderr).unwrap();
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if stderr != expected {
            failures.push(format!("{name}: stderr differs\n--- expected\n{expected}--- got\n{stderr}"));
        }
        if out.status.code() != Some(1) {
            failures.push(format!("{name}: exit code {:?}, expected 1", out.status.code()));
        }
        if !out.stdout.is_empty() {
            failures.push(format!("{name}: printed on stdout: {}", String::from_utf8_lossy(&out.stdout)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
