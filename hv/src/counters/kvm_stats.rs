//! KVM binary statistics (`KVM_GET_STATS_FD`, Documentation/virt/kvm/api.rst) for a VM or a vCPU.
//!
//! The stats fd is a read-only file laid out as
//!
//! ```text
//! header (struct kvm_stats_header: flags, name_size, num_desc, id_offset, desc_offset, data_offset)
//! id string (name_size bytes at id_offset)
//! descriptors (num_desc x [struct kvm_stats_desc (16 bytes) + name (name_size bytes)] at desc_offset)
//! data (u64 values; each descriptor's `offset` is relative to data_offset)
//! ```
//!
//! The header and descriptors are read once, at construction. Every [`KvmStatsReader::read`] is
//! one `pread` of the span of the data block that holds the kept stats, so a reader is `Sync` and
//! any thread may snapshot a vCPU while it runs.
//!
//! Only scalar stats (`size == 1`) of type cumulative, instant or peak are kept; histograms are
//! dropped. [`KvmStatsReader::names`] / [`KvmStatsReader::read`] cover the cumulative ones (the
//! ones whose deltas mean something); [`KvmStatsReader::stats`] / [`KvmStatsReader::read_all`]
//! cover every kept scalar, with its [`StatKind`].

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use kvm_bindings::{
    KVM_STATS_TYPE_CUMULATIVE, KVM_STATS_TYPE_INSTANT, KVM_STATS_TYPE_MASK, KVM_STATS_TYPE_PEAK,
    KVM_STATS_UNIT_MASK,
};
use vmm_sys_util::ioctl::ioctl;
use vmm_sys_util::ioctl_io_nr;

/// `KVMIO`, the KVM ioctl type.
const KVMIO: u32 = 0xAE;
ioctl_io_nr!(KVM_GET_STATS_FD, KVMIO, 0xce);

/// Size of `struct kvm_stats_header`.
const HEADER_LEN: usize = 24;
/// Size of `struct kvm_stats_desc` without its trailing name.
const DESC_FIXED_LEN: usize = 16;
/// Refuse descriptor blocks larger than this (a sane kernel uses a few tens of KiB).
const MAX_DESC_BLOCK: usize = 4 << 20;
/// Refuse names longer than this (the kernel uses `KVM_STATS_NAME_SIZE` = 48).
const MAX_NAME_SIZE: u32 = 4096;

/// Errors from opening, parsing or reading a KVM stats fd.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The ioctl failed (no `KVM_CAP_BINARY_STATS_FD` on kernels before 5.14, or out of fds).
    #[error("KVM_GET_STATS_FD failed (needs Linux >= 5.14 / KVM_CAP_BINARY_STATS_FD): {0}")]
    GetStatsFd(#[source] io::Error),
    /// Reading the stats file failed.
    #[error("reading the KVM stats fd failed: {0}")]
    Read(#[source] io::Error),
    /// The file ended before the header, descriptors or data said it would.
    #[error(
        "short read from the KVM stats fd: wanted {wanted} bytes at offset {offset}, got {got}"
    )]
    ShortRead {
        offset: u64,
        wanted: usize,
        got: usize,
    },
    /// The header or a descriptor is inconsistent.
    #[error("malformed KVM stats data: {0}")]
    Malformed(String),
}

/// What a stat measures over time (`KVM_STATS_TYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatKind {
    /// Only ever increases; deltas between snapshots are meaningful.
    Cumulative,
    /// A current value (may go up and down).
    Instant,
    /// A high-water mark.
    Peak,
}

/// One kept scalar stat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatDesc {
    /// The name KVM gives it (for example `exits`, `halt_exits`).
    pub name: String,
    pub kind: StatKind,
    /// `KVM_STATS_UNIT_*` bits of the descriptor flags (0 = plain count).
    pub unit: u32,
    /// Power of the base (`KVM_STATS_BASE_*`) that scales the value to the unit.
    pub exponent: i16,
    /// Byte offset of the value within the data block.
    offset: u32,
}

/// The parsed layout of a stats file: where the data block starts and the kept stats, sorted by
/// data offset.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    data_offset: u64,
    /// Every kept scalar stat, sorted by `offset`.
    stats: Vec<StatDesc>,
}

fn ne_u32(buf: &[u8], at: usize) -> Result<u32, StatsError> {
    buf.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
        .ok_or_else(|| StatsError::Malformed(format!("truncated field at byte {at}")))
}

fn ne_u16(buf: &[u8], at: usize) -> Result<u16, StatsError> {
    buf.get(at..at + 2)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_ne_bytes)
        .ok_or_else(|| StatsError::Malformed(format!("truncated field at byte {at}")))
}

