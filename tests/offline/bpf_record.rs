//! The generator `build.rs` runs on the BPF programs' record headers
//! (build/record.rs): what it accepts, what it refuses, and that it reads
//! both headers of the repository.

#[path = "../../build/record.rs"]
mod record;

use record::{generate, Record};

const SPEC: Record = Record {
    header: "test.h",
    structure: "rec",
    rust: "RawRecord",
    constants: "REC_",
    out: "rec.rs",
};

fn header(fields: &str) -> String {
    format!("#ifndef REC_H\n#define REC_H\n#define REC_KIND_A 1 // a\n#define REC_MASK 0x10\nstruct rec {{\n{fields}}};\n#endif\n")
}

#[test]
fn fields_constants_and_offsets() {
    let rust = generate(
        &SPEC,
        &header(
            "\t__u64 when; // ns\n\t__be32 seq;\n\t__u16 port;\n\t__u8 kind;\n\t__u8 pad[1];\n",
        ),
    )
    .unwrap();
    for line in [
        "pub const REC_KIND_A: u64 = 1;",
        "pub const REC_MASK: u64 = 16;",
        "    pub when: u64,",
        "    pub seq: u32,",
        "    pub port: u16,",
        "    pub kind: u8,",
        "    pub pad: [u8; 1],",
        "    pub const LEN: usize = 16;",
        "        (\"seq\", core::mem::offset_of!(RawRecord, seq)),",
    ] {
        assert!(rust.lines().any(|l| l == line), "no {line:?} in\n{rust}");
    }
    assert!(!rust.contains("REC_H"), "the include guard is no constant");
    // `read` swaps a big-endian field, keeps a native one; `write` undoes it.
    for line in [
        "            seq: u32::from_be_bytes(Self::raw::<4>(b, core::mem::offset_of!(RawRecord, seq))),",
        "            when: u64::from_ne_bytes(Self::raw::<8>(b, core::mem::offset_of!(RawRecord, when))),",
        "            pad: Self::raw::<1>(b, core::mem::offset_of!(RawRecord, pad)),",
    ] {
        assert!(rust.lines().any(|l| l == line), "no {line:?} in\n{rust}");
    }
    assert!(rust.contains("&self.seq.to_be_bytes()"), "{rust}");
}

#[test]
fn padding_and_unknown_fields_stop_the_build() {
    let hole = generate(&SPEC, &header("\t__u8 kind;\n\t__u32 seq;\n")).unwrap_err();
    assert!(
        hole.contains("seq at offset 1 is not aligned to 4"),
        "{hole}"
    );
    let tail = generate(&SPEC, &header("\t__u32 seq;\n\t__u8 kind;\n")).unwrap_err();
    assert!(tail.contains("not a multiple of 4"), "{tail}");
    for bad in [
        "\tint x;\n",
        "\t__u16 ports[2];\n",
        "\t__u8 name[N];\n",
        "\t__u8 2x;\n",
        "\tstruct in6_addr a;\n",
    ] {
        let e = generate(&SPEC, &header(bad)).unwrap_err();
        assert!(e.contains("unsupported field"), "{bad:?}: {e}");
    }
    assert!(generate(&SPEC, "#define REC_X 1\n").is_err(), "no struct");
    let e = generate(&SPEC, "#define REC_X one\nstruct rec {\n__u8 a;\n};\n").unwrap_err();
    assert!(e.contains("not an integer"), "{e}");
}

#[test]
fn the_repositorys_record_headers_generate() {
    let root = env!("CARGO_MANIFEST_DIR");
    for (header, structure, rust, constants) in [
        (
            "bpf/tcpstate.h",
            "tcpstate_record",
            "RawRecord",
            "TCPSTATE_",
        ),
        ("bpf/tcpstate.h", "tcpstate_listener", "ListenerKey", ""),
        ("bpf/tcpstate.h", "tcpstate_owner", "OwnerValue", ""),
        ("bpf/tcpwatch.h", "event", "RawRecord", "TCPW_"),
    ] {
        let text = std::fs::read_to_string(format!("{root}/{header}")).unwrap();
        let spec = Record {
            header,
            structure,
            rust,
            constants,
            out: "x.rs",
        };
        let rust = generate(&spec, &text).unwrap_or_else(|e| panic!("{header}: {e}"));
        assert!(
            rust.contains(&format!("pub struct {}", spec.rust)),
            "{header}"
        );
    }
}
