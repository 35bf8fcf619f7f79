//! The nftables backend: table `inet tcpwatch`, interval sets
//! `blocked4`/`blocked6` (`flags interval, timeout` and a counter per
//! element) holding addresses and prefixes with kernel-side timeouts, and
//! one chain at prerouting/raw priority that drops their sources (so
//! containers behind the host are covered too, and each packet costs one
//! set lookup, never one rule per address).
//!
//! Every change is one `nft -f -` batch, which the kernel applies as one
//! transaction. nft 1.0.6 has no `destroy`: adding an existing element
//! succeeds and deleting an absent one fails, so idempotent scripts are
//! built from `add; delete; add` (docs/blocking.md). Blocks are the
//! exception: `create`, then a timeout restarted in place where the kernel
//! can (see `Nftables::apply`).
//!
//! An interval set refuses overlapping elements ("interval overlaps with an
//! existing one"): a prefix cannot be added while an address inside it is
//! blocked, nor an address inside a blocked prefix. A batch is first tried
//! as is (the common case, no overlap, costs one transaction); when nft
//! says it overlaps, the sets are read and the batch rebuilt: a new prefix
//! replaces the blocks inside it (deleted in the same transaction), and a
//! target inside a blocked prefix is already covered and left out.

use super::backend::{by_whole_seconds, canonical, Backend, Entry, Family};
use super::exec;
use super::nft_decide::{self as decide, Rule};
use crate::diag;
use crate::event::show_net;
use crate::os::nftables as libnft;
use anyhow::Context;
use ipnet::IpNet;
use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub const TABLE: &str = "inet tcpwatch";
pub const SET4: &str = "blocked4";
pub const SET6: &str = "blocked6";
pub const CHAIN: &str = "prerouting";
/// Targets per `add element` statement: keeps each line of a large batch
/// reasonable; the batch stays one transaction whatever its size.
const CHUNK: usize = 1000;

/// The nftables backend; with [`Nftables::deciding`], the table decides
/// scans by itself too ([`super::nft_decide`]).
#[derive(Default)]
pub struct Nftables {
    /// The rule the kernel decides with (`--nft-decide on`); `None`: every
    /// decision is userspace's (or `tcpwatch blocks`, which reads the
    /// table a running agent made).
    rule: Option<Rule>,
    /// The decision as the table holds it now (installed, supported).
    installed: Option<Rule>,
    /// The networks never blocked besides loopback, as last told.
    allow: Vec<IpNet>,
    /// The allowlist as the table holds it now.
    synced: Option<Vec<IpNet>>,
    /// Kernel decisions, as the last listing read them.
    decisions: Arc<AtomicU64>,
    /// Per element re-blocked in place, its counter when it was: a block
    /// applied again counts from zero, and an update in place keeps the
    /// kernel's count ([`Nftables::apply`]).
    counted: HashMap<IpNet, u64>,
}

impl Nftables {
    pub fn new() -> Self {
        Self::default()
    }

    /// Has the table decide scans with `rule` from install on; a rule it
    /// cannot apply leaves every decision to userspace, said at install.
    pub fn deciding(mut self, rule: Rule) -> Self {
        self.rule = Some(rule);
        self
    }

    /// The kernel decisions counted so far (read by each listing), shared
    /// with the metrics task.
    pub fn decisions(&self) -> Arc<AtomicU64> {
        self.decisions.clone()
    }

    /// The decision to install, when there is one the kernel can apply.
    fn wanted(&self) -> Option<Rule> {
        self.rule.filter(|r| r.unsupported().is_none())
    }

    /// The IPv6 prefixes the kernel decides by address in.
    fn holds(&self) -> Vec<IpNet> {
        let prefix = self.installed.map_or(128, |r| r.ipv6_prefix);
        decide::allow_nets(self.synced.as_deref().unwrap_or(&[]), prefix).2
    }

    /// The whole table: the blocked sets and drops, and the decision.
    fn table_script(&self) -> String {
        let mut script = install_script();
        if let Some(rule) = self.wanted() {
            script += &decide::create_script(TABLE, CHAIN, &rule, &self.allow);
        }
        script
    }

    /// Notes what a table made by [`Nftables::table_script`] holds.
    fn made(&mut self) {
        self.installed = self.wanted();
        self.synced = self.installed.map(|_| self.allow.clone());
    }

    /// Replaces the decision in the table by the current rule (or none),
    /// in one transaction; the `@blocked` drops stay first.
    fn redecide(&mut self) -> anyhow::Result<()> {
        let mut script = format!(
            "flush chain {TABLE} {CHAIN}
"
        );
        if let Some(old) = &self.installed {
            script += &decide::delete_script(TABLE, old);
        }
        script += &drop_rules();
        let wanted = self.wanted();
        if let Some(rule) = &wanted {
            script += &decide::create_script(TABLE, CHAIN, rule, &self.allow);
        }
        nft(&script)?;
        self.made();
        Ok(())
    }
}

impl Backend for Nftables {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn install(&mut self, _ttl: Duration) -> anyhow::Result<()> {
        if let Some(why) = self.rule.and_then(|r| r.unsupported()) {
            diag::note(format_args!(
                "nftables: every block is decided in userspace: {why}"
            ));
        }
        nft(&self.table_script()).context("cannot create table inet tcpwatch")?;
        self.made();
        self.counted.clear();
        // Once, at start-up rather than at the first re-block.
        restarts_in_place();
        Ok(())
    }

