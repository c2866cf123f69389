//! The backing store shared by both block variants: a raw image file (`--disk PATH`, created at
//! the requested size when missing) or an in-memory disk. Addressed in 512-byte sectors.
//!
//! Data safety: writes go straight to the file (`pwrite`, no hv-side cache), so a write the
//! guest saw complete is in the file's page cache; `flush` (the guest's FLUSH) and dropping the
//! disk (clean exit) make it durable with `fdatasync`.
//!
//! Sharing: an image opened read-write holds an exclusive OFD lock (`F_OFD_SETLK`, as QEMU
//! locks images), a read-only one a shared lock. OFD locks belong to the open file
//! description, so two partitions of one process conflict just as two processes do, and the
//! lock goes away with the last descriptor (a killed hv leaves none behind).
//!
//! Faults: [`FaultSpec`]s (`--disk-fault eio@write:3`) make chosen reads, writes or flushes
//! fail as the host would (EIO, ENOSPC, a short write) so the devices' error paths and the
//! guest's handling of them can be tested; injected faults are counted in [`DiskStats`].

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use thiserror::Error;

/// Bytes per sector, for both ATA and virtio-blk.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the default in-memory disk and of a created image when no size is given.
pub const DEFAULT_DISK_SIZE: u64 = 8 << 20;
/// Largest in-memory disk hv allocates.
pub const MAX_MEMORY_DISK: u64 = 1 << 30;
/// Most fault specs one disk takes (each is checked on every access).
pub const MAX_FAULTS: usize = 16;

/// Disk errors.
#[derive(Debug, Error)]
pub enum DiskError {
    /// The size is not a positive multiple of the sector size.
    #[error("disk size {0} is not a positive multiple of 512 bytes")]
    BadSize(u64),
    /// An in-memory disk larger than hv allows.
    #[error("in-memory disk of {0} bytes is larger than the 1 GiB limit; give --disk PATH")]
    TooLarge(u64),
    /// Opening or creating the image failed.
    #[error("disk image {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another open of the image holds a conflicting lock.
    #[error(
        "disk image {path} is in use: {holder} has it open{how}; an image is opened read-write \
         by one partition of one hv at a time (give --disk-readonly to every user to share it \
         read-only)",
        how = writer_word(.readonly)
    )]
    Locked {
        path: PathBuf,
        /// Who holds it, as far as /proc tells.
        holder: String,
        /// This open asked for read-only (so the holder must be a writer).
        readonly: bool,
    },
    /// The file system cannot lock the image.
    #[error(
        "disk image {path}: cannot take an OFD lock on it ({source}); hv opens images only \
         locked, so that two users cannot write one image at once. Put it on a local file system"
    )]
    LockFailed {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Creating or growing the image could need more space than the file system has.
    #[error(
        "disk image {path}: {size} bytes would need up to {need} more bytes but the file system \
         has {avail} free; raw images are sparse, so the guest could fill it and then see \
         write errors. Free space or give a smaller --disk-size"
    )]
    NoSpace {
        path: PathBuf,
        size: u64,
        need: u64,
        avail: u64,
    },
    /// A read-only image cannot be created or grown.
    #[error("disk image {path}: {why} (the image is opened read-only)")]
    ReadOnlyImage { path: PathBuf, why: String },
    /// A write to a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// A transfer outside the disk.
    #[error("access at byte {offset} length {len} is outside the {size}-byte disk")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// A fault injected on purpose (`--disk-fault`).
    #[error("injected fault {spec}: {source}")]
    Injected {
        spec: FaultSpec,
        #[source]
        source: std::io::Error,
    },
    /// The host I/O failed.
    #[error("disk I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The operation fails with EIO and moves no data.
    Eio,
    /// The operation fails with ENOSPC and moves no data.
    Enospc,
    /// A write stores only its first half (whole sectors, rounded down) and then fails, as a
    /// short `pwrite` whose retry fails does.
    Short,
}

/// Which operation a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    Read,
    Write,
    Flush,
}

