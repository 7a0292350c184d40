//! The order in which a run visits a finite training set: position p = step·batch + j of the
//! stream reads example perm(seed, epoch)[p mod n] with epoch = p div n. A batch is a pure
//! function of (seed, step), so a resumed run sees exactly the batches it would have seen, and
//! the run seed (not the data's) decides the order: two seeds of one arm see the same examples
//! in different orders.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// The shuffle of epoch `epoch` under `seed`; a pure function of its arguments.
pub fn epoch_permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    // splitmix-style mixing keeps (seed, epoch) pairs from colliding in the RNG seed.
    let mixed = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(epoch.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        ^ 0x94D0_49BB_1331_11EB;
    let mut rng = StdRng::seed_from_u64(mixed);
    let mut p: Vec<usize> = (0..n).collect();
    p.shuffle(&mut rng);
    p
}

/// Example indices (into a set of `n`) of training batch `step` of size `batch` under `seed`.
pub fn batch_indices(n: usize, seed: u64, step: u64, batch: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let n64 = n as u64;
    let mut perm_epoch = u64::MAX;
    let mut perm: Vec<usize> = Vec::new();
    (0..batch as u64)
        .map(|j| {
            let p = step * batch as u64 + j;
            let epoch = p / n64;
            if epoch != perm_epoch {
                perm = epoch_permutation(n, seed, epoch);
                perm_epoch = epoch;
            }
            perm[(p % n64) as usize]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_once_per_epoch_and_seeds_differ() {
        // 3 batches of 4 over 12 examples = one epoch: a permutation of 0..12.
        let mut seen: Vec<usize> = (0..3).flat_map(|s| batch_indices(12, 7, s, 4)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..12).collect::<Vec<_>>());
        assert_eq!(batch_indices(12, 7, 1, 4), batch_indices(12, 7, 1, 4));
        assert_ne!(batch_indices(12, 7, 0, 12), batch_indices(12, 8, 0, 12));
        // A batch that straddles two epochs takes the tail of one shuffle and the head of the next.
        let b = batch_indices(5, 3, 1, 4); // positions 4..8
        assert_eq!(b[0], epoch_permutation(5, 3, 0)[4]);
        assert_eq!(b[1..], epoch_permutation(5, 3, 1)[..3]);
    }
}
