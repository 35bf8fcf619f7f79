//! Thin entry point: the library does the work (see `tcpwatch::cli`).
fn main() {
    std::process::exit(tcpwatch::cli::main());
}
