//! Small deterministic random numbers: test inputs and dropout masks.
//!
//! Dropout draws element `i`'s keep decision from a counter-based hash of `(seed, i)`, not from a
//! sequential stream, so the reference and the parallel fast kernel produce the same mask bit for
//! bit whatever the thread count or chunking.

/// SplitMix64's finaliser: a bijective 64-bit mix with good avalanche.
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Uniform in [0, 1) with 53 random bits, drawn from `(seed, counter)`.
#[inline(always)]
pub fn uniform_at(seed: u64, counter: u64) -> f64 {
    let z = mix64(seed ^ mix64(counter.wrapping_add(0x9e37_79b9_7f4a_7c15)));
    (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A seeded sequential generator (SplitMix64) for test data.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
    spare: Option<f64>,
}

impl Rng {
    /// A generator (splitmix64) whose stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Rng {
            state: seed,
            spare: None,
        }
    }
    /// A generator seeded from the clock and the process's hasher keys.
    pub fn from_entropy() -> Self {
        use std::hash::{BuildHasher, RandomState};
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Rng::new(RandomState::new().hash_one(t))
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.state)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Uniform integer in 0..n (n > 0), by rejection so it is unbiased.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below needs n > 0");
        let n = n as u64;
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let v = self.next_u64();
            if v < zone {
                return (v % n) as usize;
            }
        }
    }
    /// Standard normal (Box-Muller, both values used).
    pub fn normal(&mut self) -> f64 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        let u1 = 1.0 - self.uniform(); // (0, 1]: ln stays finite
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        self.spare = Some(r * t.sin());
        r * t.cos()
    }
    /// A tensor of `scale * N(0, 1) + shift`, numpy's `scale * np.random.randn(*shape) + shift`.
    pub fn randn<T: crate::Float>(
        &mut self,
        shape: &[usize],
        scale: f64,
        shift: f64,
    ) -> crate::Tensor<T> {
        crate::Tensor::from_fn(shape, |_| T::from_f(scale * self.normal() + shift))
            .expect("randn: shape element count overflows usize")
    }
}
