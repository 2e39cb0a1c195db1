//! A real S3-protocol server for the object store tests: `s3s-fs`
//! (crates.io, installed by `just setup-s3` into target/tools/s3s, or
//! named by `WMR_S3S_FS`) on a free loopback port, serving a temporary
//! directory. Objects are plain files at ROOT/BUCKET/KEY, so a test seeds
//! inputs by copying files and checks outputs by reading them. The server
//! is killed when its [`S3Server`] is dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Test credentials. The secret is distinctive so that tests can grep
/// every log, output and state file for it.
pub const ACCESS_KEY: &str = "wmrtestaccesskey";
pub const SECRET_KEY: &str = "wmr-test-secret-9f27c1d4e8";

pub struct S3Server {
    child: Child,
    pub addr: SocketAddr,
    /// The directory s3s-fs serves: ROOT/BUCKET/KEY.
    pub root: PathBuf,
    _dir: tempfile::TempDir,
}

/// Where the s3s-fs binary is, or a panic that says how to get it.
pub fn s3s_fs_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WMR_S3S_FS") {
        return PathBuf::from(path);
    }
    let path = super::root().join("target/tools/s3s/bin/s3s-fs");
    assert!(
        path.is_file(),
        "the S3 test server is missing: no {} (run `just setup-s3`, or set WMR_S3S_FS)",
        path.display()
    );
    path
}

impl S3Server {
    /// Start a server on a free loopback port and wait until it accepts
    /// connections (bounded).
    pub fn start() -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s3");
        std::fs::create_dir_all(&root).unwrap();
        // The port is found free, then given to the server: another
        // process could take it between, so a server that exits at once
        // is started again on another port (bounded).
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let log = std::fs::File::create(dir.path().join(format!("s3s-{port}.log"))).unwrap();
            let mut child = Command::new(s3s_fs_binary())
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(&root)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("starting s3s-fs");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return S3Server {
                        child,
                        addr,
                        root,
                        _dir: dir,
                    };
                }
                if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("s3s-fs did not start (logs in {})", dir.path().display());
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Create a bucket (a directory of the server's root).
    pub fn bucket(&self, name: &str) -> PathBuf {
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Copy the files of `from` to `s3://bucket/prefix/NAME`.
    pub fn seed(&self, bucket: &str, prefix: &str, from: &Path) {
        let to = self.bucket(bucket).join(prefix);
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }

    /// The credentials and endpoint, the standard way (`AWS_*`).
    pub fn env(&self, cmd: &mut Command) {
        cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_ENDPOINT_URL", self.endpoint())
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE");
    }

    /// Keys (relative to `s3://bucket/prefix/`) of every file below it,
    /// sorted: what a listing would show, and any leftover the server
    /// keeps there.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let dir = self.root.join(bucket).join(prefix);
        let mut keys = Vec::new();
        walk(&dir, &dir, &mut keys);
        keys.sort();
        keys
    }

    /// What s3s-fs 0.14.1 keeps of the multipart uploads neither completed
    /// nor aborted (it does not implement ListMultipartUploads), from its
    /// `fs.rs`: at the root, `.upload-<id>.json` from CreateMultipartUpload
    /// until CompleteMultipartUpload or AbortMultipartUpload, each part as
    /// `.upload_id-<id>.part-N`, and the object's attributes as
    /// `.bucket-B.object-K.upload-<id>.metadata.json`.
    pub fn open_uploads(&self) -> Vec<String> {
        let mut open: Vec<String> = std::fs::read_dir(&self.root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| {
                name.starts_with(".upload")
                    || (name.starts_with(".bucket-") && name.contains(".upload-"))
            })
            .collect();
        open.sort();
        open
    }
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(base, &path, out);
        } else {
            out.push(
                path.strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
