//! The backing store shared by both block variants: a raw image file (`--disk PATH`, created at
//! the requested size when missing) or an in-memory disk. Addressed in 512-byte sectors.
//!
//! Data safety: writes go straight to the file (`pwrite`, no hv-side cache), so a write the
//! guest saw complete is in the file's page cache; `flush` (the guest's FLUSH) and dropping the
//! disk (clean exit) make it durable with `fdatasync`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use thiserror::Error;

/// Bytes per sector, for both ATA and virtio-blk.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the default in-memory disk and of a created image when no size is given.
pub const DEFAULT_DISK_SIZE: u64 = 8 << 20;
/// Largest in-memory disk hv allocates.
pub const MAX_MEMORY_DISK: u64 = 1 << 30;

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
    /// A transfer outside the disk.
    #[error("access at byte {offset} length {len} is outside the {size}-byte disk")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// The host I/O failed.
    #[error("disk I/O: {0}")]
    Io(#[from] std::io::Error),
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
    /// Writes since the last flush (a flush with nothing to do skips the syscall).
    dirty: bool,
}

/// A disk shared by a device model and its worker.
pub type SharedDisk = Arc<Mutex<Disk>>;

fn check_size(size: u64) -> Result<(), DiskError> {
    if size == 0 || size % SECTOR_SIZE != 0 {
        return Err(DiskError::BadSize(size));
    }
    Ok(())
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
        })
    }

    /// Opens the raw image at `path`. A missing file is created with `create_size` bytes
    /// (0: [`DEFAULT_DISK_SIZE`]); an existing one keeps its size (rounded down to sectors),
    /// and is grown to `create_size` when that is larger.
    pub fn open(path: &Path, create_size: u64) -> Result<Disk, DiskError> {
        let open_err = |source| DiskError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(open_err)?;
        let len = file.metadata().map_err(open_err)?.len();
        let want = if create_size == 0 && len == 0 {
            DEFAULT_DISK_SIZE
        } else {
            create_size
        };
        if want > len {
            check_size(want)?;
            file.set_len(want).map_err(open_err)?;
        }
        let size = want.max(len) / SECTOR_SIZE * SECTOR_SIZE;
        check_size(size)?;
        Ok(Disk {
            backing: Backing::File {
                file,
                path: path.to_path_buf(),
            },
            size,
            dirty: false,
        })
    }

    /// Opens `path` if given, else an in-memory disk of `size` (0: the default size).
    pub fn from_options(path: Option<&Path>, size: u64) -> Result<Disk, DiskError> {
        match path {
            Some(p) => Disk::open(p, size),
            None => Disk::memory(if size == 0 { DEFAULT_DISK_SIZE } else { size }),
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

    /// Reads `buf.len()` bytes at byte `offset`.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let r = self.range(offset, buf.len())?;
        match &self.backing {
            Backing::File { file, .. } => file.read_exact_at(buf, offset)?,
            Backing::Memory(m) => buf.copy_from_slice(&m[r]),
        }
        Ok(())
    }

    /// Writes `buf` at byte `offset`.
    pub fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), DiskError> {
        let r = self.range(offset, buf.len())?;
        match &mut self.backing {
            Backing::File { file, .. } => file.write_all_at(buf, offset)?,
            Backing::Memory(m) => m[r].copy_from_slice(buf),
        }
        self.dirty = true;
        Ok(())
    }

    /// Makes every completed write durable (fdatasync for a file).
    pub fn flush(&mut self) -> Result<(), DiskError> {
        if let Backing::File { file, .. } = &self.backing {
            if self.dirty {
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
        let _ = self.flush();
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
}
