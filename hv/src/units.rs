//! Parsers for the sizes and CPU lists users write on the command line and in specs, so both
//! accept the same spellings.

use crate::error::HvError;

/// Parses `32M`, `1G`, `4096`, `64KiB`.
pub fn parse_size(s: &str) -> Result<u64, HvError> {
    let t = s.trim();
    let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &t[digits.len()..];
    let n: u64 = digits
        .parse()
        .map_err(|_| HvError::Config(format!("`{s}` is not a size (try 32M or 1G)")))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(HvError::Config(format!(
                "`{s}`: unknown unit `{unit}` (use K, M or G)"
            )));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| HvError::Config(format!("`{s}` is too large")))
}

/// Parses `0,1,4-7` into host CPU numbers.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, HvError> {
    let bad = |what: String| HvError::Config(what);
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = match (a.trim().parse(), b.trim().parse()) {
                    (Ok(a), Ok(b)) => (a, b),
                    _ => return Err(bad(format!("bad CPU range `{part}`"))),
                };
                if a > b || b - a > 4096 {
                    return Err(bad(format!("bad CPU range `{part}`")));
                }
                out.extend(a..=b);
            }
            None => out.push(
                part.parse()
                    .map_err(|_| bad(format!("`{part}` is not a CPU number")))?,
            ),
        }
    }
    if out.is_empty() {
        return Err(bad("empty CPU list".into()));
    }
    let online = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if let Some(c) = out.iter().find(|&&c| c >= online.max(1024)) {
        return Err(bad(format!("CPU {c} does not exist on this host")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("32M").unwrap(), 32 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5T").is_err());
    }

    #[test]
    fn cpu_lists_parse_ranges() {
        assert_eq!(parse_cpu_list("0,2-4").unwrap(), vec![0, 2, 3, 4]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
    }
}
