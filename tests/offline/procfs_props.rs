//! Property tests of the `/proc/net/tcp{,6}` parser against tables rendered
//! exactly as the kernel prints them (`tcp4_seq_show`, `tcp6_seq_show` and
//! their time-wait and request-socket variants).

use proptest::prelude::*;
use proptest::sample::Index;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tcpwatch::event::{Socket, TcpState};
use tcpwatch::source::procfs::{parse_line, parse_table};

const HEADER4: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
const HEADER6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";

/// The columns after the inode and the other numbers the parser skips.
#[derive(Debug, Clone)]
struct Extras {
    tx_queue: u32,
    rx_queue: u32,
    timer: u8,
    when: u32,
    retransmits: u32,
    uid: u32,
    probes: i32,
    refcnt: i32,
    pointer: u64,
    rto: u64,
    ato: u64,
    quick: u32,
    cwnd: u32,
    ssthresh: i32,
}

fn extras() -> impl Strategy<Value = Extras> {
    (
        (any::<u32>(), any::<u32>(), 0u8..5, any::<u32>(), 0u32..20),
        (any::<u32>(), 0i32..10, 1i32..1000, any::<u64>()),
        (
            0u64..200_000,
            0u64..1000,
            0u32..4,
            1u32..100_000,
            -1i32..100_000,
        ),
    )
        .prop_map(
            |(
                (tx_queue, rx_queue, timer, when, retransmits),
                (uid, probes, refcnt, pointer),
                (rto, ato, quick, cwnd, ssthresh),
            )| Extras {
                tx_queue,
                rx_queue,
                timer,
                when,
                retransmits,
                uid,
                probes,
                refcnt,
                pointer,
                rto,
                ato,
                quick,
                cwnd,
                ssthresh,
            },
        )
}

fn state() -> impl Strategy<Value = TcpState> {
    (1u8..=12).prop_map(|n| TcpState::from_kernel(n).unwrap())
}

/// Time-wait and request sockets have no inode: the kernel prints 0.
fn with_kernel_inode(mut socket: Socket) -> Socket {
    if matches!(socket.state, TcpState::TimeWait | TcpState::SynRecv) {
        socket.inode = 0;
    }
    socket
}

fn v4_endpoint() -> impl Strategy<Value = SocketAddr> {
    (any::<u32>(), any::<u16>())
        .prop_map(|(ip, port)| SocketAddr::new(Ipv4Addr::from(ip).into(), port))
}

fn pure_v6_endpoint() -> impl Strategy<Value = SocketAddr> {
    (any::<u128>(), any::<u16>())
        .prop_map(|(ip, port)| SocketAddr::new(Ipv6Addr::from(ip).into(), port))
        .prop_filter("not IPv4-mapped", |a| match a.ip() {
            IpAddr::V6(ip) => ip.to_ipv4_mapped().is_none(),
            IpAddr::V4(_) => false,
        })
}

/// A row of `/proc/net/tcp`: any two IPv4 endpoints, often a listener's
/// `0.0.0.0:0` peer.
fn v4_socket() -> impl Strategy<Value = Socket> {
    let remote = prop_oneof![
        3 => v4_endpoint(),
        1 => Just(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0)),
    ];
    (v4_endpoint(), remote, state(), any::<u64>()).prop_map(|(local, remote, state, inode)| {
        with_kernel_inode(Socket {
            local,
            remote,
            state,
            inode,
        })
    })
}

/// A row of `/proc/net/tcp6` as the parser must return it: plain IPv6
/// endpoints, IPv4 clients of a dual-stack socket (both ends
/// `::ffff:a.b.c.d`, returned as IPv4), or a socket bound to a mapped address
/// with no peer (`[::]:0`).
fn v6_socket() -> impl Strategy<Value = Socket> {
    let unspecified6 = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0);
    let ends = prop_oneof![
        3 => (pure_v6_endpoint(), pure_v6_endpoint()),
        1 => (pure_v6_endpoint(), Just(unspecified6)),
        2 => (v4_endpoint(), v4_endpoint()),
        1 => (v4_endpoint(), Just(unspecified6)),
    ];
    (ends, state(), any::<u64>()).prop_map(|((local, remote), state, inode)| {
        with_kernel_inode(Socket {
            local,
            remote,
            state,
            inode,
        })
    })
}

