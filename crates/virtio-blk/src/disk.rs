//! The host side of a disk: a raw image file.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::SECTOR_SIZE;

/// Why a disk cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The file cannot be opened.
    #[error("cannot open disk image {path}: {err}")]
    Open {
        /// Path given.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// Another process holds a conflicting lock.
    #[error("disk image {path} is in use by another process ({how})")]
    Locked {
        /// Path given.
        path: PathBuf,
        /// What the conflict is.
        how: &'static str,
    },
    /// Not a regular file or block device, or its size cannot be read.
    #[error("disk image {path} is not usable: {why}")]
    Unusable {
        /// Path given.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// An open, locked raw disk image.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    path: PathBuf,
    read_only: bool,
    sectors: u64,
}

impl DiskFile {
    /// Opens `path` (read-only when `read_only`) and locks it: exclusively for a writable
    /// disk, shared for a read-only one, so no two VMs write one image and nobody reads an
    /// image another VM is writing.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let open_err = |err| DiskError::Open {
            path: path.to_path_buf(),
            err,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        let unusable = |why: String| DiskError::Unusable {
            path: path.to_path_buf(),
            why,
        };
        let meta = file.metadata().map_err(|e| unusable(e.to_string()))?;
        if meta.is_dir() {
            return Err(unusable("it is a directory".into()));
        }
        let (op, how) = if read_only {
            (libc::LOCK_SH, "locked for writing")
        } else {
            (libc::LOCK_EX, "locked")
        };
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EWOULDBLOCK) => DiskError::Locked {
                    path: path.to_path_buf(),
                    how,
                },
                _ => unusable(format!("cannot lock it: {err}")),
            });
        }
        // Works for regular files and block devices alike.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|e| unusable(format!("cannot read its size: {e}")))?;
        if !size.is_multiple_of(SECTOR_SIZE) {
            log::warn!(
                "disk image {}: size {size} is not a multiple of {SECTOR_SIZE}; the last {} bytes are not visible to the guest",
                path.display(),
                size % SECTOR_SIZE
            );
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            read_only,
            sectors: size / SECTOR_SIZE,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether the guest may only read.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The path the image was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads (`write == false`) or writes the file at `offset` through `iovecs`, all of it,
    /// retrying short transfers. `iovecs` is consumed (advanced) as the transfer proceeds.
    pub fn transfer(
        &self,
        iovecs: &mut [libc::iovec],
        mut offset: u64,
        write: bool,
    ) -> std::io::Result<()> {
        let fd = self.file.as_raw_fd();
        let mut start = 0;
        while start < iovecs.len() {
            let batch = &mut iovecs[start..];
            let count = batch.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
            let off = offset as libc::off_t;
            // SAFETY: every iovec points into guest memory mappings that outlive this call
            // (see `request`), with the length the slice it came from allows; the kernel reads
            // or writes only within them.
            let n = unsafe {
                if write {
                    libc::pwritev(fd, batch.as_ptr(), count, off)
                } else {
                    libc::preadv(fd, batch.as_ptr(), count, off)
                }
            };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let mut n = n as usize;
            offset += n as u64;
            while n > 0 && start < iovecs.len() {
                let iov = &mut iovecs[start];
                if n >= iov.iov_len {
                    n -= iov.iov_len;
                    start += 1;
                } else {
                    // SAFETY: advancing within the same buffer, by less than its length.
                    iov.iov_base = unsafe { (iov.iov_base as *mut u8).add(n) }.cast();
                    iov.iov_len -= n;
                    n = 0;
                }
            }
        }
        Ok(())
    }

    /// Makes written data durable (guest `FLUSH`, e.g. from `fsync`).
    pub fn flush(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}
