//! A Jet template engine (the language of CloudyKit Jet, which Wippy's `templates` module
//! renders): `{{ }}` actions with `{{-`/`-}}` trimming and `{* *}` comments; variables
//! (`:=`, `=`), expressions (literals, identifiers, `.` and `.field`, field access, `[i]`
//! indexing, calls `f(a)` and `f: a`, pipelines `|` with `_` as the piped slot, arithmetic,
//! comparison, `&&` `||` `!`, `? :`); `if`/`else if`/`else`, `range` (with `i :=`,
//! `k, v :=` and `else`), `block`/`yield` (parameters with defaults, `content`),
//! `extends`, `import`, `include`, `try`/`catch`, `return` with `exec()`; output is HTML
//! escaped as Jet's default (`raw`/`unsafe`, `safeHtml`, `safeJs`, `writeJson` choose
//! otherwise); Jet's built-in functions (`len`, `isset`, `exec`, `ints`, `lower`, `upper`,
//! `hasPrefix`, `hasSuffix`, `repeat`, `replace`, `split`, `trimSpace`, `html`, `url`,
//! `json`, `map`, `slice`). Values are the runtime's `Value`s; a list indexes from 0 as Go's.
//!
//! No crate implements Jet (the Rust engines are Jinja's or Handlebars'), hence this one.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use wippy_runtime::{Table, Value};

// ------------------------------------------------------------------------------- syntax

#[derive(Debug, Clone)]
enum Expr {
    Lit(Value),
    Ident(String),
    /// `.` (the context)
    Dot,
    /// `_` (the piped value)
    Hole,
    Field(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
    Slice(Box<Expr>, Option<Box<Expr>>, Option<Box<Expr>>),
    Call(Box<Expr>, Vec<Expr>),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Bin(&'static str, Box<Expr>, Box<Expr>),
    Ternary(Box<Expr>, Box<Expr>, Box<Expr>),
    /// `a | f(x) | g`: each stage a call whose `_` (or first slot) takes the value
    Pipe(Box<Expr>, Vec<(Expr, Vec<Expr>)>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Writer {
    Escape,
    Raw,
    Js,
    Json,
}

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Out(Expr, Writer, usize),
    Assign { name: String, declare: bool, expr: Expr, line: usize },
    If(Vec<(Expr, Vec<Node>)>, Vec<Node>, usize),
    Range { key: Option<String>, val: Option<String>, expr: Expr, body: Vec<Node>, empty: Vec<Node>, line: usize },
    /// A block definition where it stands (rendered there unless the template extends)
    Block(String, Option<Expr>),
    Yield { name: String, args: Vec<(Option<String>, Expr)>, ctx: Option<Expr>, content: Option<Arc<Vec<Node>>>, line: usize },
    YieldContent,
    Include(Expr, Option<Expr>, usize),
    Try(Vec<Node>, Option<(Option<String>, Vec<Node>)>),
    Return(Expr),
}

#[derive(Debug)]
struct BlockDef {
    params: Vec<(String, Option<Expr>)>,
    body: Vec<Node>,
}

/// One parsed template.
#[derive(Debug)]
pub struct Parsed {
    extends: Option<String>,
    imports: Vec<String>,
    nodes: Vec<Node>,
    blocks: HashMap<String, Arc<BlockDef>>,
}

/// A syntax error: the message and the 1-based line.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

// ------------------------------------------------------------------------------- lexing

/// The template text cut into text and actions (trimming applied, comments dropped).
enum Piece {
    Text(String),
    Action(String, usize),
}

fn pieces(src: &str, left: &str, right: &str) -> Result<Vec<Piece>, SyntaxError> {
    let mut out = Vec::new();
    let mut rest = src;
    let mut line = 1;
    let mut trim_next = false;
    loop {
        let a = rest.find(left);
        let c = rest.find("{*");
        let (at, comment) = match (a, c) {
            (Some(a), Some(c)) if c < a => (c, true),
            (Some(a), _) => (a, false),
            (None, Some(c)) => (c, true),
            (None, None) => {
                let mut t = rest.to_string();
                if trim_next {
                    t = t.trim_start_matches([' ', '\t', '\r', '\n']).to_string();
                }
                if !t.is_empty() {
                    out.push(Piece::Text(t));
                }
                return Ok(out);
            }
        };
        let mut text = rest[..at].to_string();
        if trim_next {
            text = text.trim_start_matches([' ', '\t', '\r', '\n']).to_string();
            trim_next = false;
        }
        line += rest[..at].matches('\n').count();
        if comment {
            let Some(end) = rest[at..].find("*}") else {
                return Err(SyntaxError { line, message: "unclosed comment".into() });
            };
            if !text.is_empty() {
                out.push(Piece::Text(text));
            }
            line += rest[at..at + end].matches('\n').count();
            rest = &rest[at + end + 2..];
            continue;
        }
        let body_start = at + left.len();
        let Some(end) = find_close(&rest[body_start..], right) else {
            return Err(SyntaxError { line, message: format!("unclosed action (no {right})") });
        };
        let mut body = &rest[body_start..body_start + end];
        if body.starts_with("- ") || body == "-" {
            text = text.trim_end_matches([' ', '\t', '\r', '\n']).to_string();
            body = &body[1..];
        }
        if body.ends_with(" -") {
            body = &body[..body.len() - 1];
            trim_next = true;
        }
        if !text.is_empty() {
            out.push(Piece::Text(text));
        }
        out.push(Piece::Action(body.trim().to_string(), line));
        line += rest[at..body_start + end].matches('\n').count();
        rest = &rest[body_start + end + right.len()..];
    }
}

/// Where the action's closing delimiter is (not inside a string).
fn find_close(s: &str, right: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < b.len() {
        match quote {
            Some(q) => {
                if b[i] == b'\\' && q != b'`' {
                    i += 1;
                } else if b[i] == q {
                    quote = None;
                }
            }
            None => {
                if s[i..].starts_with(right) {
                    return Some(i);
                }
                if b[i] == b'"' || b[i] == b'`' || b[i] == b'\'' {
                    quote = Some(b[i]);
                }
            }
        }
        i += 1;
    }
    None
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Int(i64),
    Float(f64),
    Str(String),
    Op(&'static str),
}

const OPS: &[&str] = &[":=", "==", "!=", "<=", ">=", "&&", "||", "=", "<", ">", "!", "+", "-", "*", "/", "%", "?", ":", "|", "(", ")", "[", "]", ",", "."];

fn tokens(s: &str, line: usize) -> Result<Vec<Tok>, SyntaxError> {
    let err = |m: String| SyntaxError { line, message: m };
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_') {
                i += 1;
            }
            let mut float = false;
            if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
                float = true;
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            let text = s[start..i].replace('_', "");
            out.push(if float { Tok::Float(text.parse().map_err(|_| err(format!("bad number {text}")))?) } else { Tok::Int(text.parse().map_err(|_| err(format!("bad number {text}")))?) });
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(s[start..i].to_string()));
        } else if c == b'"' || c == b'\'' {
            let mut v = String::new();
            i += 1;
            loop {
                let Some(&ch) = b.get(i) else { return Err(err("unterminated string".into())) };
                if ch == c {
                    i += 1;
                    break;
                }
                if ch == b'\\' {
                    let e = *b.get(i + 1).ok_or_else(|| err("unterminated string".into()))?;
                    v.push(match e {
                        b'n' => '\n',
                        b't' => '\t',
                        b'r' => '\r',
                        b'\\' => '\\',
                        b'"' => '"',
                        b'\'' => '\'',
                        other => return Err(err(format!("unknown escape \\{}", other as char))),
                    });
                    i += 2;
                    continue;
                }
                let ch_len = s[i..].chars().next().map_or(1, char::len_utf8);
                v.push_str(&s[i..i + ch_len]);
                i += ch_len;
            }
            out.push(Tok::Str(v));
        } else if c == b'`' {
            let Some(end) = s[i + 1..].find('`') else { return Err(err("unterminated raw string".into())) };
            out.push(Tok::Str(s[i + 1..i + 1 + end].to_string()));
            i += end + 2;
        } else {
            let Some(op) = OPS.iter().find(|op| s[i..].starts_with(**op)) else {
                return Err(err(format!("unexpected character {:?}", s[i..].chars().next().unwrap_or(' '))));
            };
            out.push(Tok::Op(op));
            i += op.len();
        }
    }
    Ok(out)
}

