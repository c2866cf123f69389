//! Experiment specs (`bench/specs/*.toml`): named experiments, each a matrix over workload
//! arguments, device variants, enlightenment sets, vCPUs, partitions and VMMs, repeated.
//!
//! ```toml
//! name = "default"
//! repetitions = 3
//!
//! [[experiment]]
//! name = "exit-floor"
//! workload = "exit-floor"
//! baseline = "none"              # variant label ratios are computed against
//! args = { iters = [500] }       # every combination of listed values
//! vmm = ["hv", "qemu"]
//!
//! [[experiment]]
//! name = "blk-io"
//! workload = "blk-io"
//! devices = ["emulated", "synthetic", "synthetic-poll"]
//! baseline = "emulated"
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use hv::enlightenments::EnlightenmentSet;

/// Errors in a spec file.
#[derive(Debug, Error)]
pub enum SpecError {
    #[error("cannot read spec {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("spec {path} is not valid TOML for an hvlab spec: {message}")]
    Parse { path: String, message: String },
    #[error("spec {path}, experiment `{experiment}`: {message}")]
    Invalid {
        path: String,
        experiment: String,
        message: String,
    },
}

/// A scalar argument value as written in TOML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ArgValue {
    Int(i64),
    Str(String),
    Bool(bool),
}

impl ArgValue {
    /// As it goes on the guest command line.
    pub fn render(&self) -> String {
        match self {
            ArgValue::Int(n) => n.to_string(),
            ArgValue::Str(s) => s.clone(),
            ArgValue::Bool(b) => if *b { "1" } else { "0" }.to_string(),
        }
    }
}

/// One value or a list of values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(ArgValue),
    Many(Vec<ArgValue>),
}

impl OneOrMany {
    fn values(&self) -> Vec<ArgValue> {
        match self {
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

fn default_devices() -> Vec<String> {
    vec!["none".into()]
}
fn default_enlighten() -> Vec<String> {
    vec!["none".into()]
}
fn default_one() -> Vec<u32> {
    vec![1]
}
fn default_vmm() -> Vec<String> {
    vec!["hv".into()]
}

/// One experiment: a matrix of runs of one workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    pub name: String,
    pub workload: String,
    #[serde(default)]
    pub description: String,
    /// Workload arguments: each key maps to one value or a list (every combination runs).
    #[serde(default)]
    pub args: BTreeMap<String, OneOrMany>,
    /// `none`, `emulated`, `synthetic`, `synthetic-poll`, `synthetic-noevidx`, `vmbus`,
    /// `vmbus-poll`.
    #[serde(default = "default_devices")]
    pub devices: Vec<String>,
    /// Enlightenment sets as `--enlighten` spells them (`none`, `all`, `a,b`).
    #[serde(default = "default_enlighten")]
    pub enlighten: Vec<String>,
    #[serde(default = "default_one")]
    pub vcpus: Vec<u32>,
    #[serde(default = "default_one")]
    pub partitions: Vec<u32>,
    /// `hv` and/or `qemu` (the peer column).
    #[serde(default = "default_vmm")]
    pub vmm: Vec<String>,
    /// Host CPUs for vCPU threads (as `--cpus`), e.g. "0,1".
    #[serde(default)]
    pub cpus: Option<String>,
    /// Overrides the spec's repetitions.
    #[serde(default)]
    pub repetitions: Option<u32>,
    /// Variant label ratios are computed against (default: the analysis picks one).
    #[serde(default)]
    pub baseline: Option<String>,
    /// Guest RAM, e.g. "32M".
    #[serde(default)]
    pub mem: Option<String>,
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// Count `kvm:*` tracepoints (default true). Counting costs time on every traced event
    /// (on nested hosts `kvm_emulate_insn` fires per guest instruction), so experiments that
    /// compare times against a peer VMM turn it off.
    #[serde(default = "default_true")]
    pub tracepoints: bool,
    /// seccomp filters on vCPU and worker threads: `[true]` (default), or `[true, false]` to
    /// measure what they cost (`false` runs join the variant label as `+no-seccomp`).
    #[serde(default = "default_seccomp")]
    pub seccomp: Vec<bool>,
    /// A neighbour partition beside each run, on partition 0's CPUs (`RunRequest::neighbour`):
    /// `WORKLOAD[:key=value,...]`, e.g. `"mem-pattern:size=16k"`.
    #[serde(default)]
    pub neighbour: Option<String>,
    /// Many seeds without listing them: `seeds = 1000` (seeds 1..=1000) or `seeds = "5-99"`;
    /// each becomes the workload's `seed` argument, one run each (not part of the variant
    /// label: seeds are samples, like repetitions).
    #[serde(default)]
    pub seeds: Option<ArgValue>,
}

/// Most seeds one experiment may expand to.
pub const MAX_SEEDS: u64 = 1_000_000;

impl Experiment {
    /// The seeds `seeds` names, in order (empty when it names none).
    pub fn seed_values(&self) -> Result<Vec<u64>, String> {
        let (lo, hi) = match &self.seeds {
            None => return Ok(Vec::new()),
            Some(ArgValue::Int(n)) if *n >= 1 => (1, *n as u64),
            Some(ArgValue::Str(r)) => {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                match (a.trim().parse::<u64>(), b.trim().parse::<u64>()) {
                    (Ok(a), Ok(b)) if a <= b => (a, b),
                    _ => return Err(format!("seeds `{r}` is not a range like \"1-1000\"")),
                }
            }
            Some(other) => {
                return Err(format!(
                    "seeds = {} : give a count (seeds = 1000) or a range (seeds = \"1-1000\")",
                    other.render()
                ));
            }
        };
        if hi - lo >= MAX_SEEDS {
            return Err(format!("seeds: at most {MAX_SEEDS} per experiment"));
        }
        Ok((lo..=hi).collect())
    }
}

fn default_true() -> bool {
    true
}

fn default_seccomp() -> Vec<bool> {
    vec![true]
}

/// A spec file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_reps")]
    pub repetitions: u32,
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    pub experiment: Vec<Experiment>,
}

fn default_reps() -> u32 {
    3
}
fn default_timeout() -> f64 {
    60.0
}

/// Device variants a spec may name.
pub const DEVICE_VARIANTS: &[&str] = &[
    "none",
    "emulated",
    "synthetic",
    "synthetic-poll",
    "synthetic-noevidx",
    "vmbus",
    "vmbus-poll",
];

impl Spec {
    /// Reads and checks a spec file.
    pub fn load(path: &Path) -> Result<Spec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Spec::parse(&text, &path.display().to_string())
    }

