//! Typed Lua → plain Lua 5.4, before compilation. Type syntax is blanked out (every byte
//! of it becomes a space, line breaks stay), so error messages and stack traces point at
//! the user's own lines and columns. Erased: typed parameters, variadics and returns,
//! typed locals and for variables, generic lists on functions, `type`/`export type`
//! declarations, `::` casts and postfix `!`. A `type X = …` declaration becomes, on its
//! first line, `X = __wippy_type("X", <descriptor>)` (a global of the process): a runtime type that can be
//! called (`X(v)` checks or raises) and asked (`X:is(v)` → `v, nil` or `nil, err`).
//!
//! Plain Lua passes through unchanged (the result borrows the input). This module never
//! fails: what it does not understand it leaves alone, and the Lua compiler reports it.

use std::borrow::Cow;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Name,
    Number,
    Str,
    Op,
}

#[derive(Clone, Copy, Debug)]
struct Tok {
    kind: Kind,
    start: usize,
    end: usize,
}

const KEYWORDS: &[&str] = &[
    "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if", "in", "local", "nil", "not", "or",
    "repeat", "return", "then", "true", "until", "while",
];

/// Split `src` into tokens, skipping whitespace and comments.
fn lex(src: &str) -> Vec<Tok> {
    let b = src.as_bytes();
    let n = b.len();
    let mut out = Vec::new();
    let mut i = 0;
    // `[=*[` at i: the level, when it opens a long bracket.
    let long_open = |i: usize| -> Option<usize> {
        if b.get(i) != Some(&b'[') {
            return None;
        }
        let mut j = i + 1;
        while b.get(j) == Some(&b'=') {
            j += 1;
        }
        (b.get(j) == Some(&b'[')).then_some(j - i - 1)
    };
    // The end (exclusive) of a long bracket of `level` whose body starts at `from`.
    let long_close = |from: usize, level: usize| -> usize {
        let mut j = from;
        while j < n {
            if b[j] == b']' && b.get(j + 1 + level) == Some(&b']') && b[j + 1..j + 1 + level].iter().all(|c| *c == b'=') {
                return j + level + 2;
            }
            j += 1;
        }
        n
    };
    if src.starts_with("#") {
        while i < n && b[i] != b'\n' {
            i += 1;
        }
    }
    while i < n {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            match long_open(i + 2) {
                Some(level) => i = long_close(i + 2 + level + 2, level),
                None => {
                    while i < n && b[i] != b'\n' {
                        i += 1;
                    }
                }
            }
        } else if let Some(level) = long_open(i) {
            let end = long_close(i + level + 2, level);
            out.push(Tok { kind: Kind::Str, start: i, end });
            i = end;
        } else if c == b'"' || c == b'\'' {
            let mut j = i + 1;
            while j < n && b[j] != c && b[j] != b'\n' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(n);
            out.push(Tok { kind: Kind::Str, start: i, end });
            i = end;
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let mut j = i + 1;
            while j < n {
                let d = b[j];
                let exp = matches!(b[j - 1], b'e' | b'E' | b'p' | b'P') && (d == b'+' || d == b'-');
                if d.is_ascii_alphanumeric() || d == b'.' || d == b'_' || exp {
                    j += 1;
                } else {
                    break;
                }
            }
            out.push(Tok { kind: Kind::Number, start: i, end: j });
            i = j;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let mut j = i + 1;
            while j < n && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                j += 1;
            }
            out.push(Tok { kind: Kind::Name, start: i, end: j });
            i = j;
        } else {
            let three = &b[i..(i + 3).min(n)];
            let len = if three == b"..." {
                3
            } else if matches!(&three[..three.len().min(2)], b".." | b"::" | b"==" | b"~=" | b"//" | b"->") {
                2
            } else {
                // One byte (a multi-byte UTF-8 character outside strings is one odd token).
                let mut l = 1;
                while i + l < n && (b[i + l] & 0xC0) == 0x80 {
                    l += 1;
                }
                l
            };
            out.push(Tok { kind: Kind::Op, start: i, end: i + len });
            i += len;
        }
    }
    out
}