// ------------------------------------------------------------------------------- parsing

struct ExprParser {
    toks: Vec<Tok>,
    at: usize,
    line: usize,
    /// How deeply the expression nests (bounded: a template is parsed at load).
    depth: usize,
}

/// The deepest an expression may nest.
const MAX_NESTING: usize = 100;
/// The most a render may write (a template that loops over a large range stops here).
const MAX_OUTPUT: usize = 64 << 20;

impl ExprParser {
    fn err<T>(&self, m: impl Into<String>) -> Result<T, SyntaxError> {
        Err(SyntaxError { line: self.line, message: m.into() })
    }
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }
    fn is_op(&self, op: &str) -> bool {
        matches!(self.peek(), Some(Tok::Op(o)) if *o == op)
    }
    fn eat(&mut self, op: &str) -> bool {
        if self.is_op(op) {
            self.at += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, op: &str) -> Result<(), SyntaxError> {
        if self.eat(op) {
            Ok(())
        } else {
            self.err(format!("expected {op:?}, found {}", self.describe()))
        }
    }
    fn describe(&self) -> String {
        match self.peek() {
            None => "the end of the action".into(),
            Some(Tok::Ident(s)) => format!("{s:?}"),
            Some(Tok::Str(s)) => format!("string {s:?}"),
            Some(Tok::Int(n)) => n.to_string(),
            Some(Tok::Float(n)) => n.to_string(),
            Some(Tok::Op(o)) => format!("{o:?}"),
        }
    }
    fn ident(&mut self) -> Result<String, SyntaxError> {
        match self.peek().cloned() {
            Some(Tok::Ident(s)) => {
                self.at += 1;
                Ok(s)
            }
            _ => self.err(format!("expected a name, found {}", self.describe())),
        }
    }
    fn done(&self) -> bool {
        self.at >= self.toks.len()
    }

    /// A full expression, with pipelines.
    fn pipeline(&mut self) -> Result<Expr, SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return self.err(format!("expression nested more than {MAX_NESTING} deep"));
        }
        let r = self.pipeline_inner();
        self.depth -= 1;
        r
    }
    fn pipeline_inner(&mut self) -> Result<Expr, SyntaxError> {
        // prefix call `f: a, b` (not nested)
        if let (Some(Tok::Ident(name)), Some(Tok::Op(":"))) = (self.toks.get(self.at).cloned(), self.toks.get(self.at + 1)) {
            if !matches!(self.toks.get(self.at + 2), Some(Tok::Op("="))) {
                self.at += 2;
                let args = self.args_until_pipe()?;
                let head = Expr::Call(Box::new(Expr::Ident(name)), args);
                return self.pipe_rest(head);
            }
        }
        let head = self.ternary()?;
        self.pipe_rest(head)
    }
    fn pipe_rest(&mut self, head: Expr) -> Result<Expr, SyntaxError> {
        let mut stages = Vec::new();
        while self.eat("|") {
            let name = self.ident()?;
            let args = if self.eat("(") {
                self.call_args(")")?
            } else if self.eat(":") {
                self.args_until_pipe()?
            } else {
                Vec::new()
            };
            stages.push((Expr::Ident(name), args));
        }
        Ok(if stages.is_empty() { head } else { Expr::Pipe(Box::new(head), stages) })
    }
    fn args_until_pipe(&mut self) -> Result<Vec<Expr>, SyntaxError> {
        let mut args = vec![self.ternary()?];
        while self.eat(",") {
            args.push(self.ternary()?);
        }
        Ok(args)
    }
    fn call_args(&mut self, close: &str) -> Result<Vec<Expr>, SyntaxError> {
        let mut args = Vec::new();
        if self.eat(close) {
            return Ok(args);
        }
        loop {
            args.push(self.pipeline()?);
            if self.eat(close) {
                return Ok(args);
            }
            self.expect(",")?;
        }
    }
    fn ternary(&mut self) -> Result<Expr, SyntaxError> {
        if self.depth > MAX_NESTING {
            return self.err(format!("expression nested more than {MAX_NESTING} deep"));
        }
        let c = self.binary(0)?;
        if self.eat("?") {
            self.depth += 1;
            let r = self.ternary_rest(c);
            self.depth -= 1;
            return r;
        }
        Ok(c)
    }
    fn ternary_rest(&mut self, c: Expr) -> Result<Expr, SyntaxError> {
        let a = self.ternary()?;
        self.expect(":")?;
        let b = self.ternary()?;
        Ok(Expr::Ternary(Box::new(c), Box::new(a), Box::new(b)))
    }
    fn binary(&mut self, min: u8) -> Result<Expr, SyntaxError> {
        let mut left = self.unary()?;
        while let Some(Tok::Op(op)) = self.peek().cloned() {
            let prec = match op {
                "||" => 1,
                "&&" => 2,
                "==" | "!=" | "<" | "<=" | ">" | ">=" => 3,
                "+" | "-" => 4,
                "*" | "/" | "%" => 5,
                _ => break,
            };
            if prec <= min {
                break;
            }
            self.at += 1;
            let right = self.binary(prec)?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }
    fn unary(&mut self) -> Result<Expr, SyntaxError> {
        if self.depth > MAX_NESTING {
            return self.err(format!("expression nested more than {MAX_NESTING} deep"));
        }
        if self.eat("!") {
            self.depth += 1;
            let e = self.unary();
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(e?)));
        }
        if self.eat("-") {
            self.depth += 1;
            let e = self.unary();
            self.depth -= 1;
            return Ok(Expr::Neg(Box::new(e?)));
        }
        self.postfix()
    }
    fn postfix(&mut self) -> Result<Expr, SyntaxError> {
        let mut e = self.primary()?;
        loop {
            if self.eat(".") {
                let f = self.ident()?;
                e = Expr::Field(Box::new(e), f);
            } else if self.eat("[") {
                if self.eat(":") {
                    let hi = if self.is_op("]") { None } else { Some(Box::new(self.pipeline()?)) };
                    self.expect("]")?;
                    e = Expr::Slice(Box::new(e), None, hi);
                    continue;
                }
                let i = self.pipeline()?;
                if self.eat(":") {
                    let hi = if self.is_op("]") { None } else { Some(Box::new(self.pipeline()?)) };
                    self.expect("]")?;
                    e = Expr::Slice(Box::new(e), Some(Box::new(i)), hi);
                    continue;
                }
                self.expect("]")?;
                e = Expr::Index(Box::new(e), Box::new(i));
            } else if self.eat("(") {
                let args = self.call_args(")")?;
                e = Expr::Call(Box::new(e), args);
            } else {
                return Ok(e);
            }
        }
    }
    fn primary(&mut self) -> Result<Expr, SyntaxError> {
        let Some(t) = self.peek().cloned() else { return self.err("expected an expression, found the end of the action") };
        self.at += 1;
        Ok(match t {
            Tok::Int(n) => Expr::Lit(Value::Int(n)),
            Tok::Float(n) => Expr::Lit(Value::Float(n)),
            Tok::Str(s) => Expr::Lit(Value::from(s.as_str())),
            Tok::Ident(s) => match s.as_str() {
                "true" => Expr::Lit(Value::Bool(true)),
                "false" => Expr::Lit(Value::Bool(false)),
                "nil" => Expr::Lit(Value::Nil),
                "_" => Expr::Hole,
                _ => Expr::Ident(s),
            },
            Tok::Op(".") => match self.peek().cloned() {
                Some(Tok::Ident(f)) => {
                    self.at += 1;
                    Expr::Field(Box::new(Expr::Dot), f)
                }
                _ => Expr::Dot,
            },
            Tok::Op("(") => {
                let e = self.pipeline()?;
                self.expect(")")?;
                e
            }
            Tok::Op(o) => return self.err(format!("unexpected {o:?}")),
        })
    }
}

