//! The docs a reader meets (README.md, docs/*.md, plugins/README.md) speak of the project as it
//! is: no history. A figure measured under a setting that is not the default states that
//! setting, not "before the fade"; a measurement's date stays only as its provenance; what is
//! left to do lives in the issue tracker, not in a "Not done" section. This test holds them to
//! it with a short list of phrases that only narrate history (each found in these docs once),
//! so a new paragraph written as a lab notebook fails here with its file and line.

use std::path::{Path, PathBuf};

/// Matched case-insensitively anywhere in a line. Each is history in every use these docs
/// make; a present-tense sentence says the same thing without them ("does not" for "no
/// longer", the setting for "before the fade", the measurement for "(was …)").
const HISTORY: [&str; 10] = [
    "no longer",
    "used to ",
    "(was ",
    "before the fade",
    "re-measured",
    "first design",
    "## not done",
    "since 20",
    "the old ",
    "previously",
];

/// Every history phrase in `text`, as "file:line: phrase: the line".
fn history_in(name: &str, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let lower = line.to_lowercase();
        for phrase in HISTORY {
            if lower.contains(phrase) {
                found.push(format!("{name}:{}: {phrase:?}: {}", i + 1, line.trim()));
            }
        }
    }
    found
}

/// The scanned files: README.md, every docs/*.md (sorted), plugins/README.md.
fn scanned(root: &Path) -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ is readable")
        .map(|e| e.expect("a docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    let mut files = vec![root.join("README.md")];
    files.extend(docs);
    files.push(root.join("plugins/README.md"));
    files
}

#[test]
fn the_docs_speak_in_the_present_tense() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = scanned(root);
    // README, plugins/README and at least the dozen docs/ pages: an empty scan passes nothing.
    assert!(files.len() >= 12, "only {} files to scan", files.len());
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let name = f.strip_prefix(root).unwrap_or(f).display().to_string();
        found.extend(history_in(&name, &text));
    }
    assert!(
        found.is_empty(),
        "{} line(s) narrate history; state the setting, the measurement or the limitation \
         instead:\n{}",
        found.len(),
        found.join("\n")
    );
}

/// The scanner itself: lines written as history (each taken from these docs as they once read)
/// are found with their line numbers, whatever their case; present-tense lines are not.
#[test]
fn the_scanner_finds_history_and_only_history() {
    let text = "\
| adaptive, before the fade | 87.50% |
Mean Spearman 0.861 (was 0.885).
The fade (the default since 2026-12-07): a re-allocation No Longer cuts at once.
## Not done
| `fade` | `10` / N | fades out over N steps before the cut (0: cut at once) |
Sliding-window attention equals full attention on sequences no shorter than the window.";
    let found = history_in("x.md", text);
    assert_eq!(
        found,
        [
            "x.md:1: \"before the fade\": | adaptive, before the fade | 87.50% |",
            "x.md:2: \"(was \": Mean Spearman 0.861 (was 0.885).",
            "x.md:3: \"no longer\": The fade (the default since 2026-12-07): a re-allocation No Longer cuts at once.",
            "x.md:3: \"since 20\": The fade (the default since 2026-12-07): a re-allocation No Longer cuts at once.",
            "x.md:4: \"## not done\": ## Not done",
        ]
    );
}
