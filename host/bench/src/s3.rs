//! `wmr-bench s3` (`just bench-s3`): issue 13's measurement. Word count
//! over the generated corpus (as `just bench`: the bundled books rotated
//! into 16 equal files, the same bytes on every run) read from a local
//! S3-protocol server (`s3s-fs`, on loopback) and from local files, in the
//! same run, by the `wmr` binary through its CLI, the output a local
//! directory for both. The two rows take turns, round after round, so a
//! disturbance of the machine does not land on one row only; each round's
//! local ÷ S3 time is one paired ratio.
//!
//! The objects are PUT through wmr's own client (so the server keeps their
//! ETags, as any real store does), and the local row reads the very files
//! the server stores them in: both rows read the same bytes from the page
//! cache. Both outputs must be byte-identical, or the run fails.
//!
//! A missed target is reported, not an error.

use anyhow::{Context as _, bail, ensure};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Issue 13's target: reading from the store at least this fast,
/// relative to local files.
const RATIO_TARGET: f64 = 0.8;
/// Workers and reducers of `wmr run` (as `just bench`'s `wmr run` row).
const WORKERS: &str = "2";
const REDUCERS: &str = "2";
const BUCKET: &str = "bench";
/// The server's credentials: a loopback server of this process only.
const ACCESS_KEY: &str = "wmrbenchaccess";
const SECRET_KEY: &str = "wmr-bench-secret";
/// Bound on the server's start.
const SERVER_LIMIT: Duration = Duration::from_secs(30);

#[derive(clap::Parser, Debug)]
#[command(
    name = "wmr-bench s3",
    bin_name = "wmr-bench s3",
    about = "Word count read from a local S3 server (s3s-fs) vs from local files, same run"
)]
pub struct S3Args {
    /// Corpus size in MiB (generated from the bundled books).
    #[arg(long, default_value_t = 256)]
    pub size_mib: u64,
    /// Rounds; each runs both rows once.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// The word-count guest component (.wasm).
    #[arg(long)]
    pub guest: PathBuf,
    /// The `wmr` binary.
    #[arg(long, default_value = "target/release/wmr")]
    pub wmr: PathBuf,
    /// The `s3s-fs` binary (`just setup-s3`).
    #[arg(long, default_value = "target/tools/s3s/bin/s3s-fs")]
    pub s3s_fs: PathBuf,
    /// Directory of the books (*.txt) the corpus is generated from.
    #[arg(long, default_value = "examples/data")]
    pub data: PathBuf,
}