/// The writer an output action ends in (`raw`, `safeJs`...), and the expression to write.
fn writer_of(e: Expr) -> (Expr, Writer) {
    let pick = |name: &str| match name {
        "raw" | "unsafe" => Some(Writer::Raw),
        "safeHtml" => Some(Writer::Escape),
        "safeJs" => Some(Writer::Js),
        "writeJson" => Some(Writer::Json),
        _ => None,
    };
    match e {
        Expr::Pipe(head, mut stages) => {
            if let Some((Expr::Ident(n), args)) = stages.last() {
                if let (Some(w), true) = (pick(n), args.is_empty()) {
                    stages.pop();
                    let e = if stages.is_empty() { *head } else { Expr::Pipe(head, stages) };
                    return (e, w);
                }
            }
            (Expr::Pipe(head, stages), Writer::Escape)
        }
        Expr::Call(f, mut args) => {
            if let (Expr::Ident(n), 1) = (&*f, args.len()) {
                if let Some(w) = pick(n) {
                    return (args.pop().unwrap_or(Expr::Lit(Value::Nil)), w);
                }
            }
            (Expr::Call(f, args), Writer::Escape)
        }
        other => (other, Writer::Escape),
    }
}

struct Parser {
    pieces: std::vec::IntoIter<Piece>,
    extends: Option<String>,
    imports: Vec<String>,
    blocks: HashMap<String, Arc<BlockDef>>,
    any_output: bool,
}

/// How a list of nodes ended.
enum End {
    Eof,
    Closed,
    Else(Option<Expr>),
    Catch(Option<String>),
}

impl Parser {
    fn list(&mut self, depth: usize) -> Result<(Vec<Node>, End), SyntaxError> {
        if depth > MAX_NESTING {
            return Err(SyntaxError { line: 0, message: format!("statements nested more than {MAX_NESTING} deep") });
        }
        let mut nodes = Vec::new();
        while let Some(p) = self.pieces.next() {
            let (src, line) = match p {
                Piece::Text(t) => {
                    if !t.trim().is_empty() {
                        self.any_output = true;
                    }
                    nodes.push(Node::Text(t));
                    continue;
                }
                Piece::Action(s, l) => (s, l),
            };
            let toks = tokens(&src, line)?;
            let mut ep = ExprParser { toks, at: 0, line, depth: 0 };
            let keyword = match ep.peek() {
                Some(Tok::Ident(k)) => k.clone(),
                _ => String::new(),
            };
            let keyword_stmt = !matches!(ep.toks.get(1), Some(Tok::Op(":=" | "=" | "(" | "." | "[" | "|" | "+" | "-" | "*" | "/" | "%" | "==" | "!=" | "<" | ">" | "<=" | ">=" | "&&" | "||" | "?")));
            match keyword.as_str() {
                "end" if keyword_stmt => {
                    if depth == 0 {
                        return Err(SyntaxError { line, message: "unexpected end".into() });
                    }
                    return Ok((nodes, End::Closed));
                }
                "else" if keyword_stmt => {
                    if depth == 0 {
                        return Err(SyntaxError { line, message: "unexpected else".into() });
                    }
                    ep.at += 1;
                    let cond = if matches!(ep.peek(), Some(Tok::Ident(k)) if k == "if") {
                        ep.at += 1;
                        Some(ep.pipeline()?)
                    } else {
                        None
                    };
                    return Ok((nodes, End::Else(cond)));
                }
                "catch" if keyword_stmt => {
                    ep.at += 1;
                    let name = if ep.done() { None } else { Some(ep.ident()?) };
                    return Ok((nodes, End::Catch(name)));
                }
                "if" if keyword_stmt => {
                    ep.at += 1;
                    let cond = self.finish(ep)?;
                    nodes.push(self.if_chain(cond, depth, line)?);
                }
                "range" if keyword_stmt => {
                    ep.at += 1;
                    let (mut key, mut val) = (None, None);
                    // `range i := x`, `range k, v := x`
                    let save = ep.at;
                    if let Some(Tok::Ident(a)) = ep.peek().cloned() {
                        ep.at += 1;
                        if ep.eat(",") {
                            let b = ep.ident()?;
                            ep.expect(":=")?;
                            key = Some(a);
                            val = Some(b);
                        } else if ep.eat(":=") {
                            key = Some(a);
                        } else {
                            ep.at = save;
                        }
                    }
                    let expr = self.finish(ep)?;
                    let (body, end) = self.sub(depth, line)?;
                    let empty = match end {
                        End::Closed => Vec::new(),
                        End::Else(None) => self.until_end(depth, line)?,
                        _ => return Err(SyntaxError { line, message: "range: expected end".into() }),
                    };
                    nodes.push(Node::Range { key, val, expr, body, empty, line });
                }
                "try" if keyword_stmt => {
                    let (body, end) = self.sub(depth, line)?;
                    let catch = match end {
                        End::Closed => None,
                        End::Catch(name) => Some((name, self.until_end(depth, line)?)),
                        _ => return Err(SyntaxError { line, message: "try: expected catch or end".into() }),
                    };
                    nodes.push(Node::Try(body, catch));
                }
                "block" if keyword_stmt => {
                    ep.at += 1;
                    let name = ep.ident()?;
                    let mut params = Vec::new();
                    ep.expect("(")?;
                    if !ep.eat(")") {
                        loop {
                            let p = ep.ident()?;
                            let d = if ep.eat("=") { Some(ep.ternary()?) } else { None };
                            params.push((p, d));
                            if ep.eat(")") {
                                break;
                            }
                            ep.expect(",")?;
                        }
                    }
                    let ctx = if ep.done() { None } else { Some(ep.pipeline()?) };
                    let (body, end) = self.sub(depth, line)?;
                    if !matches!(end, End::Closed) {
                        return Err(SyntaxError { line, message: format!("block {name}: expected end") });
                    }
                    if matches!(name.as_str(), "content" | "yield" | "if" | "range" | "block" | "end") {
                        return Err(SyntaxError { line, message: format!("a block cannot be named {name}") });
                    }
                    self.blocks.insert(name.clone(), Arc::new(BlockDef { params, body }));
                    nodes.push(Node::Block(name, ctx));
                }
                "yield" if keyword_stmt => {
                    ep.at += 1;
                    if matches!(ep.peek(), Some(Tok::Ident(k)) if k == "content") && ep.toks.len() == 2 {
                        nodes.push(Node::YieldContent);
                        continue;
                    }
                    let name = ep.ident()?;
                    let mut args = Vec::new();
                    ep.expect("(")?;
                    if !ep.eat(")") {
                        loop {
                            let named = match (ep.toks.get(ep.at), ep.toks.get(ep.at + 1)) {
                                (Some(Tok::Ident(n)), Some(Tok::Op("="))) => Some(n.clone()),
                                _ => None,
                            };
                            if named.is_some() {
                                ep.at += 2;
                            }
                            args.push((named, ep.ternary()?));
                            if ep.eat(")") {
                                break;
                            }
                            ep.expect(",")?;
                        }
                    }
                    let mut with_content = false;
                    if matches!(ep.toks.last(), Some(Tok::Ident(k)) if k == "content") {
                        ep.toks.pop();
                        with_content = true;
                    }
                    let ctx = if ep.done() { None } else { Some(ep.pipeline()?) };
                    let content = if with_content { Some(Arc::new(self.until_end(depth, line)?)) } else { None };
                    nodes.push(Node::Yield { name, args, ctx, content, line });
                }
                "extends" | "import" if keyword_stmt => {
                    ep.at += 1;
                    let Some(Tok::Str(path)) = ep.peek().cloned() else {
                        return Err(SyntaxError { line, message: format!("{keyword}: expected a template name in quotes") });
                    };
                    if keyword == "extends" {
                        if self.extends.is_some() || self.any_output || !nodes.iter().all(|n| matches!(n, Node::Text(t) if t.trim().is_empty())) || depth > 0 {
                            return Err(SyntaxError { line, message: "extends must come first in a template".into() });
                        }
                        self.extends = Some(path);
                    } else {
                        self.imports.push(path);
                    }
                }
                "include" if keyword_stmt => {
                    ep.at += 1;
                    let name = ep.ternary()?;
                    let ctx = if ep.done() { None } else { Some(ep.pipeline()?) };
                    nodes.push(Node::Include(name, ctx, line));
                }
                "return" if keyword_stmt => {
                    ep.at += 1;
                    nodes.push(Node::Return(self.finish(ep)?));
                }
                _ => {
                    // `x := e`, `x = e`, or an expression to write
                    if let (Some(Tok::Ident(name)), Some(Tok::Op(op @ (":=" | "=")))) = (ep.toks.first().cloned(), ep.toks.get(1).cloned()) {
                        ep.at = 2;
                        let expr = self.finish(ep)?;
                        nodes.push(Node::Assign { name, declare: op == ":=", expr, line });
                        continue;
                    }
                    let (expr, w) = writer_of(self.finish(ep)?);
                    self.any_output = true;
                    nodes.push(Node::Out(expr, w, line));
                }
            }
        }
        if depth > 0 {
            return Err(SyntaxError { line: 0, message: "missing end".into() });
        }
        Ok((nodes, End::Eof))
    }

