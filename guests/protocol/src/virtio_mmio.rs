//! `virtio_mmio.device=<size>@<base>:<irq>[:<id>]` on the kernel command line: how a VMM
//! without a device tree or ACPI names its virtio-mmio transports (Linux's
//! `drivers/virtio/virtio_mmio.c` reads the same words; QEMU's `-M microvm` appends one per
//! transport with a device on it when it boots a `-kernel` with `auto-kernel-cmdline=on`).
//!
//! Size and base take Linux `memparse` forms (decimal or `0x` hex, optional `K`/`M`/`G`
//! suffix); the IRQ is a decimal GSI. Words that do not parse are skipped, never trusted.

/// One transport named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    /// Bytes of the register window.
    pub size: u64,
    /// Guest-physical base of the register window.
    pub base: u64,
    /// Interrupt line (GSI, an IOAPIC pin on x86).
    pub irq: u32,
}

/// The command-line key, as Linux spells it.
pub const KEY: &str = "virtio_mmio.device";

/// The smallest register window a virtio-mmio transport can have (registers up to 0x100 plus
/// configuration space); smaller windows are rejected.
pub const MIN_WINDOW: u64 = 0x100;

/// Every well-formed `virtio_mmio.device=` word of `cmdline`, in order.
pub fn devices(cmdline: &str) -> impl Iterator<Item = Device> + '_ {
    cmdline.split_ascii_whitespace().filter_map(|w| {
        let (k, v) = w.split_once('=')?;
        if k == KEY { parse(v) } else { None }
    })
}

/// Parses the value of one `virtio_mmio.device=` word: `<size>@<base>:<irq>[:<id>]`.
pub fn parse(v: &str) -> Option<Device> {
    let (size, rest) = v.split_once('@')?;
    let mut parts = rest.split(':');
    let base = memparse(parts.next()?)?;
    let irq: u32 = parts.next()?.parse().ok()?;
    // An optional platform device id may follow; anything after it is malformed.
    if let Some(id) = parts.next()
        && id.parse::<u32>().is_err()
    {
        return None;
    }
    if parts.next().is_some() {
        return None;
    }
    let size = memparse(size)?;
    // The window must hold the registers and must not wrap the address space.
    if size < MIN_WINDOW || base.checked_add(size).is_none() {
        return None;
    }
    Some(Device { size, base, irq })
}

/// Linux `memparse`: decimal or `0x` hex with an optional K/M/G suffix (powers of 1024).
fn memparse(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let v = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16).ok()?,
        None => digits.parse::<u64>().ok()?,
    };
    v.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_words_qemu_microvm_appends() {
        let line = "blk-io cpus=1 part=0 blk=virtio virtio_mmio.device=512@0xfeb00000:12 \
                    virtio_mmio.device=512@0xfeb00200:13";
        let d: [Option<Device>; 3] = {
            let mut it = devices(line);
            [it.next(), it.next(), it.next()]
        };
        assert_eq!(
            d,
            [
                Some(Device {
                    size: 512,
                    base: 0xfeb0_0000,
                    irq: 12
                }),
                Some(Device {
                    size: 512,
                    base: 0xfeb0_0200,
                    irq: 13
                }),
                None
            ]
        );
    }

    #[test]
    fn takes_linux_memparse_forms_and_an_optional_id() {
        assert_eq!(
            parse("4K@0x10000000:5:3"),
            Some(Device {
                size: 4096,
                base: 0x1000_0000,
                irq: 5
            })
        );
        assert_eq!(
            parse("0x200@4026531840:7"),
            Some(Device {
                size: 512,
                base: 0xf000_0000,
                irq: 7
            })
        );
        assert_eq!(
            parse("1M@0x1G:9").map(|d| d.base),
            Some(1 << 30),
            "suffix after hex"
        );
        assert_eq!(
            parse("1M@1G:9").map(|d| (d.size, d.base)),
            Some((1 << 20, 1 << 30))
        );
    }

    #[test]
    fn malformed_words_are_skipped() {
        for bad in [
            "",
            "512",
            "512@",
            "512@0xfeb00000",
            "512@0xfeb00000:",
            "512@0xfeb00000:x",
            "512@0xfeb00000:12:y",
            "512@0xfeb00000:12:1:2",
            "16@0xfeb00000:12",
            "512@0xffffffffffffff00:12",
            "99999999999999999999@0:1",
            "512@0xfeb00000:-1",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        // Other keys, and a key without a value, are not devices.
        let line = "virtio_mmio.device virtio_mmio.devices=512@0x1000:1 x=virtio_mmio.device=1";
        assert_eq!(devices(line).count(), 0);
    }
}
