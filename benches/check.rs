//! How long `adarank check` takes on typical policies: parse + check (with plugin scripts
//! compiled), and formatting. Run: `cargo bench --bench check`.

use adarank::policy::{self, LoadOptions};
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::path::Path;

fn bench_check(c: &mut Criterion) {
    let dir = Path::new("tests/fixtures/policy/valid");
    for name in ["small", "everything"] {
        let src = std::fs::read_to_string(dir.join(format!("{name}.rank"))).unwrap();
        let file = format!("{name}.rank");
        c.bench_function(&format!("check/{name}"), |b| {
            b.iter(|| policy::load_str(black_box(&src), &file, dir, &[]).unwrap())
        });
        let no_plugins = LoadOptions {
            check_plugins: false,
        };
        c.bench_function(&format!("check_without_plugins/{name}"), |b| {
            b.iter(|| policy::load_with(black_box(&src), &file, dir, &[], &no_plugins).unwrap())
        });
        c.bench_function(&format!("fmt/{name}"), |b| {
            b.iter(|| policy::format(black_box(&src)).unwrap())
        });
    }
    let quick = std::fs::read_to_string("examples/quickstart.rank").unwrap();
    let no_plugins = LoadOptions {
        check_plugins: false,
    };
    c.bench_function("check_without_plugins/quickstart", |b| {
        b.iter(|| {
            policy::load_with(
                black_box(&quick),
                "quickstart.rank",
                Path::new("examples"),
                &[],
                &no_plugins,
            )
            .unwrap()
        })
    });
}

/// A policy with `arms` arms and `seeds` seeds, as a sweep generator would write it.
fn generated(arms: usize, seeds: usize) -> String {
    let mut s = String::from(
        "experiment many {\n  model encoder { layers = 2, hidden = 32, heads = 4, ffn = 64, vocab = 64, max_positions = 16 }\n  data planted { ranks = [0, 2, 8, 1], samples = 2048, eval_samples = 128, seq = 8, seed = 1 }\n  train { steps = 80, batch = 16, lr = 1e-2 }\n",
    );
    for i in 0..arms {
        s.push_str(&format!("  arm a{i} {{ train.lr = 2e-3 }}\n"));
    }
    let list: Vec<String> = (0..seeds).map(|k| k.to_string()).collect();
    s.push_str(&format!("  seeds = [{}]\n}}\n", list.join(", ")));
    s
}

/// Checking time against the number of arms and of seeds: linear (a 6 MB file with 180k arms
/// took 73 s when this was quadratic). `cargo bench --bench check -- scale`.
fn bench_scale(c: &mut Criterion) {
    let no_plugins = LoadOptions {
        check_plugins: false,
    };
    let mut g = c.benchmark_group("scale");
    g.sample_size(10);
    for n in [5_000, 20_000] {
        let src = generated(n, 1);
        g.bench_function(format!("arms/{n}"), |b| {
            b.iter(|| {
                policy::load_with(
                    black_box(&src),
                    "many.rank",
                    Path::new("."),
                    &[],
                    &no_plugins,
                )
                .unwrap()
            })
        });
    }
    for n in [20_000, 80_000] {
        let src = generated(0, n);
        g.bench_function(format!("seeds/{n}"), |b| {
            b.iter(|| {
                policy::load_with(
                    black_box(&src),
                    "many.rank",
                    Path::new("."),
                    &[],
                    &no_plugins,
                )
                .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_check, bench_scale);
criterion_main!(benches);
