//! The block stage with a fake backend and a fake journal.

use super::allow::Allowlist;
use super::backend::Backend;
use super::blocker::{Blocker, Restored, Skipped};
use super::dry::DryRun;
use super::fake::Fake;
use super::firewall::{Firewall, Health};
use super::journal::Journal;
use super::limit;
use super::record::Record;
use crate::clock::{Clock, ManualClock, Stamp};
use crate::event::{Connection, Direction, Event, EventKind, PortScan};
use ipnet::IpNet;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// What a blocker is built with in these tests.
enum Mode {
    Apply(Box<dyn Backend>),
    DryRun(&'static str),
    Off,
}

/// The journal as maps, as the state file would hold them.
#[derive(Clone, Default)]
struct FakeJournal(
    Arc<Mutex<HashMap<IpNet, SystemTime>>>,
    Arc<Mutex<HashMap<IpNet, Record>>>,
);

impl Journal for FakeJournal {
    fn record(&self, ips: &[IpNet], expires: SystemTime, _backend: &'static str) {
        let mut held = self.0.lock().unwrap();
        held.extend(ips.iter().map(|ip| (*ip, expires)));
    }
    fn keep_only(&self, keep: &HashSet<IpNet>) {
        let now = SystemTime::now();
        let mut held = self.0.lock().unwrap();
        held.retain(|ip, expires| *expires > now && keep.contains(ip));
    }
    fn forget(&self, target: IpNet) {
        self.0.lock().unwrap().remove(&target);
    }
    fn note(&self, records: &[(IpNet, Record)]) {
        self.1.lock().unwrap().extend(records.iter().cloned());
    }
}

impl FakeJournal {
    fn ips(&self) -> Vec<IpNet> {
        let mut ips: Vec<IpNet> = self.0.lock().unwrap().keys().copied().collect();
        ips.sort();
        ips
    }
}

fn failing(b: &mut Blocker) -> bool {
    b.firewall_mut().is_some_and(|f| f.failing())
}

fn stamp() -> Stamp {
    Stamp {
        wall: chrono::Local::now(),
        mono: Duration::ZERO,
    }
}

fn scan(remote: &str) -> Event {
    Event {
        at: stamp(),
        kind: EventKind::PortScan(PortScan::syn(
            remote.parse().unwrap(),
            "10.0.0.5".parse().unwrap(),
            vec![1, 2, 3, 4],
        )),
    }
}

fn conn() -> Event {
    Event {
        at: stamp(),
        kind: EventKind::NewConnection {
            conn: Connection {
                initiator: "192.0.2.9:4000".parse().unwrap(),
                acceptor: "10.0.0.5:22".parse().unwrap(),
                direction: Direction::Inbound,
            },
            source: "procfs",
            owner: None,
        },
    }
}

fn blocker(mode: Mode, allow: &[&str]) -> Blocker {
    blocker_on(
        mode,
        allow,
        Arc::new(ManualClock::new(chrono::Local::now())),
    )
}

fn blocker_on(mode: Mode, allow: &[&str], clock: Arc<ManualClock>) -> Blocker {
    let host = vec!["10.0.0.5".parse().unwrap()];
    let ttl = Duration::from_secs(30);
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let firewall = match mode {
        Mode::Apply(backend) => Firewall::install(backend, ttl, dyn_clock),
        Mode::DryRun(name) => Firewall::install(
            Box::new(DryRun::new(name, dyn_clock.clone())),
            ttl,
            dyn_clock,
        ),
        Mode::Off => None,
    };
    Blocker::new(
        firewall,
        ttl,
        Allowlist::new(
            allow.iter().map(|a| a.parse().unwrap()).collect(),
            Box::new(move || Ok(host.clone())),
            Box::new(|| Ok(vec!["10.0.0.1".parse().unwrap()])),
        ),
        clock,
    )
}

/// The events as short tags: `C` connection, `S ip` scan, `B ip` block.
fn tags(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| match &e.kind {
            EventKind::NewConnection { .. } => "C".to_string(),
            EventKind::PortScan(s) => format!("S {}", s.remote),
            EventKind::Blocked(b) if b.ttl == Duration::from_secs(30) => {
                format!("B {} {}", crate::event::show_net(&b.target), b.backend)
            }
            EventKind::Blocked(b) => format!(
                "B {} {} {:?}",
                crate::event::show_net(&b.target),
                b.backend,
                b.ttl
            ),
            EventKind::Unblocked { target, .. } => format!("U {target}"),
            EventKind::FleetScan(s) => format!("F {}", s.source),
        })
        .collect()
}

#[test]
fn scans_of_one_batch_are_blocked_in_one_call_each_right_after_its_scan() {
    let fake = Fake::default();
    let mut b = blocker(Mode::Apply(Box::new(fake.clone())), &[]);
    let out = b.handle(vec![
        conn(),
        scan("192.0.2.1"),
        conn(),
        scan("2001:db8::7"),
        scan("192.0.2.1"),
    ]);
    assert_eq!(
        tags(&out),
        [
            "C",
            "S 192.0.2.1",
            "B 192.0.2.1 fake",
            "C",
            "S 2001:db8::7",
            "B 2001:db8::7 fake",
            "S 192.0.2.1"
        ]
    );
    let calls = fake.calls.lock().unwrap().clone();
    assert_eq!(calls, [vec![ip("192.0.2.1"), ip("2001:db8::7")]]);
    assert_eq!(b.count().unwrap(), (1, 1));
}