    fn finish(&mut self, mut ep: ExprParser) -> Result<Expr, SyntaxError> {
        let e = ep.pipeline()?;
        if !ep.done() {
            return ep.err(format!("unexpected {} after the expression", ep.describe()));
        }
        Ok(e)
    }

    fn until_end(&mut self, depth: usize, line: usize) -> Result<Vec<Node>, SyntaxError> {
        let (nodes, end) = self.sub(depth, line)?;
        match end {
            End::Closed => Ok(nodes),
            _ => Err(SyntaxError { line, message: "expected end".into() }),
        }
    }

    /// The nodes inside the statement opened at `line`, to its `end`/`else`/`catch`.
    fn sub(&mut self, depth: usize, line: usize) -> Result<(Vec<Node>, End), SyntaxError> {
        self.list(depth + 1).map_err(|e| if e.line == 0 { SyntaxError { line, message: format!("{} for the statement opened here", e.message) } } else { e })
    }

    fn if_chain(&mut self, cond: Expr, depth: usize, line: usize) -> Result<Node, SyntaxError> {
        let mut branches = Vec::new();
        let mut cond = cond;
        loop {
            let (body, end) = self.sub(depth, line)?;
            branches.push((cond, body));
            match end {
                End::Closed => return Ok(Node::If(branches, Vec::new(), line)),
                End::Else(None) => {
                    let els = self.until_end(depth, line)?;
                    return Ok(Node::If(branches, els, line));
                }
                End::Else(Some(c)) => cond = c,
                _ => return Err(SyntaxError { line, message: "if: expected end".into() }),
            }
        }
    }
}

/// Parse a template (`left`/`right`: the action delimiters).
pub fn parse(src: &str, left: &str, right: &str) -> Result<Parsed, SyntaxError> {
    let pieces = pieces(src, left, right)?;
    let mut p = Parser { pieces: pieces.into_iter(), extends: None, imports: Vec::new(), blocks: HashMap::new(), any_output: false };
    let (nodes, _) = p.list(0)?;
    Ok(Parsed { extends: p.extends, imports: p.imports, nodes, blocks: p.blocks })
}

// ------------------------------------------------------------------------------- rendering

/// A set of templates by name, with its globals.
#[derive(Default)]
pub struct Set {
    pub templates: HashMap<String, Arc<Parsed>>,
    pub globals: Vec<(String, Value)>,
}

const MAX_DEPTH: usize = 64;

struct Scope {
    vars: Vec<HashMap<String, Value>>,
}

impl Scope {
    fn get(&self, name: &str) -> Option<&Value> {
        self.vars.iter().rev().find_map(|m| m.get(name))
    }
    fn set(&mut self, name: &str, v: Value) -> bool {
        for m in self.vars.iter_mut().rev() {
            if let Some(slot) = m.get_mut(name) {
                *slot = v;
                return true;
            }
        }
        false
    }
    fn declare(&mut self, name: &str, v: Value) {
        if let Some(m) = self.vars.last_mut() {
            m.insert(name.to_string(), v);
        }
    }
}

struct Render<'a> {
    set: &'a Set,
    blocks: HashMap<String, Arc<BlockDef>>,
    depth: usize,
    returned: Option<Value>,
}

type R<T> = Result<T, String>;

impl Set {
    /// Render template `name` with `data`'s keys as variables and `data` as the context.
    pub fn render(&self, name: &str, data: &Value) -> R<String> {
        let mut out = String::new();
        let mut scope = Scope { vars: vec![HashMap::new()] };
        if let Value::Table(t) = data {
            for (k, v) in &t.map {
                if let Some(k) = k.as_str() {
                    scope.declare(k, v.clone());
                }
            }
        }
        let mut r = Render { set: self, blocks: HashMap::new(), depth: 0, returned: None };
        r.template(name, &mut scope, data, &mut out, None)?;
        Ok(out)
    }