/// A runtime description of a type, written out as a Lua expression.
#[derive(Debug, Clone, PartialEq)]
enum Desc {
    Any,
    Prim(&'static str),
    Lit(String),
    Opt(Box<Desc>),
    Union(Vec<Desc>),
    Array(Box<Desc>),
    Map(Box<Desc>, Box<Desc>),
    Record(Vec<(String, Desc, bool)>),
    /// A type declared earlier in the same file (a local of that name).
    Ref(String),
}

impl Desc {
    fn lua(&self) -> String {
        match self {
            Desc::Any => "\"any\"".into(),
            Desc::Prim(p) => format!("\"{p}\""),
            Desc::Lit(v) => format!("{{lit={v}}}"),
            Desc::Opt(d) => format!("{{opt={}}}", d.lua()),
            Desc::Union(ds) => format!("{{union={{{}}}}}", ds.iter().map(Desc::lua).collect::<Vec<_>>().join(",")),
            Desc::Array(d) => format!("{{array={}}}", d.lua()),
            Desc::Map(k, v) => format!("{{map={{{},{}}}}}", k.lua(), v.lua()),
            Desc::Record(fields) => {
                let fs: Vec<String> = fields.iter().map(|(n, d, opt)| format!("{{\"{n}\",{},{opt}}}", d.lua())).collect();
                format!("{{record={{{}}}}}", fs.join(","))
            }
            Desc::Ref(name) => format!("{{ref={name}}}"),
        }
    }
}

struct Eraser<'a> {
    src: &'a str,
    toks: Vec<Tok>,
    /// Byte ranges to blank, and replacements put at the start of a blanked range.
    blank: Vec<(usize, usize)>,
    insert: Vec<(usize, String)>,
    /// Types declared so far (usable as references by later declarations).
    declared: Vec<String>,
    /// Generic parameters in scope while a declaration is read.
    generics: Vec<String>,
}

