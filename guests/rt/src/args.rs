//! The boot command line: `<workload> [key=value ...]`. hv builds it; under QEMU it is `-append`.

use crate::Fail;

/// Longest command line the runtime keeps.
pub const MAX_CMDLINE: usize = 1024;

/// Parsed view of the command line (borrowed from the runtime's copy).
#[derive(Debug, Clone, Copy)]
pub struct Args {
    line: &'static str,
}

impl Args {
    /// Wraps a command line.
    pub fn new(line: &'static str) -> Args {
        Args { line: line.trim() }
    }

    /// The whole command line.
    pub fn line(&self) -> &'static str {
        self.line
    }

    /// First token: the workload name.
    pub fn workload(&self) -> &'static str {
        self.line.split_ascii_whitespace().next().unwrap_or("")
    }

    /// Value of `key=...`, if present.
    pub fn get(&self, key: &str) -> Option<&'static str> {
        self.line.split_ascii_whitespace().skip(1).find_map(|tok| {
            let (k, v) = tok.split_once('=')?;
            (k == key).then_some(v)
        })
    }

    /// `key` as an unsigned integer (decimal or 0x-hex), or `default` when absent.
    pub fn u64_or(&self, key: &'static str, default: u64) -> Result<u64, Fail> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => parse_u64(v).ok_or(Fail::BadArg(key)),
        }
    }

    /// `key` as a boolean (`1/0/true/false/on/off`), or `default` when absent.
    pub fn bool_or(&self, key: &'static str, default: bool) -> Result<bool, Fail> {
        match self.get(key) {
            None => Ok(default),
            Some("1" | "true" | "on" | "yes") => Ok(true),
            Some("0" | "false" | "off" | "no") => Ok(false),
            Some(_) => Err(Fail::BadArg(key)),
        }
    }

    /// `key` as a word, or `default` when absent.
    pub fn str_or(&self, key: &str, default: &'static str) -> &'static str {
        self.get(key).unwrap_or(default)
    }
}

/// Parses decimal or `0x` hex, with optional `k`/`m` suffixes (powers of 1024).
pub fn parse_u64(s: &str) -> Option<u64> {
    let (digits, mult) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1024),
        b'm' | b'M' => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    let v = if let Some(hex) = digits.strip_prefix("0x") {
        u64::from_str_radix(hex, 16).ok()?
    } else {
        digits.parse::<u64>().ok()?
    };
    v.checked_mul(mult)
}
