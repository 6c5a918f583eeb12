//! Times one named convolution shape with each direction's algorithm forced, against the plan's
//! own choice: `cargo run --release --example force -- SHAPE f32|f64 THREADS ALG...` (SHAPE a
//! named shape or N,C,H,W,F for a 3 x 3, stride-1, pad-1 convolution) with ALG
//! among im2col, direct, winograd, winograd4 (F(4x4, 3x3)) (all three directions forced to it), or DIR=ALG with DIR one
//! of fwd, dx, dw (that direction only). With `LOOP=fwd|bwd|dw` (and `LOOPS=SECONDS`, default 4)
//! it runs that one call in a loop on the last plan named (the plan's own choice when no ALG is
//! given) and prints the mean time, for `perf record` or alternating A/B runs of two builds.
//! Otherwise every plan is timed in each of ROUNDS (default 7) rounds, and the medians printed.
use fastlayers::*;
use fastlayers_cli::bench::{CONV_SHAPES, median_ms};

fn run<T: Float>(name: &str, threads: usize, algs: &[String]) {
    // A named shape, or N,C,H,W,F: a 3 x 3 convolution, stride 1, pad 1.
    let (xs, ws, s, p) = match CONV_SHAPES.iter().find(|c| c.0 == name) {
        Some(&(_, xs, ws, s, p)) => (xs, ws, s, p),
        None => {
            let v: Vec<usize> = name
                .split(',')
                .map(|t| t.parse().expect("a named shape or N,C,H,W,F"))
                .collect();
            ([v[0], v[1], v[2], v[3]], [v[4], v[1], 3, 3], 1, 1)
        }
    };
    let par = Parallelism::Threads(threads);
    let mut rng = Rng::new(0);
    let x: Tensor<T> = rng.randn(&xs, 1.0, 0.0);
    let w: Tensor<T> = rng.randn(&ws, 1.0, 0.0);
    let b: Tensor<T> = rng.randn(&[ws[0]], 1.0, 0.0);
    let base = ConvPlan::<T>::new(&xs, &ws, &ConvParam::new(s, p)).expect("valid");
    let dout: Tensor<T> = rng.randn(&base.geom().out_shape(), 1.0, 0.0);
    let mut plans = vec![("plan".to_string(), base)];
    for a in algs {
        // "direct" forces every direction; "dx=direct" (fwd=, dx=, dw=) one of them.
        let all = [
            ConvDirection::Forward,
            ConvDirection::DataGrad,
            ConvDirection::WeightGrad,
        ];
        let (dirs, name): (&[ConvDirection], &str) = match a.split_once('=') {
            Some(("fwd", n)) => (&all[..1], n),
            Some(("dx", n)) => (&all[1..2], n),
            Some(("dw", n)) => (&all[2..], n),
            _ => (&all[..], a.as_str()),
        };
        let alg = match name {
            "im2col" => ConvAlgorithm::Im2col,
            "direct" => ConvAlgorithm::Direct,
            "winograd4" => ConvAlgorithm::Winograd4x4,
            _ => ConvAlgorithm::Winograd,
        };
        let mut pl = base;
        for &dir in dirs {
            match pl.with_algorithm(dir, alg) {
                Ok(q) => pl = q,
                Err(e) => eprintln!("{a}: {e}"),
            }
        }
        plans.push((a.clone(), pl));
    }
    let mut ws_buf = vec![
        T::zero();
        plans
            .iter()
            .map(|(_, pl)| pl.workspace_len(par).expect("fits"))
            .max()
            .unwrap_or(0)
    ];
    let mut out = Tensor::zeros(&base.geom().out_shape()).unwrap();
    let (mut dx, mut dw, mut db) = (
        Tensor::zeros(&xs).unwrap(),
        Tensor::zeros(&ws).unwrap(),
        Tensor::zeros(&[ws[0]]).unwrap(),
    );
    // Each direction's call on plan `pl`, shared by the loop mode and the timed rounds.
    let mut call = |pl: &ConvPlan<T>, dir: &str| match dir {
        "dw" => pl
            .backward_weights_into(&x, &dout, &mut dw, &mut db, &mut ws_buf, par)
            .unwrap(),
        "bwd" => pl
            .backward_into(&x, &w, &dout, &mut dx, &mut dw, &mut db, &mut ws_buf, par)
            .unwrap(),
        _ => pl
            .forward_into(&x, &w, &b, &mut out, &mut ws_buf, par)
            .unwrap(),
    };
    if let Ok(which) = std::env::var("LOOP") {
        // One direction in a loop on the last plan, for `perf record` or an A/B of two builds.
        let secs: f64 = std::env::var("LOOPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4.0);
        let pl = &plans.last().expect("the plan").1;
        let t = std::time::Instant::now();
        let mut n = 0;
        while t.elapsed().as_secs_f64() < secs {
            call(pl, &which);
            n += 1;
        }
        println!(
            "{which}: {:.3} ms",
            t.elapsed().as_secs_f64() * 1e3 / n as f64
        );
        return;
    }
    // Rounds over the plans (each direction a few calls per plan per round), so that a shared
    // host's drifts hit every plan alike; medians over the rounds.
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let mut t = vec![[vec![], vec![], vec![]]; plans.len()];
    for _ in 0..rounds {
        for (pi, (_, pl)) in plans.iter().enumerate() {
            for (d, dir) in ["fwd", "bwd", "dw"].iter().enumerate() {
                t[pi][d].push(median_ms(0.15, || call(pl, dir)));
            }
        }
    }
    for ((label, pl), tp) in plans.iter().zip(&mut t) {
        let [f, bw, dwo] = tp.each_mut().map(|v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        });
        println!(
            "{name} {} {label:>8}: fwd {f:.3} ms, bwd {bw:.3} ms (dw only {dwo:.3}) [{:?} {:?} {:?}]",
            T::NAME,
            pl.algorithm(ConvDirection::Forward),
            pl.algorithm(ConvDirection::DataGrad),
            pl.algorithm(ConvDirection::WeightGrad)
        );
    }
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let threads = a.get(2).and_then(|t| t.parse().ok()).unwrap_or(2);
    let algs = a.get(3..).unwrap_or(&[]).to_vec();
    match a.get(1).map(String::as_str) {
        Some("f64") => run::<f64>(&a[0], threads, &algs),
        _ => run::<f32>(&a[0], threads, &algs),
    }
}