    /// Parses and checks spec text (`origin` names it in errors).
    pub fn parse(text: &str, origin: &str) -> Result<Spec, SpecError> {
        let spec: Spec = toml::from_str(text).map_err(|e| SpecError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        spec.check(origin)?;
        Ok(spec)
    }

    fn check(&self, origin: &str) -> Result<(), SpecError> {
        let bad = |e: &Experiment, message: String| SpecError::Invalid {
            path: origin.to_string(),
            experiment: e.name.clone(),
            message,
        };
        if self.experiment.is_empty() {
            return Err(SpecError::Parse {
                path: origin.into(),
                message: "no [[experiment]] tables".into(),
            });
        }
        let mut names = std::collections::BTreeSet::new();
        for e in &self.experiment {
            if !names.insert(e.name.as_str()) {
                return Err(bad(e, "experiment names must be unique".into()));
            }
            let found = hvlab_workloads::find(&e.workload);
            let Some(info) = found.or(crate::kut::workload_info(&e.workload)) else {
                let valid: Vec<_> = hvlab_workloads::ALL.iter().map(|w| w.name).collect();
                return Err(bad(
                    e,
                    format!(
                        "unknown workload `{}`; valid: {}",
                        e.workload,
                        valid.join(", ")
                    ),
                ));
            };
            for k in e.args.keys() {
                if !info.params.iter().any(|p| p.key == k) {
                    let valid: Vec<_> = info.params.iter().map(|p| p.key).collect();
                    return Err(bad(
                        e,
                        format!(
                            "`{}` has no argument `{k}`; it takes: {}",
                            e.workload,
                            valid.join(", ")
                        ),
                    ));
                }
            }
            for d in &e.devices {
                let variant = hv::devices::device_options(d).variant;
                if let Some(why) = hv::devices::unsupported(variant, info.devices) {
                    return Err(bad(e, format!("device variant `{d}`: {why}")));
                }
                if !DEVICE_VARIANTS.contains(&d.as_str()) {
                    return Err(bad(
                        e,
                        format!(
                            "unknown device variant `{d}`; valid: {}",
                            DEVICE_VARIANTS.join(", ")
                        ),
                    ));
                }
            }
            for s in &e.enlighten {
                EnlightenmentSet::parse(s).map_err(|err| bad(e, err.to_string()))?;
            }
            for v in &e.vmm {
                if v != "hv" && !crate::peer::qemu::PEER_VMMS.contains(&v.as_str()) {
                    return Err(bad(
                        e,
                        format!("unknown vmm `{v}`; valid: hv, qemu, qemu-pc"),
                    ));
                }
            }
            if e.vcpus.iter().chain(&e.partitions).any(|&n| n == 0) {
                return Err(bad(e, "vcpus and partitions must be at least 1".into()));
            }
            if e.seeds.is_some() {
                if !info.params.iter().any(|p| p.key == "seed") {
                    return Err(bad(e, format!("`{}` takes no `seed`", e.workload)));
                }
                if e.args.contains_key("seed") {
                    return Err(bad(e, "give seeds either in args or as `seeds`".into()));
                }
                e.seed_values().map_err(|m| bad(e, m))?;
            }
            if let Some(n) = &e.neighbour {
                hv::neighbour::Neighbour::parse(n).map_err(|err| bad(e, err.to_string()))?;
            }
            if e.devices.is_empty()
                || e.enlighten.is_empty()
                || e.vcpus.is_empty()
                || e.partitions.is_empty()
                || e.vmm.is_empty()
                || e.seccomp.is_empty()
            {
                return Err(bad(
                    e,
                    "devices, enlighten, vcpus, partitions, vmm and seccomp lists must not be empty"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// Argument combinations of `e`, in a stable order.
    pub fn arg_combinations(e: &Experiment) -> Vec<BTreeMap<String, String>> {
        let mut combos = vec![BTreeMap::new()];
        for (k, v) in &e.args {
            let mut next = Vec::new();
            for c in &combos {
                for val in v.values() {
                    let mut c2 = c.clone();
                    c2.insert(k.clone(), val.render());
                    next.push(c2);
                }
            }
            combos = next;
        }
        let seeds = e.seed_values().unwrap_or_default();
        if seeds.is_empty() {
            return combos;
        }
        let mut out = Vec::with_capacity(combos.len() * seeds.len());
        for c in &combos {
            for s in &seeds {
                let mut c2 = c.clone();
                c2.insert("seed".into(), s.to_string());
                out.push(c2);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
name = "t"
repetitions = 2
[[experiment]]
name = "ef"
workload = "exit-floor"
args = { iters = [10, 20], tests = "nop" }
vmm = ["hv", "qemu"]
"#;

    #[test]
    fn parses_and_expands_arguments() {
        let s = Spec::parse(SPEC, "t.toml").unwrap();
        assert_eq!(s.repetitions, 2);
        let e = &s.experiment[0];
        assert_eq!(e.devices, vec!["none"]);
        let combos = Spec::arg_combinations(e);
        assert_eq!(combos.len(), 2);
        assert_eq!(combos[0]["iters"], "10");
        assert_eq!(combos[1]["tests"], "nop");
    }

    #[test]
    fn seeds_expand_into_runs_and_neighbours_are_checked() {
        let spec = r#"
name = "c"
[[experiment]]
name = "chaos"
workload = "chaos"
args = { ops = 10 }
seeds = "3-7"
neighbour = "mem-pattern:size=16k"
"#;
        let s = Spec::parse(spec, "c.toml").unwrap();
        let combos = Spec::arg_combinations(&s.experiment[0]);
        let seeds: Vec<&str> = combos.iter().map(|c| c["seed"].as_str()).collect();
        assert_eq!(seeds, ["3", "4", "5", "6", "7"]);
        assert!(combos.iter().all(|c| c["ops"] == "10"));
        let n = Spec::parse(&spec.replace("\"3-7\"", "1000"), "c").unwrap();
        assert_eq!(Spec::arg_combinations(&n.experiment[0]).len(), 1000);
        for (bad, want) in [
            ("seeds = \"3-7\"", "seeds = \"7-3\""),
            ("seeds = \"3-7\"", "seeds = 0"),
            ("args = { ops = 10 }", "args = { seed = 1 }"),
            ("workload = \"chaos\"", "workload = \"exit-floor\""),
            ("mem-pattern:size", "mem-pattern:sise"),
        ] {
            let e = Spec::parse(&spec.replace(bad, want), "c");
            assert!(e.is_err(), "{want} should be refused");
        }
    }

    #[test]
    fn the_chaos_spec_runs_a_thousand_seeds_per_variant_beside_a_neighbour() {
        let s = Spec::parse(
            include_str!("../../../bench/specs/chaos.toml"),
            "chaos.toml",
        )
        .unwrap();
        let e = &s.experiment[0];
        assert_eq!(e.workload, "chaos");
        assert!(Spec::arg_combinations(e).len() >= 1000);
        assert_eq!(e.devices, ["emulated", "synthetic"]);
        assert!(e.neighbour.as_deref().unwrap().starts_with("mem-pattern"));
        assert!(e.timeout_s.unwrap_or(s.timeout_s) <= 10.0);
        assert!(
            e.cpus.is_some(),
            "the neighbour shares partition 0's pinned CPUs"
        );
    }

    #[test]
    fn bad_specs_name_the_problem() {
        let e = Spec::parse(&SPEC.replace("exit-floor", "nope"), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown workload `nope`") && e.contains("x.toml"),
            "{e}"
        );
        let e = Spec::parse(&SPEC.replace("iters", "itres"), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no argument `itres`"), "{e}");
        let e = Spec::parse(
            &SPEC.replace("vmm = [\"hv\", \"qemu\"]", "vmm = [\"xen\"]"),
            "x",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown vmm"), "{e}");
        let e = Spec::parse("name = 1", "x").unwrap_err().to_string();
        assert!(e.contains("not valid TOML"), "{e}");
        let e = Spec::parse(&SPEC.replace("vmm =", "bogus = 1\nvmm ="), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let with_enl = SPEC.replace("vmm =", "enlighten = [\"warp-drive\"]\nvmm =");
        assert!(
            Spec::parse(&with_enl, "x")
                .unwrap_err()
                .to_string()
                .contains("warp-drive")
        );
        // The net class has no VMBus-style device: said at load, not as failed runs.
        let net = "name = \"n\"\n[[experiment]]\nname = \"net\"\nworkload = \"net-io\"\ndevices = [\"synthetic\", \"vmbus\"]\npartitions = [2]\n";
        let e = Spec::parse(net, "x").unwrap_err().to_string();
        assert!(
            e.contains("`vmbus`") && e.contains("no VMBus-style device"),
            "{e}"
        );
    }
}
