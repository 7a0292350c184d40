//! Causal-LM metrics against independent oracles: perplexity of a real decoder whose logits
//! are uniform (closed form: the vocabulary size), token weighting (closed form), label
//! accuracy against a brute-force arg-max over each example's own logits, and exact match.

use adarank::backend::cpu::Cpu;
use adarank::data::lm::{
    AsGeneration, Encoder, Label, Labelled, LmData, LmEvalSet, LmMetric, LmSettings, LmTask,
    Truncation,
};
use adarank::data::pretrained::LmTokenizer;
use adarank::model::{
    random_weights, Batch, EvalOut, Flavour, Head, HostWeights, Init, Model, ModelConfig, TrainMode,
};
use adarank::train::lm_eval::{evaluate_lm, perplexity, LmScorer};
use adarank::train::Task;
use std::path::Path;
use std::sync::Arc;

fn tokenizer() -> LmTokenizer {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lmdata/tokenizer.json");
    LmTokenizer {
        inner: tokenizers::Tokenizer::from_file(p).unwrap(),
        bos: Some(1),
        eos: 2,
        pad: 2,
        add_bos: false,
        chat_template: None,
    }
}

fn config(vocab: usize) -> ModelConfig {
    ModelConfig {
        flavour: Flavour::Decoder,
        vocab,
        max_positions: 64,
        type_vocab: 1,
        hidden: 16,
        layers: 1,
        heads: 2,
        ffn: 32,
        ln_eps: 1e-5,
        llama: None,
    }
}

fn eval_set(metric: LmMetric, label_first: Vec<u32>, classes: Vec<u32>) -> LmEvalSet {
    LmEvalSet {
        metric,
        answer_rows: Vec::new(),
        classes,
        label_first,
        prompts: Vec::new(),
        max_new: 8,
        tokenizer: Arc::new(tokenizer()),
    }
}

/// Labelled movie-like sentences as prompt + label word, tokenized with the fixture tokenizer.
fn labelled(n: usize) -> (Vec<Labelled>, AsGeneration) {
    let words = [
        "gorgeous", "dull", "witty", "lifeless", "quiet", "mess", "triumph", "film",
    ];
    let data = (0..n)
        .map(|i| Labelled {
            line: i + 1,
            text: (0..1 + i % 5)
                .map(|k| words[(i * 3 + k) % words.len()])
                .collect::<Vec<_>>()
                .join(" "),
            text_pair: None,
            label: Label::Index((i % 2) as u32),
        })
        .collect();
    let g = AsGeneration {
        prompt: "Review: {text}\nSentiment:".into(),
        labels: vec![" negative".into(), " positive".into()],
    };
    (data, g)
}

fn task(vocab: usize, set: LmEvalSet, n: usize) -> LmTask {
    let tok = tokenizer();
    let enc = Encoder::new(
        &tok,
        LmSettings {
            max_len: 64,
            truncation: Truncation::Left,
        },
    );
    let (data, g) = labelled(n);
    let (exs, classes) = g.examples(&enc, &data).unwrap();
    let mut set = set;
    if !set.label_first.is_empty() {
        set.classes = classes;
    }
    let refs = g.labels.iter().cycle().take(exs.len()).cloned().collect();
    LmTask::new(
        "toy",
        config(vocab),
        Arc::new(HostWeights::new()),
        LmData::new(exs.clone(), tok.pad).unwrap(),
        LmData::new(exs, tok.pad).unwrap(),
        set,
        refs,
        7,
    )
    .unwrap()
}

#[test]
fn uniform_logits_have_the_vocabulary_as_perplexity() {
    // A real decoder whose (tied) word embeddings are zero has logits 0 for every token at
    // every position: each target costs ln V, and the perplexity is V exactly.
    let vocab = 600;
    let cfg = config(vocab);
    let mut w = random_weights(&cfg, &Head::LanguageModel, Init::Bert, 3);
    let we = w.get_mut("embeddings.word_embeddings.weight").unwrap();
    we.data.iter_mut().for_each(|x| *x = 0.0);
    let be = Arc::new(Cpu::new());
    let mut model = Model::new(be, cfg, Head::LanguageModel, TrainMode::Full, Some(&w), 0).unwrap();
    let t = task(vocab, eval_set(LmMetric::Perplexity, vec![], vec![]), 13);
    assert!(
        t.eval_batches().len() >= 2,
        "padding across several batches"
    );
    let s = evaluate_lm(&mut model, t.eval_batches(), &t.eval_set).unwrap();
    assert_eq!(s.out.count, t.eval_data.target_tokens());
    assert!(
        (s.perplexity() - vocab as f64).abs() < 1e-3 * vocab as f64,
        "{}",
        s.perplexity()
    );
    assert!((s.eval_loss() - (vocab as f64).ln()).abs() < 1e-4);
    // The training loop's evaluation reports the same through the task.
    let e = adarank::train::evaluate(&mut model, &t, 5).unwrap();
    assert!((e.named["perplexity"] - vocab as f64).abs() < 1e-3 * vocab as f64);
    assert_eq!(e.loss, s.eval_loss());
}

/// A causal stand-in: the logits at a position are a hash of the tokens up to it, so they do
/// not depend on padding or on what follows, as a decoder's do.
struct HashLm {
    vocab: usize,
    /// Loss and target count each `eval_batch` returns, in turn (token weighting test).
    losses: Vec<(f64, usize)>,
    /// Answers `greedy` gives, by prompt.
    answers: Vec<(Vec<u32>, Vec<u32>)>,
}

