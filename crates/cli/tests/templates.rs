//! Templates (Wippy's `template.set`, `template.jet` and the `templates` module): a page
//! that extends a layout from a file, with globals, ranges, conditions and HTML escaping.

mod common;

const PROJECT: &str = r#"
version: "1.0"
namespace: app
entries:
  - name: terminal
    kind: terminal.host
    lifecycle:
      auto_start: true
  - name: views
    kind: template.set
    engine:
      globals:
        site: "Shop"
  - name: layout
    kind: template.jet
    set: app:views
    source: file://views/layout.jet
  - name: page-v2
    kind: template.jet
    set: app:views
    meta:
      name: page
    source: |
      {{ extends "layout" }}
      {{ block title() }}{{ site }} - {{ title }}{{ end }}
      {{ block body() }}
      {{- range i, p := products }}
      <li>{{ i + 1 }}. {{ p.title | upper }}: ${{ p.price }}{{ if p.stock == 0 }} (sold out){{ end }}</li>
      {{- else }}
      <li>nothing</li>
      {{- end }}
      {{ end }}
  - name: render
    kind: process.lua
    meta:
      command: {name: render}
    modules: [templates, io]
    method: main
    source: |
      local templates = require("templates")
      return { main = function()
        local set = assert(templates.get("app:views"))
        local html, err = set:render("page", { title = "<All>", products = {
          { title = "Laptop", price = 1499.99, stock = 5 },
          { title = "Mouse", price = 79, stock = 0 } } })
        assert(html, tostring(err))
        io.write(html)
        assert(set:render("page", { title = "None", products = {} }):find("<li>nothing</li>", 1, true))
        local _, e = set:render("nope")
        assert(e:kind() == errors.NOT_FOUND and e:message() == "template not found: nope")
        local _, e2 = set:render("layout", {})
        assert(e2:kind() == errors.INTERNAL and e2:message():find("unknown block title"), e2:message())
        assert(select(2, set:render("")):kind() == errors.INVALID)
        assert(set:release() == true)
        local _, e3 = set:render("page", {})
        assert(e3:kind() == errors.INTERNAL and e3:message() == "template set app:views is released")
        assert(select(2, templates.get("app:none")):kind() == errors.NOT_FOUND)
        return 0
      end }
"#;

#[test]
fn a_page_extends_a_layout_and_escapes_its_data() {
    let layout = "<title>{{ yield title() }}</title>\n<ul>{{ yield body() }}</ul>\n";
    let out = common::run_project("templates", &[("src/_index.yaml", PROJECT), ("src/views/layout.jet", layout)], &["run", "render"]);
    assert_eq!(out, "<title>Shop - &lt;All&gt;</title>\n<ul>\n<li>1. LAPTOP: $1499.99</li>\n<li>2. MOUSE: $79 (sold out)</li>\n</ul>\n");
}
