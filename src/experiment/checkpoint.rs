//! Checkpoint files: one safetensors file per cell holding the trainable state and optimizer
//! moments as named f32 tensors, with the step and every non-tensor state (rank engine, loop
//! counters) as JSON in the safetensors metadata. One file, written atomically, so a kill during a
//! save leaves the previous checkpoint intact. The metadata carries a sha256 of the metadata text
//! (step and state) and of every tensor (name, shape, bytes): a checkpoint changed on disk after
//! it was written is refused on load rather than silently changing a finished cell's result.

use super::fsio::write_atomic;
use crate::adapter::HostTensor;
use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

const META_KEY: &str = "adarank_checkpoint";
const SHA_KEY: &str = "adarank_sha256";
/// 2: with a checksum.
const FORMAT: u32 = 2;

#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Steps completed when the checkpoint was taken.
    pub step: u64,
    pub tensors: BTreeMap<String, HostTensor>,
    /// Everything else the cell needs to continue (engine state, loop state, metrics so far).
    pub state: serde_json::Value,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    format: u32,
    step: u64,
    state: serde_json::Value,
}

/// sha256 over the metadata text as stored (a parse and re-serialisation need not give the
/// same text back) and every tensor in name order.
fn digest<'a>(
    meta_json: &str,
    tensors: impl Iterator<Item = (&'a str, &'a [usize], &'a [u8])>,
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((meta_json.len() as u64).to_le_bytes());
    h.update(meta_json.as_bytes());
    for (name, shape, bytes) in tensors {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((shape.len() as u64).to_le_bytes());
        for d in shape {
            h.update((*d as u64).to_le_bytes());
        }
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

pub fn save(path: &Path, ck: &Checkpoint) -> Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = ck
        .tensors
        .iter()
        .map(|(n, t)| {
            if t.shape.iter().product::<usize>() != t.data.len() {
                bail!(
                    "checkpoint tensor {n}: shape {:?} but {} values",
                    t.shape,
                    t.data.len()
                );
            }
            Ok((
                n.clone(),
                t.shape.clone(),
                bytemuck::cast_slice(&t.data).to_vec(),
            ))
        })
        .collect::<Result<_>>()?;
    let views = bytes
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<Vec<_>>>()?;
    let meta = serde_json::to_string(&Meta {
        format: FORMAT,
        step: ck.step,
        state: ck.state.clone(),
    })?;
    let sha256 = digest(
        &meta,
        bytes
            .iter()
            .map(|(n, s, b)| (n.as_str(), s.as_slice(), b.as_slice())),
    );
    let mut info = HashMap::new();
    info.insert(META_KEY.to_string(), meta);
    info.insert(SHA_KEY.to_string(), sha256);
    let out = safetensors::serialize(views, Some(info)).context("serialising checkpoint")?;
    write_atomic(path, &out)
}

/// Largest checkpoint read back: the trainable state of the largest model a run can hold.
const MAX_CHECKPOINT_BYTES: u64 = 256 << 30;

pub fn load(path: &Path) -> Result<Checkpoint> {
    // A regular file only: a FIFO in its place would block the resume for ever, a device would
    // never end.
    let (mut file, len) = crate::textfile::open_regular(path, "checkpoint", MAX_CHECKPOINT_BYTES)?;
    let mut bytes = Vec::with_capacity(len as usize);
    std::io::Read::read_to_end(&mut file, &mut bytes)
        .with_context(|| format!("reading checkpoint {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a checkpoint file", path.display()))?;
    let (_, md) = safetensors::SafeTensors::read_metadata(&bytes)?;
    let info = md.metadata().as_ref();
    let meta_json = info
        .and_then(|m| m.get(META_KEY))
        .with_context(|| format!("{}: no adarank checkpoint metadata", path.display()))?;
    let sha256 = info.and_then(|m| m.get(SHA_KEY));
    let meta: Meta = serde_json::from_str(meta_json).context("checkpoint metadata")?;
    let fix = format!(
        "delete it to restart this cell from step 0 (`rm {}`), then resume again",
        path.display()
    );
    if meta.format != FORMAT {
        bail!(
            "{}: checkpoint format {} (this adarank reads {FORMAT}, whose checksum it can \
             verify); {fix}",
            path.display(),
            meta.format
        );
    }
    let mut named: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let actual = digest(
        meta_json,
        named.iter().map(|(n, t)| (n.as_str(), t.shape(), t.data())),
    );
    if sha256 != Some(&actual) {
        bail!(
            "{}: checkpoint is corrupt: its contents do not match the checksum saved with it \
             (a disk or copy error, or an edit); {fix}",
            path.display()
        );
    }
    let mut tensors = BTreeMap::new();
    for (name, t) in named {
        if t.dtype() != Dtype::F32 {
            bail!(
                "{}: tensor {name} is {:?}, expected F32",
                path.display(),
                t.dtype()
            );
        }
        let data = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        tensors.insert(name, HostTensor::new(t.shape().to_vec(), data));
    }
    Ok(Checkpoint {
        step: meta.step,
        tensors,
        state: meta.state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_bit_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.safetensors");
        let mut tensors = BTreeMap::new();
        tensors.insert(
            "0.q.A".to_string(),
            HostTensor::new(
                vec![2, 3],
                vec![1.0, -2.5, 3.25, f32::MIN_POSITIVE, 0.1, -0.0],
            ),
        );
        tensors.insert("opt.m.0".to_string(), HostTensor::new(vec![1], vec![7.0]));
        let ck = Checkpoint {
            step: 42,
            tensors,
            state: serde_json::json!({"engine": {"alpha": 1.5}, "tokens": 9}),
        };
        save(&p, &ck).unwrap();
        let back = load(&p).unwrap();
        assert_eq!(back.step, 42);
        assert_eq!(back.state, ck.state);
        for (n, t) in &ck.tensors {
            let b = &back.tensors[n];
            assert_eq!(b.shape, t.shape);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&b.data), bits(&t.data));
        }
    }

    #[test]
    fn a_flipped_bit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.safetensors");
        let mut tensors = BTreeMap::new();
        tensors.insert(
            "w".to_string(),
            HostTensor::new(vec![4], vec![1.0, 2.0, 3.0, 4.0]),
        );
        let ck = Checkpoint {
            step: 3,
            tensors,
            state: serde_json::json!({"x": 1}),
        };
        save(&p, &ck).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        // The last byte belongs to the last float of the tensor data.
        *bytes.last_mut().unwrap() ^= 0x01;
        std::fs::write(&p, &bytes).unwrap();
        let e = format!("{:#}", load(&p).unwrap_err());
        assert!(
            e.contains("checkpoint is corrupt") && e.contains("rm "),
            "{e}"
        );
    }

    #[test]
    fn garbage_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.safetensors");
        std::fs::write(&p, b"not a checkpoint").unwrap();
        let e = load(&p).unwrap_err();
        assert!(
            format!("{e:#}").contains("is not a checkpoint file"),
            "{e:#}"
        );
    }
}
