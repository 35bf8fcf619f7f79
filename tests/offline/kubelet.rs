//! Kubernetes naming by the tracepoint source's attribution code, against
//! the directory layouts a node really has (`tests/fixtures/kubelet/`):
//! - the kubelet's pod log directory, `/var/log/pods/<namespace>_<pod>_<uid>/
//!   <container>/<restart>.log`, one directory per pod, for a Deployment
//!   pod, a static pod (its UID is 32 hex digits), a StatefulSet pod with
//!   two containers (one restarted) and a pod of a dashed namespace;
//! - the cgroup2 tree of the same node, the pods' containers under the
//!   systemd driver (containerd's `cri-containerd-<id>.scope`, cri-o's
//!   `crio-<id>.scope` beside its `crio-conmon-` monitor) and under the
//!   cgroupfs driver (`kubepods/<qos>/pod<uid>/<id>`), a pod whose log
//!   directory is gone, and the node's own services.
//!
//! A cgroup id is the inode of the cgroup's directory, so the fixture's
//! directory inodes stand in for the ids the kernel reports.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tcpwatch::event::{Owner, Pod};
use tcpwatch::source::tracepoint::attribution::{Attribution, Traits};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kubelet")
}

fn attribution() -> Attribution {
    let root = fixture();
    Attribution::with(
        Some(root.join("sys/fs/cgroup")),
        root.join("var/log/pods"),
        Duration::ZERO,
    )
}

/// The owner of a socket whose cgroup is directory `cgroup` of the tree.
fn owner_of(attribution: &mut Attribution, cgroup: &str) -> Owner {
    let dir = fixture().join("sys/fs/cgroup").join(cgroup);
    let id = std::fs::metadata(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .ino();
    let owner = attribution.owner(Traits {
        netns: Some(4026532500),
        pid: Some(4242),
        comm: Some("server".into()),
        cgroup_id: Some(id),
    });
    (*owner).clone()
}

fn pod(namespace: &str, name: &str, uid: &str) -> Option<Pod> {
    Some(Pod {
        name: name.into(),
        namespace: namespace.into(),
        uid: uid.into(),
    })
}

#[test]
fn pods_and_containers_are_named_from_the_nodes_directories() {
    let mut attribution = attribution();
    let cases = [
        (
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6c3f3d2e_1b7a_4d0e_9a3b_2f8c1d5e7a90.slice/cri-containerd-0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0.scope",
            Some("0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"),
            pod("kube-system", "coredns-5d78c9869d-8xk2p", "6c3f3d2e-1b7a-4d0e-9a3b-2f8c1d5e7a90"),
        ),
        (
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podb4f9c2e8a1d34f6e9c0b7a5d3e2f1a08.slice/cri-containerd-a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90.scope",
            Some("a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"),
            pod("kube-system", "kube-apiserver-node-1", "b4f9c2e8a1d34f6e9c0b7a5d3e2f1a08"),
        ),
        (
            "kubepods.slice/kubepods-pod1d2c3b4a_5e6f_4a7b_8c9d_0e1f2a3b4c5d.slice/crio-3c2b1a09f8e7d6c5b4a3928170f6e5d43c2b1a09f8e7d6c5b4a3928170f6e5d4.scope",
            Some("3c2b1a09f8e7d6c5b4a3928170f6e5d43c2b1a09f8e7d6c5b4a3928170f6e5d4"),
            pod("shop", "web-0", "1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d"),
        ),
        // cri-o's monitor runs in the pod, but is not its container.
        (
            "kubepods.slice/kubepods-pod1d2c3b4a_5e6f_4a7b_8c9d_0e1f2a3b4c5d.slice/crio-conmon-3c2b1a09f8e7d6c5b4a3928170f6e5d43c2b1a09f8e7d6c5b4a3928170f6e5d4.scope",
            None,
            pod("shop", "web-0", "1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d"),
        ),
        (
            "kubepods/besteffort/pod9a8b7c6d-5e4f-4321-9876-fedcba987654/77aa88bb99cc00dd11ee22ff33aa44bb77aa88bb99cc00dd11ee22ff33aa44bb",
            Some("77aa88bb99cc00dd11ee22ff33aa44bb77aa88bb99cc00dd11ee22ff33aa44bb"),
            pod("team-a", "api-7f9c8d6b5-x2k4q", "9a8b7c6d-5e4f-4321-9876-fedcba987654"),
        ),
        // A pod the log directory does not name: its container, no pod (the
        // UID stays in the cgroup path).
        (
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0badc0de_0000_4000_8000_000000000001.slice/cri-containerd-deadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeef.scope",
            Some("deadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeef"),
            None,
        ),
        // The node's own services: neither.
        ("system.slice/kubelet.service", None, None),
    ];
    for (cgroup, container, want_pod) in cases {
        let owner = owner_of(&mut attribution, cgroup);
        assert_eq!(owner.cgroup, Some(format!("/{cgroup}")), "{cgroup}");
        assert_eq!(owner.container_id.as_deref(), container, "{cgroup}");
        assert_eq!(owner.pod, want_pod, "{cgroup}");
        assert_eq!(
            (owner.netns, owner.pid, owner.comm.as_deref()),
            (Some(4026532500), Some(4242), Some("server"))
        );
    }
    // The tree's root is the root cgroup.
    let root = owner_of(&mut attribution, "");
    assert_eq!(root.cgroup.as_deref(), Some("/"));
}

#[test]
fn the_json_line_carries_the_pod() {
    let mut attribution = attribution();
    let owner = owner_of(
        &mut attribution,
        "kubepods/besteffort/pod9a8b7c6d-5e4f-4321-9876-fedcba987654/77aa88bb99cc00dd11ee22ff33aa44bb77aa88bb99cc00dd11ee22ff33aa44bb",
    );
    let at = tcpwatch::clock::Stamp {
        wall: chrono::Local::now(),
        mono: Duration::ZERO,
    };
    let event = tcpwatch::event::Event {
        at,
        kind: tcpwatch::event::EventKind::NewConnection {
            conn: tcpwatch::event::Connection {
                initiator: "10.244.1.7:41000".parse().unwrap(),
                acceptor: "10.244.1.9:8080".parse().unwrap(),
                direction: tcpwatch::event::Direction::Inbound,
            },
            source: "tracepoint",
            owner: Some(std::sync::Arc::new(owner)),
        },
    };
    let line: serde_json::Value =
        serde_json::from_str(&tcpwatch::sink::json::line(&event)).unwrap();
    assert_eq!(line["pod"], "api-7f9c8d6b5-x2k4q");
    assert_eq!(line["namespace"], "team-a");
    assert_eq!(line["pod_uid"], "9a8b7c6d-5e4f-4321-9876-fedcba987654");
    assert_eq!(
        line["container_id"],
        "77aa88bb99cc00dd11ee22ff33aa44bb77aa88bb99cc00dd11ee22ff33aa44bb"
    );
    assert_eq!(line["comm"], "server");
    assert_eq!(line["pid"], 4242);
    assert_eq!(line["netns"], 4026532500u64);
}
