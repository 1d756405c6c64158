//! `wippy`: load a project (its `src/**/_index.yaml` entries), boot a node from it, and run
//! it, one of its entries, or its tests.

// The node allocates per message, spawn and request: mimalloc's thread-local pools beat
// glibc malloc by ~10% of a loaded HTTP server's CPU (perf, BENCHMARKS.md).
#[global_allocator]
static GLOBAL: wippy_runtime::alloc::Mi = wippy_runtime::alloc::Mi;

mod boot;
mod cluster;
mod http;
mod kinds;
mod live;
mod plan;
mod commands;
mod signals;
mod control;
mod metrics;
mod top;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "wippy", version, about = "Run Wippy projects: Lua processes on an Erlang-style runtime")]
pub struct Cli {
    /// Debug logs (`--very-verbose`, Wippy's debug-with-stack-traces, is the same here: a Lua
    /// error's traceback is logged at debug).
    #[arg(short, long, global = true, visible_alias = "very-verbose")]
    pub verbose: bool,
    /// No logs.
    #[arg(short, long, global = true)]
    pub silent: bool,
    /// Coloured console logs (Wippy's `--console`).
    #[arg(short, long, global = true, visible_alias = "console")]
    pub color: bool,
    /// Wippy's Go memory limit (`-m 1G`): accepted, with a warning that it has no effect here.
    #[arg(short = 'm', long = "memory-limit", global = true, value_name = "SIZE")]
    pub memory_limit: Option<String>,
    /// Wippy's pprof server: accepted, with a warning that it has no effect here.
    #[arg(short = 'p', long = "profiler", global = true)]
    pub profiler: bool,
    /// Wippy's log streaming to its event bus: accepted, with a warning that it has no effect
    /// here.
    #[arg(short = 'e', long = "event-streams", global = true)]
    pub event_streams: bool,
    /// A configuration file (merged over .wippy.yaml; repeatable).
    #[arg(long = "config", global = true, value_name = "FILE")]
    pub configs: Vec<PathBuf>,
    /// Override a configuration value: --set logger.level=debug (repeatable).
    #[arg(long = "set", global = true, value_name = "PATH=VALUE")]
    pub sets: Vec<String>,
    /// Override one field of an entry: -o app:processes:host.workers=8 (Wippy's
    /// `ns:entry:field=value`; repeatable).
    #[arg(short = 'o', long = "override", global = true, value_name = "NS:ENTRY:FIELD=VALUE")]
    pub overrides: Vec<String>,
    /// The project directory.
    #[arg(short = 'd', long = "dir", global = true, default_value = ".", value_name = "DIR")]
    pub dir: PathBuf,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Start the project's hosts and services and run until interrupted; with -x or a
    /// command NAME, run that entry on a terminal host and exit when it ends.
    Run {
        /// Run this process entry (ns:name) on a terminal host.
        #[arg(short = 'x', long = "exec", value_name = "ENTRY")]
        exec: Option<String>,
        /// The terminal host to use (when the project has more than one).
        #[arg(long)]
        host: Option<String>,
        /// Reload changed files under the source directory as new registry versions.
        #[arg(long)]
        watch: bool,
        /// Join a cluster through these NATS servers (comma-separated URLs; SPEC §13).
        #[arg(long, value_name = "URL")]
        cluster: Option<String>,
        /// This node's ID in the cluster (default: cluster.name, else the hostname).
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
        /// A command name (meta.command.name), or `list`; then its arguments. With -x, the
        /// entry's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "NAME|ARGS")]
        args: Vec<String>,
    },
    /// Run every entry with meta.type: test (optionally only those matching FILTERs).
    Test {
        /// Substrings of test IDs or suite names.
        filters: Vec<String>,
        /// The terminal host tests run on (when the project has more than one).
        #[arg(long)]
        host: Option<String>,
        /// How long one test may run.
        #[arg(long, default_value = "60s")]
        timeout: String,
    },
    /// Write a wippy.lock and a starter src/_index.yaml with a host and a hello process.
    Init,
    /// Check the project without starting anything: every load check, then what can be
    /// found statically in the Lua sources (unknown require names, misspelt module
    /// functions, globals assigned at the top level). Exit 1 on errors.
    Lint {
        /// One JSON array of findings on stdout (for editors).
        #[arg(long)]
        json: bool,
    },
    /// List the processes of the node running in the project directory (through its
    /// control socket): PID, entry, host, state, mailbox, memory, steps, age, names.
    Ps {
        /// Only processes on this host.
        #[arg(long)]
        host: Option<String>,
        /// Order by this column (largest first).
        #[arg(long, value_enum, default_value = "pid")]
        sort: control::Sort,
        /// One JSON array on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show one process of the running node: links, monitors, names, mailbox, entry and
    /// version, its service's last error.
    Inspect {
        /// The PID, as `ps` prints it.
        pid: String,
        #[arg(long)]
        json: bool,
    },
    /// A live view of the running node: totals, hosts, services, processes.
    Top {
        #[arg(long, value_enum, default_value = "cpu")]
        sort: control::Sort,
        /// Seconds between readings.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Print one screen as text and exit (no terminal needed).
        #[arg(long)]
        once: bool,
    },
    /// Print the version (`--short`: the number alone).
    Version {
        #[arg(long)]
        short: bool,
    },
    /// Inspect the registry.
    Registry {
        #[command(subcommand)]
        command: RegistryCmd,
    },
}

#[derive(Subcommand)]
pub enum RegistryCmd {
    /// List loaded entries.
    List {
        /// Only entries of this kind (a glob: `process.*`).
        #[arg(short = 'k', long)]
        kind: Option<String>,
        /// Only entries of this namespace and the namespaces below it, or of the namespaces
        /// a glob matches (`app.*`).
        #[arg(short = 'n', long)]
        ns: Option<String>,
        /// Only entries whose name matches this glob.
        #[arg(long)]
        name: Option<String>,
        /// Only entries whose meta field matches (repeatable, all must): `field=value`
        /// (equal), `field~regex`, `field*substring`, `field^prefix`, `field$suffix`; a
        /// dotted field reaches into a mapping (`command.name=hello`).
        #[arg(long, value_name = "FIELD<OP>VALUE")]
        meta: Vec<String>,
        #[command(flatten)]
        format: Format,
    },
    /// Print one entry: its kind, where it is defined, its source file, meta and fields.
    Show {
        /// The entry ID (`namespace:name`).
        id: String,
        #[command(flatten)]
        format: Format,
    },
}

/// Machine-readable output instead of the table.
#[derive(clap::Args, Clone, Copy)]
pub struct Format {
    #[arg(long, conflicts_with = "yaml")]
    pub json: bool,
    #[arg(long)]
    pub yaml: bool,
}

/// `wippy run list -d DIR`: `list` takes no arguments, so what follows it are flags (a
/// command NAME's arguments stay its own). Moves `list` last, where clap reads the flags
/// before it as the run's.
fn flags_after_list(mut argv: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    if let Some(run) = argv.iter().position(|a| a == "run") {
        // the first word after `run` that is not a flag or a flag's value
        let mut i = run + 1;
        while i < argv.len() {
            let a = argv[i].to_string_lossy();
            if a == "-x" || a == "--exec" {
                return argv; // with -x, every word after the flags is the entry's argument
            }
            if a == "-d" || a == "--dir" || a == "--config" || a == "--set" || a == "--host" {
                i += 2;
            } else if a.starts_with('-') {
                i += 1;
            } else {
                break;
            }
        }
        if i + 1 < argv.len() && argv[i] == "list" {
            let list = argv.remove(i);
            argv.push(list);
        }
    }
    argv
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(flags_after_list(std::env::args_os().collect()));
    // Wippy's Go-runtime flags: a project's scripts pass them; they load, and say they do nothing
    for (given, flag, what) in [
        (cli.memory_limit.is_some(), "--memory-limit", "Go's memory limit; a Lua host's max_process_memory and the mailbox limits bound memory here"),
        (cli.profiler, "--profiler", "Go's pprof server; use perf or the Prometheus endpoint here"),
        (cli.event_streams, "--event-streams", "log streaming to Wippy's event bus"),
    ] {
        if given && !cli.silent {
            eprintln!("warning: {flag} is {what}: it has no effect in this runtime");
        }
    }
    let code = match &cli.command {
        Cmd::Run { exec, host, watch, args, cluster, node } => {
            commands::run(&cli, exec.as_deref(), host.as_deref(), *watch, args, (cluster.as_deref(), node.as_deref()))
        }
        Cmd::Test { filters, host, timeout } => commands::test(&cli, filters, host.as_deref(), timeout),
        Cmd::Init => commands::init(&cli),
        Cmd::Lint { json } => commands::lint(&cli, *json),
        Cmd::Registry { command: RegistryCmd::List { kind, ns, name, meta, format } } => {
            commands::registry_list(&cli, kind.as_deref(), ns.as_deref(), name.as_deref(), meta, *format)
        }
        Cmd::Registry { command: RegistryCmd::Show { id, format } } => commands::registry_show(&cli, id, *format),
        Cmd::Ps { host, sort, json } => commands::ps(&cli, host.as_deref(), *sort, *json),
        Cmd::Inspect { pid, json } => commands::inspect(&cli, pid, *json),
        Cmd::Top { sort, interval, once } => commands::top(&cli, *sort, *interval, *once),
        Cmd::Version { short } => {
            let v = env!("CARGO_PKG_VERSION");
            if *short {
                println!("{v}");
            } else {
                println!("wippy {v} ({}/{})", std::env::consts::OS, std::env::consts::ARCH);
            }
            0
        }
    };
    // a process that left the terminal raw (io.raw) does not leave it so for the shell
    wippy_lua::reset_terminal();
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::flags_after_list;

    fn args(s: &str) -> Vec<std::ffi::OsString> {
        s.split(' ').map(Into::into).collect()
    }

    #[test]
    fn flags_after_run_list_are_the_runs() {
        assert_eq!(flags_after_list(args("wippy run list -d x")), args("wippy run -d x list"));
        assert_eq!(flags_after_list(args("wippy -v run --set a=b list -d x")), args("wippy -v run --set a=b -d x list"));
        // a command's own arguments stay its own
        assert_eq!(flags_after_list(args("wippy run hello -d x")), args("wippy run hello -d x"));
        assert_eq!(flags_after_list(args("wippy run -d x list")), args("wippy run -d x list"));
        assert_eq!(flags_after_list(args("wippy run -x app:list list -d y")), args("wippy run -x app:list list -d y"));
    }
}
