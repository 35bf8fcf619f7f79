//! The agent binary and the command line of `tcpwatch run`, shared by the
//! two test binaries (`tests/e2e` and `tests/offline` include this file).
//! The quiet defaults the tests rely on are set here and nowhere else.

/// The agent binary under test (the release build under `cargo test --release`).
pub const AGENT: &str = env!("CARGO_BIN_EXE_tcpwatch");

/// The arguments of `tcpwatch run`: each flag once, in the order it was
/// first set, its value replaced when set again; `None` for a switch.
#[derive(Clone, Debug)]
pub struct Args {
    pub(crate) flags: Vec<(String, Option<String>)>,
}

impl Args {
    /// `run` with the quiet test defaults: procfs read every second, no
    /// blocking, no metrics server, no state file, no control socket (the
    /// default path is one for the whole host: a test that wants one names
    /// its own). It needs no privilege and changes nothing on the host.
    pub fn run() -> Args {
        let quiet = [
            ("--source", "procfs"),
            ("--interval", "1s"),
            ("--block", "none"),
            ("--metrics-addr", "off"),
            ("--state", "off"),
            ("--control", "off"),
            // The lab's hosts share one /64, as hosts of one LAN do; with
            // the default (64) two of them scanning would be one source.
            // Tests of prefixes set 64 themselves.
            ("--ipv6-prefix", "128"),
        ];
        let flags = quiet
            .iter()
            .map(|(flag, value)| (flag.to_string(), Some(value.to_string())))
            .collect();
        Args { flags }
    }

    /// Sets `flag` to `value` (`--config`, `--scan-ports`, ...), replacing
    /// the value it had.
    pub fn set(mut self, flag: &str, value: impl ToString) -> Args {
        let value = Some(value.to_string());
        match self.flags.iter_mut().find(|(f, _)| f == flag) {
            Some(entry) => entry.1 = value,
            None => self.flags.push((flag.to_string(), value)),
        }
        self
    }

    /// Adds `flag` with `value` beside any value it has (a repeatable flag:
    /// `--allow`, `--netns`).
    pub fn add(mut self, flag: &str, value: impl ToString) -> Args {
        self.flags.push((flag.to_string(), Some(value.to_string())));
        self
    }

    /// Adds a flag without a value (`--dry-run`, `--report-existing`).
    pub fn switch(mut self, flag: &str) -> Args {
        self.flags.push((flag.to_string(), None));
        self
    }

    /// The command line after the program name: `run` and the flags.
    pub fn argv(&self) -> Vec<String> {
        let mut argv = vec!["run".to_string()];
        for (flag, value) in &self.flags {
            argv.push(flag.clone());
            argv.extend(value.clone());
        }
        argv
    }
}
