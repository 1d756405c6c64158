//! Router middleware (SPEC §11.4). `cors` is built in; a name this runtime does not have
//! is a load error naming it.

use std::collections::BTreeMap;

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

/// Middleware names Wippy has that this runtime does not (yet): refused with that reason.
pub const NOT_YET: &[&str] =
    &["real_ip", "ratelimit", "compress", "token_auth", "endpoint_firewall", "resource_firewall", "sendfile", "metrics", "otel", "websocket_relay", "sse_relay"];

/// The `cors` middleware's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Cors {
    origins: Vec<String>,
    methods: String,
    headers: String,
    expose: String,
    credentials: bool,
    max_age: String,
    private_network: bool,
}

impl Cors {
    /// From a router's options map (`cors.allow.origins` …; old underscore keys such as
    /// `cors_allow_origins` are accepted too).
    pub fn from_options(options: &BTreeMap<String, String>) -> Result<Cors, String> {
        let get = |key: &str, default: &str| -> String {
            options.get(key).or_else(|| options.get(&key.replace('.', "_"))).cloned().unwrap_or_else(|| default.to_string())
        };
        let flag = |key: &str| -> Result<bool, String> {
            match get(key, "false").as_str() {
                "true" | "1" => Ok(true),
                "false" | "0" | "" => Ok(false),
                other => Err(format!("options.{key}: expected true or false, got {other:?}")),
            }
        };
        let max_age = get("cors.max.age", "86400");
        if max_age.parse::<u64>().is_err() {
            return Err(format!("options.cors.max.age: expected a number of seconds, got {max_age:?}"));
        }
        Ok(Cors {
            origins: get("cors.allow.origins", "*").split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            methods: get("cors.allow.methods", "GET,POST,PUT,DELETE,OPTIONS,PATCH"),
            headers: get("cors.allow.headers", "Origin,Content-Type,Accept,Authorization,X-Requested-With"),
            expose: get("cors.expose.headers", ""),
            credentials: flag("cors.allow.credentials")?,
            max_age,
            private_network: flag("cors.allow.private.network")?,
        })
    }

    fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| {
            o == "*" || o == origin || (o == "localhost" && {
                let host = origin.split("://").nth(1).unwrap_or(origin);
                let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
                host == "localhost" || host == "127.0.0.1" || host == "[::1]"
            })
        })
    }

    /// Add the CORS headers for a request from `origin` (a preflight gets the method,
    /// header and max-age ones too).
    pub fn apply(&self, origin: Option<&HeaderValue>, out: &mut HeaderMap, preflight: bool) {
        let Some(origin) = origin.and_then(|o| o.to_str().ok()) else { return };
        if !self.allows(origin) {
            return;
        }
        let set = |out: &mut HeaderMap, name: &'static str, v: &str| {
            if let Ok(v) = HeaderValue::from_str(v) {
                out.insert(HeaderName::from_static(name), v);
            }
        };
        if self.origins.iter().any(|o| o == "*") && !self.credentials {
            set(out, "access-control-allow-origin", "*");
        } else {
            set(out, "access-control-allow-origin", origin);
            out.append(hyper::header::VARY, HeaderValue::from_static("Origin"));
        }
        if self.credentials {
            set(out, "access-control-allow-credentials", "true");
        }
        if !self.expose.is_empty() {
            set(out, "access-control-expose-headers", &self.expose);
        }
        if preflight {
            set(out, "access-control-allow-methods", &self.methods);
            set(out, "access-control-allow-headers", &self.headers);
            set(out, "access-control-max-age", &self.max_age);
            if self.private_network {
                set(out, "access-control-allow-private-network", "true");
            }
        }
    }
}
