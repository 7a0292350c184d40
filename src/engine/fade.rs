//! A re-allocation of ungated adapters without a loss spike: the components an adapter loses
//! fade out under training before they are cut.
//!
//! Cutting at once (a truncated SVD of ΔW at the decision) removes real directions of what
//! training built and the loss jumps. Here the decision only re-factorises every adapter that
//! will shrink as the SVD of its ΔW (ΔW unchanged, components ordered by singular value) and
//! puts gates on it; over the next `steps` steps the gates of the components beyond the new
//! rank go linearly from 1 to 0 while training goes on, so the other components take over
//! what they carried; then the cut keeps the leading components (the gates' order) and the
//! adapters that grow get their new B = 0 components. Every adapter keeps its size until the
//! cut, so the held parameters never exceed what the last allocation held. The relaxation
//! (`relax.rs`) has its own fade, of the relaxed ranks its gates already follow.

use super::{Core, Result};
use crate::adapter::AdapterStore;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingCut {
    /// The allocation the cut applies.
    pub ranks: Vec<usize>,
    /// Adapters fading (re-factorised and gated at the decision).
    pub fading: Vec<bool>,
    pub steps: u32,
    pub done: u32,
}

impl PendingCut {
    /// The decision: each adapter that will shrink re-factorised as its SVD and gated open.
    /// An adapter already at full rank cannot be re-factorised in place (`Core::rebase`); it
    /// stays ungated and shrinks by truncated SVD at the cut.
    pub fn start(
        core: &mut Core,
        store: &mut dyn AdapterStore,
        ranks: &[usize],
        steps: u32,
    ) -> Result<Self> {
        let mut fading = vec![false; ranks.len()];
        for (i, &r) in ranks.iter().enumerate() {
            if r < core.infos[i].rank && core.rebase(store, i)? {
                fading[i] = true;
            }
        }
        let p = Self {
            ranks: ranks.to_vec(),
            fading,
            steps: steps.max(1),
            done: 0,
        };
        p.upload_gates(core, store)?;
        Ok(p)
    }

    /// Gates of a fading adapter now: 1 on the components it keeps, 1 − done/steps on the
    /// others.
    pub fn upload_gates(&self, core: &Core, store: &mut dyn AdapterStore) -> Result<()> {
        let closed = 1.0 - (self.done as f32 / self.steps as f32).min(1.0);
        for (i, a) in core.infos.iter().enumerate() {
            if !self.fading[i] {
                continue;
            }
            let g: Vec<f32> = (0..a.rank)
                .map(|j| if j < self.ranks[i] { 1.0 } else { closed })
                .collect();
            store.set_gates(i, Some(&g))?;
        }
        Ok(())
    }

    /// One training step further; true when the fade is over and the cut is due.
    pub fn step(&mut self, core: &Core, store: &mut dyn AdapterStore) -> Result<bool> {
        self.done += 1;
        if self.done >= self.steps {
            return Ok(true);
        }
        self.upload_gates(core, store)?;
        Ok(false)
    }

    /// The cut: every adapter resized to the allocation (a gated one keeps its leading
    /// components) and left ungated. Returns whether tensors changed size.
    pub fn cut(self, core: &mut Core, store: &mut dyn AdapterStore) -> Result<bool> {
        let resized = core.apply_ranks(store, &self.ranks)?;
        for (i, f) in self.fading.iter().enumerate() {
            if *f && core.infos[i].rank > 0 {
                store.set_gates(i, None)?;
            }
        }
        Ok(resized)
    }
}
