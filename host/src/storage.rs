//! Object storage: `s3://bucket/key` locations next to local paths.
//!
//! A job names its inputs and its output as paths; one that starts with
//! `s3://` is an object (or a prefix) in an S3-compatible store, reached
//! through the `object_store` crate (SigV4, retries with backoff). Nothing
//! else in wmr speaks HTTP to the store. The rest of the code keeps such a
//! location in its `PathBuf` as the URL text (a Unix path holds any bytes),
//! so the wire and state formats are unchanged.
//!
//! Credentials and endpoint come the standard way, from the environment
//! of the process that touches the store (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`), or `--s3-endpoint`
//! ([`configure`]). They never travel in a job request, the state file or
//! a message, and no error text here carries them: store errors become one
//! line naming the location and the kind of failure ([`StoreError`]).
//!
//! The store's client is async; wmr's file code is not. [`block_on`] runs
//! one request on a small runtime of its own, from any thread (a worker's
//! blocking attempt or the coordinator's async loop alike).

use anyhow::Context as _;
use bytes::Bytes;
use futures::TryStreamExt as _;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore as _, PartId};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore as _, ObjectStoreExt as _, PutPayload, RetryConfig,
};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub const S3_SCHEME: &str = "s3://";
const FILE_SCHEME: &str = "file://";

/// Requests retried after a transient failure (connection refused, 5xx,
/// throttling), with exponential backoff from [`BACKOFF_FIRST`]: bounded,
/// so an unreachable endpoint fails a job in seconds, not never.
pub const RETRIES: usize = 3;
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Bytes fetched per ranged GET when scanning for a line end.
const READ_AHEAD: usize = 256 * 1024;

/// Settings a user gives on the command line rather than in `AWS_*`.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    /// `--s3-endpoint`: an S3-compatible server (MinIO, Ceph, R2, s3s…);
    /// a plain `http://` one is allowed (as `AWS_ALLOW_HTTP=true`).
    pub endpoint: Option<String>,
}

static OPTIONS: OnceLock<S3Options> = OnceLock::new();

/// Set this process's store options, once, before the first request.
pub fn configure(options: S3Options) {
    if OPTIONS.set(options).is_err() {
        tracing::warn!("object store options were set twice; the first stay");
    }
}

/// An object or a prefix: `s3://bucket/key`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct S3Url {
    pub bucket: String,
    /// Without a leading `/`; may be empty (the whole bucket).
    pub key: String,
}

impl S3Url {
    pub fn parse(text: &str) -> anyhow::Result<S3Url> {
        let Some(rest) = text.strip_prefix(S3_SCHEME) else {
            anyhow::bail!("{text}: not an s3:// location");
        };
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        // S3's rule for bucket names (3–63 characters of a-z, 0-9, `.`, `-`).
        let valid = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        anyhow::ensure!(
            valid,
            "{text}: bad bucket name {bucket:?} (3 to 63 of a-z, 0-9, '.', '-')"
        );
        let key = key.trim_start_matches('/');
        anyhow::ensure!(
            !key.split('/').any(|part| part == "." || part == ".."),
            "{text}: '.' and '..' are not allowed in an object key"
        );
        Ok(S3Url {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }

    /// The URL of `path` when it names an object location.
    pub fn of_path(path: &Path) -> Option<anyhow::Result<S3Url>> {
        let text = path.to_str()?;
        text.starts_with(S3_SCHEME).then(|| S3Url::parse(text))
    }

    /// The key as a "directory": empty or ending in `/`.
    pub fn dir_prefix(&self) -> String {
        let key = self.key.trim_end_matches('/');
        if key.is_empty() {
            String::new()
        } else {
            format!("{key}/")
        }
    }

    /// `name` below this location taken as a directory.
    pub fn join(&self, name: &str) -> S3Url {
        S3Url {
            bucket: self.bucket.clone(),
            key: format!("{}{name}", self.dir_prefix()),
        }
    }

    pub fn to_path(&self) -> PathBuf {
        PathBuf::from(self.to_string())
    }

    /// The last segment of the key (a file name, for map keys).
    pub fn name(&self) -> &str {
        self.key
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("")
    }

    fn object(&self) -> ObjectPath {
        ObjectPath::from(self.key.as_str())
    }
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{S3_SCHEME}{}/{}", self.bucket, self.key)
    }
}

/// Whether `path` names an object location rather than a local file.
pub fn is_object(path: &Path) -> bool {
    path.to_str().is_some_and(|t| t.starts_with(S3_SCHEME))
}

/// A location as a user gives it: `s3://…` checked and kept, `file:///x`
/// becomes `/x`, anything else is a local path as it stands.
pub fn normalize_location(text: &str) -> anyhow::Result<PathBuf> {
    if text.starts_with(S3_SCHEME) {
        return S3Url::parse(text).map(|url| url.to_path());
    }
    match text.strip_prefix(FILE_SCHEME) {
        Some(path) => {
            anyhow::ensure!(
                path.starts_with('/'),
                "{text}: a file:// location must be absolute (file:///path)"
            );
            Ok(PathBuf::from(path))
        }
        None => Ok(PathBuf::from(text)),
    }
}

/// [`normalize_location`], a relative path taken from `cwd` (for a
/// coordinator running in another directory).
pub fn absolute_location(text: &str, cwd: &Path) -> anyhow::Result<PathBuf> {
    let location = normalize_location(text)?;
    if is_object(&location) {
        return Ok(location);
    }
    Ok(cwd.join(location))
}

/// What went wrong with a store request, in words a user can act on;
/// never the request's headers (where the signature and session token
/// are). The helpers below add the URL as context.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such object")]
    NotFound,
    #[error("bucket {bucket} does not exist")]
    NoSuchBucket { bucket: String },
    #[error("access denied (check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN)")]
    AccessDenied,
    #[error("cannot reach the object store at {endpoint} ({tries} tries with backoff)")]
    Unreachable { endpoint: String, tries: usize },
    #[error("{message}")]
    Other { message: String },
}