/// The header fields that the parser needs.
#[derive(Debug, Clone, Copy)]
struct Header {
    name_size: u32,
    num_desc: u32,
    desc_offset: u32,
    data_offset: u32,
}

impl Header {
    fn parse(buf: &[u8]) -> Result<Self, StatsError> {
        if buf.len() < HEADER_LEN {
            return Err(StatsError::Malformed(format!(
                "header is {} bytes, need {HEADER_LEN}",
                buf.len()
            )));
        }
        let h = Header {
            // flags at 0 and id_offset at 12 are not needed.
            name_size: ne_u32(buf, 4)?,
            num_desc: ne_u32(buf, 8)?,
            desc_offset: ne_u32(buf, 16)?,
            data_offset: ne_u32(buf, 20)?,
        };
        if h.name_size == 0 || h.name_size > MAX_NAME_SIZE {
            return Err(StatsError::Malformed(format!(
                "name_size {} out of range 1..={MAX_NAME_SIZE}",
                h.name_size
            )));
        }
        Ok(h)
    }

    fn desc_len(&self) -> usize {
        DESC_FIXED_LEN + self.name_size as usize
    }

    /// Length of the descriptor block, bounded by [`MAX_DESC_BLOCK`].
    fn desc_block_len(&self) -> Result<usize, StatsError> {
        (self.num_desc as usize)
            .checked_mul(self.desc_len())
            .filter(|&n| n <= MAX_DESC_BLOCK)
            .ok_or_else(|| {
                StatsError::Malformed(format!(
                    "{} descriptors of {} bytes exceed {MAX_DESC_BLOCK} bytes",
                    self.num_desc,
                    self.desc_len()
                ))
            })
    }
}

/// Parses the descriptor block (`num_desc` descriptors back to back) into the kept stats.
fn parse_descriptors(header: &Header, block: &[u8]) -> Result<Layout, StatsError> {
    let desc_len = header.desc_len();
    let want = header.desc_block_len()?;
    if block.len() < want {
        return Err(StatsError::Malformed(format!(
            "descriptor block is {} bytes, header says {want}",
            block.len()
        )));
    }
    let mut stats = Vec::new();
    for i in 0..header.num_desc as usize {
        let d = &block[i * desc_len..(i + 1) * desc_len];
        let flags = ne_u32(d, 0)?;
        let exponent = ne_u16(d, 4)? as i16;
        let size = ne_u16(d, 6)?;
        let offset = ne_u32(d, 8)?;
        // bucket_size at 12 only matters for linear histograms.
        let raw_name = &d[DESC_FIXED_LEN..];
        let name_len = raw_name.iter().position(|&b| b == 0).ok_or_else(|| {
            StatsError::Malformed(format!("descriptor {i}: name is not NUL-terminated"))
        })?;
        let name = std::str::from_utf8(&raw_name[..name_len])
            .map_err(|_| StatsError::Malformed(format!("descriptor {i}: name is not UTF-8")))?;
        if name.is_empty() {
            return Err(StatsError::Malformed(format!("descriptor {i}: empty name")));
        }
        let kind = match flags & KVM_STATS_TYPE_MASK {
            KVM_STATS_TYPE_CUMULATIVE => StatKind::Cumulative,
            KVM_STATS_TYPE_INSTANT => StatKind::Instant,
            KVM_STATS_TYPE_PEAK => StatKind::Peak,
            // Histograms (and types newer than this code) are not scalars.
            _ => continue,
        };
        if size != 1 {
            continue;
        }
        if offset % 8 != 0 {
            return Err(StatsError::Malformed(format!(
                "descriptor {i} ({name}): data offset {offset} is not 8-byte aligned"
            )));
        }
        stats.push(StatDesc {
            name: name.to_owned(),
            kind,
            unit: flags & KVM_STATS_UNIT_MASK,
            exponent,
            offset,
        });
    }
    stats.sort_by_key(|s| s.offset);
    if let Some(w) = stats.windows(2).find(|w| w[0].offset == w[1].offset) {
        return Err(StatsError::Malformed(format!(
            "stats {} and {} share data offset {}",
            w[0].name, w[1].name, w[0].offset
        )));
    }
    Ok(Layout {
        data_offset: u64::from(header.data_offset),
        stats,
    })
}

/// Which stats a [`Selection`] reads, as word indices into one pread span.
#[derive(Debug, Clone, Default)]
struct Selection {
    /// Byte offset of the span within the file.
    file_offset: u64,
    /// Span length in u64 words.
    words: usize,
    /// For each selected stat in order, its word index within the span (strictly increasing).
    index: Vec<usize>,
}

