//! Token stores (SPEC §12.9, `security.token_store` entries): opaque bearer tokens that
//! stand for an actor and a scope, with an optional expiry, created, validated and revoked
//! from Lua. Kept in memory, shared by every process that acquires the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use wippy_runtime::{Actor, Scope, Table};

pub(crate) struct Token {
    pub(crate) actor: Arc<Actor>,
    pub(crate) scope: Arc<Scope>,
    pub(crate) expires: Option<Instant>,
    #[allow(dead_code)]
    pub(crate) meta: Table,
}

/// One store: token text -> what it stands for.
#[derive(Default)]
pub struct TokenStore {
    tokens: Mutex<HashMap<String, Token>>,
    /// The entry's `default_expiration`, in milliseconds (0: tokens never expire unless
    /// `create` says so).
    default_ms: std::sync::atomic::AtomicU64,
}

impl TokenStore {
    /// How long a token lives when `create` names no expiration.
    pub(crate) fn default_ttl(&self) -> Option<Duration> {
        match self.default_ms.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    pub(crate) fn set_default_ttl(&self, ttl: Option<Duration>) {
        self.default_ms.store(ttl.map_or(0, |d| d.as_millis().max(1) as u64), std::sync::atomic::Ordering::Relaxed);
    }

    /// A new token (32 random bytes, hex) for `actor` and `scope`.
    pub(crate) fn create(&self, actor: Arc<Actor>, scope: Arc<Scope>, ttl: Option<Duration>, meta: Table) -> String {
        let text = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        let mut tokens = self.tokens.lock();
        // forget what has expired while here
        let now = Instant::now();
        tokens.retain(|_, t| t.expires.is_none_or(|e| e > now));
        tokens.insert(text.clone(), Token { actor, scope, expires: ttl.map(|d| now + d), meta });
        text
    }

    /// What a live token stands for.
    pub(crate) fn validate(&self, token: &str) -> Option<(Arc<Actor>, Arc<Scope>)> {
        let tokens = self.tokens.lock();
        let t = tokens.get(token)?;
        if t.expires.is_some_and(|e| e <= Instant::now()) {
            return None;
        }
        Some((t.actor.clone(), t.scope.clone()))
    }

    /// Revoke a token; `false` if it was not there.
    pub(crate) fn revoke(&self, token: &str) -> bool {
        self.tokens.lock().remove(token).is_some()
    }
}
