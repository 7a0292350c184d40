//! No input makes the parser, checker or formatter panic: arbitrary strings, and valid files
//! with bytes and tokens mutated. Bounded case counts keep this to seconds.

use adarank::policy;
use proptest::prelude::*;
use std::path::Path;

const SEED_FILES: &[&str] = &[
    include_str!("fixtures/policy/valid/small.rank"),
    include_str!("fixtures/policy/valid/everything.rank"),
    include_str!("../examples/quickstart.rank"),
];

/// Fragments a mutation may splice in: tokens of the language and near-misses.
const FRAGMENTS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    "=",
    ",",
    ".",
    "#",
    "\"",
    "\\",
    "\n",
    " ",
    "-",
    "0",
    "1e999",
    "2k",
    "-3",
    "1.5M",
    "phase",
    "arm",
    "until",
    "every",
    "plugin",
    "baseline",
    "ablation",
    "step",
    "epoch",
    "off",
    "none",
    "lora",
    "model",
    "train",
    "adalora",
    "data",
    "steps",
    "rank",
    "budget",
    "q",
    "0.q",
    "99.v",
    "reallocate",
    "<=",
    "é",
    "\u{0}",
    "\t",
    "18446744073709551616",
];

fn check_no_panic(src: &str) {
    let _ = policy::load_str(
        src,
        "fuzz.rank",
        Path::new("tests/fixtures/policy/valid"),
        &[],
    );
    if let Ok(out) = policy::format(src) {
        // Whatever formats, formats to a fixed point with the same meaning.
        let again = policy::format(&out).expect("formatted text parses");
        assert_eq!(out, again);
        assert_eq!(
            policy::parse(src, "a").expect("parsed before"),
            policy::parse(&out, "b").expect("parses after")
        );
    }
}

#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, usize),
    Replace(usize, usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1usize..12).prop_map(|(a, n)| Edit::Delete(a, n)),
        (any::<usize>(), 0..FRAGMENTS.len()).prop_map(|(a, f)| Edit::Insert(a, f)),
        (any::<usize>(), 1usize..8, 0..FRAGMENTS.len())
            .prop_map(|(a, n, f)| Edit::Replace(a, n, f)),
    ]
}

fn apply(src: &str, edits: &[Edit]) -> String {
    let mut s: Vec<char> = src.chars().collect();
    for e in edits {
        let len = s.len().max(1);
        match *e {
            Edit::Delete(at, n) => {
                let at = at % len;
                let end = (at + n).min(s.len());
                s.drain(at.min(s.len())..end);
            }
            Edit::Insert(at, f) => {
                let at = at % (s.len() + 1);
                s.splice(at..at, FRAGMENTS[f].chars());
            }
            Edit::Replace(at, n, f) => {
                let at = (at % len).min(s.len());
                let end = (at + n).min(s.len());
                s.splice(at..end, FRAGMENTS[f].chars());
            }
        }
    }
    s.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_panic(src in "\\PC{0,200}") {
        check_no_panic(&src);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        check_no_panic(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mutated_valid_files_never_panic(
        file in 0..SEED_FILES.len(),
        edits in proptest::collection::vec(edit(), 1..4),
    ) {
        check_no_panic(&apply(SEED_FILES[file], &edits));
    }

    #[test]
    fn arbitrary_overrides_never_panic(ov in "[a-z_.]{0,12}=?[\\PC]{0,20}") {
        let _ = policy::load_str(SEED_FILES[0], "small.rank", Path::new("tests/fixtures/policy/valid"), &[ov]);
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let src = format!(
        "experiment x {{ seeds = {}1{} }}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let err = policy::load_str(&src, "deep.rank", Path::new("."), &[]).unwrap_err();
    assert!(
        err.to_string().contains("nested more than 64 levels"),
        "{err}"
    );
    assert!(policy::format(&src).is_err());
}

#[test]
fn long_flat_files_are_fine() {
    let body: String = (0..2000)
        .map(|i| format!("  arm a{i} {{ train.lr = 1e-3 }}\n"))
        .collect();
    let src = format!(
        "experiment big {{\n  model encoder {{ layers = 1, hidden = 8, heads = 2 }}\n  data planted {{ ranks = [1] }}\n  train {{ steps = 10 }}\n{body}}}\n"
    );
    let p = policy::load_str(&src, "big.rank", Path::new("."), &[]).unwrap();
    assert_eq!(p.arms.len(), 2001);
}
