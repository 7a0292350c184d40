//! Every shipped plugin is embedded verbatim, compiles, defines its role's function, has a
//! one-line description, and is listed by `adarank plugins`.

use adarank::engine::shipped::SHIPPED;
use adarank::engine::{Limits, PluginHost, Role};

#[test]
fn shipped_plugins_compile_and_define_their_role() {
    let host = PluginHost::new(Limits::default(), 0);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins");
    // Every script in plugins/ is shipped, and nothing else.
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.ends_with(".rhai"))
        .collect();
    on_disk.sort();
    let mut shipped: Vec<String> = SHIPPED.iter().map(|p| p.file.to_string()).collect();
    shipped.sort();
    assert_eq!(on_disk, shipped);
    for p in SHIPPED {
        let on_disk = std::fs::read_to_string(dir.join(p.file)).unwrap();
        assert_eq!(
            on_disk, p.source,
            "{} differs from its embedded copy",
            p.file
        );
        let compiled = host
            .compile(p.file, p.source)
            .unwrap_or_else(|e| panic!("{e}"));
        let role = Role::from_name(p.role())
            .unwrap_or_else(|| panic!("{}: unknown role `{}`", p.file, p.role()));
        host.require(&compiled, role).unwrap();
        assert!(p.description().len() > 10, "{}", p.file);
    }
}

#[test]
fn plugins_listing_names_every_shipped_plugin_with_its_description() {
    let out = adarank::cli::plugins::listing();
    for p in SHIPPED {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(p.file))
            .unwrap();
        assert!(line.contains(p.description()), "{line}");
    }
    assert!(adarank::cli::plugins::API.contains("round_to_budget"));
}

#[test]
fn missing_file_falls_back_to_embedded_copy_only_for_shipped_names() {
    let host = PluginHost::new(Limits::default(), 0);
    let p = host
        .load(std::path::Path::new("/nowhere/plugins/log_rule.rhai"))
        .unwrap();
    assert_eq!(p.file, "builtin:log_rule.rhai");
    assert!(host
        .load(std::path::Path::new("/nowhere/plugins/mine.rhai"))
        .is_err());
}