impl StoreError {
    fn of(url: &S3Url, error: object_store::Error) -> StoreError {
        // The S3 error code is in the response body object_store quotes.
        let text = error.to_string();
        let has = |code: &str| text.contains(code);
        let no_bucket = || StoreError::NoSuchBucket {
            bucket: url.bucket.clone(),
        };
        match &error {
            object_store::Error::NotFound { .. } if has("NoSuchBucket") => no_bucket(),
            object_store::Error::NotFound { .. } => StoreError::NotFound,
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => StoreError::AccessDenied,
            _ if has("NoSuchBucket") => no_bucket(),
            _ if has("SignatureDoesNotMatch")
                || has("InvalidAccessKeyId")
                || has("AccessDenied")
                || has("403 Forbidden") =>
            {
                StoreError::AccessDenied
            }
            _ if is_connect_error(&error) => StoreError::Unreachable {
                endpoint: endpoint_for_messages(),
                tries: RETRIES + 1,
            },
            _ => StoreError::Other {
                message: first_line(&text),
            },
        }
    }
}

/// `error` as one line about `what` (`input s3://…`): a store error by its
/// kind alone (the URL is in `what`), anything else with its context.
pub fn explain(error: anyhow::Error, what: String) -> anyhow::Error {
    match error.downcast_ref::<StoreError>() {
        Some(store) => anyhow::anyhow!("{what}: {store}"),
        None => error.context(what),
    }
}

/// Whether the request never got an answer (refused, reset, timed out).
fn is_connect_error(error: &object_store::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        let text = e.to_string();
        if text.contains("error sending request")
            || text.contains("Connection refused")
            || text.contains("connect")
            || text.contains("timed out")
        {
            return true;
        }
        source = e.source();
    }
    false
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    line.chars().take(300).collect()
}

/// The endpoint as errors name it (an address, never credentials).
fn endpoint_for_messages() -> String {
    configured_endpoint().unwrap_or_else(|| "the default AWS endpoint".into())
}

fn configured_endpoint() -> Option<String> {
    OPTIONS
        .get()
        .and_then(|o| o.endpoint.clone())
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
        .or_else(|| std::env::var("AWS_ENDPOINT").ok())
        .filter(|e| !e.is_empty())
}

/// One client per bucket, built on first use.
fn store(bucket: &str) -> anyhow::Result<Arc<AmazonS3>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<AmazonS3>>>> = OnceLock::new();
    let mut stores = STORES
        .get_or_init(Default::default)
        .lock()
        .expect("poisoned");
    if let Some(store) = stores.get(bucket) {
        return Ok(store.clone());
    }
    let endpoint = configured_endpoint();
    let allow_http = std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: BACKOFF_FIRST,
                max_backoff: BACKOFF_MAX,
                base: 2.0,
            },
            max_retries: RETRIES,
            retry_timeout: Duration::from_secs(30),
        })
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(allow_http)
                .with_connect_timeout(Duration::from_secs(5))
                .with_timeout(Duration::from_secs(120)),
        );
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    // A region is required by SigV4; S3-compatible servers accept any.
    if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
        builder = builder.with_region("us-east-1");
    }
    // The builder's error may quote configuration: keep only its kind.
    let store = Arc::new(builder.build().map_err(|e| {
        anyhow::anyhow!(
            "s3://{bucket}: object store settings: {}",
            first_line(&e.to_string())
        )
    })?);
    stores.insert(bucket.to_string(), store.clone());
    Ok(store)
}

