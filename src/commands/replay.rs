//! `tcpwatch replay`: the detectors of a live agent run offline over saved
//! input, printing the lines the agent would have printed.
//!
//! Each file is recognised by its content, not its name:
//!
//! - a **pcap or pcapng capture** (its magic number), read as the `pcap`
//!   source reads the wire ([`crate::source::pcap::frame`]): a TCP SYN
//!   without ACK is a connection attempt; a FIN, NULL or Xmas segment, the
//!   first fragment of a TCP packet whose flags never come, and a UDP probe
//!   answered by ICMP port unreachable in the capture are probes that count
//!   towards a scan without a line; a SYN in fragments is put back together
//!   and prints its line. Offline there is no "this host", so the
//!   destination of every probe is taken as the local side: each SYN is an
//!   inbound attempt `src -> dst`, and counts towards a scan by `src` of
//!   `dst`. A capture taken on a host that also connects out therefore shows
//!   its own outbound connections as attempts on their servers. An attempt is
//!   stamped with its packet's time (printed in local time); windows run on
//!   the time since the first packet of the replay, which never goes
//!   backwards (a packet older than the one before it counts as simultaneous
//!   with it). Link types: Ethernet, raw IP, Linux cooked v1 and v2,
//!   BSD/macOS loopback (`NULL`, `LOOP`), Linux NFLOG; in pcapng, any
//!   number of interfaces, each its own link type.
//! - a **`/proc/net/tcp` or `/proc/net/tcp6` snapshot** (a saved copy, header
//!   line `sl  local_address ...`): each file is one poll, the polls one
//!   `--interval` apart in the order given; a file `PATH6` given right after
//!   `PATH` (`s1.tcp` then `s1.tcp6`, or `t0/tcp` then `t0/tcp6`) is the
//!   same poll, as the live agent reads both tables together. Unlike a live
//!   agent, the first poll's connections are reported: they are what the
//!   files hold. A poll's lines carry its first file's modification time.
//!
//! Captures and snapshots are two timelines that cannot be lined up, so
//! each kind has its own detector; files are still replayed in the order
//! given. The output depends only on the files (and, for snapshot times,
//! their modification times): the same input gives the same bytes.
//!
//! Every input problem is found before anything is printed, as one line
//! naming the file (and line, or how many packets were read before it); the
//! exit code is then 2. A capture that ends in a torn record (the capture
//! was killed while writing) is replayed up to the tear, with a warning.

use super::capture::{Frames, Next};
use crate::clock::Stamp;
use crate::detect::{Detector, Limits, ScanSettings};
use crate::diag;
use crate::event::{Observation, Socket};
use crate::sink::Format;
use crate::source::pcap::{parse, probes::Probes};
use crate::source::procfs::parse_table;
use chrono::{DateTime, Local, Utc};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// What `tcpwatch replay` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub files: Vec<PathBuf>,
    pub format: Format,
    pub scan: ScanSettings,
    /// Time between two snapshot polls.
    pub interval: Duration,
    pub limits: Limits,
}

/// Why a replay stopped.
#[derive(Debug)]
pub enum Failure {
    /// A file could not be replayed; the message names it (exit 2).
    Input(String),
    /// stdout could not be written.
    Output(std::io::Error),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Output(e)
    }
}

/// What a replay went through, for the warnings it may owe.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub lines: u64,
    /// Entries evicted from full detector tables, by table.
    pub evictions: Vec<(&'static str, u64)>,
}

pub const NEITHER: &str = "not a pcap file or a /proc/net/tcp snapshot";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Capture,
    Snapshot,
}

/// pcap (microsecond and nanosecond, either byte order) and pcapng.
const CAPTURE_MAGICS: [[u8; 4]; 5] = [
    [0xd4, 0xc3, 0xb2, 0xa1],
    [0xa1, 0xb2, 0xc3, 0xd4],
    [0x4d, 0x3c, 0xb2, 0xa1],
    [0xa1, 0xb2, 0x3c, 0x4d],
    [0x0a, 0x0d, 0x0d, 0x0a],
];

/// How much of a file is read to recognise a snapshot's header line.
const SNIFF: usize = 512;