    fn block(&mut self, targets: &[IpNet], ttl: Duration) -> anyhow::Result<()> {
        if !diag::hops::on() {
            return self.apply(&[(ttl, targets.to_vec())]);
        }
        let start = std::time::Instant::now();
        let done = self.apply(&[(ttl, targets.to_vec())]);
        diag::hops::committed(start.elapsed());
        done
    }

    fn unblock(&mut self, target: IpNet) -> anyhow::Result<()> {
        let target = canonical(target);
        self.counted.remove(&target);
        if let Some(rule) = &self.installed {
            // The kernel's own decision goes too.
            let lift = decide::lift_script(TABLE, target, rule.ipv6_prefix, &self.holds());
            if !lift.is_empty() {
                nft(&lift)?;
            }
        }
        match nft(&unblock_script(target)) {
            // An address inside a blocked prefix, or a prefix holding
            // blocked addresses: not an element, so nothing to lift.
            Err(e) if overlaps(&e) && !held()?.contains(&target) => Ok(()),
            other => other,
        }
    }

    fn list(&mut self) -> anyhow::Result<Vec<Entry>> {
        // The whole table in one call: the elements, and a check that
        // nothing was deleted under the agent.
        let json = nft_output(&format!("list table {TABLE}"), true)?;
        check_complete(&json, self.installed.is_some())?;
        if let Some(n) = counted_decisions(&json) {
            self.decisions.store(n, Ordering::Relaxed);
        }
        let mut entries = parse_list(&json)?;
        self.since_applied(&mut entries);
        Ok(entries)
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        let mut script = format!("flush set {TABLE} {SET4}\nflush set {TABLE} {SET6}\n");
        if self.installed.is_some() {
            script += &format!("flush set {TABLE} decided4\nflush set {TABLE} decided6\n");
        }
        self.counted.clear();
        nft(&script)
    }

    fn remove(&mut self) -> anyhow::Result<()> {
        self.counted.clear();
        nft(&remove_script())
    }

    fn present(&mut self) -> bool {
        nft_output(&format!("list table {TABLE}"), false).is_ok()
    }

    fn restore(&mut self, entries: &[(IpNet, Duration)]) -> anyhow::Result<()> {
        // One script, so the kernel applies every restored block in one
        // transaction.
        self.apply(&by_whole_seconds(entries))
    }

    fn repair(&mut self, _ttl: Duration, entries: &[(IpNet, Duration)]) -> anyhow::Result<bool> {
        // One transaction: the table is never there without its blocks, and
        // a table that was still there (read failed for another reason) is
        // replaced by the same content. The new sets are empty: nothing
        // can overlap but the entries themselves, which the script sorts
        // out, and a plain `add element` makes each (nft 1.0.6 refuses
        // `create element` into a set made in the same transaction: "File
        // exists").
        let script = self.table_script() + &reblock_batch(&by_whole_seconds(entries), &[], false);
        nft(&script).context("cannot re-create table inet tcpwatch")?;
        self.made();
        self.counted.clear();
        Ok(true)
    }

    fn overrule(&mut self, targets: &[IpNet]) -> anyhow::Result<()> {
        let Some(rule) = &self.installed else {
            return Ok(());
        };
        let script = decide::overrule_script(TABLE, targets, rule.ipv6_prefix, &self.holds());
        if script.is_empty() {
            return Ok(());
        }
        nft(&script)
    }

    fn sync_allow(&mut self, nets: &[IpNet]) -> anyhow::Result<()> {
        self.allow = nets.to_vec();
        let Some(rule) = &self.installed else {
            return Ok(());
        };
        if self.synced.as_deref() == Some(nets) {
            return Ok(());
        }
        nft(&decide::sync_allow_script(TABLE, nets, rule.ipv6_prefix))?;
        self.synced = Some(nets.to_vec());
        Ok(())
    }

    fn retune(&mut self, _ttl: Duration, cap: Option<u32>) -> anyhow::Result<()> {
        let Some(rule) = self.rule.as_mut() else {
            return Ok(());
        };
        if rule.cap == cap {
            return Ok(());
        }
        rule.cap = cap;
        self.redecide()
    }

    fn rescan(&mut self, ports: usize, window: Duration, ipv6_prefix: u8) -> anyhow::Result<()> {
        let Some(rule) = self.rule.as_mut() else {
            return Ok(());
        };
        if (rule.ports, rule.window, rule.ipv6_prefix) == (ports, window, ipv6_prefix) {
            return Ok(());
        }
        rule.ports = ports;
        rule.window = window;
        rule.ipv6_prefix = ipv6_prefix;
        match (self.installed.is_some(), rule.unsupported()) {
            (true, Some(why)) => diag::note(format_args!(
                "nftables: every block is decided in userspace: {why}"
            )),
            (false, None) => diag::note("nftables: the table decides scans again"),
            _ => {}
        }
        self.redecide()
    }
}

/// The decisions the table's counter counted, from a listing.
fn counted_decisions(json: &str) -> Option<u64> {
    let doc: serde_json::Value = serde_json::from_str(json).ok()?;
    doc["nftables"]
        .as_array()?
        .iter()
        .filter_map(|o| o.get("counter"))
        .find(|c| c["name"] == decide::COUNTER)?["packets"]
        .as_u64()
}