/// Run the future `make` makes to completion on the store's runtime, from
/// any thread (made on the runtime's side: object_store's futures need
/// not be `Send`).
fn block_on<F>(make: impl FnOnce() -> F + Send) -> F::Output
where
    F: std::future::Future,
    F::Output: Send,
{
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("wmr-store")
            .enable_all()
            .build()
            .expect("starting the object store runtime")
    });
    // A thread of its own: `block_on` may not be called from inside
    // another runtime (the coordinator's loop).
    std::thread::scope(|scope| {
        scope
            .spawn(|| runtime.block_on(make()))
            .join()
            .expect("object store request panicked")
    })
}

fn request<T: Send, F: std::future::Future<Output = object_store::Result<T>>>(
    url: &S3Url,
    make: impl FnOnce() -> F + Send,
) -> Result<T, StoreError> {
    block_on(make).map_err(|e| StoreError::of(url, e))
}

/// A failed request as an error naming its URL.
fn at(url: &S3Url) -> impl FnOnce(StoreError) -> anyhow::Error + '_ {
    move |e| anyhow::Error::new(e).context(url.to_string())
}

/// An object's size in bytes.
pub fn size(url: &S3Url) -> anyhow::Result<u64> {
    let store = store(&url.bucket)?;
    let path = url.object();
    Ok(request(url, || store.head(&path)).map_err(at(url))?.size)
}

/// Whether the object exists.
pub fn exists(url: &S3Url) -> anyhow::Result<bool> {
    match size(url) {
        Ok(_) => Ok(true),
        Err(e) => match e.downcast_ref::<StoreError>() {
            Some(StoreError::NotFound) => Ok(false),
            _ => Err(e),
        },
    }
}

/// Bytes `range` of an object (one ranged GET).
pub fn get_range(url: &S3Url, range: std::ops::Range<u64>) -> anyhow::Result<Bytes> {
    let store = store(&url.bucket)?;
    let path = url.object();
    let want = range.end - range.start;
    if want == 0 {
        return Ok(Bytes::new());
    }
    let bytes = request(url, || store.get_range(&path, range.clone())).map_err(at(url))?;
    anyhow::ensure!(
        bytes.len() as u64 == want,
        "{url} changed while the job ran: {} bytes at {} where {want} were expected",
        bytes.len(),
        range.start
    );
    Ok(bytes)
}

/// A whole (small) object.
pub fn get(url: &S3Url) -> anyhow::Result<Bytes> {
    let store = store(&url.bucket)?;
    let path = url.object();
    let result = request(
        url,
        move || async move { store.get(&path).await?.bytes().await },
    )
    .map_err(at(url))?;
    Ok(result)
}

/// Write a whole (small) object.
pub fn put(url: &S3Url, bytes: Vec<u8>) -> anyhow::Result<()> {
    let store = store(&url.bucket)?;
    let path = url.object();
    request(url, || store.put(&path, PutPayload::from(bytes))).map_err(at(url))?;
    Ok(())
}

/// Delete an object; one that is already gone is fine.
pub fn delete(url: &S3Url) -> anyhow::Result<()> {
    let store = store(&url.bucket)?;
    let path = url.object();
    match request(url, || store.delete(&path)) {
        Ok(()) | Err(StoreError::NotFound) => Ok(()),
        Err(e) => Err(at(url)(e)),
    }
}

/// An object found by a listing: its URL and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub url: S3Url,
    pub size: u64,
}

