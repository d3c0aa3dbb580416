//! A store over a real file: `fallocate` allocates, so the filesystem's own
//! ENOSPC and EDQUOT come back at the fault instead of at writeback.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{LiveBytes, SignalSafe, Store};
use crate::error::{Error, LengthChanged, Result};
use crate::geometry::check_block_size;
use crate::sys;

/// A file on a real filesystem.
///
/// The block size defaults to the filesystem's (`f_bsize`); a different one may
/// be chosen with [`with_block_size`](FileStore::with_block_size): allocation
/// then asks the filesystem for that unit, which it rounds to its own.
///
/// ```
/// use mkwrite::{FileStore, MappingOptions, Store};
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("table.db");
/// let store = FileStore::create(&path)?.with_block_size(1024)?;
/// store.set_len(1 << 20)?; // sparse: nothing allocated yet
/// let map = MappingOptions::new().map_store(store)?;
/// map.write(0, b"row 1")?; // fallocate: a full disk fails here, not at writeback
/// map.flush()?;
/// assert_eq!(&std::fs::read(&path)?[..5], b"row 1");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct FileStore {
    file: File,
    path: Option<PathBuf>,
    block: u64,
    len: AtomicU64,
    /// Serializes length changes against writes, so a write never lands past a new EOF.
    resize: Mutex<()>,
    /// The directory entry or the size changed since the last sync.
    dir_dirty: AtomicBool,
    /// Opened for reading only: nothing is written, allocated or synced.
    read_only: bool,
}

fn open_error(path: &Path, err: io::Error) -> Error {
    match err.raw_os_error() {
        Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM) => Error::ReadOnly {
            path: Some(path.to_owned()),
            source: err,
        },
        _ => Error::Open {
            path: path.to_owned(),
            source: err,
        },
    }
}

impl FileStore {
    /// Opens an existing file read-write.
    ///
    /// ```
    /// use mkwrite::{FileStore, Store};
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("table.db");
    /// std::fs::write(&path, [1; 5000])?;
    /// let store = FileStore::open(&path)?;
    /// assert_eq!(store.len(), 5000);
    /// assert!(!store.allocated()?.is_empty()); // its data counts as allocated
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Open`] naming the file if it cannot be opened (it does not
    /// exist, say); [`Error::ReadOnly`] if it may not be written (a
    /// read-only filesystem, no permission); [`Error::Io`] if its length or
    /// filesystem cannot be read.
    pub fn open(path: impl AsRef<Path>) -> Result<FileStore> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| open_error(path, e))?;
        FileStore::from_file(file, Some(path.to_owned()))
    }

    /// Opens an existing file for reading only, for a read-only mapping
    /// ([`MappingOptions::read_only`](crate::MappingOptions::read_only)):
    /// writes, allocations and length changes fail with `EBADF`.
    ///
    /// ```
    /// use mkwrite::{FileStore, Store};
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("table.db");
    /// std::fs::write(&path, b"hello")?;
    /// let store = FileStore::open_read_only(&path)?;
    /// let mut buf = [0; 5];
    /// store.read_at(0, &mut buf)?;
    /// assert_eq!(&buf, b"hello");
    /// assert!(store.set_len(0).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Open`] naming the file if it cannot be opened; [`Error::Io`]
    /// if its length or filesystem cannot be read.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<FileStore> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::Open {
            path: path.to_owned(),
            source: e,
        })?;
        FileStore::wrap(file, Some(path.to_owned()), true)
    }

    /// Opens a file read-write, creating it empty if it does not exist.
    /// A new file's directory is synced on the first [`sync`](Store::sync).
    ///
    /// ```
    /// use mkwrite::{FileStore, Store};
    /// # let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("new.db");
    /// let store = FileStore::create(&path)?;
    /// assert!(path.exists() && store.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    #[doc(alias = "O_CREAT")]
    pub fn create(path: impl AsRef<Path>) -> Result<FileStore> {
        let path = path.as_ref();
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| open_error(path, e))?;
        let store = FileStore::from_file(file, Some(path.to_owned()))?;
        store.dir_dirty.store(!existed, Ordering::SeqCst);
        Ok(store)
    }

    /// Wraps an open file, which must be open for writing. `path` lets
    /// [`sync`](Store::sync) sync the parent directory too.
    ///
    /// ```
    /// use mkwrite::{Error, FileStore};
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("table.db");
    /// # std::fs::write(&path, b"hello")?;
    /// let file = std::fs::OpenOptions::new().read(true).write(true).open(&path)?;
    /// let store = FileStore::from_file(file, Some(path.clone()))?;
    /// assert_eq!(store.file().metadata()?.len(), 5);
    /// let read_only = std::fs::File::open(&path)?;
    /// assert!(matches!(FileStore::from_file(read_only, None), Err(Error::ReadOnly { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::ReadOnly`] for a file not open for writing; [`Error::Io`] if
    /// its mode, length or filesystem cannot be read.
    pub fn from_file(file: File, path: Option<PathBuf>) -> Result<FileStore> {
        if sys::is_read_only(&file)? {
            return Err(Error::ReadOnly {
                path,
                source: io::Error::from_raw_os_error(libc::EBADF),
            });
        }
        FileStore::wrap(file, path, false)
    }

    fn wrap(file: File, path: Option<PathBuf>, read_only: bool) -> Result<FileStore> {
        let len = file.metadata()?.len();
        let block = check_block_size(sys::fs_block_size(&file)?.clamp(512, 1 << 20))?;
        Ok(FileStore {
            file,
            path,
            block,
            len: AtomicU64::new(len),
            resize: Mutex::new(()),
            dir_dirty: AtomicBool::new(false),
            read_only,
        })
    }

    /// Uses `block_size` instead of the filesystem's.
    ///
    /// ```
    /// use mkwrite::{FileStore, Store};
    /// # let dir = tempfile::tempdir()?;
    /// let store = FileStore::create(dir.path().join("table.db"))?.with_block_size(512)?;
    /// assert_eq!(store.block_size(), 512);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBlockSize`] unless it is a power of two from 512 B to 1 MiB.
    pub fn with_block_size(mut self, block_size: u64) -> Result<FileStore> {
        self.block = check_block_size(block_size)?;
        Ok(self)
    }

    /// The underlying file.
    ///
    /// ```
    /// use mkwrite::FileStore;
    /// # let dir = tempfile::tempdir()?;
    /// let store = FileStore::create(dir.path().join("table.db"))?;
    /// assert!(store.file().metadata()?.is_file());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn file(&self) -> &File {
        &self.file
    }

    fn bytes(&self, blocks: &Range<u64>) -> (u64, u64) {
        (
            blocks.start * self.block,
            (blocks.end - blocks.start) * self.block,
        )
    }

    fn lock_resize(&self) -> std::sync::MutexGuard<'_, ()> {
        self.resize.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `len` bytes at `offset` with `write`, given how many lie below
    /// EOF, once the file is checked to have the length this store gave it;
    /// no resize meanwhile.
    fn write_checked(
        &self,
        offset: u64,
        len: usize,
        write: impl FnOnce(usize) -> io::Result<()>,
    ) -> io::Result<()> {
        let _resize = self.lock_resize();
        self.check_len()?;
        write(super::below_eof(self.len(), offset, len))
    }

    /// Fails if the file's length is not the one this store gave it: another
    /// process truncated or extended it, and writing on would bring truncated
    /// data back (reading on would serve zeros for data that was there).
    fn check_len(&self) -> io::Result<()> {
        let found = self.file.metadata()?.len();
        let expected = self.len();
        if found != expected {
            return Err(io::Error::other(LengthChanged { expected, found }));
        }
        Ok(())
    }
}

