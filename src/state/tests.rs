use super::*;

fn key(a: &str, b: &str) -> ConnKey {
    (a.parse().unwrap(), b.parse().unwrap())
}

fn sorted(mut keys: Vec<ConnKey>) -> Vec<ConnKey> {
    keys.sort();
    keys
}

#[test]
fn connections_and_blocks_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let now = SystemTime::now();
    let v4 = key("10.0.0.5:80", "10.0.0.7:40000");
    let v6 = key("[2001:db8::1]:443", "[2001:db8::7]:5000");
    {
        let store = Store::open(&path).unwrap();
        assert!(store.created());
        assert!(!store.primed().unwrap());
        store.update_connections(&[v4, v6], &[], now).unwrap();
        let ips: Vec<IpNet> = vec![
            "192.0.2.1/32".parse().unwrap(),
            "2001:db8::9/128".parse().unwrap(),
            "2001:db8:1:2::/64".parse().unwrap(),
        ];
        let expires = now + Duration::from_secs(30);
        store.put_blocks(&ips, expires, "nftables", now).unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert!(!store.created());
    assert!(store.primed().unwrap());
    assert_eq!(sorted(store.connections().unwrap()), sorted(vec![v4, v6]));
    let blocks = store.blocks().unwrap();
    assert_eq!(blocks.len(), 3);
    assert!(blocks.iter().all(|b| b.backend == "nftables"));
    let expiry = millis(now + Duration::from_secs(30));
    assert!(blocks.iter().all(|b| millis(b.expires) == expiry));
    assert!(blocks
        .iter()
        .any(|b| b.target == "2001:db8::9/128".parse::<IpNet>().unwrap()));
    assert!(
        blocks
            .iter()
            .any(|b| b.target == "2001:db8:1:2::/64".parse::<IpNet>().unwrap()),
        "a prefix comes back as the prefix"
    );
}

#[test]
fn block_keys_of_every_version_decode_and_garbage_does_not() {
    let host: IpNet = "192.0.2.7/32".parse().unwrap();
    // An address is stored as it always was: 17 bytes.
    assert_eq!(encode_net(host).len(), 17);
    assert_eq!(
        decode_net(&encode_ip("192.0.2.7".parse().unwrap())),
        Some(host)
    );
    let prefix: IpNet = "2001:db8:1:2::/64".parse().unwrap();
    assert_eq!(decode_net(&encode_net(prefix)), Some(prefix));
    let mut bad = encode_net(prefix);
    bad[17] = 129;
    assert_eq!(decode_net(&bad), None, "a prefix longer than the family");
    let mut host_bits = encode_ip("2001:db8:1:2::9".parse().unwrap()).to_vec();
    host_bits.push(64);
    assert_eq!(decode_net(&host_bits), None, "host bits under a prefix");
    assert_eq!(decode_net(&[6; 19]), None);
}

#[test]
fn closed_connections_and_expired_blocks_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let now = SystemTime::now();
    let keys: Vec<ConnKey> = (0..1000u16)
        .map(|p| key("10.0.0.5:80", &format!("10.0.0.7:{}", 10000 + p)))
        .collect();
    store.update_connections(&keys, &[], now).unwrap();
    store.update_connections(&[], &keys[..990], now).unwrap();
    assert_eq!(sorted(store.connections().unwrap()), keys[990..].to_vec());

    let old: IpNet = "192.0.2.1/32".parse().unwrap();
    let young: IpNet = "192.0.2.2/32".parse().unwrap();
    store
        .put_blocks(&[old], now + Duration::from_secs(1), "nftables", now)
        .unwrap();
    let later = now + Duration::from_secs(5);
    store
        .put_blocks(&[young], later + Duration::from_secs(60), "nftables", later)
        .unwrap();
    let left: Vec<IpNet> = store.blocks().unwrap().iter().map(|b| b.target).collect();
    assert_eq!(left, [young], "the expired block was not dropped");
    assert_eq!(store.retain_blocks(later, |ip| ip != young).unwrap(), 1);
    assert!(store.blocks().unwrap().is_empty());
}