#[test]
fn allowlisted_scanners_are_reported_but_never_blocked() {
    let fake = Fake::default();
    let mut b = blocker(Mode::Apply(Box::new(fake.clone())), &["192.0.2.0/24"]);
    let batch = vec![
        scan("192.0.2.1"),
        scan("127.0.0.1"),
        scan("10.0.0.5"),
        scan("::ffff:10.0.0.5"),
    ];
    let said = crate::diag::capture();
    let out = b.handle(batch);
    assert_eq!(
        said.lines(),
        [
            "tcpwatch: not blocking 192.0.2.1: --allow 192.0.2.0/24",
            "tcpwatch: not blocking 127.0.0.1: loopback",
            "tcpwatch: not blocking 10.0.0.5: an address of this host",
        ],
        "the same mapped address is one scanner"
    );
    drop(said);
    assert_eq!(
        tags(&out),
        [
            "S 192.0.2.1",
            "S 127.0.0.1",
            "S 10.0.0.5",
            "S ::ffff:10.0.0.5"
        ]
    );
    assert!(
        fake.calls.lock().unwrap().is_empty(),
        "no backend call at all"
    );
}

#[test]
fn mapped_scanners_are_blocked_as_ipv4() {
    let fake = Fake::default();
    let mut b = blocker(Mode::Apply(Box::new(fake.clone())), &[]);
    let out = b.handle(vec![scan("::ffff:198.51.100.7")]);
    assert_eq!(tags(&out), ["S ::ffff:198.51.100.7", "B 198.51.100.7 fake"]);
}

#[test]
fn a_failed_block_is_not_reported_as_blocked() {
    let fake = Fake {
        fail: true,
        ..Fake::default()
    };
    let mut b = blocker(Mode::Apply(Box::new(fake)), &[]);
    assert_eq!(tags(&b.handle(vec![scan("192.0.2.1")])), ["S 192.0.2.1"]);
}

#[test]
fn restore_applies_live_blocks_only_and_records_new_ones_first() {
    let journal = FakeJournal::default();
    let now = SystemTime::now();
    let ip = |s: &str| IpNet::from(s.parse::<IpAddr>().unwrap());
    let hour = Duration::from_secs(3600);
    journal.record(&[ip("198.51.100.1")], now + hour, "iptables");
    journal.record(&[ip("192.0.2.7")], now + hour, "nftables");
    journal.record(
        &[ip("198.51.100.2")],
        now + Duration::from_millis(1),
        "nftables",
    );
    std::thread::sleep(Duration::from_millis(5));
    let stored = || -> Vec<(IpNet, SystemTime)> {
        journal
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(ip, e)| (*ip, *e))
            .collect()
    };
    let fake = Fake::default();
    let mut b = blocker(Mode::Apply(Box::new(fake.clone())), &["192.0.2.0/24"])
        .with_journal(Arc::new(journal.clone()));
    let done = b.restore(stored()).unwrap();
    assert_eq!(
        done,
        Restored {
            applied: 1,
            kept: 0
        }
    );
    assert_eq!(*fake.calls.lock().unwrap(), [vec![ip("198.51.100.1")]]);
    assert_eq!(
        *fake.ttls.lock().unwrap(),
        [Duration::from_secs(30)],
        "an hour stored (a clock set back, a TTL shortened) comes back as --block-ttl at most"
    );
    assert_eq!(
        journal.ips(),
        [ip("198.51.100.1")],
        "allowlisted and expired are dropped"
    );

    // A block the firewall no longer holds (lifted by hand) leaves the
    // file at the next recount; the ones it holds stay.
    journal.record(&[ip("203.0.113.9")], now + hour, "nftables");
    b.count().unwrap();
    assert_eq!(journal.ips(), [ip("198.51.100.1")]);
    // A new block is in the file before the backend is called.
    b.handle(vec![scan("203.0.113.10")]);
    assert_eq!(journal.ips().len(), 2);

    // Blocking off: nothing applied, nothing dropped.
    journal.record(&[ip("198.51.100.3")], now + hour, "nftables");
    let mut off = blocker(Mode::Off, &[]).with_journal(Arc::new(journal.clone()));
    let done = off.restore(stored()).unwrap();
    assert_eq!(
        done,
        Restored {
            applied: 0,
            kept: 3
        }
    );
    assert_eq!(journal.ips().len(), 3);

    // A dry run neither applies nor drops them either.
    let mut dry = blocker(Mode::DryRun("nftables"), &[]).with_journal(Arc::new(journal.clone()));
    assert_eq!(dry.restore(stored()).unwrap().kept, 3);
    dry.handle(vec![scan("203.0.113.11")]);
    dry.tick();
    assert_eq!(journal.ips().len(), 3, "a dry run records nothing");
}

/// The block settings of these tests, with the cap `rate`.
fn settings(rate: limit::Rate) -> super::Settings {
    super::Settings {
        block_ttl: Duration::from_secs(30),
        max_blocks_per_minute: rate,
        ..super::Settings::default()
    }
}