/// Which operations of its kind a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultWhen {
    /// Only the Nth (1-based) operation.
    Nth(u64),
    /// The Nth and every later one (a disk that filled up).
    From(u64),
    /// Every Nth: N, 2N, 3N, ...
    Every(u64),
    /// Every operation touching a sector in `first..=last`.
    Sectors { first: u64, last: u64 },
}

/// One injected fault: `KIND@OP:WHEN`, e.g. `eio@write:3`, `enospc@write:5+`,
/// `eio@read:every=4`, `short@write:sectors=64-71`, `eio@flush:1`.
///
/// Counting is per disk and per operation kind, in the order the device asks the disk:
/// virtio-blk makes one disk operation per request, ATA one per DRQ block (one sector unless
/// READ/WRITE MULTIPLE is in use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultSpec {
    pub kind: FaultKind,
    pub op: FaultOp,
    pub when: FaultWhen,
}

/// Why a `--disk-fault` spec does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FaultSpecError {
    #[error(
        "`{0}`: expected KIND@OP:WHEN, e.g. eio@write:3 (KIND eio|enospc|short, OP read|write|flush, WHEN N|N+|every=N|sectors=A-B)"
    )]
    Shape(String),
    #[error("unknown fault kind `{0}` (known: eio, enospc, short)")]
    Kind(String),
    #[error("unknown operation `{0}` (known: read, write, flush)")]
    Op(String),
    #[error(
        "bad WHEN `{0}`: expected N (the Nth), N+ (from the Nth on), every=N, or sectors=A-B / sector=A; N counts from 1"
    )]
    When(String),
    #[error("`short` applies to writes only")]
    ShortNotWrite,
    #[error("a flush has no sectors; use N, N+ or every=N")]
    FlushSectors,
}

impl fmt::Display for FaultSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            FaultKind::Eio => "eio",
            FaultKind::Enospc => "enospc",
            FaultKind::Short => "short",
        };
        let op = match self.op {
            FaultOp::Read => "read",
            FaultOp::Write => "write",
            FaultOp::Flush => "flush",
        };
        write!(f, "{kind}@{op}:")?;
        match self.when {
            FaultWhen::Nth(n) => write!(f, "{n}"),
            FaultWhen::From(n) => write!(f, "{n}+"),
            FaultWhen::Every(n) => write!(f, "every={n}"),
            FaultWhen::Sectors { first, last } => write!(f, "sectors={first}-{last}"),
        }
    }
}

fn positive(s: &str) -> Option<u64> {
    s.parse::<u64>().ok().filter(|&n| n > 0)
}

impl FromStr for FaultSpec {
    type Err = FaultSpecError;

    fn from_str(s: &str) -> Result<FaultSpec, FaultSpecError> {
        let shape = || FaultSpecError::Shape(s.to_string());
        let (kind, rest) = s.trim().split_once('@').ok_or_else(shape)?;
        let (op, when) = rest.split_once(':').ok_or_else(shape)?;
        let kind = match kind.to_ascii_lowercase().as_str() {
            "eio" => FaultKind::Eio,
            "enospc" => FaultKind::Enospc,
            "short" => FaultKind::Short,
            other => return Err(FaultSpecError::Kind(other.to_string())),
        };
        let op = match op.to_ascii_lowercase().as_str() {
            "read" => FaultOp::Read,
            "write" => FaultOp::Write,
            "flush" => FaultOp::Flush,
            other => return Err(FaultSpecError::Op(other.to_string())),
        };
        let bad_when = || FaultSpecError::When(when.to_string());
        let when = if let Some(n) = when.strip_prefix("every=") {
            FaultWhen::Every(positive(n).ok_or_else(bad_when)?)
        } else if let Some(r) = when
            .strip_prefix("sectors=")
            .or_else(|| when.strip_prefix("sector="))
        {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            let first = a.parse::<u64>().map_err(|_| bad_when())?;
            let last = b.parse::<u64>().map_err(|_| bad_when())?;
            if last < first {
                return Err(bad_when());
            }
            FaultWhen::Sectors { first, last }
        } else if let Some(n) = when.strip_suffix('+') {
            FaultWhen::From(positive(n).ok_or_else(bad_when)?)
        } else {
            FaultWhen::Nth(positive(when).ok_or_else(bad_when)?)
        };
        if kind == FaultKind::Short && op != FaultOp::Write {
            return Err(FaultSpecError::ShortNotWrite);
        }
        if op == FaultOp::Flush && matches!(when, FaultWhen::Sectors { .. }) {
            return Err(FaultSpecError::FlushSectors);
        }
        Ok(FaultSpec { kind, op, when })
    }
}

