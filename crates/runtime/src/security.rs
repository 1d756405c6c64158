//! Security: actors, scopes, policies and their evaluation (SPEC §7.1). A process runs
//! under an [`Identity`] (an actor and a scope, either possibly absent); every operation a
//! process asks of the runtime through its `Context` is checked against it (SPEC §7.2),
//! and a denied operation does nothing and returns PermissionDenied.
//!
//! Policies are compiled once ([`PolicySpec::compile`]): patterns split at their `*`s,
//! regexes built, condition paths split, so a check walks plain data and allocates nothing.
//! This module decides; it never performs the operation it is asked about.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::error::{Error, ErrorKind};
use crate::pid::Pid;
use crate::value::{Table, Value};

/// Who a process acts as.
#[derive(Debug, Clone, PartialEq)]
pub struct Actor {
    pub id: String,
    pub meta: Table,
}

impl Actor {
    pub fn new(id: impl Into<String>) -> Actor {
        Actor { id: id.into(), meta: Table::new() }
    }
    pub fn with_meta(mut self, meta: Table) -> Actor {
        self.meta = meta;
        self
    }
}

/// A set of policies. It remembers, per action asked about, which of its policies can
/// apply (their action pattern matches), so a check looks at those only.
#[derive(Debug, Default)]
pub struct Scope {
    policies: Vec<Arc<Policy>>,
    by_action: RwLock<HashMap<Box<str>, Arc<[u32]>>>,
}

impl Clone for Scope {
    fn clone(&self) -> Scope {
        Scope::new(self.policies.clone())
    }
}

/// More distinct actions than this are not remembered (the set of actions is small and
/// fixed in practice; this only bounds a scope asked about arbitrary names).
const ACTIONS_REMEMBERED: usize = 256;

impl Scope {
    pub fn new(policies: Vec<Arc<Policy>>) -> Scope {
        Scope { policies, by_action: RwLock::new(HashMap::new()) }
    }
    pub fn policies(&self) -> &[Arc<Policy>] {
        &self.policies
    }
    /// Indices of the policies whose action pattern matches `action`.
    fn for_action(&self, action: &str) -> Arc<[u32]> {
        if let Some(ix) = self.by_action.read().get(action) {
            return ix.clone();
        }
        let ix: Arc<[u32]> = self.policies.iter().enumerate().filter(|(_, p)| p.actions.matches(action)).map(|(i, _)| i as u32).collect();
        let mut map = self.by_action.write();
        if map.len() < ACTIONS_REMEMBERED {
            map.insert(action.into(), ix.clone());
        }
        ix
    }
}

/// The actor and scope a process runs under.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub actor: Option<Arc<Actor>>,
    pub scope: Option<Arc<Scope>>,
}

/// An entry's own `security:` block (Wippy's process and function entries), applied when a
/// process of the entry starts: its actor replaces the inherited one, its policies join the
/// inherited scope; what it leaves out is inherited unchanged.
#[derive(Debug, Clone, Default)]
pub struct EntrySecurity {
    pub actor: Option<Arc<Actor>>,
    /// The block's own policies as one scope (`None`: it named no policies or groups, and
    /// the scope is inherited as it is). A spawn that inherits no scope gets this very
    /// scope, so the entry's processes share one (and its cache of decisions).
    pub scope: Option<Arc<Scope>>,
}

impl EntrySecurity {
    /// The identity a process of the entry runs with, given what it would inherit.
    pub fn apply(&self, inherited: Option<&Identity>) -> Identity {
        let actor = self.actor.clone().or_else(|| inherited.and_then(|i| i.actor.clone()));
        let parent = inherited.and_then(|i| i.scope.clone());
        let scope = match (&self.scope, parent) {
            (None, parent) => parent,
            (Some(own), None) => Some(own.clone()),
            (Some(own), Some(parent)) => {
                let mut all = parent.policies().to_vec();
                for p in own.policies() {
                    if !all.iter().any(|q| Arc::ptr_eq(q, p) || q.id == p.id) {
                        all.push(p.clone());
                    }
                }
                Some(Arc::new(Scope::new(all)))
            }
        };
        Identity::new(actor, scope)
    }
}