#[test]
fn the_file_stays_small_under_churn() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let store = Store::open(&path).unwrap();
    let now = SystemTime::now();
    // 200 polls of 500 connections opening and closing: the file must not
    // grow with the history, only with what is open.
    let mut open: Vec<ConnKey> = Vec::new();
    let started = std::time::Instant::now();
    for poll in 0..200u32 {
        let fresh: Vec<ConnKey> = (0..500u32)
            .map(|i| {
                let n = poll * 500 + i;
                key(
                    "10.0.0.5:80",
                    &format!("10.{}.{}.7:{}", n % 250, poll % 250, 1024 + i),
                )
            })
            .collect();
        store.update_connections(&fresh, &open, now).unwrap();
        open = fresh;
    }
    // A figure for the record, not a target.
    println!(
        "200 durable commits of 500 added + 500 removed: {:?} each",
        started.elapsed() / 200
    );
    assert_eq!(store.connections().unwrap().len(), 500);
    drop(store);
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size < 8 << 20, "state file grew to {size} bytes");
}

#[test]
fn another_schema_version_is_refused_with_the_reset_hint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    drop(Store::open(&path).unwrap());
    {
        let db = Database::create(&path).unwrap();
        let write = db.begin_write().unwrap();
        write
            .open_table(META)
            .unwrap()
            .insert(SCHEMA_KEY, SCHEMA_VERSION + 1)
            .unwrap();
        write.commit().unwrap();
    }
    let err = Store::open(&path)
        .err()
        .expect("a newer file was opened")
        .to_string();
    let shown = path.display().to_string();
    assert!(err.contains(&format!("state file {shown}")), "{err}");
    assert!(err.contains("schema version 2"), "{err}");
    assert!(
        err.ends_with(&format!("remove {shown} or run with --state off")),
        "{err}"
    );
    assert!(!err.contains('\n'));
    assert!(path.exists(), "the file must be left for the operator");
}

#[test]
fn a_corrupt_or_foreign_file_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    std::fs::write(&path, b"this is not a database\n".repeat(200)).unwrap();
    let err = Store::open(&path)
        .err()
        .expect("garbage opened")
        .to_string();
    assert!(err.contains("remove"), "{err}");
    assert!(!err.contains('\n'));
    let before = std::fs::read(&path).unwrap();
    assert_eq!(
        before,
        b"this is not a database\n".repeat(200),
        "file changed"
    );

    // A valid file with its middle overwritten.
    let torn = dir.path().join("torn");
    {
        let store = Store::open(&torn).unwrap();
        let keys: Vec<ConnKey> = (0..2000u16)
            .map(|p| key("10.0.0.5:80", &format!("10.0.0.7:{}", 10000 + p)))
            .collect();
        store
            .update_connections(&keys, &[], SystemTime::now())
            .unwrap();
    }
    let mut bytes = std::fs::read(&torn).unwrap();
    let len = bytes.len();
    for b in &mut bytes[..len.min(4096)] {
        *b = 0xA5;
    }
    std::fs::write(&torn, &bytes).unwrap();
    let err = Store::open(&torn)
        .err()
        .expect("torn file opened")
        .to_string();
    assert!(err.contains(&torn.display().to_string()), "{err}");

    // A redb file that tcpwatch did not write.
    let foreign = dir.path().join("foreign");
    drop(Database::create(&foreign).unwrap());
    let err = Store::open(&foreign)
        .err()
        .expect("foreign opened")
        .to_string();
    assert!(err.contains("not a tcpwatch state file"), "{err}");
}

#[test]
fn a_missing_directory_is_an_open_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent").join("state");
    let err = Store::open(&path).err().expect("opened").to_string();
    assert!(err.starts_with(&format!("state file {}: cannot open", path.display())));
    assert!(!path.parent().unwrap().exists(), "directories are not made");
}