fn hash_logits(prefix: &[u32], vocab: usize) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &t in prefix {
        h = (h ^ t as u64).wrapping_mul(0x100_0000_01b3);
    }
    (0..vocab)
        .map(|v| {
            let x = (h ^ (v as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
                .wrapping_mul(0xBF58_476D_1CE4_E5B9);
            (x >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

impl LmScorer for HashLm {
    fn vocab(&self) -> usize {
        self.vocab
    }
    fn eval_batch(&mut self, _b: &Batch) -> anyhow::Result<EvalOut> {
        let (loss_sum, count) = if self.losses.is_empty() {
            (0.0, 1)
        } else {
            self.losses.remove(0)
        };
        Ok(EvalOut {
            loss_sum,
            count,
            ..EvalOut::default()
        })
    }
    fn logits_at(&mut self, b: &Batch, rows: &[usize]) -> anyhow::Result<Vec<f32>> {
        Ok(rows
            .iter()
            .flat_map(|&r| {
                let (s, t) = (r / b.seq, r % b.seq);
                hash_logits(&b.ids[s * b.seq..=s * b.seq + t], self.vocab)
            })
            .collect())
    }
    fn greedy(
        &mut self,
        prompt: &[u32],
        _max_new: usize,
        _stop: &[u32],
    ) -> anyhow::Result<Vec<u32>> {
        Ok(self
            .answers
            .iter()
            .find(|(p, _)| p == prompt)
            .map(|(_, a)| a.clone())
            .unwrap_or_default())
    }
}

#[test]
fn perplexity_weights_every_token_alike() {
    // Batch 1: one target with loss 4; batch 2: three targets with loss 0. Token-weighted:
    // exp(4 / 4) = e; the mean of batch means would give exp(2).
    let mut m = HashLm {
        vocab: 600,
        losses: vec![(4.0, 1), (0.0, 3)],
        answers: vec![],
    };
    let t = task(600, eval_set(LmMetric::Perplexity, vec![], vec![]), 9);
    assert_eq!(t.eval_batches().len(), 2);
    let s = evaluate_lm(&mut m, t.eval_batches(), &t.eval_set).unwrap();
    assert!((s.perplexity() - std::f64::consts::E).abs() < 1e-12);
    assert_eq!(perplexity(0.0, 0), 1.0);
}

#[test]
fn label_accuracy_is_the_argmax_over_label_words_at_the_answer() {
    let tok = tokenizer();
    let first = |w: &str| tok.inner.encode(w, false).unwrap().get_ids()[0];
    let label_first = vec![first(" negative"), first(" positive")];
    let t = task(
        600,
        eval_set(LmMetric::Accuracy, label_first.clone(), vec![]),
        21,
    );
    let mut m = HashLm {
        vocab: 600,
        losses: vec![],
        answers: vec![],
    };
    let s = evaluate_lm(&mut m, t.eval_batches(), &t.eval_set).unwrap();
    // Brute force, example by example, unpadded: the full logits at the last prompt token,
    // arg-max over the two label words' first tokens.
    let mut right = 0;
    for (i, ex) in t.eval_data.examples.iter().enumerate() {
        let at = ex.answer_at.unwrap();
        assert_eq!(ex.ids[at + 1], label_first[t.eval_set.classes[i] as usize]);
        let logits = hash_logits(&ex.ids[..=at], 600);
        let (n, p) = (
            logits[label_first[0] as usize],
            logits[label_first[1] as usize],
        );
        let pred = if p > n { 1 } else { 0 };
        assert_eq!(s.preds[i], pred, "example {i}");
        right += (pred == t.eval_set.classes[i]) as usize;
    }
    let acc = right as f64 / t.eval_data.len() as f64;
    assert_eq!(s.accuracy, Some(acc));
    assert!(
        acc > 0.0 && acc < 1.0,
        "a test that can fail both ways: {acc}"
    );
    assert_eq!(s.named()["accuracy"], acc);
}

#[test]
fn exact_match_compares_decoded_stripped_answers() {
    let tok = tokenizer();
    let t = task(600, eval_set(LmMetric::ExactMatch, vec![], vec![]), 6);
    let prompts = &t.eval_set.prompts;
    assert_eq!(prompts.len(), 6);
    // The stand-in answers the reference (then EOS) for the first four prompts, the wrong
    // label word for the others.
    let answers = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let text = if i < 4 {
                p.reference.clone()
            } else if p.reference == " positive" {
                " negative".into()
            } else {
                " positive".into()
            };
            let mut ids = tok
                .inner
                .encode(text.as_str(), false)
                .unwrap()
                .get_ids()
                .to_vec();
            ids.push(tok.eos);
            (p.ids.clone(), ids)
        })
        .collect();
    let mut m = HashLm {
        vocab: 600,
        losses: vec![],
        answers,
    };
    let s = evaluate_lm(&mut m, t.eval_batches(), &t.eval_set).unwrap();
    assert_eq!(s.exact_match, Some(4.0 / 6.0));
    assert_eq!(s.metric(LmMetric::ExactMatch), Some(4.0 / 6.0));
    // Each prompt ends at the answer position: what follows in the example is the label word.
    for (p, ex) in prompts.iter().zip(&t.eval_data.examples) {
        assert_eq!(p.ids[..], ex.ids[..=ex.answer_at.unwrap()]);
    }
}
