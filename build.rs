//! Compiles the BPF programs with clang into OUT_DIR, where `src/bpf/`
//! embeds them: the XDP program (`bpf/tcpwatch.bpf.c`) and the tracepoint
//! program (`bpf/tcpstate.bpf.c`). Without clang the crate still builds:
//! empty objects are embedded and the sources that need them say so at run
//! time.
//!
//! It also prepares libpcap to be linked statically ([`pcap`]), and
//! generates, from the C headers that define them, the Rust twins of
//! the structs the programs share with userspace (ring-buffer records, map
//! keys and values; [`record`]): each layout is written down once.

#[path = "build/pcap.rs"]
mod pcap;
#[path = "build/record.rs"]
mod record;

use std::path::{Path, PathBuf};
use std::process::Command;

/// (source, object, what is lost without it)
const PROGRAMS: [(&str, &str, &str); 2] = [
    (
        "bpf/tcpwatch.bpf.c",
        "tcpwatch.bpf.o",
        "`--source xdp` and `--block xdp` will exit 1",
    ),
    (
        "bpf/tcpstate.bpf.c",
        "tcpstate.bpf.o",
        "`--source tracepoint` will exit 1",
    ),
];

/// The structs generated from their headers.
const RECORDS: [record::Record; 4] = [
    record::Record {
        header: "bpf/tcpwatch.h",
        structure: "event",
        rust: "RawRecord",
        constants: "TCPW_",
        out: "xdp_record.rs",
    },
    record::Record {
        header: "bpf/tcpstate.h",
        structure: "tcpstate_record",
        rust: "RawRecord",
        constants: "TCPSTATE_",
        out: "tcpstate_record.rs",
    },
    record::Record {
        header: "bpf/tcpstate.h",
        structure: "tcpstate_listener",
        rust: "ListenerKey",
        constants: "",
        out: "tcpstate_listener.rs",
    },
    record::Record {
        header: "bpf/tcpstate.h",
        structure: "tcpstate_owner",
        rust: "OwnerValue",
        constants: "",
        out: "tcpstate_owner.rs",
    },
];

fn main() {
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-changed=build");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for (source, object, lost) in PROGRAMS {
        let object = out.join(object);
        match compile(source, &object) {
            Ok(()) => {}
            Err(Failure::Missing(why)) => {
                println!("cargo:warning={source} not built (clang missing: {why}); {lost}");
                std::fs::write(&object, b"").expect("write an empty BPF object to OUT_DIR");
            }
            // clang is there but the program does not compile: a bug to fix
            // now, not a feature to lose silently.
            Err(Failure::Compile(stderr)) => panic!("clang failed on {source}:\n{stderr}"),
        }
    }
    for spec in &RECORDS {
        let header = std::fs::read_to_string(spec.header)
            .unwrap_or_else(|e| panic!("read {}: {e}", spec.header));
        let rust =
            record::generate(spec, &header).unwrap_or_else(|e| panic!("{}: {e}", spec.header));
        std::fs::write(out.join(spec.out), rust)
            .unwrap_or_else(|e| panic!("write {}: {e}", spec.out));
    }
    pcap::link_static(&out);
}

enum Failure {
    Missing(String),
    Compile(String),
}

fn compile(source: &str, object: &Path) -> Result<(), Failure> {
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    // <asm/types.h> lives under the multiarch directory on Debian.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        other => other,
    };
    let output = Command::new(&clang)
        // -mcpu=v3: the atomics of the scan decision (compare-and-swap).
        .args([
            "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror",
        ])
        .arg(format!("-I/usr/include/{multiarch}"))
        .args(["-c", source, "-o"])
        .arg(object)
        .output()
        .map_err(|e| Failure::Missing(format!("cannot run '{clang}': {e}")))?;
    if !output.status.success() {
        return Err(Failure::Compile(
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
    }
    Ok(())
}
