//! Links libpcap statically, without its D-Bus capture module, when the
//! system has its archive (Debian's libpcap-dev does).
//!
//! Linked dynamically, libpcap brings libdbus-1, libsystemd and theirs
//! (libgcrypt, liblzma, libzstd, liblz4, libgpg-error, libcap): loading
//! and relocating them costs about 1 ms of CPU at every start, which is
//! most of a `tcpwatch list`'s start-up, for a module that captures D-Bus
//! messages, never network traffic. The archive is copied to OUT_DIR with
//! that module (`pcap-dbus.o`) swapped for a stub that finds no D-Bus
//! device, and checked by linking all of it into a test program; the crate
//! then finds it first on its search path (`-lpcap` takes, in each
//! directory, the shared library or else the archive). Without the
//! archive, a C compiler or `ar`, when the check fails, or with
//! `TCPWATCH_PCAP=dynamic`, libpcap is linked dynamically as before.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What `pcap.c` calls in the module it loses: no device, never ours.
const STUB: &str = "\
struct pcap_if_list;
struct pcap;
int dbus_findalldevs(struct pcap_if_list *devlist, char *errbuf)
{ (void)devlist; (void)errbuf; return 0; }
struct pcap *dbus_create(const char *device, char *errbuf, int *is_ours)
{ (void)device; (void)errbuf; *is_ours = 0; return 0; }
";

const CHECK: &str = "int main(void) { return 0; }\n";

pub fn link_static(out: &Path) {
    println!("cargo:rerun-if-env-changed=TCPWATCH_PCAP");
    println!("cargo:rerun-if-env-changed=CC");
    println!("cargo:rerun-if-env-changed=AR");
    if std::env::var("TCPWATCH_PCAP").as_deref() == Ok("dynamic") {
        return;
    }
    match prepare(&out.join("pcap-static")) {
        Ok(dir) => println!("cargo:rustc-link-search=native={}", dir.display()),
        Err(why) => println!("cargo:warning=libpcap linked dynamically: {why}"),
    }
}

fn prepare(dir: &Path) -> Result<PathBuf, String> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let ar = std::env::var("AR").unwrap_or_else(|_| "ar".to_string());
    let found = run(Command::new(&cc).arg("-print-file-name=libpcap.a"))?;
    let system = PathBuf::from(found.trim());
    if !system.is_absolute() || !system.exists() {
        return Err("no libpcap.a".to_string());
    }
    println!("cargo:rerun-if-changed={}", system.display());
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let archive = dir.join("libpcap.a");
    let staged = dir.join("staged.a");
    std::fs::copy(&system, &staged).map_err(|e| format!("copy {}: {e}", system.display()))?;
    let members = run(Command::new(&ar).arg("t").arg(&staged))?;
    if members.lines().any(|m| m == "pcap-dbus.o") {
        run(Command::new(&ar).arg("d").arg(&staged).arg("pcap-dbus.o"))?;
        let stub = dir.join("pcap-dbus-stub.c");
        let object = dir.join("pcap-dbus-stub.o");
        std::fs::write(&stub, STUB).map_err(|e| e.to_string())?;
        run(Command::new(&cc)
            .args(["-c", "-O2", "-fPIC"])
            .arg(&stub)
            .arg("-o")
            .arg(&object))?;
        run(Command::new(&ar).arg("rs").arg(&staged).arg(&object))?;
    }
    // Every member linked, nothing but libc: anything the archive needs
    // from elsewhere fails here rather than in the crate's link.
    let check = dir.join("check.c");
    std::fs::write(&check, CHECK).map_err(|e| e.to_string())?;
    run(Command::new(&cc)
        .arg(&check)
        .arg("-Wl,--whole-archive")
        .arg(&staged)
        .arg("-Wl,--no-whole-archive")
        .arg("-o")
        .arg(dir.join("check")))
    .map_err(|e| format!("libpcap.a needs more than libc ({e})"))?;
    std::fs::rename(&staged, &archive).map_err(|e| e.to_string())?;
    Ok(dir.to_path_buf())
}

/// Runs a command; its stdout, or the first line of what went wrong.
fn run(command: &mut Command) -> Result<String, String> {
    let name = command.get_program().to_string_lossy().into_owned();
    let output = command
        .output()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(format!("{name} failed: {first}"));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
