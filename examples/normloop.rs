//! Loops one normalisation call on the bench's bn / gn shape (f32, (32, 64, 32, 32), G = 8) for
//! `perf record` or in-process timing, and prints the median call time.
//! `cargo run --release --example normloop -- gnf|gnb|bnf|bnb THREADS SECONDS`
use fastlayers::*;
use std::time::Instant;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let op = a[1].as_str();
    let th: usize = a[2].parse().unwrap();
    let secs: f64 = a[3].parse().unwrap();
    let par = if th == 1 {
        Parallelism::Sequential
    } else {
        Parallelism::Threads(th)
    };
    let xs = [32usize, 64, 32, 32];
    let c = 64;
    let mut rng = Rng::new(3);
    let x: Tensor<f32> = rng.randn(&xs, 4.0, 10.0);
    let gamma: Tensor<f32> = rng.randn(&[c], 1.0, 0.0);
    let beta: Tensor<f32> = rng.randn(&[c], 1.0, 0.0);
    let dout: Tensor<f32> = rng.randn(&xs, 1.0, 0.0);
    let (mut out, mut dx) = (vec![0f32; x.len()], vec![0f32; x.len()]);
    let (mut dg, mut dbt) = (vec![0f32; c], vec![0f32; c]);
    let mut bn = BnParam::train();
    let gp = NormParam::default();
    let bst = batchnorm_forward_into(true, &x, &gamma, &beta, &mut bn, &mut out, par).unwrap();
    let gst = spatial_groupnorm_forward_into(&x, &gamma, &beta, 8, &gp, &mut out, par).unwrap();
    let t0 = Instant::now();
    let mut ts = vec![];
    while t0.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        match op {
            "gnf" => {
                spatial_groupnorm_forward_into(&x, &gamma, &beta, 8, &gp, &mut out, par).unwrap();
            }
            "gnb" => {
                norm_backward_into(&x, &gamma, &gst, &dout, &mut dx, &mut dg, &mut dbt, par)
                    .unwrap();
            }
            "bnf" => {
                batchnorm_forward_into(true, &x, &gamma, &beta, &mut bn, &mut out, par).unwrap();
            }
            "bnb" => {
                norm_backward_into(&x, &gamma, &bst, &dout, &mut dx, &mut dg, &mut dbt, par)
                    .unwrap();
            }
            _ => panic!("op is one of gnf, gnb, bnf, bnb"),
        }
        ts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ts.sort_by(f64::total_cmp);
    println!(
        "{op} th={th} n={} median {:.4} ms p10 {:.4}",
        ts.len(),
        ts[ts.len() / 2],
        ts[ts.len() / 10]
    );
}
