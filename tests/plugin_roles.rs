//! One table of plugin roles (`engine::ROLES`) serves the checker, the engine and the docs:
//! each variant finds its own row, the engine's `require` and the policy checker ask for the
//! same function and arity, and the docs' role tables write each signature as the table does.

use adarank::engine::{Limits, PluginHost, Role, ROLES};

const ALL: [Role; 6] = [
    Role::Complexity,
    Role::Allocator,
    Role::Learner,
    Role::LearnerStep,
    Role::Condition,
    Role::Load,
];

#[test]
fn every_role_finds_its_own_row() {
    assert_eq!(ROLES.len(), ALL.len());
    for r in ALL {
        assert_eq!(r.spec().role, r);
    }
}

#[test]
fn the_engine_requires_the_tables_function_and_arity() {
    let host = PluginHost::new(Limits::default(), 0);
    for r in ALL.into_iter().filter(|r| *r != Role::Load) {
        let right = format!("{} {{ 1 }}", r.signature());
        let p = host.compile("right.rhai", &right).unwrap();
        assert!(host.require(&p, r).is_ok(), "{right}");
        // One parameter short: the engine refuses it, naming the function.
        let params = &r.spec().params[1..];
        let short = format!("fn {}({}) {{ 1 }}", r.function(), params.join(", "));
        let p = host.compile("short.rhai", &short).unwrap();
        let e = host.require(&p, r).unwrap_err();
        assert!(e.message.contains(r.function()), "{e}");
    }
}

#[test]
fn the_docs_write_each_signature_as_the_table_does() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let language = std::fs::read_to_string(root.join("docs/language.md")).unwrap();
    let plugins = std::fs::read_to_string(root.join("plugins/README.md")).unwrap();
    // The roles `adarank check` requires, in docs/language.md's table and plugins/README.md's.
    for r in [
        Role::Complexity,
        Role::Allocator,
        Role::Learner,
        Role::Condition,
    ] {
        let sig = format!("`{}`", r.signature());
        assert!(language.contains(&sig), "docs/language.md lacks {sig}");
        assert!(plugins.contains(&sig), "plugins/README.md lacks {sig}");
    }
    // The learner's optional per-step function.
    let step = format!("`{}`", Role::LearnerStep.signature());
    assert!(plugins.contains(&step), "plugins/README.md lacks {step}");
}

#[test]
fn shipped_headers_name_roles_of_the_table() {
    for p in adarank::engine::shipped::SHIPPED {
        let role = Role::from_name(p.role()).unwrap_or_else(|| panic!("{}", p.file));
        assert_eq!(role.name(), p.role());
    }
}
