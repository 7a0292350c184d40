//! One file per subcommand of the `adarank` binary; `main.rs` only wires them together.

pub mod bench_matmul;
pub mod bench_train;
pub mod check;
pub mod devices;
pub mod eval;
pub mod fetch;
pub mod fmt;
pub mod generate;
pub mod plan;
pub mod plugins;
pub mod report;
pub mod run;
pub mod status;

/// The exit statuses, as `adarank --help` states them.
pub const EXIT_STATUS_HELP: &str = "Exit status: 0 success; 1 the input is wrong (a policy that \
does not check, data or a model that cannot be loaded); 2 a usage error (bad flags) or a failure \
while running (a plugin error, a device error, an I/O error). Results go to stdout; progress and \
diagnostics to stderr.";

/// Exit status 1: the input is wrong (policy or data).
pub const EXIT_INPUT: u8 = 1;
/// Exit status 2: usage errors (clap's own) and failures while running.
pub const EXIT_FAILURE: u8 = 2;

/// The exit status of a failed command: 1 when the policy or the data is at fault, else 2.
pub fn exit_status(e: &anyhow::Error) -> u8 {
    let input = e.downcast_ref::<crate::policy::Diagnostics>().is_some()
        || e.downcast_ref::<crate::data::DataError>().is_some();
    if input {
        EXIT_INPUT
    } else {
        EXIT_FAILURE
    }
}

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
