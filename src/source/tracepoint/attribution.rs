//! Who owns a connection: from the cgroup id the kernel reports to the
//! cgroup's path, from the path to the container and the Kubernetes pod,
//! from the pod's UID to its name and namespace. Pure parsing and bounded
//! caches over the file system; nothing here calls the kernel otherwise.
//!
//! - cgroup id -> path: a cgroup v2 id is the inode number of the cgroup's
//!   directory under the cgroup2 mount (`/sys/fs/cgroup`, or
//!   `/sys/fs/cgroup/unified` on a hybrid host; in a container, the host's
//!   tree mounted read-only, `--cgroup-root`). An unknown id is looked up by
//!   walking the tree, lazily and once: found and not-found answers are both
//!   cached (ids are never reused while the system runs). On cgroup2 ids
//!   are allocated in increasing order and a cgroup is created after its
//!   parent, so every descendant of a directory has a larger id: subtrees
//!   of larger ids are skipped.
//! - path -> container id and pod UID: [`container_id`] and [`pod_uid`],
//!   for the layouts of docker, containerd, cri-o and podman under the
//!   systemd and cgroupfs drivers.
//! - pod UID -> name, namespace: the kubelet keeps each pod's logs under
//!   `/var/log/pods/<namespace>_<name>_<uid>`; no API call is needed.
//!
//! Every cache is bounded; an entry evicted from one is looked up again
//! when next needed (nothing is lost). A piece that cannot be found is left
//! out, never guessed: a pod whose log directory is not there has no `pod`
//! (its UID is still in the cgroup path).

use crate::event::{Owner, Pod};
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where attribution looks.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The cgroup2 mount; `None`: the first in `/proc/self/mountinfo`.
    pub cgroup_root: Option<PathBuf>,
    /// The kubelet's pod log directory.
    pub pod_logs: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            cgroup_root: None,
            pod_logs: PathBuf::from(DEFAULT_POD_LOGS),
        }
    }
}

/// Where the kubelet writes pod logs.
pub const DEFAULT_POD_LOGS: &str = "/var/log/pods";

/// Cache sizes: cgroups, pods and owners of a busy node fit many times over.
const CGROUP_CACHE: usize = 8192;
const POD_CACHE: usize = 4096;
const OWNER_CACHE: usize = 8192;
/// At most this many directories visited per walk: a bound on the cost of
/// one lookup whatever the tree.
const WALK_LIMIT: usize = 100_000;
/// A pod UID not found under the log directory is looked for again after
/// this (the kubelet creates the directory when the pod starts).
const POD_RETRY: Duration = Duration::from_secs(10);

/// What the kernel says of a socket's owner, as a record carries it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Traits {
    pub netns: Option<u64>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup_id: Option<u64>,
}

/// The attribution caches; one per source.
pub struct Attribution {
    cgroups: Option<CgroupPaths>,
    pods: PodDirectory,
    /// Owners already built, shared by the connections they own.
    owners: Bounded<Traits, Arc<Owner>>,
}

impl Attribution {
    /// Attribution through `paths`. Without a cgroup2 mount (none in
    /// mountinfo) cgroup paths, containers and pods are left out;
    /// [`Attribution::cgroup_root`] says so.
    pub fn new(paths: &Paths) -> Attribution {
        let root = paths
            .cgroup_root
            .clone()
            .or_else(|| crate::os::fs::mount_points("cgroup2").into_iter().next());
        Attribution::with(root, paths.pod_logs.clone(), POD_RETRY)
    }

    /// Attribution over a cgroup tree at `cgroup_root` (any directory tree:
    /// ids are inode numbers; only a real cgroup2 mount has them in
    /// creation order) and a pod log directory, rescanned for an unknown
    /// pod at most once per `pod_retry`.
    pub fn with(
        cgroup_root: Option<PathBuf>,
        pod_logs: PathBuf,
        pod_retry: Duration,
    ) -> Attribution {
        Attribution {
            cgroups: cgroup_root.map(|root| {
                let ordered = crate::os::fs::is_cgroup2(&root);
                CgroupPaths::new(root, ordered)
            }),
            pods: PodDirectory::new(pod_logs, pod_retry),
            owners: Bounded::new(OWNER_CACHE),
        }
    }

