//! Experiments: a policy's arms × seeds run into a run directory (`runs/<experiment>-<ts>/`) with
//! metrics, rank trajectories, checkpoints, PEFT-compatible adapters, results table, report and
//! plots; `evaluate` rebuilds finished cells for `adarank eval`. See docs/ARCHITECTURE.md ("Runs").

pub mod checkpoint;
pub mod costs;
pub mod diverged;
pub mod evaluate;
pub mod export;
pub mod fsio;
pub mod integrity;
pub mod lock;
pub mod peft;
pub mod plots;
pub mod progress;
pub mod records;
pub mod report;
pub mod rundir;
pub mod seed_stats;
pub mod status;

pub use records::{
    ArmMeta, CellResult, CellStatus, EnvInfo, MetricRecord, MetricSpec, RankRecord, Summary,
};
pub use rundir::RunDir;
pub mod arm;
pub mod budget;
pub mod cell;
pub mod run;
mod sink;
pub mod slurm;
pub mod sweep;
