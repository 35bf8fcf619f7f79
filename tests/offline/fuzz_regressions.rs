//! Every input the fuzz targets (fuzz/fuzz_targets/) ever crashed on, kept
//! in tests/fixtures/fuzz/<target>/ and fed again to the parser that
//! target fuzzes: it must not panic, and its errors must be one line
//! without control characters. A new crash is added by copying the
//! reproducer there under a name that says what it was.

use std::path::{Path, PathBuf};
use tcpwatch::settings::RunSettings;
use tcpwatch::source::pcap::{parse, Link};

fn fixtures(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect()
}

fn assert_one_line(error: &str, input: &Path) {
    assert!(
        !error.chars().any(char::is_control),
        "{}: error with a control character: {error:?}",
        input.display()
    );
}

#[test]
fn every_fixture_directory_is_a_target_checked_here() {
    let known = [
        "block_list",
        "capture_file",
        "config_toml",
        "control",
        "duration",
        "fleet_decode",
        "netlink_dump",
        "pcap_packet",
        "procfs_parse",
        "state_file",
        "tracepoint_event",
        "xdp_event",
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    for entry in std::fs::read_dir(root).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            known.contains(&name.as_str()),
            "no check for fixtures of {name}"
        );
    }
}

#[test]
fn config_files() {
    for (path, bytes) in fixtures("config_toml") {
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        if let Err(e) = RunSettings::default().apply_text(text) {
            assert_one_line(&e, &path);
        }
    }
}

#[test]
fn durations() {
    for (path, bytes) in fixtures("duration") {
        let text = String::from_utf8_lossy(&bytes);
        for result in [
            tcpwatch::duration::parse(&text),
            tcpwatch::duration::parse_positive(&text),
        ] {
            if let Err(e) = result {
                assert_one_line(&e, &path);
            }
        }
    }
}

#[test]
fn netlink_dumps() {
    for (path, bytes) in fixtures("netlink_dump") {
        let mut out = Vec::new();
        if let Err(e) = tcpwatch::source::netlink::parse_dump(&bytes, &mut out) {
            assert_one_line(&format!("{e:#}"), &path);
        }
    }
}

#[test]
fn procfs_tables() {
    for (path, bytes) in fixtures("procfs_parse") {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = tcpwatch::source::procfs::parse_table(&text) {
            assert_one_line(&e.reason, &path);
        }
    }
}

#[test]
fn pcap_frames() {
    let links = [
        Link::Ethernet,
        Link::RawIp,
        Link::LinuxSll,
        Link::LinuxSll2,
        Link::Loopback,
        Link::Nflog { big_endian: false },
        Link::Nflog { big_endian: true },
        Link::Ethernet,
    ];
    for (_, bytes) in fixtures("pcap_packet") {
        let Some((&pick, frame)) = bytes.split_first() else {
            continue;
        };
        let _ = parse(links[usize::from(pick) % links.len()], frame);
    }
}

#[test]
fn capture_files() {
    use tcpwatch::commands::capture::{Frames, Next};
    for (path, bytes) in fixtures("capture_file") {
        let mut frames = match Frames::from_bytes(&bytes) {
            Ok(frames) => frames,
            Err(e) => {
                assert_one_line(&e.to_string(), &path);
                continue;
            }
        };
        loop {
            match frames.read() {
                Ok(Next::Frame(frame)) => {
                    let _ = parse(frame.link, &frame.data);
                }
                Ok(_) => break,
                Err(e) => {
                    assert_one_line(&e.to_string(), &path);
                    break;
                }
            }
        }
    }
}

#[test]
fn xdp_events() {
    for (path, bytes) in fixtures("xdp_event") {
        if let Err(e) = tcpwatch::bpf::record::parse_event(&bytes) {
            assert_one_line(&e.to_string(), &path);
        }
    }
}

#[test]
fn tracepoint_records() {
    for (path, bytes) in fixtures("tracepoint_event") {
        if let Err(e) = tcpwatch::bpf::tcpstate::decode(&bytes) {
            assert_one_line(&e.to_string(), &path);
        }
    }
}

#[test]
fn firewall_listings() {
    for (path, bytes) in fixtures("block_list") {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = tcpwatch::block::nft::parse_list(&text) {
            assert_one_line(&format!("{e:#}"), &path);
        }
        tcpwatch::block::iptables::parse_save(&text);
    }
}

#[test]
fn state_files() {
    let dir = tempfile::tempdir().unwrap();
    for (path, bytes) in fixtures("state_file") {
        let file = dir.path().join("state");
        std::fs::write(&file, &bytes).unwrap();
        let loaded = tcpwatch::state::Store::open(&file).and_then(|store| store.load());
        if let Err(e) = loaded {
            assert_one_line(&e.to_string(), &path);
        }
        std::fs::remove_file(&file).unwrap();
    }
}

#[test]
fn fleet_replies() {
    for (path, bytes) in fixtures("fleet_decode") {
        // Panics (naming no file) if a decoder breaks its contract; say which.
        let result = std::panic::catch_unwind(|| tcpwatch::fleet::wire::exercise(&bytes));
        assert!(result.is_ok(), "{}: fleet decoder panicked", path.display());
    }
}

#[test]
fn control_messages() {
    for (path, bytes) in fixtures("control") {
        if let Err(e) = tcpwatch::control::parse_request(&bytes) {
            assert_one_line(&e, &path);
        }
        if let Err(e) = tcpwatch::control::parse_response(&bytes) {
            assert_one_line(&e, &path);
        }
    }
}
