//! `http.static`: files under a directory, mounted on a path of a server (SPEC §11.1.4):
//! content types, `Last-Modified`/`ETag` with conditional requests, single byte ranges,
//! directory index and listing, SPA fallback. A request never reaches outside the
//! directory: `..` segments (also percent-encoded) are refused, and a path that resolves
//! (through symlinks) outside it is not found.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use percent_encoding::percent_decode_str;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::exchange::{text_response, HttpResponse, RespBody};

/// One mount.
#[derive(Debug, Clone)]
pub struct StaticMount {
    /// The mount path without its trailing `/` ("" for `/`).
    pub prefix: String,
    /// The directory (canonical).
    pub root: PathBuf,
    pub index: String,
    pub cache: String,
    pub spa: bool,
}

impl StaticMount {
    pub fn new(path: &str, root: &Path, index: &str, cache: &str, spa: bool) -> Result<StaticMount, String> {
        let root = root.canonicalize().map_err(|e| format!("directory {}: {e}", root.display()))?;
        if !root.is_dir() {
            return Err(format!("{} is not a directory", root.display()));
        }
        Ok(StaticMount { prefix: path.trim_end_matches('/').to_string(), root, index: index.to_string(), cache: cache.to_string(), spa })
    }

    pub fn covers(&self, path: &str) -> bool {
        path == self.prefix || path.starts_with(&self.prefix) && path.as_bytes().get(self.prefix.len()) == Some(&b'/')
    }

    pub async fn serve(&self, req: &Request<Incoming>) -> HttpResponse {
        if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
            let mut r = text_response(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let rel = &req.uri().path()[self.prefix.len()..];
        let decoded = percent_decode_str(rel).decode_utf8_lossy();
        if decoded.contains('\0') || decoded.contains('\\') || decoded.split('/').any(|s| s == "..") {
            return text_response(StatusCode::BAD_REQUEST, "invalid URL path\n");
        }
        let file = under(&self.root, &decoded);
        let mut resp = match self.resolve(&file) {
            Some(p) if p.is_dir() => {
                if !rel.ends_with('/') {
                    // as Go's file server: a directory is addressed with its slash
                    let mut r = Response::new(RespBody::empty());
                    *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
                    let to = format!("{}/", req.uri().path().rsplit('/').next().unwrap_or(""));
                    if let Ok(v) = HeaderValue::from_str(&to) {
                        r.headers_mut().insert(header::LOCATION, v);
                    }
                    return r;
                }
                let index = p.join(if self.index.is_empty() { "index.html" } else { &self.index });
                match self.resolve(&index) {
                    Some(i) if i.is_file() => send_file(req, &i).await,
                    _ if self.spa => self.spa_index(req).await,
                    _ => listing(&p, req.method() == hyper::Method::HEAD),
                }
            }
            Some(p) => send_file(req, &p).await,
            None if self.spa => self.spa_index(req).await,
            None => text_response(StatusCode::NOT_FOUND, "404 page not found\n"),
        };
        if !self.cache.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&self.cache) {
                resp.headers_mut().insert(header::CACHE_CONTROL, v);
            }
        }
        resp
    }

    /// The file's real path, if it exists inside the mount's directory.
    fn resolve(&self, p: &Path) -> Option<PathBuf> {
        resolve_in(&self.root, p)
    }

    async fn spa_index(&self, req: &Request<Incoming>) -> HttpResponse {
        match self.resolve(&self.root.join(&self.index)) {
            Some(i) if i.is_file() => {
                let mut r = send_file(req, &i).await;
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
                r
            }
            _ => text_response(StatusCode::NOT_FOUND, "404 page not found\n"),
        }
    }
}

/// `rel` (a `/`-separated path) joined under `root`, empty and `.` segments skipped.
fn under(root: &Path, rel: &str) -> PathBuf {
    let mut file = root.to_path_buf();
    for seg in rel.split('/').filter(|s| !s.is_empty() && *s != ".") {
        file.push(seg);
    }
    file
}