impl Selection {
    fn new(layout: &Layout, keep: impl Fn(&StatDesc) -> bool) -> Self {
        let picked: Vec<&StatDesc> = layout.stats.iter().filter(|s| keep(s)).collect();
        let (Some(first), Some(last)) = (picked.first(), picked.last()) else {
            return Selection::default();
        };
        let base = u64::from(first.offset);
        Selection {
            file_offset: layout.data_offset + base,
            words: ((u64::from(last.offset) - base) / 8) as usize + 1,
            index: picked
                .iter()
                .map(|s| ((u64::from(s.offset) - base) / 8) as usize)
                .collect(),
        }
    }

    /// One pread of the span into `out`, then compaction so that `out[i]` is the i-th stat.
    fn read(&self, file: &File, out: &mut Vec<u64>) -> Result<(), StatsError> {
        out.clear();
        if self.index.is_empty() {
            return Ok(());
        }
        out.resize(self.words, 0);
        let bytes = self.words * 8;
        // Read straight into the u64 buffer: the kernel writes native-endian u64s.
        // SAFETY: `out` holds exactly `self.words` u64s, i.e. `bytes` initialised bytes, which
        // this byte view covers exactly; u8 has no alignment requirement and every byte
        // pattern is a valid u64, and `out` is not used while the view lives.
        let view = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), bytes) };
        let got = pread_retry(file, view, self.file_offset)?;
        if got != bytes {
            return Err(StatsError::ShortRead {
                offset: self.file_offset,
                wanted: bytes,
                got,
            });
        }
        // `index` is strictly increasing and index[i] >= i, so compaction in place never
        // overwrites a word that is still to be read.
        for (i, &w) in self.index.iter().enumerate() {
            out[i] = out[w];
        }
        out.truncate(self.index.len());
        Ok(())
    }
}

/// One `pread` into `buf` (a single call, so the kernel's snapshot of the stats is
/// consistent), retrying on EINTR.
fn pread_retry(file: &File, buf: &mut [u8], offset: u64) -> Result<usize, StatsError> {
    loop {
        match file.read_at(buf, offset) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StatsError::Read(e)),
        }
    }
}

/// Reads exactly `len` bytes at `offset`.
fn read_exact_at(file: &File, len: usize, offset: u64) -> Result<Vec<u8>, StatsError> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                return Err(StatsError::ShortRead {
                    offset,
                    wanted: len,
                    got: done,
                });
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StatsError::Read(e)),
        }
    }
    Ok(buf)
}

/// Reader of one VM's or vCPU's binary stats. `Send + Sync`: reads use `pread`.
#[derive(Debug)]
pub struct KvmStatsReader {
    file: File,
    stats: Vec<StatDesc>,
    /// Names of the cumulative stats, in read order.
    names: Vec<String>,
    cumulative: Selection,
    all: Selection,
}

impl KvmStatsReader {
    /// Opens the stats of a VM (`KVM_GET_STATS_FD` on the VM fd).
    pub fn for_vm(vm: &kvm_ioctls::VmFd) -> Result<Self, StatsError> {
        Self::from_file(get_stats_fd(vm)?)
    }

    /// Opens the stats of a vCPU (`KVM_GET_STATS_FD` on the vCPU fd).
    pub fn for_vcpu(vcpu: &kvm_ioctls::VcpuFd) -> Result<Self, StatsError> {
        Self::from_file(get_stats_fd(vcpu)?)
    }

    /// Parses the header and descriptors of any file in the stats-fd format.
    fn from_file(file: File) -> Result<Self, StatsError> {
        let header = Header::parse(&read_exact_at(&file, HEADER_LEN, 0)?)?;
        let block = read_exact_at(
            &file,
            header.desc_block_len()?,
            u64::from(header.desc_offset),
        )?;
        let layout = parse_descriptors(&header, &block)?;
        let cumulative = Selection::new(&layout, |s| s.kind == StatKind::Cumulative);
        let all = Selection::new(&layout, |_| true);
        let names = layout
            .stats
            .iter()
            .filter(|s| s.kind == StatKind::Cumulative)
            .map(|s| s.name.clone())
            .collect();
        let reader = KvmStatsReader {
            file,
            stats: layout.stats,
            names,
            cumulative,
            all,
        };
        // Fail now, not at the first snapshot, if the data block is shorter than described.
        reader.read_all(&mut Vec::new())?;
        Ok(reader)
    }

