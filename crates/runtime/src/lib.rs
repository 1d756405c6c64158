//! wippy-runtime: the Wippy process model as an embeddable Rust library.
//!
//! A [`Node`] owns hosts; each host has its own work-stealing scheduler. Processes are
//! state machines ([`Process`]) with a PID, a mailbox, links, monitors and names; they talk
//! only by messages of immutable [`Value`]s. Waiting things (timers, I/O) are yielded as
//! [`Command`]s and complete as events. [`Handler`] is the convenience layer for writing a
//! process as a plain event handler.
//!
//! This crate knows nothing of Lua or YAML.

#![deny(unsafe_op_in_unsafe_fn)]

mod cell;
mod clock;
mod context;
mod dispatch;
mod error;
mod handler;
mod host;
#[doc(hidden)]
/// mimalloc as a global allocator, for binaries that embed the runtime (`wippy`, the
/// benchmarks): `#[global_allocator] static A: wippy_runtime::alloc::Mi = wippy_runtime::alloc::Mi;`
pub mod alloc;
pub mod mailbox;
mod names;
mod node;
mod pid;
mod process;
mod remote;
mod scheduler;
mod security;
mod step;
mod supervisor;
mod sync;
mod table;
mod topic;
mod topology;
mod value;
mod warm;
pub mod events;
pub mod stats;

pub use cell::{GroupStats, ProcessGroup, ProcessRef};
pub use context::Context;
pub use dispatch::{unix_nanos, unix_secs, MAX_PENDING_COMMANDS};
pub use error::{Echo, Error, ErrorKind, ECHO_MAX};
pub use handler::{handler_fn, FnHandler, Flow, Handler, HandlerProcess};
pub use host::{HostConfig, HostRef, HostSecurity, DEFAULT_MAX_MAILBOX_BYTES, DEFAULT_MAX_PROCESSES};
pub use names::{MAX_NAMES_PER_PROCESS, MAX_NAME_BYTES};
pub use mailbox::ProcessState;
pub use node::{Dest, ExitCallback, ExitWatch, HostStats, Node, NodeRef, ProcessInfo, Spawn, StopReport};
pub use pid::{HostName, Pid, PidCounter, PidParseError};
pub use remote::{Pending, Along, Member, NameScope, Origin, Relation, Remote, NODE_DISCONNECTED};
pub use process::{Attachment, Command, CommandId, Event, Events, ExitResult, Message, NewProcess, Payload, Process, ProcessFactory, Status};
pub use topic::Topic;
pub use scheduler::Runnable;
pub use security::{
    denied, evaluate, Actor, ConditionSpec, Effect, EntrySecurity, Field, Identity, Op, Pattern, Policy, PolicyError, PolicySpec, Request, Scope, Security, Target,
};
pub use supervisor::{Clock, RestartPolicy, ServiceKind, ServiceSpec, ServiceState, ServiceStatus, StopSummary, Supervisor, SystemClock, Transition};
pub use value::{PathStep, Table, Value, ValueError, MAX_DEPTH};
pub use warm::{prefetch, WARM};

/// Build a [`Payload`] from values: `payload![1, "x"]`.
#[macro_export]
macro_rules! payload {
    () => { $crate::Payload::new() };
    ($($v:expr),+ $(,)?) => {{
        let mut p = $crate::Payload::new();
        $( p.push($crate::Value::from($v)); )+
        p
    }};
}

