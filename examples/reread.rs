//! Memory probe behind batch norm backward's limit: how long plain sweeps over two f64 arrays
//! take, with no kernel around them. A backward reads x and dout twice (each channel's sums need
//! every sample before its dx can be written); this times one sweep, two sweeps, and two sweeps
//! done block by block (the second sweep of a block right after the first, as a channel-blocked
//! backward would do). Like the bench, it repeats on the same arrays (no cache flush between
//! repetitions).
//! `cargo run --release --example reread -- MB_PER_ARRAY THREADS` (the bn shape in f64 is 16 MB).
use std::hint::black_box;
use std::time::Instant;

/// A reduction over both arrays, the traffic of a backward's pass 1.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 16];
    for (ca, cb) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
        for l in 0..16 {
            acc[l] += ca[l] * cb[l];
        }
    }
    acc.iter().sum()
}

fn main() {
    use rayon::prelude::*;
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (mb, threads) = (arg(1, 16), arg(2, 2));
    let n = mb << 17;
    let (a, b) = (vec![1.0f64; n], vec![2.0f64; n]);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    // Sweeps in jobs of 1 MB per array, like the backward's per-sample jobs.
    let sweep = |r: std::ops::Range<usize>| -> f64 {
        let (a, b) = (black_box(&a[r.clone()]), black_box(&b[r]));
        a.par_chunks(1 << 17)
            .zip(b.par_chunks(1 << 17))
            .map(|(x, y)| dot(x, y))
            .sum()
    };
    for (sweeps, block_mb) in [(1, mb), (2, mb), (2, 8), (2, 2), (2, 1)] {
        let bl = (block_mb << 17).min(n);
        let mut ts = vec![];
        for _ in 0..200 {
            let t = Instant::now();
            pool.install(|| {
                for s in (0..n).step_by(bl) {
                    for _ in 0..sweeps {
                        black_box(sweep(s..(s + bl).min(n)));
                    }
                }
            });
            ts.push(t.elapsed().as_secs_f64() * 1e3);
        }
        ts.sort_by(f64::total_cmp);
        let ms = ts[ts.len() / 2];
        let gb = (sweeps * 2 * mb) as f64 / 1024.0;
        println!(
            "2 x {mb} MB, {threads} threads, {sweeps} sweep(s) in blocks of {block_mb} MB per array: median {ms:.3} ms, {:.0} GB/s",
            gb / ms * 1e3
        );
    }
}