    /// Whether `name` names a template of the set (Jet's extensions tried, as a lookup).
    pub fn has(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    fn find(&self, name: &str) -> Option<&Arc<Parsed>> {
        let n = name.trim_start_matches("./").trim_start_matches('/');
        [n.to_string(), format!("{n}.jet"), format!("{n}.html.jet"), format!("{n}.jet.html")].iter().find_map(|k| self.templates.get(k)).or_else(|| {
            let base = n.trim_end_matches(".jet").trim_end_matches(".html");
            self.templates.get(base)
        })
    }
}

impl Render<'_> {
    /// Render a template: its ancestors' blocks first, its own over them, then the root.
    fn template(&mut self, name: &str, scope: &mut Scope, ctx: &Value, out: &mut String, content: Option<&Arc<Vec<Node>>>) -> R<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("template {name}: templates nested more than {MAX_DEPTH} deep"));
        }
        let mut chain = Vec::new();
        let mut cur = self.set.find(name).ok_or_else(|| format!("template {name} could not be found"))?.clone();
        loop {
            chain.push(cur.clone());
            let Some(parent) = cur.extends.clone() else { break };
            if chain.len() > MAX_DEPTH {
                return Err(format!("template {name}: extends loop"));
            }
            cur = self.set.find(&parent).ok_or_else(|| format!("template {parent} could not be found"))?.clone();
        }
        let saved = self.blocks.clone();
        for t in chain.iter().rev() {
            for imp in &t.imports {
                let i = self.set.find(imp).ok_or_else(|| format!("template {imp} could not be found"))?;
                for (k, b) in &i.blocks {
                    self.blocks.insert(k.clone(), b.clone());
                }
            }
            for (k, b) in &t.blocks {
                self.blocks.insert(k.clone(), b.clone());
            }
        }
        let root = chain.last().cloned().unwrap_or(cur);
        scope.vars.push(HashMap::new());
        let r = self.nodes(&root.nodes, scope, ctx, out, content);
        scope.vars.pop();
        self.blocks = saved;
        self.depth -= 1;
        r
    }

    fn nodes(&mut self, nodes: &[Node], scope: &mut Scope, ctx: &Value, out: &mut String, content: Option<&Arc<Vec<Node>>>) -> R<()> {
        for n in nodes {
            self.node(n, scope, ctx, out, content)?;
            if out.len() > MAX_OUTPUT {
                return Err(format!("the output is larger than {MAX_OUTPUT} bytes"));
            }
        }
        Ok(())
    }

    fn node(&mut self, n: &Node, scope: &mut Scope, ctx: &Value, out: &mut String, content: Option<&Arc<Vec<Node>>>) -> R<()> {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Out(e, w, line) => {
                let v = self.eval(e, scope, ctx, None).map_err(|m| format!("line {line}: {m}"))?;
                write_value(out, &v, *w);
            }
            Node::Assign { name, declare, expr, line } => {
                let v = self.eval(expr, scope, ctx, None).map_err(|m| format!("line {line}: {m}"))?;
                if name == "_" {
                } else if *declare {
                    scope.declare(name, v);
                } else if !scope.set(name, v) {
                    return Err(format!("line {line}: variable {name} is not declared (use :=)"));
                }
            }
            Node::If(branches, els, line) => {
                for (c, body) in branches {
                    if truthy(&self.eval(c, scope, ctx, None).map_err(|m| format!("line {line}: {m}"))?) {
                        return self.scoped(body, scope, ctx, out, content);
                    }
                }
                return self.scoped(els, scope, ctx, out, content);
            }
            Node::Range { key, val, expr, body, empty, line } => {
                let v = self.eval(expr, scope, ctx, None).map_err(|m| format!("line {line}: {m}"))?;
                let items: Vec<(Value, Value)> = match &v {
                    Value::Nil => Vec::new(),
                    Value::Table(t) => {
                        let mut items: Vec<(Value, Value)> = t.array.iter().enumerate().map(|(i, v)| (Value::Int(i as i64), v.clone())).collect();
                        let mut map: Vec<(Value, Value)> = t.map.clone();
                        // (Go ranges a map in key order in templates)
                        map.sort_by_key(|a| key_text(&a.0));
                        items.extend(map);
                        items
                    }
                    Value::Int(_) | Value::Float(_) | Value::Str(_) | Value::Bool(_) | Value::Error(_) => return Err(format!("line {line}: cannot range over {}", type_name(&v))),
                };
                if items.is_empty() {
                    return self.scoped(empty, scope, ctx, out, content);
                }
                for (k, item) in items {
                    scope.vars.push(HashMap::new());
                    if let Some(kn) = key {
                        if kn != "_" {
                            scope.declare(kn, k);
                        }
                    }
                    let r = if let Some(vn) = val {
                        if vn != "_" {
                            scope.declare(vn, item);
                        }
                        self.nodes(body, scope, ctx, out, content)
                    } else {
                        self.nodes(body, scope, &item, out, content)
                    };
                    scope.vars.pop();
                    r?;
                }
            }
            Node::Block(name, bctx) => {
                let c = match bctx {
                    Some(e) => self.eval(e, scope, ctx, None)?,
                    None => ctx.clone(),
                };
                self.call_block(name, &[], scope, &c, out, None, 0)?;
            }
            Node::Yield { name, args, ctx: yctx, content: body, line } => {
                let c = match yctx {
                    Some(e) => self.eval(e, scope, ctx, None).map_err(|m| format!("line {line}: {m}"))?,
                    None => ctx.clone(),
                };
                let mut vals = Vec::new();
                for (n, e) in args {
                    vals.push((n.clone(), self.eval(e, scope, ctx, None).map_err(|m| format!("line {line}: {m}"))?));
                }
                self.call_block(name, &vals, scope, &c, out, body.as_ref(), *line)?;
            }
            Node::YieldContent => {
                if let Some(body) = content {
                    let body = body.clone();
                    self.scoped(&body, scope, ctx, out, None)?;
                }
            }
            Node::Include(name, ictx, line) => {
                let n = self.eval(name, scope, ctx, None).map_err(|m| format!("line {line}: {m}"))?;
                let n = n.as_str().ok_or_else(|| format!("line {line}: include: the template name must be a string"))?.to_string();
                let c = match ictx {
                    Some(e) => self.eval(e, scope, ctx, None).map_err(|m| format!("line {line}: {m}"))?,
                    None => ctx.clone(),
                };
                self.template(&n, scope, &c, out, None)?;
            }
            Node::Try(body, catch) => {
                let mut buf = String::new();
                match self.scoped(body, scope, ctx, &mut buf, content) {
                    Ok(()) => out.push_str(&buf),
                    Err(e) => {
                        if let Some((name, cbody)) = catch {
                            scope.vars.push(HashMap::new());
                            if let Some(n) = name {
                                scope.declare(n, Value::from(e.as_str()));
                            }
                            let r = self.nodes(cbody, scope, ctx, out, content);
                            scope.vars.pop();
                            r?;
                        }
                    }
                }
            }
            Node::Return(e) => {
                self.returned = Some(self.eval(e, scope, ctx, None)?);
            }
        }
        Ok(())
    }

    fn scoped(&mut self, nodes: &[Node], scope: &mut Scope, ctx: &Value, out: &mut String, content: Option<&Arc<Vec<Node>>>) -> R<()> {
        scope.vars.push(HashMap::new());
        let r = self.nodes(nodes, scope, ctx, out, content);
        scope.vars.pop();
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn call_block(&mut self, name: &str, args: &[(Option<String>, Value)], scope: &mut Scope, ctx: &Value, out: &mut String, content: Option<&Arc<Vec<Node>>>, line: usize) -> R<()> {
        let def = self.blocks.get(name).cloned().ok_or_else(|| format!("line {line}: unknown block {name}"))?;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("block {name}: nested more than {MAX_DEPTH} deep"));
        }
        let mut frame = HashMap::new();
        for (i, (p, default)) in def.params.iter().enumerate() {
            let given = args.iter().find(|(n, _)| n.as_deref() == Some(p.as_str())).map(|(_, v)| v.clone()).or_else(|| args.get(i).filter(|(n, _)| n.is_none()).map(|(_, v)| v.clone()));
            let v = match (given, default) {
                (Some(v), _) => v,
                (None, Some(d)) => self.eval(d, scope, ctx, None)?,
                (None, None) => Value::Nil,
            };
            frame.insert(p.clone(), v);
        }
        scope.vars.push(frame);
        let r = self.nodes(&def.body, scope, ctx, out, content);
        scope.vars.pop();
        self.depth -= 1;
        r
    }

    fn eval(&mut self, e: &Expr, scope: &mut Scope, ctx: &Value, piped: Option<&Value>) -> R<Value> {
        Ok(match e {
            Expr::Lit(v) => v.clone(),
            Expr::Dot => ctx.clone(),
            Expr::Hole => piped.cloned().ok_or("_ outside a pipeline")?,
            Expr::Ident(name) => match scope.get(name).cloned().or_else(|| self.set.globals.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())) {
                Some(v) => v,
                None if is_builtin(name) => return Err(format!("{name} is a function: call it")),
                None => return Err(format!("identifier {name:?} not available in the current (render) scope")),
            },
            Expr::Field(base, f) => {
                let b = self.eval(base, scope, ctx, piped)?;
                field(&b, f)
            }
            Expr::Index(base, i) => {
                let b = self.eval(base, scope, ctx, piped)?;
                let i = self.eval(i, scope, ctx, piped)?;
                index(&b, &i)?
            }
            Expr::Slice(base, lo, hi) => {
                let b = self.eval(base, scope, ctx, piped)?;
                let lo = match lo {
                    Some(e) => as_int(&self.eval(e, scope, ctx, piped)?)?,
                    None => 0,
                };
                let hi = match hi {
                    Some(e) => Some(as_int(&self.eval(e, scope, ctx, piped)?)?),
                    None => None,
                };
                slice(&b, lo, hi)?
            }
            Expr::Call(f, args) => {
                let Expr::Ident(name) = &**f else { return Err("only functions can be called".into()) };
                self.call(name, args, scope, ctx, piped, None)?
            }
            Expr::Pipe(head, stages) => {
                let mut v = self.eval(head, scope, ctx, piped)?;
                for (f, args) in stages {
                    let Expr::Ident(name) = f else { return Err("a pipeline stage must be a function".into()) };
                    v = self.call(name, args, scope, ctx, None, Some(v))?;
                }
                v
            }
            Expr::Not(x) => Value::Bool(!truthy(&self.eval(x, scope, ctx, piped)?)),
            Expr::Neg(x) => match self.eval(x, scope, ctx, piped)? {
                Value::Int(n) => Value::Int(n.wrapping_neg()),
                Value::Float(f) => Value::Float(-f),
                other => return Err(format!("cannot negate {}", type_name(&other))),
            },
            Expr::Ternary(c, a, b) => {
                if truthy(&self.eval(c, scope, ctx, piped)?) {
                    self.eval(a, scope, ctx, piped)?
                } else {
                    self.eval(b, scope, ctx, piped)?
                }
            }
            Expr::Bin(op, a, b) => {
                let a = self.eval(a, scope, ctx, piped)?;
                match *op {
                    "&&" => return Ok(Value::Bool(truthy(&a) && truthy(&self.eval(b, scope, ctx, piped)?))),
                    "||" => return Ok(Value::Bool(truthy(&a) || truthy(&self.eval(b, scope, ctx, piped)?))),
                    _ => {}
                }
                let b = self.eval(b, scope, ctx, piped)?;
                binary(op, &a, &b)?
            }
        })
    }

    /// A function call; `piped` fills the `_` argument, or comes first when there is none.
    fn call(&mut self, name: &str, args: &[Expr], scope: &mut Scope, ctx: &Value, outer: Option<&Value>, piped: Option<Value>) -> R<Value> {
        if name == "isset" {
            for a in args {
                match self.eval(a, scope, ctx, outer) {
                    Ok(Value::Nil) | Err(_) => return Ok(Value::Bool(false)),
                    Ok(_) => {}
                }
            }
            return Ok(Value::Bool(!args.is_empty()));
        }
        let mut vals = Vec::with_capacity(args.len() + 1);
        let has_hole = args.iter().any(|a| matches!(a, Expr::Hole));
        if let (Some(p), false) = (&piped, has_hole) {
            vals.push(p.clone());
        }
        for a in args {
            let v = match (a, &piped) {
                (Expr::Hole, Some(p)) => p.clone(),
                _ => self.eval(a, scope, ctx, outer)?,
            };
            vals.push(v);
        }
        if name == "exec" {
            let t = vals.first().and_then(|v| v.as_str()).ok_or("exec: the template name must be a string")?.to_string();
            let c = vals.get(1).cloned().unwrap_or_else(|| ctx.clone());
            let mut sink = String::new();
            let saved = self.returned.take();
            self.template(&t, scope, &c, &mut sink, None)?;
            return Ok(std::mem::replace(&mut self.returned, saved).unwrap_or(Value::Nil));
        }
        builtin(name, &vals)
    }
}

