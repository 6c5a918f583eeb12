//! Loops one normalisation call on the bench's bn / gn shape (`bench::NORM_SHAPE`, `GN_GROUPS`) for
//! `perf record` or in-process timing, and prints the median call time.
//! `cargo run --release --example normloop -- gnf|gnb|bnf|bnb f32|f64 THREADS SECONDS [STREAM_MB]`
//! (STREAM_MB sets the streaming-store threshold).
use fastlayers::*;
use fastlayers_cli::bench;
use std::time::Instant;

fn run<T: Float>(op: &str, par: Parallelism<'_>, secs: f64) {
    let c = bench::NORM_SHAPE[1];
    let (x, gamma, beta, dout) = bench::norm_inputs::<T>(&mut Rng::new(3));
    let (mut out, mut dx) = (
        Tensor::zeros(x.shape()).unwrap(),
        Tensor::zeros(x.shape()).unwrap(),
    );
    let (mut dg, mut dbt) = (Tensor::zeros(&[c]).unwrap(), Tensor::zeros(&[c]).unwrap());
    let mut bn = BnParam::train();
    let gp = NormParam::default();
    let bnp = NormPlan::<T>::new(NormKind::SpatialBatchNorm, x.shape()).unwrap();
    let gnp = NormPlan::<T>::new(
        NormKind::GroupNorm {
            groups: bench::GN_GROUPS,
        },
        x.shape(),
    )
    .unwrap();
    let bst = bnp
        .forward_into(&x, &gamma, &beta, &mut bn, &mut out, &mut [], par)
        .unwrap();
    let gst = gnp
        .forward_into(&x, &gamma, &beta, gp, &mut out, &mut [], par)
        .unwrap();
    let mut call = || match op {
        "gnf" => drop(gnp.forward_into(&x, &gamma, &beta, gp, &mut out, &mut [], par)),
        "gnb" => drop(gnp.backward_into(
            &x,
            &gamma,
            &gst,
            &dout,
            &mut dx,
            &mut dg,
            &mut dbt,
            &mut [],
            par,
        )),
        "bnf" => drop(bnp.forward_into(&x, &gamma, &beta, &mut bn, &mut out, &mut [], par)),
        "bnb" => drop(bnp.backward_into(
            &x,
            &gamma,
            &bst,
            &dout,
            &mut dx,
            &mut dg,
            &mut dbt,
            &mut [],
            par,
        )),
        _ => panic!("op is one of gnf, gnb, bnf, bnb"),
    };
    let t0 = Instant::now();
    let mut ts = vec![];
    while t0.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        call();
        ts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ts.sort_by(f64::total_cmp);
    println!(
        "{op} {} n={} median {:.4} ms p10 {:.4}",
        T::NAME,
        ts.len(),
        ts[ts.len() / 2],
        ts[ts.len() / 10]
    );
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let th: usize = a[3].parse().expect("THREADS");
    let secs: f64 = a[4].parse().expect("SECONDS");
    if let Some(mb) = a.get(5) {
        let mb: f64 = mb.parse().expect("STREAM_MB");
        hooks::set_streaming_threshold(Some((mb * 1048576.0) as usize));
    }
    let par = if th == 1 {
        Parallelism::Sequential
    } else {
        Parallelism::Threads(th)
    };
    match a[2].as_str() {
        "f32" => run::<f32>(&a[1], par, secs),
        _ => run::<f64>(&a[1], par, secs),
    }
}
