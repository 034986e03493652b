//! The file view of a pseudo image: the image as one read-only regular file
//! through FUSE, for what needs a file rather than a block device (QEMU's
//! `-incoming file:` of a mapped-ram save, `-drive file=`, `cmp`, `dd`).
//!
//! The mountpoint is a regular file and the mount's root inode *is* the
//! image (FUSE takes the root's mode from the mountpoint), so PATH itself
//! reads as the image: no directory, no name to choose or check.
//!
//! Every read goes to the same [`PseudoImage`] the NBD export uses, so the
//! view shares its lazy, single-flight, verified cache, its prefetch and its
//! statistics. A read of a range upstream cannot deliver fails with EIO and
//! nothing is cached, so the next read of it (upstream back) succeeds.
//!
//! Built on the `fuser` crate without its `libfuse` feature: the FUSE
//! protocol is spoken in Rust and, as root, the mount is a plain mount(2)
//! of /dev/fuse, so nodes need neither libfuse nor a setuid helper (a
//! non-root user falls back to `fusermount3`, from Debian's fuse3).

use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, LockOwner,
    MountOption, OpenAccMode, OpenFlags, PollEvents, PollFlags, PollNotifier, ReplyAttr, ReplyData,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyPoll, ReplyWrite, Request, SessionACL, WriteFlags,
};

use super::pseudo::PseudoImage;

/// The image never changes under a mount: the kernel may keep its
/// attributes (and, with FOPEN_KEEP_CACHE, its pages) as long as it likes.
const ATTR_TTL: Duration = Duration::from_secs(3600);
/// errno of an open on a FUSE mount whose server died (ENOTCONN).
const ENOTCONN: i32 = 107;

#[derive(Debug, thiserror::Error)]
pub enum FileViewError {
    #[error("{path}: {what}")]
    MountPoint { path: PathBuf, what: String },
    #[error("mounting {path}: {source}")]
    Mount { path: PathBuf, source: io::Error },
    #[error("unmounting {path}: {source}")]
    Unmount { path: PathBuf, source: io::Error },
}

/// Options of one mount.
#[derive(Debug, Clone, Default)]
pub struct ViewOptions {
    /// Let every user read the file (permissions still say 0444); by
    /// default only the user who mounted it (and root) may.
    pub allow_other: bool,
}

/// The FUSE filesystem: one inode, the image.
struct ImageFile {
    img: Arc<PseudoImage>,
    /// Reads wait on the network: they run as tasks of this runtime, and
    /// FUSE's dispatch thread goes on to the next request meanwhile
    /// (the kernel sends reads asynchronously, FUSE_ASYNC_READ).
    rt: tokio::runtime::Handle,
    attr: FileAttr,
}

impl Filesystem for ImageFile {
    fn lookup(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEntry) {
        // The root is a file: it has no entries.
        reply.error(Errno::ENOTDIR);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == INodeNo::ROOT {
            reply.attr(&ATTR_TTL, &self.attr);
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // The mount is read-only (the kernel answers EROFS first); this is
        // the second line for a kernel that asks anyway.
        reply.error(Errno::EROFS);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino != INodeNo::ROOT {
            reply.error(Errno::ENOENT);
        } else if flags.acc_mode() != OpenAccMode::O_RDONLY {
            reply.error(Errno::EROFS);
        } else {
            reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino != INodeNo::ROOT {
            reply.error(Errno::ENOENT);
            return;
        }
        // A read at or past the end is a short read, as for any file.
        let total = self.img.size();
        if offset >= total || size == 0 {
            reply.data(&[]);
            return;
        }
        let len = u64::from(size).min(total - offset) as u32;
        let img = self.img.clone();
        self.rt.spawn(async move {
            match img.read(offset, len).await {
                Ok(bytes) => reply.data(&bytes),
                // The pseudo image logged it and counted it as a read
                // error; the reader gets EIO, never bytes it cannot verify.
                Err(_) => reply.error(Errno::EIO),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever buffered for writing.
        reply.ok();
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: PollNotifier,
        events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        // As any regular file: always readable (QEMU polls its migration
        // channel before reading it), never writable.
        reply.poll(events & (PollEvents::POLLIN | PollEvents::POLLRDNORM));
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }
}

/// A mounted file view; unmounted by [`MountedView::unmount`] or on drop.
pub struct MountedView {
    path: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl MountedView {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmount and wait for FUSE's thread to end. If a process still holds
    /// the file open (EBUSY), the mount is detached instead: it disappears
    /// from the namespace at once and the kernel ends it when the last
    /// holder closes (this process answering until it exits).
    pub fn unmount(mut self) -> Result<(), FileViewError> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<(), FileViewError> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        match session.umount_and_join() {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                tracing::warn!(
                    "{} is still open by another process; detaching the mount",
                    self.path.display()
                );
                nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
                    FileViewError::Unmount {
                        path: self.path.clone(),
                        source: e.into(),
                    }
                })
            }
            Err(source) => Err(FileViewError::Unmount {
                path: self.path.clone(),
                source,
            }),
        }
    }
}

impl Drop for MountedView {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            tracing::warn!("{e}");
        }
    }
}

/// Mount `img` read-only at `at`, an existing regular file (its contents
/// are hidden while mounted and are untouched). Reads run on `rt`.
pub fn mount(
    img: Arc<PseudoImage>,
    at: &Path,
    rt: tokio::runtime::Handle,
    opts: &ViewOptions,
) -> Result<MountedView, FileViewError> {
    let bad = |what: String| FileViewError::MountPoint {
        path: at.to_path_buf(),
        what,
    };
    let meta = match std::fs::metadata(at) {
        Ok(m) => m,
        Err(e) if e.raw_os_error() == Some(ENOTCONN) => {
            return Err(bad(
                "a stale FUSE mount (its server was killed); remove it with `umount -l`".into(),
            ))
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    if !meta.is_file() {
        return Err(bad("the mountpoint must be a regular file".into()));
    }
    let size = img.size();
    let now = SystemTime::now();
    let attr = FileAttr {
        ino: INodeNo::ROOT,
        size,
        blocks: size.div_ceil(512),
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind: FileType::RegularFile,
        perm: 0o444,
        nlink: 1,
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: 0,
        flags: 0,
        blksize: 4096,
    };
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoExec,
        MountOption::FSName(format!("strato:{}", img.name())),
        MountOption::Subtype("strato".into()),
    ];
    if opts.allow_other {
        config.acl = SessionACL::All;
        // The kernel then checks the 0444 mode for every user.
        config.mount_options.push(MountOption::DefaultPermissions);
    }
    let fs = ImageFile { img, rt, attr };
    let session = fuser::spawn_mount(fs, at, &config).map_err(|source| FileViewError::Mount {
        path: at.to_path_buf(),
        source,
    })?;
    Ok(MountedView {
        path: at.to_path_buf(),
        session: Some(session),
    })
}
