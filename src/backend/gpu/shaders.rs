//! The WGSL sources, embedded in the binary so it runs from any directory.

/// (file stem, source) for every file in `shaders/`; `tests/shaders_naga.rs` checks the list
/// is complete.
pub const SHADERS: &[(&str, &str)] = &[
    ("adamw", include_str!("../../../shaders/adamw.wgsl")),
    ("bias", include_str!("../../../shaders/bias.wgsl")),
    ("clip", include_str!("../../../shaders/clip.wgsl")),
    (
        "cross_entropy",
        include_str!("../../../shaders/cross_entropy.wgsl"),
    ),
    (
        "elementwise",
        include_str!("../../../shaders/elementwise.wgsl"),
    ),
    ("embedding", include_str!("../../../shaders/embedding.wgsl")),
    ("gelu", include_str!("../../../shaders/gelu.wgsl")),
    (
        "importance",
        include_str!("../../../shaders/importance.wgsl"),
    ),
    ("layernorm", include_str!("../../../shaders/layernorm.wgsl")),
    ("matmul", include_str!("../../../shaders/matmul.wgsl")),
    (
        "matmul_subgroup",
        include_str!("../../../shaders/matmul_subgroup.wgsl"),
    ),
    (
        "matmul_small",
        include_str!("../../../shaders/matmul_small.wgsl"),
    ),
    ("permute", include_str!("../../../shaders/permute.wgsl")),
    ("reduce", include_str!("../../../shaders/reduce.wgsl")),
    ("rmsnorm", include_str!("../../../shaders/rmsnorm.wgsl")),
    ("rope", include_str!("../../../shaders/rope.wgsl")),
    ("softmax", include_str!("../../../shaders/softmax.wgsl")),
    ("swiglu", include_str!("../../../shaders/swiglu.wgsl")),
    ("tanh", include_str!("../../../shaders/tanh.wgsl")),
];

pub fn source(name: &str) -> Option<&'static str> {
    SHADERS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// The source the GPU backend compiles: the embedded one, or — when `ADARANK_SHADER_DIR` is set
/// and holds `<name>.wgsl` — that file, so kernel work needs no rebuild between variants.
pub fn load(name: &str) -> std::borrow::Cow<'static, str> {
    if let Some(dir) = std::env::var_os("ADARANK_SHADER_DIR") {
        let path = std::path::Path::new(&dir).join(format!("{name}.wgsl"));
        if let Ok(text) = std::fs::read_to_string(&path) {
            eprintln!("adarank: shader {name} from {}", path.display());
            return text.into();
        }
    }
    source(name).expect("shader is embedded").into()
}