fn named(path: &Path, reason: impl std::fmt::Display) -> Failure {
    Failure::Input(format!("{}: {reason}", path.display()))
}

/// What a file holds, from its first bytes.
fn kind_of(path: &Path) -> Result<Kind, Failure> {
    let mut head = Vec::with_capacity(SNIFF);
    std::fs::File::open(path)
        .and_then(|f| f.take(SNIFF as u64).read_to_end(&mut head))
        .map_err(|e| named(path, io_reason(&e)))?;
    if head.len() >= 4 && CAPTURE_MAGICS.iter().any(|m| head[..4] == *m) {
        return Ok(Kind::Capture);
    }
    if is_snapshot_header(&head) {
        return Ok(Kind::Snapshot);
    }
    Err(named(path, NEITHER))
}

/// The kernel's header line starts `  sl  local_address rem_address`.
fn is_snapshot_header(head: &[u8]) -> bool {
    let first = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(first) = std::str::from_utf8(first) else {
        return false;
    };
    let mut words = first.split_ascii_whitespace();
    words.next() == Some("sl") && words.next() == Some("local_address")
}

/// `No such file or directory`, without Rust's ` (os error 2)` suffix.
fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// The files in replay order, grouped: one capture, or the one or two
/// snapshot files of one poll.
enum Step {
    Capture(PathBuf),
    Poll(Vec<PathBuf>),
}

/// Recognises every file and checks every snapshot, so that bad input
/// stops the replay before anything is printed.
fn plan(files: &[PathBuf]) -> Result<Vec<Step>, Failure> {
    let mut steps = Vec::new();
    let mut pending: Option<PathBuf> = None;
    for path in files {
        let kind = kind_of(path)?;
        if kind == Kind::Snapshot {
            read_snapshot(path)?;
        } else {
            check_capture(path)?;
        }
        if let Some(first) = pending.take() {
            if kind == Kind::Snapshot && is_v6_twin(&first, path) {
                steps.push(Step::Poll(vec![first, path.clone()]));
                continue;
            }
            steps.push(Step::Poll(vec![first]));
        }
        match kind {
            Kind::Snapshot => pending = Some(path.clone()),
            Kind::Capture => steps.push(Step::Capture(path.clone())),
        }
    }
    steps.extend(pending.map(|p| Step::Poll(vec![p])));
    Ok(steps)
}

/// `second` is `first` with a `6` appended: `tcp` and `tcp6`.
fn is_v6_twin(first: &Path, second: &Path) -> bool {
    let mut twin = first.as_os_str().to_owned();
    twin.push("6");
    twin == second.as_os_str()
}

fn read_snapshot(path: &Path) -> Result<Vec<Socket>, Failure> {
    let text = std::fs::read(path).map_err(|e| named(path, io_reason(&e)))?;
    let text = String::from_utf8(text).map_err(|_| named(path, NEITHER))?;
    parse_table(&text)
        .map_err(|e| Failure::Input(format!("{}:{}: {}", path.display(), e.line, e.reason)))
}

/// Reads a capture through once, so that a part it cannot read stops the
/// replay before anything is printed.
fn check_capture(path: &Path) -> Result<(), Failure> {
    let mut frames = Frames::open(path).map_err(|e| named(path, e))?;
    loop {
        match frames.read().map_err(|e| named(path, e))? {
            Next::Frame(_) => {}
            Next::Torn | Next::End => return Ok(()),
        }
    }
}