/// A blocker capped at `rate` new blocks a minute, on `clock`.
fn capped(mode: Mode, rate: u32, clock: &Arc<ManualClock>) -> Blocker {
    blocker_on(mode, &["192.0.2.0/24"], clock.clone()).with_limit(limit::Rate(Some(rate)))
}

#[test]
fn the_cap_skips_new_blocks_over_it_until_the_minute_slides() {
    let clock = Arc::new(ManualClock::new(chrono::Local::now()));
    let fake = Fake::default();
    let mut b = capped(Mode::Apply(Box::new(fake.clone())), 2, &clock);
    let out = b.handle(vec![
        scan("198.51.100.1"),
        scan("198.51.100.2"),
        scan("198.51.100.3"),
        scan("192.0.2.9"),
    ]);
    assert_eq!(
        tags(&out),
        [
            "S 198.51.100.1",
            "B 198.51.100.1 fake",
            "S 198.51.100.2",
            "B 198.51.100.2 fake",
            "S 198.51.100.3",
            "S 192.0.2.9"
        ]
    );
    assert_eq!(
        b.take_skipped(),
        Skipped {
            allowlist: 1,
            rate_limit: 1
        }
    );
    assert_eq!(b.take_skipped(), Skipped::default(), "taken once");

    // Re-blocking a held address refreshes it and costs no budget.
    clock.advance(Duration::from_secs(20));
    let out = b.handle(vec![scan("198.51.100.1"), scan("198.51.100.4")]);
    assert_eq!(
        tags(&out),
        ["S 198.51.100.1", "B 198.51.100.1 fake", "S 198.51.100.4"]
    );
    assert_eq!(b.take_skipped().rate_limit, 1);

    // 60 s after the first two blocks their slots are free again.
    clock.advance(Duration::from_secs(40));
    let out = b.handle(vec![scan("198.51.100.4"), scan("198.51.100.5")]);
    assert_eq!(
        tags(&out),
        [
            "S 198.51.100.4",
            "B 198.51.100.4 fake",
            "S 198.51.100.5",
            "B 198.51.100.5 fake"
        ]
    );
    assert_eq!(b.take_skipped(), Skipped::default());
    let calls = fake.calls.lock().unwrap().len();
    assert_eq!(calls, 3, "one backend call per batch");
}

#[test]
fn an_expired_block_is_new_again_and_a_failed_one_keeps_its_budget() {
    let clock = Arc::new(ManualClock::new(chrono::Local::now()));
    let mut b = capped(Mode::DryRun("nftables"), 1, &clock);
    assert_eq!(tags(&b.handle(vec![scan("198.51.100.1")])).len(), 2);
    // The TTL is 30 s: past it, the same address is a new block, and
    // the minute's budget is spent.
    clock.advance(Duration::from_secs(31));
    assert_eq!(tags(&b.handle(vec![scan("198.51.100.1")])).len(), 1);
    assert_eq!(b.take_skipped().rate_limit, 1);

    let failing = Fake {
        fail: true,
        ..Fake::default()
    };
    let mut b = capped(Mode::Apply(Box::new(failing)), 1, &clock);
    assert_eq!(tags(&b.handle(vec![scan("198.51.100.1")])).len(), 1);
    assert_eq!(tags(&b.handle(vec![scan("198.51.100.2")])).len(), 1);
    assert_eq!(
        b.take_skipped().rate_limit,
        1,
        "a block that failed is pending, to be applied: it keeps its budget"
    );
    assert_eq!(b.health().pending, 1);
}

#[test]
fn a_reload_changes_the_cap() {
    let clock = Arc::new(ManualClock::new(chrono::Local::now()));
    let mut b = capped(Mode::DryRun("nftables"), 1, &clock);
    let out = b.handle(vec![scan("198.51.100.1"), scan("198.51.100.2")]);
    assert_eq!(tags(&out).len(), 3);
    b.reconfigure(&settings(limit::Rate(None)));
    let out = b.handle(vec![scan("198.51.100.2"), scan("198.51.100.3")]);
    assert_eq!(tags(&out).len(), 4, "off: no cap");
    // Blocks made with no cap are not recorded; the one before still is.
    b.reconfigure(&settings(limit::Rate(Some(2))));
    let out = b.handle(vec![scan("198.51.100.4"), scan("198.51.100.5")]);
    assert_eq!(
        tags(&out),
        [
            "S 198.51.100.4",
            "B 198.51.100.4 nftables",
            "S 198.51.100.5"
        ]
    );
}

#[test]
fn dry_run_reports_without_a_backend_and_off_passes_through() {
    let mut b = blocker(Mode::DryRun("nftables"), &[]);
    assert_eq!(
        tags(&b.handle(vec![scan("192.0.2.1")])),
        ["S 192.0.2.1", "B 192.0.2.1 nftables"]
    );
    assert_eq!(b.count().unwrap(), (0, 0));
    let mut off = blocker(Mode::Off, &[]);
    assert_eq!(
        tags(&off.handle(vec![scan("192.0.2.1"), conn()])),
        ["S 192.0.2.1", "C"]
    );
}

