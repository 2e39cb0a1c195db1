//! The `wmr` command line.

use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use wmr::compile_cache::{CacheOptions, CacheReport};
use wmr::model::{Limits, OutputFormat};
use wmr::scheduler::JobOutcome;
use wmr::summary::{JobSummary, Progress, human_duration};

#[derive(Parser)]
#[command(name = "wmr", version, about = "WebAssembly-sandboxed map/reduce")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// An S3-compatible endpoint for `s3://` inputs and outputs (MinIO,
    /// Ceph, R2…; `http://` allowed), instead of AWS_ENDPOINT_URL.
    /// Credentials come only from the environment (AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN).
    #[arg(long, global = true)]
    s3_endpoint: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job in this process: coordinator and local workers, no set-up.
    Run(RunArgs),
    /// Run a job sequentially (one thread, no partitioning): the reference.
    Seq(SeqArgs),
    /// Check that a component fits the wmr world.
    Validate {
        /// The component (.wasm).
        component: PathBuf,
    },
    /// Serve jobs and workers over QUIC.
    Coordinator(CoordinatorArgs),
    /// Join a coordinator and run attempts.
    Worker(WorkerArgs),
    /// Submit a job to a coordinator and follow it to the end.
    Deploy(DeployArgs),
    /// Show a job: phase, tasks, attempts, workers.
    Status {
        /// Job id (or a prefix); the newest job if omitted.
        job: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the coordinator's jobs (durable across restarts).
    Jobs {
        /// Only jobs that have not completed (running, queued, failed, cancelled).
        #[arg(long)]
        resumable: bool,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a failed or cancelled job again (committed tasks are redone).
    Resume {
        job: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// List the records a job skipped because the guest trapped on them.
    Dlq {
        /// Job id (or a prefix); the newest job if omitted.
        job: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Manage the coordinator's tenants (STATE/tenants.toml).
    Tenant {
        #[command(subcommand)]
        action: TenantAction,
    },
    /// Cancel a job.
    Cancel {
        job: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(Subcommand)]
enum TenantAction {
    /// Add (or replace) a tenant; prints its token once.
    Add {
        name: String,
        /// The coordinator's state directory.
        #[arg(long, default_value = "wmr-state")]
        state: PathBuf,
        /// The tenant's inputs and outputs must lie below this directory.
        #[arg(long)]
        root: PathBuf,
        /// Share of the slots relative to other tenants.
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// A quota other than its default, NAME=VALUE (repeatable), e.g.
        /// `max_jobs_queued=200`, `max_output_bytes_per_job=10GiB`.
        #[arg(long = "quota", value_parser = parse_quota)]
        quotas: Vec<(String, u64)>,
        /// Run the tenant's jobs only on its dedicated workers
        /// (`wmr tenant worker-token --tenant NAME`).
        #[arg(long)]
        pool_only: bool,
    },
    /// Remove a tenant: its token stops working at once.
    Revoke {
        name: String,
        #[arg(long, default_value = "wmr-state")]
        state: PathBuf,
    },
    /// Make a new worker token (the old one stops working); prints it once.
    WorkerToken {
        #[arg(long, default_value = "wmr-state")]
        state: PathBuf,
        /// A token for workers dedicated to this tenant (its pool): they
        /// run and serve only its attempts.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Make a new operator token (the old one stops working); prints it
    /// once. Over `wmr coordinator --http` (as `operator:TOKEN`) it sees
    /// every tenant's jobs, workers and metrics.
    OperatorToken {
        #[arg(long, default_value = "wmr-state")]
        state: PathBuf,
    },
    /// Allow a worker certificate (`wmr worker --identity DIR
    /// --print-fingerprint`): turns on mutual TLS for workers, whose
    /// certificates must then be listed in STATE/worker-fingerprints.
    AllowWorker {
        /// The worker certificate's SHA-256 fingerprint (64 hex digits).
        fingerprint: String,
        #[arg(long, default_value = "wmr-state")]
        state: PathBuf,
    },
}

#[derive(Args)]
struct CoordinatorArgs {
    /// Address to listen on (UDP).
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: std::net::SocketAddr,
    /// State directory: TLS identity, `fingerprint`, `coordinator.addr`.
    #[arg(long, default_value = "wmr-state")]
    state: PathBuf,
    /// Intermediate data, shared with the workers (default: STATE/work).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// An attempt whose worker is silent this long is reassigned.
    #[arg(long, default_value = "10s", value_parser = parse_duration_ms)]
    lease: u64,
    /// How often workers send heartbeats.
    #[arg(long, default_value = "1s", value_parser = parse_duration_ms)]
    heartbeat: u64,
    /// Keep map outputs in the shared --work-dir instead of on the workers.
    #[arg(long, conflicts_with = "shuffle_store")]
    shared_store: bool,
    /// Keep map outputs in an object store (s3://bucket/prefix) instead of
    /// on the workers: they outlive the worker that wrote them, and no
    /// process needs a path another one sees. Credentials come from each
    /// process's environment (AWS_*), as for s3:// inputs and outputs.
    #[arg(long, value_name = "S3_URL")]
    shuffle_store: Option<String>,
    /// Keep job state in memory only: nothing survives a restart.
    #[arg(long)]
    ephemeral_state: bool,
    /// Serve `/metrics` and `/api/...` over plain HTTP on this address
    /// (TCP; bind loopback, e.g. 127.0.0.1:7780, and put a TLS proxy in
    /// front for anything else). Off unless given.
    #[arg(long)]
    http: Option<std::net::SocketAddr>,
    /// After a restart, how long to wait for workers to re-announce the
    /// committed map outputs they hold before running those tasks again
    /// (default: three leases, a session's idle timeout, plus 10 s).
    #[arg(long, value_parser = parse_duration_ms)]
    reannounce_window: Option<u64>,
}

#[derive(Args)]
struct WorkerArgs {
    /// The coordinator's address.
    #[arg(long, env = "WMR_COORDINATOR", default_value = "127.0.0.1:7700")]
    connect: std::net::SocketAddr,
    /// The coordinator's certificate fingerprint.
    #[arg(
        long,
        env = "WMR_FINGERPRINT",
        required_unless_present = "print_fingerprint"
    )]
    fingerprint: Option<String>,
    /// This worker's TLS identity (cert.der, key.der; created if missing),
    /// presented to the coordinator for mutual TLS.
    #[arg(long)]
    identity: Option<PathBuf>,
    /// Print the fingerprint of the --identity certificate and exit.
    #[arg(long, requires = "identity")]
    print_fingerprint: bool,
    /// Attempts run at once (default: the number of cores).
    #[arg(long)]
    slots: Option<u32>,
    /// A name for logs and `wmr status`.
    #[arg(long)]
    name: Option<String>,
    /// Labels k=v,k=v.
    #[arg(long, value_delimiter = ',', value_parser = parse_param)]
    labels: Vec<(String, String)>,
    /// Fault injection: exit at the start of a task with this probability.
    #[arg(long, default_value_t = 0.0)]
    crash_probability: f64,
    #[command(flatten)]
    cache: CacheArgs,
    /// Where this worker keeps its map outputs (default: a fresh temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Where this worker serves map outputs to reducers (UDP).
    #[arg(long, default_value = "127.0.0.1:0")]
    shuffle_listen: std::net::SocketAddr,
    /// The cluster's worker token (`wmr tenant worker-token`).
    #[arg(
        long,
        env = "WMR_WORKER_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    token: String,
}

#[derive(Args)]
struct DeployArgs {
    /// Map component (.wasm).
    map: PathBuf,
    /// Reduce component (.wasm); defaults to the map component.
    reduce: Option<PathBuf>,
    /// Input file, directory or glob, or `s3://bucket/prefix` (an object,
    /// the objects below a prefix, or a glob) (repeatable).
    #[arg(long, required = true)]
    input: Vec<String>,
    /// Output directory or `s3://bucket/prefix` (must be new or empty).
    #[arg(long)]
    output: PathBuf,
    /// How output records are written (see README, "Output formats").
    #[arg(long, value_enum, default_value_t)]
    output_format: OutputFormat,
    #[arg(long, default_value_t = 4)]
    reducers: u32,
    #[arg(long, default_value = "8MiB", value_parser = parse_bytes)]
    split_size: u64,
    #[arg(long, default_value_t = 4)]
    max_attempts: u32,
    /// Give a straggling task a backup attempt on another worker; the
    /// first to finish commits (ARCHITECTURE.md, "Speculation").
    #[arg(long)]
    speculate: bool,
    #[command(flatten)]
    shuffle: ShuffleArgs,
    #[command(flatten)]
    placement: PlacementArgs,
    #[command(flatten)]
    guest: GuestArgs,
    #[command(flatten)]
    remote: RemoteArgs,
    /// The compile cache of the local validation.
    #[command(flatten)]
    cache: CacheArgs,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Return once the job is accepted, printing its id on stdout; follow
    /// it with `wmr status`.
    #[arg(long)]
    detach: bool,
}

#[derive(Args)]
struct JobArgs {
    /// Map component (.wasm); it may export reduce too.
    #[arg(long)]
    map: PathBuf,
    /// Reduce component (.wasm); defaults to the map component.
    #[arg(long)]
    reduce: Option<PathBuf>,
    /// Input file, directory or glob, or `s3://bucket/prefix` (an object,
    /// the objects below a prefix, or a glob) (repeatable).
    #[arg(long, required = true)]
    input: Vec<String>,
    /// How output records are written (see README, "Output formats").
    #[arg(long, value_enum, default_value_t)]
    output_format: OutputFormat,
    #[command(flatten)]
    guest: GuestArgs,
}

/// What a job may grant its guest beyond the empty sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Grant {
    Clock,
}

/// What a guest gets: parameters and limits.
#[derive(Args)]
struct GuestArgs {
    /// Job parameter NAME=VALUE, readable by the guest (repeatable).
    #[arg(long = "param", value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// Fuel per attempt.
    #[arg(long, default_value_t = Limits::default().fuel)]
    fuel: u64,
    /// Linear memory per attempt (e.g. 512MiB).
    #[arg(long, default_value = "512MiB", value_parser = parse_bytes)]
    memory: u64,
    /// Wall-clock limit per attempt (e.g. 120s, 500ms).
    #[arg(long, default_value = "120s", value_parser = parse_duration_ms)]
    timeout: u64,
    /// Bytes a guest may emit per attempt.
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    output_limit: u64,
    /// Bytes of committed output per job, all reducers together.
    #[arg(long, default_value = "1TiB", value_parser = parse_bytes)]
    job_output_limit: u64,
    /// A capability for the guest (repeatable). `clock`: the host's clocks
    /// (without it the guest's clocks read zero).
    #[arg(long = "grant", value_enum)]
    grants: Vec<Grant>,
    /// Input records the job may skip because the guest traps on them
    /// (each is isolated and written to `_dead_letters.jsonl`); 0: fail.
    #[arg(long, default_value_t = Limits::default().max_dead_letters)]
    max_dead_letters: u32,
}

impl GuestArgs {
    fn limits(&self) -> Limits {
        Limits {
            fuel: self.fuel,
            memory_bytes: self.memory,
            timeout_ms: self.timeout,
            output_bytes: self.output_limit,
            job_output_bytes: self.job_output_limit,
            clock: self.grants.contains(&Grant::Clock),
            max_dead_letters: self.max_dead_letters,
            ..Limits::default()
        }
    }

    fn params(&self) -> BTreeMap<String, String> {
        self.params.iter().cloned().collect()
    }
}

/// How to reach the coordinator.
#[derive(Args)]
struct RemoteArgs {
    /// The coordinator's address.
    #[arg(long, env = "WMR_COORDINATOR", default_value = "127.0.0.1:7700")]
    coordinator: std::net::SocketAddr,
    /// The coordinator's certificate fingerprint (its state dir's `fingerprint` file).
    #[arg(long, env = "WMR_FINGERPRINT")]
    fingerprint: String,
    /// The tenant to act as (`local` when the coordinator has no tenants.toml).
    #[arg(long, env = "WMR_TENANT", default_value = "local")]
    tenant: String,
    /// The tenant's token, printed once by `wmr tenant add`.
    #[arg(long, env = "WMR_TOKEN", default_value = "", hide_env_values = true)]
    token: String,
    /// Give up when no coordinator answers within this.
    #[arg(long, default_value = "5s", value_parser = parse_duration_ms)]
    connect_timeout: u64,
}

impl RemoteArgs {
    fn remote(&self) -> wmr::client::Remote {
        wmr::client::Remote {
            coordinator: self.coordinator,
            fingerprint: self.fingerprint.clone(),
            tenant: wmr::model::TenantId(self.tenant.clone()),
            token: self.token.clone(),
            connect_timeout: Duration::from_millis(self.connect_timeout),
        }
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    job: JobArgs,
    /// Output directory or `s3://bucket/prefix` (must be new or empty).
    #[arg(long)]
    output: PathBuf,
    /// Reduce partitions (output part files).
    #[arg(long, default_value_t = 4)]
    reducers: u32,
    /// Local worker threads (default: the number of cores).
    #[arg(long)]
    workers: Option<u32>,
    /// Target split size (a split never cuts a line).
    #[arg(long, default_value = "8MiB", value_parser = parse_bytes)]
    split_size: u64,
    /// Attempts per task before the job fails.
    #[arg(long, default_value_t = 4)]
    max_attempts: u32,
    /// Give a straggling task a backup attempt on another worker; the
    /// first to finish commits (ARCHITECTURE.md, "Speculation").
    #[arg(long)]
    speculate: bool,
    #[command(flatten)]
    shuffle: ShuffleArgs,
    #[command(flatten)]
    placement: PlacementArgs,
    /// Labels of the local workers, k=v,k=v (what --require matches).
    #[arg(long, value_delimiter = ',', value_parser = parse_param)]
    labels: Vec<(String, String)>,
    /// Where intermediate data goes (default: the system temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    #[command(flatten)]
    cache: CacheArgs,
    /// Print the summary as JSON (no progress bar).
    #[arg(long)]
    json: bool,
}

/// The on-disk cache of compiled components (and a worker's fetched
/// modules).
#[derive(Args)]
struct CacheArgs {
    /// Cache directory: compiled components go in DIR/compiled, and a
    /// worker keeps fetched modules in DIR (default: $XDG_CACHE_HOME/wmr or
    /// ~/.cache/wmr; a worker's fetched modules: the temp dir).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Compile every component: neither read nor write compiled code on disk.
    #[arg(long)]
    no_cache: bool,
    /// Bound on the compiled components on disk; the least recently used
    /// go first.
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    cache_max_size: u64,
}

impl CacheArgs {
    fn compile_cache(&self) -> Option<CacheOptions> {
        if self.no_cache {
            return None;
        }
        let root = self
            .cache_dir
            .clone()
            .unwrap_or_else(wmr::compile_cache::default_root);
        Some(CacheOptions::under_root(&root, self.cache_max_size))
    }
}

/// How intermediate data is buffered, compressed and partitioned.
#[derive(Args)]
struct ShuffleArgs {
    /// Host memory for a map attempt's emitted pairs before they are
    /// sorted and spilled to disk.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    sort_buffer: u64,
    /// Codec of intermediate blocks. Default: `none` for `wmr run`, whose
    /// shuffle stays in one machine's page cache (LZ4 cost 13 % of the
    /// time there); `lz4` for `wmr deploy`, whose map outputs cross the
    /// network (35 % fewer bytes on unique text lines).
    #[arg(long, value_enum)]
    shuffle_compression: Option<wmr::model::Compression>,
    /// Which reducer a key goes to: `hash` (FNV-1a), or `range`: key
    /// ranges sampled from the input by running the map component over it,
    /// so that the part files concatenated are sorted by key.
    #[arg(long, value_enum, default_value_t)]
    partitioner: PartitionerKind,
}

/// Which workers may run the job's attempts.
#[derive(Args)]
struct PlacementArgs {
    /// Run only on workers whose labels match: KEY=VALUE, KEY!=VALUE or
    /// KEY (present); repeatable, all must hold.
    #[arg(long = "require", value_name = "REQUIREMENT")]
    require: Vec<wmr::placement::LabelRequirement>,
    /// Fail the job when no connected worker matches for this long
    /// (e.g. 30s); 0 waits for ever.
    #[arg(long, default_value = "0", value_parser = parse_duration_ms)]
    placement_timeout: u64,
}

impl PlacementArgs {
    fn placement(&self) -> wmr::placement::Placement {
        wmr::placement::Placement {
            require: self.require.clone(),
            timeout_ms: self.placement_timeout,
        }
    }
}

/// `--partitioner`: the range partitioner's boundaries are chosen when the
/// job is planned (`wmr::sampler`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
enum PartitionerKind {
    #[default]
    Hash,
    Range,
}

impl ShuffleArgs {
    /// The job's shuffle settings, with `codec` unless one was given.
    fn settings(&self, codec: wmr::model::Compression) -> wmr::model::ShuffleSettings {
        wmr::model::ShuffleSettings {
            sort_buffer_bytes: self.sort_buffer,
            compression: self.shuffle_compression.unwrap_or(codec),
            partitioner: match self.partitioner {
                PartitionerKind::Hash => wmr::model::Partitioner::Hash,
                // Empty: the job's planner samples the boundaries.
                PartitionerKind::Range => wmr::model::Partitioner::Range {
                    boundaries: Vec::new(),
                },
            },
        }
    }
}

#[derive(Args)]
struct SeqArgs {
    #[command(flatten)]
    job: JobArgs,
    /// Output file (default: standard output).
    #[arg(long)]
    output: Option<PathBuf>,
}

/// A reduce attempt opens up to `MERGE_FAN_IN` (256) map outputs at once,
/// per slot: raise the soft limit on open files to the hard one, as Go's
/// runtime and most servers do, since 1024 is a common default.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::debug!("could not raise the open-file limit");
            }
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WMR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    raise_open_file_limit();
    wmr::storage::configure(wmr::storage::S3Options {
        endpoint: cli.s3_endpoint,
    });
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Seq(args) => seq(args),
        Command::Validate { component } => validate(&component),
        Command::Coordinator(args) => block_on(coordinator(args)),
        Command::Worker(args) => block_on(worker(args)),
        Command::Deploy(args) => block_on(deploy(args)),
        Command::Status { job, remote, json } => block_on(status(job, remote, json)),
        Command::Jobs {
            resumable,
            remote,
            json,
        } => block_on(list_jobs(remote, resumable, json)),
        Command::Resume { job, remote } => block_on(async move {
            let job = wmr::client::resume(&remote.remote(), job).await?;
            println!("job {job} resumed");
            Ok(ExitCode::SUCCESS)
        }),
        Command::Dlq { job, remote, json } => block_on(async move {
            let report = wmr::client::status(&remote.remote(), job).await?;
            let mut dead: Vec<wmr::model::DeadLetter> = report
                .attempt_log
                .iter()
                .filter(|r| r.outcome == wmr::scheduler::AttemptOutcome::Committed)
                .filter_map(|r| r.stats.as_ref())
                .flat_map(|s| s.dead_letters.iter().cloned())
                .collect();
            dead.sort_by(|a, b| (&a.file, a.offset).cmp(&(&b.file, b.offset)));
            for d in &dead {
                if json {
                    println!("{}", serde_json::to_string(d)?);
                } else {
                    println!("{}:{}: {}\n    {}", d.file, d.offset, d.message, d.record);
                }
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Tenant { action } => tenant(action),
        Command::Cancel { job, remote } => block_on(async move {
            let job = wmr::client::cancel(&remote.remote(), job).await?;
            println!("job {job} cancelled");
            Ok(ExitCode::SUCCESS)
        }),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            // One line: the cause chain joined, as `anyhow` prints with {:#}.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    wmr::model::check_job_settings(
        args.reducers,
        args.split_size,
        args.max_attempts,
        &args.job.guest.limits(),
        &args.shuffle.settings(wmr::model::Compression::None),
    )
    .map_err(anyhow::Error::msg)?;
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get() as u32));
    anyhow::ensure!(workers > 0, "--workers must be greater than 0");
    let map = args.job.map.clone();
    let reduce = args.job.reduce.clone().unwrap_or_else(|| map.clone());
    let request = wmr::wire::JobRequest {
        // Read from `map` and `reduce` by the embedded driver.
        map_module: Vec::new(),
        reduce_module: None,
        inputs: args
            .job
            .input
            .iter()
            .map(|i| {
                Ok(wmr::storage::normalize_location(i)?
                    .to_string_lossy()
                    .into_owned())
            })
            .collect::<anyhow::Result<_>>()?,
        output: wmr::storage::normalize_location(&args.output.to_string_lossy())?,
        output_format: args.job.output_format,
        reducers: args.reducers,
        split_bytes: args.split_size,
        limits: args.job.guest.limits(),
        params: args.job.guest.params(),
        max_attempts: args.max_attempts,
        shuffle_settings: args.shuffle.settings(wmr::model::Compression::None),
        placement: args.placement.placement(),
        speculate: args.speculate,
    };
    let work_root = args
        .work_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join("wmr");
    let bar = progress_bar(args.json);
    let mut on_progress = |p: Progress| {
        bar.set_length(p.total as u64);
        bar.set_position(p.committed as u64);
        bar.set_message(format!("{:?}, {} running", p.phase, p.running));
    };
    let local_workers = wmr::local::LocalWorkers {
        count: workers,
        labels: args.labels.iter().cloned().collect(),
    };
    let run = wmr::local::run_embedded(
        &map,
        &reduce,
        request,
        &local_workers,
        args.cache.compile_cache().as_ref(),
        &work_root,
        &mut on_progress,
    )?;
    bar.finish_and_clear();
    report(
        &run.summary,
        Some(run.compile_cache.as_ref()),
        args.json,
        &args.output,
    )
}

/// Print a finished job's summary; the exit code says whether it completed.
/// `compile_cache`: what this process's compile cache did (`Some(None)`:
/// it had none), for `wmr run`.
fn report(
    summary: &JobSummary,
    compile_cache: Option<Option<&CacheReport>>,
    json: bool,
    output: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    if json {
        let mut value = serde_json::to_value(summary)?;
        if let (Some(cache), Some(fields)) = (compile_cache, value.as_object_mut()) {
            fields.insert("compile_cache".into(), serde_json::to_value(cache)?);
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_summary(summary, output);
        match compile_cache {
            Some(Some(c)) => println!(
                "  compile cache: {} hits, {} compiled, {} discarded ({})",
                c.hits,
                c.misses,
                c.discarded,
                c.dir.display()
            ),
            Some(None) => println!("  compile cache: off"),
            None => {}
        }
    }
    Ok(match &summary.outcome {
        JobOutcome::Completed => ExitCode::SUCCESS,
        JobOutcome::Failed(message) => {
            eprintln!("error: job failed: {message}");
            ExitCode::FAILURE
        }
        JobOutcome::Cancelled => {
            eprintln!("error: job cancelled");
            ExitCode::FAILURE
        }
    })
}

fn block_on<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(
    f: F,
) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn coordinator(args: CoordinatorArgs) -> anyhow::Result<ExitCode> {
    let config = wmr::coordinator::CoordinatorConfig {
        listen: args.listen,
        work_root: args.work_dir.unwrap_or_else(|| args.state.join("work")),
        state_dir: args.state,
        lease: std::time::Duration::from_millis(args.lease),
        heartbeat: std::time::Duration::from_millis(args.heartbeat),
        shuffle: match args.shuffle_store {
            Some(root) => wmr::model::Shuffle::Object(root),
            None if args.shared_store => wmr::model::Shuffle::SharedStore,
            None => wmr::model::Shuffle::WorkerLocal,
        },
        ephemeral_state: args.ephemeral_state,
        http: args.http,
        reannounce_window: args.reannounce_window.map(std::time::Duration::from_millis),
    };
    wmr::coordinator::serve(config, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let identity = match &args.identity {
        Some(dir) => Some(wmr::transport::Identity::load_or_generate(dir)?),
        None => None,
    };
    if args.print_fingerprint {
        let identity = identity.expect("clap requires --identity");
        println!("{}", identity.fingerprint());
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(identity) = &identity {
        tracing::info!(fingerprint = %identity.fingerprint(), "worker certificate");
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
    let options = wmr::worker::WorkerOptions {
        coordinator: args.connect,
        fingerprint: args.fingerprint.unwrap_or_default(),
        slots: args.slots.unwrap_or(cores).max(1),
        name: args
            .name
            .unwrap_or_else(|| format!("worker-{}", std::process::id())),
        labels: args.labels.into_iter().collect(),
        crash_probability: args.crash_probability,
        cache_dir: args
            .cache
            .cache_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("wmr-module-cache")),
        compile_cache: args.cache.compile_cache(),
        work_dir: args.work_dir.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("wmr-worker-{}", std::process::id()))
        }),
        shuffle_listen: args.shuffle_listen,
        token: args.token,
    };
    wmr::worker::run_as(options, identity, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    // Validate locally: a clear error before anything is sent.
    wmr::model::check_job_settings(
        args.reducers,
        args.split_size,
        args.max_attempts,
        &args.guest.limits(),
        &args.shuffle.settings(wmr::model::Compression::Lz4),
    )
    .map_err(anyhow::Error::msg)?;
    let map =
        std::fs::read(&args.map).map_err(|e| anyhow::anyhow!("{}: {e}", args.map.display()))?;
    let reduce = match &args.reduce {
        Some(path) => {
            Some(std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?)
        }
        None => None,
    };
    let mut sandbox = wmr::sandbox::Sandbox::new()?;
    if let Some(options) = args.cache.compile_cache() {
        sandbox.use_compile_cache(&options);
    }
    let check = |bytes: &[u8], role, path: &std::path::Path| {
        sandbox
            .load(bytes, role)
            .map(|_| ())
            .map_err(|e| e.context(path.display().to_string()))
    };
    check(&map, wmr::sandbox::Role::Map, &args.map)?;
    match (&reduce, &args.reduce) {
        (Some(bytes), Some(path)) => check(bytes, wmr::sandbox::Role::Reduce, path)?,
        _ => check(&map, wmr::sandbox::Role::Reduce, &args.map)?,
    }
    let cwd = std::env::current_dir()?;
    let inputs = args
        .input
        .iter()
        .map(|i| {
            Ok(wmr::storage::absolute_location(i, &cwd)?
                .to_string_lossy()
                .into_owned())
        })
        .collect::<anyhow::Result<_>>()?;
    let request = wmr::wire::JobRequest {
        map_module: map,
        reduce_module: reduce,
        inputs,
        output: wmr::storage::absolute_location(&args.output.to_string_lossy(), &cwd)?,
        output_format: args.output_format,
        reducers: args.reducers,
        split_bytes: args.split_size,
        limits: args.guest.limits(),
        params: args.guest.params(),
        max_attempts: args.max_attempts,
        shuffle_settings: args.shuffle.settings(wmr::model::Compression::Lz4),
        placement: args.placement.placement(),
        speculate: args.speculate,
    };
    if args.detach {
        let job = wmr::client::submit(&args.remote.remote(), request).await?;
        eprintln!("job {job} submitted");
        println!("{job}");
        return Ok(ExitCode::SUCCESS);
    }
    let bar = progress_bar(args.json);
    let mut on_submitted = |job: &str| eprintln!("job {job} submitted");
    let mut on_progress = |p: Progress| {
        bar.set_length(p.total as u64);
        bar.set_position(p.committed as u64);
        bar.set_message(format!("{:?}, {} running", p.phase, p.running));
    };
    let summary = wmr::client::deploy(
        &args.remote.remote(),
        request,
        &mut on_submitted,
        &mut on_progress,
    )
    .await?;
    bar.finish_and_clear();
    report(&summary, None, args.json, &args.output)
}

async fn status(job: Option<String>, remote: RemoteArgs, json: bool) -> anyhow::Result<ExitCode> {
    let report = wmr::client::status(&remote.remote(), job).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "job {}: {:?}\n  tasks {}: {} committed, {} running, {} pending\n  attempts {}",
        report.job,
        report.phase,
        report.tasks,
        report.committed,
        report.running,
        report.pending,
        report.attempt_log.len()
    );
    if let Some(waiting) = &report.waiting {
        println!("  {waiting}");
    }
    for (name, t) in &report.totals {
        println!(
            "  {name}: {} attempts ({} committed), {} of attempt time, fuel {}, in {} B, out {} B, {} records",
            t.attempts,
            t.committed,
            human_duration(Duration::from_millis(t.wall_ms)),
            t.fuel_used,
            t.bytes_in,
            t.bytes_out,
            t.records_out
        );
        for (counter, value) in &t.counters {
            println!("    counter {counter} = {value}");
        }
    }
    // The first change (the submission) with its date, the others with the
    // time since it.
    let submitted = report.transitions.first().map_or(0, |c| c.unix_ms);
    for (i, change) in report.transitions.iter().enumerate() {
        let at = if i == 0 {
            local_time(change.unix_ms, "%Y-%m-%d %H:%M:%S")
        } else {
            let since = Duration::from_millis(change.unix_ms.saturating_sub(submitted));
            format!(
                "{} (+{})",
                local_time(change.unix_ms, "%H:%M:%S"),
                human_duration(since)
            )
        };
        println!("  {:?} at {at}: {}", change.phase, change.reason);
    }
    for w in &report.workers {
        let state = if w.connected { "connected" } else { "gone" };
        let mut about: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if let Some(pool) = &w.pool {
            about.push(format!("pool of {}", pool.0));
        }
        let about = if about.is_empty() {
            String::new()
        } else {
            format!(", {}", about.join(", "))
        };
        println!(
            "  worker {} {} ({} slots, {state}{about})",
            w.id, w.name, w.slots
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn list_jobs(remote: RemoteArgs, resumable: bool, json: bool) -> anyhow::Result<ExitCode> {
    let mut jobs = wmr::client::jobs(&remote.remote()).await?;
    if resumable {
        jobs.retain(|j| j.outcome != Some(JobOutcome::Completed));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
    } else {
        for j in &jobs {
            println!(
                "{}  {:?}  {}/{} tasks committed  submitted {}",
                j.job,
                j.phase,
                j.committed,
                j.tasks,
                local_time(j.submitted_unix_ms, "%Y-%m-%d %H:%M:%S")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn tenant(action: TenantAction) -> anyhow::Result<ExitCode> {
    match action {
        TenantAction::Add {
            name,
            state,
            root,
            weight,
            quotas,
            pool_only,
        } => {
            let mut quota = wmr::tenants::Quota::default();
            for (key, value) in &quotas {
                quota.set(key, *value)?;
            }
            let token = wmr::tenants::add_tenant(&state, &name, &root, weight, quota, pool_only)?;
            println!("{token}");
            eprintln!("tenant {name} added; the token above is shown only once");
        }
        TenantAction::Revoke { name, state } => {
            wmr::tenants::revoke(&state, &name)?;
            eprintln!("tenant {name} revoked");
        }
        TenantAction::WorkerToken { state, tenant } => {
            println!(
                "{}",
                wmr::tenants::new_worker_token(&state, tenant.as_deref())?
            );
            match tenant {
                Some(name) => eprintln!(
                    "new worker token for tenant {name}'s pool: workers joining with it run only {name}'s attempts; the token above is shown only once"
                ),
                None => eprintln!("new worker token; the token above is shown only once"),
            }
        }
        TenantAction::OperatorToken { state } => {
            println!("{}", wmr::tenants::new_operator_token(&state)?);
            eprintln!("new operator token; the token above is shown only once");
        }
        TenantAction::AllowWorker { fingerprint, state } => {
            wmr::coordinator::allow_worker(&state, &fingerprint)?;
            eprintln!("worker certificate {fingerprint} allowed; mutual TLS is on for workers");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn progress_bar(hidden: bool) -> indicatif::ProgressBar {
    if hidden || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {pos}/{len} tasks  {msg}",
    )
    .expect("valid template")
    .progress_chars("=> ");
    bar.set_style(style);
    bar
}

fn print_summary(s: &JobSummary, output: &std::path::Path) {
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "job {}: {:?}\n  tasks {}  attempts {} ({} failed)\n  in {:.1} MB  out {:.1} MB ({} records)  fuel {}\n  wall {:.2} s  ({:.1} MB/s)",
        s.job,
        s.outcome,
        s.tasks,
        s.attempts,
        s.failed_attempts,
        mb(s.bytes_in),
        mb(s.bytes_out),
        s.records_out,
        s.fuel_used,
        s.wall_ms as f64 / 1e3,
        mb(s.bytes_in) / (s.wall_ms.max(1) as f64 / 1e3),
    );
    if s.speculative > 0 {
        println!(
            "  speculative attempts {} ({} won)",
            s.speculative, s.speculative_won
        );
    }
    if s.outcome == JobOutcome::Completed {
        println!("  output {}", output.display());
    }
    for (name, value) in &s.counters {
        println!("  counter {name} = {value}");
    }
}

fn seq(args: SeqArgs) -> anyhow::Result<ExitCode> {
    let reduce = args
        .job
        .reduce
        .clone()
        .unwrap_or_else(|| args.job.map.clone());
    let out = wmr::seq::run_sequential(
        &args.job.map,
        &reduce,
        &args.job.input,
        &args.job.guest.limits(),
        &args.job.guest.params(),
        args.job.output_format,
    )?;
    match &args.output {
        Some(path) => std::fs::write(path, out)?,
        None => std::io::Write::write_all(&mut std::io::stdout(), &out)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(component: &std::path::Path) -> anyhow::Result<ExitCode> {
    let roles = wmr::sandbox::validate_file(component)?;
    println!(
        "ok: {} fits {} ({})",
        component.display(),
        wmr::sandbox::WORLD_PACKAGE,
        roles.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// A wall-clock time (unix ms) in the system's time zone, as `format`
/// (strftime) says.
fn local_time(unix_ms: u64, format: &str) -> String {
    let zone = jiff::tz::TimeZone::system();
    match jiff::Timestamp::from_millisecond(unix_ms as i64) {
        Ok(t) => t.to_zoned(zone).strftime(format).to_string(),
        Err(_) => format!("{unix_ms} ms since 1970"),
    }
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected NAME=VALUE")?;
    Ok((k.to_string(), v.to_string()))
}

/// `512MiB`, `8M`, `64k`, `1GiB` or plain bytes.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().map_err(|_| format!("bad size {s:?}"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("bad size unit in {s:?} (use k, M, G or T)")),
    };
    n.checked_shl(shift)
        .ok_or_else(|| format!("size {s:?} too large"))
}

/// `NAME=VALUE` of `wmr tenant add --quota`; sizes may carry a unit.
fn parse_quota(s: &str) -> Result<(String, u64), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
    Ok((name.to_string(), parse_bytes(value)?))
}

/// `120s`, `500ms`, `2m` into milliseconds.
fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().map_err(|_| format!("bad duration {s:?}"))?;
    match unit {
        "ms" => Ok(n),
        "" | "s" => Ok(n * 1000),
        "m" => Ok(n * 60_000),
        _ => Err(format!("bad duration unit in {s:?} (use ms, s or m)")),
    }
}
