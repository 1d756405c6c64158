//! The contract between the Rust side of a shard and its prelude (`lua/prelude.lua`):
//! every table slot, flag, event tag and spawn mode both sides read or write. The prelude
//! names each of these as a `local NAME <const> = value` (folded into its instructions);
//! Rust reads them from here. A test reads the prelude and fails when a value here and
//! the prelude's differ, or when a name here is missing there.
//!
//! Must never: hold a value only one side knows (those stay private to their side).

use mlua::ffi::lua_Integer;

/// Declares the constants and, for the agreement test, each one's prelude name and value.
macro_rules! abi {
    ($( $(#[$m:meta])* $name:ident = $lua:literal : $ty:ty = $v:expr ;)*) => {
        $( $(#[$m])* pub(crate) const $name: $ty = $v; )*
        /// Every constant: (its name in the prelude, its value as the prelude writes it).
        #[cfg(test)]
        pub(crate) fn all() -> Vec<(&'static str, String)> {
            vec![$( ($lua, abi!(@lua $v)) ),*]
        }
    };
    (@lua $v:expr) => { format!("{:?}", $v) };
}

abi! {
    // A channel is an array: { n, size, handle, flags, topic, sq, rq, buf }.
    /// Values in the buffer.
    C_N = "C_N": lua_Integer = 1;
    /// Buffer capacity.
    C_SIZE = "C_SIZE": lua_Integer = 2;
    /// The channel's handle (the userdata process code holds).
    C_H = "C_H": lua_Integer = 3;
    /// F_EXT | F_PLAIN | F_CLOSED, one integer (read with one lookup).
    C_FLAGS = "C_FLAGS": lua_Integer = 4;
    /// A listen channel's topic (false otherwise).
    C_TOPIC = "C_TOPIC": lua_Integer = 5;
    /// Waiting senders and receivers: queues (false until used).
    C_SQ = "C_SQ": lua_Integer = 6;
    C_RQ = "C_RQ": lua_Integer = 7;
    /// Fed from outside the process (mailbox, timers, events).
    F_EXT = "F_EXT": lua_Integer = 1;
    /// A listen channel that delivers payloads, not messages.
    F_PLAIN = "F_PLAIN": lua_Integer = 2;
    F_CLOSED = "F_CLOSED": lua_Integer = 4;
    // A queue is { head, tail, items... }; empty when head > tail.
    Q_H = "Q_H": lua_Integer = 1;
    Q_T = "Q_T": lua_Integer = 2;
    // A process state P is an array: a task's slots, then its own.
    /// A task's coroutine (main's task is P: its first slots are a task's).
    T_CO = "CO": lua_Integer = 1;
    /// A task's values from its waker (A, B) and a blocked send's value (SV): nil when none.
    T_A = "A": lua_Integer = 5;
    T_SV = "SV": lua_Integer = 7;
    /// A task's next task in the ready queue (its last slot).
    T_QN = "QN": lua_Integer = 8;
    /// P: the ready queue's first task (false when empty).
    P_RH = "RH": lua_Integer = 9;
    /// P: the ready queue's last task.
    P_RT = "RT": lua_Integer = 10;
    /// P: how many tasks wait on something outside the process.
    P_NEXT = "NEXT": lua_Integer = 11;
    /// P: how many mailbox items are pending.
    P_NPEND = "NPEND": lua_Integer = 12;
    /// P: main's environment.
    P_ENV = "ENV": lua_Integer = 13;
    /// P: topic -> listen channel (made on first listen).
    P_LISTEN = "LISTEN": lua_Integer = 14;
    /// P: the inbox channel (made on first use).
    P_INBOX = "INBOX": lua_Integer = 15;
    /// P: the rarer parts (`linger` marks an HTTP handler, SPEC §11.2).
    P_X = "X": lua_Integer = 16;
    // Events Rust hands a process's coroutine: the tag, then the event's values.
    /// A message: topic, from, n, payloads...
    EV_MESSAGE = "EV_MESSAGE": &str = "m";
    /// A command's completion: id, ok, value.
    EV_COMPLETION = "EV_COMPLETION": &str = "t";
    /// EXIT: from, at, ok, value or error.
    EV_EXIT = "EV_EXIT": &str = "x";
    /// LINK_DOWN: from, at, error.
    EV_LINK_DOWN = "EV_LINK_DOWN": &str = "l";
    /// CANCEL: from, at, reason.
    EV_CANCEL = "EV_CANCEL": &str = "c";
    // `R.spawn`'s first argument: bits of a spawn, or one of the two whole modes.
    SPAWN_MONITORED = "SPAWN_MONITORED": i64 = 1;
    SPAWN_LINKED = "SPAWN_LINKED": i64 = 2;
    /// `process.exec`.
    SPAWN_EXEC = "SPAWN_EXEC": i64 = 4;
    /// A function call (`funcs.call`, `async`).
    SPAWN_FUNCTION = "SPAWN_FUNCTION": i64 = 5;
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_prelude_agrees_with_every_constant() {
        let prelude = include_str!("../lua/prelude.lua");
        let declared = |name: &str| -> Option<String> {
            prelude.lines().find_map(|l| {
                let rest = l.trim_start().strip_prefix("local ")?.strip_prefix(name)?.trim_start().strip_prefix("<const>")?;
                let value = rest.trim_start().strip_prefix('=')?.trim_start();
                let end = value.find("--").unwrap_or(value.len());
                Some(value[..end].trim().to_string())
            })
        };
        for (name, value) in super::all() {
            match declared(name) {
                Some(v) => assert_eq!(v, value, "the prelude's {name} is {v}, Rust's is {value}"),
                None => panic!("the prelude has no `local {name} <const> = {value}`"),
            }
        }
    }
}
