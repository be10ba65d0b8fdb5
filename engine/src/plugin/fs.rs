//! The host side of `wasi:filesystem/types` for plugins: wasmtime-wasi's implementation behind a
//! filter. The service folder is preopened read-only or read-write as granted; on top of that,
//! every call that names a path is checked here before wasmtime-wasi sees it:
//!
//! - nothing inside a `.git` (the service repository's, a nested repository's or a submodule's
//!   `.git` file) can be opened, listed, created, renamed, linked, stat'ed or removed, whether
//!   named directly or reached through a symbolic link: git runs code from a repository's config
//!   and hooks (`core.fsmonitor`, `core.hooksPath`, hooks), and the config may hold credentials;
//!   `.git` entries are left out of directory listings;
//! - only regular files and folders can be opened: a FIFO (whose `open` blocks until a writer
//!   comes), a socket or a device node is refused before it is opened;
//! - bytes the plugin writes (`write`, write and append streams, growing a file with `set-size`)
//!   count against the step's `disk_mb`; past it writes fail with `quota`.
//!
//! A refusal is an `fs` denial: a notice in the step log, an audit row, and `not-permitted` for
//! the plugin. What this cannot cover (programs the plugin runs work with the user's own rights)
//! is stated in docs/plugin-authoring.md.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use wasmtime::component::{HasData, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemCtxView};
use wasmtime_wasi::p2::bindings::filesystem::types::{
    self, ErrorCode, HostDescriptor, HostDirectoryEntryStream,
};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, FsError, FsResult, OutputStream, Pollable, StreamError,
    StreamResult,
};

use super::caps::{Denial, MAX_ECHO, clip};
use super::state::{StepContext, StepState};

/// What the filter knows about the step: the canonical service folder, and the bytes written.
pub struct FsGuard {
    ctx: Arc<StepContext>,
    written: Arc<AtomicU64>,
    quota_noted: Arc<AtomicBool>,
}

impl FsGuard {
    pub fn new(ctx: Arc<StepContext>) -> FsGuard {
        FsGuard {
            ctx,
            written: Arc::default(),
            quota_noted: Arc::default(),
        }
    }

    fn budget(&self) -> Budget {
        Budget {
            ctx: self.ctx.clone(),
            written: self.written.clone(),
            noted: self.quota_noted.clone(),
        }
    }

    fn refuse(&self, path: &str, why: &str) -> FsError {
        self.ctx.record_denial(&Denial {
            capability: "fs".into(),
            requested: clip(path, MAX_ECHO),
            grant: why.to_string(),
        });
        ErrorCode::NotPermitted.into()
    }

    fn refuse_git(&self, path: &str) -> FsError {
        self.refuse(
            path,
            "no grant opens a repository's `.git` to a plugin: git runs code from its config and \
             hooks, and it may hold credentials (the plugin gets the commit and branch in its \
             request)",
        )
    }

    /// The real location of a folder descriptor.
    fn dir_path(
        &self,
        fs: &WasiFilesystemCtxView<'_>,
        fd: &Resource<Descriptor>,
    ) -> Option<PathBuf> {
        match fs.table.get(fd).ok()? {
            Descriptor::Dir(d) => fd_path(&d.dir),
            Descriptor::File(f) => fd_path(&f.file),
        }
    }

    /// True when `real` (canonical) lies inside a `.git` below the service folder.
    fn in_git(&self, real: &Path) -> bool {
        match real.strip_prefix(&self.ctx.service_dir) {
            Ok(rel) => has_git(rel),
            // Outside the service folder: wasmtime-wasi refuses it on its own.
            Err(_) => false,
        }
    }

