//! Compiles the BPF programs with clang into OUT_DIR, where `src/bpf/`
//! embeds them. Without clang the crate still builds: an empty object is
//! embedded and the sources that need it say so at run time.
//!
//! It also generates, from each record header, the Rust twin of the
//! programs' ring-buffer record (`build/record.rs`), so a layout is written
//! down once.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "build/record.rs"]
mod record;

/// (source, object, what is lost without it)
const PROGRAMS: [(&str, &str, &str); 1] = [(
    "bpf/tcpwatch.bpf.c",
    "tcpwatch.bpf.o",
    "`--source xdp` and `--block xdp` will exit 1",
)];

/// (header, struct, constant prefix, generated file in OUT_DIR)
const RECORDS: [(&str, &str, &str, &str); 1] =
    [("bpf/tcpwatch.h", "event", "TCPW_", "xdp_record.rs")];

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
    for (header, structure, prefix, generated) in RECORDS {
        let text = std::fs::read_to_string(header).unwrap_or_else(|e| panic!("{header}: {e}"));
        let spec = record::Spec {
            name: header,
            structure,
            prefix,
        };
        let rust = record::generate(&spec, &text).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(out.join(generated), rust).expect("write a generated record to OUT_DIR");
    }
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
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
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