#[test]
fn addresses_round_trip_through_their_encoding() {
    for text in [
        "0.0.0.0",
        "255.1.2.3",
        "::",
        "::ffff:10.0.0.1",
        "2001:db8::1",
    ] {
        let ip: IpAddr = text.parse().unwrap();
        assert_eq!(decode_ip(&encode_ip(ip)), Some(ip), "{text}");
    }
    let pair = key("[::ffff:10.0.0.1]:1", "10.0.0.1:65535");
    assert_eq!(decode_pair(&encode_pair(pair)), Some(pair));
    assert_eq!(decode_ip(&[5; 17]), None);
    assert_eq!(decode_pair(&[4; 37]), None);
}

#[test]
fn damage_anywhere_is_refused_or_harmless_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    let now = SystemTime::now();
    let keys: Vec<ConnKey> = (0..3000u16)
        .map(|p| key("10.0.0.5:80", &format!("10.0.0.7:{}", 10000 + p)))
        .collect();
    let ips: Vec<IpNet> = (0..200u8)
        .map(|i| IpNet::from(IpAddr::from([192, 0, 2, i])))
        .collect();
    {
        let store = Store::open(&good).unwrap();
        store.update_connections(&keys, &[], now).unwrap();
        let expires = now + Duration::from_secs(60);
        store.put_blocks(&ips, expires, "nftables", now).unwrap();
    }
    let bytes = std::fs::read(&good).unwrap();
    let (mut intact, mut refused) = (0, 0);
    let step = (bytes.len() / 300).max(1);
    for at in (0..bytes.len()).step_by(step) {
        let mut damaged = bytes.clone();
        for b in &mut damaged[at..(at + 64).min(bytes.len())] {
            *b ^= 0x5A;
        }
        let path = dir.path().join("damaged");
        std::fs::write(&path, &damaged).unwrap();
        let caught = std::panic::catch_unwind(|| Store::open(&path).and_then(|s| s.load()));
        match caught.expect("a panic escaped the guard") {
            Ok(loaded) => {
                // Damage the store did not notice must have hit unused
                // space: what is read is exactly what was written.
                assert_eq!(loaded.connections.len(), keys.len(), "at byte {at}");
                assert_eq!(loaded.blocks.len(), ips.len(), "at byte {at}");
                assert!(loaded.blocks.iter().all(|b| b.backend == "nftables"));
                intact += 1;
            }
            Err(e) => {
                assert!(e.to_string().contains("damaged"), "{e}");
                refused += 1;
            }
        }
    }
    println!("{intact} damaged copies read intact, {refused} refused");
    assert!(
        refused > 0 && intact + refused > 250,
        "{intact} intact, {refused} refused"
    );
}

#[test]
fn unwritten_changes_keep_the_last_change_of_each_pair_and_are_capped() {
    let a = key("10.0.0.5:80", "10.0.0.7:40000");
    let b = key("10.0.0.5:80", "10.0.0.7:40001");
    let mut unwritten = Unwritten::default();
    unwritten.merge(&[a, b], &[]);
    unwritten.merge(&[], &[a]);
    assert_eq!(unwritten.added, HashSet::from([b]));
    assert_eq!(unwritten.removed, HashSet::from([a]));
    unwritten.merge(&[a], &[]);
    assert_eq!(unwritten.added, HashSet::from([a, b]));
    assert!(unwritten.removed.is_empty());

    let mut full = Unwritten::default();
    let many: Vec<ConnKey> = (0..=MAX_UNWRITTEN as u32)
        .map(|n| {
            let ip = Ipv4Addr::from(0x0a00_0000 + n);
            (SocketAddr::from((ip, 80)), SocketAddr::from((ip, 40000)))
        })
        .collect();
    full.merge(&many, &[]);
    assert_eq!(full.len(), MAX_UNWRITTEN);
    assert_eq!(full.dropped, 1);
    // Forgetting a waiting addition frees its room.
    full.merge(&[], &many[..1]);
    assert_eq!((full.len(), full.dropped), (MAX_UNWRITTEN, 1));
}

