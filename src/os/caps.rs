//! Capabilities: the kernel's numbers and sets, and the system calls that
//! read and restrict this process's sets (capget/capset, prctl).

use std::fmt;
use std::io::Error;

/// The capabilities any feature uses (numbers of `<linux/capability.h>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cap {
    DacReadSearch = 2,
    NetBindService = 10,
    NetAdmin = 12,
    NetRaw = 13,
    SysPtrace = 19,
    SysAdmin = 21,
    Perfmon = 38,
    Bpf = 39,
}

impl Cap {
    pub fn name(self) -> &'static str {
        match self {
            Cap::DacReadSearch => "CAP_DAC_READ_SEARCH",
            Cap::NetBindService => "CAP_NET_BIND_SERVICE",
            Cap::NetAdmin => "CAP_NET_ADMIN",
            Cap::NetRaw => "CAP_NET_RAW",
            Cap::SysPtrace => "CAP_SYS_PTRACE",
            Cap::SysAdmin => "CAP_SYS_ADMIN",
            Cap::Perfmon => "CAP_PERFMON",
            Cap::Bpf => "CAP_BPF",
        }
    }

    pub fn bit(self) -> u64 {
        1 << self as u32
    }
}

/// A set of capabilities as the kernel holds it: one bit per number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapSet(pub u64);

impl CapSet {
    pub fn of(caps: &[Cap]) -> CapSet {
        CapSet(caps.iter().fold(0, |bits, c| bits | c.bit()))
    }

    pub fn has(self, cap: Cap) -> bool {
        self.0 & cap.bit() != 0
    }

    pub fn with(self, cap: Cap) -> CapSet {
        CapSet(self.0 | cap.bit())
    }

    pub fn and(self, other: CapSet) -> CapSet {
        CapSet(self.0 & other.0)
    }
}

impl fmt::Display for CapSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets in two 32-bit words.
const VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

pub struct Held {
    pub permitted: CapSet,
    pub effective: CapSet,
}

fn header() -> Header {
    Header {
        version: VERSION_3,
        pid: 0,
    }
}

pub fn get() -> std::io::Result<Held> {
    let mut header = header();
    let mut data = [Data::default(); 2];
    // SAFETY: capget with a v3 header writes two `Data` words into the
    // array we own.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| CapSet(u64::from(lo) | u64::from(hi) << 32);
    Ok(Held {
        permitted: join(data[0].permitted, data[1].permitted),
        effective: join(data[0].effective, data[1].effective),
    })
}

/// Runs `f` with `cap` out of this thread's effective set, then puts it
/// back if it was there: what `f` opens then carries no such privilege (a
/// socket's opener's credentials are checked at each use, beside the
/// caller's). The permitted set is untouched; when the sets cannot be read
/// or written, `f` runs as is.
pub fn without_effective<T>(cap: Cap, f: impl FnOnce() -> T) -> T {
    let mut head = header();
    let mut data = [Data::default(); 2];
    // SAFETY: capget with a v3 header writes two `Data` words into the
    // array we own.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut head, data.as_mut_ptr()) };
    let (word, bit) = ((cap as u32 / 32) as usize, 1u32 << (cap as u32 % 32));
    if rc != 0 || data[word].effective & bit == 0 {
        return f();
    }
    let set = |data: &[Data; 2]| {
        let mut header = header();
        // SAFETY: capset reads the v3 header and two `Data` words we own.
        unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) == 0 }
    };
    let mut lowered = data;
    lowered[word].effective &= !bit;
    if !set(&lowered) {
        return f();
    }
    let out = f();
    set(&data);
    out
}

/// Effective = permitted = `keep`; inheritable = ambient = `ambient`
/// (a subset of `keep`); no_new_privs. Ambient is cleared first: the
/// kernel raises an ambient capability only when it is both permitted
/// and inheritable.
pub fn restrict(keep: CapSet, ambient: CapSet) -> std::io::Result<()> {
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as u64,
        0,
    )?;
    let split = |set: CapSet| [set.0 as u32, (set.0 >> 32) as u32];
    let (k, a) = (split(keep), split(ambient));
    let data = [0, 1].map(|i| Data {
        effective: k[i],
        permitted: k[i],
        inheritable: a[i],
    });
    let mut header = header();
    // SAFETY: capset reads the v3 header and two `Data` words we own.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(Error::last_os_error());
    }
    for cap in 0..64u64 {
        if ambient.0 & (1 << cap) != 0 {
            prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE as u64, cap)?;
        }
    }
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0)
}

fn prctl(option: libc::c_int, arg2: u64, arg3: u64) -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(option, arg2, arg3, 0u64, 0u64) };
    if rc != 0 {
        return Err(Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_effective_lowers_the_cap_for_the_call_only() {
        let before = get().unwrap();
        let inside = without_effective(Cap::NetAdmin, || get().unwrap());
        assert!(!inside.effective.has(Cap::NetAdmin));
        assert_eq!(inside.permitted, before.permitted);
        assert_eq!(
            inside.effective,
            CapSet(before.effective.0 & !Cap::NetAdmin.bit())
        );
        assert_eq!(get().unwrap().effective, before.effective);
        // Nested, and for a capability not held: nothing to put back.
        without_effective(Cap::NetAdmin, || without_effective(Cap::NetAdmin, || ()));
        assert_eq!(get().unwrap().effective, before.effective);
    }
}
