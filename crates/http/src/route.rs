//! Route patterns and the route table of one server, with Go 1.22 `ServeMux` semantics
//! (SPEC §11.1.3): `{name}` matches one segment, `{name...}` the rest of the path, a
//! trailing `/` a subtree, `{$}` the end; the most specific pattern wins, and two patterns
//! of one method that overlap with neither more specific are a conflict that rejects the
//! whole table. A table is immutable: a change builds a new one and swaps it in whole.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use percent_encoding::percent_decode_str;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Wild(String),
    /// `{name...}` or (unnamed) the subtree of a trailing `/`.
    Multi(String),
    /// `{$}`: the path ends here with a `/`.
    End,
}

/// A parsed path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    segs: Vec<Seg>,
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Pattern {
    /// Parse a path pattern (`:name` segments are taken as `{name}`).
    pub fn parse(path: &str) -> Result<Pattern, String> {
        if !path.starts_with('/') {
            return Err(format!("path {path:?} must start with /"));
        }
        let mut segs = Vec::new();
        let mut text = String::new();
        let parts: Vec<&str> = path[1..].split('/').collect();
        let last = parts.len() - 1;
        for (i, part) in parts.iter().enumerate() {
            if i == last && part.is_empty() {
                // a trailing slash (or the path "/"): a subtree
                segs.push(Seg::Multi(String::new()));
                text.push('/');
                break;
            }
            text.push('/');
            let part = match part.strip_prefix(':') {
                Some(name) if !name.is_empty() => format!("{{{name}}}"),
                _ => part.to_string(),
            };
            text.push_str(&part);
            if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if inner == "$" {
                    if i != last {
                        return Err(format!("{path:?}: {{$}} must be the last segment"));
                    }
                    segs.push(Seg::End);
                } else if let Some(name) = inner.strip_suffix("...") {
                    if i != last {
                        return Err(format!("{path:?}: {{{name}...}} must be the last segment"));
                    }
                    check_name(path, name)?;
                    segs.push(Seg::Multi(name.to_string()));
                } else {
                    check_name(path, inner)?;
                    segs.push(Seg::Wild(inner.to_string()));
                }
            } else if part.contains('{') || part.contains('}') {
                return Err(format!("{path:?}: a wildcard must be a whole segment ({part:?})"));
            } else if part.is_empty() {
                return Err(format!("{path:?}: empty segment"));
            } else {
                let lit = percent_decode_str(&part).decode_utf8_lossy().into_owned();
                segs.push(Seg::Lit(lit));
            }
        }
        let mut names: Vec<&str> = Vec::new();
        for s in &segs {
            if let Seg::Wild(n) | Seg::Multi(n) = s {
                if !n.is_empty() {
                    if names.contains(&n.as_str()) {
                        return Err(format!("{path:?}: duplicate wildcard name {n:?}"));
                    }
                    names.push(n);
                }
            }
        }
        Ok(Pattern { text, segs })
    }

    /// Match a request path (as sent: segments are percent-decoded here); the named
    /// wildcards that matched a non-empty value.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let mut params = Vec::new();
        let mut rest = path;
        for seg in &self.segs {
            match seg {
                Seg::Multi(name) => {
                    let v = rest.strip_prefix('/')?;
                    if !name.is_empty() && !v.is_empty() {
                        params.push((name.clone(), decode(v)));
                    }
                    return Some(params);
                }
                Seg::End => return (rest == "/").then_some(params),
                Seg::Lit(_) | Seg::Wild(_) => {
                    let after = rest.strip_prefix('/')?;
                    let (part, next) = match after.find('/') {
                        Some(i) => (&after[..i], &after[i..]),
                        None => (after, ""),
                    };
                    match seg {
                        Seg::Lit(l) => {
                            // (only an escaped segment can still equal it once decoded)
                            if part != l && !(part.contains('%') && decode(part) == *l) {
                                return None;
                            }
                        }
                        Seg::Wild(name) => {
                            if part.is_empty() {
                                return None;
                            }
                            params.push((name.clone(), decode(part)));
                        }
                        _ => unreachable!(),
                    }
                    rest = next;
                }
            }
        }
        rest.is_empty().then_some(params)
    }

    fn multi(&self) -> bool {
        matches!(self.segs.last(), Some(Seg::Multi(_)))
    }

    /// How this pattern's set of paths relates to `other`'s.
    fn compare(&self, other: &Pattern) -> Rel {
        if self.segs.len() != other.segs.len() && !self.multi() && !other.multi() {
            return Rel::Disjoint;
        }
        let mut rel = Rel::Equivalent;
        let n = self.segs.len().min(other.segs.len());
        for i in 0..n {
            rel = rel.combine(compare_segs(&self.segs[i], &other.segs[i]));
            if rel == Rel::Disjoint {
                return rel;
            }
        }
        if self.segs.len() == other.segs.len() {
            return rel;
        }
        if self.segs.len() < other.segs.len() && self.multi() {
            return rel.combine(Rel::MoreGeneral);
        }
        if other.segs.len() < self.segs.len() && other.multi() {
            return rel.combine(Rel::MoreSpecific);
        }
        Rel::Disjoint
    }
}