    /// Checks a path relative to the folder descriptor `fd`: refused when it names a `.git` or
    /// resolves (symbolic links followed, the last one only when `follow`) into one. Returns the
    /// host path it names.
    fn check(
        &self,
        fs: &WasiFilesystemCtxView<'_>,
        fd: &Resource<Descriptor>,
        path: &str,
        follow: bool,
    ) -> Result<Option<PathBuf>, FsError> {
        if has_git(Path::new(path)) {
            return Err(self.refuse_git(path));
        }
        let Some(base) = self.dir_path(fs, fd) else {
            // Not a descriptor this filter can place: let wasmtime-wasi answer (bad descriptor).
            return Ok(None);
        };
        if self.in_git(&base) {
            return Err(self.refuse_git(path));
        }
        if Path::new(path).is_absolute() {
            return Ok(None);
        }
        let full = base.join(path);
        let parent = match full.parent() {
            Some(p) if full.file_name().is_some() => p.to_path_buf(),
            // `.`, `..` or empty: the target itself is a folder to resolve.
            _ => full.clone(),
        };
        if let Ok(real) = std::fs::canonicalize(&parent)
            && self.in_git(&real)
        {
            return Err(self.refuse_git(path));
        }
        if (follow || full.file_name().is_none())
            && let Ok(real) = std::fs::canonicalize(&full)
            && self.in_git(&real)
        {
            return Err(self.refuse_git(path));
        }
        Ok(Some(full))
    }

    /// Refuses opening anything but a regular file or a folder.
    fn check_openable(&self, full: &Path, follow: bool, path: &str) -> Result<(), FsError> {
        let meta = if follow {
            std::fs::metadata(full)
        } else {
            std::fs::symlink_metadata(full)
        };
        let Ok(meta) = meta else { return Ok(()) };
        let ft = meta.file_type();
        if ft.is_file() || ft.is_dir() || ft.is_symlink() {
            return Ok(());
        }
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_fifo() {
            "a FIFO (opening it would wait for a writer)"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        Err(self.refuse(
            path,
            &format!(
                "it is {kind}; a plugin may open regular files and folders only (no grant changes this)"
            ),
        ))
    }
}

/// A byte budget shared by every write of a step.
#[derive(Clone)]
struct Budget {
    ctx: Arc<StepContext>,
    written: Arc<AtomicU64>,
    noted: Arc<AtomicBool>,
}

impl Budget {
    /// Counts `n` bytes; false (and nothing counted) when they would pass the step's `disk_mb`.
    fn charge(&self, n: u64) -> bool {
        let limit = self.ctx.caps.disk_bytes;
        let before = self.written.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) <= limit {
            return true;
        }
        self.written.fetch_sub(n, Ordering::Relaxed);
        if !self.noted.swap(true, Ordering::Relaxed) {
            self.ctx.log.system(format!(
                "[nestr: the plugin reached its limit of {} MiB written through its filesystem; \
                 further writes fail; raise it with `disk_mb` in the plugin's grants]",
                limit / (1024 * 1024)
            ));
        }
        false
    }
}

/// A write or append stream of a file, counted against the budget.
struct Counted {
    inner: DynOutputStream,
    budget: Budget,
}

#[async_trait::async_trait]
impl Pollable for Counted {
    async fn ready(&mut self) {
        self.inner.ready().await;
    }
}

#[async_trait::async_trait]
impl OutputStream for Counted {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if !self.budget.charge(bytes.len() as u64) {
            return Err(StreamError::LastOperationFailed(wasmtime::Error::msg(
                "disk quota of the step exceeded (disk_mb)",
            )));
        }
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }

    fn write_zeroes(&mut self, nelem: usize) -> StreamResult<()> {
        if !self.budget.charge(nelem as u64) {
            return Err(StreamError::LastOperationFailed(wasmtime::Error::msg(
                "disk quota of the step exceeded (disk_mb)",
            )));
        }
        self.inner.write_zeroes(nelem)
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await;
    }
}

/// True when a component of `p` is `.git` (in any case: case-insensitive file systems exist).
fn has_git(p: &Path) -> bool {
    p.components()
        .any(|c| matches!(c, Component::Normal(n) if n.eq_ignore_ascii_case(".git")))
}

/// The path an open file descriptor refers to now.
fn fd_path(file: &std::fs::File) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
}

/// The data the filtered filesystem host works on.
pub struct GuardedFs<'a> {
    fs: WasiFilesystemCtxView<'a>,
    guard: &'a FsGuard,
}

/// [`HasData`] for the filtered host.
pub struct GuardedFsData;

impl HasData for GuardedFsData {
    type Data<'a> = GuardedFs<'a>;
}

impl StepState {
    /// The filtered filesystem view of this step.
    pub fn guarded_fs(&mut self) -> GuardedFs<'_> {
        GuardedFs {
            fs: WasiFilesystemCtxView {
                ctx: self.wasi.filesystem(),
                table: &mut self.table,
            },
            guard: &self.fs_guard,
        }
    }
}