fn ip(s: &str) -> IpNet {
    IpNet::from(s.parse::<IpAddr>().unwrap())
}

#[test]
fn a_failing_firewall_keeps_blocks_pending_and_applies_them_when_it_works() {
    let fake = Fake::default();
    let mut b = blocker(Mode::Apply(Box::new(fake.clone())), &[]);
    fake.failing.store(true, Ordering::Relaxed);
    assert_eq!(tags(&b.handle(vec![scan("192.0.2.1")])), ["S 192.0.2.1"]);
    assert!(failing(&mut b));
    // While failing, a new scan joins the pending ones in one call.
    assert_eq!(
        tags(&b.handle(vec![scan("2001:db8::7")])),
        ["S 2001:db8::7"]
    );
    assert_eq!(fake.calls.lock().unwrap().len(), 2);
    let (late, counted) = b.tick();
    assert!(late.is_empty() && counted.is_none());
    assert_eq!(
        b.health(),
        Health {
            errors: 3,
            dropped: 0,
            pending: 2,
            ..Health::default()
        },
        "the block, the retry, the repair after a failed listing: each failed call counts"
    );

    fake.failing.store(false, Ordering::Relaxed);
    let (late, counted) = b.tick();
    let mut late = tags(&late);
    late.sort();
    assert_eq!(late, ["B 192.0.2.1 fake", "B 2001:db8::7 fake"]);
    assert_eq!(counted, Some((1, 1)));
    assert!(!failing(&mut b));
    assert_eq!(b.health().pending, 0);
    // Works again: a new scan is blocked at once, for the full TTL.
    let calls = fake.calls.lock().unwrap().len();
    assert_eq!(
        tags(&b.handle(vec![scan("198.51.100.3")])),
        ["S 198.51.100.3", "B 198.51.100.3 fake"]
    );
    assert_eq!(fake.calls.lock().unwrap().len(), calls + 1);
    assert_eq!(b.tick().0.len(), 0, "nothing is printed twice");
}

#[test]
fn a_late_block_gets_the_time_its_ttl_has_left_and_an_ended_one_is_dropped() {
    let fake = Fake::default();
    let clock = Arc::new(ManualClock::new(chrono::Local::now()));
    let mut b = blocker_on(Mode::Apply(Box::new(fake.clone())), &[], clock.clone());
    fake.failing.store(true, Ordering::Relaxed);
    b.handle(vec![scan("192.0.2.1")]);
    clock.advance(Duration::from_millis(9_500));
    b.handle(vec![scan("192.0.2.2")]);
    clock.advance(Duration::from_millis(20_700));
    fake.failing.store(false, Ordering::Relaxed);
    // At 30.2 s: 192.0.2.1's 30 s have ended; 192.0.2.2 has 9.3 s left,
    // applied as 10 s so it never ends early.
    let (late, _) = b.tick();
    assert_eq!(tags(&late), ["B 192.0.2.2 fake 10s"]);
    assert_eq!(
        fake.ttls.lock().unwrap().last(),
        Some(&Duration::from_secs(10))
    );
    assert_eq!(b.health().dropped, 1);
    assert_eq!(b.health().pending, 0);

    // Every pending block expired: the next good reading is the recovery.
    fake.failing.store(true, Ordering::Relaxed);
    b.handle(vec![scan("192.0.2.3")]);
    clock.advance(Duration::from_secs(31));
    fake.failing.store(false, Ordering::Relaxed);
    assert!(failing(&mut b));
    assert!(b.tick().0.is_empty());
    assert!(!failing(&mut b));
    assert_eq!(b.health().dropped, 2);
}

#[test]
fn pending_blocks_are_capped_and_the_excess_counted() {
    let fake = Fake::default();
    let mut b = blocker(Mode::Apply(Box::new(fake.clone())), &[]);
    b.firewall_mut().unwrap().max_pending = 2;
    fake.failing.store(true, Ordering::Relaxed);
    b.handle(vec![
        scan("192.0.2.1"),
        scan("192.0.2.2"),
        scan("192.0.2.3"),
    ]);
    b.handle(vec![scan("192.0.2.1")]);
    assert_eq!(
        b.health(),
        Health {
            errors: 2,
            dropped: 1,
            pending: 2,
            ..Health::default()
        },
        "a pending address again is no new entry"
    );
}

#[test]
fn deleted_objects_are_recreated_with_the_active_and_pending_blocks() {
    let fake = Fake::default();
    let mut b = blocker(Mode::Apply(Box::new(fake.clone())), &[]);
    b.handle(vec![scan("192.0.2.1")]);
    fake.gone.store(true, Ordering::Relaxed);
    fake.failing.store(true, Ordering::Relaxed);
    b.handle(vec![scan("192.0.2.2")]);
    fake.failing.store(false, Ordering::Relaxed);
    let (late, _) = b.tick();
    assert_eq!(
        tags(&late),
        ["B 192.0.2.2 fake"],
        "only the pending one prints"
    );
    let mut repaired = fake.repairs.lock().unwrap()[0].clone();
    repaired.sort();
    assert_eq!(
        repaired,
        [
            (ip("192.0.2.1"), Duration::from_secs(30)),
            (ip("192.0.2.2"), Duration::from_secs(30))
        ]
    );
    assert!(!failing(&mut b));
    assert_eq!(b.health().pending, 0);
    assert!(b.tick().0.is_empty());
    assert_eq!(fake.repairs.lock().unwrap().len(), 1, "repaired once");
}