impl Nftables {
    /// Runs the blocks of `groups` (TTL, targets) as one transaction.
    ///
    /// First as [`create_batch`], which the kernel refuses whole when any
    /// element is already there or overlaps one: new targets are the usual
    /// case (a scan, a restore, a fleet's batch) and cost one transaction
    /// (10,000: 0.1 s). Refused, the sets are read and [`reblock_batch`]
    /// runs, built around what they hold: a new prefix replaces the blocks
    /// inside it, a target inside a blocked prefix is covered, and each
    /// target already there restarts its timeout, in place where the
    /// kernel can ([`restarts_in_place`]), else by `add; delete; add`.
    ///
    /// Why not `add; delete; add` for every target: deleting elements of
    /// an interval set makes nft 1.0.6 rework the set's intervals in
    /// userspace, about 2 ms an element with 10,000 in the set and in the
    /// batch (23 s of CPU in `nft` or in-process libnftables, not in the
    /// kernel: 10,000 re-blocks took 88 s in the agent).
    fn apply(&mut self, groups: &[(Duration, Vec<IpNet>)]) -> anyhow::Result<()> {
        let targets: HashSet<IpNet> = groups
            .iter()
            .flat_map(|(_, t)| t.iter().map(|t| canonical(*t)))
            .collect();
        if nft(&create_batch(groups)).is_ok() {
            // New elements, counting from zero.
            self.counted.retain(|t, _| !targets.contains(t));
            return Ok(());
        }
        let json = nft_output(&format!("list table {TABLE}"), true)?;
        let listed = parse_list(&json)?;
        let held: Vec<IpNet> = listed.iter().map(|e| e.target).collect();
        let in_place = restarts_in_place();
        nft(&reblock_batch(groups, &held, in_place))?;
        self.counted.retain(|t, _| !targets.contains(t));
        if in_place {
            // The counters of the elements updated in place go on: note
            // where they were, so these blocks count from zero.
            for entry in listed.iter().filter(|e| targets.contains(&e.target)) {
                if let Some(packets) = entry.packets {
                    self.counted.insert(entry.target, packets);
                }
            }
        }
        Ok(())
    }

    /// Makes each entry's count the packets since the block was applied:
    /// less what its element had counted when it was re-blocked in place.
    /// A count below that is an element made anew since.
    fn since_applied(&mut self, entries: &mut [Entry]) {
        let listed: HashSet<IpNet> = entries.iter().map(|e| e.target).collect();
        self.counted.retain(|t, _| listed.contains(t));
        for entry in entries {
            let (Some(packets), Some(&before)) = (entry.packets, self.counted.get(&entry.target))
            else {
                continue;
            };
            if packets >= before {
                entry.packets = Some(packets - before);
            } else {
                self.counted.remove(&entry.target);
            }
        }
    }
}

/// Whether this kernel restarts the timeout of an element already in a
/// set when it is added again with `timeout T expires T` (Linux 6.10 and
/// later update an element's timeout and expiry in place; older ones leave
/// it as it was). Probed once per process in a throwaway table: an element
/// made with 60 s left, added again with an hour; restarted when the
/// listing then shows more than half an hour left. A plain `add ...
/// timeout T` with the same T does not restart it (6.18: the kernel
/// updates only what differs). Any failure reads as no.
pub fn restarts_in_place() -> bool {
    static PROBED: OnceLock<bool> = OnceLock::new();
    *PROBED.get_or_init(|| {
        let table = format!("inet tcpwatch_probe{}", std::process::id());
        let restarts = probe(&table).unwrap_or(false);
        let _ = nft(&format!("add table {table}\ndelete table {table}\n"));
        if !restarts {
            diag::note(
                "nftables: this kernel does not restart a set element's timeout in place; \
                 a re-block deletes and adds the element again (slow for thousands)",
            );
        }
        restarts
    })
}

fn probe(table: &str) -> anyhow::Result<bool> {
    let left = || -> anyhow::Result<Option<u64>> {
        let json = nft_output(&format!("list set {table} probe"), true)?;
        let doc: serde_json::Value = serde_json::from_str(&json)?;
        Ok(probe_left(&doc))
    };
    nft(&format!(
        "add table {table}\n\
         add set {table} probe {{ type ipv4_addr; flags interval, timeout; }}\n\
         add element {table} probe {{ 192.0.2.1 timeout 3600s expires 60s }}\n"
    ))?;
    // A kernel that ignores `expires` when it creates an element tells
    // nothing: no.
    if left()?.is_none_or(|s| s > 60) {
        return Ok(false);
    }
    nft(&format!(
        "add element {table} probe {{ 192.0.2.1 timeout 3600s expires 3600s }}\n"
    ))?;
    Ok(left()?.is_some_and(|s| s > 1800))
}

/// The seconds left of the probe's one element, from `nft -j list set`.
fn probe_left(doc: &serde_json::Value) -> Option<u64> {
    doc["nftables"]
        .as_array()?
        .iter()
        .filter_map(|o| o.get("set"))
        .flat_map(|s| s["elem"].as_array().into_iter().flatten())
        .find_map(|e| e["elem"]["expires"].as_u64())
}

/// Whether nft refused a batch because an element overlaps another (nft's
/// own check says so; the kernel's says "File exists").
fn overlaps(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}");
    text.contains("overlaps")
        || text.contains("conflicting intervals")
        || text.contains("File exists")
}

/// The elements of both sets.
fn held() -> anyhow::Result<Vec<IpNet>> {
    let json = nft_output(&format!("list table {TABLE}"), true)?;
    Ok(parse_list(&json)?.into_iter().map(|e| e.target).collect())
}

fn nft(script: &str) -> anyhow::Result<()> {
    nft_output(script, false).map(|_| ())
}

