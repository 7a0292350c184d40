//! The hostile-input corpus (`tests/hostile/`): policies, plugins and data folders, each one
//! realistic mistake or attack, run through the built `adarank` binary. Every input must end with
//! a clear error that carries a location (file:line:col for policies and plugins, file:line or the
//! file for data), with exit status 1 (wrong input: a policy, a script that does not compile, data)
//! or 2 (a failure while running), within a stated time and peak resident
//! memory of the child process (measured with `wait4`), and without losing what a run had already
//! finished. Each file names what it is and the message it must produce in its header:
//! `# hostile:` / `# expect:` (policies, data) or `// hostile:` / `// expect:` with `// <- here`
//! marking the statement a plugin error must point at; `expect: A || B` accepts either message;
//! `// exit: 1` marks a plugin refused before the run starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wall-clock limit per input. Plugins have a 5 s budget per call; everything else is refused
/// within a second or two.
const TIME_LIMIT: Duration = Duration::from_secs(45);
/// Peak resident memory limit per input: the plugin heap limit is 256 MiB, the tiny models a few.
const RSS_LIMIT_MIB: u64 = 768;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile")
}

/// Exit status, output, wall time and peak RSS of one child.
struct Outcome {
    code: Option<i32>,
    stderr: String,
    secs: f64,
    peak_mib: u64,
}

/// Runs the binary with `args` in `cwd`, killing it at the time limit, and measures its peak RSS
/// with `wait4` (the kernel's own accounting of the child).
fn run(args: &[String], cwd: &Path) -> Outcome {
    let t0 = Instant::now();
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let err_path = cwd.join(format!(".stderr-{n}"));
    let err_file = std::fs::File::create(&err_path).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_adarank"))
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file)
        .spawn()
        .expect("spawn adarank");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: plain syscall on our own child's pid with valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        assert!(r == 0, "wait4 failed");
        if t0.elapsed() > TIME_LIMIT {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::mem::forget(child); // reaped by wait4 above
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&err_path);
    Outcome {
        code,
        stderr,
        secs: t0.elapsed().as_secs_f64(),
        // ru_maxrss is in KiB on Linux.
        peak_mib: usage.ru_maxrss as u64 / 1024,
    }
}