impl Identity {
    pub fn new(actor: Option<Arc<Actor>>, scope: Option<Arc<Scope>>) -> Identity {
        Identity { actor, scope }
    }
    /// `self`, with whatever `forced` sets replacing it (a host's forced actor/scope).
    pub fn overridden_by(&self, forced: &Identity) -> Identity {
        Identity { actor: forced.actor.clone().or_else(|| self.actor.clone()), scope: forced.scope.clone().or_else(|| self.scope.clone()) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

/// `"*"`, an exact name, a list of patterns, or a name with `*`s (each matches any run of
/// characters, dots and colons included).
#[derive(Debug, Clone)]
pub enum Pattern {
    Any,
    Exact(String),
    Glob(Vec<String>),
    List(Vec<Pattern>),
}

/// Byte equality without a call into libc's memcmp: patterns and names are short, and
/// most comparisons fail at the first byte.
#[inline]
fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

impl Pattern {
    pub fn new(p: &str) -> Pattern {
        if p == "*" {
            Pattern::Any
        } else if p.contains('*') {
            Pattern::Glob(p.split('*').map(str::to_string).collect())
        } else {
            Pattern::Exact(p.to_string())
        }
    }
    pub fn list(ps: &[&str]) -> Pattern {
        Pattern::List(ps.iter().map(|p| Pattern::new(p)).collect())
    }
    pub fn matches(&self, s: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(e) => bytes_eq(e.as_bytes(), s.as_bytes()),
            Pattern::List(ps) => ps.iter().any(|p| p.matches(s)),
            Pattern::Glob(parts) => {
                let (first, last) = (parts[0].as_bytes(), parts[parts.len() - 1].as_bytes());
                let b = s.as_bytes();
                if b.len() < first.len() + last.len() || !bytes_eq(&b[..first.len()], first) || !bytes_eq(&b[b.len() - last.len()..], last) {
                    return false;
                }
                let mut rest = &s[first.len()..s.len() - last.len()];
                for mid in &parts[1..parts.len() - 1] {
                    match rest.find(mid.as_str()) {
                        Some(i) => rest = &rest[i + mid.len()..],
                        None => return false,
                    }
                }
                true
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Gt,
    Lte,
    Gte,
    In,
    Nin,
    Exists,
    Nexists,
    Contains,
    Ncontains,
    Matches,
    Nmatches,
}

impl Op {
    pub fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "lt" => Op::Lt,
            "gt" => Op::Gt,
            "lte" => Op::Lte,
            "gte" => Op::Gte,
            "in" => Op::In,
            "nin" => Op::Nin,
            "exists" => Op::Exists,
            "nexists" => Op::Nexists,
            "contains" => Op::Contains,
            "ncontains" => Op::Ncontains,
            "matches" => Op::Matches,
            "nmatches" => Op::Nmatches,
            _ => return None,
        })
    }
    pub const NAMES: &'static str = "eq, ne, lt, gt, lte, gte, in, nin, exists, nexists, contains, ncontains, matches, nmatches";
}

/// A field of a request: `actor.id`, `actor.meta.<path>`, `action`, `resource`, `meta.<path>`.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    ActorId,
    ActorMeta(Vec<String>),
    Action,
    Resource,
    Meta(Vec<String>),
}

impl Field {
    pub fn parse(s: &str) -> Option<Field> {
        let path = |rest: &str| rest.split('.').map(str::to_string).collect::<Vec<_>>();
        match s {
            "actor.id" => Some(Field::ActorId),
            "action" => Some(Field::Action),
            "resource" => Some(Field::Resource),
            _ => {
                if let Some(rest) = s.strip_prefix("actor.meta.").filter(|r| !r.is_empty()) {
                    Some(Field::ActorMeta(path(rest)))
                } else {
                    s.strip_prefix("meta.").filter(|r| !r.is_empty()).map(|rest| Field::Meta(path(rest)))
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
pub enum Operand {
    Value(Value),
    From(Field),
}

#[derive(Debug, Clone)]
pub struct Condition {
    pub field: Field,
    pub op: Op,
    pub operand: Operand,
    regex: Option<regex::Regex>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub id: String,
    pub actions: Pattern,
    pub resources: Pattern,
    pub effect: Effect,
    pub conditions: Vec<Condition>,
}

/// A policy as written (YAML or Lua), before it is compiled.
#[derive(Debug, Clone, Default)]
pub struct PolicySpec {
    pub id: String,
    pub actions: Vec<String>,
    pub resources: Vec<String>,
    /// "allow" or "deny".
    pub effect: String,
    /// (field, operator, value or value_from)
    pub conditions: Vec<ConditionSpec>,
}

#[derive(Debug, Clone)]
pub struct ConditionSpec {
    pub field: String,
    pub op: String,
    pub value: Option<Value>,
    pub value_from: Option<String>,
}

/// Where a policy spec is wrong: which part, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn pattern_of(list: &[String]) -> Pattern {
    match list {
        [one] => Pattern::new(one),
        many => Pattern::List(many.iter().map(|p| Pattern::new(p)).collect()),
    }
}

impl PolicySpec {
    pub fn compile(&self) -> Result<Policy, PolicyError> {
        let err = |field: &str, message: String| PolicyError { field: field.to_string(), message };
        let effect = match self.effect.as_str() {
            "allow" => Effect::Allow,
            "deny" => Effect::Deny,
            "" => return Err(err("policy.effect", "missing (allow or deny)".into())),
            other => return Err(err("policy.effect", format!("must be allow or deny, got {other:?}"))),
        };
        if self.actions.is_empty() {
            return Err(err("policy.actions", "missing (\"*\", a name, a pattern or a list)".into()));
        }
        if self.resources.is_empty() {
            return Err(err("policy.resources", "missing (\"*\", a name, a pattern or a list)".into()));
        }
        let mut conditions = Vec::new();
        for (i, c) in self.conditions.iter().enumerate() {
            let at = |what: &str| format!("policy.conditions[{}].{what}", i + 1);
            let field = Field::parse(&c.field)
                .ok_or_else(|| err(&at("field"), format!("unknown field {:?} (actor.id, actor.meta.*, action, resource, meta.*)", c.field)))?;
            let op = Op::parse(&c.op).ok_or_else(|| err(&at("operator"), format!("unknown operator {:?} (known: {})", c.op, Op::NAMES)))?;
            let operand = match (&c.value, &c.value_from) {
                (Some(_), Some(_)) => return Err(err(&at("value"), "give value or value_from, not both".into())),
                (Some(v), None) => Operand::Value(v.clone()),
                (None, Some(f)) => Operand::From(Field::parse(f).ok_or_else(|| err(&at("value_from"), format!("unknown field {f:?}")))?),
                (None, None) if matches!(op, Op::Exists | Op::Nexists) => Operand::Value(Value::Nil),
                (None, None) => return Err(err(&at("value"), format!("operator {} needs value or value_from", c.op))),
            };
            let regex = if matches!(op, Op::Matches | Op::Nmatches) {
                let Operand::Value(Value::Str(s)) = &operand else {
                    return Err(err(&at("value"), "matches needs a regular expression string".into()));
                };
                let text = String::from_utf8_lossy(s);
                Some(regex::Regex::new(&text).map_err(|e| err(&at("value"), format!("bad regular expression: {}", e.to_string().lines().last().unwrap_or("").trim().trim_start_matches("error: "))))?)
            } else {
                None
            };
            if matches!(op, Op::In | Op::Nin) && !matches!(&operand, Operand::Value(Value::Table(_)) | Operand::From(_)) {
                return Err(err(&at("value"), format!("operator {} needs a list", c.op)));
            }
            conditions.push(Condition { field, op, operand, regex });
        }
        Ok(Policy { id: self.id.clone(), actions: pattern_of(&self.actions), resources: pattern_of(&self.resources), effect, conditions })
    }
}

/// What is being asked: an action on a resource, by the process `pid` (its PID is the
/// request's `meta.pid`), with optional further attributes. For an operation on another
/// process, `target` describes it: `meta.target.actor.id`, `meta.target.actor.meta.*`,
/// `meta.target.host` (beyond Wippy).
pub struct Request<'a> {
    pub action: &'a str,
    pub resource: &'a str,
    pub pid: Option<Pid>,
    pub meta: Option<&'a Table>,
    pub target: Option<Target<'a>>,
}

/// The process an operation is aimed at.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub identity: Option<&'a Identity>,
    pub host: &'a str,
}

fn path_get<'v>(mut v: &'v Value, path: &[String]) -> Option<&'v Value> {
    for p in path {
        v = v.as_table()?.get_str(p)?;
    }
    Some(v)
}

enum Got<'a> {
    Missing,
    Borrowed(&'a Value),
    Str(&'a str),
    Owned(Value),
}

impl Got<'_> {
    fn value(&self) -> Option<Value> {
        match self {
            Got::Missing => None,
            Got::Borrowed(v) => Some((*v).clone()),
            Got::Str(s) => Some(Value::str(s)),
            Got::Owned(v) => Some(v.clone()),
        }
    }
    fn as_str(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            Got::Str(s) => Some(std::borrow::Cow::Borrowed(s)),
            Got::Borrowed(v) => v.as_bytes().map(String::from_utf8_lossy),
            Got::Owned(v) => v.as_bytes().map(|b| std::borrow::Cow::Owned(String::from_utf8_lossy(b).into_owned())),
            Got::Missing => None,
        }
    }
}