// ---------------------------------------------------------------------------
// Repeat offenders, suppression, the operator's blocks, drift, drops

fn scan_of(remote: &str, local: &str) -> Event {
    Event {
        at: stamp(),
        kind: EventKind::PortScan(PortScan::syn(
            remote.parse().unwrap(),
            local.parse().unwrap(),
            vec![1, 2, 3, 4],
        )),
    }
}

fn conn_from(remote: &str, port: u16) -> Event {
    Event {
        at: stamp(),
        kind: EventKind::NewConnection {
            conn: Connection {
                initiator: format!("{remote}:4000").parse().unwrap(),
                acceptor: format!("10.0.0.5:{port}").parse().unwrap(),
                direction: Direction::Inbound,
            },
            source: "pcap",
            owner: None,
        },
    }
}

/// `B ip ttl repeat` for each Blocked event.
fn blocks(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Blocked(b) => Some(format!(
                "B {} {} {}",
                crate::event::show_net(&b.target),
                crate::duration::format(b.ttl),
                b.repeat
            )),
            _ => None,
        })
        .collect()
}

fn escalating(fake: &Fake, clock: &Arc<ManualClock>) -> Blocker {
    blocker_on(Mode::Apply(Box::new(fake.clone())), &[], clock.clone())
        .with_ttl_max(Duration::from_secs(120))
}

#[test]
fn a_repeat_offender_gets_twice_its_ttl_up_to_the_max_and_a_restart_keeps_the_count() {
    let fake = Fake::default();
    let clock = Arc::new(ManualClock::new(chrono::Local::now()));
    let journal = FakeJournal::default();
    let mut b = escalating(&fake, &clock).with_journal(Arc::new(journal.clone()));
    let mut got = Vec::new();
    for ttl in [30, 60, 120] {
        got.extend(blocks(&b.handle(vec![scan("192.0.2.1")])));
        // Scanning again while blocked only refreshes the block.
        got.extend(blocks(&b.handle(vec![scan_of("192.0.2.1", "10.0.0.6")])));
        clock.advance(Duration::from_secs(ttl + 1));
        fake.held.lock().unwrap().clear();
    }
    assert_eq!(
        got,
        [
            "B 192.0.2.1 30s 1",
            "B 192.0.2.1 30s 1",
            "B 192.0.2.1 1m 2",
            "B 192.0.2.1 1m 2",
            "B 192.0.2.1 2m 3",
            "B 192.0.2.1 2m 3"
        ]
    );
    assert_eq!(
        *fake.ttls.lock().unwrap(),
        [30, 30, 60, 60, 120, 120].map(Duration::from_secs)
    );
    let noted = journal.1.lock().unwrap().clone();
    let record = &noted[&ip("192.0.2.1")];
    assert_eq!(
        (record.repeat, record.scan_ttl),
        (3, Duration::from_secs(120))
    );
    assert_eq!(record.reason, "port scan 3/60s on ports 1,2,3,4");

    // A restart: the records come back from the state file.
    let fresh = Fake::default();
    let mut again = escalating(&fresh, &clock).with_records(noted.into_iter().collect());
    assert_eq!(
        blocks(&again.handle(vec![scan("192.0.2.1")])),
        ["B 192.0.2.1 2m 4"]
    );
    assert_eq!(
        blocks(&again.handle(vec![scan("192.0.2.2")])),
        ["B 192.0.2.2 30s 1"],
        "another source starts at the base"
    );
}

#[test]
fn escalation_is_off_by_default_and_when_the_max_is_the_ttl() {
    let fake = Fake::default();
    let clock = Arc::new(ManualClock::new(chrono::Local::now()));
    let mut b = blocker_on(Mode::Apply(Box::new(fake.clone())), &[], clock.clone());
    for _ in 0..2 {
        assert_eq!(
            blocks(&b.handle(vec![scan("192.0.2.1")])),
            ["B 192.0.2.1 30s 1"]
        );
        clock.advance(Duration::from_secs(31));
        fake.held.lock().unwrap().clear();
    }
}

#[test]
fn connections_of_a_blocked_source_after_its_block_are_not_reported() {
    let fake = Fake::default();
    let mut b = blocker(Mode::Apply(Box::new(fake.clone())), &[]);
    let out = b.handle(vec![
        conn_from("192.0.2.9", 1),
        scan("192.0.2.9"),
        conn_from("192.0.2.9", 5),
        conn_from("198.51.100.1", 22),
    ]);
    assert_eq!(
        tags(&out),
        ["C", "S 192.0.2.9", "B 192.0.2.9 fake", "C"],
        "the connection before the scan is reported, the one after its block is not"
    );
    assert_eq!(b.take_suppressed(), 1);
    let later = b.pass(vec![
        conn_from("192.0.2.9", 6),
        conn_from("198.51.100.1", 23),
    ]);
    assert_eq!(tags(&later), ["C"]);
    assert_eq!(b.take_suppressed(), 1);
    let set = b.blockset().unwrap();
    assert_eq!(set.seen(ip("192.0.2.9")), 2, "counted as seen by the block");
    assert_eq!(b.views()[0].packets_dropped, 2);

    // A dry run stops nothing: its connections are reported.
    let mut dry = blocker(Mode::DryRun("nftables"), &[]);
    assert!(dry.blockset().is_none());
    let out = dry.handle(vec![scan("192.0.2.9"), conn_from("192.0.2.9", 5)]);
    assert_eq!(tags(&out), ["S 192.0.2.9", "B 192.0.2.9 nftables", "C"]);
}