impl<'a> Eraser<'a> {
    fn text(&self, i: usize) -> &'a str {
        self.toks.get(i).map(|t| &self.src[t.start..t.end]).unwrap_or("")
    }
    fn is(&self, i: usize, s: &str) -> bool {
        self.text(i) == s && self.toks.get(i).is_some_and(|t| t.kind == Kind::Op || t.kind == Kind::Name)
    }
    fn is_name(&self, i: usize) -> bool {
        self.toks.get(i).is_some_and(|t| t.kind == Kind::Name) && !KEYWORDS.contains(&self.text(i))
    }
    /// Blank tokens `from..to` (exclusive).
    fn erase(&mut self, from: usize, to: usize) {
        if from < to && to <= self.toks.len() {
            self.blank.push((self.toks[from].start, self.toks[to - 1].end));
        }
    }
    /// The index after the bracket that closes the one at `i` (`(`/`)`, `{`/`}`, `[`/`]`, `<`/`>`).
    fn skip_balanced(&self, i: usize) -> usize {
        let (open, close) = match self.text(i) {
            "(" => ("(", ")"),
            "{" => ("{", "}"),
            "[" => ("[", "]"),
            _ => ("<", ">"),
        };
        let mut depth = 0;
        let mut j = i;
        while j < self.toks.len() {
            if self.is(j, open) {
                depth += 1;
            } else if self.is(j, close) {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            j += 1;
        }
        j
    }

    /// Read a type starting at token `i`; returns the index after it and its description.
    fn ty(&self, i: usize) -> (usize, Desc) {
        let mut j = i;
        if self.is(j, "|") || self.is(j, "&") {
            j += 1;
        }
        let (mut j, first) = self.ty_postfix(j);
        let mut alts = vec![first];
        let mut union = false;
        while self.is(j, "|") || self.is(j, "&") {
            union |= self.is(j, "|");
            let (k, d) = self.ty_postfix(j + 1);
            if k == j + 1 {
                break;
            }
            alts.push(d);
            j = k;
        }
        let d = if alts.len() == 1 {
            alts.pop().unwrap_or(Desc::Any)
        } else if union {
            Desc::Union(alts)
        } else {
            Desc::Any // intersections are not checked at run time
        };
        (j, d)
    }

    fn ty_postfix(&self, i: usize) -> (usize, Desc) {
        let (mut j, mut d) = self.ty_primary(i);
        if j == i {
            return (j, d);
        }
        loop {
            if self.is(j, "?") {
                d = Desc::Opt(Box::new(d));
                j += 1;
            } else if self.is(j, "[") && self.is(j + 1, "]") {
                d = Desc::Array(Box::new(d));
                j += 2;
            } else {
                return (j, d);
            }
        }
    }

    fn ty_primary(&self, i: usize) -> (usize, Desc) {
        let Some(t) = self.toks.get(i) else { return (i, Desc::Any) };
        let text = self.text(i);
        match t.kind {
            Kind::Str => return (i + 1, Desc::Lit(one_line_literal(text))),
            Kind::Number => return (i + 1, Desc::Lit(text.to_string())),
            Kind::Name if matches!(text, "nil" | "true" | "false") => {
                let d = if text == "nil" { Desc::Prim("nil") } else { Desc::Lit(text.to_string()) };
                return (i + 1, d);
            }
            Kind::Name if text == "typeof" && self.is(i + 1, "(") => return (self.skip_balanced(i + 1), Desc::Any),
            Kind::Name if text == "function" || text == "fun" => {
                // function(a: T): R
                let mut j = i + 1;
                if self.is(j, "<") {
                    j = self.skip_balanced(j);
                }
                if self.is(j, "(") {
                    j = self.skip_balanced(j);
                }
                if self.is(j, ":") || self.is(j, "->") {
                    j = self.ty(j + 1).0;
                }
                return (j, Desc::Prim("function"));
            }
            Kind::Name if !KEYWORDS.contains(&text) => {
                let mut j = i + 1;
                let mut name = text.to_string();
                while self.is(j, ".") && self.is_name(j + 1) {
                    name = format!("{name}.{}", self.text(j + 1));
                    j += 2;
                }
                if self.is(j, "<") {
                    j = self.skip_balanced(j);
                }
                return (j, self.named(&name));
            }
            Kind::Op if text == "{" => return (self.skip_balanced(i), self.table_type(i)),
            Kind::Op if text == "(" => {
                // a tuple or a function type: `(a: T, U) -> R`
                let mut j = self.skip_balanced(i);
                let single = self.ty(i + 1);
                let simple = self.is(single.0, ")") && single.0 == j - 1;
                if self.is(j, "->") {
                    j = self.ty(j + 1).0;
                    return (j, Desc::Prim("function"));
                }
                return (j, if simple { single.1 } else { Desc::Any });
            }
            Kind::Op if text == "..." => {
                let (j, _) = self.ty(i + 1);
                return (j.max(i + 1), Desc::Any);
            }
            _ => {}
        }
        (i, Desc::Any)
    }

    fn named(&self, name: &str) -> Desc {
        match name {
            "string" | "number" | "integer" | "boolean" | "table" | "function" | "thread" | "userdata" => {
                Desc::Prim(match name {
                    "string" => "string",
                    "number" => "number",
                    "integer" => "integer",
                    "boolean" => "boolean",
                    "table" => "table",
                    "function" => "function",
                    "thread" => "thread",
                    _ => "userdata",
                })
            }
            _ if self.generics.iter().any(|g| g == name) => Desc::Any,
            _ if self.declared.iter().any(|d| d == name) => Desc::Ref(name.to_string()),
            _ => Desc::Any,
        }
    }

    /// `{T}` (array), `{[K]: V}` (map), `{name: T, opt?: T, ...}` (record).
    fn table_type(&self, i: usize) -> Desc {
        let end = self.skip_balanced(i) - 1;
        let mut j = i + 1;
        if j == end {
            return Desc::Prim("table");
        }
        if self.is(j, "[") {
            let close = self.skip_balanced(j);
            let (_, k) = self.ty(j + 1);
            if self.is(close, ":") {
                let (_, v) = self.ty(close + 1);
                return Desc::Map(Box::new(k), Box::new(v));
            }
        }
        let record = (self.is_name(j) || self.toks.get(j).is_some_and(|t| t.kind == Kind::Name))
            && (self.is(j + 1, ":") || (self.is(j + 1, "?") && self.is(j + 2, ":")));
        if !record {
            let (k, d) = self.ty(j);
            return if k == end { Desc::Array(Box::new(d)) } else { Desc::Prim("table") };
        }
        let mut fields = Vec::new();
        while j < end {
            if self.toks.get(j).is_some_and(|t| t.kind == Kind::Name) {
                let name = self.text(j).to_string();
                let mut k = j + 1;
                let optional = self.is(k, "?");
                if optional {
                    k += 1;
                }
                if self.is(k, ":") {
                    let (after, d) = self.ty(k + 1);
                    let optional = optional || matches!(d, Desc::Opt(_));
                    fields.push((name, d, optional));
                    j = after;
                } else {
                    j = k;
                }
            } else if self.is(j, "[") {
                // an indexer among fields: `[string]: T` (not checked)
                j = self.skip_balanced(j);
                if self.is(j, ":") {
                    j = self.ty(j + 1).0;
                }
            }
            if self.is(j, ",") || self.is(j, ";") {
                j += 1;
            } else if j < end {
                j += 1; // something unexpected: move on
            }
        }
        Desc::Record(fields)
    }

    /// Erase `: Type` at `i` if a colon is there; returns the index after it.
    fn annotation(&mut self, i: usize) -> usize {
        if !self.is(i, ":") {
            return i;
        }
        let (end, _) = self.ty(i + 1);
        self.erase(i, end);
        end
    }

    /// `function [name] [<generics>] (params) [: returns]` at `i`; returns the index of
    /// the body's first token.
    fn function(&mut self, i: usize) -> usize {
        let mut j = i + 1;
        if self.is_name(j) {
            j += 1;
            while (self.is(j, ".") || self.is(j, ":")) && self.is_name(j + 1) {
                j += 2;
            }
        }
        if self.is(j, "<") {
            let end = self.skip_balanced(j);
            self.erase(j, end);
            j = end;
        }
        if !self.is(j, "(") {
            return j;
        }
        j += 1;
        while j < self.toks.len() && !self.is(j, ")") {
            if self.is_name(j) || self.is(j, "...") {
                j = self.annotation(j + 1);
            }
            if self.is(j, ",") {
                j += 1;
            } else if !self.is(j, ")") {
                return j; // not a parameter list we understand
            }
        }
        self.annotation(j + 1)
    }

    /// `local a [: T] [<attrib>], b [: T] ...` after `local` at `i`.
    fn locals(&mut self, i: usize) -> usize {
        let mut j = i;
        while self.is_name(j) {
            j += 1;
            let attrib = |s: &Self, j: usize| s.is(j, "<") && matches!(s.text(j + 1), "const" | "close") && s.is(j + 2, ">");
            if attrib(self, j) {
                j += 3;
            }
            j = self.annotation(j);
            if attrib(self, j) {
                j += 3;
            }
            if !self.is(j, ",") {
                break;
            }
            j += 1;
        }
        j
    }

    /// `type Name [<T>] = Type` with the `type` keyword at `i` (and `export` at `from`).
    fn declaration(&mut self, from: usize, i: usize) -> usize {
        let name = self.text(i + 1).to_string();
        let mut j = i + 2;
        self.generics.clear();
        if self.is(j, "<") {
            let end = self.skip_balanced(j);
            for k in j + 1..end {
                if self.is_name(k) && (self.is(k - 1, "<") || self.is(k - 1, ",")) {
                    self.generics.push(self.text(k).to_string());
                }
            }
            j = end;
        }
        if !self.is(j, "=") {
            return i + 1;
        }
        let (end, desc) = self.ty(j + 1);
        self.generics.clear();
        self.erase(from, end);
        // A global of the process's environment, not a local: a file may declare many
        // types without eating into Lua's 200 locals per function.
        let code = format!("{name} = __wippy_type(\"{name}\", {})", desc.lua());
        self.insert.push((self.toks[from].start, code));
        self.declared.push(name);
        end
    }

    /// Whether token `i` (`type`) starts a type declaration.
    fn is_declaration(&self, i: usize) -> bool {
        let before = if i == 0 { "" } else { self.text(i - 1) };
        self.is_name(i + 1)
            && (self.is(i + 2, "=") || self.is(i + 2, "<"))
            && !matches!(before, "local" | "function" | "." | ":" | "::" | "goto")
    }

    /// A token after which an expression has ended (so `::` there is a cast).
    fn ends_expression(&self, i: usize) -> bool {
        match self.toks.get(i) {
            Some(t) if t.kind == Kind::Str || t.kind == Kind::Number => true,
            Some(t) if t.kind == Kind::Name => !KEYWORDS.contains(&self.text(i)) || matches!(self.text(i), "nil" | "true" | "false"),
            Some(_) => matches!(self.text(i), ")" | "]" | "}" | "..."),
            None => false,
        }
    }

    fn run(&mut self) {
        let mut i = 0;
        while i < self.toks.len() {
            let text = self.text(i);
            let t = self.toks[i];
            i = match text {
                "function" if t.kind == Kind::Name => self.function(i),
                "local" if t.kind == Kind::Name && !self.is(i + 1, "function") => self.locals(i + 1),
                "for" if t.kind == Kind::Name => self.locals(i + 1),
                "type" if t.kind == Kind::Name && self.is_declaration(i) => self.declaration(i, i),
                "export" if t.kind == Kind::Name && self.is(i + 1, "type") && self.is_declaration(i + 1) => self.declaration(i, i + 1),
                "::" if t.kind == Kind::Op => {
                    if self.is_name(i + 1) && self.is(i + 2, "::") {
                        i + 3 // a label
                    } else if i > 0 && self.ends_expression(i - 1) {
                        let (end, _) = self.ty(i + 1);
                        self.erase(i, end);
                        end
                    } else {
                        i + 1
                    }
                }
                "!" if t.kind == Kind::Op => {
                    self.erase(i, i + 1);
                    i + 1
                }
                _ => i + 1,
            };
        }
    }
}

