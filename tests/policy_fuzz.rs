//! No input makes the parser, checker or formatter panic: arbitrary strings, and valid files
//! with bytes and tokens mutated. Bounded case counts keep this to seconds.

use adarank::policy;
use proptest::prelude::*;
use std::collections::BTreeMap;
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

/// Fragments of hostile values: sizes far past every limit, NaN-prone rates, odd numerals.
const HOSTILE: &[&str] = &[
    "4294967296",
    "1e12",
    "1e308",
    "1e999",
    "-1e999",
    "1M",
    "1.5M",
    "0",
    "-0",
    "1e-320",
    "9007199254740993",
    "18446744073709551615",
    "0.5",
    "65536",
    "65537",
    "1000000001",
    "100%",
    "0%",
    "hidden",
    "max_positions",
    "seq",
    "accum",
    "batch",
    "eval_samples",
    "scale",
    "alpha",
    "weight_decay",
    "lr",
    "clip",
];

/// A checked plan respects every limit the run relies on (an independent restatement of
/// docs/language.md#limits, not the checker's own code).
fn assert_within_limits(p: &policy::Policy) {
    use policy::{DataSpec, ModelSpec};
    for a in &p.arms {
        if let ModelSpec::Encoder(t) | ModelSpec::Decoder(t) = &a.model {
            assert!(
                (1..=1024).contains(&t.layers),
                "{}: layers {}",
                a.name,
                t.layers
            );
            assert!((1..=65_536).contains(&t.hidden), "hidden {}", t.hidden);
            assert!(t.hidden % t.heads == 0);
            assert!((1..=262_144).contains(&t.ffn), "ffn {}", t.ffn);
            assert!((2..=1_048_576).contains(&t.vocab), "vocab {}", t.vocab);
            if let DataSpec::Planted { seq, .. } | DataSpec::Synthetic { seq, .. } = &a.data {
                assert!(*seq <= t.max_positions, "seq {seq} > {}", t.max_positions);
            }
        }
        match &a.data {
            DataSpec::Planted {
                eval_samples,
                scale,
                ..
            } => {
                assert!(*eval_samples <= 100_000);
                assert!(scale.is_finite() && *scale <= 1000.0);
            }
            DataSpec::Synthetic { eval_samples, .. } => assert!(*eval_samples <= 100_000),
            _ => {}
        }
        let t = &a.train;
        assert!(t.lr > 0.0 && t.lr <= 10.0, "lr {}", t.lr);
        assert!(t.weight_decay.is_finite() && t.lr * t.weight_decay < 1.0);
        assert!(t.batch <= 65_536 && t.accum <= 4096 && t.batch * t.accum <= 1 << 20);
        assert!(t.steps().is_none_or(|s| s <= 1_000_000_000));
        if let Some(l) = a.lora.on() {
            assert!(l.alpha.is_finite() && l.alpha > 0.0 && l.alpha <= 1e5);
            assert!(l.min_rank <= l.init_rank && l.init_rank <= l.max_rank);
        }
    }
}

fn hostile_edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        edit(),
        // Replace a number-sized stretch with a hostile value (index into HOSTILE past FRAGMENTS).
        (any::<usize>(), 1usize..6, 0..HOSTILE.len()).prop_map(|(a, n, f)| Edit::Replace(
            a,
            n,
            FRAGMENTS.len() + f
        )),
    ]
}

fn apply_hostile(src: &str, edits: &[Edit]) -> String {
    let all: Vec<&str> = FRAGMENTS.iter().chain(HOSTILE).copied().collect();
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
                s.splice(at..at, all[f].chars());
            }
            Edit::Replace(at, n, f) => {
                let at = (at % len).min(s.len());
                let end = (at + n).min(s.len());
                s.splice(at..end, all[f].chars());
            }
        }
    }
    s.into_iter().collect()
}

