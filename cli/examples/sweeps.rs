//! The memory floor under the normalisation rows: plain sweeps over the bench's norm shape
//! (`bench::NORM_SHAPE`), each of two threads over its half, timed between barriers (no spawn
//! in the timing), median of the calls in SECONDS per sweep:
//! - `read2`: sum(x * y), what a backward's pass 1 must read;
//! - `read2write1`: z = a x + y, what its pass 2 must read and write;
//! - `two passes`: both in turn, the least batch norm backward can do (its sums span all
//!   samples, so the second sweep cannot start before the first ends);
//! - `fused BLOCK`: the two in turn per block of BLOCK elements (group norm backward's structure,
//!   a group is 8192 elements on the bench's shape): the second finds the block in L1/L2.
//!
//! `cargo run --release --example sweeps -- f32|f64 SECONDS`. A kernel within a few percent of
//! its floor on a host is limited by that host's memory system, not by its code.
use fastlayers::Float;
use fastlayers_cli::bench;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

fn read2<T: Float>(x: &[T], y: &[T]) -> T {
    let mut a = [T::zero(); 16];
    for (cx, cy) in x.chunks_exact(16).zip(y.chunks_exact(16)) {
        for l in 0..16 {
            a[l] += cx[l] * cy[l];
        }
    }
    a.iter().fold(T::zero(), |s, &v| s + v)
}

fn read2write1<T: Float>(x: &[T], y: &[T], z: &mut [T], k: T) {
    for ((o, &p), &q) in z.iter_mut().zip(x).zip(y) {
        *o = p * k + q;
    }
}

fn sweep<T: Float>(kind: &str, x: &[T], y: &[T], z: &mut [T]) {
    match kind {
        "read2" => drop(std::hint::black_box(read2(x, y))),
        "read2write1" => read2write1(x, y, z, T::from_f(1.5)),
        "two passes" => read2write1(x, y, z, std::hint::black_box(read2(x, y))),
        _ => {
            let b: usize = kind["fused ".len()..].parse().expect("fused BLOCK");
            for ((bx, by), bz) in x.chunks(b).zip(y.chunks(b)).zip(z.chunks_mut(b)) {
                read2write1(bx, by, bz, std::hint::black_box(read2(bx, by)));
            }
        }
    }
}

fn run<T: Float>(secs: f64) {
    let n: usize = bench::NORM_SHAPE.iter().product();
    let x: Vec<T> = (0..n).map(|i| T::from_f((i % 7) as f64)).collect();
    let y: Vec<T> = (0..n).map(|i| T::from_f((i % 5) as f64)).collect();
    let mut z = vec![T::zero(); n];
    for kind in [
        "read2",
        "read2write1",
        "two passes",
        "fused 8192",
        "fused 2048",
    ] {
        let (barrier, stop) = (Barrier::new(2), AtomicBool::new(false));
        let t0 = Instant::now();
        let mut ts = vec![];
        let (z0, z1) = z.split_at_mut(n / 2);
        std::thread::scope(|s| {
            let (x1, y1, b, stop) = (&x[n / 2..], &y[n / 2..], &barrier, &stop);
            s.spawn(move || {
                loop {
                    // The flag is stored before the barrier and read after it: both threads
                    // see the same value.
                    b.wait();
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    sweep(kind, x1, y1, z1);
                    b.wait();
                }
            });
            loop {
                stop.store(t0.elapsed().as_secs_f64() > secs, Ordering::Relaxed);
                barrier.wait();
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let t = Instant::now();
                sweep(kind, &x[..n / 2], &y[..n / 2], z0);
                barrier.wait();
                ts.push(t.elapsed().as_secs_f64() * 1e3);
            }
        });
        ts.sort_by(f64::total_cmp);
        let mb = (n * std::mem::size_of::<T>()) as f64 / 1e6;
        println!(
            "{} {kind:12}: median {:.4} ms over {} calls ({mb:.1} MB per tensor)",
            T::NAME,
            ts[ts.len() / 2],
            ts.len()
        );
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let secs: f64 = a.get(2).map_or(1.0, |s| s.parse().expect("SECONDS"));
    match a.get(1).map(String::as_str) {
        Some("f64") => run::<f64>(secs),
        _ => run::<f32>(secs),
    }
}