/// In-process through libnftables when it loads (0.1 ms), else the `nft`
/// binary (a process per call, about 16 ms).
fn nft_output(script: &str, json: bool) -> anyhow::Result<String> {
    if let Some(result) = libnft::run(script, json) {
        return result;
    }
    if json {
        // nft 1.0.6 prints nothing for `-j -f -` (a listing read from a
        // file): a one-line command goes as arguments.
        let mut args = vec!["-j"];
        args.extend(script.split_whitespace());
        return exec::run("nft", &args, None);
    }
    exec::run("nft", &["-f", "-"], Some(script))
}

/// Creates the table, replacing one left by a crashed run, in one batch:
/// afterwards there is exactly one table with one rule per family.
pub fn install_script() -> String {
    format!(
        "add table {TABLE}\n\
         delete table {TABLE}\n\
         add table {TABLE}\n\
         add set {TABLE} {SET4} {{ type ipv4_addr; flags interval, timeout; counter; }}\n\
         add set {TABLE} {SET6} {{ type ipv6_addr; flags interval, timeout; counter; }}\n\
         add chain {TABLE} {CHAIN} {{ type filter hook prerouting priority raw; policy accept; }}\n{}",
        drop_rules()
    )
}

/// The drops of the blocked sets: the chain's first rules, so a block
/// userspace applied is counted by its own element.
fn drop_rules() -> String {
    format!(
        "add rule {TABLE} {CHAIN} ip saddr @{SET4} drop\n\
         add rule {TABLE} {CHAIN} ip6 saddr @{SET6} drop\n"
    )
}

/// Removes the table whether or not it exists.
pub fn remove_script() -> String {
    format!("add table {TABLE}\ndelete table {TABLE}\n")
}

/// Blocks every target for `ttl` in one transaction, given the elements
/// the sets hold (`held`; empty when unknown). See [`block_batch`].
pub fn block_script(targets: &[IpNet], ttl: Duration, held: &[IpNet]) -> String {
    block_batch(&[(ttl, targets.to_vec())], held)
}

/// Blocks each group's targets for its TTL, in one transaction.
///
/// - `add; delete; add { timeout }` makes each block idempotent and resets
///   the timeout (and the counter) of a target already there.
/// - Overlaps, which an interval set refuses, are sorted out first: a
///   target inside another target of the batch, or inside a `held`
///   element, is covered and left out; a `held` element inside a target is
///   deleted before the target is added (the prefix replaces it).
pub fn block_batch(groups: &[(Duration, Vec<IpNet>)], held: &[IpNet]) -> String {
    batch(groups, held, |_| How::Reset)
}

/// Each group's targets as `create element` with its TTL, overlaps within
/// the batch sorted out as [`block_batch`] does: one transaction the
/// kernel refuses whole if any element is already in a set.
pub fn create_batch(groups: &[(Duration, Vec<IpNet>)]) -> String {
    batch(groups, &[], |_| How::Create)
}

/// Blocks each group's targets for its TTL given the elements the sets
/// hold (`held`, as listed), overlaps sorted out as [`block_batch`] does.
/// A target not held is added; a held one has its timeout restarted: with
/// `in_place` (see [`restarts_in_place`]) by adding it again with `timeout
/// T expires T`, which the kernel applies to the element there; else by
/// `add; delete; add`.
pub fn reblock_batch(groups: &[(Duration, Vec<IpNet>)], held: &[IpNet], in_place: bool) -> String {
    let there: HashSet<IpNet> = held.iter().map(|h| canonical(*h)).collect();
    batch(groups, held, |t| match (there.contains(t), in_place) {
        (_, true) => How::Restart,
        (true, false) => How::Reset,
        (false, false) => How::Add,
    })
}

/// How a batch writes a target.
#[derive(Clone, Copy, PartialEq, Eq)]
enum How {
    /// `create element { T timeout }`: refused if it is there.
    Create,
    /// `add element { T timeout }`: a new element.
    Add,
    /// `add element { T timeout expires }`: new, or its timeout restarted
    /// in place by a kernel that can.
    Restart,
    /// `add; delete; add { timeout }`: new, or made again.
    Reset,
}

fn batch(groups: &[(Duration, Vec<IpNet>)], held: &[IpNet], how: impl Fn(&IpNet) -> How) -> String {
    let all: Vec<IpNet> = groups
        .iter()
        .flat_map(|(_, targets)| targets.iter().map(|t| canonical(*t)))
        .collect();
    let held: Vec<IpNet> = held.iter().map(|h| canonical(*h)).collect();
    // Only a prefix holds anything but itself: with the prefixes apart,
    // a batch of 10,000 addresses is sorted out in linear time (comparing
    // every target with every other took 0.6 s).
    let prefix = |n: &&IpNet| n.prefix_len() < n.max_prefix_len();
    let wide: Vec<IpNet> = all.iter().chain(&held).filter(prefix).copied().collect();
    let wide_targets: Vec<IpNet> = all.iter().filter(prefix).copied().collect();
    let covered = |t: &IpNet| wide.iter().any(|o| inside(t, o));
    let mut script = String::new();
    let mut seen = HashSet::new();
    // Held elements a new prefix replaces.
    let replaced: Vec<IpNet> = held
        .iter()
        .copied()
        .filter(|h| wide_targets.iter().any(|t| inside(h, t) && !covered(t)))
        .collect();
    for (set, family) in [(SET4, Family::V4), (SET6, Family::V6)] {
        let gone: Vec<IpNet> = replaced
            .iter()
            .copied()
            .filter(|t| Family::of_net(t) == family)
            .collect();
        for chunk in gone.chunks(CHUNK) {
            let plain = join(chunk, "");
            let _ = write!(
                script,
                "add element {TABLE} {set} {{ {plain} }}\n\
                 delete element {TABLE} {set} {{ {plain} }}\n"
            );
        }
    }
    for (ttl, targets) in groups {
        let timeout = nft_time(*ttl);
        for (set, family) in [(SET4, Family::V4), (SET6, Family::V6)] {
            let mine: Vec<IpNet> = targets
                .iter()
                .map(|t| canonical(*t))
                .filter(|t| Family::of_net(t) == family && !covered(t) && seen.insert(*t))
                .collect();
            for kind in [How::Create, How::Add, How::Restart, How::Reset] {
                let these: Vec<IpNet> = mine.iter().copied().filter(|t| how(t) == kind).collect();
                for chunk in these.chunks(CHUNK) {
                    let plain = join(chunk, "");
                    let timed = join(chunk, &format!(" timeout {timeout}"));
                    // Writing to a String cannot fail.
                    let _ = match kind {
                        How::Create => {
                            writeln!(script, "create element {TABLE} {set} {{ {timed} }}")
                        }
                        How::Add => writeln!(script, "add element {TABLE} {set} {{ {timed} }}"),
                        How::Restart => {
                            let restart =
                                join(chunk, &format!(" timeout {timeout} expires {timeout}"));
                            writeln!(script, "add element {TABLE} {set} {{ {restart} }}")
                        }
                        How::Reset => write!(
                            script,
                            "add element {TABLE} {set} {{ {plain} }}\n\
                             delete element {TABLE} {set} {{ {plain} }}\n\
                             add element {TABLE} {set} {{ {timed} }}\n"
                        ),
                    };
                }
            }
        }
    }
    script
}