fn get<'a>(field: &Field, actor: &'a Actor, req: &'a Request<'a>) -> Got<'a> {
    match field {
        Field::ActorId => Got::Str(&actor.id),
        Field::Action => Got::Str(req.action),
        Field::Resource => Got::Str(req.resource),
        Field::ActorMeta(path) => {
            let Some(first) = actor.meta.get_str(&path[0]) else { return Got::Missing };
            path_get(first, &path[1..]).map_or(Got::Missing, Got::Borrowed)
        }
        Field::Meta(path) => {
            if path.len() == 1 && path[0] == "pid" {
                if let Some(pid) = req.pid {
                    return Got::Owned(Value::str(&pid.to_string()));
                }
            }
            if path[0] == "target" {
                let Some(t) = req.target else { return Got::Missing };
                let actor = t.identity.and_then(|i| i.actor.as_deref());
                return match (path.get(1).map(String::as_str), path.get(2).map(String::as_str), actor) {
                    (Some("host"), None, _) => Got::Str(t.host),
                    (Some("actor"), Some("id"), Some(a)) if path.len() == 3 => Got::Str(&a.id),
                    (Some("actor"), Some("meta"), Some(a)) if path.len() > 3 => {
                        let Some(first) = a.meta.get_str(&path[3]) else { return Got::Missing };
                        path_get(first, &path[4..]).map_or(Got::Missing, Got::Borrowed)
                    }
                    _ => Got::Missing,
                };
            }
            let Some(first) = req.meta.and_then(|m| m.get_str(&path[0])) else { return Got::Missing };
            path_get(first, &path[1..]).map_or(Got::Missing, Got::Borrowed)
        }
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

/// Equality for conditions: integers and floats compare by value.
pub fn same(a: &Value, b: &Value) -> bool {
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn order(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x.partial_cmp(&y),
        _ => match (a.as_bytes(), b.as_bytes()) {
            (Some(x), Some(y)) => Some(x.cmp(y)),
            _ => None,
        },
    }
}

impl Condition {
    fn holds(&self, actor: &Actor, req: &Request<'_>) -> bool {
        let got = get(&self.field, actor, req);
        let operand: Option<Value> = match &self.operand {
            Operand::Value(v) => Some(v.clone()),
            Operand::From(f) => get(f, actor, req).value(),
        };
        let positive = match self.op {
            Op::Exists | Op::Nexists => !matches!(got, Got::Missing),
            Op::Matches | Op::Nmatches => match (&self.regex, got.as_str()) {
                (Some(re), Some(s)) => re.is_match(&s),
                _ => false,
            },
            _ => {
                let (Some(v), Some(o)) = (got.value(), operand) else {
                    return matches!(self.op, Op::Ne | Op::Nin | Op::Ncontains);
                };
                match self.op {
                    Op::Eq | Op::Ne => same(&v, &o),
                    Op::Lt => order(&v, &o) == Some(std::cmp::Ordering::Less),
                    Op::Gt => order(&v, &o) == Some(std::cmp::Ordering::Greater),
                    Op::Lte => matches!(order(&v, &o), Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)),
                    Op::Gte => matches!(order(&v, &o), Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)),
                    Op::In | Op::Nin => o.as_table().is_some_and(|t| t.array.iter().any(|x| same(x, &v))),
                    Op::Contains | Op::Ncontains => match (&v, &o) {
                        (Value::Table(t), _) => t.array.iter().any(|x| same(x, &o)),
                        (Value::Str(s), Value::Str(needle)) => {
                            needle.is_empty() || s.windows(needle.len()).any(|w| w == &needle[..])
                        }
                        _ => false,
                    },
                    _ => false,
                }
            }
        };
        match self.op {
            Op::Ne | Op::Nin | Op::Nexists | Op::Ncontains | Op::Nmatches => !positive,
            _ => positive,
        }
    }
}