#[test]
fn the_operators_block_is_checked_applied_recorded_and_lifted() {
    let fake = Fake::default();
    let journal = FakeJournal::default();
    let mut b = blocker(Mode::Apply(Box::new(fake.clone())), &["198.51.100.0/24"])
        .with_journal(Arc::new(journal.clone()));
    let refused = |b: &mut Blocker, target: &str| {
        b.add(target.parse().unwrap(), None)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        refused(&mut b, "198.51.100.7/32"),
        "not blocking 198.51.100.7: it is never blocked (--allow 198.51.100.0/24)"
    );
    assert_eq!(
        refused(&mut b, "198.51.0.0/16"),
        "not blocking 198.51.0.0/16: it holds an address never to be blocked (--allow 198.51.100.0/24)"
    );
    assert_eq!(
        refused(&mut b, "10.0.0.5/32"),
        "not blocking 10.0.0.5: it is never blocked (an address of this host)"
    );
    assert!(fake.calls.lock().unwrap().is_empty());

    let event = b
        .add(ip("192.0.2.7"), Some(Duration::from_secs(300)))
        .unwrap();
    assert_eq!(blocks(&[event]), ["B 192.0.2.7 5m 1"]);
    assert!(fake.held.lock().unwrap().contains(&ip("192.0.2.7")));
    assert_eq!(journal.ips(), [ip("192.0.2.7")]);
    let views = b.views();
    assert_eq!(
        (
            views[0].reason.as_str(),
            views[0].ttl_seconds,
            views[0].repeat
        ),
        ("manual", Some(300), 1)
    );
    let default_ttl = b.add(ip("192.0.2.8"), None).unwrap();
    assert_eq!(blocks(&[default_ttl]), ["B 192.0.2.8 30s 1"]);

    let lifted = b.remove(ip("192.0.2.7")).unwrap();
    assert_eq!(
        tags(&lifted.into_iter().collect::<Vec<_>>()),
        ["U 192.0.2.7/32"]
    );
    assert_eq!(
        b.remove(ip("192.0.2.7")).unwrap(),
        None,
        "not blocked any more"
    );
    assert!(!fake.held.lock().unwrap().contains(&ip("192.0.2.7")));
    assert_eq!(journal.ips(), [ip("192.0.2.8")], "the file forgets it");
    b.tick();
    assert!(
        !fake.held.lock().unwrap().contains(&ip("192.0.2.7")),
        "a lifted block does not come back"
    );
    let flushed = b.flush().unwrap();
    assert_eq!(tags(&flushed), ["U 192.0.2.8/32"]);
    assert!(journal.ips().is_empty());

    // Blocking off: refused with a reason.
    let mut off = blocker(Mode::Off, &[]);
    assert_eq!(
        off.add(ip("192.0.2.7"), None).unwrap_err().to_string(),
        "not blocking 192.0.2.7: blocking is off in the running agent"
    );
    // A firewall that refuses: the operator hears it, nothing is pending.
    let failing = Fake {
        fail: true,
        ..Fake::default()
    };
    let mut broken = blocker(Mode::Apply(Box::new(failing)), &[]);
    let err = broken.add(ip("192.0.2.7"), None).unwrap_err().to_string();
    assert_eq!(
        err,
        "cannot block 192.0.2.7 via fake: nft: Operation not permitted"
    );
    assert!(broken.pending().is_empty());
}

#[test]
fn drift_is_repaired_and_counted() {
    let fake = Fake::default();
    let journal = FakeJournal::default();
    let mut b =
        blocker(Mode::Apply(Box::new(fake.clone())), &[]).with_journal(Arc::new(journal.clone()));
    b.handle(vec![scan("192.0.2.1")]);
    // Deleted behind the agent's back: applied again at the next check.
    fake.held.lock().unwrap().remove(&ip("192.0.2.1"));
    let (late, counted) = b.tick();
    assert!(late.is_empty(), "no new Blocked line: {late:?}");
    assert_eq!(counted, Some((1, 0)));
    assert!(fake.held.lock().unwrap().contains(&ip("192.0.2.1")));
    assert_eq!(b.health().drift_missing, 1);
    assert_eq!(journal.ips(), [ip("192.0.2.1")], "still in the file");
    // Added behind its back: adopted, recorded, kept in the file.
    fake.held.lock().unwrap().insert(ip("203.0.113.5"));
    b.tick();
    assert_eq!(b.health().drift_unknown, 1);
    let views = b.views();
    let adopted = views.iter().find(|v| v.target == "203.0.113.5").unwrap();
    assert_eq!(adopted.reason, "found in the firewall");
    assert_eq!(journal.ips(), [ip("192.0.2.1"), ip("203.0.113.5")]);
    b.tick();
    assert_eq!(
        (b.health().drift_missing, b.health().drift_unknown),
        (1, 1),
        "no drift, no count"
    );
    // An LRU map that evicted: the lost block is taken as evicted.
    fake.evicted.store(1, Ordering::Relaxed);
    fake.held.lock().unwrap().remove(&ip("192.0.2.1"));
    b.tick();
    assert!(!fake.held.lock().unwrap().contains(&ip("192.0.2.1")));
    assert_eq!(b.health().drift_missing, 1);
    assert_eq!(b.views().len(), 1);
}