fn is_builtin(name: &str) -> bool {
    matches!(name, "len" | "isset" | "exec" | "ints" | "lower" | "upper" | "hasPrefix" | "hasSuffix" | "repeat" | "replace" | "split" | "trimSpace" | "html" | "url" | "json" | "map" | "slice" | "raw" | "unsafe" | "safeHtml" | "safeJs" | "writeJson")
}

fn arg<'v>(name: &str, vals: &'v [Value], i: usize) -> R<&'v Value> {
    vals.get(i).ok_or_else(|| format!("{name}: missing argument {}", i + 1))
}

fn str_arg(name: &str, vals: &[Value], i: usize) -> R<String> {
    Ok(text(arg(name, vals, i)?))
}

fn builtin(name: &str, vals: &[Value]) -> R<Value> {
    let s = |i| str_arg(name, vals, i);
    Ok(match name {
        "len" => Value::Int(match arg(name, vals, 0)? {
            Value::Str(b) => b.len() as i64,
            Value::Table(t) => (t.array.len() + t.map.len()) as i64,
            Value::Nil => 0,
            other => return Err(format!("len: cannot take the length of {}", type_name(other))),
        }),
        "lower" => Value::from(s(0)?.to_lowercase().as_str()),
        "upper" => Value::from(s(0)?.to_uppercase().as_str()),
        "hasPrefix" => Value::Bool(s(0)?.starts_with(&s(1)?)),
        "hasSuffix" => Value::Bool(s(0)?.ends_with(&s(1)?)),
        "repeat" => {
            let n = as_int(arg(name, vals, 1)?)?;
            let text = s(0)?;
            if n < 0 || (text.len() as u64).saturating_mul(n as u64) > MAX_OUTPUT as u64 {
                return Err("repeat: count out of range".into());
            }
            Value::from(text.repeat(n as usize).as_str())
        }
        "replace" => {
            let n = vals.get(3).map(as_int).transpose()?.unwrap_or(-1);
            let (src, old, new) = (s(0)?, s(1)?, s(2)?);
            Value::from(if n < 0 { src.replace(&old, &new) } else { src.replacen(&old, &new, n as usize) }.as_str())
        }
        "split" => {
            let (src, sep) = (s(0)?, s(1)?);
            let parts: Vec<Value> = if sep.is_empty() { src.chars().map(|c| Value::from(c.to_string().as_str())).collect() } else { src.split(sep.as_str()).map(Value::from).collect() };
            Value::Table(Arc::new(Table { array: parts, map: Vec::new() }))
        }
        "trimSpace" => Value::from(s(0)?.trim()),
        "html" => Value::from(escape_html_go_string(&s(0)?).as_str()),
        "url" => Value::from(url_escape(&s(0)?).as_str()),
        "json" => Value::from(json_text(arg(name, vals, 0)?).as_str()),
        "map" => {
            if !vals.len().is_multiple_of(2) {
                return Err("map: arguments must come in key, value pairs".into());
            }
            let mut t = Table::new();
            for kv in vals.chunks(2) {
                t.set(Value::from(text(&kv[0]).as_str()), kv[1].clone());
            }
            Value::Table(Arc::new(t))
        }
        "slice" => Value::Table(Arc::new(Table { array: vals.to_vec(), map: Vec::new() })),
        "ints" => {
            let (lo, hi) = (as_int(arg(name, vals, 0)?)?, as_int(arg(name, vals, 1)?)?);
            if hi <= lo || hi - lo > 10_000_000 {
                return Err("ints: the upper limit must be greater than the lower".into());
            }
            Value::Table(Arc::new(Table { array: (lo..hi).map(Value::Int).collect(), map: Vec::new() }))
        }
        "raw" | "unsafe" | "safeHtml" | "safeJs" | "writeJson" => return Err(format!("{name} must be the last command of an action")),
        other => return Err(format!("identifier {other:?} not available in the current (render) scope")),
    })
}