#[test]
fn a_write_after_a_failed_one_reopens_the_file_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let now = SystemTime::now();
    let a = key("10.0.0.5:80", "10.0.0.7:40000");
    let b = key("[2001:db8::1]:443", "[2001:db8::7]:5000");
    store.update_connections(&[a], &[], now).unwrap();
    // What a failed write leaves: changes waiting, the database to re-open.
    store.lock_unwritten().merge(&[b], &[]);
    store.broken.store(true, Ordering::Relaxed);
    assert!(store.has_unwritten());
    store.update_connections(&[], &[], now).unwrap();
    assert!(!store.broken.load(Ordering::Relaxed));
    assert!(!store.has_unwritten());
    assert_eq!(sorted(store.connections().unwrap()), sorted(vec![a, b]));
    store
        .put_blocks(
            &["192.0.2.1/32".parse().unwrap()],
            now + Duration::from_secs(9),
            "nftables",
            now,
        )
        .unwrap();
    assert_eq!(store.blocks().unwrap().len(), 1);
}

fn record(target: &str, lapses: SystemTime) -> StoredRecord {
    StoredRecord {
        target: target.parse().unwrap(),
        repeat: 2,
        scan_ttl: Duration::from_secs(60),
        ttl: Duration::from_secs(60),
        applied: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        lapses,
        reason: "port scan 3/60s on ports 80,81,82,83".into(),
        origin: "node-a".into(),
    }
}

#[test]
fn records_survive_a_reopen_and_lapsed_ones_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let now = SystemTime::now();
    let later = UNIX_EPOCH + Duration::from_millis(millis(now) + 3_600_000);
    {
        let store = Store::open(&path).unwrap();
        let mut long = record("2001:db8:1:2::/64", later);
        long.reason = "é".repeat(200);
        store
            .put_records(&[record("192.0.2.56/32", later), long], now)
            .unwrap();
        store
            .put_blocks(&["192.0.2.56/32".parse().unwrap()], later, "nftables", now)
            .unwrap();
    }
    let store = Store::open(&path).unwrap();
    let loaded = store.load().unwrap();
    assert_eq!(loaded.records.len(), 2);
    let v4 = loaded
        .records
        .iter()
        .find(|r| r.target == "192.0.2.56/32".parse::<IpNet>().unwrap())
        .unwrap();
    assert_eq!(*v4, record("192.0.2.56/32", later));
    let cut = loaded
        .records
        .iter()
        .find(|r| r.target.prefix_len() == 64)
        .unwrap();
    assert_eq!(cut.reason.len(), 256, "cut at a character boundary");
    // A lapsed record goes with the next write.
    store
        .put_records(
            &[record("192.0.2.9/32", later)],
            later + Duration::from_secs(1),
        )
        .unwrap();
    assert_eq!(store.records().unwrap().len(), 1);
    // Lifting a block keeps the record.
    store
        .forget_block("192.0.2.56/32".parse().unwrap())
        .unwrap();
    assert!(store.blocks().unwrap().is_empty());
    assert_eq!(store.records().unwrap().len(), 1);
}

/// A file written before the `records` table existed: readable, with no
/// records, and writable.
#[test]
fn a_file_without_the_records_table_reads_and_takes_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    {
        let db = Database::create(&path).unwrap();
        let write = db.begin_write().unwrap();
        {
            let mut meta = write.open_table(META).unwrap();
            meta.insert(SCHEMA_KEY, SCHEMA_VERSION).unwrap();
            write.open_table(CONNECTIONS).unwrap();
            let mut blocks = write.open_table(BLOCKS).unwrap();
            let far = millis(SystemTime::now()) + 3_600_000;
            blocks
                .insert(
                    encode_ip("192.0.2.7".parse().unwrap()).as_slice(),
                    (far, "nftables"),
                )
                .unwrap();
        }
        write.commit().unwrap();
    }
    let store = Store::open(&path).unwrap();
    let loaded = store.load().unwrap();
    assert_eq!(loaded.blocks.len(), 1);
    assert!(loaded.records.is_empty());
    let later = SystemTime::now() + Duration::from_secs(60);
    store
        .put_records(&[record("192.0.2.7/32", later)], SystemTime::now())
        .unwrap();
    assert_eq!(store.records().unwrap().len(), 1);
}
