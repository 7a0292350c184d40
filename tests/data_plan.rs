//! From policy text to checkpoint and task: examples/movie_sentiment.rank and a JSONL policy.
//! Needs the assets.

use adarank::data::prepare;
use adarank::model::{Head, Pooling, Target};
use adarank::testkit;
use adarank::train::Task;
use std::path::Path;

#[test]
fn movie_sentiment_example_builds_its_task() {
    if !testkit::require_assets("movie_sentiment_example_builds_its_task") {
        return;
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/movie_sentiment.rank");
    let src = std::fs::read_to_string(&path).unwrap();
    // The plugins it names are the shipped ones; their contents do not change the data or the model.
    let opts = adarank::policy::LoadOptions {
        check_plugins: false,
    };
    let policy = adarank::policy::load_with(
        &src,
        "movie_sentiment.rank",
        path.parent().unwrap(),
        &[],
        &opts,
    )
    .unwrap_or_else(|d| panic!("{d}"));
    let names: Vec<&str> = policy.arms.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["adaptive", "lora_fixed", "layerwise", "full_ft"]);
    let arm = &policy.arms[0];
    let mut ck = prepare::load_model(&arm.model)
        .unwrap()
        .expect("a pretrained model");
    let mut task = prepare::classify_task(
        &arm.data,
        &mut ck,
        arm.train.max_len,
        1,
        prepare::Split::Dev,
    )
    .unwrap()
    .expect("a classification task");
    assert_eq!(ck.tokenizer.max_len(), 64);
    assert_eq!(task.train_data().len(), 8454);
    assert_eq!(task.eval_data().len(), 512);
    assert_eq!(
        task.head(),
        Head::Classify {
            classes: 2,
            pooling: Pooling::Mean
        }
    );
    let b = task.train_batch(3, 16).unwrap();
    assert_eq!(b, task.train_batch(3, 16).unwrap());
    assert!(b.seq <= 64 && b.batch == 16);
    assert!(matches!(b.target, Target::Classes(ref y) if y.len() == 16));
}

#[test]
fn jsonl_policy_builds_a_three_class_task() {
    if !testkit::require_assets("jsonl_policy_builds_a_three_class_task") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let rows = |n: usize| -> String {
        (0..n)
            .map(|i| {
                format!(
                    "{{\"text\": \"sentence {i}\", \"text_pair\": \"other\", \"label\": {}}}\n",
                    i % 3
                )
            })
            .collect()
    };
    std::fs::write(d.path().join("train.jsonl"), rows(30)).unwrap();
    std::fs::write(d.path().join("dev.jsonl"), rows(9)).unwrap();
    let src = r#"experiment j {
  model hf { name = "sentence-transformers/all-MiniLM-L6-v2", pooling = cls }
  data jsonl { train = "train.jsonl", dev = "dev.jsonl", train_samples = 12, max_len = 16 }
  lora = off
  train { steps = 1, batch = 4 }
}"#;
    let policy =
        adarank::policy::load_str(src, "j.rank", d.path(), &[]).unwrap_or_else(|e| panic!("{e}"));
    let arm = &policy.arms[0];
    let mut ck = prepare::load_model(&arm.model).unwrap().unwrap();
    let task = prepare::classify_task(
        &arm.data,
        &mut ck,
        arm.train.max_len,
        0,
        prepare::Split::Test,
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        task.head(),
        Head::Classify {
            classes: 3,
            pooling: Pooling::Cls
        }
    );
    assert_eq!((task.train_data().len(), task.eval_data().len()), (12, 9));
    // [CLS] sentence N [SEP] other [SEP] with a one-piece number: 6 tokens, type ids 0 0 0 0 1 1.
    assert_eq!(
        task.eval_data().row(0).unwrap().type_ids,
        vec![0, 0, 0, 0, 1, 1]
    );
}