/// Whether `inner` lies inside `outer` and is not `outer` itself.
fn inside(inner: &IpNet, outer: &IpNet) -> bool {
    inner != outer && outer.contains(inner)
}

/// Lifts a block whether or not it is there.
pub fn unblock_script(target: IpNet) -> String {
    let set = match Family::of_net(&target) {
        Family::V4 => SET4,
        Family::V6 => SET6,
    };
    let ip = show_net(&target);
    format!("add element {TABLE} {set} {{ {ip} }}\ndelete element {TABLE} {set} {{ {ip} }}\n")
}

fn join(targets: &[IpNet], suffix: &str) -> String {
    let items: Vec<String> = targets
        .iter()
        .map(|t| format!("{}{suffix}", show_net(t)))
        .collect();
    items.join(", ")
}

use decide::nft_time;

/// Checks that `nft -j list table inet tcpwatch` shows both sets, the chain
/// and its two rules, and with the kernel's decision (`deciding`) its sets,
/// objects and rules: a part deleted by hand (a flushed chain, a deleted
/// set) is an error, which the agent repairs.
pub fn check_complete(json: &str, deciding: bool) -> anyhow::Result<()> {
    let doc: serde_json::Value =
        serde_json::from_str(json).context("nft -j printed something that is not JSON")?;
    let objects = doc["nftables"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let named = |kind: &str, name: &str| {
        objects
            .iter()
            .any(|o| o.get(kind).is_some_and(|v| v["name"] == name))
    };
    let rules = objects.iter().filter(|o| o.get("rule").is_some()).count();
    let mut missing = Vec::new();
    let decision: &[&str] = if deciding { &decide::SETS } else { &[] };
    for set in [SET4, SET6].iter().chain(decision) {
        if !named("set", set) {
            missing.push(format!("set {set}"));
        }
    }
    if deciding && !named("counter", decide::COUNTER) {
        missing.push(format!("counter {}", decide::COUNTER));
    }
    let wanted = 2 + if deciding { decide::RULES } else { 0 };
    if !named("chain", "prerouting") {
        missing.push("chain prerouting".to_string());
    } else if rules < wanted {
        missing.push("rules of chain prerouting".to_string());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "table {TABLE} is incomplete ({} missing)",
            missing.join(", ")
        )
    }
}

