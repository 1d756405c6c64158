mod common;
use common::*;
use wippy_runtime::Value;

#[test]
fn returns_a_value() {
    let h = Harness::new(1);
    assert_eq!(h.ok("return 1 + 2"), Value::Int(3));
    assert_eq!(h.ok("return process.pid():sub(1,1)"), s("{"));
}
