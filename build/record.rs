//! The Rust twin of a BPF program's ring-buffer record, generated from the C
//! header that defines it, so its layout is written down once.
//!
//! `build.rs` includes this file (`#[path]`); the crate's unit tests include
//! it too (`src/bpf/record.rs`), so the generator is tested like any code.
//!
//! The header may hold, besides comments, preprocessor lines and other
//! declarations:
//!
//! - `#define <PREFIX><NAME> <integer>` (decimal or `0x` hex): a constant,
//!   `pub const <PREFIX><NAME>: u64`; a `#define` of that prefix without a
//!   value (an include guard) is skipped;
//! - `struct <name> {` ... `};`, one field a line, each
//!   `__u8|__u16|__u32|__u64|__be16|__be32|__be64 name;` or `__u8 name[N];`.
//!
//! Anything else inside the struct is an error, so a field the generator
//! cannot translate stops the build instead of shifting the offsets. The
//! fields must be ordered so that neither compiler inserts padding (each
//! field at a multiple of its size, the whole a multiple of the largest):
//! the generator says which field breaks that, and the generated code also
//! fails to compile when the sum of the field sizes is not the struct's
//! size.
//!
//! Generated, for a record:
//!
//! - `RawRecord`, `#[repr(C)]`, one field per C field: `u8`..`u64` or
//!   `[u8; N]` (a `__beN` field has the `uN` type; see `read`);
//! - `RECORD_LEN`, its size, checked against the field sizes;
//! - `FIELDS`, each field's name and byte offset (to compare with the BTF
//!   of the compiled program);
//! - `RawRecord::read(&[u8; RECORD_LEN])`, which reads every field at its
//!   `offset_of!`: `__uN` in this host's byte order (the program runs on
//!   this host), `__beN` in network byte order, both returned as host-order
//!   numbers; and `RawRecord::write`, its inverse (for tests and fuzzing).

/// What to generate: the struct named `structure` and the constants named
/// `prefix...` of a header (`name` is used in messages and the banner).
pub struct Spec<'a> {
    pub name: &'a str,
    pub structure: &'a str,
    pub prefix: &'a str,
}

/// One field: its name, C type and Rust type, size and byte order.
struct Field {
    name: String,
    rust: String,
    size: usize,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// `__uN`: host byte order.
    Native,
    /// `__beN`: network byte order.
    Big,
    /// `__u8 name[N]`.
    Bytes,
}

/// The Rust source for `spec` in `header`, or what stops it.
pub fn generate(spec: &Spec, header: &str) -> Result<String, String> {
    let mut consts = String::new();
    let mut fields: Vec<Field> = Vec::new();
    let opening = format!("struct {} {{", spec.structure);
    let define = format!("#define {}", spec.prefix);
    let (mut in_struct, mut seen) = (false, false);
    for (n, raw) in header.lines().enumerate() {
        let line = raw.split("//").next().unwrap_or("").trim();
        let at = || format!("{} line {}: {raw:?}", spec.name, n + 1);
        if in_struct {
            if line == "};" {
                in_struct = false;
            } else if !line.is_empty() {
                let field = field(line).ok_or_else(|| format!("{}: unsupported field", at()))?;
                if fields.iter().any(|f| f.name == field.name) {
                    return Err(format!("{}: field named twice", at()));
                }
                fields.push(field);
            }
        } else if line == opening {
            if seen {
                return Err(format!("{}: struct defined twice", at()));
            }
            (in_struct, seen) = (true, true);
        } else if line.starts_with(&define) {
            let mut words = line.split_whitespace().skip(1);
            let (Some(name), value, None) = (words.next(), words.next(), words.next()) else {
                return Err(format!("{}: expected #define NAME VALUE", at()));
            };
            let Some(value) = value else { continue };
            let parsed = match value.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => value.parse(),
            };
            let value = parsed.map_err(|_| format!("{}: not an integer", at()))?;
            consts.push_str(&format!("pub const {name}: u64 = {value};\n"));
        }
    }
    if in_struct {
        return Err(format!("{}: `{opening}` is never closed", spec.name));
    }
    if fields.is_empty() {
        return Err(format!("{}: no `{opening}` with fields", spec.name));
    }
    unpadded(spec, &fields)?;
    Ok(render(spec, &consts, &fields))
}

/// Checks that a C compiler lays `fields` out without padding: each scalar
/// at a multiple of its size (byte arrays anywhere), the size a multiple
/// of the largest alignment.
fn unpadded(spec: &Spec, fields: &[Field]) -> Result<(), String> {
    let (mut offset, mut largest) = (0, 1);
    for f in fields {
        let align = if f.kind == Kind::Bytes { 1 } else { f.size };
        if offset % align != 0 {
            return Err(format!(
                "{}: field {} at offset {offset} is not aligned to {align}: \
                 the compilers would pad before it; reorder the fields",
                spec.name, f.name
            ));
        }
        largest = largest.max(align);
        offset += f.size;
    }
    if offset % largest != 0 {
        return Err(format!(
            "{}: {offset} bytes of fields, not a multiple of {largest}: \
             the compilers would pad the end; add an explicit pad field",
            spec.name
        ));
    }
    Ok(())
}

