//! This host's name, as the kernel has it for the agent's UTS namespace.

/// The host name (`/proc/sys/kernel/hostname`), or `None` when it cannot
/// be read.
pub fn name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_host_has_a_name() {
        assert!(super::name().is_some_and(|n| !n.contains('\n')));
    }
}
