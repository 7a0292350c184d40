//! What `check` accepts, runs: every pairing of four models (a random encoder, a random GPT-style
//! decoder, the tiny Llama folder with a chat template, the tiny GGUF without one) with twelve
//! data sections (generated data, labelled sets with and without `as = generation`, label
//! words that cannot be told apart, labels the label words do not cover, every causal-LM record
//! kind, a file mixing kinds, SQuAD) is checked; a policy that checks then really runs a step
//! (`adarank run --device cpu`) and must finish, and one refused must be refused with its file,
//! line and column. The refusals the data/model pairing calls for are pinned too, so `check`
//! cannot pass this by refusing everything.

use adarank::policy::load_str;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const MODELS: [&str; 4] = ["encoder", "decoder", "llama_hf", "llama_gguf"];

fn model_section(name: &str) -> String {
    let llm = root().join("tests/fixtures/llm");
    match name {
        "encoder" => "model encoder { layers = 2, hidden = 16, heads = 4 }".into(),
        "decoder" => "model decoder { layers = 2, hidden = 16, heads = 4 }".into(),
        "llama_hf" => {
            let snaps = llm.join("hub/models--adarank-test--tiny-llama/snapshots");
            let snap = std::fs::read_dir(snaps).unwrap().next().unwrap().unwrap();
            format!("model path {{ dir = \"{}\" }}", snap.path().display())
        }
        "llama_gguf" => format!(
            "model gguf {{ path = \"{}\" }}",
            llm.join("tiny_llama.gguf").display()
        ),
        _ => unreachable!(),
    }
}

