//! Guest latency histograms (protocol buckets) → hdrhistogram summaries for run records.

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use hvlab_protocol::hist_bucket_low;

use crate::record::Latency;

/// Builds a latency summary from `(bucket, count)` pairs. Each bucket is represented by its
/// midpoint (at most `limits::MAX_HIST_ENTRIES` pairs are used); values are converted to ns
/// when `tsc_khz` is known, else kept in TSC cycles.
pub fn summarize(buckets: &[(usize, u64)], tsc_khz: u64) -> Option<Latency> {
    let mut h = Histogram::<u64>::new(3).ok()?;
    let to_unit = |cycles: u64| {
        if tsc_khz > 0 {
            (cycles as u128 * 1_000_000 / tsc_khz as u128) as u64
        } else {
            cycles
        }
    };
    // The parser keeps at most one entry per bucket; bound the work here too, whoever calls.
    for &(b, n) in buckets.iter().take(crate::limits::MAX_HIST_ENTRIES) {
        let lo = hist_bucket_low(b);
        let hi = hist_bucket_low(b + 1).max(lo + 1);
        let mid = lo + (hi - lo) / 2;
        h.record_n(to_unit(mid).max(1), n).ok()?;
    }
    if h.is_empty() {
        return None;
    }
    let mut bytes = Vec::new();
    V2DeflateSerializer::new().serialize(&h, &mut bytes).ok()?;
    Some(Latency {
        unit: if tsc_khz > 0 { "ns" } else { "tsc" }.into(),
        count: h.len(),
        p50: h.value_at_quantile(0.50) as f64,
        p90: h.value_at_quantile(0.90) as f64,
        p99: h.value_at_quantile(0.99) as f64,
        max: h.max() as f64,
        mean: h.mean(),
        hdr: base64::engine::general_purpose::STANDARD.encode(bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hvlab_protocol::hist_bucket;

    #[test]
    fn percentiles_follow_the_buckets() {
        // 90 ops around 1000 cycles, 10 around 100_000, at 1 GHz (1 cycle = 1 ns).
        let b = vec![(hist_bucket(1000), 90), (hist_bucket(100_000), 10)];
        let l = summarize(&b, 1_000_000).unwrap();
        assert_eq!(l.unit, "ns");
        assert_eq!(l.count, 100);
        assert!((896.0..=1150.0).contains(&l.p50), "{}", l.p50);
        assert!(l.p99 > 90_000.0, "{}", l.p99);
        assert!(!l.hdr.is_empty());
        assert!(summarize(&[], 0).is_none());
    }
}
