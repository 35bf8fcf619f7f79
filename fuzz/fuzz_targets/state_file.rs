//! Fuzzes the state file (`--state`): the input is written to a file that
//! `state::Store::open` and `load` then read, as the agent does at
//! start-up; an accepted file then takes the writes of the first seconds
//! of a run (restore's `retain_blocks`, a poll's `update_connections`, a
//! block's `put_blocks`).
//!
//! Besides "never panics" (the store turns redb's panics on damaged pages
//! into an error; libFuzzer's panic hook would abort on any that escapes),
//! it checks that every error is one line naming the file, and that what
//! an accepted file holds reads back the same after those writes.
//!
//! The file lives on tmpfs (/dev/shm) when there is one: redb syncs each
//! commit, and a disk would make this target crawl.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};
use tcpwatch::state::{StateError, Store};

fuzz_target!(|data: &[u8]| {
    let path = scratch().join("state");
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, data).expect("write the scratch file");
    let store = match Store::open(&path) {
        Ok(store) => store,
        Err(e) => return check_error(&e, &path),
    };
    let loaded = match store.load() {
        Ok(loaded) => loaded,
        Err(e) => return check_error(&e, &path),
    };
    let now = SystemTime::now();
    let mut blocks = loaded.blocks.clone();
    for result in [
        store.retain_blocks(now, |_| true).map(drop),
        store.update_connections(&[], &[], now),
        store.put_blocks(&[], now + Duration::from_secs(60), "nftables", now),
    ] {
        if let Err(e) = result {
            return check_error(&e, &path);
        }
    }
    // The writes only dropped expired blocks and marked the store primed.
    blocks.retain(|b| b.expires > now);
    let again = store.load().expect("a file just written reads back");
    let sorted = |mut v: Vec<_>| {
        v.sort();
        v
    };
    assert_eq!(sorted(again.connections), sorted(loaded.connections));
    assert_eq!(again.blocks.len(), blocks.len());
    for block in &blocks {
        assert!(again.blocks.contains(block), "{block:?} lost");
    }
    assert!(again.primed);
});

fn check_error(e: &StateError, path: &Path) {
    let message = e.to_string();
    assert!(!message.contains('\n'), "{message:?}");
    assert!(
        message.starts_with(&format!("state file {}", path.display())),
        "{message:?}"
    );
}

const PREFIX: &str = "tcpwatch-fuzz-state-";

/// One directory per process, on tmpfs if possible. libFuzzer ends the
/// process with exit(), so nothing removes it then: each run removes those
/// of processes that are gone instead.
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        remove_stale(&base);
        let dir = base.join(format!("{PREFIX}{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        dir
    })
}

fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