/// Every object whose key starts with `prefix` (all levels below it),
/// sorted by key.
pub fn list(prefix: &S3Url) -> anyhow::Result<Vec<Listed>> {
    let store = store(&prefix.bucket)?;
    let key = prefix.key.clone();
    let listed_key = key.clone();
    let mut found: Vec<Listed> = request(prefix, move || async move {
        // object_store lists below a `/`-delimited prefix; a partial last
        // segment (`dir/pg*`) is filtered here.
        let (dir, _) = listed_key.rsplit_once('/').unwrap_or(("", ""));
        let dir = (!dir.is_empty()).then(|| ObjectPath::from(dir));
        let objects: Vec<_> = store.list(dir.as_ref()).try_collect().await?;
        Ok(objects)
    })
    // A listing finds nothing rather than failing, unless the bucket is
    // not there.
    .map_err(|e| match e {
        StoreError::NotFound => StoreError::NoSuchBucket {
            bucket: prefix.bucket.clone(),
        },
        e => e,
    })
    .map_err(at(prefix))?
    .into_iter()
    .filter(|meta| meta.location.as_ref().starts_with(key.as_str()))
    .map(|meta| Listed {
        url: S3Url {
            bucket: prefix.bucket.clone(),
            key: meta.location.to_string(),
        },
        size: meta.size,
    })
    .collect();
    found.sort_by(|a, b| a.url.key.cmp(&b.url.key));
    Ok(found)
}

/// Start a multipart upload to `url`: its parts stay invisible until
/// [`complete_upload`].
pub fn create_upload(url: &S3Url) -> anyhow::Result<String> {
    let store = store(&url.bucket)?;
    let path = url.object();
    request(url, || store.create_multipart(&path)).map_err(at(url))
}

/// Upload part `index` (from 0) of an upload; returns its ETag.
pub fn upload_part(
    url: &S3Url,
    upload: &str,
    index: usize,
    bytes: Bytes,
) -> anyhow::Result<String> {
    let store = store(&url.bucket)?;
    let path = url.object();
    let upload = upload.to_string();
    let part = request(url, || {
        store.put_part(&path, &upload, index, PutPayload::from(bytes))
    })
    .map_err(at(url))?;
    Ok(part.content_id)
}

/// Bytes per uploaded part: S3 wants at least 5 MiB (but the last); one
/// part is held in memory at a time.
pub const UPLOAD_PART_BYTES: usize = 8 * 1024 * 1024;

/// Upload the file at `local` as the parts of `upload`, in order, one part
/// of [`UPLOAD_PART_BYTES`] in memory at a time (an empty file: one empty
/// part, as an upload needs one). `each` gets every part's ETag and size
/// as soon as it is stored.
pub fn upload_file_parts(
    url: &S3Url,
    upload: &str,
    local: &Path,
    mut each: impl FnMut(String, usize),
) -> anyhow::Result<()> {
    let mut file =
        std::fs::File::open(local).with_context(|| format!("opening {}", local.display()))?;
    let mut buffer = vec![0u8; UPLOAD_PART_BYTES];
    for index in 0.. {
        let n = read_full(&mut file, &mut buffer)
            .with_context(|| format!("reading {}", local.display()))?;
        if n == 0 && index > 0 {
            break;
        }
        let etag = upload_part(url, upload, index, Bytes::copy_from_slice(&buffer[..n]))?;
        each(etag, n);
        if n < buffer.len() {
            break;
        }
    }
    Ok(())
}