#[test]
fn each_blocks_drops_are_its_backends_count_or_what_the_agent_saw() {
    let fake = Fake::default();
    let mut b = blocker(Mode::Apply(Box::new(fake.clone())), &[]);
    b.handle(vec![scan("192.0.2.1"), scan("192.0.2.2")]);
    fake.packets.lock().unwrap().insert(ip("192.0.2.1"), 100);
    b.count().unwrap();
    assert_eq!(b.health().dropped_packets, 100);
    fake.packets.lock().unwrap().insert(ip("192.0.2.1"), 150);
    // 192.0.2.2 has no count in the backend: what the agent saw of it.
    let set = b.blockset().unwrap();
    for _ in 0..7 {
        set.hit("192.0.2.2".parse().unwrap());
    }
    b.count().unwrap();
    assert_eq!(b.health().dropped_packets, 157);
    let dropped: Vec<u64> = b.views().iter().map(|v| v.packets_dropped).collect();
    assert_eq!(dropped, [150, 7]);
    // Applied again: a new block, counting from zero.
    b.remove(ip("192.0.2.1")).unwrap();
    fake.packets.lock().unwrap().insert(ip("192.0.2.1"), 3);
    b.add(ip("192.0.2.1"), None).unwrap();
    b.count().unwrap();
    assert_eq!(b.health().dropped_packets, 160);
}

// ---------------------------------------------------------------------------
// Blocks of the fleet

/// An address or a prefix.
fn net(s: &str) -> IpNet {
    if s.contains('/') {
        s.parse().unwrap()
    } else {
        ip(s)
    }
}

fn remote(target: &str, secs: u64, origin: &str) -> super::blocker::Remote {
    super::blocker::Remote {
        target: net(target),
        expires: SystemTime::now() + Duration::from_secs(secs) - Duration::from_millis(300),
        origin: origin.to_string(),
    }
}

/// `B ip ttl origin` for the blocks, `U ip` for the lifts.
fn origins(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| match &e.kind {
            EventKind::Blocked(b) => format!(
                "B {} {} {}",
                crate::event::show_net(&b.target),
                crate::duration::format(b.ttl),
                match &b.origin {
                    crate::event::Origin::Here(n) => format!("here:{n}"),
                    crate::event::Origin::Fleet(n) => format!("fleet:{n}"),
                }
            ),
            EventKind::Unblocked { target, backend } => {
                format!("U {} {backend}", crate::event::show_net(target))
            }
            _ => tags(std::slice::from_ref(e)).remove(0),
        })
        .collect()
}

#[test]
fn fleet_blocks_are_applied_until_their_instant_through_the_allowlist() {
    let fake = Fake::default();
    let journal = FakeJournal::default();
    let mut b = blocker(Mode::Apply(Box::new(fake.clone())), &["198.51.100.0/24"])
        .with_node("node-a")
        .with_journal(Arc::new(journal.clone()));
    let said = crate::diag::capture();
    let out = b.apply_remote(vec![
        remote("192.0.2.56", 3600, "node-b"),
        remote("2001:db8:1:2::/64", 90, "node-c"),
        remote("198.51.100.7", 3600, "node-b"),
        remote("10.0.0.5", 3600, "node-b"),
        remote("10.0.0.1", 3600, "node-b"),
        remote("127.0.0.1", 3600, "node-b"),
    ]);
    assert_eq!(
        said.lines(),
        [
            "tcpwatch: not blocking 198.51.100.7 from the fleet (node-b): --allow 198.51.100.0/24",
            "tcpwatch: not blocking 10.0.0.5 from the fleet (node-b): an address of this host",
            "tcpwatch: not blocking 10.0.0.1 from the fleet (node-b): a gateway of this host",
            "tcpwatch: not blocking 127.0.0.1 from the fleet (node-b): loopback",
        ]
    );
    drop(said);
    // The time left, rounded up to whole seconds: the TTL the node decided.
    assert_eq!(
        origins(&out),
        [
            "B 192.0.2.56 1h fleet:node-b",
            "B 2001:db8:1:2::/64 90s fleet:node-c"
        ]
    );
    assert_eq!(b.take_skipped().allowlist, 4);
    assert_eq!(journal.ips(), [ip("192.0.2.56"), net("2001:db8:1:2::/64")]);
    // The same ban again (another node's catch-up, a republish): nothing.
    assert!(b
        .apply_remote(vec![remote("192.0.2.56", 3600, "node-b")])
        .is_empty());
    // Lifted by the fleet: lifted here, once.
    let lifted = b.lift(ip("192.0.2.56")).unwrap();
    assert_eq!(origins(&[lifted]), ["U 192.0.2.56 fake"]);
    assert!(b.lift(ip("192.0.2.56")).is_none(), "nothing left to lift");
    assert!(fake.log().contains(&"unblock 192.0.2.56/32".to_string()));
    assert!(!fake.held.lock().unwrap().contains(&ip("192.0.2.56")));
    // Decided here later: this node's block, not the fleet's.
    let out = b.handle(vec![scan("2001:db8:1:2::9")]);
    assert_eq!(
        origins(&out)[1..],
        ["B 2001:db8:1:2::9 30s here:node-a"],
        "{out:?}"
    );
}

