//! Device buffers: a pool that recycles freed storage buffers by size (a training step allocates
//! the same shapes every step), the tensor and ids buffer types, and checked allocation.
//!
//! Reuse is safe without waiting for the GPU because every write to a buffer (upload, zeroing,
//! kernels) is recorded in the one in-order command stream: a buffer handed out again is only
//! touched by commands that run after those of its previous owner.

use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Buffer sizes are rounded up to this, so that nearby sizes share pool buckets and every
/// buffer can be bound at any 256-byte aligned offset.
pub const BUFFER_ALIGN: u64 = 256;

/// Bytes of freed buffers the pool keeps for reuse before it lets them go.
const POOL_CAP: u64 = 1 << 30;

pub struct Pool {
    device: wgpu::Device,
    max_buffer_size: u64,
    free: Mutex<FreeLists>,
}

#[derive(Default)]
struct FreeLists {
    by_size: HashMap<u64, Vec<wgpu::Buffer>>,
    bytes: u64,
}

impl Pool {
    pub fn new(device: wgpu::Device, max_buffer_size: u64) -> Self {
        Self {
            device,
            max_buffer_size,
            free: Mutex::new(FreeLists::default()),
        }
    }

    pub fn rounded(bytes: u64) -> u64 {
        bytes.max(4).div_ceil(BUFFER_ALIGN) * BUFFER_ALIGN
    }

    /// A storage buffer of at least `bytes` (contents undefined), from the pool or new.
    pub fn take(&self, bytes: u64, what: &str) -> Result<wgpu::Buffer> {
        let size = Self::rounded(bytes);
        {
            let mut f = self.free.lock().unwrap();
            if let Some(b) = f.by_size.get_mut(&size).and_then(|v| v.pop()) {
                f.bytes -= size;
                return Ok(b);
            }
        }
        create_checked(
            &self.device,
            self.max_buffer_size,
            size,
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            what,
        )
        .or_else(|e| {
            // Out of memory with buffers parked in the pool: let them go and try once more.
            if self.trim() > 0 {
                create_checked(
                    &self.device,
                    self.max_buffer_size,
                    size,
                    wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                    what,
                )
            } else {
                Err(e)
            }
        })
    }

    pub fn give(&self, buffer: wgpu::Buffer) {
        let size = buffer.size();
        let mut f = self.free.lock().unwrap();
        if f.bytes + size > POOL_CAP {
            return; // dropped: wgpu frees it once the GPU is done with it
        }
        f.bytes += size;
        f.by_size.entry(size).or_default().push(buffer);
    }

    /// Frees every parked buffer; returns the bytes released.
    pub fn trim(&self) -> u64 {
        let mut f = self.free.lock().unwrap();
        let b = f.bytes;
        f.by_size.clear();
        f.bytes = 0;
        b
    }
}

/// Creates a buffer inside error scopes, so that a too-large or out-of-memory request comes back
/// as an error naming it instead of reaching the device's uncaptured-error handler.
pub fn create_checked(
    device: &wgpu::Device,
    max_buffer_size: u64,
    size: u64,
    usage: wgpu::BufferUsages,
    what: &str,
) -> Result<wgpu::Buffer> {
    if size > max_buffer_size {
        bail!(
            "cannot allocate {what} of {size} bytes: the adapter's max_buffer_size is {max_buffer_size} bytes \
             (use smaller batches or a device with more memory)"
        );
    }
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(what),
        size,
        usage,
        mapped_at_creation: false,
    });
    let v = pollster::block_on(validation.pop());
    let o = pollster::block_on(oom.pop());
    if let Some(e) = o {
        return Err(anyhow!(
            "out of GPU memory allocating {what} of {size} bytes: {e}"
        ));
    }
    if let Some(e) = v {
        return Err(anyhow!(
            "GPU rejected allocating {what} of {size} bytes: {e}"
        ));
    }
    Ok(buffer)
}

/// The storage behind a `Tensor<Gpu>`; goes back to the pool when the tensor drops.
pub struct GpuBuf {
    buffer: Option<wgpu::Buffer>,
    pool: Arc<Pool>,
}

impl GpuBuf {
    pub fn new(buffer: wgpu::Buffer, pool: Arc<Pool>) -> Self {
        Self {
            buffer: Some(buffer),
            pool,
        }
    }
    /// The wgpu buffer (its size is rounded up; the tensor's `len()` is what is valid).
    pub fn raw(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("buffer present until drop")
    }
}

impl Drop for GpuBuf {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take() {
            self.pool.give(b);
        }
    }
}

/// The storage behind `Ids<Gpu>`: the ids, and the CSR of positions per unique id that the
/// deterministic embedding backward walks (built on the host, where the ids come from).
pub struct GpuIds {
    pub ids: wgpu::Buffer,
    /// Distinct non-IGNORE ids, ascending: [n_unique]
    pub uniq: wgpu::Buffer,
    /// CSR row starts into `positions`: [n_unique + 1]
    pub offsets: wgpu::Buffer,
    /// Positions of each unique id, in token order: [non-IGNORE ids]
    pub positions: wgpu::Buffer,
    pub n_unique: usize,
    /// Non-IGNORE ids (the length of `positions`).
    pub n_positions: usize,
    /// Largest non-IGNORE id (bounds check against a table's rows), None if all IGNORE.
    pub max_id: Option<u32>,
}

/// (uniq, offsets, positions) of `ids`, skipping IGNORE; positions of one id in token order.
pub fn build_csr(ids: &[u32], ignore: u32) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let mut order: Vec<u32> = (0..ids.len() as u32)
        .filter(|&i| ids[i as usize] != ignore)
        .collect();
    // Stable sort: equal ids keep token order, which fixes the summation order.
    order.sort_by_key(|&i| ids[i as usize]);
    let mut uniq = Vec::new();
    let mut offsets = Vec::new();
    for (k, &pos) in order.iter().enumerate() {
        let id = ids[pos as usize];
        if uniq.last() != Some(&id) {
            uniq.push(id);
            offsets.push(k as u32);
        }
    }
    offsets.push(order.len() as u32);
    (uniq, offsets, order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_groups_positions_by_id_in_token_order() {
        let ig = u32::MAX;
        let (u, o, p) = build_csr(&[5, 2, ig, 5, 2, 7, 5], ig);
        assert_eq!(u, vec![2, 5, 7]);
        assert_eq!(o, vec![0, 2, 5, 6]);
        assert_eq!(p, vec![1, 4, 0, 3, 6, 5]);
        let (u, o, p) = build_csr(&[ig, ig], ig);
        assert!(u.is_empty() && p.is_empty());
        assert_eq!(o, vec![0]);
    }
}