fn kernel_state(state: TcpState) -> u8 {
    (1..=12u8)
        .find(|&n| TcpState::from_kernel(n) == Some(state))
        .unwrap()
}

/// The address as the kernel prints it: each big-endian 32-bit word as a
/// host-order `%08X`; IPv4 in a tcp6 row is `::ffff:a.b.c.d`.
fn hex_addr(ip: IpAddr, v6: bool) -> String {
    let octets: Vec<u8> = match ip {
        IpAddr::V4(ip) if !v6 => ip.octets().to_vec(),
        IpAddr::V4(ip) => ip.to_ipv6_mapped().octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    octets
        .chunks_exact(4)
        .map(|w| format!("{:08X}", u32::from_ne_bytes(w.try_into().unwrap())))
        .collect()
}

/// One row, split so a test can spoil one hex field: local address, local
/// port, remote address, remote port, state.
struct Row {
    slot: usize,
    hex: [String; 5],
    tail: String,
}

impl Row {
    fn new(slot: usize, s: &Socket, x: &Extras, v6: bool) -> Row {
        let hex = [
            hex_addr(s.local.ip(), v6),
            format!("{:04X}", s.local.port()),
            hex_addr(s.remote.ip(), v6),
            format!("{:04X}", s.remote.port()),
            format!("{:02X}", kernel_state(s.state)),
        ];
        let tail = match s.state {
            // get_timewait4_sock / get_timewait6_sock
            TcpState::TimeWait => format!(
                " {:08X}:{:08X} {:02X}:{:08X} {:08X} {:5} {:8} {} {} {:016x}",
                0, 0, 3, x.when, 0, 0, 0, 0, x.refcnt, x.pointer
            ),
            // get_openreq4 / get_openreq6
            TcpState::SynRecv => format!(
                " {:08X}:{:08X} {:02X}:{:08X} {:08X} {:5} {:8} {} {} {:016x}",
                0, 0, 1, x.when, x.retransmits, x.uid, 0, 0, 0, x.pointer
            ),
            // get_tcp4_sock / get_tcp6_sock
            _ => format!(
                " {:08X}:{:08X} {:02X}:{:08X} {:08X} {:5} {:8} {} {} {:016x} {} {} {} {} {}",
                x.tx_queue,
                x.rx_queue,
                x.timer,
                x.when,
                x.retransmits,
                x.uid,
                x.probes,
                s.inode,
                x.refcnt,
                x.pointer,
                x.rto,
                x.ato,
                x.quick,
                x.cwnd,
                x.ssthresh
            ),
        };
        Row { slot, hex, tail }
    }

    fn text(&self) -> String {
        let [la, lp, ra, rp, st] = &self.hex;
        format!("{:4}: {la}:{lp} {ra}:{rp} {st}{}", self.slot, self.tail)
    }
}

/// A whole table: tcp rows (and header) padded to 149 columns by
/// `seq_pad`, tcp6 rows not.
fn table(rows: &[Row], v6: bool) -> String {
    let mut out = String::new();
    let mut line = |text: &str| {
        if v6 {
            out.push_str(text);
        } else {
            out.push_str(&format!("{text:<149}"));
        }
        out.push('\n');
    };
    line(if v6 { HEADER6 } else { HEADER4 });
    for row in rows {
        line(&row.text());
    }
    out
}

fn render(sockets: &[(Socket, Extras)], v6: bool) -> String {
    let rows: Vec<Row> = sockets
        .iter()
        .enumerate()
        .map(|(i, (s, x))| Row::new(i, s, x, v6))
        .collect();
    table(&rows, v6)
}

fn family_table() -> impl Strategy<Value = (Vec<(Socket, Extras)>, bool)> {
    prop_oneof![
        prop::collection::vec((v4_socket(), extras()), 0..40).prop_map(|v| (v, false)),
        prop::collection::vec((v6_socket(), extras()), 0..40).prop_map(|v| (v, true)),
    ]
}

fn sockets_of(rows: &[(Socket, Extras)]) -> Vec<Socket> {
    rows.iter().map(|(s, _)| *s).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn kernel_tables_parse_back((rows, v6) in family_table()) {
        let image = render(&rows, v6);
        prop_assert_eq!(parse_table(&image), Ok(sockets_of(&rows)), "{}", image);
    }

    /// A read cut anywhere (a torn read, a truncated copy) keeps exactly the
    /// complete rows before the cut.
    #[test]
    fn truncated_tables_keep_the_complete_rows((rows, v6) in family_table(), cut in any::<Index>()) {
        let image = render(&rows, v6);
        let cut = cut.index(image.len() + 1);
        let prefix = &image[..cut];
        let complete = prefix.matches('\n').count().saturating_sub(1);
        let expected = sockets_of(&rows[..complete]);
        prop_assert_eq!(parse_table(prefix), Ok(expected), "cut at {} of {:?}", cut, prefix);
    }

    /// A sign or an extra digit in any hex field the parser reads (addresses,
    /// ports, state) is rejected, even when the value is unchanged (`+`, a
    /// leading `0`).
    #[test]
    fn signs_and_overlong_hex_fields_are_rejected(
        socket in prop_oneof![v4_socket().prop_map(|s| (s, false)), v6_socket().prop_map(|s| (s, true))],
        x in extras(),
        field in 0usize..5,
        at in any::<Index>(),
        spoil in prop_oneof![
            Just("prepend 0"), Just("prepend +"), Just("prepend -"),
            Just("append 0"), Just("replace +"), Just("replace -"),
        ],
    ) {
        let (socket, v6) = socket;
        let mut row = Row::new(0, &socket, &x, v6);
        let good = row.hex[field].clone();
        let at = at.index(good.len());
        row.hex[field] = match spoil {
            "prepend 0" => format!("0{good}"),
            "prepend +" => format!("+{good}"),
            "prepend -" => format!("-{good}"),
            "append 0" => format!("{good}0"),
            "replace +" => format!("{}+{}", &good[..at], &good[at + 1..]),
            "replace -" => format!("{}-{}", &good[..at], &good[at + 1..]),
            _ => unreachable!(),
        };
        let line = row.text();
        prop_assert!(parse_line(&line).is_err(), "accepted {:?}", line);
        let err = parse_table(&table(&[row], v6)).unwrap_err();
        prop_assert_eq!(err.line, 2);
    }
}

/// The unspoilt rows of the property above are accepted: it tests the spoil,
/// not a renderer bug.
#[test]
fn unspoilt_rows_parse() {
    let x = Extras {
        tx_queue: 0,
        rx_queue: 0,
        timer: 0,
        when: 0,
        retransmits: 0,
        uid: 1000,
        probes: 0,
        refcnt: 1,
        pointer: 0,
        rto: 20,
        ato: 4,
        quick: 0,
        cwnd: 10,
        ssthresh: -1,
    };
    let socket = Socket {
        local: "[2001:db8::1]:443".parse().unwrap(),
        remote: "[2001:db8::7]:40112".parse().unwrap(),
        state: TcpState::Established,
        inode: 4242,
    };
    let line = Row::new(0, &socket, &x, true).text();
    assert_eq!(
        line,
        "   0: B80D0120000000000000000001000000:01BB B80D0120000000000000000007000000:9CB0 01 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 20 4 0 10 -1"
    );
    assert_eq!(parse_line(&line), Ok(socket));
}
