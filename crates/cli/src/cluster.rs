//! `.wippy.yaml`'s `cluster` section and `wippy run --cluster URL --node NAME` (SPEC §13.1):
//! whether this node joins a cluster, under which name, through which NATS servers and with
//! which credentials. Wippy's gossip, internode and raft keys are accepted with a warning:
//! this runtime's cluster runs on NATS, where they have no meaning.

use std::path::PathBuf;

use wippy_cluster::{Auth, Config as ClusterConfig, Tls};
use wippy_registry::Config;

/// The keys read here, and what each takes (merged into the command's known keys).
pub const KEYS: &[(&str, &str)] = &[
    ("cluster.enabled", "true or false"),
    ("cluster.name", "this node's ID (1 to 255 bytes, unique among live nodes; default the hostname)"),
    ("cluster.failure_domain", "a label (advertised only)"),
    ("cluster.nats.servers", "NATS server URLs: a list or a comma-separated string (default nats://127.0.0.1:4222)"),
    ("cluster.nats.prefix", "the subject and bucket prefix shared by the cluster's nodes (default wippy)"),
    ("cluster.nats.user", "a NATS user (with cluster.nats.password)"),
    ("cluster.nats.password", "the NATS user's password"),
    ("cluster.nats.token", "a NATS authentication token"),
    ("cluster.nats.nkey", "an NKey seed"),
    ("cluster.nats.creds_file", "a NATS .creds file"),
    ("cluster.nats.tls.required", "true or false"),
    ("cluster.nats.tls.ca_file", "CA certificates (PEM) to trust"),
    ("cluster.nats.tls.cert_file", "client certificate (PEM)"),
    ("cluster.nats.tls.key_file", "client key (PEM)"),
];

/// Wippy's own cluster keys: accepted, with a warning that they do not apply.
pub fn is_wippy_engine_key(path: &str) -> bool {
    ["cluster.membership.", "cluster.internode.", "cluster.raft."].iter().any(|p| path.starts_with(p))
}

