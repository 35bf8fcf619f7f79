//! Connection storms for the benchmarks (scripts/bench-tracepoint.sh), run in
//! a network namespace with `ip netns exec`:
//!
//! ```text
//! storm loopback PORT SECONDS THREADS   a listener on 127.0.0.1:PORT and THREADS
//!                                       clients connecting to it as fast as they
//!                                       can; prints `MADE OVERFLOWS`
//! storm serve PORT                      accepts on 0.0.0.0:PORT and closes, until killed
//! storm connect HOST:PORT RATE SECONDS  RATE connections a second, paced; prints `MADE`
//! ```
//!
//! In a loopback storm the server closes each connection first, so its end
//! holds the TIME-WAIT and the clients' ports never run out; a paced client
//! closes first (its 4-tuples are then never reused within a run of a few
//! tens of thousands). OVERFLOWS is how many times the namespace's accept
//! queue overflowed (`ListenOverflows`): a connection dropped there never
//! had a server end.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> &str { args.get(i).map(String::as_str).unwrap_or_else(|| usage()) };
    match arg(0) {
        "loopback" => {
            let (port, seconds, threads) = (num(arg(1)), num(arg(2)), num(arg(3)));
            loopback(port as u16, Duration::from_secs(seconds), threads as usize);
        }
        "serve" => serve(&TcpListener::bind(("0.0.0.0", num(arg(1)) as u16)).unwrap()),
        "connect" => {
            let to: SocketAddr = arg(1).parse().unwrap_or_else(|_| usage());
            let made = paced(to, num(arg(2)), Duration::from_secs(num(arg(3))));
            println!("{made}");
        }
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: storm loopback PORT SECONDS THREADS | serve PORT | connect HOST:PORT RATE SECONDS"
    );
    std::process::exit(2)
}

fn num(text: &str) -> u64 {
    text.parse().unwrap_or_else(|_| usage())
}

/// Accepts and closes (the server closes first), forever.
fn serve(listener: &TcpListener) {
    for stream in listener.incoming().flatten() {
        drop(stream);
    }
}

fn loopback(port: u16, seconds: Duration, threads: usize) {
    let before = overflows();
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let server = listener.local_addr().unwrap();
    std::thread::spawn(move || serve(&listener));
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, made) = (stop.clone(), made.clone());
            std::thread::spawn(move || {
                let mut byte = [0u8; 1];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(mut stream) = TcpStream::connect(server) {
                        made.fetch_add(1, Ordering::Relaxed);
                        // Wait for the server's close: it keeps the TIME-WAIT.
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                        let _ = stream.read(&mut byte);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(seconds);
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    println!(
        "{} {}",
        made.load(Ordering::Relaxed),
        overflows().saturating_sub(before)
    );
}

/// `rate` connections a second to `to` for `seconds`, on a schedule (a
/// stall is caught up); the number made.
fn paced(to: SocketAddr, rate: u64, seconds: Duration) -> u64 {
    let start = Instant::now();
    let total = rate * seconds.as_secs();
    let mut made = 0;
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if TcpStream::connect(to).is_ok() {
            made += 1;
        }
    }
    made
}

/// `ListenOverflows` of this namespace.
fn overflows() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with("TcpExt:"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let (Some(names), Some(values)) = (rows.first(), rows.get(1)) else {
        return 0;
    };
    names
        .iter()
        .position(|n| *n == "ListenOverflows")
        .and_then(|i| values.get(i)?.parse().ok())
        .unwrap_or(0)
}
