//! Upper bounds on every size-like key and ranges on the numbers that can only end in NaN. They
//! sit far above any experiment this harness can run, so they never get in the way of real work;
//! what they catch is a typo or a hostile value (`hidden = 4294967296`, `accum = 1M`,
//! `alpha = 1e308`) that would otherwise pass the checker and then abort on an allocation or run
//! for ever. Whether a plausible size fits the machine is a separate question (the memory plan).
//! docs/language.md lists the same table ("Limits").

/// A whole-number key's allowed range and why the upper end is where it is.
#[derive(Clone, Copy, Debug)]
pub struct Count {
    pub min: u64,
    pub max: u64,
    /// Completes "the limit is there because ...".
    pub why: &'static str,
}

/// A real-number key's allowed range (inclusive unless `open_min`).
#[derive(Clone, Copy, Debug)]
pub struct Real {
    pub min: f64,
    /// `min` itself is not allowed (`alpha > 0`).
    pub open_min: bool,
    pub max: f64,
    pub why: &'static str,
}

const MODEL: &str = "no model of this size fits a single machine; it is likely a typo";

pub const LAYERS: Count = Count {
    min: 1,
    max: 1024,
    why: MODEL,
};
pub const HIDDEN: Count = Count {
    min: 1,
    max: 65_536,
    why: MODEL,
};
pub const HEADS: Count = Count {
    min: 1,
    max: 1024,
    why: MODEL,
};
pub const FFN: Count = Count {
    min: 1,
    max: 262_144,
    why: MODEL,
};
pub const VOCAB: Count = Count {
    min: 2,
    max: 1_048_576,
    why: MODEL,
};
pub const MAX_POSITIONS: Count = Count {
    min: 1,
    max: 1_048_576,
    why: MODEL,
};
/// Sequence length of generated data (planted, synthetic); also at most `max_positions`.
pub const SEQ: Count = Count {
    min: 1,
    max: 65_536,
    why: "every example of generated data is held in memory at this length",
};
pub const MAX_LEN: Count = Count {
    min: 8,
    max: 65_536,
    why: "the tokenizer needs room for [CLS] and [SEP]; beyond 65,536 tokens attention alone \
          needs terabytes",
};
pub const SAMPLES: Count = Count {
    min: 1,
    max: 1_000_000_000,
    why: "it only sets the length of an epoch of generated data; a billion is already \
          more than a run of this harness can see",
};
/// Evaluation examples of generated data: all of them are built up front and evaluated at
/// every evaluation.
pub const GENERATED_EVAL: Count = Count {
    min: 1,
    max: 100_000,
    why: "generated evaluation examples are built up front and all evaluated at every \
          evaluation",
};
/// `train_samples` / `eval_samples` of real data sets: a prefix or subset of the file.
pub const SUBSET: Count = Count {
    min: 1,
    max: 1_000_000_000,
    why: "it selects from a data file; no data file of this harness has that many rows",
};
pub const CLASSES: Count = Count {
    min: 2,
    max: 100_000,
    why: "the classifier head has one row per class, and with one class there is nothing to \
          classify",
};
pub const RANK: Count = Count {
    min: 1,
    max: 65_536,
    why: "a rank cannot exceed the width of the layer it adapts",
};
/// `lora.rewarm`: steps over which a resized adapter's learning rate re-warms.
pub const REWARM: Count = Count {
    min: 0,
    max: 1_000_000,
    why: "a re-warm longer than any training run is a frozen adapter",
};
/// `lora.fade`: steps over which a re-allocation's dropped components fade out.
pub const FADE: Count = Count {
    min: 0,
    max: 1_000_000,
    why: "a fade longer than any training run never reaches its cut",
};
pub const RANK_OR_ZERO: Count = Count {
    min: 0,
    max: 65_536,
    why: "a rank cannot exceed the width of the layer it adapts",
};
pub const BUDGET: Count = Count {
    min: 1,
    max: 67_108_864,
    why: "it is a total of ranks over adapter slots: 1024 layers × 6 kinds × 65,536 at most",
};
pub const PARAM_BUDGET: Count = Count {
    min: 1,
    max: 1 << 40,
    why: "it counts trainable adapter parameters: a trillion is beyond any model adarank loads",
};
pub const LAYER_INDEX: Count = Count {
    min: 0,
    max: 1023,
    why: "a model has at most 1024 layers",
};
pub const STEPS: Count = Count {
    min: 1,
    max: 1_000_000_000,
    why: "a billion optimizer steps is years of training",
};
pub const EPOCHS: Count = Count {
    min: 1,
    max: 1_000_000,
    why: "a million passes over the data is far past any useful training",
};
pub const BATCH: Count = Count {
    min: 1,
    max: 65_536,
    why: "activations grow with the batch; larger effective batches come from `accum`",
};
pub const ACCUM: Count = Count {
    min: 1,
    max: 4096,
    why: "each optimizer step runs `accum` forward and backward passes",
};
/// `batch × accum`: examples per optimizer step.
pub const EXAMPLES_PER_STEP: u64 = 1_048_576;
pub const STEP_COUNT: Count = Count {
    min: 1,
    max: 1_000_000_000,
    why: "it counts optimizer steps; see `train.steps`",
};
pub const WARMUP: Count = Count {
    min: 0,
    max: 1_000_000_000,
    why: "it counts optimizer steps; see `train.steps`",
};
pub const ADALORA_STEPS: Count = Count {
    min: 0,
    max: 1_000_000_000,
    why: "it counts optimizer steps; see `train.steps`",
};

pub const LR: Real = Real {
    min: 0.0,
    open_min: true,
    max: 10.0,
    why: "larger steps overflow the weights to infinity within a few updates",
};
pub const WEIGHT_DECAY: Real = Real {
    min: 0.0,
    open_min: false,
    max: 10.0,
    why: "decoupled decay multiplies every weight by 1 − lr·weight_decay at each step",
};
pub const ALPHA: Real = Real {
    min: 0.0,
    open_min: true,
    max: 100_000.0,
    why: "the adapter's output is scaled by alpha/r; a larger scale overflows activations",
};
pub const GAIN: Real = Real {
    min: 0.0,
    open_min: true,
    max: 10_000.0,
    why:
        "it multiplies AdaLoRA's output scale alpha/init_rank; a larger scale overflows activations",
};
pub const SCALE: Real = Real {
    min: 0.0,
    open_min: false,
    max: 1000.0,
    why: "the planted target grows with scale² and overflows f32 arithmetic far before 1e30",
};
pub const CLIP: Real = Real {
    min: 0.0,
    open_min: true,
    max: 1e12,
    why: "a clip this large clips nothing; write `clip = off`",
};
pub const BETA: Real = Real {
    min: 0.0,
    open_min: false,
    max: 0.999_999,
    why: "a moving average with β = 1 never moves",
};
pub const GATE_LR: Real = Real {
    min: 0.0,
    open_min: true,
    max: 10.0,
    why: "SoRA's gates start at 1; a larger Adam step throws them past 0 in one update",
};
pub const THRESHOLD: Real = Real {
    min: 0.0,
    open_min: false,
    max: 10.0,
    why: "SoRA's gates start at 1, so a threshold above that zeroes every gate at the first step",
};
pub const ORTH_REG: Real = Real {
    min: 0.0,
    open_min: false,
    max: 1000.0,
    why: "the orthogonality penalty would dominate the task loss and overflow it",
};

/// `lr × weight_decay` at or above 1 flips or zeroes every weight at each step.
pub const MAX_LR_TIMES_DECAY: f64 = 1.0;
