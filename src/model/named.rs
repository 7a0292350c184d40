//! Any parameter by name, frozen or trainable: what exports read (the head, the pooler) and
//! imports write (a head saved by PEFT's `modules_to_save`, a pooler that is frozen here).

use super::transformer::Model;
use super::weights::HostWeights;
use crate::backend::Backend;
use anyhow::{ensure, Result};

impl<B: Backend> Model<B> {
    /// Host copies of the parameters whose names `keep` accepts (adapters are not parameters
    /// of this list: see `AdapterStore::adapter_host`).
    pub fn named_host(&mut self, keep: impl Fn(&str) -> bool) -> Result<HostWeights> {
        let be = self.be.clone();
        let mut out = HostWeights::new();
        for p in self.params_mut() {
            if keep(&p.name) {
                out.insert(p.name.clone(), p.host(&be)?);
            }
        }
        Ok(out)
    }

    /// Overwrites parameters by name, frozen ones included. Every name must be a parameter of
    /// the model with the same shape; returns how many were written.
    pub fn overwrite(&mut self, w: &HostWeights) -> Result<usize> {
        let be = self.be.clone();
        let mut done = 0;
        for p in self.params_mut() {
            if let Some(t) = w.get(&p.name) {
                ensure!(
                    t.shape == p.shape,
                    "`{}`: the model has shape {:?}, the file {:?}",
                    p.name,
                    p.shape,
                    t.shape
                );
                be.write(&mut p.w, &t.data)?;
                done += 1;
            }
        }
        ensure!(
            done == w.len(),
            "{} of the {} tensors name no parameter of this model ({})",
            w.len() - done,
            w.len(),
            w.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        Ok(done)
    }
}
