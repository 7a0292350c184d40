//! A view of a model's adapter store restricted to the slots a policy targets, so the rank
//! engine allocates the budget over `lora.targets` × `lora.layers` only, never over untargeted
//! modules.

use super::{AdapterHost, AdapterInfo, AdapterStore, GradStats, HostTensor, TripletImportance};
use anyhow::{Context, Result};

pub struct SlotView<'a, S: AdapterStore + ?Sized = dyn AdapterStore> {
    pub store: &'a mut S,
    /// Indices into `store.adapters()`, in order.
    pub slots: &'a [usize],
}

impl<'a, S: AdapterStore + ?Sized> SlotView<'a, S> {
    pub fn new(store: &'a mut S, slots: &'a [usize]) -> Self {
        Self { store, slots }
    }
}

impl<S: AdapterStore + ?Sized> SlotView<'_, S> {
    fn inner(&self, i: usize) -> Result<usize> {
        self.slots.get(i).copied().with_context(|| {
            format!(
                "adapter index {i} out of range ({} targeted slots)",
                self.slots.len()
            )
        })
    }
}

impl<S: AdapterStore + ?Sized> AdapterStore for SlotView<'_, S> {
    fn adapters(&self) -> Vec<AdapterInfo> {
        let all = self.store.adapters();
        self.slots
            .iter()
            .filter_map(|&i| all.get(i).cloned())
            .collect()
    }
    fn adapter_host(&self, i: usize) -> Result<AdapterHost> {
        self.store.adapter_host(self.inner(i)?)
    }
    fn set_adapter_host(&mut self, i: usize, h: &AdapterHost) -> Result<()> {
        let j = self.inner(i)?;
        self.store.set_adapter_host(j, h)
    }
    fn frozen_weight(&self, i: usize) -> Result<HostTensor> {
        self.store.frozen_weight(self.inner(i)?)
    }
    fn resize_adapter(&mut self, i: usize, rank: usize) -> Result<()> {
        let j = self.inner(i)?;
        self.store.resize_adapter(j, rank)
    }
    fn set_resize_options(&mut self, o: crate::adapter::ResizeOptions) -> Result<()> {
        self.store.set_resize_options(o)
    }
    fn input_sample(&self, i: usize) -> Option<HostTensor> {
        self.store.input_sample(*self.slots.get(i)?)
    }
    fn gather_grad_stats(&mut self, i: usize) -> Result<()> {
        let j = self.inner(i)?;
        self.store.gather_grad_stats(j)
    }
    fn grad_stats(&self, i: usize) -> Result<GradStats> {
        self.store.grad_stats(self.inner(i)?)
    }
    fn reset_grad_stats(&mut self, i: usize) -> Result<()> {
        let j = self.inner(i)?;
        self.store.reset_grad_stats(j)
    }
    fn restore_grad_stats(&mut self, i: usize, s: &GradStats) -> Result<()> {
        let j = self.inner(i)?;
        self.store.restore_grad_stats(j, s)
    }
    fn set_gates(&mut self, i: usize, gates: Option<&[f32]>) -> Result<()> {
        let j = self.inner(i)?;
        self.store.set_gates(j, gates)
    }
    fn gate_grad(&self, i: usize) -> Result<Vec<f32>> {
        self.store.gate_grad(self.inner(i)?)
    }
    fn keep_components(&mut self, i: usize, keep: &[usize]) -> Result<()> {
        let j = self.inner(i)?;
        self.store.keep_components(j, keep)
    }
    fn update_importance(&mut self, i: usize, beta1: f32, beta2: f32) -> Result<()> {
        let j = self.inner(i)?;
        self.store.update_importance(j, beta1, beta2)
    }
    fn importance(&self, i: usize) -> Result<TripletImportance> {
        self.store.importance(self.inner(i)?)
    }
    fn set_importance(&mut self, i: usize, t: &TripletImportance) -> Result<()> {
        let j = self.inner(i)?;
        self.store.set_importance(j, t)
    }
    fn add_orth_grad(&mut self, i: usize, weight: f32) -> Result<()> {
        let j = self.inner(i)?;
        self.store.add_orth_grad(j, weight)
    }
    fn mask_lambda(&mut self, i: usize, masked: &[bool]) -> Result<()> {
        let j = self.inner(i)?;
        self.store.mask_lambda(j, masked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::ModuleKind;

    struct Plain(Vec<AdapterInfo>);
    impl AdapterStore for Plain {
        fn adapters(&self) -> Vec<AdapterInfo> {
            self.0.clone()
        }
        fn adapter_host(&self, _i: usize) -> Result<AdapterHost> {
            Ok(AdapterHost::default())
        }
        fn set_adapter_host(&mut self, _i: usize, _h: &AdapterHost) -> Result<()> {
            Ok(())
        }
        fn frozen_weight(&self, i: usize) -> Result<HostTensor> {
            Ok(HostTensor::new(vec![1], vec![i as f32]))
        }
        fn resize_adapter(&mut self, i: usize, rank: usize) -> Result<()> {
            self.0[i].rank = rank;
            Ok(())
        }
        fn gather_grad_stats(&mut self, _i: usize) -> Result<()> {
            Ok(())
        }
        fn grad_stats(&self, _i: usize) -> Result<GradStats> {
            Ok(GradStats::default())
        }
        fn reset_grad_stats(&mut self, _i: usize) -> Result<()> {
            Ok(())
        }
        fn set_gates(&mut self, _i: usize, _g: Option<&[f32]>) -> Result<()> {
            Ok(())
        }
        fn gate_grad(&self, _i: usize) -> Result<Vec<f32>> {
            Ok(vec![])
        }
        fn keep_components(&mut self, i: usize, keep: &[usize]) -> Result<()> {
            self.0[i].rank = keep.len();
            Ok(())
        }
        fn update_importance(&mut self, _i: usize, _b1: f32, _b2: f32) -> Result<()> {
            Ok(())
        }
        fn importance(&self, _i: usize) -> Result<TripletImportance> {
            Ok(TripletImportance::default())
        }
        fn set_importance(&mut self, _i: usize, _t: &TripletImportance) -> Result<()> {
            Ok(())
        }
        fn add_orth_grad(&mut self, _i: usize, _w: f32) -> Result<()> {
            Ok(())
        }
        fn mask_lambda(&mut self, _i: usize, _m: &[bool]) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn view_maps_indices_to_the_targeted_slots() {
        let infos = ModuleKind::ALL
            .iter()
            .map(|&k| AdapterInfo {
                name: AdapterInfo::slot_name(0, k),
                layer: 0,
                kind: k,
                rows: 4,
                cols: 4,
                rank: 0,
            })
            .collect();
        let mut p = Plain(infos);
        let slots = [0, 2, 5];
        let mut v = SlotView {
            store: &mut p,
            slots: &slots,
        };
        assert_eq!(
            v.adapters()
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>(),
            ["0.q", "0.v", "0.ffn_out"]
        );
        v.resize_adapter(1, 3).unwrap();
        assert_eq!(v.frozen_weight(2).unwrap().data, vec![5.0]);
        assert!(v.resize_adapter(3, 1).is_err());
        assert_eq!(
            p.0.iter().map(|a| a.rank).collect::<Vec<_>>(),
            [0, 0, 3, 0, 0, 0]
        );
    }
}
