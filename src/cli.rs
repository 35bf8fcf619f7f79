//! The command line (SPEC §2). Parsing and dispatch only; the work is in the
//! modules each subcommand names.

use crate::config::{self, BlockKind, FileConfig, Listen, RunConfig, SourceKind, StatePath};
use crate::duration;
use crate::sink::Format;
use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use std::path::PathBuf;
use std::time::Duration;

/// Exit codes of SPEC §2.
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
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Watch the host (the default when no subcommand is given)
    Run(RunArgs),
    /// Print the current connections once and exit
    List(ListArgs),
    /// Inspect or lift active blocks (in the nft table or the ipsets that exist)
    Blocks(BlocksArgs),
    /// Offline: run the detectors over pcap/pcapng captures or saved
    /// /proc/net/tcp{,6} snapshots and print what the agent would have
    Replay(ReplayArgs),
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
    /// Format of the events on stdout
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Alert when one remote IP touches MORE than N distinct local ports
    #[arg(long, value_name = "N", default_value_t = 3)]
    scan_ports: usize,
    /// Sliding window of the scan detector
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_positive, default_value = "60s")]
    scan_window: Duration,
    /// Time between two snapshots
    #[arg(short, long, value_name = "DURATION", value_parser = duration::parse_positive, default_value = "10s")]
    interval: Duration,
    /// Connections remembered at most
    #[arg(long, value_name = "N", value_parser = config::parse_capacity, default_value = "262144")]
    max_connections: usize,
    /// (remote, local) address pairs the scan detector tracks at most
    #[arg(long, value_name = "N", value_parser = config::parse_capacity, default_value = "65536")]
    max_scan_sources: usize,
}

#[derive(Args, Debug)]
struct BlocksArgs {
    #[command(subcommand)]
    action: Option<BlocksAction>,
}

#[derive(Subcommand, Debug)]
enum BlocksAction {
    /// One line per blocked address with the time it has left (the default)
    List,
    /// Lift the block of one address (succeeds if it is not blocked)
    Remove {
        #[arg(value_name = "IP", value_parser = crate::block::admin::parse_ip)]
        ip: std::net::IpAddr,
    },
    /// Lift every block, keeping the table/sets for the running agent
    Flush,
}

#[derive(Args, Debug, Default, Clone)]
struct RunArgs {
    /// Where connections come from
    #[arg(short, long, value_enum)]
    source: Option<SourceKind>,
    /// Poll period of the procfs/netlink sources (e.g. 500ms, 10s)
    #[arg(short, long, value_name = "DURATION", value_parser = duration::parse_positive)]
    interval: Option<Duration>,
    /// pcap/xdp: interface to watch (repeatable; default every up, non-loopback interface)
    #[arg(long = "interface", value_name = "IFACE")]
    interfaces: Vec<String>,
    /// Alert when one remote IP touches MORE than N distinct local ports [default: 3]
    #[arg(long, value_name = "N")]
    scan_ports: Option<usize>,
    /// Sliding window of the scan detector [default: 60s]
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_positive)]
    scan_window: Option<Duration>,
    /// How scanners are blocked [default: nftables]
    #[arg(long, value_enum)]
    block: Option<BlockKind>,
    /// How long a block lasts [default: 1h]
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_positive)]
    block_ttl: Option<Duration>,
    /// New blocks in any sliding minute at most, or 'off'; scanners over the cap are reported, not blocked [default: 60]
    #[arg(long, value_name = "N|off", allow_negative_numbers = true)]
    max_blocks_per_minute: Option<config::Rate>,
    /// --block xdp: entries per address family in the kernel blocklist; when full, the least recently used entry is evicted [default: 131072]
    #[arg(long, value_name = "N", value_parser = config::parse_map_size)]
    xdp_map_size: Option<u32>,
    /// Never block this IP or CIDR (repeatable); loopback, the host's own addresses and its gateways are always allowed
    #[arg(long, value_name = "IP|CIDR", value_parser = config::parse_allow)]
    allow: Vec<IpNet>,
    /// Decide and report blocks, change nothing
    #[arg(long)]
    dry_run: bool,
    /// Serve Prometheus metrics here, or 'off' [default: 127.0.0.1:9472]
    #[arg(long, value_name = "ADDR:PORT|off")]
    metrics_addr: Option<Listen>,
    /// Format of the events on stdout [default: text]
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Persistent state file, or 'off' [default: /var/lib/tcpwatch/state]
    #[arg(long, value_name = "PATH|off")]
    state: Option<StatePath>,
    /// Also report the connections open at start-up
    #[arg(long)]
    report_existing: bool,
    /// TOML file with the same keys as the long flags (flags win)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Connections remembered at most; past that the least recently seen are forgotten [default: 262144]
    #[arg(long, value_name = "N", value_parser = config::parse_capacity)]
    max_connections: Option<usize>,
    /// (remote, local) address pairs the scan detector tracks at most; past that the least recently active are evicted [default: 65536]
    #[arg(long, value_name = "N", value_parser = config::parse_capacity)]
    max_scan_sources: Option<usize>,
}

