//! One file per subcommand of the `adarank` binary; `main.rs` only wires them together.

pub mod bench_matmul;
pub mod bench_train;
pub mod check;
pub mod devices;
pub mod fetch;
pub mod fmt;
pub mod plan;
pub mod plugins;
pub mod report;
pub mod run;
pub mod status;

/// Returned by a subcommand that has already printed its diagnostics and only needs to set the
/// process exit status (e.g. `check` exits 1 when a file has errors).
#[derive(Debug)]
pub struct ExitStatus(pub u8);

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for ExitStatus {}