fn write_value(out: &mut String, v: &Value, w: Writer) {
    match w {
        Writer::Escape => escape_html(out, &text(v)),
        Writer::Raw => out.push_str(&text(v)),
        Writer::Js => js_escape(out, &text(v)),
        Writer::Json => out.push_str(&json_text(v)),
    }
}

/// Go's template.HTMLEscape.
fn escape_html(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&#39;"),
            '"' => out.push_str("&#34;"),
            '\0' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

/// Go's html.EscapeString (the `html` function): as [`escape_html`], NUL kept.
fn escape_html_go_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for part in s.split('\0').enumerate() {
        if part.0 > 0 {
            out.push('\0');
        }
        escape_html(&mut out, part.1);
    }
    out
}

/// Go's template.JSEscape.
fn js_escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '<' => out.push_str("\\u003C"),
            '>' => out.push_str("\\u003E"),
            '&' => out.push_str("\\u0026"),
            '=' => out.push_str("\\u003D"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Go's url.QueryEscape.
fn url_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// JSON as Go's json.Marshal writes it (`<`, `>`, `&` escaped).
fn json_text(v: &Value) -> String {
    let j = wippy_http::json::to_json(v);
    serde_json::to_string(&j).unwrap_or_default().replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026")
}

/// How a value prints (Go's fmt for the common cases).
fn text(v: &Value) -> String {
    match v {
        Value::Nil => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Int(n) => n.to_string(),
        Value::Float(f) => format_float(*f),
        Value::Str(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Error(e) => e.message.clone(),
        Value::Table(t) => {
            if t.map.is_empty() {
                format!("[{}]", t.array.iter().map(text).collect::<Vec<_>>().join(" "))
            } else {
                let mut items: Vec<String> = t.map.iter().map(|(k, v)| format!("{}:{}", text(k), text(v))).collect();
                items.sort();
                format!("map[{}]", items.join(" "))
            }
        }
    }
}

fn format_float(f: f64) -> String {
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e21 {
        format!("{}", f as i128)
    } else if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{f}")
    }
}

fn key_text(v: &Value) -> String {
    text(v)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Bool(_) => "a boolean",
        Value::Int(_) | Value::Float(_) => "a number",
        Value::Str(_) => "a string",
        Value::Table(_) => "a table",
        Value::Error(_) => "an error",
    }
}

/// Jet's truth: not nil, false, zero, "" or an empty collection.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Nil => false,
        Value::Bool(b) => *b,
        Value::Int(n) => *n != 0,
        Value::Float(f) => *f != 0.0,
        Value::Str(s) => !s.is_empty(),
        Value::Table(t) => !(t.array.is_empty() && t.map.is_empty()),
        Value::Error(_) => true,
    }
}

fn as_int(v: &Value) -> R<i64> {
    match v {
        Value::Int(n) => Ok(*n),
        Value::Float(f) if f.fract() == 0.0 => Ok(*f as i64),
        Value::Str(s) => std::str::from_utf8(s).ok().and_then(|s| s.trim().parse().ok()).ok_or_else(|| "expected an integer".to_string()),
        other => Err(format!("expected an integer, got {}", type_name(other))),
    }
}

fn field(b: &Value, f: &str) -> Value {
    match b {
        Value::Table(t) => t.get_str(f).cloned().unwrap_or(Value::Nil),
        _ => Value::Nil,
    }
}

fn index(b: &Value, i: &Value) -> R<Value> {
    Ok(match (b, i) {
        (Value::Table(t), Value::Int(_) | Value::Float(_)) => {
            let n = as_int(i)?;
            // a list from Lua: Go's 0-based index; a map with number keys: the key itself
            if n >= 0 && (n as usize) < t.array.len() {
                t.array[n as usize].clone()
            } else {
                t.get(&Value::Int(n)).cloned().unwrap_or(Value::Nil)
            }
        }
        (Value::Table(t), k) => t.get(k).cloned().unwrap_or(Value::Nil),
        (Value::Str(s), _) => {
            let n = as_int(i)?;
            Value::Int(*s.get(n as usize).ok_or_else(|| format!("index {n} out of range"))? as i64)
        }
        (Value::Nil, _) => Value::Nil,
        (other, _) => return Err(format!("cannot index {}", type_name(other))),
    })
}

fn slice(b: &Value, lo: i64, hi: Option<i64>) -> R<Value> {
    match b {
        Value::Table(t) => {
            let hi = hi.unwrap_or(t.array.len() as i64);
            if lo < 0 || hi < lo || hi as usize > t.array.len() {
                return Err(format!("slice bounds out of range [{lo}:{hi}]"));
            }
            Ok(Value::Table(Arc::new(Table { array: t.array[lo as usize..hi as usize].to_vec(), map: Vec::new() })))
        }
        Value::Str(s) => {
            let hi = hi.unwrap_or(s.len() as i64);
            if lo < 0 || hi < lo || hi as usize > s.len() {
                return Err(format!("slice bounds out of range [{lo}:{hi}]"));
            }
            Ok(Value::Str(Arc::from(&s[lo as usize..hi as usize])))
        }
        other => Err(format!("cannot slice {}", type_name(other))),
    }
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Int(n) => Some(*n as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => num(a) == num(b),
        _ => a == b,
    }
}