#[derive(Args, Debug)]
struct ListArgs {
    /// Where connections come from
    #[arg(short, long, value_enum, default_value = "procfs")]
    source: SourceKind,
    /// Output format
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

impl RunArgs {
    /// Flags over the config file over the defaults.
    fn resolve(self) -> anyhow::Result<RunConfig> {
        let mut config = RunConfig::default();
        if let Some(path) = &self.config {
            FileConfig::load(path)?
                .apply(&mut config)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
        let RunArgs {
            source,
            interval,
            interfaces,
            scan_ports,
            scan_window,
            block,
            block_ttl,
            max_blocks_per_minute,
            xdp_map_size,
            allow,
            dry_run,
            metrics_addr,
            format,
            state,
            report_existing,
            config: _,
            max_connections,
            max_scan_sources,
        } = self;
        set(&mut config.source, source);
        set(&mut config.interval, interval);
        set(&mut config.scan_ports, scan_ports);
        set(&mut config.scan_window, scan_window);
        set(&mut config.block, block);
        set(&mut config.block_ttl, block_ttl);
        set(&mut config.max_blocks_per_minute, max_blocks_per_minute);
        set(&mut config.xdp_map_size, xdp_map_size);
        set(&mut config.metrics_addr, metrics_addr);
        set(&mut config.format, format);
        set(&mut config.state, state);
        set(&mut config.limits.connections, max_connections);
        set(&mut config.limits.scan_sources, max_scan_sources);
        if !interfaces.is_empty() {
            config.interfaces = interfaces;
        }
        if !allow.is_empty() {
            config.allow = allow;
        }
        config.dry_run |= dry_run;
        config.report_existing |= report_existing;
        Ok(config)
    }
}

fn set<T>(slot: &mut T, flag: Option<T>) {
    if let Some(value) = flag {
        *slot = value;
    }
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
            eprintln!("tcpwatch: {first}");
            return EXIT_USAGE;
        }
    };
    match cli.command.unwrap_or(Command::Run(cli.run)) {
        Command::Run(args) => match args.clone().resolve() {
            Ok(config) => {
                return_big_frees_to_the_os();
                // Before any thread: capabilities are per thread.
                let config = match crate::privilege::apply(config) {
                    Ok(config) => config,
                    Err(e) => return report(Err(e)),
                };
                // SIGHUP re-reads the file under the same flags.
                let reloader = args
                    .config
                    .is_some()
                    .then(|| Box::new(move || args.clone().resolve()) as crate::pipeline::Reloader);
                report(crate::pipeline::run_blocking(config, reloader))
            }
            Err(e) => {
                eprintln!("tcpwatch: error: {e:#}");
                EXIT_USAGE
            }
        },
        Command::List(args) => report(crate::list::run(args.source, args.format)),
        Command::Replay(args) => replay(args),
        Command::Blocks(args) => {
            use crate::block::admin::{run, Action};
            report(run(match args.action {
                None | Some(BlocksAction::List) => Action::List,
                Some(BlocksAction::Remove { ip }) => Action::Remove(ip),
                Some(BlocksAction::Flush) => Action::Flush,
            }))
        }
    }
}

fn replay(args: ReplayArgs) -> i32 {
    use crate::replay::{run, Failure, Options};
    let options = Options {
        files: args.files,
        format: args.format,
        scan_ports: args.scan_ports,
        scan_window: args.scan_window,
        interval: args.interval,
        limits: crate::detect::Limits {
            connections: args.max_connections,
            scan_sources: args.max_scan_sources,
        },
    };
    match run(&options, std::io::stdout().lock()) {
        Ok(summary) => {
            for (table, n) in summary.evictions {
                eprintln!(
                    "tcpwatch: warning: the {table} table was full: {n} entries evicted; \
                     lines may differ from a replay with a larger cap"
                );
            }
            EXIT_OK
        }
        Err(Failure::Input(message)) => {
            eprintln!("tcpwatch: error: {message}");
            EXIT_USAGE
        }
        // `replay ... | head`: the reader has what it wanted.
        Err(Failure::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => EXIT_OK,
        Err(Failure::Output(e)) => {
            eprintln!("tcpwatch: error: stdout: {e}");
            EXIT_FATAL
        }
    }
}

/// The detector's tables are rebuilt in batches under a flood (see
/// `detect::portscan::compact`). glibc raises its mmap threshold to the size
/// of each large block freed, so later tables come from the heap and their
/// freed copies stay resident. A fixed threshold keeps blocks of 1 MiB and
/// more in their own mappings, returned to the kernel when freed (measured:
/// peak RSS of the detector under a 2M-source flood 44 MB -> 38 MB).
fn return_big_frees_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn report(result: anyhow::Result<()>) -> i32 {
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            let message = format!("{e:#}").replace('\n', " ");
            eprintln!("tcpwatch: error: {message}");
            EXIT_FATAL
        }
    }
}
