//! Listeners older than the program: the program learns a listener's owner
//! when the owner calls listen(), so a server that was listening before the
//! agent started would have no process on its inbound connections. At
//! start-up the owners of the listening sockets already open are read from
//! `/proc` and handed to the program, once per listener:
//!
//! - each process's network namespace (`/proc/PID/ns/net`), its sockets
//!   (`/proc/PID/fd/*` -> `socket:[INODE]`), its parent and command name;
//! - each namespace's listening sockets with their inodes, from the
//!   `/proc/PID/net/tcp{,6}` of one of its processes;
//! - a listening socket's owner is the one process holding it whose parent
//!   does not hold it (a server that forked workers after listen() is the
//!   parent; the workers inherited it). When that is not one process, or
//!   several sockets listen on the same address (`SO_REUSEPORT`) with
//!   different owners, the owner is left unknown, never guessed.
//!
//! Reading another user's (or a more privileged process's) `/proc/PID/fd`
//! and `ns/net` takes `CAP_SYS_PTRACE`; the processes that could not be
//! read are counted (a few may stay unreadable even with it, such as a
//! sandbox's supervisor).

use crate::bpf::tcpstate::{ListenerKey, OwnerValue};
use crate::event::TcpState;
use crate::source::procfs::parse_table;
use std::collections::{BTreeMap, HashMap};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What the walk of `/proc` found.
#[derive(Debug, Default)]
pub struct Found {
    /// Listening sockets and their owners.
    pub listeners: Vec<(ListenerKey, OwnerValue)>,
    /// Processes whose sockets or namespace could not be read.
    pub unreadable: usize,
}

/// One process, as far as it could be read.
struct Process {
    ppid: u32,
    comm: String,
}

/// Walks `proc_root` (`/proc`) for the listening sockets open now.
pub fn existing(proc_root: &Path) -> Found {
    let mut found = Found::default();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return found;
    };
    let mut processes: HashMap<u32, Process> = HashMap::new();
    // socket inode -> the processes holding it
    let mut holders: HashMap<u64, Vec<u32>> = HashMap::new();
    // network namespace -> a process in it, to read its tables through
    let mut namespaces: BTreeMap<u64, u32> = BTreeMap::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let netns = match std::fs::metadata(dir.join("ns/net")) {
            Ok(meta) => meta.ino(),
            Err(e) => {
                found.unreadable += usize::from(e.kind() == ErrorKind::PermissionDenied);
                continue;
            }
        };
        let fds = match std::fs::read_dir(dir.join("fd")) {
            Ok(fds) => fds,
            Err(e) => {
                found.unreadable += usize::from(e.kind() == ErrorKind::PermissionDenied);
                continue;
            }
        };
        let mut sockets = 0;
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if let Some(inode) = socket_inode(&target.to_string_lossy()) {
                holders.entry(inode).or_default().push(pid);
                sockets += 1;
            }
        }
        if sockets == 0 {
            continue;
        }
        namespaces.entry(netns).or_insert(pid);
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if let Some(ppid) = parent(&stat) {
            let comm = comm.trim_end_matches('\n').to_string();
            processes.insert(pid, Process { ppid, comm });
        }
    }
    // (namespace, address) -> the owners of the sockets listening there
    let mut owners: BTreeMap<(u64, SocketAddr), Vec<Option<u32>>> = BTreeMap::new();
    for (&netns, &pid) in &namespaces {
        for table in ["tcp", "tcp6"] {
            let path = proc_root.join(pid.to_string()).join("net").join(table);
            let Ok(text) = std::fs::read_to_string(path) else {
                continue;
            };
            let Ok(sockets) = parse_table(&text) else {
                continue;
            };
            for socket in sockets {
                if socket.state != TcpState::Listen || socket.inode == 0 {
                    continue;
                }
                let owner = holders
                    .get(&socket.inode)
                    .and_then(|pids| owner_of(pids, &processes));
                owners.entry((netns, socket.local)).or_default().push(owner);
            }
        }
    }
    for ((netns, addr), candidates) in owners {
        let first = candidates[0];
        let Some(pid) = first.filter(|_| candidates.iter().all(|c| *c == first)) else {
            continue;
        };
        let comm = processes.get(&pid).map_or("", |p| p.comm.as_str());
        found
            .listeners
            .push((ListenerKey::of(netns, addr), OwnerValue::process(pid, comm)));
    }
    found
}

