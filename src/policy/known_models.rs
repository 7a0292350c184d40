//! Shapes of pretrained models the checker knows without loading them, so that budgets and
//! layer indices of `model hf { ... }` policies can be checked statically.

pub struct KnownModel {
    pub name: &'static str,
    pub layers: usize,
    pub hidden: usize,
    /// Width of the feed-forward layer (4 × hidden for every model listed).
    pub ffn: usize,
    pub vocab: usize,
    pub max_positions: usize,
}

const KNOWN: &[KnownModel] = &[
    KnownModel {
        name: "sentence-transformers/all-MiniLM-L6-v2",
        layers: 6,
        hidden: 384,
        ffn: 1536,
        vocab: 30522,
        max_positions: 512,
    },
    KnownModel {
        name: "sentence-transformers/all-MiniLM-L12-v2",
        layers: 12,
        hidden: 384,
        ffn: 1536,
        vocab: 30522,
        max_positions: 512,
    },
    KnownModel {
        name: "google/bert_uncased_L-2_H-128_A-2",
        layers: 2,
        hidden: 128,
        ffn: 512,
        vocab: 30522,
        max_positions: 512,
    },
    KnownModel {
        name: "prajjwal1/bert-tiny",
        layers: 2,
        hidden: 128,
        ffn: 512,
        vocab: 30522,
        max_positions: 512,
    },
    KnownModel {
        name: "bert-base-uncased",
        layers: 12,
        hidden: 768,
        ffn: 3072,
        vocab: 30522,
        max_positions: 512,
    },
    KnownModel {
        name: "google-bert/bert-base-uncased",
        layers: 12,
        hidden: 768,
        ffn: 3072,
        vocab: 30522,
        max_positions: 512,
    },
    KnownModel {
        name: "distilbert-base-uncased",
        layers: 6,
        hidden: 768,
        ffn: 3072,
        vocab: 30522,
        max_positions: 512,
    },
];

pub fn lookup(name: &str) -> Option<&'static KnownModel> {
    KNOWN.iter().find(|m| m.name == name)
}