/// Fill `buffer` unless the file ends first; the bytes read.
fn read_full(file: &mut std::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read as _;
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Make an upload's object visible, whole, at once.
pub fn complete_upload(url: &S3Url, upload: &str, parts: &[String]) -> anyhow::Result<()> {
    let store = store(&url.bucket)?;
    let path = url.object();
    let upload = upload.to_string();
    let parts = parts
        .iter()
        .map(|content_id| PartId {
            content_id: content_id.clone(),
        })
        .collect();
    request(url, || store.complete_multipart(&path, &upload, parts)).map_err(at(url))?;
    Ok(())
}

/// Abort an upload, dropping its parts; one already gone is fine.
pub fn abort_upload(url: &S3Url, upload: &str) -> anyhow::Result<()> {
    let store = store(&url.bucket)?;
    let path = url.object();
    let upload = upload.to_string();
    match request(url, || store.abort_multipart(&path, &upload)) {
        Ok(()) | Err(StoreError::NotFound) => Ok(()),
        Err(StoreError::Other { message }) if message.contains("NoSuchUpload") => Ok(()),
        Err(e) => Err(at(url)(e)),
    }
}

/// An input to split and read: a local file or an object, with `Read` and
/// `Seek` (an object is read in ranged GETs of [`READ_AHEAD`] bytes, so
/// memory stays bounded whatever its size).
pub enum InputReader {
    File(std::fs::File, u64),
    Object {
        url: S3Url,
        len: u64,
        pos: u64,
        /// Bytes from `buffer_at`, fetched ahead.
        buffer: Bytes,
        buffer_at: u64,
    },
}

impl InputReader {
    pub fn open(path: &Path) -> anyhow::Result<InputReader> {
        if let Some(url) = S3Url::of_path(path) {
            let url = url?;
            let len = size(&url)?;
            return Ok(InputReader::Object {
                url,
                len,
                pos: 0,
                buffer: Bytes::new(),
                buffer_at: 0,
            });
        }
        use anyhow::Context as _;
        let file =
            std::fs::File::open(path).with_context(|| format!("input {}", path.display()))?;
        let len = file.metadata()?.len();
        Ok(InputReader::File(file, len))
    }

    pub fn len(&self) -> u64 {
        match self {
            InputReader::File(_, len) | InputReader::Object { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Read for InputReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            InputReader::File(file, _) => file.read(buf),
            InputReader::Object {
                url,
                len,
                pos,
                buffer,
                buffer_at,
            } => {
                if *pos >= *len || buf.is_empty() {
                    return Ok(0);
                }
                let in_buffer = *pos >= *buffer_at && *pos < *buffer_at + buffer.len() as u64;
                if !in_buffer {
                    let end = (*pos + READ_AHEAD as u64).min(*len);
                    *buffer = get_range(url, *pos..end).map_err(std::io::Error::other)?;
                    *buffer_at = *pos;
                }
                let from = (*pos - *buffer_at) as usize;
                let n = buf.len().min(buffer.len() - from);
                buf[..n].copy_from_slice(&buffer[from..from + n]);
                *pos += n as u64;
                Ok(n)
            }
        }
    }
}

impl Seek for InputReader {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        match self {
            InputReader::File(file, _) => file.seek(to),
            InputReader::Object { len, pos, .. } => {
                let target = match to {
                    SeekFrom::Start(p) => Some(p),
                    SeekFrom::End(d) => len.checked_add_signed(d),
                    SeekFrom::Current(d) => pos.checked_add_signed(d),
                };
                *pos = target.ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
                })?;
                Ok(*pos)
            }
        }
    }
}

/// A whole input, file or object.
pub fn read_all(path: &Path) -> anyhow::Result<Vec<u8>> {
    let len = InputReader::open(path)?.len();
    read_range(path, 0, len)
}

/// Bytes `offset..offset + len` of an input: one ranged GET for an object.
pub fn read_range(path: &Path, offset: u64, len: u64) -> anyhow::Result<Vec<u8>> {
    if let Some(url) = S3Url::of_path(path) {
        return Ok(get_range(&url?, offset..offset + len)?.to_vec());
    }
    use anyhow::Context as _;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("input {}", path.display()))?;
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = vec![0; len as usize];
    file.read_exact(&mut bytes)
        .with_context(|| format!("input {} changed while the job ran", path.display()))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_refuse_bad_buckets_and_dot_segments() {
        let url = S3Url::parse("s3://books/in/pg1.txt").unwrap();
        assert_eq!(
            (url.bucket.as_str(), url.key.as_str()),
            ("books", "in/pg1.txt")
        );
        assert_eq!(url.name(), "pg1.txt");
        assert_eq!(url.to_string(), "s3://books/in/pg1.txt");
        assert_eq!(S3Url::parse("s3://books").unwrap().dir_prefix(), "");
        assert_eq!(
            S3Url::parse("s3://books/out/").unwrap().dir_prefix(),
            "out/"
        );
        assert_eq!(
            S3Url::parse("s3://books/out").unwrap().join("_SUCCESS").key,
            "out/_SUCCESS"
        );
        for bad in [
            "s3://ab/x",
            "s3://Books/x",
            "s3://a_b/x",
            "s3://books/a/../b",
        ] {
            assert!(S3Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn locations_become_absolute() {
        let cwd = Path::new("/home/u");
        let at = |t| absolute_location(t, cwd).unwrap();
        assert_eq!(at("s3://books/in"), PathBuf::from("s3://books/in"));
        assert_eq!(at("file:///data/in"), PathBuf::from("/data/in"));
        assert_eq!(at("in"), PathBuf::from("/home/u/in"));
        assert!(absolute_location("file://rel", cwd).is_err());
        assert!(is_object(Path::new("s3://books/in")));
        assert!(!is_object(Path::new("/books/in")));
    }
}
