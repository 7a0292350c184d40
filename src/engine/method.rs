//! How ranks are chosen, as one trait: each method (scripted complexity → learner → allocator,
//! AdaLoRA, SoRA; fixed and layer-wise are scripted methods that allocate once) implements
//! [`RankMethod`], and the engine calls it at the training loop's hooks and the schedule's
//! events. Every allocation a method makes is returned as one [`Allocation`], the single rank
//! record the run directory keeps (`allocations.jsonl`).

use super::{Core, EngineCtx, Result};
use crate::adapter::{AdapterInfo, AdapterStore};
use serde::{Deserialize, Serialize};

/// One slot in an [`Allocation`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlotAllocation {
    /// `"{layer}.{kind}"`.
    pub name: String,
    /// Trainable parameters one rank of this slot costs (rows + cols).
    pub cost: usize,
    /// C_i from the complexity plugin, when the method has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complexity: Option<f64>,
    /// What the method ranks this slot by: the real-valued rank α·ln C_i + β of the log rule
    /// (before rounding), AdaLoRA's mean kept triplet score, SoRA's Σ|g|.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// The log rule's raw term α·ln C_i, before the offset and the clamp to [r_min, r_max]
    /// (`raw + offset` is the unclamped rank).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<f64>,
    pub before: usize,
    pub after: usize,
}

/// What the log rule did at one allocation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleLog {
    /// The offset δ in r_i = clamp(α·ln C_i + δ, r_min, r_max) actually applied.
    pub offset: f64,
    pub at_min: usize,
    pub at_max: usize,
    /// Trainable parameters the adapters hold right after this allocation (while relaxed,
    /// the nearly closed components included).
    pub held_params: usize,
}

/// One allocation of one cell: the starting ranks (`reason: "init"`) and every re-allocation,
/// AdaLoRA's masking and pruning and SoRA's pruning included.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    pub step: u64,
    /// `init`, `reallocate`, `finalize` (the relaxed ranks made integer), `mask` (AdaLoRA,
    /// tensors kept), `prune` (components removed for real: AdaLoRA with `resize`, SoRA).
    pub reason: String,
    /// The total rank the allocator was given, when the method has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<usize>,
    /// The trainable-parameter budget, when the policy sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param_budget: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    /// The rule's offset actually applied (the relaxation's, or the one rounding to the budget
    /// found), and how many slots' real-valued ranks sit at r_min and at r_max.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleLog>,
    pub slots: Vec<SlotAllocation>,
    /// Tensors changed size (false when AdaLoRA only masked, or nothing changed).
    #[serde(default)]
    pub resized: bool,
    /// Seconds spent (statistics, scripts, resizing). Not written to the run directory, so
    /// the same seed gives the same allocations.jsonl byte for byte.
    #[serde(skip)]
    pub seconds: f64,
}

impl Allocation {
    /// `(slot, rank after)` for every slot.
    pub fn ranks(&self) -> Vec<(String, usize)> {
        self.slots
            .iter()
            .map(|s| (s.name.clone(), s.after))
            .collect()
    }
    pub fn total(&self) -> usize {
        self.slots.iter().map(|s| s.after).sum()
    }
    /// Trainable adapter parameters after this allocation.
    pub fn params(&self) -> usize {
        self.slots.iter().map(|s| s.after * s.cost).sum()
    }

    /// One record per slot of `infos`: ranks `before` → `after`, with the complexity and score
    /// the method computed (none where the slices are short).
    pub fn slots_of(
        infos: &[AdapterInfo],
        before: &[usize],
        after: &[usize],
        complexity: &[f64],
        score: &[f64],
    ) -> Vec<SlotAllocation> {
        infos
            .iter()
            .enumerate()
            .map(|(i, a)| SlotAllocation {
                name: a.name.clone(),
                cost: a.rows + a.cols,
                complexity: complexity.get(i).copied(),
                score: score.get(i).copied(),
                raw: None,
                before: before[i],
                after: after[i],
            })
            .collect()
    }

    /// The starting record of an arm without a rank method: the ranks the model was built
    /// with, kept for the whole cell.
    pub fn fixed(infos: &[AdapterInfo]) -> Self {
        let ranks: Vec<usize> = infos.iter().map(|a| a.rank).collect();
        Self {
            step: 0,
            reason: "init".into(),
            budget: None,
            param_budget: None,
            alpha: None,
            beta: None,
            rule: None,
            slots: Self::slots_of(infos, &ranks, &ranks, &[], &[]),
            resized: false,
            seconds: 0.0,
        }
    }
}

/// A rank method. `core` holds what every method shares (plugin host, slots, statistics,
/// learner state); `store` is the model's adapters.
pub trait RankMethod: Send {
    /// Ranks to train with from step 1.
    fn start(&mut self, core: &mut Core, store: &mut dyn AdapterStore) -> Result<Vec<usize>>;
    /// After the starting ranks are applied, or after a resume restored the model (gates and
    /// other device state the method keeps are put back here).
    fn started(
        &mut self,
        _core: &mut Core,
        _store: &mut dyn AdapterStore,
        _resumed: bool,
    ) -> Result<()> {
        Ok(())
    }
    /// After every backward pass, before the optimizer step: statistics, regularisers.
    fn after_backward(
        &mut self,
        core: &mut Core,
        step: u64,
        store: &mut dyn AdapterStore,
    ) -> Result<()>;
    /// After every optimizer step, before the schedule's events (methods with their own
    /// schedule, per-step learning).
    fn after_step(
        &mut self,
        _core: &mut Core,
        _step: u64,
        _store: &mut dyn AdapterStore,
        _ctx: &EngineCtx,
    ) -> Result<Option<Allocation>> {
        Ok(None)
    }
    /// The policy's `reallocate` action.
    fn reallocate(
        &mut self,
        core: &mut Core,
        step: u64,
        store: &mut dyn AdapterStore,
        ctx: &EngineCtx,
    ) -> Result<Option<Allocation>>;
    /// The re-allocating phases are over.
    fn finalize(
        &mut self,
        _core: &mut Core,
        _step: u64,
        _store: &mut dyn AdapterStore,
        _ctx: &EngineCtx,
    ) -> Result<Option<Allocation>> {
        Ok(None)
    }
    /// Ranks in effect (AdaLoRA masking: unmasked triplets).
    fn ranks(&self, core: &Core) -> Vec<usize> {
        core.infos.iter().map(|a| a.rank).collect()
    }
    /// Method state for checkpoints (state the method keeps in the store, such as AdaLoRA's
    /// importance, is read back here).
    fn state(&self, _core: &Core, _store: &dyn AdapterStore) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }
    fn load_state(&mut self, _v: serde_json::Value) -> Result<()> {
        Ok(())
    }
}
