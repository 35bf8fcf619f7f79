//! The command line: parsing and dispatch only; the work is in the modules
//! each subcommand names. Every setting of `run` is declared once, by the
//! stage it belongs to (see [`crate::settings`]).

use crate::commands;
use crate::detect::{Limits, ScanSettings};
use crate::diag;
use crate::duration;
use crate::pipeline::{self, Reloader};
use crate::setting::Flags;
use crate::settings::RunFlags;
use crate::sink;
use crate::source::SourceKind;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// Exit codes: 0 normal shutdown (SIGINT/SIGTERM), 2 bad usage or
/// configuration, 1 any other fatal error.
pub const EXIT_OK: i32 = 0;
pub const EXIT_FATAL: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "tcpwatch",
    version,
    about = "Reports new TCP connections, detects port scans and blocks scanners",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunFlags,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Watch the host (the default when no subcommand is given)
    Run(Box<RunFlags>),
    /// Print the current connections once and exit
    List(ListArgs),
    /// Inspect, add or lift blocks: through the running agent, or without one in the firewall objects and the state file
    Blocks(BlocksArgs),
    /// Ask the running agent: its source's health, the last hour's scans and blocks, top scanners and ports, blocks in force
    Status(StatusArgs),
    /// Offline: run the detectors over pcap/pcapng captures or saved
    /// /proc/net/tcp{,6} snapshots and print what the agent would have
    Replay(Box<ReplayArgs>),
}

#[derive(Args, Debug)]
#[command(after_help = "\
Each file is recognised by its content. In a capture every TCP SYN without ACK
is an attempt src -> dst, stamped with the packet's time (the destination is
taken as the local side). Snapshots are polls one --interval apart, in the
order given; PATH and PATH6 given one after the other are one poll. The first
poll's connections are reported. Bad input: one line naming the file, exit 2.")]
struct ReplayArgs {
    /// Captures and snapshots, replayed in this order
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    sink: Flags<sink::Settings>,
    #[command(flatten)]
    scan: Flags<ScanSettings>,
    /// Time between two snapshots
    #[arg(short, long, value_name = "DURATION", value_parser = duration::parse_positive, default_value = "10s")]
    interval: Duration,
    #[command(flatten)]
    limits: Flags<Limits>,
}

/// Where `status` and `blocks` find the running agent.
#[derive(Args, Debug)]
struct ControlArgs {
    /// The running agent's control socket (its --control)
    #[arg(long, value_name = "PATH", default_value = crate::control::DEFAULT_SOCKET, global = true)]
    control: PathBuf,
}

#[derive(Args, Debug)]
struct BlocksArgs {
    #[command(subcommand)]
    action: Option<BlocksAction>,
    #[command(flatten)]
    control: ControlArgs,
    /// Without a running agent: the state file to keep in step (its --state)
    #[arg(long, value_name = "PATH", default_value = crate::state::DEFAULT_STATE, global = true)]
    state: PathBuf,
}

#[derive(Subcommand, Debug)]
enum BlocksAction {
    /// One line per block: time left, backend, packets dropped, reason, origin (the default)
    List,
    /// Block an address or a prefix (never an allowlisted one)
    Add {
        #[arg(value_name = "IP|CIDR", value_parser = commands::blocks::parse_target)]
        ip: ipnet::IpNet,
        /// How long [default: the agent's --block-ttl]
        #[arg(long, value_name = "DURATION", value_parser = duration::parse_positive)]
        ttl: Option<Duration>,
    },
    /// Lift the block of an address or a prefix (succeeds if it is not blocked)
    Remove {
        #[arg(value_name = "IP|CIDR", value_parser = commands::blocks::parse_target)]
        ip: ipnet::IpNet,
    },
    /// Lift every block, keeping the table/sets for the running agent
    Flush,
}

#[derive(Args, Debug)]
struct StatusArgs {
    #[command(flatten)]
    sink: Flags<sink::Settings>,
    #[command(flatten)]
    control: ControlArgs,
}

#[derive(Args, Debug)]
struct ListArgs {
    /// Where connections come from
    #[arg(short, long, value_enum, default_value = "procfs")]
    source: SourceKind,
    #[command(flatten)]
    sink: Flags<sink::Settings>,
}

/// Parses the command line, runs the subcommand and returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return EXIT_OK;
        }
        Err(e) => {
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("bad usage");
            diag::note(first);
            return EXIT_USAGE;
        }
    };
    match cli.command.unwrap_or(Command::Run(Box::new(cli.run))) {
        Command::Run(flags) => run(*flags),
        Command::List(args) => report(commands::list::run(args.source, args.sink.resolve().format)),
        Command::Replay(args) => replay(*args),
        Command::Blocks(args) => {
            use commands::blocks::{run, Action, Places};
            let action = match args.action {
                None | Some(BlocksAction::List) => Action::List,
                Some(BlocksAction::Add { ip, ttl }) => Action::Add { target: ip, ttl },
                Some(BlocksAction::Remove { ip }) => Action::Remove(ip),
                Some(BlocksAction::Flush) => Action::Flush,
            };
            let places = Places {
                control: &args.control.control,
                state: &args.state,
            };
            report(run(action, &places))
        }
        Command::Status(args) => report(commands::status::run(
            &args.control.control,
            args.sink.resolve().format,
        )),
    }
}

fn run(flags: RunFlags) -> i32 {
    let settings = match flags.resolve() {
        Ok(settings) => settings,
        Err(e) => {
            diag::error(format_args!("{e:#}"));
            return EXIT_USAGE;
        }
    };
    // SIGHUP re-reads the file under the same flags.
    let reloader = flags
        .config
        .is_some()
        .then(|| Box::new(move || flags.resolve()) as Reloader);
    report(pipeline::run_blocking(settings, reloader))
}

fn replay(args: ReplayArgs) -> i32 {
    use commands::replay::{run, Failure, Options};
    let options = Options {
        files: args.files,
        format: args.sink.resolve().format,
        scan: args.scan.resolve(),
        interval: args.interval,
        limits: args.limits.resolve(),
    };
    match run(&options, std::io::stdout().lock()) {
        Ok(summary) => {
            for (table, n) in summary.evictions {
                diag::warn(format_args!(
                    "the {table} table was full: {n} entries evicted; \
                     lines may differ from a replay with a larger cap"
                ));
            }
            EXIT_OK
        }
        Err(Failure::Input(message)) => {
            diag::error(message);
            EXIT_USAGE
        }
        // `replay ... | head`: the reader has what it wanted.
        Err(Failure::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => EXIT_OK,
        Err(Failure::Output(e)) => {
            diag::error(format_args!("stdout: {e}"));
            EXIT_FATAL
        }
    }
}

fn report(result: anyhow::Result<()>) -> i32 {
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            diag::error(crate::text::chain(&e));
            EXIT_FATAL
        }
    }
}
