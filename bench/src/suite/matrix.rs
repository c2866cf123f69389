//! Expanding specs into planned runs, and slicing them into shards.

use std::collections::BTreeMap;

use super::spec::{Experiment, Spec};

/// One run of a matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRun {
    /// Position in the whole (unsharded) matrix.
    pub index: usize,
    /// Stable identity: the same matrix point gets the same key in every shard and resume.
    pub key: String,
    pub spec: String,
    pub experiment: Experiment,
    pub args: BTreeMap<String, String>,
    pub device: String,
    pub enlighten: String,
    pub vcpus: u32,
    pub partitions: u32,
    pub vmm: String,
    pub repetition: u32,
    pub timeout_s: f64,
    /// seccomp filters on (the spec's `seccomp` axis).
    pub seccomp: bool,
}

/// Every run of `specs`, in a deterministic order. Within an experiment, repetitions are the
/// outermost loop, so an interrupted suite has every variant once before any variant twice.
pub fn plan(specs: &[Spec]) -> Vec<PlannedRun> {
    let mut out = Vec::new();
    for spec in specs {
        for e in &spec.experiment {
            let reps = e.repetitions.unwrap_or(spec.repetitions).max(1);
            let combos = Spec::arg_combinations(e);
            for repetition in 0..reps {
                for args in &combos {
                    for device in &e.devices {
                        for enlighten in &e.enlighten {
                            for &vcpus in &e.vcpus {
                                for &partitions in &e.partitions {
                                    for (vmm, &seccomp) in e
                                        .vmm
                                        .iter()
                                        .flat_map(|v| e.seccomp.iter().map(move |s| (v, s)))
                                    {
                                        let argstr: Vec<String> =
                                            args.iter().map(|(k, v)| format!("{k}={v}")).collect();
                                        // `/noseccomp` only when off: keys of specs
                                        // without the axis stay as they were (resume).
                                        let key = format!(
                                            "{}/{}/{}/{}/{}/v{}/p{}/{}/r{}{}",
                                            spec.name,
                                            e.name,
                                            argstr.join(","),
                                            device,
                                            enlighten,
                                            vcpus,
                                            partitions,
                                            vmm,
                                            repetition,
                                            if seccomp { "" } else { "/noseccomp" }
                                        );
                                        out.push(PlannedRun {
                                            index: out.len(),
                                            key,
                                            spec: spec.name.clone(),
                                            experiment: e.clone(),
                                            args: args.clone(),
                                            device: device.clone(),
                                            enlighten: enlighten.clone(),
                                            vcpus,
                                            partitions,
                                            vmm: vmm.clone(),
                                            repetition,
                                            timeout_s: e.timeout_s.unwrap_or(spec.timeout_s),
                                            seccomp,
                                        });
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// A `K/N` shard selector (1-based K).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub k: usize,
    pub n: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Shard, String> {
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| format!("shard `{s}` is not K/N (e.g. 1/4)"))?;
        let (k, n): (usize, usize) = (
            k.trim()
                .parse()
                .map_err(|_| format!("shard `{s}`: K is not a number"))?,
            n.trim()
                .parse()
                .map_err(|_| format!("shard `{s}`: N is not a number"))?,
        );
        if n == 0 || k == 0 || k > n {
            return Err(format!("shard `{s}`: need 1 <= K <= N"));
        }
        Ok(Shard { k, n })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

impl Shard {
    /// This shard's runs: round-robin by matrix position, so every shard gets a similar mix.
    pub fn select(self, runs: Vec<PlannedRun>) -> Vec<PlannedRun> {
        runs.into_iter()
            .filter(|r| r.index % self.n == self.k - 1)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec::parse(
            r#"
name = "t"
repetitions = 2
[[experiment]]
name = "a"
workload = "exit-floor"
args = { iters = [1, 2] }
vmm = ["hv", "qemu"]
[[experiment]]
name = "b"
workload = "mem-pattern"
partitions = [1, 2]
"#,
            "t",
        )
        .unwrap()
    }

    #[test]
    fn plan_is_the_full_product_with_unique_keys() {
        let runs = plan(&[spec()]);
        assert_eq!(runs.len(), 2 * 2 * 2 + 2 * 2);
        let keys: std::collections::BTreeSet<_> = runs.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys.len(), runs.len());
        assert_eq!(runs[0].repetition, 0);
        assert_eq!(
            runs[3].repetition, 0,
            "every variant once before any repeats"
        );
        assert_eq!(runs[4].repetition, 1);
        assert_eq!(plan(&[spec()]), runs, "deterministic");
    }

    #[test]
    fn seccomp_axis_doubles_the_matrix_and_keeps_default_keys() {
        let base = plan(&[spec()]);
        let both = Spec::parse(
            r#"
name = "t"
repetitions = 1
[[experiment]]
name = "s"
workload = "exit-floor"
seccomp = [true, false]
"#,
            "t",
        )
        .unwrap();
        let runs = plan(&[both]);
        assert_eq!(runs.len(), 2);
        assert!(runs[0].seccomp && !runs[1].seccomp);
        assert_eq!(runs[1].key, format!("{}/noseccomp", runs[0].key));
        assert!(base.iter().all(|r| r.seccomp && !r.key.contains("seccomp")));
        // The shipped spec measures both sides of every point.
        let shipped = Spec::parse(
            include_str!("../../../bench/specs/seccomp.toml"),
            "seccomp.toml",
        )
        .unwrap();
        let runs = plan(&[shipped]);
        let off = runs.iter().filter(|r| !r.seccomp).count();
        assert!(off > 0 && off * 2 == runs.len(), "{off} of {}", runs.len());
    }

    #[test]
    fn seed_ranges_plan_one_run_per_seed_and_shard_cleanly() {
        let s = Spec::parse(
            r#"
name = "c"
repetitions = 1
[[experiment]]
name = "chaos"
workload = "chaos"
devices = ["emulated", "synthetic"]
seeds = 50
neighbour = "mem-pattern"
"#,
            "c",
        )
        .unwrap();
        let runs = plan(std::slice::from_ref(&s));
        assert_eq!(runs.len(), 100);
        let keys: std::collections::BTreeSet<_> = runs.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys.len(), 100);
        assert!(runs[0].key.contains("seed=1/emulated"), "{}", runs[0].key);
        assert_eq!(plan(&[s]), runs, "deterministic");
        let a = Shard { k: 1, n: 3 }.select(runs.clone()).len();
        let b = Shard { k: 2, n: 3 }.select(runs.clone()).len();
        let c = Shard { k: 3, n: 3 }.select(runs).len();
        assert_eq!(a + b + c, 100);
    }

    #[test]
    fn shards_cover_the_matrix_exactly_once() {
        let all = plan(&[spec()]);
        for n in 1..=5 {
            let mut seen: Vec<String> = Vec::new();
            for k in 1..=n {
                seen.extend(
                    Shard { k, n }
                        .select(all.clone())
                        .into_iter()
                        .map(|r| r.key),
                );
            }
            seen.sort();
            let mut want: Vec<String> = all.iter().map(|r| r.key.clone()).collect();
            want.sort();
            assert_eq!(seen, want, "n={n}");
        }
        assert!("0/2".parse::<Shard>().is_err());
        assert!("3/2".parse::<Shard>().is_err());
        assert_eq!("2/3".parse::<Shard>().unwrap(), Shard { k: 2, n: 3 });
    }
}
