//! The `wmr` command line.

use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use wmr::local::{JobSpec, JobSummary, Progress};
use wmr::protocol::Limits;
use wmr::scheduler::JobOutcome;

#[derive(Parser)]
#[command(name = "wmr", version, about = "WebAssembly-sandboxed map/reduce")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Measure word count: native baselines, the guest, and `wmr run`.
    Bench(wmr::bench::BenchArgs),
}

#[derive(Args)]
struct JobArgs {
    /// Map component (.wasm); it may export reduce too.
    #[arg(long)]
    map: PathBuf,
    /// Reduce component (.wasm); defaults to the map component.
    #[arg(long)]
    reduce: Option<PathBuf>,
    /// Input file, directory or glob (repeatable).
    #[arg(long, required = true)]
    input: Vec<String>,
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
}

impl JobArgs {
    fn limits(&self) -> Limits {
        Limits {
            fuel: self.fuel,
            memory_bytes: self.memory,
            timeout_ms: self.timeout,
            output_bytes: self.output_limit,
            ..Limits::default()
        }
    }

    fn params(&self) -> BTreeMap<String, String> {
        self.params.iter().cloned().collect()
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    job: JobArgs,
    /// Output directory (must be new or empty).
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
    /// Where intermediate data goes (default: the system temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Print the summary as JSON (no progress bar).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SeqArgs {
    #[command(flatten)]
    job: JobArgs,
    /// Output file (default: standard output).
    #[arg(long)]
    output: Option<PathBuf>,
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
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Seq(args) => seq(args),
        Command::Validate { component } => validate(&component),
        Command::Bench(args) => wmr::bench::run(&args),
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
    anyhow::ensure!(args.reducers > 0, "--reducers must be at least 1");
    anyhow::ensure!(args.split_size > 0, "--split-size must be positive");
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get() as u32));
    anyhow::ensure!(workers > 0, "--workers must be at least 1");
    let spec = JobSpec {
        reduce: args
            .job
            .reduce
            .clone()
            .unwrap_or_else(|| args.job.map.clone()),
        map: args.job.map.clone(),
        inputs: args.job.input.clone(),
        output: args.output.clone(),
        reducers: args.reducers,
        split_bytes: args.split_size,
        limits: args.job.limits(),
        params: args.job.params(),
        max_attempts: args.max_attempts,
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
    let summary = wmr::local::run_embedded(&spec, workers, &work_root, &mut on_progress)?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary, &args.output);
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
        &args.job.limits(),
        &args.job.params(),
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
        _ => return Err(format!("bad size unit in {s:?} (use k, M or G)")),
    };
    n.checked_shl(shift)
        .ok_or_else(|| format!("size {s:?} too large"))
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