/// The inode of a `socket:[INODE]` link target.
fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The parent pid in a `/proc/PID/stat` text: the second field after the
/// command name, which is in parentheses and may hold spaces and `)`.
fn parent(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The one holder of a socket whose parent does not hold it.
fn owner_of(holders: &[u32], processes: &HashMap<u32, Process>) -> Option<u32> {
    let mut roots = holders.iter().copied().filter(|pid| {
        processes
            .get(pid)
            .is_some_and(|p| !holders.contains(&p.ppid))
    });
    let root = roots.next()?;
    roots.next().is_none().then_some(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 100 0 0 10 0
   2: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 100 0 0 10 0
   3: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1004 1 0000000000000000 100 0 0 10 0
   4: 0100007F:1F90 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 1005 1 0000000000000000 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1006 1 0000000000000000 100 0 0 10 0
";

    /// A process directory of a fake /proc: its namespace file, stat, comm
    /// and sockets.
    fn process(root: &Path, pid: u32, ppid: u32, comm: &str, netns: &Path, sockets: &[u64]) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(dir.join("fd")).unwrap();
        std::fs::create_dir_all(dir.join("ns")).unwrap();
        std::fs::create_dir_all(dir.join("net")).unwrap();
        symlink(netns, dir.join("ns/net")).unwrap();
        std::fs::write(dir.join("stat"), format!("{pid} ({comm}) S {ppid} 1 1 0")).unwrap();
        std::fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
        std::fs::write(dir.join("net/tcp"), TCP).unwrap();
        std::fs::write(dir.join("net/tcp6"), TCP6).unwrap();
        for (fd, inode) in sockets.iter().enumerate() {
            symlink(
                format!("socket:[{inode}]"),
                dir.join("fd").join(fd.to_string()),
            )
            .unwrap();
        }
        symlink("/dev/null", dir.join("fd/99")).unwrap();
    }

    #[test]
    fn owners_of_the_listeners_open_now() {
        let root = tempfile::tempdir().unwrap();
        let netns = root.path().join("netns-file");
        std::fs::write(&netns, "").unwrap();
        let inode = std::fs::metadata(&netns).unwrap().ino();
        // A server that forked two workers after listen(): the parent owns
        // 0.0.0.0:8080 and [::]:443.
        process(root.path(), 10, 1, "nginx", &netns, &[1001, 1006]);
        process(root.path(), 11, 10, "nginx", &netns, &[1001, 1006]);
        process(root.path(), 12, 10, "nginx", &netns, &[1001, 1006]);
        // Two unrelated processes holding one socket: ambiguous.
        process(root.path(), 20, 1, "sshd", &netns, &[1002]);
        process(root.path(), 21, 1, "other", &netns, &[1002]);
        // SO_REUSEPORT: two sockets on 127.0.0.1:80, two owners.
        process(root.path(), 30, 1, "web-a", &netns, &[1003]);
        process(root.path(), 31, 1, "web-b", &netns, &[1004]);
        std::fs::create_dir(root.path().join("self-not-a-pid")).unwrap();
        let found = existing(root.path());
        assert_eq!(found.unreadable, 0);
        let mut got: Vec<(u16, u16, u32, String)> = found
            .listeners
            .iter()
            .map(|(k, o)| {
                assert_eq!(k.netns, inode);
                let len = o.comm.iter().position(|&c| c == 0).unwrap();
                let comm = String::from_utf8_lossy(&o.comm[..len]).into_owned();
                (k.port, k.family, o.pid, comm)
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                (443, 6, 10, "nginx".to_string()),
                (8080, 4, 10, "nginx".to_string())
            ]
        );
    }

    #[test]
    fn stat_and_link_parsing() {
        assert_eq!(parent("42 (a b) c)) S 7 42 42 0"), Some(7));
        assert_eq!(parent("42 (x)"), None);
        assert_eq!(parent(""), None);
        assert_eq!(socket_inode("socket:[31337]"), Some(31337));
        assert_eq!(socket_inode("pipe:[31337]"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
    }

    #[test]
    fn the_real_proc_is_read_without_panicking() {
        let found = existing(Path::new("/proc"));
        for (key, _) in &found.listeners {
            assert!(key.family == 4 || key.family == 6);
        }
    }
}