/// Replaces wasmtime-wasi's `wasi:filesystem/types` in `linker` with the filtered one.
pub fn add_to_linker(linker: &mut wasmtime::component::Linker<StepState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    types::add_to_linker::<StepState, GuardedFsData>(linker, StepState::guarded_fs)?;
    linker.allow_shadowing(false);
    Ok(())
}

impl types::Host for GuardedFs<'_> {
    fn convert_error_code(&mut self, err: FsError) -> wasmtime::Result<ErrorCode> {
        types::Host::convert_error_code(&mut self.fs, err)
    }

    fn filesystem_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        types::Host::filesystem_error_code(&mut self.fs, err)
    }
}

fn follows(flags: types::PathFlags) -> bool {
    flags.contains(types::PathFlags::SYMLINK_FOLLOW)
}

/// `*_at` calls that name one path (never following a final symlink): the path is checked
/// against the guard, then the call passes on to the WASI implementation.
macro_rules! path_calls {
    ($($name:ident -> $ret:ty;)*) => {$(
        async fn $name(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<$ret> {
            self.guard.check(&self.fs, &fd, &path, false)?;
            self.fs.$name(fd, path).await
        }
    )*};
}

/// `*_at` calls that name one path with flags (which say whether a final symlink is
/// followed): checked against the guard, then passed on.
macro_rules! flagged_path_calls {
    ($($name:ident -> $ret:ty;)*) => {$(
        async fn $name(
            &mut self,
            fd: Resource<Descriptor>,
            path_flags: types::PathFlags,
            path: String,
        ) -> FsResult<$ret> {
            self.guard.check(&self.fs, &fd, &path, follows(path_flags))?;
            self.fs.$name(fd, path_flags, path).await
        }
    )*};
}

impl HostDescriptor for GuardedFs<'_> {
    path_calls! {
        create_directory_at -> ();
        readlink_at -> String;
        remove_directory_at -> ();
        unlink_file_at -> ();
    }

    flagged_path_calls! {
        stat_at -> types::DescriptorStat;
        metadata_hash_at -> types::MetadataHashValue;
    }

    async fn advise(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
        len: types::Filesize,
        advice: types::Advice,
    ) -> FsResult<()> {
        self.fs.advise(fd, offset, len, advice).await
    }

    async fn sync_data(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        self.fs.sync_data(fd).await
    }

    async fn get_flags(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorFlags> {
        self.fs.get_flags(fd).await
    }

    async fn get_type(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorType> {
        self.fs.get_type(fd).await
    }

    async fn set_size(&mut self, fd: Resource<Descriptor>, size: types::Filesize) -> FsResult<()> {
        let current = match self.fs.table.get(&fd) {
            Ok(Descriptor::File(f)) => f.file.metadata().map(|m| m.len()).unwrap_or(0),
            _ => size,
        };
        if size > current && !self.guard.budget().charge(size - current) {
            return Err(ErrorCode::Quota.into());
        }
        self.fs.set_size(fd, size).await
    }

    async fn set_times(
        &mut self,
        fd: Resource<Descriptor>,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        self.fs.set_times(fd, atim, mtim).await
    }

    async fn read(
        &mut self,
        fd: Resource<Descriptor>,
        len: types::Filesize,
        offset: types::Filesize,
    ) -> FsResult<(Vec<u8>, bool)> {
        self.fs.read(fd, len, offset).await
    }

    async fn write(
        &mut self,
        fd: Resource<Descriptor>,
        buf: Vec<u8>,
        offset: types::Filesize,
    ) -> FsResult<types::Filesize> {
        if !self.guard.budget().charge(buf.len() as u64) {
            return Err(ErrorCode::Quota.into());
        }
        self.fs.write(fd, buf, offset).await
    }

    async fn read_directory(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<Resource<types::DirectoryEntryStream>> {
        if let Some(dir) = self.guard.dir_path(&self.fs, &fd)
            && self.guard.in_git(&dir)
        {
            return Err(self.guard.refuse_git(&dir.to_string_lossy()));
        }
        self.fs.read_directory(fd).await
    }

    async fn sync(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        self.fs.sync(fd).await
    }

    async fn stat(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorStat> {
        self.fs.stat(fd).await
    }

    async fn set_times_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        self.guard
            .check(&self.fs, &fd, &path, follows(path_flags))?;
        self.fs.set_times_at(fd, path_flags, path, atim, mtim).await
    }

    async fn link_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path_flags: types::PathFlags,
        old_path: String,
        new_descriptor: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        self.guard
            .check(&self.fs, &fd, &old_path, follows(old_path_flags))?;
        self.guard
            .check(&self.fs, &new_descriptor, &new_path, false)?;
        self.fs
            .link_at(fd, old_path_flags, old_path, new_descriptor, new_path)
            .await
    }

    async fn open_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        oflags: types::OpenFlags,
        flags: types::DescriptorFlags,
    ) -> FsResult<Resource<Descriptor>> {
        let follow = follows(path_flags);
        if let Some(full) = self.guard.check(&self.fs, &fd, &path, follow)? {
            self.guard.check_openable(&full, follow, &path)?;
        }
        let opened = self
            .fs
            .open_at(fd, path_flags, path.clone(), oflags, flags)
            .await?;
        // What was opened, wherever the path led: never inside a `.git`, never special.
        let bad = match self.fs.table.get(&opened) {
            Ok(Descriptor::Dir(d)) => fd_path(&d.dir).is_some_and(|p| self.guard.in_git(&p)),
            Ok(Descriptor::File(f)) => {
                fd_path(&f.file).is_some_and(|p| self.guard.in_git(&p))
                    || f.file.metadata().is_ok_and(|m| !m.is_file())
            }
            Err(_) => false,
        };
        if bad {
            let _ = self.fs.table.delete(opened);
            return Err(self.guard.refuse(
                &path,
                "it leads into a `.git` or to something that is not a regular file or folder",
            ));
        }
        Ok(opened)
    }

    fn drop(&mut self, fd: Resource<Descriptor>) -> wasmtime::Result<()> {
        HostDescriptor::drop(&mut self.fs, fd)
    }

    async fn rename_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path: String,
        new_fd: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        self.guard.check(&self.fs, &fd, &old_path, false)?;
        self.guard.check(&self.fs, &new_fd, &new_path, false)?;
        self.fs.rename_at(fd, old_path, new_fd, new_path).await
    }

    async fn symlink_at(
        &mut self,
        fd: Resource<Descriptor>,
        src_path: String,
        dest_path: String,
    ) -> FsResult<()> {
        if has_git(Path::new(&src_path)) {
            return Err(self.guard.refuse_git(&src_path));
        }
        self.guard.check(&self.fs, &fd, &dest_path, false)?;
        self.fs.symlink_at(fd, src_path, dest_path).await
    }

    fn read_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynInputStream>> {
        self.fs.read_via_stream(fd, offset)
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynOutputStream>> {
        let stream = self.fs.write_via_stream(fd, offset)?;
        self.counted(stream)
    }

    fn append_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<Resource<DynOutputStream>> {
        let stream = self.fs.append_via_stream(fd)?;
        self.counted(stream)
    }

    async fn is_same_object(
        &mut self,
        a: Resource<Descriptor>,
        b: Resource<Descriptor>,
    ) -> wasmtime::Result<bool> {
        self.fs.is_same_object(a, b).await
    }

    async fn metadata_hash(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<types::MetadataHashValue> {
        self.fs.metadata_hash(fd).await
    }
}

impl GuardedFs<'_> {
    /// Swaps a file's output stream in the table for one that counts against the budget.
    fn counted(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> FsResult<Resource<DynOutputStream>> {
        let inner = self.fs.table.delete(stream)?;
        let wrapped: DynOutputStream = Box::new(Counted {
            inner,
            budget: self.guard.budget(),
        });
        Ok(self.fs.table.push(wrapped)?)
    }
}

impl HostDirectoryEntryStream for GuardedFs<'_> {
    async fn read_directory_entry(
        &mut self,
        stream: Resource<types::DirectoryEntryStream>,
    ) -> FsResult<Option<types::DirectoryEntry>> {
        loop {
            let entry = self
                .fs
                .read_directory_entry(Resource::new_borrow(stream.rep()))
                .await?;
            match entry {
                Some(e) if e.name.eq_ignore_ascii_case(".git") => continue,
                other => return Ok(other),
            }
        }
    }

    fn drop(&mut self, stream: Resource<types::DirectoryEntryStream>) -> wasmtime::Result<()> {
        HostDirectoryEntryStream::drop(&mut self.fs, stream)
    }
}