impl FaultSpec {
    /// Whether the `n`th operation of kind `op` (1-based), on bytes `offset..offset+len`, is hit.
    fn hits(&self, op: FaultOp, n: u64, offset: u64, len: u64) -> bool {
        if op != self.op {
            return false;
        }
        match self.when {
            FaultWhen::Nth(k) => n == k,
            FaultWhen::From(k) => n >= k,
            FaultWhen::Every(k) => n % k == 0,
            FaultWhen::Sectors { first, last } => {
                let lo = offset / SECTOR_SIZE;
                let hi = (offset + len.max(1) - 1) / SECTOR_SIZE;
                lo <= last && hi >= first
            }
        }
    }

    /// The host error this fault stands for.
    fn error(&self, detail: Option<String>) -> std::io::Error {
        match (self.kind, detail) {
            (FaultKind::Eio, _) => std::io::Error::from_raw_os_error(libc::EIO),
            (FaultKind::Enospc, _) => std::io::Error::from_raw_os_error(libc::ENOSPC),
            (FaultKind::Short, d) => std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                d.unwrap_or_else(|| "short write".into()),
            ),
        }
    }
}

/// How a block device may use its image: read-only, and faults to inject. The default is a
/// read-write disk without faults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskAccess {
    /// Open the image read-only (shared lock; the devices refuse writes).
    pub readonly: bool,
    /// Faults to inject (at most [`MAX_FAULTS`]).
    pub faults: Vec<FaultSpec>,
}

/// Operation counters of one disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Read, write and flush requests made of the disk (failed ones included).
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    /// fdatasync calls made (file-backed disks).
    pub syncs: u64,
    /// Operations failed on purpose by a [`FaultSpec`].
    pub faults_injected: u64,
}

impl DiskStats {
    /// `key=value` words for a device's stats note.
    pub fn words(&self) -> String {
        format!(
            "disk_reads={} disk_writes={} disk_flushes={} syncs={} faults_injected={}",
            self.reads, self.writes, self.flushes, self.syncs, self.faults_injected
        )
    }
}

#[derive(Debug)]
enum Backing {
    File { file: File, path: PathBuf },
    Memory(Vec<u8>),
}

/// A raw disk.
#[derive(Debug)]
pub struct Disk {
    backing: Backing,
    size: u64,
    /// Writes since the last flush (a flush with nothing to do skips the syscall). A file
    /// starts dirty: an earlier process may have left unsynced pages of it behind.
    dirty: bool,
    readonly: bool,
    faults: Vec<FaultSpec>,
    stats: DiskStats,
}

/// A disk shared by a device model and its worker.
pub type SharedDisk = Arc<Mutex<Disk>>;

/// A read-only open conflicts only with a writer: say so.
fn writer_word(readonly: &bool) -> &'static str {
    if *readonly { " read-write" } else { "" }
}

fn check_size(size: u64) -> Result<(), DiskError> {
    if size == 0 || size % SECTOR_SIZE != 0 {
        return Err(DiskError::BadSize(size));
    }
    Ok(())
}