    /// The cgroup tree in use, if any.
    pub fn cgroup_root(&self) -> Option<&Path> {
        self.cgroups.as_ref().map(|c| c.root.as_path())
    }

    /// Everything known of the owner of a socket, shared with the other
    /// connections of the same owner.
    pub fn owner(&mut self, traits: Traits) -> Arc<Owner> {
        if let Some(owner) = self.owners.get(&traits) {
            return owner.clone();
        }
        let cgroup = match (traits.cgroup_id, self.cgroups.as_mut()) {
            (Some(id), Some(cgroups)) => cgroups.path(id),
            _ => None,
        };
        let container_id = cgroup.as_deref().and_then(container_id);
        let pod = cgroup
            .as_deref()
            .and_then(pod_uid)
            .and_then(|uid| self.pods.pod(&uid));
        let owner = Arc::new(Owner {
            netns: traits.netns,
            pid: traits.pid,
            comm: traits.comm.clone(),
            cgroup,
            container_id,
            pod,
        });
        // A pod not named yet may be named at the next lookup: not kept.
        let unnamed_pod =
            owner.pod.is_none() && owner.cgroup.as_deref().and_then(pod_uid).is_some();
        if !unnamed_pod {
            self.owners.insert(traits, owner.clone());
        }
        owner
    }
}

// ---------------------------------------------------------------------------
// A bounded map

