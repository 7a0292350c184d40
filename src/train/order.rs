//! The order in which a run visits a finite training set: position p = step·batch + j of the
//! stream reads example perm(seed, epoch)[p mod n] with epoch = p div n. A batch is a pure
//! function of (seed, step), so a resumed run sees exactly the batches it would have seen, and
//! the run seed (not the data's) decides the order: two seeds of one arm see the same examples
//! in different orders.
//!
//! The set size comes from input (a data file's rows, a policy's `samples = 1e9`), so the memory
//! of the order must not grow with it: sets of up to [`EAGER_MAX`] examples are shuffled whole
//! (a few megabytes at most), larger ones are permuted lazily, one index at a time, by a keyed
//! bijection ([`lazy_position`]) that needs no table at all.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Largest set shuffled as a whole table (8 MiB of indices); above it the order is computed per
/// index. Every data set this harness ships is far below it, so their orders are the shuffle's.
pub const EAGER_MAX: usize = 1 << 20;

/// The RNG seed of epoch `epoch` under `seed`: splitmix-style mixing keeps (seed, epoch) pairs
/// from colliding.
fn mix(seed: u64, epoch: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(epoch.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        ^ 0x94D0_49BB_1331_11EB
}

/// The shuffle of epoch `epoch` under `seed`; a pure function of its arguments. It holds all `n`
/// indices: callers whose `n` comes from input use [`batch_indices`], which does not.
pub fn epoch_permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(mix(seed, epoch));
    let mut p: Vec<usize> = (0..n).collect();
    p.shuffle(&mut rng);
    p
}

/// The finaliser of splitmix64: a good 64-bit mixing function for the Feistel rounds.
fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Where position `i` of epoch `key` lands in a set of `n`: a balanced Feistel network on the
/// smallest square power-of-two domain 2^(2h) ≥ n (a bijection of that domain for any round
/// function), walked until the value falls inside 0..n (cycle walking keeps it a bijection of
/// 0..n; the domain is under 4n, so the walk is short on average). O(1) memory.
pub fn lazy_position(n: u64, key: u64, i: u64) -> u64 {
    debug_assert!(i < n);
    let bits = 64 - (n.max(2) - 1).leading_zeros();
    let half = bits.div_ceil(2);
    let mask = (1u64 << half) - 1;
    let mut x = i;
    loop {
        let (mut l, mut r) = (x >> half, x & mask);
        for round in 0..4u64 {
            let f =
                splitmix(r ^ key.wrapping_add(round.wrapping_mul(0x9E37_79B9_7F4A_7C15))) & mask;
            (l, r) = (r, l ^ f);
        }
        x = (l << half) | r;
        if x < n {
            return x;
        }
    }
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
            let p = step.wrapping_mul(batch as u64).wrapping_add(j);
            let epoch = p / n64;
            if n > EAGER_MAX {
                return lazy_position(n64, mix(seed, epoch), p % n64) as usize;
            }
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

    #[test]
    fn lazy_order_is_a_permutation_without_a_table() {
        // Brute force: every position of a set just above the eager limit lands on a distinct
        // example, and two epochs differ.
        let n = EAGER_MAX + 12_345;
        let mut seen = vec![false; n];
        for i in 0..n as u64 {
            let x = lazy_position(n as u64, mix(9, 0), i) as usize;
            assert!(!seen[x], "{x} twice");
            seen[x] = true;
        }
        let a: Vec<u64> = (0..64)
            .map(|i| lazy_position(n as u64, mix(9, 0), i))
            .collect();
        let b: Vec<u64> = (0..64)
            .map(|i| lazy_position(n as u64, mix(9, 1), i))
            .collect();
        assert_ne!(a, b);
        // Small domains too (odd bit counts, n = 1 and 2).
        for n in 1..70u64 {
            let mut v: Vec<u64> = (0..n).map(|i| lazy_position(n, 5, i)).collect();
            v.sort_unstable();
            assert_eq!(v, (0..n).collect::<Vec<_>>());
        }
        // A billion examples: a batch costs no memory proportional to the set.
        let b = batch_indices(1_000_000_000, 3, 7, 16);
        assert_eq!(b.len(), 16);
        assert!(b.iter().all(|&x| x < 1_000_000_000));
        assert_eq!(b, batch_indices(1_000_000_000, 3, 7, 16));
    }
}
