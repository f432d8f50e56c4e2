//! A small seeded generator for fault rates and stalls: they need to be spread out and
//! repeatable from a seed, not unpredictable.

/// SplitMix64 (Steele, Lea and Flood, 2014): one addition and three mixes per value,
/// passes BigCrush, and any seed (zero included) gives a full-period stream.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1]`, both ends included (53 bits of precision).
    pub(crate) fn unit(&mut self) -> f64 {
        const SCALE: f64 = (1u64 << 53) as f64;
        (self.next_u64() >> 11) as f64 / (SCALE - 1.0)
    }
}

/// FNV-1a over `bytes`: a stable, cheap hash for spreading or seeding, where nobody
/// choosing the input can gain by colliding (not for maps keyed by untrusted input).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn unit_stays_in_range_and_spreads() {
        let mut rng = SplitMix64::new(1);
        let values: Vec<f64> = (0..10_000).map(|_| rng.unit()).collect();
        assert!(values.iter().all(|v| (0.0..=1.0).contains(v)));
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
    }
}