/// Reads the elements of `nft -j list set ...` (or `list table`). An
/// element is `{"elem": {"val": V, "timeout": s, "expires": s, "counter":
/// {"packets": n, "bytes": n}}}`, or a bare `V` for an element added
/// without timeout or counter; `V` is an address (`"10.0.0.2"`) or a prefix
/// (`{"prefix": {"addr": "2001:db8::", "len": 64}}`). Elements of any other
/// shape (ranges) are skipped.
pub fn parse_list(json: &str) -> anyhow::Result<Vec<Entry>> {
    let doc: serde_json::Value =
        serde_json::from_str(json).context("nft -j printed something that is not JSON")?;
    let mut entries = Vec::new();
    let objects = doc["nftables"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    // The blocked sets only: the decision's sets hold other things.
    let blocked = |set: &&serde_json::Value| set["name"] == SET4 || set["name"] == SET6;
    for set in objects.iter().filter_map(|o| o.get("set")).filter(blocked) {
        for elem in set["elem"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let (val, expires, packets) = match elem.get("elem") {
                Some(inner) => (
                    &inner["val"],
                    inner["expires"].as_u64(),
                    inner["counter"]["packets"].as_u64(),
                ),
                None => (elem, None, None),
            };
            let Some(target) = element(val) else {
                continue;
            };
            entries.push(Entry {
                target,
                remaining: expires.map(Duration::from_secs),
                packets,
            });
        }
    }
    Ok(entries)
}

/// An element's value: an address, or a prefix with its host bits clear.
fn element(val: &serde_json::Value) -> Option<IpNet> {
    if let Some(text) = val.as_str() {
        return text.parse::<IpAddr>().ok().map(IpNet::from);
    }
    let prefix = val.get("prefix")?;
    let addr: IpAddr = prefix["addr"].as_str()?.parse().ok()?;
    let len = u8::try_from(prefix["len"].as_u64()?).ok()?;
    let net = IpNet::new(addr, len).ok()?;
    // nft prints prefixes truncated; anything else is not one of ours.
    (net.trunc() == net).then_some(net)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockset::nets;

    #[test]
    fn one_batch_blocks_both_families_idempotently() {
        let script = block_script(
            &nets(&["192.0.2.1", "2001:db8::7", "192.0.2.2"]),
            Duration::from_secs(3600),
            &[],
        );
        assert_eq!(
            script,
            "add element inet tcpwatch blocked4 { 192.0.2.1, 192.0.2.2 }\n\
             delete element inet tcpwatch blocked4 { 192.0.2.1, 192.0.2.2 }\n\
             add element inet tcpwatch blocked4 { 192.0.2.1 timeout 3600s, 192.0.2.2 timeout 3600s }\n\
             add element inet tcpwatch blocked6 { 2001:db8::7 }\n\
             delete element inet tcpwatch blocked6 { 2001:db8::7 }\n\
             add element inet tcpwatch blocked6 { 2001:db8::7 timeout 3600s }\n"
        );
    }

    #[test]
    fn prefixes_are_elements_of_the_same_sets() {
        let script = block_script(
            &nets(&["2001:db8:1:2::9/64", "10.1.0.0/16"]),
            Duration::from_secs(60),
            &[],
        );
        assert_eq!(
            script,
            "add element inet tcpwatch blocked4 { 10.1.0.0/16 }\n\
             delete element inet tcpwatch blocked4 { 10.1.0.0/16 }\n\
             add element inet tcpwatch blocked4 { 10.1.0.0/16 timeout 60s }\n\
             add element inet tcpwatch blocked6 { 2001:db8:1:2::/64 }\n\
             delete element inet tcpwatch blocked6 { 2001:db8:1:2::/64 }\n\
             add element inet tcpwatch blocked6 { 2001:db8:1:2::/64 timeout 60s }\n"
        );
    }

    #[test]
    fn a_prefix_replaces_the_blocks_inside_it() {
        let held = nets(&[
            "2001:db8:1:2::5",
            "2001:db8:1:2::6",
            "2001:db8:9::1",
            "10.0.0.1",
        ]);
        let script = block_script(
            &nets(&["2001:db8:1:2::/64"]),
            Duration::from_secs(60),
            &held,
        );
        assert_eq!(
            script,
            "add element inet tcpwatch blocked6 { 2001:db8:1:2::5, 2001:db8:1:2::6 }\n\
             delete element inet tcpwatch blocked6 { 2001:db8:1:2::5, 2001:db8:1:2::6 }\n\
             add element inet tcpwatch blocked6 { 2001:db8:1:2::/64 }\n\
             delete element inet tcpwatch blocked6 { 2001:db8:1:2::/64 }\n\
             add element inet tcpwatch blocked6 { 2001:db8:1:2::/64 timeout 60s }\n"
        );
    }

    #[test]
    fn targets_inside_a_blocked_or_batched_prefix_are_left_out() {
        // Inside a held prefix: covered, nothing to do.
        let held = nets(&["2001:db8:1:2::/64"]);
        let script = block_script(&nets(&["2001:db8:1:2::5"]), Duration::from_secs(60), &held);
        assert_eq!(script, "");
        // Inside a prefix of the same batch, in another group too.
        let script = block_batch(
            &[
                (
                    Duration::from_secs(5),
                    nets(&["2001:db8:1:2::5", "10.0.0.1"]),
                ),
                (
                    Duration::from_secs(9),
                    nets(&["2001:db8:1:2::/64", "2001:db8:1:2::/64"]),
                ),
            ],
            &[],
        );
        assert!(!script.contains("2001:db8:1:2::5"), "{script}");
        assert_eq!(script.matches("timeout 9s").count(), 1, "{script}");
        assert!(script.contains("{ 10.0.0.1 timeout 5s }"), "{script}");
        // The same target held is refreshed, not left out.
        let held = nets(&["10.0.0.1"]);
        let script = block_script(&nets(&["10.0.0.1"]), Duration::from_secs(60), &held);
        assert!(script.ends_with("{ 10.0.0.1 timeout 60s }\n"), "{script}");
        assert_eq!(script.lines().count(), 3);
    }

    #[test]
    fn sub_second_ttls_are_written_in_ms() {
        let script = block_script(&nets(&["192.0.2.1"]), Duration::from_millis(1500), &[]);
        assert!(
            script.ends_with("{ 192.0.2.1 timeout 1500ms }\n"),
            "{script}"
        );
    }

    #[test]
    fn large_batches_are_chunked_in_one_script() {
        let many: Vec<IpNet> = (0..2500u32)
            .map(|n| IpNet::from(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))))
            .collect();
        let script = block_script(&many, Duration::from_secs(30), &[]);
        assert_eq!(script.lines().count(), 9, "3 chunks x add/delete/add");
        assert_eq!(script.matches("timeout 30s").count(), 2500);
    }

    #[test]
    fn a_create_batch_creates_each_uncovered_target_once_with_its_ttl() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let script = create_batch(&[
            (
                Duration::from_secs(60),
                vec![net("10.0.0.2/32"), net("10.0.0.0/24"), net("fd00:1::/64")],
            ),
            (
                Duration::from_secs(3600),
                vec![net("10.0.0.0/24"), net("192.0.2.7/32")],
            ),
        ]);
        assert_eq!(
            script,
            "create element inet tcpwatch blocked4 { 10.0.0.0/24 timeout 60s }\n\
             create element inet tcpwatch blocked6 { fd00:1::/64 timeout 60s }\n\
             create element inet tcpwatch blocked4 { 192.0.2.7 timeout 3600s }\n"
        );
        assert!(!script.contains("delete") && !script.contains("add element"));
    }

    #[test]
    fn a_reblock_restarts_held_targets_in_place_and_adds_the_others() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let groups = [(
            Duration::from_secs(60),
            vec![net("10.0.0.1/32"), net("10.0.0.2/32"), net("fd00:1::/64")],
        )];
        let held = [net("10.0.0.1/32"), net("fd00:1::/64")];
        assert_eq!(
            reblock_batch(&groups, &held, true),
            "add element inet tcpwatch blocked4 { 10.0.0.1 timeout 60s expires 60s, 10.0.0.2 timeout 60s expires 60s }\n\
             add element inet tcpwatch blocked6 { fd00:1::/64 timeout 60s expires 60s }\n"
        );
        // A kernel that cannot restart in place: the held ones are made
        // again, the new one only added (no delete of an absent element).
        assert_eq!(
            reblock_batch(&groups, &held, false),
            "add element inet tcpwatch blocked4 { 10.0.0.2 timeout 60s }\n\
             add element inet tcpwatch blocked4 { 10.0.0.1 }\n\
             delete element inet tcpwatch blocked4 { 10.0.0.1 }\n\
             add element inet tcpwatch blocked4 { 10.0.0.1 timeout 60s }\n\
             add element inet tcpwatch blocked6 { fd00:1::/64 }\n\
             delete element inet tcpwatch blocked6 { fd00:1::/64 }\n\
             add element inet tcpwatch blocked6 { fd00:1::/64 timeout 60s }\n"
        );
    }

    #[test]
    fn a_reblock_replaces_held_addresses_inside_a_new_prefix_and_skips_covered_ones() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let groups = [(
            Duration::from_secs(30),
            vec![net("10.0.0.0/24"), net("10.9.0.5/32")],
        )];
        let held = [net("10.0.0.7/32"), net("10.9.0.0/16")];
        assert_eq!(
            reblock_batch(&groups, &held, true),
            "add element inet tcpwatch blocked4 { 10.0.0.7 }\n\
             delete element inet tcpwatch blocked4 { 10.0.0.7 }\n\
             add element inet tcpwatch blocked4 { 10.0.0.0/24 timeout 30s expires 30s }\n"
        );
    }

    #[test]
    fn a_reblock_of_ten_thousand_held_addresses_is_one_statement_per_chunk() {
        let many: Vec<IpNet> = (0..10_000u32)
            .map(|n| IpAddr::from(std::net::Ipv4Addr::from(0x0a40_0000 + n)).into())
            .collect();
        let script = reblock_batch(&[(Duration::from_secs(3600), many.clone())], &many, true);
        assert_eq!(script.lines().count(), 10);
        assert_eq!(script.matches("expires 3600s").count(), 10_000);
        assert!(!script.contains("delete"));
    }

    #[test]
    fn the_probe_reads_the_time_left_of_its_element() {
        let doc: serde_json::Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "inet", "name": "probe", "table": "tcpwatch_probe1", "type": "ipv4_addr", "flags": ["interval", "timeout"], "elem": [{"elem": {"val": "192.0.2.1", "timeout": 3600, "expires": 3599}}]}}]}"#,
        )
        .unwrap();
        assert_eq!(probe_left(&doc), Some(3599));
        let empty: serde_json::Value =
            serde_json::from_str(r#"{"nftables": [{"set": {"name": "probe"}}]}"#).unwrap();
        assert_eq!(probe_left(&empty), None);
    }

    #[test]
    fn a_block_restarted_in_place_counts_from_what_its_element_had() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let mut nft = Nftables::new();
        nft.counted.insert(net("10.0.0.1/32"), 40);
        nft.counted.insert(net("10.0.0.2/32"), 40);
        nft.counted.insert(net("10.0.0.3/32"), 5);
        let entry = |t: &str, packets| Entry {
            target: net(t),
            remaining: None,
            packets: Some(packets),
        };
        // .1 dropped 2 since; .2 was made anew (its count below what it
        // had); .3 is gone.
        let mut entries = vec![entry("10.0.0.1/32", 42), entry("10.0.0.2/32", 7)];
        nft.since_applied(&mut entries);
        let counts: Vec<Option<u64>> = entries.iter().map(|e| e.packets).collect();
        assert_eq!(counts, [Some(2), Some(7)]);
        assert_eq!(nft.counted.len(), 1);
    }

    #[test]
    fn install_replaces_a_leftover_table_in_one_batch() {
        let script = install_script();
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(
            lines[..3],
            [
                "add table inet tcpwatch",
                "delete table inet tcpwatch",
                "add table inet tcpwatch"
            ]
        );
        assert!(script.contains(
            "add set inet tcpwatch blocked6 { type ipv6_addr; flags interval, timeout; counter; }"
        ));
        assert!(script.contains("type filter hook prerouting priority raw;"));
        assert_eq!(script.matches("add rule").count(), 2);
        assert!(script.contains("ip saddr @blocked4 drop"));
        assert!(script.contains("ip6 saddr @blocked6 drop"));
    }

    #[test]
    fn unblock_and_remove_succeed_on_absent_objects() {
        assert_eq!(
            unblock_script("2001:db8::7/128".parse().unwrap()),
            "add element inet tcpwatch blocked6 { 2001:db8::7 }\ndelete element inet tcpwatch blocked6 { 2001:db8::7 }\n"
        );
        assert_eq!(
            unblock_script("2001:db8::/64".parse().unwrap()),
            "add element inet tcpwatch blocked6 { 2001:db8::/64 }\ndelete element inet tcpwatch blocked6 { 2001:db8::/64 }\n"
        );
        assert_eq!(
            remove_script(),
            "add table inet tcpwatch\ndelete table inet tcpwatch\n"
        );
    }

    #[test]
    fn overlap_errors_are_recognised() {
        for cause in [
            "nft: Error: interval overlaps with an existing one",
            "nft: Error: Could not process rule: File exists",
            "nft: Error: conflicting intervals specified",
        ] {
            assert!(overlaps(&anyhow::anyhow!("{cause}")), "{cause}");
        }
        assert!(!overlaps(&anyhow::anyhow!("nft: Operation not permitted")));
    }

    #[test]
    fn parses_the_listing_of_nft_1_0_6() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"set": {"family": "inet", "name": "blocked4", "table": "tcpwatch", "type": "ipv4_addr", "handle": 1, "flags": ["timeout"], "elem": [{"elem": {"val": "10.0.0.2", "timeout": 30, "expires": 29}}, "10.0.0.9"]}}]}"#;
        let entries = parse_list(json).unwrap();
        assert_eq!(
            entries,
            [
                Entry::new(nets(&["10.0.0.2"])[0], Some(Duration::from_secs(29))),
                Entry::new(nets(&["10.0.0.9"])[0], None),
            ]
        );
        let empty = r#"{"nftables": [{"metainfo": {}}, {"set": {"name": "blocked6", "type": "ipv6_addr"}}]}"#;
        assert!(parse_list(empty).unwrap().is_empty());
        assert!(parse_list("garbage").is_err());
    }

    #[test]
    fn parses_prefixes_and_counters() {
        // As nft 1.0.6 lists an interval set with counters (kernel 6.18).
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"set": {"family": "inet", "name": "blocked6", "table": "tcpwatch", "type": "ipv6_addr", "handle": 2, "flags": ["interval", "timeout"], "elem": [{"elem": {"val": {"prefix": {"addr": "fd00:1:2:3::", "len": 64}}, "timeout": 3600, "expires": 3599, "counter": {"packets": 97, "bytes": 5820}}}, {"elem": {"val": "fd00:9::1", "counter": {"packets": 0, "bytes": 0}}}, {"elem": {"val": {"range": ["fd00::1", "fd00::5"]}}}, {"elem": {"val": {"prefix": {"addr": "fd00:1:2:3::1", "len": 64}}}}], "stmt": [{"counter": null}]}}]}"#;
        assert_eq!(
            parse_list(json).unwrap(),
            [
                Entry {
                    target: nets(&["fd00:1:2:3::/64"])[0],
                    remaining: Some(Duration::from_secs(3599)),
                    packets: Some(97),
                },
                Entry {
                    target: nets(&["fd00:9::1"])[0],
                    remaining: None,
                    packets: Some(0),
                },
            ]
        );
    }

    #[test]
    fn a_table_missing_a_part_is_incomplete() {
        let set = |name: &str| format!(r#"{{"set": {{"name": "{name}", "table": "tcpwatch"}}}}"#);
        let chain = r#"{"chain": {"name": "prerouting", "table": "tcpwatch"}}"#;
        let rule = r#"{"rule": {"chain": "prerouting", "table": "tcpwatch"}}"#;
        let doc = |parts: &[&str]| format!(r#"{{"nftables": [{}]}}"#, parts.join(", "));
        let (s4, s6) = (set("blocked4"), set("blocked6"));
        check_complete(&doc(&[&s4, &s6, chain, rule, rule]), false).unwrap();
        let err = check_complete(&doc(&[&s4, chain, rule, rule]), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "table inet tcpwatch is incomplete (set blocked6 missing)"
        );
        let err = check_complete(&doc(&[&s4, &s6, chain]), false).unwrap_err();
        assert!(
            err.to_string()
                .contains("(rules of chain prerouting missing)"),
            "{err}"
        );
        // With the table's decision: its sets, counter and rules too.
        let decision: Vec<String> = decide::SETS.iter().map(|n| set(n)).collect();
        let counter = r#"{"counter": {"name": "decisions", "table": "tcpwatch"}}"#;
        let mut parts: Vec<&str> = vec![&s4, &s6, chain, counter];
        parts.extend(decision.iter().map(String::as_str));
        parts.extend(std::iter::repeat_n(rule, 2 + decide::RULES));
        check_complete(&doc(&parts), true).unwrap();
        // A rule of the decision deleted by hand.
        let err = check_complete(&doc(&parts[..parts.len() - 1]), true).unwrap_err();
        assert!(
            err.to_string().contains("rules of chain prerouting"),
            "{err}"
        );
        let without_seen4: Vec<&str> = parts
            .iter()
            .copied()
            .filter(|p| !p.contains("\"seen4\""))
            .collect();
        let err = check_complete(&doc(&without_seen4), true).unwrap_err();
        assert!(err.to_string().contains("(set seen4 missing)"), "{err}");
        // The table of `--nft-decide off` is complete for an agent that
        // does not decide only.
        assert!(check_complete(&doc(&[&s4, &s6, chain, rule, rule]), true).is_err());
        let err = check_complete(&doc(&[]), false).unwrap_err();
        assert!(err
            .to_string()
            .contains("(set blocked4, set blocked6, chain prerouting missing)"));
    }
}
