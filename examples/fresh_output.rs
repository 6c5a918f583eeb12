//! The notebook's f64 convolution forward through `ConvPlan::forward_into`, with the output buffer
//! reused across calls and with a freshly zeroed one per call (what the Python module does),
//! on the current rayon pool (RAYON_NUM_THREADS sets its size): medians of 201 calls.
use fastlayers::*;
use std::time::Instant;
fn main() {
    let mut rng = Rng::new(1);
    let x: Tensor<f64> = rng.randn(&[100, 3, 31, 31], 1.0, 0.0);
    let w: Tensor<f64> = rng.randn(&[25, 3, 3, 3], 1.0, 0.0);
    let b: Tensor<f64> = rng.randn(&[25], 1.0, 0.0);
    let p = ConvParam::new(2, 1);
    let par = Parallelism::Current;
    let plan = ConvPlan::<f64>::new(x.shape(), w.shape(), &p).unwrap();
    let need = plan.forward_workspace_len(par).unwrap();
    let os = [100, 25, 16, 16];
    let mut keep = Tensor::zeros(&os).unwrap();
    for fresh in [false, true] {
        let mut ts = vec![];
        for _ in 0..201 {
            let t = Instant::now();
            let mut ws = vec![0.0f64; need];
            if fresh {
                let mut o = Tensor::zeros(&os).unwrap();
                plan.forward_into(&x, &w, &b, &mut o, &mut ws, par).unwrap();
                std::hint::black_box(&o);
            } else {
                plan.forward_into(&x, &w, &b, &mut keep, &mut ws, par)
                    .unwrap();
            }
            ts.push(t.elapsed().as_secs_f64() * 1e3);
        }
        ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("fresh={fresh} median {:.3} ms", ts[100]);
    }
}