/// The value of a `# key:` / `// key:` header line.
fn header(text: &str, key: &str) -> Option<String> {
    text.lines()
        .take_while(|l| l.starts_with('#') || l.starts_with("//") || l.starts_with('\u{feff}'))
        .find_map(|l| {
            let l = l.trim_start_matches('\u{feff}');
            let l = l.strip_prefix("//").or(l.strip_prefix('#'))?.trim_start();
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
}

fn has_location(stderr: &str, file: &str) -> bool {
    // file:line or file:line:col right after the name.
    stderr.match_indices(file).any(|(i, m)| {
        let rest = &stderr[i + m.len()..];
        rest.starts_with(':') && rest[1..].starts_with(|c: char| c.is_ascii_digit())
    })
}

/// `Err` says what failed.
type Verdict = Result<(), String>;

struct Case {
    name: String,
    /// What must hold beyond exit status, time and memory.
    check: Box<dyn Fn(&Outcome) -> Verdict + Send + Sync>,
    args: Vec<String>,
    cwd: PathBuf,
    exit: i32,
}

/// `want` may list alternatives separated by ` || `: an endless loop ends on the time budget or on
/// the operation limit, whichever a machine reaches first.
fn expect_in(o: &Outcome, want: &str) -> Result<(), String> {
    if want.split(" || ").any(|w| o.stderr.contains(w)) {
        Ok(())
    } else {
        Err(format!("stderr lacks {want:?}"))
    }
}

/// `fixed` (the finished arm) is still done, with its metrics and adapters; `hostile` failed.
fn finished_work_kept(run_dir: &Path, finished: &str, steps: usize) -> Result<(), String> {
    let rd = adarank::experiment::RunDir::open(run_dir).map_err(|e| format!("{e:#}"))?;
    let s = rd.load_summary().map_err(|e| format!("{e:#}"))?;
    let cell = s
        .cell(finished, 1)
        .ok_or_else(|| format!("no cell {finished}"))?;
    if cell.status != adarank::experiment::CellStatus::Done {
        return Err(format!("finished cell {finished} is now {:?}", cell.status));
    }
    let m = rd.load_metrics().map_err(|e| format!("{e:#}"))?;
    let n = m.iter().filter(|r| r.arm == finished).count();
    if n != steps {
        return Err(format!("{finished} has {n} metric records, not {steps}"));
    }
    if !rd
        .adapters(finished, 1)
        .join("adapter_model.safetensors")
        .exists()
    {
        return Err(format!("{finished}'s adapters are gone"));
    }
    if s.failed().is_empty() {
        return Err("no cell is recorded as failed".into());
    }
    Ok(())
}

fn policy_cases(tmp: &Path) -> Vec<Case> {
    let dir = corpus().join("policies");
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rank"))
        .collect();
    files.sort();
    for f in files {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let expect = header(&text, "expect").unwrap_or_else(|| panic!("{name}: no # expect"));
        let extra: Vec<String> = header(&text, "args")
            .map(|a| {
                let mut v = Vec::new();
                for w in a.split_whitespace() {
                    v.push(w.to_string());
                }
                v
            })
            .unwrap_or_default();
        let cmd = header(&text, "cmd");
        let is_run = cmd.as_deref() == Some("run");
        // Refused by the run's memory pre-flight: a run error at the policy's line:col, and no
        // run directory.
        let preflight = cmd.as_deref() == Some("preflight");
        let out_dir = tmp.join(format!("run-{name}"));
        let mut args = vec![if is_run || preflight { "run" } else { "check" }.to_string()];
        args.push(f.display().to_string());
        args.extend(extra);
        if is_run || preflight {
            args.extend(["--device", "cpu", "--quiet", "--out"].map(String::from));
            args.push(out_dir.display().to_string());
        }
        let file = name.clone();
        out.push(Case {
            name: format!("policies/{name}"),
            check: Box::new(move |o| {
                expect_in(o, &expect)?;
                if preflight && out_dir.exists() {
                    return Err("a refused run left a run directory".into());
                }
                if is_run {
                    if !o.stderr.contains(" seed ") {
                        return Err("a run error must name its arm and seed".into());
                    }
                    return finished_work_kept(&out_dir, "adaptive", 10).or_else(|e| {
                        // A single-arm run has nothing finished to keep; it must record the failure.
                        let rd = adarank::experiment::RunDir::open(&out_dir)
                            .map_err(|x| format!("{x:#}"))?;
                        let s = rd.load_summary().map_err(|x| format!("{x:#}"))?;
                        if s.cells.len() == 1 && s.failed().len() == 1 {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    });
                }
                if has_location(&o.stderr, &file) || has_location(&o.stderr, "--set") {
                    Ok(())
                } else {
                    Err("no file:line:col in the message".into())
                }
            }),
            args,
            cwd: tmp.to_path_buf(),
            exit: if is_run || preflight { 2 } else { 1 },
        });
    }
    out
}

fn plugin_cases(tmp: &Path) -> Vec<Case> {
    let dir = corpus().join("plugins");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rhai"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let role = header(&text, "role").unwrap_or_else(|| panic!("{name}: no // role"));
        let expect = header(&text, "expect").unwrap_or_else(|| panic!("{name}: no // expect"));
        let line = text
            .lines()
            .position(|l| l.contains("// <- here"))
            .unwrap_or_else(|| panic!("{name}: no // <- here"))
            + 1;
        let harness = std::fs::read_to_string(dir.join("harness").join(format!("{role}.rank")))
            .unwrap()
            .replace("{PLUGIN}", &f.display().to_string());
        let case_dir = tmp.join(format!("plugin-{name}"));
        std::fs::create_dir_all(&case_dir).unwrap();
        let policy = case_dir.join("harness.rank");
        std::fs::write(&policy, harness).unwrap();
        let out_dir = case_dir.join("run");
        let args = vec![
            "run".to_string(),
            policy.display().to_string(),
            "--device".into(),
            "cpu".into(),
            "--quiet".into(),
            "--out".into(),
            out_dir.display().to_string(),
        ];
        let at = format!("{name}:{line}:");
        // `// exit: 1`: a script that does not compile is refused before anything trains (the
        // policy check compiles every plugin), so there is no finished work to keep.
        let exit = header(&text, "exit").map_or(2, |e| e.parse().unwrap());
        out.push(Case {
            name: format!("plugins/{name}"),
            check: Box::new(move |o| {
                expect_in(o, &expect)?;
                if !o.stderr.contains(&at) {
                    return Err(format!("the error does not point at {at}"));
                }
                if exit == 1 {
                    return Ok(());
                }
                finished_work_kept(&out_dir, "fixed", 8)
            }),
            args,
            cwd: case_dir,
            exit,
        });
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn data_cases(tmp: &Path) -> Vec<Case> {
    // Copied out of the tree: runs write their directories next to the policy, and one case
    // needs a named pipe, which git cannot hold.
    let root = tmp.join("data-cases");
    copy_dir(&corpus().join("model"), &root.join("model"));
    let dir = corpus().join("data");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let case_dir = root.join("data").join(&name);
        copy_dir(&dir.join(&name), &case_dir);
        if name == "train_is_fifo" {
            let ok = Command::new("mkfifo")
                .arg(case_dir.join("train.jsonl"))
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "mkfifo failed");
        }
        if name == "jsonl_endless_line" {
            // 64 MiB of zero bytes without a line break, sparse (no disk used): the loader must
            // refuse it at its line cap, not hold it whole.
            let f = std::fs::File::create(case_dir.join("train.jsonl")).unwrap();
            f.set_len(64 << 20).unwrap();
        }
        let text = std::fs::read_to_string(case_dir.join("policy.rank")).unwrap();
        let expect = header(&text, "expect").unwrap_or_else(|| panic!("{name}: no # expect"));
        let args = [
            "run",
            "policy.rank",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            "run",
        ]
        .map(String::from)
        .to_vec();
        out.push(Case {
            name: format!("data/{name}"),
            check: Box::new(move |o| expect_in(o, &expect)),
            args,
            cwd: case_dir,
            // Data that cannot be loaded is wrong input (exit status 1), like a bad policy.
            exit: 1,
        });
    }
    out
}

/// Paths given to `adarank check` that are not policy files at all.
fn path_cases(tmp: &Path) -> Vec<Case> {
    let fifo = tmp.join("policy-pipe.rank");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success()));
    let cases = [
        ("a directory", tmp.display().to_string(), "is a directory"),
        ("/dev/zero", "/dev/zero".to_string(), "is a device"),
        (
            "a named pipe",
            fifo.display().to_string(),
            "is a named pipe",
        ),
        (
            "a missing file",
            tmp.join("nope.rank").display().to_string(),
            "no such file",
        ),
    ];
    cases
        .into_iter()
        .map(|(what, path, want)| Case {
            name: format!("paths/{what}"),
            check: Box::new(move |o| expect_in(o, want)),
            args: vec!["check".into(), path],
            cwd: tmp.to_path_buf(),
            exit: 1,
        })
        .collect()
}