#[test]
fn a_fleet_block_applied_late_still_names_its_node() {
    let fake = Fake::default();
    let mut b = blocker(Mode::Apply(Box::new(fake.clone())), &[]);
    fake.failing.store(true, Ordering::Relaxed);
    let out = b.apply_remote(vec![remote("192.0.2.56", 600, "node-b")]);
    assert!(out.is_empty(), "not applied while the firewall fails");
    fake.failing.store(false, Ordering::Relaxed);
    let (late, _) = b.tick();
    assert_eq!(origins(&late), ["B 192.0.2.56 10m fleet:node-b"]);
}

#[test]
fn fleet_blocks_take_from_the_cap_and_nothing_without_blocking() {
    let fake = Fake::default();
    let mut b = blocker(Mode::Apply(Box::new(fake.clone())), &[]).with_limit(limit::Rate(Some(1)));
    let said = crate::diag::capture();
    let out = b.apply_remote(vec![
        remote("192.0.2.1", 600, "node-b"),
        remote("192.0.2.2", 600, "node-b"),
    ]);
    assert_eq!(origins(&out), ["B 192.0.2.1 10m fleet:node-b"]);
    assert!(said.lines()[0]
        .contains("block limit of 1 a minute reached; not blocking 192.0.2.2 from the fleet"));
    drop(said);
    let mut off = blocker(Mode::Off, &[]);
    assert!(off
        .apply_remote(vec![remote("192.0.2.1", 600, "node-b")])
        .is_empty());
    assert!(off.lift(ip("192.0.2.1")).is_none());
}

#[test]
fn a_fleet_scan_is_blocked_like_a_port_scan_right_after_it() {
    let fake = Fake::default();
    let mut b = blocker(Mode::Apply(Box::new(fake.clone())), &["2001:db8:1:2::/64"]);
    let fleet_scan = |source: &str| Event {
        at: stamp(),
        kind: EventKind::FleetScan(crate::event::FleetScan {
            source: net(source),
            hosts: 3,
            ports: vec![22, 80],
        }),
    };
    let out = b.handle(vec![
        fleet_scan("192.0.2.99"),
        fleet_scan("2001:db8:1::/48"),
    ]);
    assert_eq!(
        tags(&out),
        ["F 192.0.2.99/32", "B 192.0.2.99 fake", "F 2001:db8:1::/48"],
        "a prefix holding an allowed address is not blocked"
    );
    assert!(b.holds(ip("192.0.2.99")));
}

#[test]
fn own_blocks_are_the_restored_ones_this_node_decided_with_their_expiry() {
    let now = SystemTime::now();
    let ip = |s: &str| IpNet::from(s.parse::<IpAddr>().unwrap());
    let record = |origin: &str, reason: &str| Record {
        repeat: 1,
        scan_ttl: Duration::from_secs(30),
        ttl: Duration::from_secs(30),
        applied: now,
        lapses: now + Duration::from_secs(3600),
        reason: reason.to_string(),
        origin: origin.to_string(),
    };
    let fake = Fake::default();
    let mut b = blocker(Mode::Apply(Box::new(fake)), &[])
        .with_node("node-a")
        .with_records(vec![
            (ip("198.51.100.1"), record("node-a", "port scan 3/60s")),
            (ip("198.51.100.2"), record("node-b", "decided by the fleet")),
        ]);
    let ends = now + Duration::from_secs(20);
    b.restore(vec![
        (ip("198.51.100.1"), ends),
        (ip("198.51.100.2"), ends),
        (ip("198.51.100.3"), ends),
    ])
    .unwrap();
    let own = b.own_blocks();
    let targets: Vec<(IpNet, &str)> = own.iter().map(|(t, _, r)| (*t, r.as_str())).collect();
    assert_eq!(
        targets,
        [
            (ip("198.51.100.1"), "port scan 3/60s"),
            // No record: a block of this node's (as `blocks list` shows it).
            (ip("198.51.100.3"), super::record::ADOPTED),
        ],
        "another node's block is that node's to publish"
    );
    for (_, expires, _) in &own {
        let left = expires.duration_since(now).unwrap();
        assert!(
            left <= Duration::from_secs(21) && left >= Duration::from_secs(15),
            "{left:?}"
        );
    }
    // Blocking dry or off: nothing is the fleet's.
    let mut dry = blocker(Mode::DryRun("nftables"), &[]);
    dry.restore(vec![(ip("198.51.100.1"), ends)]).unwrap();
    assert!(dry.own_blocks().is_empty());
}
