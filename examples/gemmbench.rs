use fastlayers::gemm::{gemm, rm};
use fastlayers::packed_gemm::*;
use std::time::Instant;
fn run<T: fastlayers::Float>(m: usize, n: usize, k: usize) {
    let a: Vec<T> = (0..m * k)
        .map(|i| T::from_f(((i * 7) % 13) as f64 / 13.0))
        .collect();
    let b: Vec<T> = (0..k * n)
        .map(|i| T::from_f(((i * 5) % 11) as f64 / 11.0))
        .collect();
    let mut c = vec![T::zero(); m * n];
    let reps = (2e9 / (2.0 * (m * n * k) as f64)).max(3.0) as usize;
    let t = Instant::now();
    for _ in 0..reps {
        gemm(m, k, n, T::one(), rm(&a, k), rm(&b, n), T::one(), &mut c, n);
    }
    let mm = t.elapsed().as_secs_f64() / reps as f64;
    let s = shape::<T>();
    let mut ap = vec![T::zero(); packed_a_len(s, m, k)];
    pack_a(s, m, k, &a, k, 1, &mut ap);
    let mut bb = vec![T::zero(); packed_b_len(s, k, n)];
    let t = Instant::now();
    for _ in 0..reps {
        gemm_packed_a(
            s,
            m,
            n,
            k,
            &ap,
            BSrc::Rows { data: &b, ld: n },
            &mut c,
            n,
            &mut bb,
            false,
        );
    }
    let pk = t.elapsed().as_secs_f64() / reps as f64;
    let gf = |s: f64| 2.0 * (m * n * k) as f64 / s / 1e9;
    println!(
        "{} {m}x{n}x{k}: matrixmultiply {:.1} GFLOP/s, packed {:.1} GFLOP/s ({:?})",
        T::NAME,
        gf(mm),
        gf(pk),
        s
    );
}
fn main() {
    for (m, n, k) in [
        (64, 768, 576),
        (25, 256, 27),
        (128, 80, 1152),
        (128, 256, 1152),
        (32, 1024, 147),
    ] {
        run::<f32>(m, n, k);
        run::<f64>(m, n, k);
    }
}
