//! `wmr bench`: word count measured several ways in one run.
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Corpus size in MiB (generated from the bundled books).
    #[arg(long, default_value_t = 256)]
    pub size_mib: u64,
}

pub fn run(_args: &BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