/// A map of at most `capacity` entries; the oldest entry goes first.
struct Bounded<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    fn new(capacity: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    fn insert(&mut self, key: K, value: V) {
        if self.map.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
            if self.order.len() > self.capacity {
                if let Some(oldest) = self.order.pop_front() {
                    self.map.remove(&oldest);
                }
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

// ---------------------------------------------------------------------------
// cgroup id -> path

/// cgroup id -> path under one cgroup2 mount, cached.
pub struct CgroupPaths {
    root: PathBuf,
    /// Whether ids grow with creation (true on cgroup2), so a walk may skip
    /// the subtrees of directories with larger ids than the one sought.
    ordered_ids: bool,
    known: Bounded<u64, Option<String>>,
    walks: u64,
}

impl CgroupPaths {
    pub fn new(root: PathBuf, ordered_ids: bool) -> CgroupPaths {
        CgroupPaths {
            root,
            ordered_ids,
            known: Bounded::new(CGROUP_CACHE),
            walks: 0,
        }
    }

    /// The path of cgroup `id` relative to the mount (`/` for the root,
    /// `/docker/<id>`), or `None` when no directory has that id (the cgroup
    /// is gone, or outside this mount's view).
    pub fn path(&mut self, id: u64) -> Option<String> {
        if let Some(known) = self.known.get(&id) {
            return known.clone();
        }
        let found = self.walk(id);
        self.known.insert(id, found.clone());
        found
    }

    /// How many walks the cache could not spare (for tests and metrics).
    pub fn walks(&self) -> u64 {
        self.walks
    }

    fn walk(&mut self, id: u64) -> Option<String> {
        self.walks += 1;
        if std::fs::metadata(&self.root).ok()?.ino() == id {
            return Some("/".to_string());
        }
        let mut stack = vec![(self.root.clone(), String::new())];
        let mut visited = 0usize;
        while let Some((dir, rel)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                visited += 1;
                if visited > WALK_LIMIT {
                    return None;
                }
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let ino = entry.ino();
                let path = format!("{rel}/{name}");
                if ino == id {
                    return Some(path);
                }
                if !self.ordered_ids || ino < id {
                    stack.push((entry.path(), path));
                }
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------
// path -> container id, pod UID

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// A pod UID: a UUID (`8-4-4-4-12` hex digits), or the 32 hex digits the
/// kubelet gives a static pod.
fn is_pod_uid(s: &str) -> bool {
    if is_hex(s, 32) {
        return true;
    }
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| is_hex(g, len))
}

/// The components of a cgroup path, with containerd's `slice:prefix:name`
/// form (seen when a systemd-style cgroupsPath is used without systemd)
/// split at its colons.
fn components(path: &str) -> impl DoubleEndedIterator<Item = &str> {
    path.split('/')
        .flat_map(|c| c.split(':'))
        .filter(|c| !c.is_empty())
}

/// The container id in a cgroup path: the innermost (last) of
///
/// - a systemd scope `docker-<id>.scope`, `cri-containerd-<id>.scope`,
///   `crio-<id>.scope`, `libpod-<id>.scope` (cri-o's and podman's `-conmon-`
///   scopes hold the runtime monitor, not the container: not matched);
/// - containerd's `...slice:cri-containerd:<id>` and cri-o's `crio-<id>`
///   without `.scope`;
/// - a bare `<id>` directly under `docker` (docker, cgroupfs driver:
///   `/docker/<id>`) or under a pod's `pod<uid>` directory (kubelet with the
///   cgroupfs driver: `/kubepods/<qos>/pod<uid>/<id>`).
///
/// `<id>` is 64 hex digits. Anything else is no container.
pub fn container_id(path: &str) -> Option<String> {
    let parts: Vec<&str> = components(path).collect();
    for (i, part) in parts.iter().enumerate().rev() {
        let part = part.strip_suffix(".scope").unwrap_or(part);
        let scoped = ["docker-", "cri-containerd-", "crio-", "libpod-"]
            .iter()
            .find_map(|prefix| part.strip_prefix(prefix));
        if let Some(id) = scoped.filter(|id| is_hex(id, 64)) {
            return Some(id.to_string());
        }
        if is_hex(part, 64) && i > 0 {
            let parent = parts[i - 1];
            let in_pod = parent.strip_prefix("pod").is_some_and(is_pod_uid)
                && parts[..i].iter().any(|p| p.starts_with("kubepods"));
            if parent == "docker" || parent == "cri-containerd" || in_pod {
                return Some(part.to_string());
            }
        }
    }
    None
}

/// The pod UID in a cgroup path (with dashes), from
///
/// - the systemd driver's slice `kubepods[-<qos>]-pod<uid>.slice`, where the
///   UID's dashes are written as underscores (also under a custom root,
///   `kubelet-kubepods-...-pod<uid>.slice`);
/// - the cgroupfs driver's `pod<uid>` directory below a `kubepods` one
///   (`/kubepods/besteffort/pod<uid>/...`).
pub fn pod_uid(path: &str) -> Option<String> {
    let parts: Vec<&str> = components(path).collect();
    for (i, part) in parts.iter().enumerate() {
        if let Some(slice) = part.strip_suffix(".slice") {
            if let Some((prefix, uid)) = slice.rsplit_once("-pod") {
                let uid = uid.replace('_', "-");
                if prefix.contains("kubepods") && is_pod_uid(&uid) {
                    return Some(uid);
                }
            }
        } else if let Some(uid) = part.strip_prefix("pod") {
            if is_pod_uid(uid) && parts[..i].iter().any(|p| p.starts_with("kubepods")) {
                return Some(uid.to_string());
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------
// pod UID -> name, namespace

/// `<namespace>_<name>_<uid>`, a directory of the kubelet's pod logs, as
/// (namespace, name, uid). Namespaces and pod names are DNS names: they
/// hold no underscore, so the split is exact.
pub fn parse_pod_log_dir(entry: &str) -> Option<(String, String, String)> {
    let mut parts = entry.split('_');
    let (namespace, name, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || namespace.is_empty() || name.is_empty() || !is_pod_uid(uid) {
        return None;
    }
    Some((namespace.to_string(), name.to_string(), uid.to_string()))
}

/// Pod names by UID from the kubelet's log directory, cached.
pub struct PodDirectory {
    root: PathBuf,
    known: Bounded<String, (String, String)>,
    missing: Bounded<String, Instant>,
    retry: Duration,
    scans: u64,
}

impl PodDirectory {
    pub fn new(root: PathBuf, retry: Duration) -> PodDirectory {
        PodDirectory {
            root,
            known: Bounded::new(POD_CACHE),
            missing: Bounded::new(POD_CACHE),
            retry,
            scans: 0,
        }
    }

    /// The pod `uid` with its name and namespace, when the log directory
    /// has them. A miss rescans the directory, at most once per `retry` for
    /// the same UID.
    pub fn pod(&mut self, uid: &str) -> Option<Pod> {
        let uid = uid.to_string();
        if self.known.get(&uid).is_none() {
            let recently_missed = self
                .missing
                .get(&uid)
                .is_some_and(|at| at.elapsed() < self.retry);
            if !recently_missed {
                self.scan();
                if self.known.get(&uid).is_none() {
                    self.missing.insert(uid.clone(), Instant::now());
                }
            }
        }
        let (namespace, name) = self.known.get(&uid).cloned()?;
        Some(Pod {
            name,
            namespace,
            uid,
        })
    }

    /// How many times the directory was read (for tests).
    pub fn scans(&self) -> u64 {
        self.scans
    }

    fn scan(&mut self) {
        self.scans += 1;
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if let Some((namespace, name, uid)) = name.to_str().and_then(parse_pod_log_dir) {
                if self.known.get(&uid).is_none() {
                    self.known.insert(uid, (namespace, name));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER_ID: &str = "56a9cee1b4947a1c6a057ed14cd157cdc02b0ca276f1a0f7a2691c4f1ec29ef4";
    const ID: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    const UID: &str = "6c3f3d2e-1b7a-4d0e-9a3b-2f8c1d5e7a90";
    const UID_: &str = "6c3f3d2e_1b7a_4d0e_9a3b_2f8c1d5e7a90";

    /// The unified-hierarchy line of a docker container's /proc/PID/cgroup,
    /// captured on a Debian 12 host (docker.io 28, cgroupfs driver, cgroup
    /// v1 hybrid: cgroup2 at /sys/fs/cgroup/unified).
    fn captured_docker_path() -> String {
        let text = include_str!("../../../tests/fixtures/cgroup/docker-cgroupfs-v1-hybrid.txt");
        text.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("a 0:: line")
            .to_string()
    }

    #[test]
    fn container_ids_of_every_layout() {
        let cases = [
            // docker, cgroupfs driver (the captured host)
            (captured_docker_path(), Some(DOCKER_ID)),
            (format!("/docker/{ID}"), Some(ID)),
            // a process in a sub-cgroup of the container (systemd inside)
            (format!("/docker/{ID}/init.scope"), Some(ID)),
            // docker, systemd driver
            (format!("/system.slice/docker-{ID}.scope"), Some(ID)),
            // containerd and cri-o under the kubelet, systemd driver
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                Some(ID),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-{ID}.scope"),
                Some(ID),
            ),
            // cri-o's monitor process is not the container
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope"),
                None,
            ),
            // containerd's systemd-style path without systemd
            (
                format!("/system.slice/containerd.service/kubepods-besteffort-pod{UID_}.slice:cri-containerd:{ID}"),
                Some(ID),
            ),
            // the kubelet's cgroupfs driver, with and without a QoS level
            (format!("/kubepods/besteffort/pod{UID}/{ID}"), Some(ID)),
            (format!("/kubepods/pod{UID}/{ID}"), Some(ID)),
            (format!("/kubepods/burstable/pod{UID}/crio-{ID}"), Some(ID)),
            // podman
            (format!("/machine.slice/libpod-{ID}.scope/container"), Some(ID)),
            // docker in docker: the innermost
            (format!("/docker/{DOCKER_ID}/docker/{ID}"), Some(ID)),
            // not containers
            ("/".to_string(), None),
            ("/user.slice/user-0.slice/session-3.scope".to_string(), None),
            ("/system.slice/docker.service".to_string(), None),
            (format!("/kubepods/burstable/pod{UID}"), None),
            (format!("/somewhere/{ID}"), None),
            (format!("/docker/{}", &ID[..63]), None),
            (format!("/docker/{}g", &ID[..63]), None),
            (format!("/system.slice/docker-{ID}x.scope"), None),
        ];
        for (path, want) in cases {
            assert_eq!(container_id(&path).as_deref(), want, "{path}");
        }
    }

    #[test]
    fn pod_uids_of_every_layout() {
        let static_uid = "b4f9c2e8a1d34f6e9c0b7a5d3e2f1a08";
        let cases = [
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"), Some(UID)),
            (format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-{ID}.scope"), Some(UID)),
            (format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"), Some(UID)),
            (format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"), Some(UID)),
            (format!("/system.slice/containerd.service/kubepods-besteffort-pod{UID_}.slice:cri-containerd:{ID}"), Some(UID)),
            (format!("/kubepods/besteffort/pod{UID}/{ID}"), Some(UID)),
            (format!("/kubepods/pod{UID}/{ID}"), Some(UID)),
            (format!("/kubepods/burstable/pod{static_uid}/{ID}"), Some(static_uid)),
            (format!("/kubepods.slice/kubepods-pod{static_uid}.slice/cri-containerd-{ID}.scope"), Some(static_uid)),
            (captured_docker_path(), None),
            (format!("/pods/pod{UID}/{ID}"), None),
            (format!("/kubepods/burstable/pod{}", &UID[..35]), None),
            ("/kubepods.slice/kubepods-burstable.slice".to_string(), None),
        ];
        for (path, want) in cases {
            assert_eq!(pod_uid(&path).as_deref(), want, "{path}");
        }
    }

    #[test]
    fn pod_log_directories() {
        assert_eq!(
            parse_pod_log_dir(&format!("kube-system_coredns-5d78c9869d-8xk2p_{UID}")),
            Some((
                "kube-system".into(),
                "coredns-5d78c9869d-8xk2p".into(),
                UID.into()
            ))
        );
        let static_uid = "b4f9c2e8a1d34f6e9c0b7a5d3e2f1a08";
        assert_eq!(
            parse_pod_log_dir(&format!("kube-system_kube-apiserver-node-1_{static_uid}"))
                .map(|p| p.1),
            Some("kube-apiserver-node-1".into())
        );
        for bad in [
            "".to_string(),
            "default_web".to_string(),
            format!("default_web_{UID}_x"),
            format!("_web_{UID}"),
            format!("default__{UID}"),
            "default_web_not-a-uid".to_string(),
        ] {
            assert_eq!(parse_pod_log_dir(&bad), None, "{bad}");
        }
    }

    #[test]
    fn pods_from_a_log_directory_and_rescans_bounded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(format!("shop_web-7f9c_{UID}"))).unwrap();
        std::fs::create_dir(dir.path().join("not-a-pod")).unwrap();
        let mut pods = PodDirectory::new(dir.path().to_path_buf(), Duration::from_secs(3600));
        let web = pods.pod(UID).unwrap();
        assert_eq!(web.name, "web-7f9c");
        assert_eq!(web.namespace, "shop");
        assert_eq!(web.uid, UID);
        assert_eq!(pods.scans(), 1);
        assert_eq!(pods.pod(UID), Some(web));
        assert_eq!(pods.scans(), 1, "a known pod is not looked up again");

        // Unknown: one scan, then not again before the retry time.
        let other = "11111111-2222-3333-4444-555555555555";
        assert_eq!(pods.pod(other), None);
        assert_eq!(pods.scans(), 2);
        std::fs::create_dir(dir.path().join(format!("shop_db-0_{other}"))).unwrap();
        assert_eq!(pods.pod(other), None);
        assert_eq!(pods.scans(), 2);

        // With no retry delay the new directory is found.
        let mut eager = PodDirectory::new(dir.path().to_path_buf(), Duration::ZERO);
        assert_eq!(eager.pod(other).map(|p| p.name).as_deref(), Some("db-0"));

        // No directory at all: no pod.
        let mut none = PodDirectory::new(dir.path().join("absent"), Duration::ZERO);
        assert_eq!(none.pod(UID), None);
    }

    fn ino(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn cgroup_paths_by_walking_a_tree_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let container = root
            .join("kubepods/burstable")
            .join(format!("pod{UID}"))
            .join(ID);
        std::fs::create_dir_all(&container).unwrap();
        std::fs::create_dir_all(root.join("system.slice/sshd.service")).unwrap();
        std::fs::write(root.join("cgroup.procs"), "").unwrap();
        // A plain filesystem's inode numbers are not ordered: no pruning.
        let mut paths = CgroupPaths::new(root.to_path_buf(), false);
        let want = format!("/kubepods/burstable/pod{UID}/{ID}");
        assert_eq!(paths.path(ino(&container)).as_deref(), Some(want.as_str()));
        assert_eq!(paths.path(ino(root)).as_deref(), Some("/"));
        assert_eq!(paths.walks(), 2);
        assert_eq!(paths.path(ino(&container)).as_deref(), Some(want.as_str()));
        assert_eq!(paths.walks(), 2, "cached");
        // A file's inode is no cgroup; an unknown id is cached as unknown.
        assert_eq!(paths.path(ino(&root.join("cgroup.procs"))), None);
        assert_eq!(paths.path(u64::MAX), None);
        assert_eq!(paths.path(u64::MAX), None);
        assert_eq!(paths.walks(), 4);
    }

    #[test]
    fn caches_are_bounded() {
        let mut cache = Bounded::new(3);
        for i in 0..10u64 {
            cache.insert(i, i * 2);
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&9), Some(&18));
        assert_eq!(cache.get(&6), None);
        cache.insert(9, 0);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&9), Some(&0));
    }

    fn traits(pid: Option<u32>, comm: Option<&str>, cgroup_id: Option<u64>) -> Traits {
        Traits {
            netns: Some(4026531840),
            pid,
            comm: comm.map(str::to_string),
            cgroup_id,
        }
    }

    #[test]
    fn owners_from_a_tree_and_a_log_directory() {
        let cgroups = tempfile::tempdir().unwrap();
        let logs = tempfile::tempdir().unwrap();
        let slice = format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope");
        let container = cgroups.path().join(&slice);
        std::fs::create_dir_all(&container).unwrap();
        let mut attribution = Attribution::with(
            Some(cgroups.path().to_path_buf()),
            logs.path().to_path_buf(),
            Duration::ZERO,
        );
        let nginx = traits(Some(7), Some("nginx"), Some(ino(&container)));
        // The pod's log directory is not there yet: the pod is left out,
        // and the owner is not cached without it.
        let early = attribution.owner(nginx.clone());
        assert_eq!(early.pod, None);
        assert_eq!(early.container_id.as_deref(), Some(ID));
        std::fs::create_dir(logs.path().join(format!("shop_web-0_{UID}"))).unwrap();
        let owner = attribution.owner(nginx.clone());
        assert_eq!(
            *owner,
            Owner {
                netns: Some(4026531840),
                pid: Some(7),
                comm: Some("nginx".into()),
                cgroup: Some(format!("/{slice}")),
                container_id: Some(ID.into()),
                pod: Some(Pod {
                    name: "web-0".into(),
                    namespace: "shop".into(),
                    uid: UID.into(),
                }),
            }
        );
        assert!(Arc::ptr_eq(&owner, &attribution.owner(nginx)), "cached");
        // Only a pid: the rest omitted.
        let bare = attribution.owner(traits(Some(8), None, None));
        assert_eq!((bare.pid, bare.cgroup.as_deref()), (Some(8), None));
        let unknown = attribution.owner(traits(None, None, Some(u64::MAX)));
        assert_eq!(
            (unknown.pid, unknown.cgroup.as_deref(), unknown.netns),
            (None, None, Some(4026531840))
        );
    }

    #[test]
    fn the_real_cgroup2_tree_when_there_is_one() {
        // On a host with cgroup2 mounted: its root is "/", and the pruned
        // walk finds a directory of it by its inode.
        let Some(root) = crate::os::fs::mount_points("cgroup2").into_iter().next() else {
            return;
        };
        let mut paths = CgroupPaths::new(root.clone(), true);
        assert_eq!(paths.path(ino(&root)).as_deref(), Some("/"));
        let mut deepest = None;
        let mut dir = root.clone();
        while let Some(child) = std::fs::read_dir(&dir)
            .ok()
            .and_then(|mut e| e.find_map(|e| e.ok().filter(|e| e.path().is_dir())))
        {
            dir = child.path();
            deepest = Some(dir.clone());
        }
        if let Some(deepest) = deepest {
            let want = format!("/{}", deepest.strip_prefix(&root).unwrap().display());
            assert_eq!(paths.path(ino(&deepest)), Some(want));
        }
    }
}