/// A string literal's source as a literal on one line: the declaration's code is put on the
/// line where the declaration began, and every line break of the original stays where it
/// was, so a line break inside the literal must not be copied. A long string (`[==[ … ]==]`)
/// becomes the quoted string of the same value; a short string's escaped line break
/// (`\` then a newline) becomes `\n`, which Lua reads as the same character.
fn one_line_literal(text: &str) -> String {
    if !text.contains(['\n', '\r']) {
        return text.to_string();
    }
    if text.starts_with('[') {
        let level = text[1..].bytes().take_while(|b| *b == b'=').count();
        let open = level + 2;
        let body = text.get(open..text.len().saturating_sub(open)).unwrap_or("");
        // Lua skips a line break right after the opening bracket, and reads any line-break
        // sequence in a long string as one "\n".
        let body = ["\r\n", "\n\r", "\n", "\r"].iter().find_map(|nl| body.strip_prefix(nl)).unwrap_or(body);
        let body = body.replace("\r\n", "\n").replace("\n\r", "\n").replace('\r', "\n");
        let mut out = String::from("\"");
        for c in body.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                '\0' => out.push_str("\\x00"),
                c => out.push(c),
            }
        }
        out.push('"');
        return out;
    }
    text.replace("\r\n", "n").replace("\n\r", "n").replace(['\n', '\r'], "n")
}

