//! Compiled components on disk, so that a process does not compile a
//! component another process (or an earlier run) already compiled.
//!
//! A file `<module sha256>-<engine key>.cwasm` holds the artifact of
//! `Component::serialize` and a trailer. The engine key hashes
//! `Engine::precompile_compatibility_hash` (wasmtime version, target, and
//! every setting that shapes compiled code) and this file format's version.
//!
//! wasmtime's deserialisation trusts its input (it maps the code as
//! executable), so an artifact is only ever loaded from a directory that
//! only this user can write (checked when the cache is opened: the
//! directory and its ancestors) and only after its digest in the trailer
//! matches; a file that fails either that or deserialisation is deleted and
//! the component compiled and written again. Writes go to a unique
//! temporary file (0600) that is synced and renamed into place, so
//! concurrent writers and readers only ever see whole files.

use crate::model::ModuleHash;
use anyhow::{Context as _, bail};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The subdirectory of a wmr cache root that holds compiled code.
pub const COMPILED_SUBDIR: &str = "compiled";
/// Default bound on the compiled files' total size.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
const EXTENSION: &str = "cwasm";
const MAGIC: &[u8; 8] = b"WMRCC\0\0\x01";
/// After the artifact: its length, the module's digest, the engine key, the
/// artifact's digest, magic. A trailer, not a header: wasmtime maps the
/// whole file and wants the artifact at its start.
const TRAILER_LEN: usize = 8 + 32 + 32 + 32 + 8;
/// Temporary files older than this are a crashed writer's: removed when
/// the cache is trimmed.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// Where the cache lives and how large it may grow.
#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// The directory of compiled files itself (`ROOT/compiled`).
    pub dir: PathBuf,
    pub max_bytes: u64,
}

impl CacheOptions {
    /// Compiled code under a wmr cache root (`--cache-dir`).
    pub fn under_root(root: &Path, max_bytes: u64) -> Self {
        CacheOptions {
            dir: root.join(COMPILED_SUBDIR),
            max_bytes,
        }
    }
}

/// The default cache root: `$XDG_CACHE_HOME/wmr`, `$HOME/.cache/wmr`, or
/// `wmr-cache-UID` in the temp dir (only used if this user owns it).
pub fn default_root() -> PathBuf {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(xdg) = absolute("XDG_CACHE_HOME") {
        return xdg.join("wmr");
    }
    if let Some(home) = absolute("HOME") {
        return home.join(".cache").join("wmr");
    }
    std::env::temp_dir().join(format!("wmr-cache-{}", current_uid()))
}

fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// What one `wmr run` (or worker) did with the cache; `wmr run --json`
/// prints it as `compile_cache`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CacheReport {
    pub dir: PathBuf,
    /// Components loaded from disk instead of compiled.
    pub hits: u64,
    /// Components compiled (and written, unless too large or unwritable).
    pub misses: u64,
    /// Files that failed verification or deserialisation and were deleted.
    pub discarded: u64,
}

/// An open cache directory for one engine.
pub struct CompileCache {
    dir: PathBuf,
    max_bytes: u64,
    engine_key: [u8; 32],
    hits: AtomicU64,
    misses: AtomicU64,
    discarded: AtomicU64,
}

/// Feeds `Hash` output into SHA-256: the compatibility hash must be stable
/// across processes and releases, which `DefaultHasher` does not promise.
struct Sha256Hasher(Sha256);

impl std::hash::Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        unreachable!("only the digest is read")
    }
}

/// The key of `engine`'s compiled code: equal only for engines whose
/// artifacts load into each other.
pub fn engine_key(engine: &Engine) -> [u8; 32] {
    use std::hash::Hash as _;
    let mut hasher = Sha256Hasher(Sha256::new());
    hasher.0.update(MAGIC);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.0.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn module_digest(module: &ModuleHash) -> anyhow::Result<[u8; 32]> {
    let s = &module.0;
    anyhow::ensure!(
        s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()),
        "not a SHA-256: {s:?}"
    );
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)?;
    }
    Ok(out)
}

