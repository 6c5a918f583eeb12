//! The notebook's f64 convolution forward through `conv_forward_into`, with the output buffer
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
    let n = 100 * 25 * 16 * 16;
    let par = Parallelism::Current;
    let need = conv_forward_workspace_len::<f64>(x.shape(), w.shape(), &p, par).unwrap();
    let mut keep = vec![0.0f64; n];
    for fresh in [false, true] {
        let mut ts = vec![];
        for _ in 0..201 {
            let t = Instant::now();
            let mut ws = vec![0.0f64; need];
            if fresh {
                let mut o = vec![0.0f64; n];
                conv_forward_into(&x, &w, &b, &p, &mut o, &mut ws, par).unwrap();
                std::hint::black_box(&o);
            } else {
                conv_forward_into(&x, &w, &b, &p, &mut keep, &mut ws, par).unwrap();
            }
            ts.push(t.elapsed().as_secs_f64() * 1e3);
        }
        ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("fresh={fresh} median {:.3} ms", ts[100]);
    }
}