    /// Names of the cumulative stats, in the order [`Self::read`] returns them.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Every kept scalar stat (cumulative, instant, peak), in the order [`Self::read_all`]
    /// returns them.
    pub fn stats(&self) -> &[StatDesc] {
        &self.stats
    }

    /// Refills `out` with the cumulative stats (`out.len() == names().len()`): one pread.
    pub fn read(&self, out: &mut Vec<u64>) -> Result<(), StatsError> {
        self.cumulative.read(&self.file, out)
    }

    /// Refills `out` with every kept scalar stat (`out.len() == stats().len()`): one pread.
    pub fn read_all(&self, out: &mut Vec<u64>) -> Result<(), StatsError> {
        self.all.read(&self.file, out)
    }
}

/// Issues `KVM_GET_STATS_FD` on a VM or vCPU fd.
fn get_stats_fd<F: AsRawFd>(fd: &F) -> Result<File, StatsError> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and touches no user memory; `fd` is a live
    // KVM VM or vCPU fd borrowed for the call. The kernel returns a new fd or -1.
    let ret = unsafe { ioctl(fd, KVM_GET_STATS_FD()) };
    if ret < 0 {
        return Err(StatsError::GetStatsFd(io::Error::last_os_error()));
    }
    // SAFETY: `ret` is a fresh fd returned by the kernel that nothing else owns.
    Ok(unsafe { File::from_raw_fd(ret) })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.
mod tests {
    use super::*;
    use std::io::Write;

    const NAME_SIZE: usize = 48;