fn binary(op: &str, a: &Value, b: &Value) -> R<Value> {
    Ok(match op {
        "==" => Value::Bool(equal(a, b)),
        "!=" => Value::Bool(!equal(a, b)),
        "<" | "<=" | ">" | ">=" => {
            let ord = match (a, b) {
                (Value::Str(x), Value::Str(y)) => x.cmp(y),
                _ => {
                    let (Some(x), Some(y)) = (num(a), num(b)) else { return Err(format!("cannot compare {} with {}", type_name(a), type_name(b))) };
                    x.partial_cmp(&y).ok_or("cannot compare NaN")?
                }
            };
            Value::Bool(match op {
                "<" => ord.is_lt(),
                "<=" => ord.is_le(),
                ">" => ord.is_gt(),
                _ => ord.is_ge(),
            })
        }
        "+" if matches!(a, Value::Str(_)) || matches!(b, Value::Str(_)) => Value::from(format!("{}{}", text(a), text(b)).as_str()),
        "+" | "-" | "*" | "/" | "%" => match (a, b) {
            (Value::Int(x), Value::Int(y)) => match op {
                "+" => Value::Int(x.wrapping_add(*y)),
                "-" => Value::Int(x.wrapping_sub(*y)),
                "*" => Value::Int(x.wrapping_mul(*y)),
                "/" if *y == 0 => return Err("division by zero".into()),
                "/" => Value::Int(x.wrapping_div(*y)),
                _ if *y == 0 => return Err("division by zero".into()),
                _ => Value::Int(x.wrapping_rem(*y)),
            },
            _ => {
                let (Some(x), Some(y)) = (num(a), num(b)) else { return Err(format!("cannot apply {op} to {} and {}", type_name(a), type_name(b))) };
                Value::Float(match op {
                    "+" => x + y,
                    "-" => x - y,
                    "*" => x * y,
                    "/" => x / y,
                    _ => x % y,
                })
            }
        },
        other => return Err(format!("unknown operator {other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[(&str, &str)]) -> Set {
        let mut s = Set::default();
        for (n, src) in items {
            s.templates.insert(n.to_string(), Arc::new(parse(src, "{{", "}}").unwrap_or_else(|e| panic!("{n}: {e}"))));
        }
        s
    }

    fn data(pairs: &[(&str, Value)]) -> Value {
        let mut t = Table::new();
        for (k, v) in pairs {
            t.set(Value::from(*k), v.clone());
        }
        Value::Table(Arc::new(t))
    }

    fn list(items: Vec<Value>) -> Value {
        Value::Table(Arc::new(Table { array: items, map: Vec::new() }))
    }

    #[test]
    fn expressions_control_and_escaping() {
        let s = set(&[(
            "t",
            "{* a comment *}Hi {{ user.name }}! {{ 1 + 2 * 3 - 4 }} {{ (1 + 2) * 3 - 4.5 }} {{ \"a\" + \"b\" }}\n\
             {{- if n > 2 && !off }} big{{ else if n == 2 }} two{{ else }} small{{ end }}\n\
             {{ range i, v := items }}[{{ i }}:{{ v | upper }}]{{ else }}none{{ end }}\n\
             {{ range items }}<{{ . }}>{{ end }} {{ x := 5 }}{{ x = x + 1 }}{{ x }} {{ html }}{{ html | raw }}\n\
             {{ len(items) }} {{ len: \"abc\" }} {{ \"hello\" | repeat: 2 }} {{ 2 | repeat(\"ab\", _) }} {{ n > 2 ? \"yes\" : \"no\" }}\n\
             {{ items[1] }} {{ isset(missing) }} {{ isset(n) }} {{ map(\"k\", 1).k }} {{ slice(1, 2, 3)[1:] }} {{ json(items) | raw }}",
        )]);
        let d = data(&[
            ("user", data(&[("name", Value::from("<Ann>"))])),
            ("n", Value::Int(3)),
            ("off", Value::Bool(false)),
            ("items", list(vec![Value::from("a"), Value::from("b")])),
            ("html", Value::from("<b>&'\"")),
        ]);
        let out = s.render("t", &d).unwrap();
        assert_eq!(
            out,
            "Hi &lt;Ann&gt;! 3 4.5 ab big\n[0:A][1:B]\n<a><b> 6 &lt;b&gt;&amp;&#39;&#34;<b>&'\"\n2 3 hellohello abab yes\nb false true 1 [2 3] [\"a\",\"b\"]"
        );
        let empty = s.render("t", &data(&[("user", data(&[])), ("n", Value::Int(1)), ("off", Value::Bool(true)), ("items", list(vec![])), ("html", Value::from(""))]));
        // items[1] on an empty list is nil, not an error
        assert!(empty.unwrap().contains(" small\nnone\n"));
    }

    #[test]
    fn inheritance_blocks_includes_and_errors() {
        let s = set(&[
            ("layout", "<title>{{ yield title() }}</title><body>{{ yield body() }}</body>{{ block footer() }}(c){{ end }}"),
            ("page", "{{ extends \"layout\" }}\n{{ block title() }}My {{ name }}{{ end }}\n{{ block body() }}{{ include \"partial\" }}{{ end }}"),
            ("partial", "<p>{{ name }}</p>"),
            ("forms", "{{ block field(type=\"text\", label) }}<input type={{ type }} placeholder={{ label }}>{{ end }}"),
            ("form", "{{ import \"forms\" }}{{ yield field(label=\"Name\") }}{{ yield field(type=\"email\", label=\"E\") }}"),
            ("wrap", "{{ block card() }}[{{ yield content }}]{{ end }}{{ yield card() content }}inside{{ end }}"),
            ("calc", "{{ return 40 + 2 }}"),
            ("uses", "{{ v := exec(\"calc\") }}{{ v }}{{ try }}{{ nope }}{{ catch e }}caught{{ end }}"),
            ("bad", "{{ nope }}"),
        ]);
        let d = data(&[("name", Value::from("Page"))]);
        assert_eq!(s.render("page", &d).unwrap(), "<title>My Page</title><body><p>Page</p></body>(c)");
        assert_eq!(s.render("form", &d).unwrap(), "<input type=text placeholder=Name><input type=email placeholder=E>");
        assert_eq!(s.render("wrap", &d).unwrap(), "[][inside]");
        assert_eq!(s.render("uses", &d).unwrap(), "42caught");
        let e = s.render("bad", &d).unwrap_err();
        assert!(e.contains("line 1") && e.contains("nope"), "{e}");
        assert!(s.render("missing", &d).unwrap_err().contains("could not be found"));
        let deep = format!("{{{{ {}1{} }}}}", "(".repeat(5000), ")".repeat(5000));
        assert!(parse(&deep, "{{", "}}").unwrap_err().to_string().contains("nested more than"));
        let ifs = "{{ if true }}".repeat(5000);
        assert!(parse(&ifs, "{{", "}}").unwrap_err().to_string().contains("nested more than"));
        let nots = format!("{{{{ {}x }}}}", "!".repeat(5000));
        assert!(parse(&nots, "{{", "}}").unwrap_err().to_string().contains("nested more than"));
        let big = set(&[("big", "{{ range ints(0, 9000000) }}{{ \"x\" | repeat(100000) }}{{ end }}")]);
        assert!(big.render("big", &Value::Nil).unwrap_err().contains("larger than"));
        for (src, want) in [("{{ if x }}", "missing end"), ("{{ end }}", "unexpected end"), ("{{ 1 + }}", "expected an expression"), ("a\n{{ \"x }}", "line 2")] {
            let e = parse(src, "{{", "}}").unwrap_err().to_string();
            assert!(e.contains(want), "{src}: {e}");
        }
    }
}
