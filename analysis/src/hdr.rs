//! `latency.hdr`: hdrhistogram V2 + deflate serialization, base64 (standard alphabet).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};

use crate::AnalysisError;

/// Decodes a `latency.hdr` string.
pub fn decode(s: &str) -> Result<Histogram<u64>, AnalysisError> {
    let bytes = STANDARD
        .decode(s.trim())
        .map_err(|e| AnalysisError::Histogram(format!("not base64: {e}")))?;
    let mut h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| {
            AnalysisError::Histogram(format!("not an hdrhistogram V2 serialization: {e:?}"))
        })?;
    // Deserialized histograms are fixed-range; merging runs with larger values into this one
    // must grow it instead of failing.
    h.auto(true);
    Ok(h)
}

/// Encodes a histogram the way the guest protocol does (also used to build test fixtures).
pub fn encode(h: &Histogram<u64>) -> Result<String, AnalysisError> {
    let mut buf = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut buf)
        .map_err(|e| AnalysisError::Histogram(format!("cannot serialize: {e:?}")))?;
    Ok(STANDARD.encode(buf))
}

/// Builds an encoded histogram from raw values (3 significant digits).
pub fn encode_values(values: &[u64]) -> Result<String, AnalysisError> {
    let mut h = Histogram::<u64>::new(3)
        .map_err(|e| AnalysisError::Histogram(format!("cannot create: {e:?}")))?;
    for &v in values {
        h.record(v.max(1))
            .map_err(|e| AnalysisError::Histogram(format!("cannot record {v}: {e:?}")))?;
    }
    encode(&h)
}

/// Cumulative distribution points `(value, fraction <= value)` of a histogram.
pub fn cdf(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let total = h.len();
    if total == 0 {
        return Vec::new();
    }
    // Counts come from guests (a hostile one reports buckets of u64::MAX), so the running sum
    // saturates instead of overflowing.
    let mut cum = 0u64;
    h.iter_recorded()
        .map(|v| {
            cum = cum.saturating_add(v.count_at_value());
            (
                h.highest_equivalent(v.value_iterated_to()) as f64,
                cum as f64 / total as f64,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_of_guest_sized_counts_does_not_overflow() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        h.record_n(10, u64::MAX / 2).unwrap();
        h.record_n(1000, u64::MAX / 2).unwrap();
        let _ = h.record_n(100_000, u64::MAX / 2);
        let c = cdf(&h);
        assert!(!c.is_empty());
        assert!(c.iter().all(|(_, f)| f.is_finite()));
    }

    #[test]
    fn decoded_histograms_merge_larger_values() {
        let mut small = Histogram::<u64>::new(3).unwrap();
        small.record(10).unwrap();
        let mut big = Histogram::<u64>::new(3).unwrap();
        big.record(10_000_000_000).unwrap();
        let mut a = decode(&encode(&small).unwrap()).unwrap();
        let b = decode(&encode(&big).unwrap()).unwrap();
        a.add(&b).unwrap();
        assert_eq!(a.len(), 2);
        assert!(a.max() >= 9_990_000_000);
    }

    #[test]
    fn encode_decode_roundtrip_keeps_counts_and_percentiles() {
        let values: Vec<u64> = (1..=1000).collect();
        let s = encode_values(&values).unwrap();
        let h = decode(&s).unwrap();
        assert_eq!(h.len(), 1000);
        let p50 = h.value_at_quantile(0.5);
        assert!((499..=501).contains(&p50), "p50 {p50}");
        let c = cdf(&h);
        assert!((c.last().unwrap().1 - 1.0).abs() < 1e-12);
        assert!(c.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
    }

    #[test]
    fn decode_rejects_garbage() {
        assert!(matches!(decode("!!!"), Err(AnalysisError::Histogram(_))));
        assert!(matches!(
            decode("aGVsbG8="),
            Err(AnalysisError::Histogram(_))
        ));
    }
}