/// Replays `options.files`, writing the events to `out`.
pub fn run(options: &Options, out: impl Write) -> Result<Summary, Failure> {
    let steps = plan(&options.files)?;
    let mut replay = Replay {
        options,
        out: std::io::BufWriter::new(out),
        lines: 0,
        captures: None,
        polls: None,
    };
    for step in &steps {
        match step {
            Step::Capture(path) => replay.capture(path)?,
            Step::Poll(paths) => replay.poll(paths)?,
        }
    }
    replay.out.flush()?;
    let mut evictions: Vec<(&'static str, u64)> = Vec::new();
    for detector in [&mut replay.captures, &mut replay.polls]
        .into_iter()
        .flatten()
    {
        let detector = match detector {
            Timeline::Packets { detector, .. } | Timeline::Polls { detector, .. } => detector,
        };
        for (table, n) in detector.take_evictions() {
            match evictions.iter_mut().find(|(t, _)| *t == table) {
                Some(entry) => entry.1 += n,
                None => evictions.push((table, n)),
            }
        }
    }
    Ok(Summary {
        lines: replay.lines,
        evictions,
    })
}

/// One kind of input's detector and clock.
enum Timeline {
    Packets {
        detector: Detector,
        /// Time of the first packet, since the Unix epoch.
        origin: Option<Duration>,
        /// The last packet's place on the timeline.
        mono: Duration,
        /// First fragments waiting for their flags.
        probes: Probes,
    },
    Polls {
        detector: Detector,
        done: u32,
    },
}

struct Replay<'a, W: Write> {
    options: &'a Options,
    out: std::io::BufWriter<W>,
    lines: u64,
    captures: Option<Timeline>,
    polls: Option<Timeline>,
}

impl<W: Write> Replay<'_, W> {
    fn detector(&self, source: &'static str) -> Detector {
        let o = self.options;
        // Snapshots: what the files hold is what is to be reported.
        Detector::new(source, true, &o.scan, &o.limits)
    }

    fn capture(&mut self, path: &Path) -> Result<(), Failure> {
        let mut frames = Frames::open(path).map_err(|e| named(path, e))?;
        if self.captures.is_none() {
            self.captures = Some(Timeline::Packets {
                detector: self.detector("pcap"),
                origin: None,
                mono: Duration::ZERO,
                probes: Probes::new(),
            });
        }
        let Some(Timeline::Packets {
            detector,
            origin,
            mono,
            probes,
        }) = &mut self.captures
        else {
            unreachable!("set just above");
        };
        // Offline, every destination is this host.
        let local = |_| true;
        let mut observations = Vec::new();
        loop {
            let frame = match frames.read().map_err(|e| named(path, e))? {
                Next::Frame(frame) => frame,
                Next::Torn => {
                    diag::warn(format_args!(
                        "{}: the last record is cut short (after {} packets); replayed the packets before it",
                        path.display(),
                        frames.packets()
                    ));
                    break;
                }
                Next::End => break,
            };
            let Some(seen) = parse(frame.link, &frame.data) else {
                continue;
            };
            let first = *origin.get_or_insert(frame.time);
            *mono = (*mono).max(frame.time.saturating_sub(first));
            let at = Stamp {
                wall: local_time(frame.time),
                mono: *mono,
            };
            probes.frame(at, seen, &local, &mut |o| observations.push(o));
            let (format, out, lines) = (self.options.format, &mut self.out, &mut self.lines);
            Self::detect(detector, &mut observations, format, out, lines)?;
        }
        // A first fragment still waiting at the end of the file has waited
        // long enough: there is nothing more to come in this file.
        probes.flush(&local, &mut |o| observations.push(o));
        let (format, out, lines) = (self.options.format, &mut self.out, &mut self.lines);
        Self::detect(detector, &mut observations, format, out, lines)
    }

    /// Runs one observation through the detector and prints its events.
    /// Runs the detector on each observation, taken out of `observations`,
    /// and writes a line per event.
    fn detect(
        detector: &mut Detector,
        observations: &mut Vec<Observation>,
        format: Format,
        out: &mut std::io::BufWriter<W>,
        lines: &mut u64,
    ) -> Result<(), Failure> {
        for observation in observations.drain(..) {
            for event in detector.process(&observation) {
                writeln!(out, "{}", format.line(&event))?;
                *lines += 1;
            }
        }
        Ok(())
    }

    fn poll(&mut self, paths: &[PathBuf]) -> Result<(), Failure> {
        let mut sockets = Vec::new();
        for path in paths {
            sockets.extend(read_snapshot(path)?);
        }
        let modified = std::fs::metadata(&paths[0])
            .and_then(|m| m.modified())
            .map_err(|e| named(&paths[0], io_reason(&e)))?;
        if self.polls.is_none() {
            self.polls = Some(Timeline::Polls {
                detector: self.detector("procfs"),
                done: 0,
            });
        }
        let Some(Timeline::Polls { detector, done }) = &mut self.polls else {
            unreachable!("set just above");
        };
        let since_epoch = modified
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let at = Stamp {
            wall: local_time(since_epoch),
            mono: self.options.interval.saturating_mul(*done),
        };
        *done += 1;
        for event in detector.process(&Observation::Snapshot { at, sockets }) {
            writeln!(self.out, "{}", self.options.format.line(&event))?;
            self.lines += 1;
        }
        Ok(())
    }
}