fn check_name(path: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("{path:?}: bad wildcard name {name:?}"));
    }
    Ok(())
}

fn decode(s: &str) -> String {
    if s.contains('%') {
        percent_decode_str(s).decode_utf8_lossy().into_owned()
    } else {
        s.to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rel {
    Equivalent,
    MoreSpecific,
    MoreGeneral,
    Overlaps,
    Disjoint,
}

impl Rel {
    fn inverse(self) -> Rel {
        match self {
            Rel::MoreSpecific => Rel::MoreGeneral,
            Rel::MoreGeneral => Rel::MoreSpecific,
            r => r,
        }
    }
    fn combine(self, r2: Rel) -> Rel {
        match self {
            Rel::Equivalent => r2,
            Rel::Disjoint => Rel::Disjoint,
            Rel::Overlaps => {
                if r2 == Rel::Disjoint {
                    Rel::Disjoint
                } else {
                    Rel::Overlaps
                }
            }
            Rel::MoreGeneral | Rel::MoreSpecific => {
                if r2 == Rel::Equivalent {
                    self
                } else if r2 == self.inverse() {
                    Rel::Overlaps
                } else {
                    r2
                }
            }
        }
    }
}

fn compare_segs(a: &Seg, b: &Seg) -> Rel {
    match (a, b) {
        (Seg::Multi(_), Seg::Multi(_)) => Rel::Equivalent,
        (Seg::Multi(_), _) => Rel::MoreGeneral,
        (_, Seg::Multi(_)) => Rel::MoreSpecific,
        (Seg::Wild(_), Seg::Wild(_)) => Rel::Equivalent,
        (Seg::Wild(_), Seg::End) | (Seg::End, Seg::Wild(_)) => Rel::Disjoint,
        (Seg::Wild(_), _) => Rel::MoreGeneral,
        (_, Seg::Wild(_)) => Rel::MoreSpecific,
        (Seg::End, Seg::End) => Rel::Equivalent,
        (Seg::Lit(x), Seg::Lit(y)) if x == y => Rel::Equivalent,
        _ => Rel::Disjoint,
    }
}

/// The methods an endpoint may declare (SPEC §11.1.3); `*` is any method (Wippy's
/// method-agnostic endpoint, a Go pattern without a method).
pub const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", ANY];

/// The method of a route that answers every method.
pub const ANY: &str = "*";

/// How the methods of two routes relate, as Go's `ServeMux` sees a pattern with and
/// without a method: `*` is the more general.
fn method_rel(a: &str, b: &str) -> Rel {
    match (a == ANY, b == ANY) {
        _ if a == b => Rel::Equivalent,
        (true, false) => Rel::MoreGeneral,
        (false, true) => Rel::MoreSpecific,
        _ => Rel::Disjoint,
    }
}

/// One route: a method, a full pattern (router prefix joined), what answers it.
#[derive(Clone)]
pub struct Route<T> {
    pub method: String,
    pub pattern: Pattern,
    /// Who declared it (an endpoint ID), for conflict messages.
    pub owner: String,
    pub target: T,
}

impl<T> Route<T> {
    /// Method and path together: a route is more specific than another when it matches a
    /// subset of the other's requests (`GET /a/{x}` than `* /a/{y}`; `GET /{x}` and
    /// `* /a` overlap with neither more specific, a conflict).
    fn compare(&self, other: &Route<T>) -> Rel {
        method_rel(&self.method, &other.method).combine(self.pattern.compare(&other.pattern))
    }

    /// Whether this route answers a request of any method (`method: "*"`).
    pub fn any_method(&self) -> bool {
        self.method == ANY
    }
}

/// A matched route and its parameters.
type Hit<'a, T> = Option<(&'a Route<T>, Vec<(String, String)>)>;

/// What a lookup found.
pub enum Found<'a, T> {
    Route(&'a Route<T>, Vec<(String, String)>),
    /// The path matched routes of other methods only (the `Allow` list), or it is an
    /// `OPTIONS` request for a path that has routes: answered by the router itself.
    Options(&'a Route<T>),
    MethodNotAllowed(Vec<String>),
    NotFound,
}

/// The routes of one server, checked for conflicts, indexed by their first segment: a
/// route whose pattern starts with a literal can only match a path whose first segment is
/// that literal, so a lookup checks those and the `open` ones (a pattern starting with a
/// wildcard, a rest, or the root's subtree), not every route of the server. A service with
/// 100 endpoints under a dozen first segments matches a request against a handful of
/// patterns instead of 100.
pub struct Table<T> {
    routes: Vec<Route<T>>,
    /// Indices of the routes whose pattern starts with the key, in table order.
    by_first: HashMap<String, Vec<usize>>,
    /// Indices of the routes whose pattern does not start with a literal, in table order.
    open: Vec<usize>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table { routes: Vec::new(), by_first: HashMap::new(), open: Vec::new() }
    }
}

impl<T> Table<T> {
    /// Build a table; two routes whose requests overlap with neither more specific reject
    /// it ("X conflicts with Y").
    pub fn build(routes: Vec<Route<T>>) -> Result<Arc<Table<T>>, String> {
        for (i, a) in routes.iter().enumerate() {
            for b in &routes[i + 1..] {
                if matches!(a.compare(b), Rel::Equivalent | Rel::Overlaps) {
                    return Err(format!(
                        "\"{} {}\" ({}) conflicts with \"{} {}\" ({})",
                        b.method, b.pattern, b.owner, a.method, a.pattern, a.owner
                    ));
                }
            }
        }
        let mut by_first: HashMap<String, Vec<usize>> = HashMap::new();
        let mut open = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            match r.pattern.segs.first() {
                Some(Seg::Lit(l)) => by_first.entry(l.clone()).or_default().push(i),
                _ => open.push(i),
            }
        }
        Ok(Arc::new(Table { routes, by_first, open }))
    }

    /// The routes that can match `path`, in table order: those under its first segment
    /// (decoded, as `Pattern::matches` compares a literal) and the open ones.
    fn candidates<'a>(&'a self, path: &str) -> impl Iterator<Item = &'a Route<T>> + 'a {
        let first = path.strip_prefix('/').and_then(|after| {
            let part = after.split('/').next().unwrap_or("");
            if part.contains('%') {
                self.by_first.get(decode(part).as_str())
            } else {
                self.by_first.get(part)
            }
        });
        let (mut a, mut b) = (first.map_or(&[][..], Vec::as_slice), self.open.as_slice());
        std::iter::from_fn(move || {
            let i = match (a.first(), b.first()) {
                (Some(&x), Some(&y)) if x < y => {
                    a = &a[1..];
                    x
                }
                (_, Some(&y)) => {
                    b = &b[1..];
                    y
                }
                (Some(&x), None) => {
                    a = &a[1..];
                    x
                }
                (None, None) => return None,
            };
            Some(&self.routes[i])
        })
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route for `method` and `path`: the most specific match of that method or of
    /// `*` (`HEAD` also matches `GET` routes); else the router's own `OPTIONS` answer, a
    /// 405 with the methods that do match, or a 404.
    pub fn lookup(&self, method: &str, path: &str) -> Found<'_, T> {
        let mut best: Hit<'_, T> = None;
        let mut allowed: Vec<String> = Vec::new();
        let mut any: Option<&Route<T>> = None;
        let mut head_via_get: Hit<'_, T> = None;
        for r in self.candidates(path) {
            let Some(params) = r.pattern.matches(path) else { continue };
            any = Some(any.map_or(r, |a: &Route<T>| if r.pattern.compare(&a.pattern) == Rel::MoreSpecific { r } else { a }));
            if r.method == method || r.any_method() {
                let better = match &best {
                    None => true,
                    Some((b, _)) => r.compare(b) == Rel::MoreSpecific,
                };
                if better {
                    best = Some((r, params));
                }
            } else {
                if method == "HEAD" && r.method == "GET" {
                    let better = match &head_via_get {
                        None => true,
                        Some((b, _)) => r.pattern.compare(&b.pattern) == Rel::MoreSpecific,
                    };
                    if better {
                        head_via_get = Some((r, params));
                    }
                }
                if !allowed.contains(&r.method) {
                    allowed.push(r.method.clone());
                }
            }
        }
        // a `GET` route answers `HEAD` before a `*` route no more specific than it
        if let (Some((b, _)), Some((g, _))) = (&best, &head_via_get) {
            if b.any_method() && g.pattern.compare(&b.pattern) != Rel::MoreGeneral {
                best = None;
            }
        }
        if let Some((r, p)) = best.or(head_via_get) {
            return Found::Route(r, p);
        }
        match any {
            None => Found::NotFound,
            Some(r) if method == "OPTIONS" => Found::Options(r),
            Some(_) => {
                if allowed.iter().any(|m| m == "GET") && !allowed.iter().any(|m| m == "HEAD") {
                    allowed.push("HEAD".into());
                }
                if !allowed.iter().any(|m| m == "OPTIONS") {
                    allowed.push("OPTIONS".into());
                }
                Found::MethodNotAllowed(allowed)
            }
        }
    }
}

