//! The plugin roles: one table of what each role is called, the rhai function it calls and
//! that function's parameters. The policy checker (`policy::plugins`), the engine's loader and
//! its errors (`host::require`, [`super::PluginError`]), the shipped plugins' `// role:`
//! headers and the docs' role tables (tests/plugin_roles.rs) all read it.

use serde::Serialize;

/// The role a plugin is loaded or called in (see plugins/README.md for the signatures).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Complexity,
    Allocator,
    Learner,
    /// The learner's optional per-step function `learn_step` (relaxed ranks).
    LearnerStep,
    Condition,
    /// Compiling or loading the script, before any role function ran (no function of its own).
    Load,
}

/// One row of [`ROLES`].
#[derive(Debug)]
pub struct RoleSpec {
    pub role: Role,
    /// The role as messages, `adarank plugins` and the shipped plugins' headers name it.
    pub name: &'static str,
    /// The rhai function a plugin of this role defines (empty for [`Role::Load`]).
    pub function: &'static str,
    /// That function's parameters, as the docs write them; their count is its arity.
    pub params: &'static [&'static str],
}

/// Every role, in [`Role`]'s order.
pub const ROLES: &[RoleSpec] = &[
    RoleSpec {
        role: Role::Complexity,
        name: "complexity",
        function: "complexity",
        params: &["adapter", "ctx"],
    },
    RoleSpec {
        role: Role::Allocator,
        name: "allocator",
        function: "allocate",
        params: &["adapters", "budget"],
    },
    RoleSpec {
        role: Role::Learner,
        name: "learner",
        function: "learn",
        params: &["state", "adapters", "ctx"],
    },
    RoleSpec {
        role: Role::LearnerStep,
        name: "learner",
        function: "learn_step",
        params: &["state", "grads", "ctx"],
    },
    RoleSpec {
        role: Role::Condition,
        name: "condition",
        function: "done",
        params: &["ctx"],
    },
    RoleSpec {
        role: Role::Load,
        name: "load",
        function: "",
        params: &[],
    },
];

impl Role {
    /// This role's row of [`ROLES`].
    pub fn spec(self) -> &'static RoleSpec {
        // ROLES lists the variants in declaration order (tests/plugin_roles.rs).
        &ROLES[self as usize]
    }
    pub fn name(self) -> &'static str {
        self.spec().name
    }
    /// The rhai function a plugin of this role must define.
    pub fn function(self) -> &'static str {
        self.spec().function
    }
    /// The number of parameters of [`Self::function`].
    pub fn arity(self) -> usize {
        self.spec().params.len()
    }
    /// The function as the docs write it: `fn allocate(adapters, budget)`.
    pub fn signature(self) -> String {
        let s = self.spec();
        format!("fn {}({})", s.function, s.params.join(", "))
    }
    /// "a complexity plugin", "an allocator plugin".
    pub fn a(self) -> String {
        let n = self.name();
        let article = if n.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        format!("{article} {n} plugin")
    }
    /// The role a shipped plugin's `// role: NAME` header names (a learner's is [`Role::Learner`]).
    pub fn from_name(name: &str) -> Option<Role> {
        ROLES
            .iter()
            .find(|s| s.name == name && s.role != Role::Load)
            .map(|s| s.role)
    }
}