impl Store for FileStore {
    fn block_size(&self) -> u64 {
        self.block
    }

    fn len(&self) -> u64 {
        self.len.load(Ordering::SeqCst)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if done < buf.len() {
            // Short of our EOF only if someone else shortened the file.
            self.check_len()?;
        }
        buf[done..].fill(0);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.write_checked(offset, data.len(), |visible| {
            self.file.write_all_at(&data[..visible], offset)
        })
    }

    fn signal_safe(&self) -> Option<&dyn SignalSafe> {
        Some(self)
    }

    /// `write_at` hands `data` to `pwrite` and holds only the resize lock,
    /// which neither `read_at` nor `allocate` takes.
    fn writes_from_mapping(&self) -> bool {
        true
    }

    fn write_live(&self, offset: u64, data: LiveBytes<'_>) -> io::Result<()> {
        self.write_checked(offset, data.len(), |visible| {
            data.slice(0..visible).write_all_at(&self.file, offset)
        })
    }

    /// `SEEK_DATA` reports every byte of data (a filesystem without it
    /// reports the whole file), holes and unwritten extents read as zeros,
    /// and `fallocate` of a hole leaves zeros.
    fn unallocated_reads_zero(&self) -> bool {
        true
    }

    fn allocate(&self, blocks: Range<u64>) -> io::Result<()> {
        if blocks.is_empty() {
            return Ok(());
        }
        let (offset, len) = self.bytes(&blocks);
        sys::allocate(&self.file, offset, len)
    }

    fn deallocate(&self, blocks: Range<u64>) -> io::Result<()> {
        if blocks.is_empty() {
            return Ok(());
        }
        let (offset, len) = self.bytes(&blocks);
        sys::punch_hole(&self.file, offset, len)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let _resize = self.lock_resize();
        let old = self.len();
        if len < old {
            // Blocks allocated with KEEP_SIZE past the old EOF are not freed by
            // ftruncate on every filesystem; punch them so space comes back.
            let first = len.div_ceil(self.block);
            let end = old.div_ceil(self.block).max(first);
            self.file.set_len(len)?;
            if end > first {
                let (offset, bytes) = self.bytes(&(first..end));
                sys::punch_hole(&self.file, offset, bytes)?;
            }
        } else {
            self.file.set_len(len)?;
        }
        self.len.store(len, Ordering::SeqCst);
        self.dir_dirty.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        sys::data_sync(&self.file)?;
        if self.dir_dirty.swap(false, Ordering::SeqCst)
            && let Some(dir) = self.path.as_ref().and_then(|p| p.parent())
        {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
                self.dir_dirty.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
        Ok(())
    }

    fn allocated(&self) -> io::Result<Vec<Range<u64>>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        for bytes in sys::data_ranges(&self.file, self.len())? {
            let blocks = bytes.start / self.block..bytes.end.div_ceil(self.block);
            match out.last_mut() {
                Some(last) if last.end >= blocks.start => last.end = last.end.max(blocks.end),
                _ => out.push(blocks),
            }
        }
        Ok(out)
    }
}

// SAFETY: `pread(2)` and `fallocate(2)` on the store's own descriptor, no
// allocation (errors are errnos), no lock; the length is an atomic load.
#[allow(unsafe_code)]
unsafe impl SignalSafe for FileStore {
    fn read_at_in_signal(&self, offset: u64, buf: &mut [u8]) -> Result<(), i32> {
        sys::read_exact_at_raw(&self.file, offset, buf)
    }

    fn allocate_in_signal(&self, blocks: Range<u64>) -> Result<(), i32> {
        if blocks.is_empty() {
            return Ok(());
        }
        let (offset, len) = self.bytes(&blocks);
        sys::allocate_raw(&self.file, offset, len)
    }
}