/// `p`'s real path (symlinks followed), if it exists and lies inside `root` (canonical): the
/// one check that keeps a static mount and `sendfile` inside their directory.
fn resolve_in(root: &Path, p: &Path) -> Option<PathBuf> {
    let real = p.canonicalize().ok()?;
    real.starts_with(root).then_some(real)
}

fn content_type(p: &Path) -> HeaderValue {
    let mime = mime_guess::from_path(p).first_or_octet_stream();
    let text = mime.type_() == mime_guess::mime::TEXT || mime.subtype() == mime_guess::mime::JAVASCRIPT || mime.subtype() == mime_guess::mime::JSON;
    let v = if text && mime.get_param(mime_guess::mime::CHARSET).is_none() { format!("{mime}; charset=utf-8") } else { mime.to_string() };
    HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

/// A byte range of a `size`-byte file: `Ok(None)` = the whole file (no or several ranges,
/// or a header this does not read); `Err` = unsatisfiable.
fn range(h: Option<&HeaderValue>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = h.and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("bytes=")) else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let s: u64 = a.parse().map_err(|_| ())?;
        let e = if b.is_empty() { size.saturating_sub(1) } else { b.parse::<u64>().map_err(|_| ())?.min(size.saturating_sub(1)) };
        (s, e)
    };
    if size == 0 || start >= size || start > end {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn send_file(req: &Request<Incoming>, p: &Path) -> HttpResponse {
    serve_file(req.method(), req.headers(), p).await
}

/// A file answered as Go's `ServeContent` does: validators, conditional requests, one byte
/// range, HEAD.
pub(crate) async fn serve_file(method: &hyper::Method, h: &header::HeaderMap, p: &Path) -> HttpResponse {
    let Ok(meta) = tokio::fs::metadata(p).await else { return text_response(StatusCode::NOT_FOUND, "404 page not found\n") };
    let size = meta.len();
    let modified = meta.modified().unwrap_or(UNIX_EPOCH);
    let nanos = modified.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let etag = format!("\"{size:x}-{nanos:x}\"");
    let last_modified = httpdate::fmt_http_date(modified);
    let not_modified = match h.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        Some(inm) => inm.split(',').any(|t| t.trim() == "*" || t.trim().trim_start_matches("W/") == etag),
        None => h
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .is_some_and(|since: SystemTime| modified.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) <= since.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)),
    };
    let mut resp = Response::new(RespBody::empty());
    let hs = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        hs.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&last_modified) {
        hs.insert(header::LAST_MODIFIED, v);
    }
    hs.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if not_modified {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        return resp;
    }
    hs.insert(header::CONTENT_TYPE, content_type(p));
    // If-Range with a different validator: the whole file
    let if_range_ok = h.get(header::IF_RANGE).and_then(|v| v.to_str().ok()).is_none_or(|v| v == etag || v == last_modified);
    let (start, end, partial) = match range(h.get(header::RANGE).filter(|_| if_range_ok), size) {
        Ok(Some((s, e))) => (s, e, true),
        Ok(None) => (0, size.saturating_sub(1), false),
        Err(()) => {
            let mut r = text_response(StatusCode::RANGE_NOT_SATISFIABLE, "invalid range\n");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    if partial {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")) {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    let len = if size == 0 { 0 } else { end - start + 1 };
    if method == hyper::Method::HEAD {
        if let Ok(v) = HeaderValue::from_str(&len.to_string()) {
            resp.headers_mut().insert(header::CONTENT_LENGTH, v);
        }
        return resp;
    }
    let read = async {
        let mut f = tokio::fs::File::open(p).await?;
        f.seek(std::io::SeekFrom::Start(start)).await?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    match read.await {
        Ok(buf) => {
            *resp.body_mut() = RespBody::Full(Some(Bytes::from(buf)));
            resp
        }
        Err(e) => {
            tracing::warn!(file = %p.display(), "static file: {e}");
            text_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
        }
    }
}

/// `sendfile` (SPEC §11.4): a handler that answers with `X-Sendfile` (or Wippy's older
/// `X-File-Path`) naming a file of the router's `sendfile.fs` filesystem gets that file
/// served in its place, as a static mount would (validators, ranges, HEAD); `X-File-Name`
/// makes it a download of that name. The headers do not reach the client. A path that is
/// empty, `.` or `..` is 400; one that is missing or leads outside the filesystem's
/// directory (`..` segments, symlinks) is 404.
pub struct SendFile {
    /// The filesystem's directory (canonical).
    pub root: PathBuf,
}

impl SendFile {
    pub fn new(root: &Path) -> Result<SendFile, String> {
        let root = root.canonicalize().map_err(|e| format!("directory {}: {e}", root.display()))?;
        Ok(SendFile { root })
    }

    /// The handler's answer, or the file it names.
    pub async fn answer(&self, method: &hyper::Method, req_headers: &header::HeaderMap, mut resp: HttpResponse) -> HttpResponse {
        let h = resp.headers_mut();
        // X-Sendfile wins; both are taken off the answer either way
        let (sendfile, legacy) = (h.remove("x-sendfile"), h.remove("x-file-path"));
        let named = sendfile.or(legacy);
        let download = h.remove("x-file-name");
        let Some(path) = named else { return resp };
        let path = String::from_utf8_lossy(path.as_bytes()).into_owned();
        if matches!(path.as_str(), "" | "." | "..") {
            return text_response(StatusCode::BAD_REQUEST, "sendfile middleware: invalid file path\n");
        }
        let inside = resolve_in(&self.root, &under(&self.root, &path)).filter(|real| real.is_file());
        let Some(real) = inside else {
            return text_response(StatusCode::NOT_FOUND, &format!("sendfile middleware: file not found: {path}\n"));
        };
        let mut out = serve_file(method, req_headers, &real).await;
        if let Some(name) = download.as_ref().and_then(|v| v.to_str().ok()).filter(|n| !n.is_empty()) {
            let quoted = serde_json::to_string(name).unwrap_or_default();
            if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename={quoted}")) {
                out.headers_mut().insert(header::CONTENT_DISPOSITION, v);
            }
        }
        out
    }
}

fn listing(dir: &Path, head: bool) -> HttpResponse {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                if e.path().is_dir() { format!("{n}/") } else { n }
            })
            .collect(),
        Err(_) => return text_response(StatusCode::NOT_FOUND, "404 page not found\n"),
    };
    names.sort();
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    let mut html = String::from("<!doctype html>\n<meta name=\"viewport\" content=\"width=device-width\">\n<pre>\n");
    for n in names {
        let href = percent_encoding::utf8_percent_encode(&n, percent_encoding::NON_ALPHANUMERIC).to_string().replace("%2F", "/").replace("%2E", ".");
        html.push_str(&format!("<a href=\"{}\">{}</a>\n", esc(&href), esc(&n)));
    }
    html.push_str("</pre>\n");
    let mut r = Response::new(if head { RespBody::empty() } else { RespBody::text(html) });
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    r
}

#[cfg(test)]
mod tests {
    use super::range;
    use hyper::header::HeaderValue;

    #[test]
    fn byte_ranges() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(range(Some(&h("bytes=0-4")), 10), Ok(Some((0, 4))));
        assert_eq!(range(Some(&h("bytes=5-")), 10), Ok(Some((5, 9))));
        assert_eq!(range(Some(&h("bytes=-3")), 10), Ok(Some((7, 9))));
        assert_eq!(range(Some(&h("bytes=3-100")), 10), Ok(Some((3, 9))));
        assert_eq!(range(Some(&h("bytes=10-")), 10), Err(()));
        assert_eq!(range(Some(&h("bytes=0-1,3-4")), 10), Ok(None));
        assert_eq!(range(None, 10), Ok(None));
    }
}
