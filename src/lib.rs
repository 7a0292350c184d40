//! adarank: adaptive-rank LoRA fine-tuning on wgpu and CPU backends.
//!
//! The way through: policy text → pest parse → AST → checked policy → run plan → training loop
//! → schedule calls plugins at its events → rank plan → adapters resized → metrics → run dir.

pub mod adapter;
pub mod backend;
pub mod cli;
pub mod data;
pub mod engine;
pub mod experiment;
pub mod model;
pub mod policy;
/// Test scaffolding, compiled only with the `test-support` feature (the tests turn it on).
#[cfg(feature = "test-support")]
pub mod testkit;
pub mod textfile;
pub mod train;
