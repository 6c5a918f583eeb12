//! Times one named convolution shape with each direction's algorithm forced, against the plan's
//! own choice: `cargo run --release --example force -- SHAPE f32|f64 THREADS ALG...` with ALG
//! among im2col, direct, winograd (all three directions forced to it), or DIR=ALG with DIR one
//! of fwd, dx, dw (that direction only). With `LOOP=fwd|bwd|dw` (and `LOOPS=SECONDS`, default 4)
//! it runs that one call in a loop on the first plan and prints the mean time, for `perf record`
//! or alternating A/B runs of two builds.
use fastlayers::*;
use fastlayers_cli::bench::{CONV_SHAPES, median_ms};

fn run<T: Float>(name: &str, threads: usize, algs: &[String]) {
    let (_, xs, ws, s, p) = *CONV_SHAPES
        .iter()
        .find(|c| c.0 == name)
        .expect("a named shape");
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
    for (label, pl) in &plans {
        let mut ws_buf = vec![T::zero(); pl.workspace_len(par).expect("fits")];
        let mut out = Tensor::zeros(&pl.geom().out_shape()).unwrap();
        let (mut dx, mut dw, mut db) = (
            Tensor::zeros(&xs).unwrap(),
            Tensor::zeros(&ws).unwrap(),
            Tensor::zeros(&[ws[0]]).unwrap(),
        );
        // Each direction's call, shared by the loop mode and the medians.
        let mut call = |dir: &str| match dir {
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
            // One direction in a loop, for `perf record` or an A/B of two builds.
            let secs: f64 = std::env::var("LOOPS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(4.0);
            let t = std::time::Instant::now();
            let mut n = 0;
            while t.elapsed().as_secs_f64() < secs {
                call(&which);
                n += 1;
            }
            println!(
                "{which}: {:.3} ms",
                t.elapsed().as_secs_f64() * 1e3 / n as f64
            );
            return;
        }
        let f = median_ms(1.0, || call("fwd"));
        let bw = median_ms(1.0, || call("bwd"));
        let dwo = median_ms(1.0, || call("dw"));
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