    struct Desc<'a> {
        flags: u32,
        size: u16,
        offset: u32,
        name: &'a str,
    }

    /// Builds a stats file image: header, id, descriptors, data.
    fn image(descs: &[Desc], data: &[u64]) -> Vec<u8> {
        let id_offset = HEADER_LEN;
        let desc_offset = id_offset + NAME_SIZE;
        let data_offset = desc_offset + descs.len() * (DESC_FIXED_LEN + NAME_SIZE);
        let mut b = Vec::new();
        for v in [
            0u32,
            NAME_SIZE as u32,
            descs.len() as u32,
            id_offset as u32,
            desc_offset as u32,
            data_offset as u32,
        ] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        let mut id = b"kvm-1234/vcpu-0".to_vec();
        id.resize(NAME_SIZE, 0);
        b.extend_from_slice(&id);
        for d in descs {
            b.extend_from_slice(&d.flags.to_ne_bytes());
            b.extend_from_slice(&0i16.to_ne_bytes());
            b.extend_from_slice(&d.size.to_ne_bytes());
            b.extend_from_slice(&d.offset.to_ne_bytes());
            b.extend_from_slice(&0u32.to_ne_bytes());
            let mut n = d.name.as_bytes().to_vec();
            n.resize(NAME_SIZE, 0);
            b.extend_from_slice(&n);
        }
        for v in data {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b
    }

    fn reader_over(bytes: &[u8]) -> Result<KvmStatsReader, StatsError> {
        let path = std::env::temp_dir().join(format!(
            "hv-kvm-stats-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut f = File::create(&path).unwrap();
        f.write_all(bytes).unwrap();
        let f = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        KvmStatsReader::from_file(f)
    }

    fn sample() -> Vec<u8> {
        let hist = kvm_bindings::KVM_STATS_TYPE_LOG_HIST;
        image(
            &[
                // Descriptors deliberately not in data order.
                Desc {
                    flags: KVM_STATS_TYPE_CUMULATIVE,
                    size: 1,
                    offset: 16,
                    name: "halt_exits",
                },
                Desc {
                    flags: KVM_STATS_TYPE_CUMULATIVE,
                    size: 1,
                    offset: 0,
                    name: "exits",
                },
                Desc {
                    flags: KVM_STATS_TYPE_INSTANT,
                    size: 1,
                    offset: 8,
                    name: "guest_mode",
                },
                Desc {
                    flags: hist,
                    size: 2,
                    offset: 24,
                    name: "halt_wait_hist",
                },
                Desc {
                    flags: KVM_STATS_TYPE_PEAK,
                    size: 1,
                    offset: 40,
                    name: "max_mmu_page_hash_collisions",
                },
                Desc {
                    flags: KVM_STATS_TYPE_CUMULATIVE,
                    size: 1,
                    offset: 48,
                    name: "insn_emulation",
                },
            ],
            &[100, 1, 7, 55, 66, 3, 9],
        )
    }

    #[test]
    fn parse_keeps_cumulative_scalars_in_data_order() {
        let r = reader_over(&sample()).unwrap();
        assert_eq!(r.names(), ["exits", "halt_exits", "insn_emulation"]);
        let mut out = vec![42; 10];
        r.read(&mut out).unwrap();
        assert_eq!(out, [100, 7, 9]);
    }

    #[test]
    fn read_all_includes_instant_and_peak_but_not_histograms() {
        let r = reader_over(&sample()).unwrap();
        let names: Vec<_> = r
            .stats()
            .iter()
            .map(|s| (s.name.as_str(), s.kind))
            .collect();
        assert_eq!(
            names,
            [
                ("exits", StatKind::Cumulative),
                ("guest_mode", StatKind::Instant),
                ("halt_exits", StatKind::Cumulative),
                ("max_mmu_page_hash_collisions", StatKind::Peak),
                ("insn_emulation", StatKind::Cumulative),
            ]
        );
        let mut out = Vec::new();
        r.read_all(&mut out).unwrap();
        assert_eq!(out, [100, 1, 7, 3, 9]);
    }

    #[test]
    fn truncated_data_block_is_an_error() {
        let mut b = sample();
        b.truncate(b.len() - 4);
        assert!(matches!(reader_over(&b), Err(StatsError::ShortRead { .. })));
    }

    #[test]
    fn malformed_inputs_are_errors_not_panics() {
        let good = sample();
        // Every truncation of the file fails cleanly.
        for len in 0..good.len() {
            assert!(reader_over(&good[..len]).is_err(), "len {len}");
        }
        // Absurd descriptor count.
        let mut b = good.clone();
        b[8..12].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(matches!(reader_over(&b), Err(StatsError::Malformed(_))));
        // name_size zero.
        let mut b = good.clone();
        b[4..8].copy_from_slice(&0u32.to_ne_bytes());
        assert!(matches!(reader_over(&b), Err(StatsError::Malformed(_))));
        // Data offset far past the end.
        let mut b = good.clone();
        b[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(reader_over(&b).is_err());
        // Name without NUL.
        let mut b = good.clone();
        let name_at = HEADER_LEN + NAME_SIZE + DESC_FIXED_LEN;
        b[name_at..name_at + NAME_SIZE].fill(b'x');
        assert!(matches!(reader_over(&b), Err(StatsError::Malformed(_))));
        // Misaligned offset.
        let mut b = good;
        let off_at = HEADER_LEN + NAME_SIZE + 8;
        b[off_at..off_at + 4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(matches!(reader_over(&b), Err(StatsError::Malformed(_))));
    }

    #[test]
    fn no_cumulative_stats_reads_empty() {
        let b = image(
            &[Desc {
                flags: KVM_STATS_TYPE_INSTANT,
                size: 1,
                offset: 0,
                name: "x",
            }],
            &[5],
        );
        let r = reader_over(&b).unwrap();
        assert!(r.names().is_empty());
        let mut out = vec![1];
        r.read(&mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn reader_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<KvmStatsReader>();
    }

    /// Real KVM: a vCPU that executes N `out`s moves `exits` by at least N.
    #[test]
    fn vcpu_exits_move_after_running_out_guest() {
        let kvm = crate::error::kvm_for_tests();
        const N: u32 = 50;
        let vm = kvm.create_vm().unwrap();
        let vm_stats = KvmStatsReader::for_vm(&vm).unwrap();
        assert!(!vm_stats.stats().is_empty());
        let r = KvmStatsReader::for_vcpu(&vm.create_vcpu(0).unwrap()).unwrap();
        for want in ["exits", "halt_exits", "insn_emulation"] {
            assert!(
                r.names().iter().any(|n| n == want),
                "no {want} in {:?}",
                r.names()
            );
        }
        // A guest's phase, through the partition code (which reads the stats at its markers).
        let cfg = crate::partition::PartitionConfig {
            tracepoints: false,
            kvm_stats: true,
            ..Default::default()
        };
        let image = crate::tiny_guest::elf(&crate::tiny_guest::pio_loop(N));
        let p = crate::partition::Partition::new(&kvm, cfg, &image).unwrap();
        let o = p.start().unwrap().wait(
            std::time::Instant::now() + std::time::Duration::from_secs(10),
            std::time::Duration::from_secs(10),
        );
        assert!(o.status.is_ok(), "{}", o.status);
        assert_eq!(o.phases.len(), 1);
        let delta = |n: &str| o.phases[0].kvm_stats.get(n).copied().unwrap_or(-1);
        eprintln!(
            "exits +{} halt_exits +{} insn_emulation +{}",
            delta("exits"),
            delta("halt_exits"),
            delta("insn_emulation")
        );
        assert!(
            delta("exits") >= i64::from(N),
            "{:?}",
            o.phases[0].kvm_stats
        );
    }
}
