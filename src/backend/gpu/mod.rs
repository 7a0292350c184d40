//! The GPU backend: wgpu + the WGSL kernels in `shaders/` (see issue 2). Not yet written.