/// 100,000 mutated policies (hostile values spliced into valid files): none panics, and every
/// one the checker accepts stays inside the limits. Minutes, not for CI:
/// `cargo test --release --test policy_fuzz -- --ignored hostile`.
#[test]
#[ignore]
fn hostile_mutations_100k_never_panic_and_accepted_plans_stay_in_limits() {
    use proptest::test_runner::{Config, TestRunner};
    let no_plugins = policy::LoadOptions {
        check_plugins: false,
    };
    let mut runner = TestRunner::new(Config {
        cases: 100_000,
        failure_persistence: None,
        ..Config::default()
    });
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    let strategy = (
        0..SEED_FILES.len(),
        proptest::collection::vec(hostile_edit(), 1..5),
    );
    runner
        .run(&strategy, |(file, edits)| {
            let src = apply_hostile(SEED_FILES[file], &edits);
            if let Ok(p) = policy::load_with(
                &src,
                "fuzz.rank",
                Path::new("tests/fixtures/policy/valid"),
                &[],
                &no_plugins,
            ) {
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                assert_within_limits(&p);
            }
            if let Ok(out) = policy::format(&src) {
                prop_assert_eq!(policy::format(&out).expect("formatted text parses"), out);
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "100000 cases, {} accepted by the checker, 0 failures",
        accepted.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// Exit status (or the signal that ended it), peak resident memory in bytes (`wait4`, the
/// kernel's own accounting of the child) and stderr of one `adarank` child, killed at `limit`.
fn run_measured(args: &[String], limit: std::time::Duration) -> (Result<i32, i32>, u64, String) {
    use std::process::{Command, Stdio};
    let err = tempfile::NamedTempFile::new().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_adarank"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err.reopen().unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let t0 = std::time::Instant::now();
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    loop {
        // SAFETY: a plain syscall on our own child with valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        assert_eq!(r, 0, "wait4 failed");
        if t0.elapsed() > limit {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::mem::forget(child); // reaped by wait4
    let code = if libc::WIFEXITED(status) {
        Ok(libc::WEXITSTATUS(status))
    } else {
        Err(libc::WTERMSIG(status))
    };
    let stderr = std::fs::read_to_string(err.path()).unwrap_or_default();
    (code, usage.ru_maxrss as u64 * 1024, stderr)
}

/// A one-step run of `src` (written to `dir/NAME.rank` beside the fixtures' plugins), its first
/// arm and seed only, stopped after its first optimizer step as if killed (the policy's own
/// schedule is kept: its phase bounds may not shrink to one step): exit status, peak RSS and
/// stderr.
fn one_step(
    dir: &Path,
    name: &str,
    src: &str,
    arm: &str,
    seed: u64,
) -> (Result<i32, i32>, u64, String) {
    let file = dir.join("valid").join(format!("{name}.rank"));
    std::fs::write(&file, src).unwrap();
    let out = dir.join(format!("run-{name}"));
    let args: Vec<String> = [
        "run",
        file.to_str().unwrap(),
        "--device",
        "cpu",
        "--quiet",
        "--stop-after-steps",
        "1",
        "--arm",
        arm,
        "--seed",
        &seed.to_string(),
        "--out",
        out.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    run_measured(&args, std::time::Duration::from_secs(60))
}

/// The property the hostile corpus samples: a policy the checker accepts (the hostile mutations
/// above, with plugins) runs — here one step of its first cell in a real `adarank run` child —
/// without a panic (exit 101) or an abort (134, or any signal), and within the pre-flight's memory
/// estimate: the process's peak RSS at most 10% above the plan's process peak (the ledger's
/// peak and the named host terms: the planted teacher, the task's base weights, ΔW, held-out set
/// and batch) over a minimal run's (the binary, its threads and the plugin engine, which no
/// estimate of a cell counts). `ADARANK_FUZZ_VERBOSE=1` prints every policy's figures. Exit 2 is the stop after one step (or a failure while running). Cells the plan puts
/// above 256 MiB or 5 GFLOP a step, or with more than 2048 held-out examples, are left out so
/// the test stays near a minute; 24 policies, drawn deterministically.
#[test]
fn accepted_policies_run_a_step_without_abort_within_the_memory_estimate() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policy");
    std::fs::create_dir(tmp.path().join("valid")).unwrap();
    symlink(fixtures.join("plugins"), tmp.path().join("plugins")).unwrap();
    let valid = tmp.path().join("valid");
    let device = adarank::experiment::costs::DeviceSpec::memory_only(f64::MAX, "");

    // The floor: a one-layer, eight-wide model whose estimate is a few kilobytes.
    let tiny = "experiment tiny {\n  model encoder { layers = 1, hidden = 8, heads = 2, ffn = 8, vocab = 16, max_positions = 8 }\n  data planted { ranks = [1], samples = 64, eval_samples = 16, seq = 4 }\n  lora { targets = [q], init_rank = 1, max_rank = 2 }\n  train { steps = 2, batch = 2 }\n  seeds = [1]\n}\n";
    let tiny_arm = policy::load_str(tiny, "tiny.rank", &valid, &[])
        .unwrap()
        .arms[0]
        .name
        .clone();
    let (code, floor, err) = one_step(tmp.path(), "tiny", tiny, &tiny_arm, 1);
    assert_eq!(code, Ok(2), "{err}");

    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let strategy = (
        0..SEED_FILES.len(),
        proptest::collection::vec(hostile_edit(), 1..4),
    );
    let (mut ran, mut tried, mut exits) = (0, 0, BTreeMap::<String, usize>::new());
    let mut failures = Vec::new();
    // Largest (RSS over the floor) − 1.1 × estimate, MiB: the slack the bound leaves.
    let mut worst = f64::NEG_INFINITY;
    while ran < 24 && tried < 20_000 {
        tried += 1;
        let (file, edits) = strategy.new_tree(&mut runner).unwrap().current();
        let src = apply_hostile(SEED_FILES[file], &edits);
        let Ok(p) = policy::load_str(&src, "fuzz.rank", &valid, &[]) else {
            continue;
        };
        let arm = &p.arms[0];
        let Ok(c) = adarank::experiment::costs::arm_costs(&p, &arm.name, &device) else {
            continue;
        };
        let eval_samples = match &arm.data {
            policy::DataSpec::Planted { eval_samples, .. }
            | policy::DataSpec::Synthetic { eval_samples, .. } => *eval_samples,
            _ => usize::MAX,
        };
        let estimate = c.memory.process;
        if estimate > 256.0 * (1 << 20) as f64
            || c.flops_per_step_peak.total() > 5e9
            || eval_samples > 2048
        {
            continue;
        }
        let name = format!("fuzz{ran}");
        let (code, rss, stderr) = one_step(tmp.path(), &name, &src, &arm.name, p.seeds[0]);
        ran += 1;
        let key = match code {
            Ok(2) if stderr.contains("run stopped on request") => "stopped after a step".into(),
            Ok(c) => format!("exit {c}"),
            Err(s) => format!("signal {s}"),
        };
        *exits.entry(key.clone()).or_default() += 1;
        let over_rss = rss as f64 - floor as f64;
        if std::env::var_os("ADARANK_FUZZ_VERBOSE").is_some() {
            eprintln!(
                "{name}: {key}; RSS over the floor {:.2} MiB, estimate {:.2} MiB (ledger {}; \
                 host {}), shape {}",
                over_rss / (1 << 20) as f64,
                estimate / (1 << 20) as f64,
                serde_json::to_string(&c.memory.peak).unwrap_or_default(),
                serde_json::to_string(&c.memory.host).unwrap_or_default(),
                serde_json::to_string(&c.shape).unwrap_or_default()
            );
        }
        worst = worst.max(over_rss / (1 << 20) as f64 - 1.1 * estimate / (1 << 20) as f64);
        let mut why = Vec::new();
        if !matches!(code, Ok(0..=2)) || stderr.contains("panicked") {
            why.push(key);
        }
        if over_rss > 1.1 * estimate {
            why.push(format!(
                "peak RSS {:.1} MiB over the floor, estimate {:.1} MiB",
                over_rss / (1 << 20) as f64,
                estimate / (1 << 20) as f64
            ));
        }
        if !why.is_empty() {
            failures.push(format!("{}\n{src}\n{}", why.join("; "), stderr.trim()));
        }
    }
    eprintln!(
        "{ran} accepted policies run one step ({tried} drawn): {exits:?}; floor RSS {:.1} MiB; \
         largest RSS over the floor beyond 1.1 × the estimate: {worst:+.1} MiB (0 allowed)",
        floor as f64 / (1 << 20) as f64
    );
    assert!(ran >= 20, "only {ran} runnable policies in {tried}");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