// Pre-flight memory refusals (the memory plan's "this cell needs X GiB, the machine has Y") are
// the policy corpus's `preflight_*.rank`: legal settings whose cell would not fit any machine.

#[test]
fn every_hostile_input_ends_in_a_located_error_within_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cases = policy_cases(tmp.path());
    let p = cases.len();
    cases.extend(plugin_cases(tmp.path()));
    let q = cases.len() - p;
    cases.extend(data_cases(tmp.path()));
    let r = cases.len() - p - q;
    cases.extend(path_cases(tmp.path()));
    assert!(p >= 60, "{p} policies");
    assert!(q >= 30, "{q} plugins");
    assert!(r >= 15, "{r} data folders");

    let results: Mutex<BTreeMap<String, (Outcome, Verdict)>> = Mutex::new(BTreeMap::new());
    let queue = Mutex::new(cases.iter().collect::<Vec<_>>());
    // Two at a time: the machine this runs on in CI has two cores.
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let Some(c) = queue.lock().unwrap().pop() else {
                    break;
                };
                let o = run(&c.args, &c.cwd);
                let mut verdict = (c.check)(&o);
                if o.code != Some(c.exit) {
                    verdict = Err(format!("exit status {:?}, wanted {}", o.code, c.exit));
                } else if o.secs > TIME_LIMIT.as_secs_f64() {
                    verdict = Err(format!("took {:.1} s", o.secs));
                } else if o.peak_mib > RSS_LIMIT_MIB {
                    verdict = Err(format!("peak RSS {} MiB", o.peak_mib));
                } else if o.stderr.contains("panicked") {
                    verdict = Err("panicked".into());
                }
                results.lock().unwrap().insert(c.name.clone(), (o, verdict));
            });
        }
    });
    let results = results.into_inner().unwrap();
    let mut failed = Vec::new();
    let (mut worst_t, mut worst_m) = ((0.0, String::new()), (0, String::new()));
    for (name, (o, v)) in &results {
        if o.secs > worst_t.0 {
            worst_t = (o.secs, name.clone());
        }
        if o.peak_mib > worst_m.0 {
            worst_m = (o.peak_mib, name.clone());
        }
        if let Err(e) = v {
            failed.push(format!(
                "{name}: {e}\n    exit {:?}, {:.1} s, {} MiB\n    {}",
                o.code,
                o.secs,
                o.peak_mib,
                o.stderr.trim().replace('\n', "\n    ")
            ));
        }
    }
    eprintln!(
        "{} hostile inputs ({p} policies, {q} plugins, {r} data folders, {} paths); slowest {:.1} s \
         ({}), largest peak RSS {} MiB ({})",
        results.len(),
        results.len() - p - q - r,
        worst_t.0,
        worst_t.1,
        worst_m.0,
        worst_m.1
    );
    assert!(
        failed.is_empty(),
        "{} of {} failed:\n{}",
        failed.len(),
        results.len(),
        failed.join("\n")
    );
}