impl Policy {
    /// Whether this policy applies to the request (its effect then counts).
    pub fn applies(&self, actor: &Actor, req: &Request<'_>) -> bool {
        self.actions.matches(req.action) && self.applies_to_action(actor, req)
    }

    /// `applies`, for a policy whose action pattern is known to match.
    fn applies_to_action(&self, actor: &Actor, req: &Request<'_>) -> bool {
        self.resources.matches(req.resource) && self.conditions.iter().all(|c| c.holds(actor, req))
    }
}

/// The decision for `req` under `identity`: with an actor and a scope, any applying deny
/// denies, else any applying allow allows, else denied. Without either: allowed unless
/// `strict`.
pub fn evaluate(identity: Option<&Identity>, strict: bool, req: &Request<'_>) -> bool {
    let (Some(actor), Some(scope)) = (identity.and_then(|i| i.actor.as_deref()), identity.and_then(|i| i.scope.as_deref())) else {
        return !strict;
    };
    let mut allowed = false;
    for &i in scope.for_action(req.action).iter() {
        let p = &scope.policies[i as usize];
        if p.applies_to_action(actor, req) {
            if p.effect == Effect::Deny {
                return false;
            }
            allowed = true;
        }
    }
    allowed
}

/// The PermissionDenied error for a denied request.
pub fn denied(action: &str, resource: &str) -> Error {
    Error::new(ErrorKind::PermissionDenied, format!("permission denied: {action} on {resource}")).with_retryable(false)
}

/// The node's security settings and its named policies and groups.
#[derive(Default)]
pub struct Security {
    strict: AtomicBool,
    policies: RwLock<HashMap<String, Arc<Policy>>>,
    groups: RwLock<HashMap<String, Vec<Arc<Policy>>>>,
}

impl Security {
    /// `security.strict_mode`: deny when a process has no actor or no scope.
    pub fn set_strict(&self, on: bool) {
        self.strict.store(on, Ordering::Relaxed);
    }
    pub fn strict(&self) -> bool {
        self.strict.load(Ordering::Relaxed)
    }
    /// Add a named policy, and put it in its groups.
    pub fn add_policy(&self, policy: Arc<Policy>, groups: &[String]) {
        for g in groups {
            self.groups.write().entry(g.clone()).or_default().push(policy.clone());
        }
        self.policies.write().insert(policy.id.clone(), policy);
    }
    pub fn policy(&self, id: &str) -> Option<Arc<Policy>> {
        self.policies.read().get(id).cloned()
    }
    pub fn group(&self, id: &str) -> Option<Vec<Arc<Policy>>> {
        self.groups.read().get(id).cloned()
    }
}
