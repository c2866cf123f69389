//! Small statistics: medians, a seeded RNG and the percentile bootstrap of a ratio of medians.

/// Median of `values` (mean of the middle two for an even count); `None` when empty.
/// NaNs are ignored.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Quantile `q` in [0, 1] of sorted `v` by linear interpolation between closest ranks.
fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// SplitMix64: tiny, fast and good enough to resample with; deterministic for a seed.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform index in `0..n` (`n > 0`), by Lemire's multiply-shift (bias < n / 2^64).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// FNV-1a of a string: mixes a group's name into the seed so that each comparison has its own
/// stream, independent of the order in which groups are visited.
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A point estimate with a confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub point: f64,
    pub lo: f64,
    pub hi: f64,
}

/// Pooled median of the chosen clusters.
fn pooled_median(
    clusters: &[Vec<f64>],
    pick: impl Iterator<Item = usize>,
    buf: &mut Vec<f64>,
) -> Option<f64> {
    buf.clear();
    for i in pick {
        buf.extend_from_slice(&clusters[i]);
    }
    median(buf)
}

/// Ratio `median(b) / median(a)` with a percentile bootstrap 95% CI.
///
/// Each side is a list of clusters (one per repetition; a cluster holds that repetition's values,
/// one per partition). A resample draws as many clusters as the side has, with replacement, each
/// side independently, and takes the median of the pooled values. Returns `None` when either side
/// is empty or `median(a)` is 0.
pub fn bootstrap_ratio(
    a: &[Vec<f64>],
    b: &[Vec<f64>],
    resamples: usize,
    seed: u64,
) -> Option<Estimate> {
    let all = |c: &[Vec<f64>]| c.iter().flatten().copied().collect::<Vec<f64>>();
    let ma = median(&all(a))?;
    let mb = median(&all(b))?;
    if ma == 0.0 {
        return None;
    }
    let point = mb / ma;
    let mut rng = SplitMix64::new(seed);
    let mut ratios = Vec::with_capacity(resamples);
    let mut buf = Vec::new();
    for _ in 0..resamples {
        let ra = pooled_median(
            a,
            (0..a.len())
                .map(|_| rng.below(a.len()))
                .collect::<Vec<_>>()
                .into_iter(),
            &mut buf,
        );
        let rb = pooled_median(
            b,
            (0..b.len())
                .map(|_| rng.below(b.len()))
                .collect::<Vec<_>>()
                .into_iter(),
            &mut buf,
        );
        if let (Some(ra), Some(rb)) = (ra, rb)
            && ra != 0.0
        {
            ratios.push(rb / ra);
        }
    }
    if ratios.is_empty() {
        return Some(Estimate {
            point,
            lo: point,
            hi: point,
        });
    }
    ratios.sort_by(f64::total_cmp);
    let lo = quantile_sorted(&ratios, 0.025).min(point);
    let hi = quantile_sorted(&ratios, 0.975).max(point);
    Some(Estimate { point, lo, hi })
}