/// An `s3s-fs` child on a loopback port, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(binary: &Path, root: &Path, log: &Path) -> anyhow::Result<Server> {
        // A free port, then given to the server (it could be taken in
        // between: the start is then bounded and fails).
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = std::fs::File::create(log)?;
        let mut child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &addr.port().to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} (just setup-s3)", binary.display()))?;
        let deadline = Instant::now() + SERVER_LIMIT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = child.try_wait()? {
                bail!("s3s-fs exited at start ({status})");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("s3s-fs did not listen within {SERVER_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Server { child, addr })
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The store's settings, the standard way.
    fn env(&self) -> [(&'static str, String); 5] {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(args: &S3Args) -> anyhow::Result<ExitCode> {
    ensure!(args.size_mib > 0, "--size-mib must be at least 1");
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    for path in [&args.wmr, &args.guest, &args.s3s_fs] {
        ensure!(path.is_file(), "{} does not exist", path.display());
    }
    let scratch = crate::Scratch::create()?;
    let root = scratch.path.join("s3");
    let bucket = root.join(BUCKET);
    std::fs::create_dir_all(&bucket)?;
    let server = Server::start(&args.s3s_fs, &root, &scratch.path.join("s3s-fs.log"))?;
    for (name, value) in server.env() {
        // SAFETY: no other thread of this process exists yet (the store's
        // runtime starts with the first request below).
        unsafe { std::env::set_var(name, value) };
    }

    // The corpus, PUT object by object; the local row reads the files the
    // server keeps them in.
    let generated = crate::write_corpus(&args.data, &scratch.path.join("corpus"), args.size_mib)?;
    let mut corpus_bytes = 0;
    for file in &generated {
        let bytes = std::fs::read(file)?;
        corpus_bytes += bytes.len() as u64;
        let name = file.file_name().unwrap().to_string_lossy();
        let url = wmr::storage::S3Url::parse(&format!("s3://{BUCKET}/corpus/{name}"))?;
        wmr::storage::put(&url, bytes)?;
        std::fs::remove_file(file)?;
    }
    let local_input = bucket.join("corpus");
    let stored = crate::warm_page_cache(
        &generated
            .iter()
            .map(|f| local_input.join(f.file_name().unwrap()))
            .collect::<Vec<_>>(),
    )?;
    ensure!(
        stored == corpus_bytes,
        "the server stored {stored} bytes of {corpus_bytes}"
    );
    let split = format!("{}", corpus_bytes / generated.len() as u64);
    let local = local_input
        .to_str()
        .context("non-UTF-8 temp dir")?
        .to_string();
    let s3 = format!("s3://{BUCKET}/corpus");
    println!(
        "wmr-bench s3: word count over {} MiB ({} files), `wmr run --workers {WORKERS} --reducers {REDUCERS} --split-size {split}`; \
         input from local files vs from s3s-fs on {} (loopback); output local",
        corpus_bytes >> 20,
        generated.len(),
        server.endpoint()
    );

    let cache = scratch.path.join("cache");
    let run = |input: &str, tag: &str| -> anyhow::Result<(f64, PathBuf)> {
        let output = scratch.path.join(format!("out-{tag}"));
        let _ = std::fs::remove_dir_all(&output);
        let mut cmd = Command::new(&args.wmr);
        cmd.envs(server.env())
            .env("WMR_LOG", "warn")
            .arg("run")
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--map")
            .arg(&args.guest)
            .args(["--input", input, "--output"])
            .arg(&output)
            .args(["--workers", WORKERS, "--reducers", REDUCERS])
            .args(["--split-size", &split])
            .stdout(Stdio::null());
        let started = Instant::now();
        let out = cmd.output().context("running wmr")?;
        let seconds = started.elapsed().as_secs_f64();
        ensure!(
            out.status.success(),
            "wmr run --input {input} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((seconds, output))
    };
    // Untimed: the compile cache and the page cache warm up.
    let (_, reference) = run(&local, "warm-up")?;
    let mut local_times = Vec::new();
    let mut s3_times = Vec::new();
    let mut ratios = Vec::new();
    for round in 1..=args.rounds {
        // Odd rounds start with the local row, even ones with S3.
        let mut times = [0.0; 2];
        let order: [usize; 2] = if round % 2 == 1 { [0, 1] } else { [1, 0] };
        for row in order {
            let (input, tag) = if row == 0 {
                (local.as_str(), "local")
            } else {
                (s3.as_str(), "s3")
            };
            let (seconds, output) = run(input, tag)?;
            same_output(&reference, &output)?;
            std::fs::remove_dir_all(&output)?;
            times[row] = seconds;
        }
        println!(
            "round {round}: local {:.2} s, S3 {:.2} s, ratio {:.2}",
            times[0],
            times[1],
            times[0] / times[1]
        );
        local_times.push(times[0]);
        s3_times.push(times[1]);
        ratios.push(times[0] / times[1]);
    }
    let best = |t: &[f64]| t.iter().copied().fold(f64::MAX, f64::min);
    let median = |t: &[f64]| {
        let mut t = t.to_vec();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let mb = corpus_bytes as f64 / 1e6;
    let (local_best, s3_best) = (best(&local_times), best(&s3_times));
    println!(
        "local files: best {local_best:.2} s ({:.0} MB/s), median {:.2} s",
        mb / local_best,
        median(&local_times)
    );
    println!(
        "S3 (s3s-fs): best {s3_best:.2} s ({:.0} MB/s), median {:.2} s",
        mb / s3_best,
        median(&s3_times)
    );
    let ratio = median(&ratios);
    println!(
        "S3 ÷ local speed: best-of {:.2}, paired median {ratio:.2} (target ≥ {RATIO_TARGET}: {})",
        local_best / s3_best,
        if ratio >= RATIO_TARGET {
            "met"
        } else {
            "MISSED"
        }
    );
    drop(server);
    Ok(ExitCode::SUCCESS)
}

/// The part files of both outputs are byte-identical.
fn same_output(reference: &Path, output: &Path) -> anyhow::Result<()> {
    let parts = |dir: &Path| -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let mut parts = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("part-") {
                parts.push((name, std::fs::read(entry.path())?));
            }
        }
        parts.sort();
        Ok(parts)
    };
    ensure!(
        parts(reference)? == parts(output)?,
        "{} differs from {}",
        output.display(),
        reference.display()
    );
    Ok(())
}