/// `src` with its type syntax erased (borrowed when there was none).
pub fn erase(src: &str) -> Cow<'_, str> {
    let mut e = Eraser { src, toks: lex(src), blank: Vec::new(), insert: Vec::new(), declared: Vec::new(), generics: Vec::new() };
    e.run();
    if e.blank.is_empty() {
        return Cow::Borrowed(src);
    }
    let mut out = src.as_bytes().to_vec();
    for (a, b) in &e.blank {
        for c in &mut out[*a..*b] {
            if *c != b'\n' && *c != b'\r' {
                *c = b' ';
            }
        }
    }
    // Declarations: their code goes where the blanked text began (on its first line).
    e.insert.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    for (at, code) in e.insert {
        let room = out[at..].iter().take_while(|c| **c == b' ').count();
        if room >= code.len() {
            out[at..at + code.len()].copy_from_slice(code.as_bytes());
        } else {
            out.splice(at..at + room, code.bytes());
        }
    }
    // Only ASCII spaces replaced whole characters' bytes, so this stays valid UTF-8.
    Cow::Owned(String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same_lines(a: &str, b: &str) {
        assert_eq!(a.matches('\n').count(), b.matches('\n').count(), "line breaks changed:\n{a}\n---\n{b}");
    }

    fn check(typed: &str, plain: &str) {
        let out = erase(typed);
        same_lines(typed, &out);
        let squash = |s: &str| s.split_whitespace().collect::<String>();
        assert_eq!(squash(&out), squash(plain), "\n{typed}\n=> {out}");
    }

    #[test]
    fn plain_lua_is_untouched() {
        let src = "local t = {a = 1}\nfunction t:m(x) return x end\n::top:: goto top\nlocal s = [[a: b]] -- c: d\nprint(t:m 'x', type(t))\nlocal type = 1\ntype = type + 1";
        assert!(matches!(erase(src), Cow::Borrowed(_)));
    }

    #[test]
    fn parameters_returns_locals_and_generics() {
        check("function f(a: string, ...: number): (string?, error?) return a end", "function f(a, ...) return a end");
        check("local function g<T: Shape>(x: T): T return x end", "local function g(x) return x end");
        check("local x: {[string]: any[]}, y: number? = {}, 1", "local x, y = {}, 1");
        check("local z: never\nz = 1", "local z\nz = 1");
        check("for i: integer = 1, 3 do end for k: string, v: any in pairs(t) do end", "for i = 1, 3 do end for k, v in pairs(t) do end");
        check("local f = function(a: number): number return a end", "local f = function(a) return a end");
        check("function M.new(self: M, opts: {name: string, size?: number}): M return self end", "function M.new(self, opts) return self end");
        check("function obj:method(a: (x: number) -> string): () return a end", "function obj:method(a) return a end");
        check("local c <const>: number = 5", "local c <const> = 5");
    }

    #[test]
    fn casts_assertions_and_labels() {
        check("local n = (x :: any) :: number + 1", "local n = (x ) + 1");
        check("return t.field!.other!", "return t.field.other");
        check("::continue:: goto continue", "::continue:: goto continue");
        check("local s = \"a :: b!\" .. 'c: d'", "local s = \"a :: b!\" .. 'c: d'");
    }

    #[test]
    fn declarations_become_runtime_types_on_their_first_line() {
        let out = erase("type Point = {\n  x: number,\n  y: number,\n  label?: string,\n}\nlocal p = Point({x = 1, y = 2})");
        assert_eq!(out.lines().count(), 6);
        assert!(out.starts_with(
            "Point = __wippy_type(\"Point\", {record={{\"x\",\"number\",false},{\"y\",\"number\",false},{\"label\",\"string\",true}}})"
        ));
        assert!(out.ends_with("local p = Point({x = 1, y = 2})"));
        let out = erase("export type Id = string | number\ntype Ids = {Id}\ntype Box<T> = {value: T}");
        assert!(out.contains("Id = __wippy_type(\"Id\", {union={\"string\",\"number\"}})"), "{out}");
        assert!(out.contains("Ids = __wippy_type(\"Ids\", {array={ref=Id}})"), "{out}");
        assert!(out.contains("Box = __wippy_type(\"Box\", {record={{\"value\",\"any\",false}}})"), "{out}");
        // `type` as a variable or a function call is left alone.
        assert!(matches!(erase("local type = type(x)\ntype.x = 1\nprint(type 'a')"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_literal_type_with_a_line_break_keeps_the_lines_and_the_value() {
        // Found by the eraser's property test: the literal was copied with its line break onto
        // the declaration's line while the original line break stayed too.
        let src = "type in type x = [==[ [[l:o\nng]]";
        same_lines(src, &erase(src));
        let out = erase("type K = [[\nab\\\"c\nd]] | 'e\\\nf'\nlocal y = 1");
        same_lines("type K = [[\nab\\\"c\nd]] | 'e\\\nf'\nlocal y = 1", &out);
        assert!(out.starts_with("K = __wippy_type(\"K\", {union={{lit=\"ab\\\\\\\"c\\nd\"},{lit='e\\nf'}}})"), "{out}");
    }
}