/// Join a router prefix and an endpoint path: a trailing `/` of the prefix is dropped
/// (`/` becomes ""), `/api` + `/tasks` = `/api/tasks`.
pub fn join(prefix: &str, path: &str) -> String {
    let p = prefix.trim_end_matches('/');
    format!("{p}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: &str, path: &str, n: u32) -> Route<u32> {
        Route { method: method.into(), pattern: Pattern::parse(path).unwrap(), owner: format!("ep{n}"), target: n }
    }

    fn hit(t: &Table<u32>, method: &str, path: &str) -> Option<(u32, Vec<(String, String)>)> {
        match t.lookup(method, path) {
            Found::Route(r, p) => Some((r.target, p)),
            _ => None,
        }
    }

    #[test]
    fn literal_beats_wildcard_and_params_are_decoded() {
        let t = Table::build(vec![route("GET", "/users/{id}", 1), route("GET", "/users/me", 2), route("GET", "/files/{path...}", 3)]).unwrap();
        assert_eq!(hit(&t, "GET", "/users/me").unwrap().0, 2);
        let (n, p) = hit(&t, "GET", "/users/a%20b").unwrap();
        assert_eq!((n, p), (1, vec![("id".to_string(), "a b".to_string())]));
        let (n, p) = hit(&t, "GET", "/files/a/b.txt").unwrap();
        assert_eq!((n, p), (3, vec![("path".to_string(), "a/b.txt".to_string())]));
        assert!(hit(&t, "GET", "/users/").is_none());
        assert!(hit(&t, "GET", "/users/1/x").is_none());
        assert_eq!(hit(&t, "HEAD", "/users/me").unwrap().0, 2, "GET also answers HEAD");
    }

    #[test]
    fn colon_params_subtrees_and_the_end_anchor() {
        let t = Table::build(vec![route("GET", "/a/:x", 1), route("GET", "/", 2), route("GET", "/b/{$}", 3), route("GET", "/b/", 4)]).unwrap();
        assert_eq!(hit(&t, "GET", "/a/7").unwrap(), (1, vec![("x".to_string(), "7".to_string())]));
        assert_eq!(hit(&t, "GET", "/anything/else").unwrap().0, 2);
        assert_eq!(hit(&t, "GET", "/b/").unwrap().0, 3);
        assert_eq!(hit(&t, "GET", "/b/c").unwrap().0, 4);
    }

    #[test]
    fn overlapping_patterns_conflict() {
        let e = Table::build(vec![route("GET", "/a/{x}", 1), route("GET", "/{y}/b", 2)]).err().unwrap();
        assert!(e.contains("conflicts with"), "{e}");
        assert!(Table::build(vec![route("GET", "/a/{x}", 1), route("GET", "/a/{y}", 2)]).is_err(), "same shape");
        assert!(Table::build(vec![route("GET", "/a/{x}", 1), route("POST", "/a/{y}", 2)]).is_ok(), "other method");
    }

    #[test]
    fn method_not_allowed_lists_the_methods_and_options_is_answered() {
        let t = Table::build(vec![route("GET", "/x", 1), route("POST", "/x", 2)]).unwrap();
        match t.lookup("DELETE", "/x") {
            Found::MethodNotAllowed(m) => assert_eq!(m, vec!["GET", "POST", "HEAD", "OPTIONS"]),
            _ => panic!("expected 405"),
        }
        assert!(matches!(t.lookup("OPTIONS", "/x"), Found::Options(_)));
        assert!(matches!(t.lookup("GET", "/y"), Found::NotFound));
    }

    #[test]
    fn a_star_route_answers_every_method_below_the_routes_that_name_one() {
        let t = Table::build(vec![route("*", "/p/{rest...}", 1), route("GET", "/p/{rest...}", 2), route("POST", "/p/a", 3)]).unwrap();
        assert_eq!(hit(&t, "DELETE", "/p/a/b").map(|h| h.0), Some(1));
        assert_eq!(hit(&t, "OPTIONS", "/p/a").map(|h| h.0), Some(1), "no router OPTIONS answer: the * route takes it");
        assert_eq!(hit(&t, "GET", "/p/x").map(|h| h.0), Some(2), "the named method is more specific");
        assert_eq!(hit(&t, "HEAD", "/p/x").map(|h| h.0), Some(2), "HEAD goes to the GET route before the * one");
        assert_eq!(hit(&t, "POST", "/p/a").map(|h| h.0), Some(3));
        assert_eq!(hit(&t, "PUT", "/p/a").map(|h| h.0), Some(1));
        // Go's rule: `GET /{x}` is more specific in method, `* /a` in path: a conflict
        let e = Table::build(vec![route("GET", "/{x}", 1), route("*", "/a", 2)]).err().expect("a conflict");
        assert!(e.contains("conflicts with"), "{e}");
        assert!(Table::build(vec![route("*", "/a", 1), route("*", "/a", 2)]).is_err(), "two * routes on one path");
    }

    /// What a lookup answered, comparable.
    fn answer(f: Found<'_, u32>) -> String {
        match f {
            Found::Route(r, p) => format!("route {} {p:?}", r.target),
            Found::Options(r) => format!("options {}", r.target),
            Found::MethodNotAllowed(m) => format!("405 {m:?}"),
            Found::NotFound => "404".into(),
        }
    }

    #[test]
    fn the_first_segment_index_answers_as_checking_every_route() {
        // the same routes with nothing indexed (every route open, checked in table order)
        // must give the same answer for every path and method
        let routes = || {
            vec![
                route("GET", "/api/users/{id}", 1),
                route("POST", "/api/users", 2),
                route("GET", "/api/users/me", 3),
                route("GET", "/api/admin/{rest...}", 4),
                route("GET", "/{page}", 5),
                route("GET", "/", 6),
                route("GET", "/static/", 7),
                route("GET", "/a b/c", 8),
                route("PUT", "/api/users/{id}", 9),
                route("GET", "/static/{$}", 10),
                route("DELETE", "/{page}", 11),
                route("GET", "/files/{path...}", 12),
            ]
        };
        let indexed = Table::build(routes()).unwrap();
        let n = indexed.routes.len();
        let linear = Table { routes: routes(), by_first: HashMap::new(), open: (0..n).collect() };
        assert!(indexed.open.len() < n, "the literal first segments are indexed");
        let paths = [
            "/", "/api", "/api/", "/api/users", "/api/users/7", "/api/users/me", "/api/users/7/x", "/api/admin",
            "/api/admin/x/y", "/%61pi/users/me", "/a%20b/c", "/a b/c", "/static", "/static/", "/static/x.css",
            "/files/a/b", "/files", "/nothere", "/x/y", "", "nope", "//", "/api//users",
        ];
        for m in ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
            for p in paths {
                assert_eq!(answer(indexed.lookup(m, p)), answer(linear.lookup(m, p)), "{m} {p}");
            }
        }
    }

    #[test]
    fn bad_patterns_are_refused() {
        for p in ["x", "/a/{b", "/{x...}/y", "/a/{1x}", "/a//b", "/{x}/{x}", "/a{b}"] {
            assert!(Pattern::parse(p).is_err(), "{p}");
        }
        assert_eq!(join("/", "/hello"), "/hello");
        assert_eq!(join("/api/", "/tasks"), "/api/tasks");
    }
}