/// Refuse a directory another user could write into (or replace): it and
/// every ancestor must be owned by this user or root and not writable by
/// group or others, except sticky ancestors such as /tmp.
fn check_private(dir: &Path) -> anyhow::Result<()> {
    let uid = current_uid();
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        bail!("not a directory");
    }
    if meta.uid() != uid {
        bail!("owned by uid {}, not this user ({uid})", meta.uid());
    }
    if meta.mode() & 0o022 != 0 {
        bail!(
            "writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        );
    }
    let real = std::fs::canonicalize(dir)?;
    for ancestor in real.ancestors().skip(1) {
        let meta = std::fs::metadata(ancestor)?;
        let sticky = meta.mode() & 0o1000 != 0;
        if meta.uid() != uid && meta.uid() != 0 {
            bail!(
                "{} is owned by uid {}, not this user or root",
                ancestor.display(),
                meta.uid()
            );
        }
        if meta.mode() & 0o022 != 0 && !sticky {
            bail!(
                "{} is writable by group or others (mode {:o})",
                ancestor.display(),
                meta.mode() & 0o7777
            );
        }
    }
    Ok(())
}

/// Why a cached file was not used.
enum Reject {
    /// No file: an ordinary miss.
    Absent,
    /// A file that must not be used again: deleted. With the (device,
    /// inode) read, if it was opened: only that file is deleted, not one
    /// another process has renamed into its place since.
    Bad(String, Option<(u64, u64)>),
}

impl CompileCache {
    /// Open (creating it 0700 if need be) the directory in `options` for
    /// `engine`'s code. Fails if the directory is not private to this user.
    pub fn open(options: &CacheOptions, engine: &Engine) -> anyhow::Result<Self> {
        let dir = &options.dir;
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
        check_private(dir).with_context(|| format!("{}", dir.display()))?;
        anyhow::ensure!(
            Path::new("/proc/self/fd").is_dir(),
            "/proc/self/fd is not available (a verified file is loaded through it)"
        );
        Ok(CompileCache {
            dir: dir.clone(),
            max_bytes: options.max_bytes,
            engine_key: engine_key(engine),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
        })
    }

    pub fn report(&self) -> CacheReport {
        CacheReport {
            dir: self.dir.clone(),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            discarded: self.discarded.load(Ordering::Relaxed),
        }
    }

    /// The file of `module`'s compiled code for this engine.
    pub fn path_of(&self, module: &ModuleHash) -> PathBuf {
        self.dir.join(format!(
            "{}-{}.{EXTENSION}",
            module.0,
            hex(&self.engine_key[..16])
        ))
    }

