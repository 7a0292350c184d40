//! Training: AdamW with warmup and decay, clipping, accumulation, the loop with hooks
//! for the rank engine and runner, metrics, per-step costs (`meter`), and the built-in tasks
//! (planted-rank teacher–student, synthetic classification).

pub mod lm_eval;
pub mod lr_schedule;
pub mod meter;
pub mod order;
pub mod planted;
pub mod synthetic;
pub mod task;
pub mod trainer;

pub use lr_schedule::{lr_at, Decay};
pub use meter::{Metered, StepCost};
pub use planted::{PlantedConfig, PlantedTask};
pub use synthetic::{SyntheticConfig, SyntheticTask};
pub use task::{EvalExample, Task};
pub use trainer::{
    build_model, evaluate, evaluate_batches, train, Control, EvalMetrics, Hooks, NoHooks,
    RankMetrics, StepMetrics, TrainConfig, TrainLog,
};
