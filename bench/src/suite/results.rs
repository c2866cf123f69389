//! The results directory: `runs.jsonl` (whole lines only, whole runs only) and `manifest.json`.
//!
//! Crash safety: all records of one run go out in a single `write` of whole lines followed by
//! `fdatasync`. Each record carries its run's key and record count, so on resume a run that
//! was cut short (or a torn last line) is recognised, dropped, and run again. A new
//! `runs.jsonl` (and a new results directory) has its directory entry synced, so the file
//! itself survives a crash, not only its data. Whole-file rewrites (`manifest.json`, a resumed
//! `runs.jsonl` without its torn tail) go through [`write_atomic`]: a crash leaves the old file
//! or the new one, never a mix or nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use hv::error::HvError;
use hv::record::{Manifest, RunRecord};

/// File names inside a results directory.
pub const RUNS: &str = "runs.jsonl";
pub const MANIFEST: &str = "manifest.json";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> HvError + '_ {
    move |source| HvError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// fsyncs directory `dir`, making the entries created or renamed in it durable.
pub fn sync_dir(dir: &Path) -> Result<(), HvError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Replaces `dir/name` with `bytes` atomically and durably: write a temporary file in the same
/// directory, fsync it, rename it over the target, fsync the directory.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), HvError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    if let Err(e) = std::fs::rename(&tmp, &path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(&path)(e));
    }
    sync_dir(dir)
}

/// Creates `dir` (and its parents) when missing, syncing the parent of each directory
/// created so that the new entries survive a crash.
fn create_dir_durably(dir: &Path) -> Result<(), HvError> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(p) = parent {
        create_dir_durably(p)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io_err(dir)(e)),
    }
    sync_dir(parent.unwrap_or(Path::new(".")))
}

/// Appends runs to `runs.jsonl`.
#[derive(Debug)]
pub struct RunsWriter {
    path: PathBuf,
    file: File,
}

/// What a resume found in an existing `runs.jsonl`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Keys of runs recorded whole.
    pub done: BTreeSet<String>,
    /// Lines dropped: a torn last line, or the records of a run cut short.
    pub dropped_lines: usize,
}

/// Splits existing `runs.jsonl` text into the lines of whole runs, and what was dropped.
pub fn recover(text: &str) -> (Vec<String>, Recovered) {
    let mut rec = Recovered::default();
    let complete_text = match text.rfind('\n') {
        Some(i) => {
            if i + 1 < text.len() {
                rec.dropped_lines += 1; // torn last line
            }
            &text[..=i]
        }
        None => {
            rec.dropped_lines += usize::from(!text.is_empty());
            ""
        }
    };
    let mut by_key: BTreeMap<String, (u32, Vec<String>)> = BTreeMap::new();
    let mut order = Vec::new();
    for line in complete_text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<RunRecord>(line) {
            Ok(r) if !r.run_key.is_empty() => {
                let e = by_key.entry(r.run_key.clone()).or_insert_with(|| {
                    order.push(r.run_key.clone());
                    (r.run_records, Vec::new())
                });
                e.1.push(line.to_string());
            }
            _ => rec.dropped_lines += 1,
        }
    }
    let mut keep = Vec::new();
    for key in order {
        if let Some((want, lines)) = by_key.remove(&key) {
            if lines.len() == want as usize {
                rec.done.insert(key);
                keep.extend(lines);
            } else {
                rec.dropped_lines += lines.len();
            }
        }
    }
    (keep, rec)
}

impl RunsWriter {
    /// Opens `dir/runs.jsonl` for appending. With `resume`, keeps the whole runs already there
    /// (rewriting the file without a torn tail) and reports them; without, the file must not
    /// exist yet.
    pub fn open(dir: &Path, resume: bool) -> Result<(RunsWriter, Recovered), HvError> {
        create_dir_durably(dir)?;
        let path = dir.join(RUNS);
        let mut recovered = Recovered::default();
        if path.exists() {
            if !resume {
                return Err(HvError::Config(format!(
                    "{} already exists; pass --resume {} to continue it, or choose another --out",
                    path.display(),
                    dir.display()
                )));
            }
            let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
            let (keep, rec) = recover(&text);
            if rec.dropped_lines > 0 {
                let mut body = keep.join("\n");
                if !body.is_empty() {
                    body.push('\n');
                }
                write_atomic(dir, RUNS, body.as_bytes())?;
            }
            recovered = rec;
        }
        let created = !path.exists();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if created {
            sync_dir(dir)?;
        }
        Ok((RunsWriter { path, file }, recovered))
    }