/// Takes an OFD lock on the whole of `file`: shared for read-only, exclusive otherwise.
/// Returns the errno on failure (EAGAIN/EACCES: someone holds a conflicting lock).
fn ofd_lock(file: &File, readonly: bool) -> std::io::Result<()> {
    // SAFETY: flock is plain data; all-zero is a valid value, fields set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if readonly {
        libc::F_RDLCK
    } else {
        libc::F_WRLCK
    } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0; // to the end, however the file grows
    fl.l_pid = 0; // must be 0 for OFD locks
    // SAFETY: the fd is open for the life of `file`; fcntl reads `fl`, which outlives the call.
    let rc = unsafe {
        libc::fcntl(
            file.as_raw_fd(),
            libc::F_OFD_SETLK,
            &fl as *const libc::flock,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Who else has the file with `dev`/`ino` open, from /proc (OFD locks record no owner, so
/// this names every opener, except `own_fd` in this process). Best effort, a few at most.
fn openers(dev: u64, ino: u64, own_fd: i32) -> String {
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return "another open of the image".into();
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let hit = fds.flatten().any(|fd| {
            let n = fd.file_name().to_str().and_then(|s| s.parse::<i32>().ok());
            if pid == me && n == Some(own_fd) {
                return false;
            }
            std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
        });
        if hit {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            found.push(if pid == me {
                format!("this process (pid {pid}, e.g. another partition of this run)")
            } else {
                format!("pid {pid} ({})", comm.trim())
            });
            if found.len() >= 4 {
                break;
            }
        }
    }
    if found.is_empty() {
        "another open of the image".into()
    } else {
        found.join(", ")
    }
}

/// Bytes free to an unprivileged user on the file system holding `file`.
fn free_bytes(file: &File) -> std::io::Result<u64> {
    // SAFETY: statvfs is plain data; fstatvfs fills it for the open fd.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open for the life of `file`; `s` outlives the call.
    let rc = unsafe { libc::fstatvfs(file.as_raw_fd(), &mut s) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

impl Disk {
    /// An in-memory disk of `size` bytes (zeros).
    pub fn memory(size: u64) -> Result<Disk, DiskError> {
        check_size(size)?;
        if size > MAX_MEMORY_DISK {
            return Err(DiskError::TooLarge(size));
        }
        Ok(Disk {
            backing: Backing::Memory(vec![0; size as usize]),
            size,
            dirty: false,
            readonly: false,
            faults: Vec::new(),
            stats: DiskStats::default(),
        })
    }

    /// Opens the raw image at `path` read-write. A missing file is created with `create_size`
    /// bytes (0: [`DEFAULT_DISK_SIZE`]); an existing one keeps its size (rounded down to
    /// sectors), and is grown to `create_size` when that is larger.
    pub fn open(path: &Path, create_size: u64) -> Result<Disk, DiskError> {
        Disk::open_with(path, create_size, false)
    }

    /// Opens the raw image at `path`, read-write (exclusive lock; created or grown to
    /// `create_size` as for [`Disk::open`], refused when the file system could not hold it) or
    /// read-only (shared lock; the image must exist and is never grown).
    pub fn open_with(path: &Path, create_size: u64, readonly: bool) -> Result<Disk, DiskError> {
        Disk::open_inner(path, create_size, readonly, true)
    }

    /// [`Disk::open`] without the free-space check: a sparse image the caller knows the guest
    /// will not fill (LBA48 tests address sectors past 2^32 of a 2 TiB image).
    pub fn open_sparse(path: &Path, create_size: u64) -> Result<Disk, DiskError> {
        Disk::open_inner(path, create_size, false, false)
    }

    fn open_inner(
        path: &Path,
        create_size: u64,
        readonly: bool,
        check_space: bool,
    ) -> Result<Disk, DiskError> {
        let open_err = |source| DiskError::Open {
            path: path.to_path_buf(),
            source,
        };
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .create(!readonly)
            .truncate(false)
            .open(path)
            .map_err(open_err)?;
        // Created here and refused below: leave nothing behind.
        let discard = |e: DiskError| {
            if !existed {
                let _ = std::fs::remove_file(path);
            }
            e
        };
        let meta = file.metadata().map_err(open_err)?;
        if let Err(e) = ofd_lock(&file, readonly) {
            return Err(match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EACCES) => DiskError::Locked {
                    path: path.to_path_buf(),
                    holder: openers(meta.dev(), meta.ino(), file.as_raw_fd()),
                    readonly,
                },
                _ => discard(DiskError::LockFailed {
                    path: path.to_path_buf(),
                    source: e,
                }),
            });
        }
        let len = meta.len();
        let want = if create_size == 0 && len == 0 {
            DEFAULT_DISK_SIZE
        } else {
            create_size
        };
        if want > len {
            check_size(want).map_err(discard)?;
            if readonly {
                return Err(DiskError::ReadOnlyImage {
                    path: path.to_path_buf(),
                    why: format!("it has {len} bytes and {want} were asked for"),
                });
            }
            // The guest may write every block of the (sparse) image: all of it that is not
            // allocated yet must fit.
            let need = want.saturating_sub(meta.blocks().saturating_mul(512));
            let avail = free_bytes(&file).map_err(|e| discard(open_err(e)))?;
            if check_space && need > avail {
                return Err(discard(DiskError::NoSpace {
                    path: path.to_path_buf(),
                    size: want,
                    need,
                    avail,
                }));
            }
            file.set_len(want).map_err(|e| discard(open_err(e)))?;
        }
        let size = want.max(len) / SECTOR_SIZE * SECTOR_SIZE;
        check_size(size)?;
        Ok(Disk {
            backing: Backing::File {
                file,
                path: path.to_path_buf(),
            },
            size,
            dirty: !readonly,
            readonly,
            faults: Vec::new(),
            stats: DiskStats::default(),
        })
    }

    /// Opens `path` if given, else an in-memory disk of `size` (0: the default size), with
    /// `access`'s read-only mode and faults.
    pub fn from_options(
        path: Option<&Path>,
        size: u64,
        access: &DiskAccess,
    ) -> Result<Disk, DiskError> {
        let mut d = match path {
            Some(p) => Disk::open_with(p, size, access.readonly)?,
            None => {
                let mut d = Disk::memory(if size == 0 { DEFAULT_DISK_SIZE } else { size })?;
                d.readonly = access.readonly;
                d
            }
        };
        d.faults = access.faults.iter().take(MAX_FAULTS).copied().collect();
        Ok(d)
    }

    /// Adds a fault to inject (beyond [`MAX_FAULTS`] it is ignored).
    pub fn inject(&mut self, f: FaultSpec) {
        if self.faults.len() < MAX_FAULTS {
            self.faults.push(f);
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Size in sectors.
    pub fn sectors(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    /// Whether writes are refused.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// Operation counters.
    pub fn stats(&self) -> DiskStats {
        self.stats
    }

    /// The image path, for a file-backed disk.
    pub fn path(&self) -> Option<&Path> {
        match &self.backing {
            Backing::File { path, .. } => Some(path),
            Backing::Memory(_) => None,
        }
    }

    fn range(&self, offset: u64, len: usize) -> Result<std::ops::Range<usize>, DiskError> {
        let len = len as u64;
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(offset as usize..end as usize),
            _ => Err(DiskError::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    /// The fault hitting the `n`th operation `op` on `offset..offset+len`, if any (counted).
    fn fault(&mut self, op: FaultOp, n: u64, offset: u64, len: u64) -> Option<FaultSpec> {
        let f = self
            .faults
            .iter()
            .find(|f| f.hits(op, n, offset, len))
            .copied()?;
        self.stats.faults_injected += 1;
        Some(f)
    }

    fn store(&mut self, offset: u64, buf: &[u8]) -> Result<(), DiskError> {
        let r = self.range(offset, buf.len())?;
        self.dirty = true;
        match &mut self.backing {
            Backing::File { file, .. } => file.write_all_at(buf, offset)?,
            Backing::Memory(m) => m[r].copy_from_slice(buf),
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at byte `offset`.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.stats.reads += 1;
        let r = self.range(offset, buf.len())?;
        if let Some(spec) = self.fault(FaultOp::Read, self.stats.reads, offset, buf.len() as u64) {
            return Err(DiskError::Injected {
                spec,
                source: spec.error(None),
            });
        }
        match &self.backing {
            Backing::File { file, .. } => file.read_exact_at(buf, offset)?,
            Backing::Memory(m) => buf.copy_from_slice(&m[r]),
        }
        Ok(())
    }

    /// Writes `buf` at byte `offset`.
    pub fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), DiskError> {
        self.stats.writes += 1;
        if self.readonly {
            return Err(DiskError::ReadOnly);
        }
        self.range(offset, buf.len())?;
        let len = buf.len() as u64;
        if let Some(spec) = self.fault(FaultOp::Write, self.stats.writes, offset, len) {
            let mut detail = None;
            if spec.kind == FaultKind::Short {
                let keep = len / SECTOR_SIZE / 2 * SECTOR_SIZE;
                if keep > 0 {
                    self.store(offset, &buf[..keep as usize])?;
                }
                detail = Some(format!("short write: {keep} of {len} bytes written"));
            }
            return Err(DiskError::Injected {
                spec,
                source: spec.error(detail),
            });
        }
        self.store(offset, buf)
    }

    /// Makes every completed write durable (fdatasync for a file) before returning.
    pub fn flush(&mut self) -> Result<(), DiskError> {
        self.stats.flushes += 1;
        if let Some(spec) = self.fault(FaultOp::Flush, self.stats.flushes, 0, 0) {
            return Err(DiskError::Injected {
                spec,
                source: spec.error(None),
            });
        }
        self.sync()
    }

    /// Makes completed writes durable without counting as a guest flush (a device's
    /// write-through, or the final sync on drop).
    pub fn sync(&mut self) -> Result<(), DiskError> {
        if let Backing::File { file, .. } = &self.backing {
            if self.dirty {
                self.stats.syncs += 1;
                file.sync_data()?;
            }
        }
        self.dirty = false;
        Ok(())
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        // A clean exit leaves every completed write durable; nobody is left to report to.
        // (Injected flush faults do not apply here: they model what the guest sees.)
        let _ = self.sync();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("hvlab-disk-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn memory_disk_reads_back_what_was_written() {
        let mut d = Disk::memory(4096).unwrap();
        d.write_at(512, &[7u8; 512]).unwrap();
        let mut b = [0u8; 1024];
        d.read_at(0, &mut b).unwrap();
        assert!(b[..512].iter().all(|&x| x == 0));
        assert!(b[512..].iter().all(|&x| x == 7));
        assert_eq!(d.sectors(), 8);
    }

    #[test]
    fn access_past_the_end_is_refused() {
        let mut d = Disk::memory(1024).unwrap();
        let mut b = [0u8; 512];
        assert!(matches!(
            d.read_at(1024, &mut b),
            Err(DiskError::OutOfRange { .. })
        ));
        assert!(d.read_at(u64::MAX - 10, &mut b).is_err());
        assert!(d.write_at(600, &b).is_err());
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(matches!(Disk::memory(0), Err(DiskError::BadSize(0))));
        assert!(Disk::memory(1000).is_err());
        assert!(matches!(
            Disk::memory(MAX_MEMORY_DISK * 2),
            Err(DiskError::TooLarge(_))
        ));
    }

    #[test]
    fn file_disk_is_created_at_size_and_data_persists_after_drop() {
        let p = tmp("persist");
        {
            let mut d = Disk::open(&p, 64 * 1024).unwrap();
            assert_eq!(d.size(), 64 * 1024);
            d.write_at(4096, b"hello disk").unwrap();
            d.flush().unwrap();
        }
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.len(), 64 * 1024);
        assert_eq!(&bytes[4096..4106], b"hello disk");
        // Reopening without a size keeps the existing size and data.
        let mut d = Disk::open(&p, 0).unwrap();
        assert_eq!(d.size(), 64 * 1024);
        let mut b = [0u8; 10];
        d.read_at(4096, &mut b).unwrap();
        assert_eq!(&b, b"hello disk");
        drop(d);
        let _ = std::fs::remove_file(&p);
    }

    fn spec(s: &str) -> FaultSpec {
        s.parse().unwrap()
    }

    #[test]
    fn fault_specs_parse_and_print_back() {
        for s in [
            "eio@write:3",
            "enospc@write:5+",
            "eio@read:every=4",
            "short@write:sectors=64-71",
            "eio@flush:1",
            "enospc@flush:every=2",
        ] {
            assert_eq!(spec(s).to_string(), s);
        }
        assert_eq!(
            spec("EIO@Read:sector=7").when,
            FaultWhen::Sectors { first: 7, last: 7 }
        );
        assert_eq!(spec("eio@write:3").kind, FaultKind::Eio);
    }

    #[test]
    fn bad_fault_specs_say_what_is_wrong() {
        let err = |s: &str| s.parse::<FaultSpec>().unwrap_err();
        assert!(matches!(err("eio"), FaultSpecError::Shape(_)));
        assert!(matches!(err("eio@write"), FaultSpecError::Shape(_)));
        assert_eq!(err("eiox@write:1"), FaultSpecError::Kind("eiox".into()));
        assert_eq!(err("eio@trim:1"), FaultSpecError::Op("trim".into()));
        assert!(matches!(err("eio@write:0"), FaultSpecError::When(_)));
        assert!(matches!(err("eio@write:x"), FaultSpecError::When(_)));
        assert!(matches!(err("eio@write:every=0"), FaultSpecError::When(_)));
        assert!(matches!(
            err("eio@write:sectors=9-3"),
            FaultSpecError::When(_)
        ));
        assert_eq!(err("short@read:1"), FaultSpecError::ShortNotWrite);
        assert_eq!(err("eio@flush:sectors=1-2"), FaultSpecError::FlushSectors);
        assert!(err("eio").to_string().contains("KIND@OP:WHEN"));
    }

    fn faulty(faults: &[&str]) -> Disk {
        let access = DiskAccess {
            readonly: false,
            faults: faults.iter().map(|s| spec(s)).collect(),
        };
        Disk::from_options(None, 64 * 512, &access).unwrap()
    }

    #[test]
    fn the_nth_write_fails_with_eio_and_leaves_its_sectors_untouched() {
        let mut d = faulty(&["eio@write:3"]);
        for i in 0..5u8 {
            let r = d.write_at(u64::from(i) * 1024, &[i + 1; 1024]);
            if i == 2 {
                let e = r.unwrap_err();
                assert!(matches!(&e, DiskError::Injected { source, .. }
                    if source.raw_os_error() == Some(libc::EIO)));
                assert!(e.to_string().contains("eio@write:3"), "{e}");
            } else {
                r.unwrap();
            }
        }
        let mut b = vec![0u8; 5 * 1024];
        d.read_at(0, &mut b).unwrap();
        for i in 0..5usize {
            let want = if i == 2 { 0 } else { i as u8 + 1 };
            assert!(b[i * 1024..(i + 1) * 1024].iter().all(|&x| x == want));
        }
        assert_eq!(d.stats().faults_injected, 1);
        assert_eq!(d.stats().writes, 5);
    }

    #[test]
    fn every_from_and_sector_faults_hit_the_right_operations() {
        let mut d = faulty(&["enospc@read:every=2", "eio@write:sectors=10-11"]);
        let mut b = [0u8; 512];
        let reads: Vec<bool> = (0..6).map(|_| d.read_at(0, &mut b).is_ok()).collect();
        assert_eq!(reads, [true, false, true, false, true, false]);
        assert!(d.write_at(9 * 512, &[1; 512]).is_ok());
        assert!(
            d.write_at(9 * 512, &[1; 1024]).is_err(),
            "overlaps sector 10"
        );
        assert!(d.write_at(11 * 512, &[1; 512]).is_err());
        assert!(d.write_at(12 * 512, &[1; 512]).is_ok());
        assert_eq!(d.stats().faults_injected, 5);
        let mut d = faulty(&["enospc@write:2+"]);
        let w: Vec<bool> = (0..4).map(|_| d.write_at(0, &[1; 512]).is_ok()).collect();
        assert_eq!(w, [true, false, false, false]);
    }

    #[test]
    fn a_short_write_stores_only_its_first_half() {
        let mut d = faulty(&["short@write:1"]);
        let e = d.write_at(0, &[9; 4 * 512]).unwrap_err();
        assert!(e.to_string().contains("1024 of 2048"), "{e}");
        let mut b = [0u8; 4 * 512];
        d.read_at(0, &mut b).unwrap();
        assert!(b[..1024].iter().all(|&x| x == 9));
        assert!(b[1024..].iter().all(|&x| x == 0));
    }

    #[test]
    fn faults_work_on_file_disks_and_flush_faults_skip_the_sync() {
        let p = tmp("faultfile");
        let access = DiskAccess {
            readonly: false,
            faults: vec![spec("eio@flush:1"), spec("eio@read:1")],
        };
        let mut d = Disk::from_options(Some(&p), 8192, &access).unwrap();
        d.write_at(0, &[3; 512]).unwrap();
        assert!(d.flush().is_err());
        assert_eq!(d.stats().syncs, 0);
        d.flush().unwrap();
        assert_eq!(d.stats().syncs, 1);
        let mut b = [0u8; 512];
        assert!(d.read_at(0, &mut b).is_err());
        d.read_at(0, &mut b).unwrap();
        assert_eq!(b, [3; 512]);
        assert_eq!(d.stats().faults_injected, 2);
        drop(d);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn flush_calls_fdatasync_when_there_is_something_to_sync() {
        let p = tmp("sync");
        let mut d = Disk::open(&p, 8192).unwrap();
        d.flush().unwrap();
        assert_eq!(
            d.stats().syncs,
            1,
            "the first flush syncs what an earlier run left"
        );
        d.flush().unwrap();
        assert_eq!(d.stats().syncs, 1, "nothing written since");
        d.write_at(512, &[1; 512]).unwrap();
        d.flush().unwrap();
        assert_eq!(d.stats().syncs, 2);
        assert_eq!(d.stats().flushes, 3);
        drop(d);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn a_read_write_image_is_locked_against_a_second_open_even_in_one_process() {
        let p = tmp("lock");
        let d = Disk::open(&p, 8192).unwrap();
        let e = Disk::open(&p, 0).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, DiskError::Locked { .. }), "{msg}");
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        assert!(msg.contains("this process"), "names the holder: {msg}");
        assert!(
            Disk::open_with(&p, 0, true).is_err(),
            "no read-only open beside a writer"
        );
        drop(d);
        // Released with the disk.
        let ro1 = Disk::open_with(&p, 0, true).unwrap();
        let mut ro2 = Disk::open_with(&p, 0, true).unwrap();
        assert!(matches!(
            Disk::open(&p, 0),
            Err(DiskError::Locked {
                readonly: false,
                ..
            })
        ));
        assert!(matches!(
            ro2.write_at(0, &[0; 512]),
            Err(DiskError::ReadOnly)
        ));
        let mut b = [0u8; 512];
        ro2.read_at(0, &mut b).unwrap();
        drop((ro1, ro2));
        Disk::open(&p, 0).unwrap();
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn a_read_only_image_must_exist_and_is_never_grown() {
        let p = tmp("ro");
        assert!(matches!(
            Disk::open_with(&p, 4096, true),
            Err(DiskError::Open { .. })
        ));
        assert!(!p.exists());
        drop(Disk::open(&p, 4096).unwrap());
        assert!(matches!(
            Disk::open_with(&p, 8192, true),
            Err(DiskError::ReadOnlyImage { .. })
        ));
        assert_eq!(Disk::open_with(&p, 0, true).unwrap().size(), 4096);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn an_image_larger_than_the_free_space_is_refused_and_not_left_behind() {
        let p = tmp("huge");
        let probe = File::create(&p).unwrap();
        let free = free_bytes(&probe).unwrap();
        drop(probe);
        let _ = std::fs::remove_file(&p);
        let want = (free + (1 << 30)) / SECTOR_SIZE * SECTOR_SIZE;
        let e = Disk::open(&p, want).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, DiskError::NoSpace { .. }), "{msg}");
        assert!(msg.contains("sparse") && msg.contains("fill"), "{msg}");
        assert!(!p.exists(), "a refused new image is removed");
        // An existing image is not grown either, and keeps its data.
        let mut d = Disk::open(&p, 4096).unwrap();
        d.write_at(0, &[5; 512]).unwrap();
        drop(d);
        assert!(matches!(
            Disk::open(&p, want),
            Err(DiskError::NoSpace { .. })
        ));
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 4096);
        let _ = std::fs::remove_file(&p);
    }
}
