//! Contracts (Wippy's `contract.definition`, `contract.binding` and the `contract` module):
//! a binding's methods are function calls, opened by binding or by contract, with context
//! from the ID's query, `with_context` and the scope table, errors kept by kind, `_async`
//! calls as futures, and retries of retryable failures.

mod common;

const PROJECT: &str = r#"
version: "1.0"
namespace: app
entries:
  - name: definition
    kind: ns.definition
    module: contracts
    meta:
      title: contracts
  - name: terminal
    kind: terminal.host
    lifecycle:
      auto_start: true
  - name: flaky_count
    kind: store.memory
  - name: greeter
    kind: contract.definition
    methods:
      - name: greet
        description: Returns a greeting message
      - name: greet_with_name
        description: Returns a personalized greeting
        input_schemas:
          - format: "application/schema+json"
            definition: {"type": "string"}
      - name: flaky
  - name: greeter_greet
    kind: function.lua
    source: |
      return { main = function() return "Hello!" end }
    method: main
  - name: greeter_greet_name
    kind: function.lua
    source: |
      local ctx = require("ctx")
      return { main = function(name)
        if name == "nobody" then return nil, errors.new({message = "no such person", kind = errors.NOT_FOUND}) end
        return "Hello, " .. name .. " (" .. tostring(ctx.get("tenant")) .. ")"
      end }
    method: main
    modules: [ctx]
  - name: greeter_flaky
    kind: function.lua
    source: |
      local store = require("store")
      return { main = function()
        local s = store.get("app:flaky_count")
        local n = (s:get("n") or 0) + 1
        s:set("n", n)
        if n < 3 then return nil, errors.new({message = "try again", kind = errors.UNAVAILABLE, retryable = true}) end
        return n
      end }
    method: main
    modules: [store]
  - name: greeter_impl
    kind: contract.binding
    contracts:
      - contract: app:greeter
        default: true
        methods:
          greet: app:greeter_greet
          greet_with_name: greeter_greet_name
          flaky: greeter_flaky
  - name: check
    kind: process.lua
    meta:
      command: {name: check}
    modules: [contract, io]
    method: main
    source: |
      local contract = require("contract")
      return { main = function()
        local g = assert(contract.open("app:greeter_impl"))
        assert(g:greet() == "Hello!")
        assert(g:greet_with_name("Alice") == "Hello, Alice (nil)")
        -- context: the ID's query, then the scope table
        assert(contract.open("app:greeter_impl?tenant=acme"):greet_with_name("Bob") == "Hello, Bob (acme)")
        assert(contract.open("app:greeter_impl?tenant=acme", {tenant = "scoped"}):greet_with_name("C") == "Hello, C (scoped)")
        -- the implementation's error keeps its kind; an unknown method is NotFound
        local v, e = g:greet_with_name("nobody")
        assert(v == nil and e:kind() == errors.NOT_FOUND and e:message() == "no such person", tostring(e))
        local _, me = g:nope()
        assert(me:kind() == errors.NOT_FOUND and me:message() == "method not found: nope")
        -- _async: a future
        local f = assert(g:greet_async())
        f:response():receive()
        assert(f:result():data() == "Hello!")
        -- introspection
        local c = assert(contract.get("app:greeter"))
        assert(c:id() == "app:greeter" and #c:methods() == 3 and c:methods()[1].input_schemas == nil)
        assert(c:method("greet_with_name").input_schemas[1].format == "application/schema+json")
        assert(select(2, c:method("x")):kind() == errors.NOT_FOUND)
        assert(table.concat(contract.find_implementations("app:greeter"), ",") == "app:greeter_impl")
        assert(table.concat(c:implementations(), ",") == "app:greeter_impl")
        -- opening through the contract: its default binding
        local d = assert(c:open())
        assert(d:greet() == "Hello!" and contract.is(d, "app:greeter") and not contract.is(d, "app:other") and not contract.is({}, "app:greeter"))
        assert(c:with_context({tenant = "ctx"}):open():greet_with_name("Dan") == "Hello, Dan (ctx)")
        assert(contract.open("app:greeter"):greet() == "Hello!")
        -- bad IDs
        assert(select(2, contract.open("nocolon")):kind() == errors.INVALID)
        local _, ne = contract.open("app:missing")
        assert(ne:kind() == errors.NOT_FOUND and ne:message() == "binding not found: app:missing")
        assert(select(2, contract.get("app:greeter_impl")):kind() == errors.NOT_FOUND)
        -- a retryable failure is tried again, up to max_attempts
        local _, fe = g:flaky()
        assert(fe:kind() == errors.UNAVAILABLE)
        local r = contract.open("app:greeter_impl", nil, {retry = {max_attempts = 3, initial_delay = 1}})
        assert(r:flaky() == 3)
        io.print("contracts ok")
        return 0
      end }
"#;

#[test]
fn contract_bindings_call_their_functions() {
    let out = common::run_project("contracts", &[("src/_index.yaml", PROJECT)], &["run", "check"]);
    assert_eq!(out.trim(), "contracts ok");
}