    /// Appends one run's records (stamped with its key and count) in a single write.
    pub fn append_run(&mut self, key: &str, records: &mut [RunRecord]) -> Result<(), HvError> {
        let n = u32::try_from(records.len()).unwrap_or(u32::MAX);
        let mut buf = Vec::new();
        for r in records.iter_mut() {
            r.run_key = key.to_string();
            r.run_records = n;
            serde_json::to_writer(&mut buf, r).map_err(|e| HvError::Io {
                path: self.path.display().to_string(),
                source: e.into(),
            })?;
            buf.push(b'\n');
        }
        self.file.write_all(&buf).map_err(io_err(&self.path))?;
        self.file.sync_data().map_err(io_err(&self.path))
    }
}

/// Writes `manifest.json` atomically and durably ([`write_atomic`]).
pub fn write_manifest(dir: &Path, m: &Manifest) -> Result<(), HvError> {
    let path = dir.join(MANIFEST);
    let text = serde_json::to_string_pretty(m).map_err(|e| HvError::Io {
        path: path.display().to_string(),
        source: e.into(),
    })?;
    create_dir_durably(dir)?;
    write_atomic(dir, MANIFEST, text.as_bytes())
}

/// Reads `manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, HvError> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    serde_json::from_str(&text)
        .map_err(|e| HvError::Config(format!("{}: not a manifest: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, n: u32, phase: &str) -> String {
        let r = RunRecord {
            run_key: key.into(),
            run_records: n,
            phase: phase.into(),
            ..Default::default()
        };
        serde_json::to_string(&r).unwrap()
    }

    #[test]
    fn recover_keeps_whole_runs_and_drops_cut_ones() {
        let text = format!(
            "{}\n{}\n{}\n{}\n{}",
            rec("a", 2, "x"),
            rec("a", 2, "y"),
            rec("b", 3, "x"),
            rec("b", 3, "y"),
            &rec("c", 1, "x")[..20] // torn
        );
        let (keep, r) = recover(&text);
        assert_eq!(keep.len(), 2);
        assert_eq!(
            r.done.into_iter().collect::<Vec<_>>(),
            vec!["a".to_string()]
        );
        assert_eq!(r.dropped_lines, 3);
    }

    #[test]
    fn writer_resumes_after_a_torn_tail() {
        let dir = std::env::temp_dir().join(format!("hvlab-results-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut w, r) = RunsWriter::open(&dir, false).unwrap();
        assert!(r.done.is_empty());
        let mut recs = vec![RunRecord::default(), RunRecord::default()];
        w.append_run("k1", &mut recs).unwrap();
        drop(w);
        assert!(
            RunsWriter::open(&dir, false).is_err(),
            "refuses to overwrite without --resume"
        );
        // Simulate a kill in the middle of the next run's write.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join(RUNS))
            .unwrap();
        f.write_all(rec("k2", 2, "x").as_bytes()).unwrap();
        f.write_all(b"\n{\"schema\":1,\"run_").unwrap();
        drop(f);
        let (_w, r) = RunsWriter::open(&dir, true).unwrap();
        assert_eq!(
            r.done.into_iter().collect::<Vec<_>>(),
            vec!["k1".to_string()]
        );
        assert_eq!(r.dropped_lines, 2);
        let text = std::fs::read_to_string(dir.join(RUNS)).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.ends_with('\n'));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn manifest_is_replaced_atomically_and_a_failed_write_keeps_the_old_one() {
        let dir = std::env::temp_dir().join(format!("hvlab-manifest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let m = Manifest {
            run_id: "first".into(),
            ..Default::default()
        };
        write_manifest(&dir.join("new"), &m).unwrap();
        assert_eq!(read_manifest(&dir.join("new")).unwrap().run_id, "first");
        let dir = dir.join("new");
        let m2 = Manifest {
            run_id: "second".into(),
            ..Default::default()
        };
        write_manifest(&dir, &m2).unwrap();
        assert_eq!(read_manifest(&dir).unwrap().run_id, "second");
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![MANIFEST.to_string()], "no temporary file left");
        // A write that fails midway (its temporary name is taken by a directory) leaves the
        // old manifest whole.
        std::fs::create_dir(dir.join(format!(".{MANIFEST}.tmp-{}", std::process::id()))).unwrap();
        assert!(write_manifest(&dir, &m).is_err());
        assert_eq!(read_manifest(&dir).unwrap().run_id, "second");
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }

    #[test]
    fn each_appended_run_is_whole_on_disk_after_append_returns() {
        let dir = std::env::temp_dir().join(format!("hvlab-runs-sync-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut w, _) = RunsWriter::open(&dir.join("a/b"), false).unwrap();
        let mut recs = vec![RunRecord::default(); 3];
        w.append_run("k", &mut recs).unwrap();
        // Read through another descriptor while the writer is still open (no buffering).
        let text = std::fs::read_to_string(dir.join("a/b").join(RUNS)).unwrap();
        let (keep, r) = recover(&text);
        assert_eq!((keep.len(), r.dropped_lines), (3, 0));
        assert!(r.done.contains("k"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
