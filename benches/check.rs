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

criterion_group!(benches, bench_check);
criterion_main!(benches);
