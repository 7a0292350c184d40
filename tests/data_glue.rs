//! GLUE TSV and JSONL loaders on fixtures in the real formats, and their errors.

use adarank::data::{glue, jsonl};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/data")
        .join(name)
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn mnli_train_layout() {
    let ex = glue::load_mnli(&fixture("mnli_train.tsv")).unwrap();
    let labels: Vec<u32> = ex.iter().map(|e| e.label).collect();
    // neutral, entailment, entailment, entailment, contradiction (gold_label, not label1).
    assert_eq!(labels, vec![1, 0, 0, 0, 2]);
    assert_eq!(
        ex[0].text_a,
        "Conceptually cream skimming has two basic dimensions - product and geography."
    );
    assert_eq!(
        ex[0].text_b.as_deref(),
        Some("Product and geography are what make cream skimming work. ")
    );
    assert_eq!(ex[4].line, 6);
}

#[test]
fn mnli_dev_layout_skips_no_consensus() {
    let ex = glue::load_mnli(&fixture("mnli_dev_matched.tsv")).unwrap();
    // The fourth row has gold_label "-" and is dropped.
    assert_eq!(
        ex.iter().map(|e| e.label).collect::<Vec<_>>(),
        vec![1, 2, 0]
    );
    assert_eq!(ex[2].line, 4);
}

#[test]
fn mnli_errors_name_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(fixture("mnli_train.tsv")).unwrap();
    let mut lines: Vec<String> = good.lines().map(str::to_string).collect();
    lines[3] = lines[3].replacen('\t', " ", 1);
    let p = write(&d, "short.tsv", &lines.join("\n"));
    let e = glue::load_mnli(&p).unwrap_err().to_string();
    assert!(
        e.contains("short.tsv:4:") && e.contains("11 tab-separated fields"),
        "{e}"
    );

    let p = write(
        &d,
        "lbl.tsv",
        &good.replace("\tcontradiction\n", "\tcontradicts\n"),
    );
    let e = glue::load_mnli(&p).unwrap_err().to_string();
    assert!(
        e.contains("lbl.tsv:6:") && e.contains("\"contradicts\""),
        "{e}"
    );

    let p = write(&d, "test.tsv", "index\tsentence1\tsentence2\n0\ta\tb\n");
    let e = glue::load_mnli(&p).unwrap_err().to_string();
    assert!(e.contains("test.tsv:1:") && e.contains("gold_label"), "{e}");
}

#[test]
fn sst2_with_crlf_and_errors() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "ok.tsv",
        "sentence\tlabel\r\nit 's a charming journey . \t1\r\nflat\t0\r\n",
    );
    let ex = glue::load_sst2(&p).unwrap();
    assert_eq!(ex.len(), 2);
    assert_eq!(
        (ex[0].text_a.as_str(), ex[0].label),
        ("it 's a charming journey . ", 1)
    );
    assert_eq!((ex[1].label, ex[1].line), (0, 3));

    let p = write(&d, "bad.tsv", "sentence\tlabel\nfine\t1\nodd\tpositive\n");
    let e = glue::load_sst2(&p).unwrap_err().to_string();
    assert!(
        e.contains("bad.tsv:3:") && e.contains("\"positive\""),
        "{e}"
    );

    let p = write(&d, "test.tsv", "index\tsentence\n0\tsome text\n");
    let e = glue::load_sst2(&p).unwrap_err().to_string();
    assert!(e.contains("no `label` column"), "{e}");
}

#[test]
fn jsonl_records_and_errors() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "ok.jsonl",
        "{\"text\": \"good\", \"label\": 1}\n\n{\"text\": \"a\", \"text_pair\": \"b\", \"label\": 2}\n",
    );
    let ex = jsonl::load(&p).unwrap();
    assert_eq!(ex.len(), 2);
    assert_eq!(
        (ex[1].text_b.as_deref(), ex[1].label, ex[1].line),
        (Some("b"), 2, 3)
    );

    for (body, want) in [
        (
            "{\"text\": \"x\", \"label\": 1}\n{\"text\": \"y\", \"label\": -1}\n",
            ":2: \"label\" is -1",
        ),
        ("{\"text\": \"x\"}\n", ":1: missing \"label\""),
        (
            "{\"label\": 0, \"text\": 3}\n",
            ":1: \"text\" must be a string",
        ),
        ("{\"text\": \"x\", \"label\": 0\n", ":1: invalid JSON"),
        ("[1, 2]\n", ":1: expected an object"),
    ] {
        let p = write(&d, "bad.jsonl", body);
        let e = jsonl::load(&p).unwrap_err().to_string();
        assert!(e.contains(&format!("bad.jsonl{want}")), "{e} (want {want})");
    }
}

/// Class names number the classes in sorted order, whatever order the file lists them in (so
/// two files with the same classes agree), and the held-out file is read against the training
/// file's names. The oracle is the sorted list written out by hand.
#[test]
fn jsonl_class_names_number_in_sorted_order() {
    let d = tempfile::tempdir().unwrap();
    let train = write(
        &d,
        "train.jsonl",
        "{\"text\": \"a\", \"label\": \"neutral\"}\n{\"text\": \"b\", \"label\": \"positive\"}\n\
         {\"text\": \"c\", \"label\": \"contradiction\"}\n{\"text\": \"d\", \"label\": \"neutral\"}\n",
    );
    let dev = write(
        &d,
        "dev.jsonl",
        "{\"text\": \"e\", \"label\": \"positive\"}\n{\"text\": \"f\", \"label\": \"contradiction\"}\n",
    );
    let (tr, ev, names) = jsonl::load_pair(&train, &dev).unwrap();
    // "contradiction" < "neutral" < "positive".
    assert_eq!(
        names.as_deref(),
        Some(
            &[
                "contradiction".to_string(),
                "neutral".into(),
                "positive".into()
            ][..]
        )
    );
    assert_eq!(tr.iter().map(|e| e.label).collect::<Vec<_>>(), [1, 2, 0, 1]);
    assert_eq!(ev.iter().map(|e| e.label).collect::<Vec<_>>(), [2, 0]);
    // Indices stay indices; `load` (indices only) names a file of names at its first line.
    let idx = write(&d, "idx.jsonl", "{\"text\": \"a\", \"label\": 1}\n");
    assert_eq!(jsonl::load_pair(&idx, &idx).unwrap().2, None);
    let e = jsonl::load(&train).unwrap_err().to_string();
    assert!(
        e.contains("train.jsonl:1: \"label\" names a class (\"neutral\")"),
        "{e}"
    );
}
