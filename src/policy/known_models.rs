//! Shapes of pretrained models the checker knows without loading them, so that budgets and
//! layer indices of `model hf { ... }` policies can be checked statically, and `adarank plan`
//! can cost them without a download.

pub struct KnownModel {
    pub name: &'static str,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub max_positions: usize,
    /// Token-type vocabulary (BERT's segment ids; 0 when the model has none).
    pub type_vocab: usize,
}

const KNOWN: &[KnownModel] = &[
    KnownModel {
        name: "sentence-transformers/all-MiniLM-L6-v2",
        layers: 6,
        hidden: 384,
        heads: 12,
        ffn: 1536,
        vocab: 30522,
        max_positions: 512,
        type_vocab: 2,
    },
    KnownModel {
        name: "sentence-transformers/all-MiniLM-L12-v2",
        layers: 12,
        hidden: 384,
        heads: 12,
        ffn: 1536,
        vocab: 30522,
        max_positions: 512,
        type_vocab: 2,
    },
    KnownModel {
        name: "google/bert_uncased_L-2_H-128_A-2",
        layers: 2,
        hidden: 128,
        heads: 2,
        ffn: 512,
        vocab: 30522,
        max_positions: 512,
        type_vocab: 2,
    },
    KnownModel {
        name: "prajjwal1/bert-tiny",
        layers: 2,
        hidden: 128,
        heads: 2,
        ffn: 512,
        vocab: 30522,
        max_positions: 512,
        type_vocab: 2,
    },
    KnownModel {
        name: "bert-base-uncased",
        layers: 12,
        hidden: 768,
        heads: 12,
        ffn: 3072,
        vocab: 30522,
        max_positions: 512,
        type_vocab: 2,
    },
    KnownModel {
        name: "google-bert/bert-base-uncased",
        layers: 12,
        hidden: 768,
        heads: 12,
        ffn: 3072,
        vocab: 30522,
        max_positions: 512,
        type_vocab: 2,
    },
    KnownModel {
        name: "distilbert-base-uncased",
        layers: 6,
        hidden: 768,
        heads: 12,
        ffn: 3072,
        vocab: 30522,
        max_positions: 512,
        type_vocab: 0,
    },
];

pub fn lookup(name: &str) -> Option<&'static KnownModel> {
    KNOWN.iter().find(|m| m.name == name)
}