    /// `module`'s component from the cache, or `compile`d and written to it.
    /// Errors are `compile`'s only: the cache failing costs a compile.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        module: &ModuleHash,
        compile: impl FnOnce() -> anyhow::Result<Component>,
    ) -> anyhow::Result<Component> {
        let start = Instant::now();
        let path = self.path_of(module);
        match self.read(engine, module, &path) {
            Ok(component) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                // Recently used: the trim keeps it over older files.
                if let Ok(file) = File::open(&path) {
                    let _ = file.set_modified(SystemTime::now());
                }
                tracing::info!(module = %module.0, ms = %format_args!("{:.1}", start.elapsed().as_secs_f64() * 1e3), "compile cache hit");
                return Ok(component);
            }
            Err(Reject::Absent) => {}
            Err(Reject::Bad(reason, read)) => {
                self.discarded.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "compile cache: discarding {}: {reason}; compiling again",
                    path.display()
                );
                let current = std::fs::symlink_metadata(&path).map(|m| (m.dev(), m.ino()));
                if read.is_none() || current.ok() == read {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let component = compile()?;
        self.misses.fetch_add(1, Ordering::Relaxed);
        let compiled_ms = start.elapsed().as_secs_f64() * 1e3;
        match self.write(module, &component, &path) {
            Ok(written) => {
                tracing::info!(module = %module.0, ms = %format_args!("{compiled_ms:.1}"), bytes = written, "compile cache miss");
                if let Err(e) = self.trim() {
                    tracing::warn!("compile cache: trimming {}: {e:#}", self.dir.display());
                }
            }
            Err(e) => {
                tracing::warn!(module = %module.0, "compile cache: not written: {e:#}");
            }
        }
        Ok(component)
    }

    fn read(&self, engine: &Engine, module: &ModuleHash, path: &Path) -> Result<Component, Reject> {
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Reject::Absent),
            Err(e) => return Err(Reject::Bad(format!("opening: {e}"), None)),
        };
        let meta = file
            .metadata()
            .map_err(|e| Reject::Bad(e.to_string(), None))?;
        let bad = |reason: String| Reject::Bad(reason, Some((meta.dev(), meta.ino())));
        // Only a file this user wrote privately: the directory is private,
        // this guards against a file placed there by hand.
        if !meta.is_file() || meta.uid() != current_uid() || meta.mode() & 0o077 != 0 {
            return Err(bad(format!(
                "not a private file of this user (uid {}, mode {:o})",
                meta.uid(),
                meta.mode() & 0o7777
            )));
        }
        self.verify(module, &file, meta.len()).map_err(bad)?;
        // Through this descriptor, so that wasmtime maps the very file just
        // verified even if another process renames a new one into `path`.
        let verified = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        // SAFETY: the file was written by this user's wmr (the directory is
        // private to this user, checked when opened), is intact (its digest
        // matches the trailer), and is never written in place (writers
        // rename new files over it), so it does not change while mapped;
        // wasmtime still checks that it was compiled for this engine's
        // version and settings.
        unsafe { Component::deserialize_file(engine, &verified) }
            .map_err(|e| bad(format!("wasmtime refused it: {e}")))
    }

    /// Whether `file` (`len` bytes) holds `module`'s artifact for this
    /// engine, whole: the trailer names both and the artifact's digest
    /// matches.
    fn verify(&self, module: &ModuleHash, file: &File, len: u64) -> Result<(), String> {
        use std::os::unix::fs::FileExt as _;
        let Some(artifact_len) = len.checked_sub(TRAILER_LEN as u64) else {
            return Err(format!("truncated ({len} bytes)"));
        };
        let mut trailer = [0u8; TRAILER_LEN];
        file.read_exact_at(&mut trailer, artifact_len)
            .map_err(|e| format!("reading: {e}"))?;
        if &trailer[TRAILER_LEN - 8..] != MAGIC {
            return Err("no wmr compile cache trailer".into());
        }
        let stated = u64::from_le_bytes(trailer[..8].try_into().expect("8 bytes"));
        if stated != artifact_len {
            return Err(format!(
                "the artifact is {artifact_len} bytes but the trailer says {stated}"
            ));
        }
        let digest = module_digest(module).map_err(|e| e.to_string())?;
        if trailer[8..40] != digest || trailer[40..72] != self.engine_key {
            return Err("the trailer names another module or engine".into());
        }
        // Streamed through a small buffer: a hit costs one pass over the
        // page cache, not a copy of the whole artifact.
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        while offset < artifact_len {
            let n = buffer.len().min((artifact_len - offset) as usize);
            file.read_exact_at(&mut buffer[..n], offset)
                .map_err(|e| format!("reading: {e}"))?;
            hasher.update(&buffer[..n]);
            offset += n as u64;
        }
        if hasher.finalize()[..] != trailer[72..104] {
            return Err("the artifact's digest does not match".into());
        }
        Ok(())
    }

    /// What follows `artifact` in `module`'s file (see [`TRAILER_LEN`]).
    fn trailer(&self, module: &ModuleHash, artifact: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut trailer = Vec::with_capacity(TRAILER_LEN);
        trailer.extend_from_slice(&(artifact.len() as u64).to_le_bytes());
        trailer.extend_from_slice(&module_digest(module)?);
        trailer.extend_from_slice(&self.engine_key);
        trailer.extend_from_slice(&Sha256::digest(artifact));
        trailer.extend_from_slice(MAGIC);
        debug_assert_eq!(trailer.len(), TRAILER_LEN);
        Ok(trailer)
    }

    /// Write `component` to `path` atomically; returns the file's size.
    fn write(
        &self,
        module: &ModuleHash,
        component: &Component,
        path: &Path,
    ) -> anyhow::Result<u64> {
        let artifact = component.serialize().map_err(|e| anyhow::anyhow!("{e}"))?;
        let size = (artifact.len() + TRAILER_LEN) as u64;
        if size > self.max_bytes {
            bail!(
                "{size} bytes, more than the cache may hold ({})",
                self.max_bytes
            );
        }
        let trailer = self.trailer(module, &artifact)?;
        // Unique per writer: processes populating the cache at once each
        // write their own file, and the last rename wins with a whole one.
        let tmp = self.dir.join(format!(
            ".{}.{}.{:08x}.tmp",
            path.file_name()
                .expect("cache paths have names")
                .to_string_lossy(),
            std::process::id(),
            rand::random::<u32>()
        ));
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            file.write_all(&artifact)?;
            file.write_all(&trailer)?;
            file.sync_all()?;
            std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result?;
        // The rename itself durable too; a failure here loses only the cache.
        if let Ok(dir) = File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(size)
    }

    /// Delete least recently used files (by modification time, which a hit
    /// refreshes) until the total is within the bound; also crashed
    /// writers' temporaries.
    fn trim(&self) -> anyhow::Result<()> {
        let now = SystemTime::now();
        let mut files = Vec::new();
        let mut total = 0u64;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if name.ends_with(".tmp") {
                if now.duration_since(modified).unwrap_or_default() > STALE_TEMP {
                    let _ = std::fs::remove_file(entry.path());
                }
                continue;
            }
            if name.ends_with(&format!(".{EXTENSION}")) {
                total += meta.len();
                files.push((modified, meta.len(), entry.path()));
            }
        }
        files.sort();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            // Another process may have removed it already: either way it
            // no longer counts.
            let _ = std::fs::remove_file(&path);
            tracing::info!(file = %path.display(), "compile cache: evicted");
            total -= len;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        Engine::new(&config).unwrap()
    }

    /// An empty component: compiles in milliseconds.
    fn component_bytes() -> Vec<u8> {
        wasm_encoder::Component::new().finish()
    }

    fn cache(dir: &Path, engine: &Engine, max_bytes: u64) -> CompileCache {
        CompileCache::open(
            &CacheOptions {
                dir: dir.join("compiled"),
                max_bytes,
            },
            engine,
        )
        .unwrap()
    }

    fn load(cache: &CompileCache, engine: &Engine, bytes: &[u8]) -> (bool, Component) {
        let mut compiled = false;
        let component = cache
            .load_or_compile(engine, &ModuleHash::of(bytes), || {
                compiled = true;
                Ok(Component::new(engine, bytes).unwrap())
            })
            .unwrap();
        (compiled, component)
    }

    #[test]
    fn second_load_is_a_hit_and_the_directory_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache = cache(tmp.path(), &engine, DEFAULT_MAX_BYTES);
        let bytes = component_bytes();
        assert!(load(&cache, &engine, &bytes).0);
        assert!(!load(&cache, &engine, &bytes).0);
        assert_eq!((cache.report().hits, cache.report().misses), (1, 1));
        let dir_mode = std::fs::metadata(tmp.path().join("compiled"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let file = cache.path_of(&ModuleHash::of(&bytes));
        let file_mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(file_mode & 0o777, 0o600);
        // No temporaries left behind.
        assert_eq!(std::fs::read_dir(&cache.dir).unwrap().count(), 1);
    }

    #[test]
    fn every_damaged_file_is_discarded_and_rewritten() {
        let tmp = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache = cache(tmp.path(), &engine, DEFAULT_MAX_BYTES);
        let bytes = component_bytes();
        load(&cache, &engine, &bytes);
        let path = cache.path_of(&ModuleHash::of(&bytes));
        let good = std::fs::read(&path).unwrap();
        let damages: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("truncated", good[..good.len() - 1].to_vec()),
            ("trailer only", good[good.len() - TRAILER_LEN..].to_vec()),
            ("magic", {
                let mut b = good.clone();
                let last = b.len() - 1;
                b[last] ^= 1;
                b
            }),
            ("engine key", {
                let mut b = good.clone();
                let at = b.len() - TRAILER_LEN + 50;
                b[at] ^= 1;
                b
            }),
            ("artifact's first byte", {
                let mut b = good.clone();
                b[0] ^= 0x80;
                b
            }),
            ("appended", {
                let mut b = good.clone();
                b.push(0);
                b
            }),
        ];
        for (i, (what, damaged)) in damages.into_iter().enumerate() {
            std::fs::write(&path, damaged).unwrap();
            let (compiled, _) = load(&cache, &engine, &bytes);
            assert!(compiled, "{what}: a damaged file was used");
            assert_eq!(cache.report().discarded, i as u64 + 1, "{what}");
            assert_eq!(std::fs::read(&path).unwrap(), good, "{what}: not rewritten");
        }
        assert!(!load(&cache, &engine, &bytes).0);
    }

    #[test]
    fn an_intact_file_wasmtime_refuses_is_discarded() {
        let tmp = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache = cache(tmp.path(), &engine, DEFAULT_MAX_BYTES);
        let bytes = component_bytes();
        let module = ModuleHash::of(&bytes);
        // A consistent trailer over bytes that are no artifact at all.
        let artifact = b"not a compiled component".repeat(100);
        let mut file = artifact.clone();
        file.extend(cache.trailer(&module, &artifact).unwrap());
        std::fs::write(cache.path_of(&module), file).unwrap();
        std::fs::set_permissions(
            cache.path_of(&module),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        assert!(load(&cache, &engine, &bytes).0);
        assert_eq!(cache.report().discarded, 1);
        assert!(!load(&cache, &engine, &bytes).0);
        // A file others may read or write is refused even when intact.
        std::fs::set_permissions(
            cache.path_of(&module),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(load(&cache, &engine, &bytes).0);
        assert_eq!(cache.report().discarded, 2);
    }

    #[test]
    fn a_file_for_another_engine_configuration_is_not_used() {
        let tmp = tempfile::tempdir().unwrap();
        let engine_a = engine();
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true).consume_fuel(true);
        let engine_b = Engine::new(&config).unwrap();
        assert_ne!(engine_key(&engine_a), engine_key(&engine_b));
        let (a, b) = (
            cache(tmp.path(), &engine_a, DEFAULT_MAX_BYTES),
            cache(tmp.path(), &engine_b, DEFAULT_MAX_BYTES),
        );
        let bytes = component_bytes();
        assert!(load(&a, &engine_a, &bytes).0);
        assert!(load(&b, &engine_b, &bytes).0, "b loaded a's artifact");
        assert_ne!(
            a.path_of(&ModuleHash::of(&bytes)),
            b.path_of(&ModuleHash::of(&bytes))
        );
        // Even renamed into b's name, a's file is refused (by its trailer).
        std::fs::copy(
            a.path_of(&ModuleHash::of(&bytes)),
            b.path_of(&ModuleHash::of(&bytes)),
        )
        .unwrap();
        assert!(load(&b, &engine_b, &bytes).0);
        assert_eq!(b.report().discarded, 1);
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("compiled");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let options = CacheOptions {
            dir: dir.clone(),
            max_bytes: DEFAULT_MAX_BYTES,
        };
        let err = CompileCache::open(&options, &engine()).err().unwrap();
        assert!(
            format!("{err:#}").contains("writable by group or others (mode 777)"),
            "{err:#}"
        );
        // An ancestor others can write is refused too.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = CompileCache::open(&options, &engine()).err().unwrap();
        assert!(
            format!("{err:#}").contains("writable by group or others"),
            "{err:#}"
        );
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        // A symlink to a private directory is not followed.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let linked = CacheOptions {
            dir: link,
            max_bytes: DEFAULT_MAX_BYTES,
        };
        let err = CompileCache::open(&linked, &engine()).err().unwrap();
        assert!(format!("{err:#}").contains("not a directory"), "{err:#}");
    }

    #[test]
    fn the_least_recently_used_files_go_first() {
        let tmp = tempfile::tempdir().unwrap();
        let engine = engine();
        let modules: Vec<Vec<u8>> = (0..3u32)
            .map(|i| {
                // Distinct components: a custom section with a different name.
                let mut c = wasm_encoder::Component::new();
                c.section(&wasm_encoder::CustomSection {
                    name: format!("wmr-test-{i}").into(),
                    data: std::borrow::Cow::Borrowed(&[]),
                });
                c.finish()
            })
            .collect();
        let probe = cache(tmp.path(), &engine, DEFAULT_MAX_BYTES);
        load(&probe, &engine, &modules[0]);
        let one = std::fs::metadata(probe.path_of(&ModuleHash::of(&modules[0])))
            .unwrap()
            .len();
        // Room for two files.
        let cache = cache(tmp.path(), &engine, 2 * one + one / 2);
        let path = |i: usize| cache.path_of(&ModuleHash::of(&modules[i]));
        let age = |i: usize, secs: u64| {
            let file = File::options().write(true).open(path(i)).unwrap();
            file.set_modified(SystemTime::now() - Duration::from_secs(secs))
                .unwrap();
        };
        load(&cache, &engine, &modules[1]);
        age(0, 20);
        age(1, 10);
        // A hit makes 0 the most recently used: 1 is now the oldest.
        assert!(!load(&cache, &engine, &modules[0]).0);
        load(&cache, &engine, &modules[2]);
        assert!(path(0).exists());
        assert!(!path(1).exists(), "the least recently used file stayed");
        assert!(path(2).exists());
    }
}
