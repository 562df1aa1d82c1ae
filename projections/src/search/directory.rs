//! The index's files, written without waiting for the disk.
//!
//! A tantivy commit fsyncs every file it wrote and its `meta.json`: on this
//! machine's disk that was 22 of a small commit's 26 ms (4.5 ms in memory),
//! and the commit is most of how long a write takes to show in search. The
//! index is derived data, rebuilt from the log at will, and its position
//! rides in its commit: a crash of the process loses nothing (what it wrote
//! is in the page cache), and a crash of the machine can at worst leave the
//! newest commit naming files that did not all reach the disk. Opening the
//! index checks every file's checksum, and an index that fails is built
//! again from the log, never served.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tantivy::directory::error::{DeleteError, LockError, OpenDirectoryError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    AntiCallToken, Directory, DirectoryLock, FileHandle, Lock, MmapDirectory, TerminatingWrite, WatchCallback, WatchHandle, WritePtr,
};

/// `MmapDirectory`, but nothing waits for the disk.
#[derive(Clone, Debug)]
pub(super) struct Unsynced {
    inner: MmapDirectory,
    root: PathBuf,
}

impl Unsynced {
    pub(super) fn open(root: &Path) -> Result<Unsynced, OpenDirectoryError> {
        Ok(Unsynced { inner: MmapDirectory::open(root)?, root: root.to_path_buf() })
    }
}

/// A file written through the page cache: finished once flushed.
struct CachedFile(File);

impl Write for CachedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TerminatingWrite for CachedFile {
    fn terminate_ref(&mut self, _: AntiCallToken) -> io::Result<()> {
        self.0.flush()
    }
}

impl Directory for Unsynced {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        self.inner.get_file_handle(path)
    }

    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        self.inner.delete(path)
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        self.inner.exists(path)
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        let file = OpenOptions::new().write(true).create_new(true).open(self.root.join(path)).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                OpenWriteError::FileAlreadyExists(path.to_path_buf())
            } else {
                OpenWriteError::wrap_io_error(e, path.to_path_buf())
            }
        })?;
        Ok(BufWriter::new(Box::new(CachedFile(file))))
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        self.inner.atomic_read(path)
    }

    /// Written aside, then renamed over: a reader sees the old content or
    /// the new, never part of it.
    fn atomic_write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let target = self.root.join(path);
        let mut aside = target.clone().into_os_string();
        aside.push(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
        std::fs::write(&aside, data)?;
        std::fs::rename(&aside, &target)
    }

    fn sync_directory(&self) -> io::Result<()> {
        Ok(())
    }

    fn acquire_lock(&self, lock: &Lock) -> Result<DirectoryLock, LockError> {
        self.inner.acquire_lock(lock)
    }

    fn watch(&self, watch_callback: WatchCallback) -> tantivy::Result<WatchHandle> {
        self.inner.watch(watch_callback)
    }
}