/// `median` of the pooled clusters with a percentile bootstrap 95% CI: each resample draws as
/// many clusters (repetitions) as there are, with replacement. `None` when there are no values;
/// a single cluster gives a degenerate interval (nothing to resample between).
pub fn bootstrap_median(clusters: &[Vec<f64>], resamples: usize, seed: u64) -> Option<Estimate> {
    let all: Vec<f64> = clusters.iter().flatten().copied().collect();
    let point = median(&all)?;
    let mut rng = SplitMix64::new(seed);
    let mut meds = Vec::with_capacity(resamples);
    let mut buf = Vec::new();
    let n = clusters.len();
    for _ in 0..resamples {
        let pick: Vec<usize> = (0..n).map(|_| rng.below(n)).collect();
        if let Some(m) = pooled_median(clusters, pick.into_iter(), &mut buf) {
            meds.push(m);
        }
    }
    if meds.is_empty() {
        return Some(Estimate {
            point,
            lo: point,
            hi: point,
        });
    }
    meds.sort_by(f64::total_cmp);
    Some(Estimate {
        point,
        lo: quantile_sorted(&meds, 0.025).min(point),
        hi: quantile_sorted(&meds, 0.975).max(point),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clusters(v: &[f64]) -> Vec<Vec<f64>> {
        v.iter().map(|&x| vec![x]).collect()
    }

    #[test]
    fn median_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn splitmix_is_deterministic_and_in_range() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..100 {
            let x = a.below(5);
            assert_eq!(x, b.below(5));
            assert!(x < 5);
        }
        assert_ne!(SplitMix64::new(1).next_u64(), SplitMix64::new(2).next_u64());
    }

    #[test]
    fn bootstrap_ratio_point_is_ratio_of_medians_and_ci_contains_it() {
        let a = clusters(&[100.0, 110.0, 90.0, 105.0, 95.0]);
        let b = clusters(&[50.0, 55.0, 45.0, 52.0, 48.0]);
        let e = bootstrap_ratio(&a, &b, 2000, 42).unwrap();
        assert!((e.point - 0.5).abs() < 1e-12);
        assert!(e.lo <= e.point && e.point <= e.hi);
        assert!(e.lo > 0.35 && e.hi < 0.7, "{e:?}");
    }

    #[test]
    fn bootstrap_is_deterministic_for_a_seed() {
        let a = clusters(&[100.0, 130.0, 90.0, 105.0]);
        let b = clusters(&[60.0, 55.0, 45.0, 70.0]);
        let e1 = bootstrap_ratio(&a, &b, 500, 9).unwrap();
        let e2 = bootstrap_ratio(&a, &b, 500, 9).unwrap();
        assert_eq!(e1, e2);
    }

    #[test]
    fn bootstrap_ci_narrows_with_less_spread() {
        let wide_a = clusters(&[60.0, 140.0, 80.0, 120.0, 100.0, 70.0, 130.0]);
        let wide_b = clusters(&[30.0, 70.0, 40.0, 60.0, 50.0, 35.0, 65.0]);
        let tight_a = clusters(&[98.0, 102.0, 99.0, 101.0, 100.0, 99.5, 100.5]);
        let tight_b = clusters(&[49.0, 51.0, 49.5, 50.5, 50.0, 49.8, 50.2]);
        let w = bootstrap_ratio(&wide_a, &wide_b, 2000, 1).unwrap();
        let t = bootstrap_ratio(&tight_a, &tight_b, 2000, 1).unwrap();
        assert!((w.point - 0.5).abs() < 1e-12 && (t.point - 0.5).abs() < 1e-12);
        assert!(t.hi - t.lo < (w.hi - w.lo) / 3.0, "tight {t:?} wide {w:?}");
    }

    #[test]
    fn bootstrap_median_interval_spans_the_repetitions() {
        let c = clusters(&[100.0, 104.0, 96.0, 102.0, 98.0]);
        let e = bootstrap_median(&c, 2000, 5).unwrap();
        assert_eq!(e.point, 100.0);
        assert!(
            e.lo >= 96.0 && e.lo < 100.0 && e.hi <= 104.0 && e.hi > 100.0,
            "{e:?}"
        );
        let one = bootstrap_median(&clusters(&[7.0]), 100, 5).unwrap();
        assert_eq!((one.lo, one.point, one.hi), (7.0, 7.0, 7.0));
        assert!(bootstrap_median(&[], 10, 5).is_none());
    }

    #[test]
    fn bootstrap_single_values_give_a_degenerate_interval() {
        let e = bootstrap_ratio(&clusters(&[200.0]), &clusters(&[100.0]), 100, 3).unwrap();
        assert_eq!(
            e,
            Estimate {
                point: 0.5,
                lo: 0.5,
                hi: 0.5
            }
        );
        assert!(bootstrap_ratio(&clusters(&[0.0]), &clusters(&[1.0]), 10, 3).is_none());
        assert!(bootstrap_ratio(&[], &clusters(&[1.0]), 10, 3).is_none());
    }
}