fn render(spec: &Spec, consts: &str, fields: &[Field]) -> String {
    let size: usize = fields.iter().map(|f| f.size).sum();
    let mut out = format!(
        "// Generated by build.rs from {}. Do not edit.\n\n{consts}\n\
         /// `struct {}` of {}.\n\
         #[repr(C)]\n#[derive(Debug, Clone, Copy, PartialEq, Eq)]\npub struct RawRecord {{\n",
        spec.name, spec.structure, spec.name
    );
    for f in fields {
        out.push_str(&format!("    pub {}: {},\n", f.name, f.rust));
    }
    out.push_str(&format!(
        "}}\n\n\
         /// The sum of the field sizes: `RawRecord` has no padding.\n\
         pub const RECORD_LEN: usize = {size};\n\
         const _: () = assert!(core::mem::size_of::<RawRecord>() == RECORD_LEN);\n\n\
         /// Each field's name and byte offset, to check against the BTF of\n\
         /// the compiled program.\n\
         #[allow(dead_code)]\n\
         pub const FIELDS: &[(&str, usize)] = &[\n"
    ));
    for f in fields {
        out.push_str(&format!(
            "    (\"{0}\", core::mem::offset_of!(RawRecord, {0})),\n",
            f.name
        ));
    }
    out.push_str(
        "];\n\n\
         #[allow(dead_code)]\n\
         impl RawRecord {\n\
         \x20   /// The record as the program wrote it (see the generator).\n\
         \x20   pub fn read(b: &[u8; RECORD_LEN]) -> RawRecord {\n\
         \x20       RawRecord {\n",
    );
    for f in fields {
        let at = format!("core::mem::offset_of!(RawRecord, {})", f.name);
        let bytes = format!("raw::<{}>(b, {at})", f.size);
        let value = match f.kind {
            Kind::Native => format!("{}::from_ne_bytes({bytes})", f.rust),
            Kind::Big => format!("{}::from_be_bytes({bytes})", f.rust),
            Kind::Bytes => bytes,
        };
        out.push_str(&format!("            {}: {value},\n", f.name));
    }
    out.push_str(
        "        }\n    }\n\n\
         \x20   /// The bytes [`RawRecord::read`] reads back as `self`.\n\
         \x20   pub fn write(&self) -> [u8; RECORD_LEN] {\n\
         \x20       let mut b = [0u8; RECORD_LEN];\n",
    );
    for f in fields {
        let at = format!("core::mem::offset_of!(RawRecord, {})", f.name);
        let bytes = match f.kind {
            Kind::Native => format!("self.{}.to_ne_bytes()", f.name),
            Kind::Big => format!("self.{}.to_be_bytes()", f.name),
            Kind::Bytes => format!("self.{}", f.name),
        };
        out.push_str(&format!(
            "        b[{at}..{at} + {}].copy_from_slice(&{bytes});\n",
            f.size
        ));
    }
    out.push_str(
        "        b\n    }\n}\n\n\
         /// `N` bytes of `b` from `at`.\n\
         fn raw<const N: usize>(b: &[u8; RECORD_LEN], at: usize) -> [u8; N] {\n\
         \x20   let mut out = [0u8; N];\n\
         \x20   out.copy_from_slice(&b[at..at + N]);\n\
         \x20   out\n\
         }\n",
    );
    out
}

/// `__uN name;`, `__beN name;` or `__u8 name[N];`.
fn field(line: &str) -> Option<Field> {
    let body = line.strip_suffix(';')?;
    let (ty, name) = body.split_once(char::is_whitespace)?;
    let (rust, size, kind) = match ty {
        "__u8" => ("u8", 1, Kind::Native),
        "__u16" => ("u16", 2, Kind::Native),
        "__u32" => ("u32", 4, Kind::Native),
        "__u64" => ("u64", 8, Kind::Native),
        "__be16" => ("u16", 2, Kind::Big),
        "__be32" => ("u32", 4, Kind::Big),
        "__be64" => ("u64", 8, Kind::Big),
        _ => return None,
    };
    let name = name.trim();
    let ident = |s: &str| {
        !s.is_empty()
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !s.starts_with(|c: char| c.is_ascii_digit())
    };
    let field = |name: &str, rust: String, size, kind| Field {
        name: name.to_string(),
        rust,
        size,
        kind,
    };
    match name.split_once('[') {
        None if ident(name) => Some(field(name, rust.to_string(), size, kind)),
        Some((array, len)) if ident(array) && ty == "__u8" => {
            let len: usize = len.strip_suffix(']')?.parse().ok().filter(|&n| n > 0)?;
            Some(field(array, format!("[u8; {len}]"), len, Kind::Bytes))
        }
        _ => None,
    }
}
