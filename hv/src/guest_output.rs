//! Parses what a guest reported on its console (protocol: `HVLAB rec=... key=value ...`).
//!
//! The console is guest-controlled: malformed lines are counted and skipped, numbers that do
//! not parse are treated as absent, and the amount kept is bounded (caps in `crate::limits`).

use std::collections::BTreeMap;

use hvlab_protocol::{HIST_BUCKETS, LINE_PREFIX, rec};

use crate::limits::{
    MAX_HIST_ENTRIES, MAX_INFO_KEYS, MAX_METRICS_PER_PHASE, MAX_PHASES, MAX_SKIPS,
};

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
    /// Well-formed lines dropped past a cap (phases, histograms, skips, info keys).
    pub dropped: usize,
}

fn pairs(rest: &str) -> impl Iterator<Item = (&str, &str)> {
    rest.split_ascii_whitespace()
        .filter_map(|t| t.split_once('='))
}

/// `bucket:count,...`; at most one entry per bucket (more is malformed), so what a line can
/// make hv keep is bounded whatever its length.
fn parse_hist(v: &str) -> Option<Vec<(usize, u64)>> {
    if v.is_empty() {
        return Some(Vec::new());
    }
    let mut out = Vec::new();
    for p in v.split(',') {
        if out.len() >= MAX_HIST_ENTRIES {
            return None;
        }
        let (b, n) = p.split_once(':')?;
        let b: usize = b.parse().ok()?;
        (b < HIST_BUCKETS).then_some(())?;
        out.push((b, n.parse().ok()?));
    }
    Some(out)
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
                    (Some(_), Some(_), Some(_), Some(_)) if r.phases.len() >= MAX_PHASES => {
                        r.dropped += 1;
                        true
                    }
                    (Some(id), Some(name), Some(ops), Some(tsc)) => {
                        let metrics = kv
                            .iter()
                            .filter(|(k, _)| !matches!(**k, "rec" | "id" | "name" | "ops" | "tsc"))
                            .filter_map(|(k, v)| Some(((*k).to_string(), v.parse().ok()?)))
                            .take(MAX_METRICS_PER_PHASE)
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
                        if hists.len() < MAX_PHASES || hists.contains_key(&id) {
                            hists.insert(id, h);
                        } else {
                            r.dropped += 1;
                        }
                        true
                    }
                    _ => false,
                }
            }
            Some(rec::INFO) => {
                for (k, v) in &kv {
                    if *k == "rec" {
                        continue;
                    }
                    if r.info.len() < MAX_INFO_KEYS || r.info.contains_key(*k) {
                        r.info.insert((*k).to_string(), (*v).to_string());
                    } else {
                        r.dropped += 1;
                    }
                }
                true
            }
            Some(rec::SKIP) => match (kv.get("name"), kv.get("reason")) {
                (Some(n), Some(why)) => {
                    if r.skips.len() < MAX_SKIPS {
                        r.skips.push(((*n).to_string(), why.replace('_', " ")));
                    } else {
                        r.dropped += 1;
                    }
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
    fn skips_phases_info_and_hists_are_capped() {
        let mut t = String::new();
        for i in 0..MAX_SKIPS + 100 {
            t.push_str(&format!("HVLAB rec=skip name=s{i} reason=r\n"));
        }
        for i in 0..MAX_PHASES + 5 {
            t.push_str(&format!("HVLAB rec=phase id={i} name=p ops=1 tsc=1\n"));
            t.push_str(&format!(
                "HVLAB rec=hist id={} unit=tsc b=1:1\n",
                i + 100_000
            ));
        }
        for i in 0..MAX_INFO_KEYS + 7 {
            t.push_str(&format!("HVLAB rec=info k{i}=v\n"));
        }
        let metrics: String = (0..MAX_METRICS_PER_PHASE + 9)
            .map(|i| format!(" m{i}=1"))
            .collect();
        let r = parse(&format!(
            "HVLAB rec=phase id=1 name=x ops=1 tsc=1{metrics}\n"
        ));
        assert_eq!(r.phases[0].metrics.len(), MAX_METRICS_PER_PHASE);
        let r = parse(&t);
        assert_eq!(r.skips.len(), MAX_SKIPS);
        assert_eq!(r.phases.len(), MAX_PHASES);
        assert_eq!(r.info.len(), MAX_INFO_KEYS);
        assert_eq!(r.dropped, 100 + 5 + 5 + 7);
        assert_eq!(r.malformed, 0);
    }

    #[test]
    fn a_hist_line_holds_at_most_one_entry_per_bucket() {
        let full: Vec<String> = (0..HIST_BUCKETS).map(|b| format!("{b}:1")).collect();
        let ok = format!(
            "HVLAB rec=phase id=1 name=x ops=1 tsc=1\nHVLAB rec=hist id=1 unit=tsc b={}\n",
            full.join(",")
        );
        assert_eq!(parse(&ok).phases[0].hist.len(), HIST_BUCKETS);
        let over = format!("HVLAB rec=hist id=1 unit=tsc b={},0:1\n", full.join(","));
        assert_eq!(parse(&over).malformed, 1);
    }

    #[test]
    fn fault_line_is_kept() {
        let r = parse("HVLAB rec=fault vector=6 name=UD rip=0x1000\n");
        assert_eq!(r.fault.as_deref(), Some("vector=6 name=UD rip=0x1000"));
    }
}
