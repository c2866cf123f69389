//! Parses what a guest reported on its console (protocol: `HVLAB rec=... key=value ...`).
//!
//! The console is guest-controlled: malformed lines are counted and skipped, numbers that do
//! not parse are treated as absent, and the amount kept is bounded.

use std::collections::BTreeMap;

use hvlab_protocol::{HIST_BUCKETS, LINE_PREFIX, rec};

/// Most phases kept from one guest.
const MAX_PHASES: usize = 4096;

/// One `rec=phase` line, with its histogram if the guest sent one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuestPhase {
    pub id: u32,
    pub name: String,
    pub ops: u64,
    pub tsc: u64,
    /// Extra `key=value` pairs (workload metrics).
    pub metrics: BTreeMap<String, u64>,
    /// `(bucket, count)` pairs from the matching `rec=hist` line.
    pub hist: Vec<(usize, u64)>,
}

/// Everything a guest reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuestReport {
    /// `rec=info` pairs (last value wins).
    pub info: BTreeMap<String, String>,
    pub phases: Vec<GuestPhase>,
    /// `(micro-test, reason)` from `rec=skip`.
    pub skips: Vec<(String, String)>,
    /// The `rec=fault` line, if the guest took an exception.
    pub fault: Option<String>,
    /// Lines that started with the prefix but could not be understood.
    pub malformed: usize,
}

fn pairs(rest: &str) -> impl Iterator<Item = (&str, &str)> {
    rest.split_ascii_whitespace()
        .filter_map(|t| t.split_once('='))
}

fn parse_hist(v: &str) -> Option<Vec<(usize, u64)>> {
    if v.is_empty() {
        return Some(Vec::new());
    }
    v.split(',')
        .map(|p| {
            let (b, n) = p.split_once(':')?;
            let b: usize = b.parse().ok()?;
            (b < HIST_BUCKETS).then_some(())?;
            Some((b, n.parse().ok()?))
        })
        .collect()
}

/// Parses a console transcript.
pub fn parse(console: &str) -> GuestReport {
    let mut r = GuestReport::default();
    let mut hists: BTreeMap<u32, Vec<(usize, u64)>> = BTreeMap::new();
    for raw in console.lines() {
        let line = raw.trim_end_matches('\r');
        let Some(rest) = line
            .strip_prefix(LINE_PREFIX)
            .and_then(|l| l.strip_prefix(' '))
        else {
            continue;
        };
        let kv: BTreeMap<&str, &str> = pairs(rest).collect();
        let ok = match kv.get("rec").copied() {
            Some(rec::PHASE) => {
                let num = |k: &str| kv.get(k).and_then(|v| v.parse::<u64>().ok());
                match (num("id"), kv.get("name"), num("ops"), num("tsc")) {
                    (Some(id), Some(name), Some(ops), Some(tsc)) if r.phases.len() < MAX_PHASES => {
                        let metrics = kv
                            .iter()
                            .filter(|(k, _)| !matches!(**k, "rec" | "id" | "name" | "ops" | "tsc"))
                            .filter_map(|(k, v)| Some(((*k).to_string(), v.parse().ok()?)))
                            .collect();
                        r.phases.push(GuestPhase {
                            id: u32::try_from(id).unwrap_or(u32::MAX),
                            name: (*name).to_string(),
                            ops,
                            tsc,
                            metrics,
                            hist: Vec::new(),
                        });
                        true
                    }
                    _ => false,
                }
            }
            Some(rec::HIST) => {
                match (
                    kv.get("id").and_then(|v| v.parse::<u32>().ok()),
                    kv.get("b").and_then(|v| parse_hist(v)),
                ) {
                    (Some(id), Some(h)) => {
                        hists.insert(id, h);
                        true
                    }
                    _ => false,
                }
            }
            Some(rec::INFO) => {
                for (k, v) in &kv {
                    if *k != "rec" {
                        r.info.insert((*k).to_string(), (*v).to_string());
                    }
                }
                true
            }
            Some(rec::SKIP) => match (kv.get("name"), kv.get("reason")) {
                (Some(n), Some(why)) => {
                    r.skips.push(((*n).to_string(), why.replace('_', " ")));
                    true
                }
                _ => false,
            },
            Some("fault") => {
                r.fault = Some(rest.trim_start_matches("rec=fault").trim().to_string());
                true
            }
            _ => false,
        };
        if !ok {
            r.malformed += 1;
        }
    }
    for p in &mut r.phases {
        if let Some(h) = hists.remove(&p.id) {
            p.hist = h;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_phases_hist_info_and_skips() {
        let text = "boot noise\r\n\
            HVLAB rec=info workload=exit-floor cpus=2\r\n\
            HVLAB rec=phase id=3 name=pio-out ops=10 tsc=2500 answered=10\n\
            HVLAB rec=hist id=3 unit=tsc b=4:2,9:8\n\
            HVLAB rec=skip name=vmcall reason=hypercalls_not_available\n\
            HVLAB rec=phase id=4 name=broken ops=x tsc=1\n\
            HVLAB rec=hist id=9 unit=tsc b=999999:1\n\
            HVLABrec=phase id=5\n";
        let r = parse(text);
        assert_eq!(r.info["cpus"], "2");
        assert_eq!(r.phases.len(), 1);
        let p = &r.phases[0];
        assert_eq!(
            (p.id, p.name.as_str(), p.ops, p.tsc),
            (3, "pio-out", 10, 2500)
        );
        assert_eq!(p.metrics["answered"], 10);
        assert_eq!(p.hist, vec![(4, 2), (9, 8)]);
        assert_eq!(
            r.skips,
            vec![("vmcall".to_string(), "hypercalls not available".to_string())]
        );
        assert_eq!(r.malformed, 2, "bad ops and out-of-range bucket");
    }

    #[test]
    fn fault_line_is_kept() {
        let r = parse("HVLAB rec=fault vector=6 name=UD rip=0x1000\n");
        assert_eq!(r.fault.as_deref(), Some("vector=6 name=UD rip=0x1000"));
    }
}