/// `${VAR}` replaced by the environment's value (empty when unset), as Wippy's config does.
fn expand(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        match rest[i + 2..].find('}') {
            Some(j) => {
                out.push_str(&std::env::var(&rest[i + 2..i + 2 + j]).unwrap_or_default());
                rest = &rest[i + 3 + j..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn text(config: &Config, key: &str) -> Result<Option<String>, String> {
    match config.get(key) {
        None => Ok(None),
        Some(v) if v.is_string() => Ok(v.as_str().map(expand)),
        Some(v) if v.is_number() || v.is_boolean() => Ok(Some(v.to_string())),
        Some(v) => Err(format!("{}: configuration key {key}: expected a string, found {v}", config.origin(key))),
    }
}

fn flag(config: &Config, key: &str) -> Result<bool, String> {
    match config.get(key) {
        None => Ok(false),
        Some(v) => v.as_bool().ok_or_else(|| format!("{}: configuration key {key}: expected true or false, found {v}", config.origin(key))),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "node".into())
}

/// The cluster this node joins: `None` when clustering is off (the default). `--cluster`
/// and `--node` turn it on and override the configured servers and name.
pub fn settings(config: &Config, servers_flag: Option<&str>, node_flag: Option<&str>) -> Result<Option<ClusterConfig>, String> {
    let enabled = flag(config, "cluster.enabled")? || servers_flag.is_some() || node_flag.is_some();
    if !enabled {
        return Ok(None);
    }
    let name = match node_flag {
        Some(n) => n.to_string(),
        None => text(config, "cluster.name")?.unwrap_or_else(hostname),
    };
    wippy_runtime::Node::check_name(&name).map_err(|e| format!("cluster.name: not a valid node ID: {}", e.message))?;
    let servers: Vec<String> = match servers_flag {
        Some(s) => s.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        None => match config.get("cluster.nats.servers") {
            None => vec!["nats://127.0.0.1:4222".to_string()],
            Some(v) if v.is_array() => v
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().map(expand).ok_or_else(|| format!("{}: cluster.nats.servers: every server must be a string", config.origin("cluster.nats.servers"))))
                .collect::<Result<_, _>>()?,
            Some(_) => text(config, "cluster.nats.servers")?.unwrap_or_default().split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        },
    };
    if servers.is_empty() {
        return Err("cluster.nats.servers: no NATS server given".into());
    }
    let mut c = ClusterConfig::new(name, servers);
    if let Some(p) = text(config, "cluster.nats.prefix")? {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(format!("{}: cluster.nats.prefix {p:?}: letters, digits, '-' and '_' only", config.origin("cluster.nats.prefix")));
        }
        c.prefix = p;
    }
    let user = text(config, "cluster.nats.user")?;
    let password = text(config, "cluster.nats.password")?;
    let token = text(config, "cluster.nats.token")?;
    let nkey = text(config, "cluster.nats.nkey")?;
    let creds = text(config, "cluster.nats.creds_file")?;
    let given = [user.is_some(), token.is_some(), nkey.is_some(), creds.is_some()].iter().filter(|b| **b).count();
    if given > 1 {
        return Err("cluster.nats: give one of user/password, token, nkey or creds_file".into());
    }
    c.auth = match (user, password, token, nkey, creds) {
        (Some(user), Some(password), ..) => Auth::UserPassword { user, password },
        (Some(_), None, ..) => return Err("cluster.nats.user needs cluster.nats.password".into()),
        (None, Some(_), None, None, None) => return Err("cluster.nats.password needs cluster.nats.user".into()),
        (_, _, Some(t), _, _) => Auth::Token(t),
        (_, _, _, Some(k), _) => Auth::NKey(k),
        (_, _, _, _, Some(f)) => Auth::CredsFile(PathBuf::from(f)),
        _ => Auth::None,
    };
    c.tls = Tls {
        required: flag(config, "cluster.nats.tls.required")?,
        ca_file: text(config, "cluster.nats.tls.ca_file")?.map(PathBuf::from),
        cert_file: text(config, "cluster.nats.tls.cert_file")?.map(PathBuf::from),
        key_file: text(config, "cluster.nats.tls.key_file")?.map(PathBuf::from),
    };
    if c.tls.cert_file.is_some() != c.tls.key_file.is_some() {
        return Err("cluster.nats.tls: cert_file and key_file go together".into());
    }
    Ok(Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(sets: &[&str]) -> Config {
        let dir = std::env::temp_dir();
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Config::load(&dir, &[] as &[PathBuf], &sets).unwrap()
    }

    #[test]
    fn off_unless_enabled_or_flagged() {
        assert!(settings(&cfg(&[]), None, None).unwrap().is_none());
        let c = settings(&cfg(&[]), Some("nats://h:1,nats://g:2"), Some("a")).unwrap().unwrap();
        assert_eq!((c.node.as_str(), c.servers.len()), ("a", 2));
    }

    #[test]
    fn names_credentials_and_expansion() {
        std::env::set_var("WIPPY_TEST_NODE", "n7");
        let c = settings(&cfg(&["cluster.enabled=true", "cluster.name=${WIPPY_TEST_NODE}-x", "cluster.nats.user=u", "cluster.nats.password=p"]), None, None)
            .unwrap()
            .unwrap();
        assert_eq!(c.node, "n7-x");
        assert!(matches!(c.auth, Auth::UserPassword { .. }));
        let e = settings(&cfg(&["cluster.enabled=true", "cluster.name=a b"]), None, None).unwrap_err();
        assert!(e.contains("node ID"), "{e}");
        let e = settings(&cfg(&["cluster.enabled=true", "cluster.nats.user=u"]), None, None).unwrap_err();
        assert!(e.contains("password"), "{e}");
    }
}
