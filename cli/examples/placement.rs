//! Times a normalisation call on the bench's shape against where its buffers lie: x, dout and
//! the output (out or dx) each at a given byte offset past a 2 MB boundary, in slots 20 MB
//! apart, so their distances modulo 4 KB are the offsets' differences. Every placement is timed
//! in the same rounds (10 calls each, 30 rounds), so drifts of a shared host hit all alike.
//! `cargo run --release --example placement -- gnf|gnb|bnf|bnb f32|f64 X,DOUT,OUT[,MB] ...`
//! (MB, or STREAM_MB for every placement, sets the streaming-store threshold in MB: 0 streams
//! every output pass, 1000 none; the default follows the LLC-derived threshold).
//! Made for the streaming stores' 4K-aliasing hazard (src/norm/fast.rs, `Store`).
use fastlayers::*;
use fastlayers_cli::bench;
use std::time::Instant;

/// Bytes per buffer slot (a multiple of 2 MB).
const SLOT: usize = 20 << 20;

/// Three disjoint slices of `n` elements of `arena`, the k-th `offs[k]` bytes past the start of
/// slot k (slots begin on 2 MB boundaries).
fn place<T: Float>(arena: &mut [T], offs: [usize; 3], n: usize) -> [&mut [T]; 3] {
    let es = std::mem::size_of::<T>();
    let p = arena.as_ptr() as usize;
    let base = (p.next_multiple_of(2 << 20) - p) / es;
    let (_, rest) = arena.split_at_mut(base);
    let (s0, rest) = rest.split_at_mut(SLOT / es);
    let (s1, s2) = rest.split_at_mut(SLOT / es);
    [
        &mut s0[offs[0] / es..offs[0] / es + n],
        &mut s1[offs[1] / es..offs[1] / es + n],
        &mut s2[offs[2] / es..offs[2] / es + n],
    ]
}

fn run<T: Float>(op: &str, cfgs: &[([usize; 3], Option<usize>)], rounds: usize) {
    let par = Parallelism::Threads(2);
    let c = bench::NORM_SHAPE[1];
    let sh = bench::NORM_SHAPE;
    let (x0, gamma, beta, dout0) = bench::norm_inputs::<T>(&mut Rng::new(3));
    let n = x0.len();
    let mut arena = vec![T::one(); (3 * SLOT + (2 << 20)) / std::mem::size_of::<T>()];
    let (mut dg, mut dbt) = (
        Tensor::<T>::zeros(&[c]).unwrap(),
        Tensor::<T>::zeros(&[c]).unwrap(),
    );
    let mut bn = BnParam::train();
    let gp = NormParam::default();
    let bnp = NormPlan::<T>::new(NormKind::SpatialBatchNorm, &sh).unwrap();
    let gnp = NormPlan::<T>::new(NormKind::GroupNorm { groups: 8 }, &sh).unwrap();
    let mut tmp = Tensor::<T>::zeros(&sh).unwrap();
    let bst = bnp
        .forward_into(&x0, &gamma, &beta, &mut bn, &mut tmp, &mut [], par)
        .unwrap();
    let gst = gnp
        .forward_into(&x0, &gamma, &beta, gp, &mut tmp, &mut [], par)
        .unwrap();
    let mut res: Vec<Vec<f64>> = vec![vec![]; cfgs.len()];
    for _ in 0..rounds {
        for (ci, (offs, thr)) in cfgs.iter().enumerate() {
            hooks::set_streaming_threshold(*thr);
            let [x, dout, o] = place(&mut arena, *offs, n);
            x.copy_from_slice(x0.data());
            dout.copy_from_slice(dout0.data());
            let (x, dout) = (&*x, &*dout);
            let xv = TensorView::new(x, &sh).unwrap();
            let dv = TensorView::new(dout, &sh).unwrap();
            let mut call = || match op {
                "bnb" | "gnb" => {
                    let (plan, st) = if op == "bnb" {
                        (&bnp, &bst)
                    } else {
                        (&gnp, &gst)
                    };
                    drop(plan.backward_into(
                        xv,
                        &gamma,
                        st,
                        dv,
                        TensorViewMut::new(&mut *o, &sh).unwrap(),
                        &mut dg,
                        &mut dbt,
                        &mut [],
                        par,
                    ))
                }
                "bnf" => drop(bnp.forward_into(
                    xv,
                    &gamma,
                    &beta,
                    &mut bn,
                    TensorViewMut::new(&mut *o, &sh).unwrap(),
                    &mut [],
                    par,
                )),
                "gnf" => drop(gnp.forward_into(
                    xv,
                    &gamma,
                    &beta,
                    gp,
                    TensorViewMut::new(&mut *o, &sh).unwrap(),
                    &mut [],
                    par,
                )),
                _ => panic!(),
            };
            call();
            for _ in 0..10 {
                let t = Instant::now();
                call();
                res[ci].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    for (ci, (offs, thr)) in cfgs.iter().enumerate() {
        let r = &mut res[ci];
        r.sort_by(f64::total_cmp);
        let stream = thr.map_or("default".to_string(), |b| format!("{} MB", b >> 20));
        println!(
            "{op} {} x/dout/out {:>4} {:>4} {:>4} stream threshold {stream}: median {:.3} p10 {:.3}",
            T::NAME,
            offs[0],
            offs[1],
            offs[2],
            r[r.len() / 2],
            r[r.len() / 10]
        );
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let mb = |s: &str| s.parse::<usize>().expect("MB") << 20;
    let all = std::env::var("STREAM_MB").ok().map(|s| mb(&s));
    let cfgs: Vec<([usize; 3], Option<usize>)> = a[3..]
        .iter()
        .map(|s| {
            let v: Vec<&str> = s.split(',').collect();
            let off = |k: usize| v[k].parse().expect("X,DOUT,OUT[,MB]");
            ([off(0), off(1), off(2)], v.get(3).map(|s| mb(s)).or(all))
        })
        .collect();
    if a[2] == "f32" {
        run::<f32>(&a[1], &cfgs, 30)
    } else {
        run::<f64>(&a[1], &cfgs, 30)
    }
}
