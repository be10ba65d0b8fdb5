//! The local store of results: blobs as zstd-compressed files under `STATE/cache/blobs/`, named by
//! the sha256 of their content (written to a temporary file and renamed into place, so two
//! processes filling the cache at once never see half a blob), and everything read back verified
//! against its digest. The entries that name the blobs are rows of the state database
//! (`crate::store::cache`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

thread_local! {
    static DCTX: std::cell::RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// The blob store of one workspace.
#[derive(Debug, Clone)]
pub struct Blobs {
    dir: PathBuf,
}

/// The largest blob read back whole into memory (logs; outputs are streamed).
const MAX_IN_MEMORY: u64 = 256 * 1024 * 1024;

impl Blobs {
    pub fn new(state_dir: &Path) -> Blobs {
        Blobs {
            dir: state_dir.join("cache").join("blobs"),
        }
    }

    fn path(&self, digest: &str) -> Option<PathBuf> {
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(self.dir.join(&digest[..2]).join(format!("{digest}.zst")))
    }

    /// Whether the blob is present (not whether it is intact).
    pub fn has(&self, digest: &str) -> bool {
        self.path(digest).is_some_and(|p| p.is_file())
    }

    /// The bytes a blob takes in the store, if it is there.
    pub fn stored_size(&self, digest: &str) -> Option<u64> {
        std::fs::metadata(self.path(digest)?).ok().map(|m| m.len())
    }

    /// Stores `bytes`; returns their digest and the size stored.
    pub fn put(&self, bytes: &[u8]) -> std::io::Result<(String, u64)> {
        let digest = hex::encode(Sha256::digest(bytes));
        self.put_from(&digest, &mut std::io::Cursor::new(bytes))
            .map(|size| (digest, size))
    }

    /// Stores the file at `path`, read once: the digest is of the bytes compressed, so a file
    /// that changes while it is read (another process writing it) still gives a blob that
    /// matches its name. Returns its digest, its size and the size stored.
    pub fn put_file(&self, path: &Path) -> std::io::Result<(String, u64, u64)> {
        let mut f = super::key::open_regular(path)?;
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(
            ".incoming.{}.{}.tmp",
            std::process::id(),
            crate::scheduler::new_run_id()
        ));
        let written = (|| {
            let out = std::fs::File::create(&tmp)?;
            let mut enc = zstd::stream::Encoder::new(out, 3)?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut len = 0u64;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                len += n as u64;
                h.update(&buf[..n]);
                enc.write_all(&buf[..n])?;
            }
            enc.finish()?.sync_data()?;
            let digest = hex::encode(h.finalize());
            let path = self
                .path(&digest)
                .ok_or_else(|| std::io::Error::other("not a sha256 digest"))?;
            if let Ok(m) = std::fs::metadata(&path) {
                let _ = std::fs::remove_file(&tmp);
                return Ok((digest, len, m.len()));
            }
            std::fs::create_dir_all(path.parent().unwrap_or(&self.dir))?;
            std::fs::rename(&tmp, &path)?;
            Ok((digest, len, std::fs::metadata(&path)?.len()))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    fn put_from(&self, digest: &str, r: &mut dyn Read) -> std::io::Result<u64> {
        let path = self
            .path(digest)
            .ok_or_else(|| std::io::Error::other("not a sha256 digest"))?;
        if let Ok(m) = std::fs::metadata(&path) {
            return Ok(m.len());
        }
        let parent = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(parent)?;
        let tmp = parent.join(format!(
            ".{digest}.{}.{}.tmp",
            std::process::id(),
            crate::scheduler::new_run_id()
        ));
        let written = (|| {
            let f = std::fs::File::create(&tmp)?;
            let mut enc = zstd::stream::Encoder::new(f, 3)?;
            std::io::copy(r, &mut enc)?;
            let f = enc.finish()?;
            f.sync_data()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::metadata(&path).map(|m| m.len())
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// The content of a blob, verified against its digest.
    pub fn get(&self, digest: &str) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        self.copy_to(digest, &mut out, MAX_IN_MEMORY)?;
        Ok(out)
    }

    /// Writes a blob's content into `w` (at most `max` bytes), verified against its digest: an
    /// error when it is missing, unreadable, too large or not what its name says. A corrupt blob
    /// is deleted (so that the next result stored with that content writes it anew).
    pub fn copy_to(&self, digest: &str, w: &mut dyn Write, max: u64) -> Result<u64, String> {
        let out = self.copy_checked(digest, w, max);
        if let Err(e) = &out
            && e.contains("corrupt")
            && let Some(p) = self.path(digest)
        {
            let _ = std::fs::remove_file(p);
        }
        out
    }

    fn copy_checked(&self, digest: &str, w: &mut dyn Write, max: u64) -> Result<u64, String> {
        let short = &digest[..digest.len().min(12)];
        let path = self
            .path(digest)
            .ok_or_else(|| format!("{digest:?} is not a sha256 digest"))?;
        let f = std::fs::File::open(&path).map_err(|_| format!("blob {short}… is missing"))?;
        // One decompression context per thread, reset for each blob: making one costs more than
        // decompressing a small log.
        DCTX.with(|cell| match cell.try_borrow_mut() {
            Ok(mut ctx) => {
                let ctx = ctx.get_or_insert_with(zstd::zstd_safe::DCtx::create);
                ctx.reset(zstd::zstd_safe::ResetDirective::SessionOnly)
                    .map_err(|_| format!("blob {short}… cannot be decompressed"))?;
                let dec =
                    zstd::stream::read::Decoder::with_context(std::io::BufReader::new(f), ctx);
                Self::hash_copy(dec, short, digest, w, max)
            }
            Err(_) => {
                let dec = zstd::stream::Decoder::new(f)
                    .map_err(|e| format!("blob {short}… is corrupt ({e})"))?;
                Self::hash_copy(dec, short, digest, w, max)
            }
        })
    }

    /// Copies at most `max` decompressed bytes into `w`, checking they hash to `digest`.
    fn hash_copy(
        dec: impl Read,
        short: &str,
        digest: &str,
        w: &mut dyn Write,
        max: u64,
    ) -> Result<u64, String> {
        let mut reader = dec.take(max + 1);
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| format!("blob {short}… is corrupt ({e})"))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > max {
                return Err(format!("blob {short}… is larger than expected"));
            }
            h.update(&buf[..n]);
            w.write_all(&buf[..n])
                .map_err(|e| format!("cannot write blob {short}…: {e}"))?;
        }
        if hex::encode(h.finalize()) != digest {
            return Err(format!(
                "blob {short}… is corrupt (its content does not match its digest)"
            ));
        }
        Ok(total)
    }

    /// Deletes blobs by digest (those no entry holds).
    pub fn remove(&self, digests: &[String]) -> u64 {
        let mut freed = 0;
        for d in digests {
            if let Some(p) = self.path(d) {
                if let Ok(m) = std::fs::metadata(&p) {
                    freed += m.len();
                }
                let _ = std::fs::remove_file(p);
            }
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_round_trips_and_a_corrupt_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = Blobs::new(dir.path());
        let (d, _) = blobs.put(b"hello cache").expect("put");
        assert_eq!(blobs.get(&d).expect("get"), b"hello cache");
        // Same content: stored once.
        assert_eq!(blobs.put(b"hello cache").expect("again").0, d);
        let path = blobs.path(&d).expect("path");
        std::fs::write(
            &path,
            zstd::encode_all(&b"something else"[..], 3).expect("zstd"),
        )
        .expect("corrupt it");
        let err = blobs.get(&d).expect_err("corrupt");
        assert!(err.contains("corrupt"), "{err}");
        // A corrupt blob is deleted so the next store writes a good one.
        assert!(!path.exists(), "the corrupt blob is removed");
        std::fs::write(&path, b"not zstd at all").expect("garbage");
        assert!(blobs.get(&d).is_err());
        assert!(!path.exists(), "the undecodable blob is removed");
        assert!(blobs.get(&d).expect_err("missing").contains("missing"));
        assert!(blobs.get("../../etc/passwd").is_err());
    }
}
