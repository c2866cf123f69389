//! Host facts read from /proc and /sys: the one place they are parsed. Run records use them
//! as they are; `caps` adds behavioural probes with test guests on top.

use std::path::Path;

use crate::record::HostInfo;

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({path}: {e})"))
}

/// `uname -r`.
pub fn kernel_release() -> String {
    read_trimmed("/proc/sys/kernel/osrelease")
}

/// The text of /proc/cpuinfo (empty if unreadable).
pub fn cpuinfo() -> String {
    std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default()
}

fn cpuinfo_field<'a>(cpuinfo: &'a str, name: &str) -> Option<&'a str> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim())
    })
}

/// First `model name` in `cpuinfo`.
pub fn cpu_model(cpuinfo: &str) -> String {
    cpuinfo_field(cpuinfo, "model name")
        .unwrap_or("unknown")
        .to_owned()
}

/// Counts a CPU list such as `0-3,8,10-11`.
pub fn count_cpu_list(list: &str) -> Option<u32> {
    let mut n = 0u32;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?);
                b.checked_sub(a)? + 1
            }
            None => {
                part.trim().parse::<u32>().ok()?;
                1
            }
        };
    }
    Some(n)
}

/// Online host CPUs.
pub fn cores() -> u32 {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| count_cpu_list(&s))
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .and_then(|n| u32::try_from(n.get()).ok())
        })
        .unwrap_or(0)
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// How KVM runs guests here, from what the host shows: the KVM vendor module loaded and the
/// CPU's virtualization flags, with the evidence as lines. (`caps` adds a behavioural probe.)
pub fn kvm_flavour(cpuinfo: &str) -> (String, Vec<String>) {
    let flags: Vec<&str> = cpuinfo_field(cpuinfo, "flags")
        .map(|v| v.split_whitespace().collect())
        .unwrap_or_default();
    let has = |f: &str| flags.contains(&f);
    let module = |m: &str| Path::new("/sys/module").join(m).exists();
    let (vmx, svm, hypervisor) = (has("vmx"), has("svm"), has("hypervisor"));
    let (intel, amd, pvm) = (module("kvm_intel"), module("kvm_amd"), module("kvm_pvm"));
    let mut ev = vec![
        format!(
            "cpuinfo flags: vmx={} svm={} hypervisor={}",
            yes(vmx),
            yes(svm),
            yes(hypervisor)
        ),
        format!(
            "/sys/module: kvm_intel={} kvm_amd={} kvm_pvm={}",
            yes(intel),
            yes(amd),
            yes(pvm)
        ),
    ];
    let flavour = if pvm {
        "nested-pvm"
    } else if intel && vmx {
        "hardware-vmx"
    } else if amd && svm {
        "hardware-svm"
    } else {
        "unknown"
    };
    if flavour.starts_with("hardware") && hypervisor {
        ev.push(
            "the host itself runs under a hypervisor: this is nested hardware virtualization"
                .to_owned(),
        );
    }
    (flavour.to_owned(), ev)
}

/// Host facts without capability probes.
pub fn host_info() -> HostInfo {
    let cpuinfo = cpuinfo();
    HostInfo {
        kernel: kernel_release(),
        cpu_model: cpu_model(&cpuinfo),
        cores: cores(),
        kvm_flavour: kvm_flavour(&cpuinfo).0,
        caps: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_cpu_list_parses_ranges() {
        assert_eq!(count_cpu_list("0-1\n"), Some(2));
        assert_eq!(count_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("x"), None);
    }

    #[test]
    fn cpuinfo_fields_are_found_by_key() {
        let text = "processor\t: 0\nmodel name\t: Test CPU @ 1GHz\nflags\t\t: fpu vmx\n";
        assert_eq!(cpu_model(text), "Test CPU @ 1GHz");
        assert_eq!(cpu_model(""), "unknown");
        assert!(kvm_flavour(text).1[0].contains("vmx=yes svm=no"));
    }
}