/// The data files of the walk, written into `dir`.
fn write_data(dir: &Path) {
    let files = [
        (
            "labelled.jsonl",
            "{\"text\": \"the cat sat on the mat\", \"label\": 1}\n\
             {\"text\": \"a dull lifeless script\", \"label\": 0}\n\
             {\"text\": \"the movie was wonderful\", \"label\": \"wonderful\"}\n\
             {\"text\": \"what a dull cast\", \"label\": \"dull\"}\n",
        ),
        (
            "three_labels.jsonl",
            "{\"text\": \"the cat sat on the mat\", \"label\": 1}\n\
             {\"text\": \"a dull lifeless script\", \"label\": 2}\n",
        ),
        (
            "pc.jsonl",
            "{\"prompt\": \"the cat sat\", \"completion\": \" on the mat\"}\n\
             {\"prompt\": \"paris is\", \"completion\": \" the capital of france.\"}\n",
        ),
        (
            "messages.jsonl",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"the cat\"}, \
             {\"role\": \"assistant\", \"content\": \"sat on the mat\"}]}\n\
             {\"messages\": [{\"role\": \"user\", \"content\": \"paris is\"}, \
             {\"role\": \"assistant\", \"content\": \"the capital of france.\"}]}\n",
        ),
        (
            "text.jsonl",
            "{\"text\": \"the cat sat on the mat and the dog sat on the log\"}\n\
             {\"text\": \"rotary position embeddings rotate queries and keys\"}\n",
        ),
        (
            "mixed.jsonl",
            "{\"prompt\": \"the cat\", \"completion\": \" sat\"}\n{\"text\": \"the dog\"}\n",
        ),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// (name, data section); `{d}` stands for the data folder. The label words differ in their
/// first token under both tiny tokenizers, " positive" and " positively" under neither.
const DATA: [(&str, &str); 12] = [
    ("synthetic", "data synthetic { classes = 2 }"),
    ("planted", "data planted { ranks = [0, 2] }"),
    (
        "labelled",
        "data jsonl { train = \"{d}/labelled.jsonl\", dev = \"{d}/labelled.jsonl\" }",
    ),
    (
        "as_generation",
        "data jsonl { train = \"{d}/labelled.jsonl\", dev = \"{d}/labelled.jsonl\", \
         as = generation, prompt = \"{text} =\", labels = [\"dull\", \"wonderful\"] }",
    ),
    (
        "labels_collide",
        "data jsonl { train = \"{d}/labelled.jsonl\", dev = \"{d}/labelled.jsonl\", \
         as = generation, prompt = \"{text} =\", labels = [\" positive\", \" positively\"] }",
    ),
    (
        "label_not_listed",
        "data jsonl { train = \"{d}/three_labels.jsonl\", dev = \"{d}/labelled.jsonl\", \
         as = generation, prompt = \"{text} =\", labels = [\"dull\", \"wonderful\"] }",
    ),
    (
        "prompt_completion",
        "data jsonl { train = \"{d}/pc.jsonl\", dev = \"{d}/pc.jsonl\" }",
    ),
    (
        "exact_match",
        "data jsonl { train = \"{d}/pc.jsonl\", dev = \"{d}/pc.jsonl\", metric = exact_match, \
         max_new = 8 }",
    ),
    (
        "messages",
        "data jsonl { train = \"{d}/messages.jsonl\", dev = \"{d}/messages.jsonl\" }",
    ),
    (
        "text",
        "data jsonl { train = \"{d}/text.jsonl\", dev = \"{d}/text.jsonl\", metric = perplexity }",
    ),
    (
        "mixed",
        "data jsonl { train = \"{d}/mixed.jsonl\", dev = \"{d}/pc.jsonl\" }",
    ),
    (
        "squad",
        "data squad { train = \"{d}/pc.jsonl\", dev = \"{d}/pc.jsonl\" }",
    ),
];

/// Pinned refusals: (model, data, words of the message). Every other pairing of a causal LM
/// with LM data must run.
const REFUSED: [(&str, &str, &str); 9] = [
    ("llama_hf", "labelled", "no classification head"),
    ("llama_gguf", "labelled", "no classification head"),
    ("llama_hf", "synthetic", "does not fit the model"),
    ("llama_hf", "labels_collide", "begin with the same token"),
    ("llama_gguf", "labels_collide", "begin with the same token"),
    (
        "llama_hf",
        "label_not_listed",
        "label 2, but `labels` lists 2 label words",
    ),
    ("llama_gguf", "messages", "has none"),
    ("llama_hf", "mixed", "one kind per file"),
    ("encoder", "prompt_completion", "not one"),
];

/// Pinned runs: the pairings a user reaches for, which `check` must not refuse.
const RUNS: [(&str, &str); 9] = [
    ("encoder", "synthetic"),
    ("decoder", "synthetic"),
    ("llama_hf", "as_generation"),
    ("llama_gguf", "as_generation"),
    ("llama_hf", "prompt_completion"),
    ("llama_gguf", "exact_match"),
    ("llama_hf", "messages"),
    ("llama_hf", "text"),
    ("llama_gguf", "text"),
];

fn policy(model: &str, data: &str, dir: &Path) -> String {
    format!(
        "experiment t {{\n  {}\n  {}\n  lora {{ targets = [q, v], init_rank = 2 }}\n  \
         train {{ steps = 1, batch = 2 }}\n  seeds = [1]\n}}\n",
        model_section(model),
        data.replace("{d}", &dir.display().to_string())
    )
}

/// `t.rank:LINE:COL` somewhere in the message.
fn located(msg: &str) -> bool {
    msg.match_indices("t.rank:").any(|(i, m)| {
        let rest = &msg.as_bytes()[i + m.len()..];
        let line = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        line > 0
            && rest.get(line) == Some(&b':')
            && rest.get(line + 1).is_some_and(u8::is_ascii_digit)
    })
}

/// Runs the policy at `file` for its one step; the failure text when it does not finish.
fn run(file: &Path, out: &Path) -> Result<(), String> {
    let o = Command::new(env!("CARGO_BIN_EXE_adarank"))
        .args(["run", "--quiet", "--device", "cpu", "--out"])
        .arg(out)
        .arg(file)
        .output()
        .unwrap();
    if o.status.success() && out.join("report.md").is_file() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

#[test]
fn every_policy_check_accepts_runs_and_every_refusal_is_located() {
    let tmp = tempfile::tempdir().unwrap();
    write_data(tmp.path());
    let mut problems = Vec::new();
    let (mut runs, mut refusals) = (0, 0);
    for model in MODELS {
        for (data, section) in DATA {
            let src = policy(model, section, tmp.path());
            let pinned = REFUSED.iter().find(|r| r.0 == model && r.1 == data);
            match load_str(&src, "t.rank", tmp.path(), &[]) {
                Err(d) => {
                    refusals += 1;
                    let msg = format!("{d}");
                    if !located(&msg) {
                        problems.push(format!("{model} × {data}: refused without a place: {msg}"));
                    }
                    if let Some(r) = pinned.filter(|r| !msg.contains(r.2)) {
                        problems.push(format!("{model} × {data}: {:?} not in: {msg}", r.2));
                    }
                    if RUNS.contains(&(model, data)) {
                        problems.push(format!("{model} × {data}: refused: {msg}"));
                    }
                }
                Ok(_) => {
                    if pinned.is_some() {
                        problems.push(format!("{model} × {data}: accepted, should be refused"));
                        continue;
                    }
                    runs += 1;
                    let file = tmp.path().join(format!("{model}-{data}.rank"));
                    std::fs::write(&file, &src).unwrap();
                    let out = tmp.path().join(format!("run-{model}-{data}"));
                    if let Err(e) = run(&file, &out) {
                        problems.push(format!("{model} × {data}: checked, then failed: {e}"));
                    }
                }
            }
        }
    }
    println!("{runs} pairings checked and ran, {refusals} refused with a place");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
