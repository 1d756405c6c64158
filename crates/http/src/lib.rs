//! HTTP for the Wippy runtime (SPEC §11): `http.service` listeners whose routed requests
//! run as function processes ([`server`]), the route table with Go 1.22 `ServeMux`
//! semantics ([`route`]), `http.static` mounts ([`statics`]), router middleware
//! ([`middleware`], with the websocket and SSE relays [`wsrelay`], [`sserelay`]), the request/response exchange a handler process answers through
//! ([`exchange`]), and the client behind `http_client` ([`client`]).
//!
//! Depends on the runtime only: a handler is spawned by entry ID, and what it is (a Lua
//! function) is the factory's business. The Lua bindings live in wippy-lua; the entry
//! kinds in the `wippy` command.

pub mod client;
pub mod exchange;
pub mod json;
pub mod middleware;
pub mod route;
pub mod server;
pub mod sserelay;
pub mod statics;
pub mod tls;
pub mod wsrelay;

pub use exchange::Exchange;
pub use server::{ServerProcess, ServerState, ServiceConfig};