fn local_time(since_epoch: Duration) -> DateTime<Local> {
    let secs = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
    // Out of chrono's range only for a corrupt timestamp; the epoch then.
    DateTime::<Utc>::from_timestamp(secs, since_epoch.subsec_nanos())
        .unwrap_or_default()
        .with_timezone(&Local)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ethernet + IPv4 (20 bytes) + TCP (20 bytes) with `flags`.
    fn frame(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let mut ip = vec![0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&dport.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = flags;
        f.extend(ip);
        f.extend(tcp);
        f
    }

    const SYN: u8 = 0x02;
    const SYN_ACK: u8 = 0x12;
    const SCANNER: [u8; 4] = [192, 0, 2, 56];
    const HOST: [u8; 4] = [10, 0, 0, 5];

    /// Classic pcap, little-endian, microseconds, Ethernet.
    fn pcap(packets: &[(u32, u32, Vec<u8>)]) -> Vec<u8> {
        pcap_of(1, packets)
    }

    /// Classic pcap, little-endian, microseconds, of `linktype`.
    fn pcap_of(linktype: u32, packets: &[(u32, u32, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(0xa1b2_c3d4u32.to_le_bytes());
        out.extend(2u16.to_le_bytes());
        out.extend(4u16.to_le_bytes());
        out.extend([0u8; 8]);
        out.extend(65535u32.to_le_bytes());
        out.extend(linktype.to_le_bytes());
        for (secs, micros, data) in packets {
            out.extend(secs.to_le_bytes());
            out.extend(micros.to_le_bytes());
            out.extend((data.len() as u32).to_le_bytes());
            out.extend((data.len() as u32).to_le_bytes());
            out.extend(data);
        }
        out
    }

    /// pcapng: section header, one Ethernet interface (microseconds),
    /// enhanced packet blocks.
    fn pcapng(packets: &[(u32, u32, Vec<u8>)]) -> Vec<u8> {
        let packets: Vec<_> = packets
            .iter()
            .map(|(s, us, data)| (0, *s, *us, data.clone()))
            .collect();
        pcapng_of(&[(1, None)], &packets)
    }

    /// pcapng with `interfaces` (link type, `if_tsresol` option: `Some(9)`
    /// for nanoseconds) and packets (interface, seconds, microseconds,
    /// bytes) in enhanced packet blocks.
    fn pcapng_of(
        interfaces: &[(u16, Option<u8>)],
        packets: &[(u32, u32, u32, Vec<u8>)],
    ) -> Vec<u8> {
        fn block(kind: u32, body: &[u8]) -> Vec<u8> {
            let len = (12 + body.len()) as u32;
            let mut b = kind.to_le_bytes().to_vec();
            b.extend(len.to_le_bytes());
            b.extend(body);
            b.extend(len.to_le_bytes());
            b
        }
        let mut shb = 0x1a2b_3c4du32.to_le_bytes().to_vec();
        shb.extend(1u16.to_le_bytes());
        shb.extend(0u16.to_le_bytes());
        shb.extend((-1i64).to_le_bytes());
        let mut out = block(0x0a0d_0d0a, &shb);
        for (linktype, tsresol) in interfaces {
            let mut idb = linktype.to_le_bytes().to_vec();
            idb.extend(0u16.to_le_bytes());
            idb.extend(65535u32.to_le_bytes());
            if let Some(resol) = tsresol {
                idb.extend(9u16.to_le_bytes()); // if_tsresol
                idb.extend(1u16.to_le_bytes());
                idb.extend([*resol, 0, 0, 0]);
                idb.extend([0u8; 4]); // opt_endofopt
            }
            out.extend(block(1, &idb));
        }
        for (interface, secs, micros, data) in packets {
            let per_sec: u64 = match interfaces[*interface as usize].1 {
                Some(9) => 1_000_000_000,
                _ => 1_000_000,
            };
            let ts = u64::from(*secs) * per_sec + u64::from(*micros) * (per_sec / 1_000_000);
            let mut epb = interface.to_le_bytes().to_vec();
            epb.extend(((ts >> 32) as u32).to_le_bytes());
            epb.extend((ts as u32).to_le_bytes());
            epb.extend((data.len() as u32).to_le_bytes());
            epb.extend((data.len() as u32).to_le_bytes());
            epb.extend(data);
            while !epb.len().is_multiple_of(4) {
                epb.push(0);
            }
            out.extend(block(6, &epb));
        }
        out
    }

    /// A scan of ports 80..=85 with a retransmission, a SYN-ACK and an
    /// out-of-order timestamp mixed in.
    fn scan_packets() -> Vec<(u32, u32, Vec<u8>)> {
        let t = 1_619_623_685;
        vec![
            (t, 0, frame(SCANNER, 40000, HOST, 80, SYN)),
            (t, 10, frame(HOST, 80, SCANNER, 40000, SYN_ACK)),
            (t, 20, frame(SCANNER, 40000, HOST, 81, SYN)),
            (t + 1, 0, frame(SCANNER, 40000, HOST, 80, SYN)),
            (t - 5, 0, frame(SCANNER, 40000, HOST, 82, SYN)),
            (t + 2, 0, frame(SCANNER, 40000, HOST, 83, SYN)),
            (t + 2, 1, frame(SCANNER, 40000, HOST, 84, SYN)),
        ]
    }

    fn options(files: Vec<PathBuf>) -> Options {
        Options {
            files,
            format: Format::Text,
            scan: ScanSettings::default(),
            interval: Duration::from_secs(10),
            limits: Limits::default(),
        }
    }

    fn replay(options: &Options) -> Result<Vec<String>, Failure> {
        let mut out = Vec::new();
        run(options, &mut out)?;
        Ok(String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| l.split_once(": ").unwrap().1.to_string())
            .collect())
    }

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    const SCAN_LINES: [&str; 6] = [
        "New connection: 192.0.2.56:40000 -> 10.0.0.5:80",
        "New connection: 192.0.2.56:40000 -> 10.0.0.5:81",
        "New connection: 192.0.2.56:40000 -> 10.0.0.5:82",
        "New connection: 192.0.2.56:40000 -> 10.0.0.5:83",
        "Port scan detected: 192.0.2.56 -> 10.0.0.5 on ports 80,81,82,83",
        "New connection: 192.0.2.56:40000 -> 10.0.0.5:84",
    ];

    #[test]
    fn pcap_and_pcapng_replay_the_same_lines() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [
            ("scan.pcap", pcap(&scan_packets())),
            ("scan.pcapng", pcapng(&scan_packets())),
        ] {
            let path = write(&dir, name, &bytes);
            assert_eq!(replay(&options(vec![path])).unwrap(), SCAN_LINES, "{name}");
        }
    }

    #[test]
    fn lines_carry_the_packet_time_in_local_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "scan.pcap", &pcap(&scan_packets()));
        let mut o = options(vec![path]);
        o.format = Format::Json;
        let mut out = Vec::new();
        run(&o, &mut out).unwrap();
        let first: serde_json::Value =
            serde_json::from_str(String::from_utf8(out).unwrap().lines().next().unwrap()).unwrap();
        let time = DateTime::parse_from_rfc3339(first["time"].as_str().unwrap()).unwrap();
        assert_eq!(time.timestamp(), 1_619_623_685);
        assert_eq!(first["source"], "pcap");
    }

    #[test]
    fn windows_run_on_packet_time() {
        // Four ports, but the fourth 61 s after the first: no scan.
        let t = 1_619_623_685;
        let packets: Vec<_> = [(0, 80), (20, 81), (40, 82), (61, 83)]
            .into_iter()
            .map(|(dt, port)| (t + dt, 0, frame(SCANNER, 1, HOST, port, SYN)))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "slow.pcap", &pcap(&packets));
        let lines = replay(&options(vec![path.clone()])).unwrap();
        assert_eq!(lines.len(), 4, "{lines:?}");
        let mut wide = options(vec![path]);
        wide.scan.scan_window = Duration::from_secs(62);
        assert_eq!(replay(&wide).unwrap().len(), 5);
    }

    #[test]
    fn torn_last_record_replays_what_came_before() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = pcap(&scan_packets());
        bytes.truncate(bytes.len() - 10);
        let path = write(&dir, "torn.pcap", &bytes);
        assert_eq!(replay(&options(vec![path])).unwrap(), SCAN_LINES[..5]);
    }

    /// The IP packets of [`scan_packets`], without their Ethernet header.
    fn scan_ip_packets() -> Vec<(u32, u32, Vec<u8>)> {
        let packets = scan_packets().into_iter();
        packets
            .map(|(s, us, f)| (s, us, f[14..].to_vec()))
            .collect()
    }

    #[test]
    fn every_link_type_replays_the_same_lines() {
        use crate::source::pcap::craft;
        let dir = tempfile::tempdir().unwrap();
        let wrap = |how: fn(&[u8]) -> Vec<u8>| -> Vec<(u32, u32, Vec<u8>)> {
            let packets = scan_ip_packets().into_iter();
            packets.map(|(s, us, p)| (s, us, how(&p))).collect()
        };
        let nflog_le: fn(&[u8]) -> Vec<u8> = |p| craft::nflog(p, false);
        let raw: fn(&[u8]) -> Vec<u8> = |p| p.to_vec();
        for (name, linktype, how) in [
            ("raw", 101, raw),
            ("raw-ipv4", 228, raw),
            ("sll", 113, craft::sll as fn(&[u8]) -> Vec<u8>),
            ("sll2", 276, craft::sll2),
            ("null", 0, craft::loopback),
            ("loop", 108, craft::loopback),
            ("nflog", 239, nflog_le),
        ] {
            let path = write(&dir, name, &pcap_of(linktype, &wrap(how)));
            assert_eq!(replay(&options(vec![path])).unwrap(), SCAN_LINES, "{name}");
        }
        // An NFLOG capture written on a big-endian host.
        let mut bytes = pcap_of(239, &wrap(|p| craft::nflog(p, true)));
        bytes[..4].copy_from_slice(&0xa1b2_c3d4u32.to_be_bytes());
        let be = |b: &mut [u8], at: usize, n: usize| b[at..at + n].reverse();
        for (at, n) in [(4, 2), (6, 2), (8, 4), (12, 4), (16, 4), (20, 4)] {
            be(&mut bytes, at, n);
        }
        let mut at = 24;
        while at < bytes.len() {
            for field in 0..4 {
                be(&mut bytes, at + field * 4, 4);
            }
            let len = u32::from_be_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
            at += 16 + len;
        }
        let path = write(&dir, "nflog-be", &bytes);
        assert_eq!(
            replay(&options(vec![path])).unwrap(),
            SCAN_LINES,
            "nflog be"
        );
    }

    #[test]
    fn a_pcapng_of_interfaces_of_several_link_types_replays_them_all() {
        use crate::source::pcap::craft;
        // Ethernet (µs), Linux cooked (ns), BSD loopback, NFLOG: each
        // packet of the scan on the next interface in turn.
        let interfaces = [(1, None), (113, Some(9)), (0, None), (239, None)];
        let packets: Vec<_> = scan_ip_packets()
            .into_iter()
            .enumerate()
            .map(|(i, (s, us, p))| {
                let interface = (i % interfaces.len()) as u32;
                let frame = match interface {
                    0 => craft::ethernet_ip(&p),
                    1 => craft::sll(&p),
                    2 => craft::loopback(&p),
                    _ => craft::nflog(&p, false),
                };
                (interface, s, us, frame)
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "merged.pcapng", &pcapng_of(&interfaces, &packets));
        assert_eq!(replay(&options(vec![path.clone()])).unwrap(), SCAN_LINES);
        // The times of the nanosecond interface read right too: port 83's
        // SYN, on it, 2 s after the first packet.
        let mut o = options(vec![path]);
        o.format = Format::Json;
        let mut out = Vec::new();
        run(&o, &mut out).unwrap();
        let line: serde_json::Value =
            serde_json::from_str(String::from_utf8(out).unwrap().lines().nth(3).unwrap()).unwrap();
        assert_eq!(line["dst"], "10.0.0.5:83");
        let time = DateTime::parse_from_rfc3339(line["time"].as_str().unwrap()).unwrap();
        assert_eq!(time.timestamp(), 1_619_623_687);
    }

    #[test]
    fn an_unreadable_part_is_an_error_saying_what_was_read() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(&dir, "good.pcap", &pcap(&scan_packets()));
        // The second interface is of a link type replay does not read.
        let packets: Vec<_> = scan_packets()
            .into_iter()
            .enumerate()
            .map(|(i, (s, us, f))| (u32::from(i >= 2), s, us, f))
            .collect();
        let other = write(
            &dir,
            "usb.pcapng",
            &pcapng_of(&[(1, None), (189, None)], &packets),
        );
        // A block whose two lengths disagree, in the middle of the file.
        let mut bytes = pcapng(&scan_packets());
        // Section header 28 bytes, interface 20, each packet block 88 (a
        // 54-byte frame padded to 56): the trailer of the second packet.
        let corrupt_at = 28 + 20 + 2 * 88 - 4;
        bytes[corrupt_at] ^= 0x40;
        let corrupt = write(&dir, "corrupt.pcapng", &bytes);
        for (bad, want) in [
            (
                other.clone(),
                format!(
                    "{}: interface 1: link type USB_LINUX (189) is not one replay reads (after 2 packets)",
                    other.display()
                ),
            ),
            (corrupt.clone(), format!("{}: ", corrupt.display())),
        ] {
            let mut out = Vec::new();
            match run(&options(vec![good.clone(), bad]), &mut out) {
                Err(Failure::Input(message)) => {
                    assert!(message.starts_with(&want), "{message}");
                    assert!(message.contains("(after "), "{message}");
                }
                other => panic!("{other:?}"),
            }
            assert!(out.is_empty(), "printed before the error");
        }
    }

    #[test]
    fn stealth_probes_fragments_and_udp_answers_count_as_live() {
        use crate::source::pcap::craft::{self, FIN, PSH, URG};
        let t = 1_619_623_685;
        let ip = |src, dst, segment: &[u8]| craft::ethernet_ip(&craft::ipv4(src, dst, segment));
        let mut packets = Vec::new();
        for (i, port) in [21u16, 22, 23, 25].into_iter().enumerate() {
            packets.push((
                t,
                i as u32,
                ip(SCANNER, HOST, &craft::tcp(40000, port, FIN, 0)),
            ));
        }
        // An Xmas scan of another host, fragmented SYNs (nmap -f) to a third.
        let other = [10, 0, 0, 6];
        let third = [10, 0, 0, 8];
        for (i, port) in [80u16, 81, 82, 83].into_iter().enumerate() {
            let t = t + 1;
            packets.push((
                t,
                i as u32,
                ip(SCANNER, other, &craft::tcp(1, port, FIN | PSH | URG, 0)),
            ));
            let segment = craft::tcp(40001, port, SYN, 1000 + u32::from(port));
            for piece in craft::ipv4_fragments(SCANNER, third, port, &segment, 8) {
                packets.push((t, 10 + i as u32, craft::ethernet_ip(&piece)));
            }
        }
        // UDP probes of a fourth host, seen by its port unreachables.
        let fourth = [10, 0, 0, 9];
        for (i, port) in [53u16, 123, 161, 500].into_iter().enumerate() {
            let probe =
                craft::ipv4_full(SCANNER, fourth, 17, 0, 1, 0, &craft::udp(5000, port, b""));
            let answer = craft::icmp4_unreachable(fourth, SCANNER, &probe);
            packets.push((t + 2, i as u32, craft::ethernet_ip(&answer)));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "probes.pcap", &pcap(&packets));
        assert_eq!(
            replay(&options(vec![path])).unwrap(),
            [
                "Port scan detected: 192.0.2.56 -> 10.0.0.5 on ports 21,22,23,25 (FIN scan)",
                "New connection: 192.0.2.56:40001 -> 10.0.0.8:80",
                "New connection: 192.0.2.56:40001 -> 10.0.0.8:81",
                "New connection: 192.0.2.56:40001 -> 10.0.0.8:82",
                "Port scan detected: 192.0.2.56 -> 10.0.0.6 on ports 80,81,82,83 (Xmas scan)",
                "New connection: 192.0.2.56:40001 -> 10.0.0.8:83",
                "Port scan detected: 192.0.2.56 -> 10.0.0.8 on ports 80,81,82,83",
                "Port scan detected: 192.0.2.56 -> 10.0.0.9 on ports 53,123,161,500 (UDP scan)",
            ]
        );
    }

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    fn row(slot: usize, local: &str, remote: &str, state: &str) -> String {
        format!("{slot:>4}: {local} {remote} {state} 00000000:00000000 00:00000000 00000000     0        0 {} 1 0000000000000000 100 0 0 10 0\n", 1000 + slot)
    }

    #[test]
    fn snapshots_are_polls_and_path6_joins_path() {
        let dir = tempfile::tempdir().unwrap();
        // A dual-stack listener on port 80 (tcp6) makes the IPv4 client in
        // tcp inbound only if both files are one poll. 10.0.0.5 is
        // 0500000A as the kernel prints it on little-endian machines.
        let v4 = |a: [u8; 4], port: u16| format!("{:08X}:{port:04X}", u32::from_ne_bytes(a));
        let tcp0 = HEADER.to_string();
        let tcp6_0 = format!(
            "{HEADER}{}",
            row(
                0,
                "00000000000000000000000000000000:0050",
                "00000000000000000000000000000000:0000",
                "0A"
            )
        );
        let tcp1 = format!(
            "{HEADER}{}",
            row(0, &v4(HOST, 80), &v4(SCANNER, 5973), "01")
        );
        let a = write(&dir, "t0.tcp", tcp0.as_bytes());
        let a6 = write(&dir, "t0.tcp6", tcp6_0.as_bytes());
        let b = write(&dir, "t1.tcp", tcp1.as_bytes());
        let b6 = write(&dir, "t1.tcp6", tcp6_0.as_bytes());
        let got = replay(&options(vec![a, a6, b.clone(), b6.clone()])).unwrap();
        assert_eq!(got, ["New connection: 192.0.2.56:5973 -> 10.0.0.5:80"]);
        // Alone, t1.tcp has no listener: the connection reads as outbound,
        // and being in the first poll it is reported.
        assert_eq!(
            replay(&options(vec![b])).unwrap(),
            ["New connection: 10.0.0.5:80 -> 192.0.2.56:5973"]
        );
        // PATH6 first is not a twin: two polls, b6 alone has no connection.
        assert!(replay(&options(vec![b6])).unwrap().is_empty());
    }

    #[test]
    fn bad_input_is_one_line_naming_the_file_before_any_output() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(&dir, "good.pcap", &pcap(&scan_packets()));
        let text = write(&dir, "notes.txt", b"hello\n");
        let empty = write(&dir, "empty", b"");
        let bad_row = write(
            &dir,
            "bad.tcp",
            format!(
                "{HEADER}{}   1: nonsense\n",
                row(0, "0100007F:0050", "00000000:0000", "0A")
            )
            .as_bytes(),
        );
        let missing = dir.path().join("missing");
        let cases = [
            (text.clone(), format!("{}: {NEITHER}", text.display())),
            (empty.clone(), format!("{}: {NEITHER}", empty.display())),
            (
                bad_row.clone(),
                format!("{}:3: bad address 'nonsense'", bad_row.display()),
            ),
            (
                missing.clone(),
                format!("{}: No such file or directory", missing.display()),
            ),
        ];
        for (bad, want) in cases {
            let mut out = Vec::new();
            match run(&options(vec![good.clone(), bad]), &mut out) {
                Err(Failure::Input(message)) => assert_eq!(message, want),
                other => panic!("{other:?}"),
            }
            assert!(out.is_empty(), "printed before the error");
        }
    }

    #[test]
    fn the_same_input_gives_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "scan.pcap", &pcap(&scan_packets()));
        let once = || {
            let mut out = Vec::new();
            run(&options(vec![path.clone(), path.clone()]), &mut out).unwrap();
            out
        };
        assert_eq!(once(), once());
    }
}
