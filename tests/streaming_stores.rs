//! The normalisation layers' streaming (non-temporal) store path against the plain one: the
//! same bits for every output, whatever the output buffer's alignment, and nothing written
//! outside it. The path is chosen by a process-wide size threshold, so this binary holds one
//! test function that sets it (0: always stream; `usize::MAX - 1`: never).

use fastlayers::cpu::{SimdLevel as Level, simd_level as level};
use fastlayers::hooks::{set_streaming_threshold, streaming_threshold};
use fastlayers::*;

/// Output of one forward and one backward call, written at offset `off` of NaN-filled buffers
/// one element longer than needed on each side.
struct Run<T> {
    out: Vec<T>,
    dx: Vec<T>,
    dg: Vec<T>,
    db: Vec<T>,
}

#[derive(Clone, Copy, Debug)]
enum Layer {
    Bn,
    SpatialBn,
    Ln,
    Gn(usize),
}

fn run<T: Float>(layer: Layer, shape: &[usize], off: usize, par: Parallelism<'_>) -> Run<T> {
    let mut rng = Rng::new(shape.iter().product::<usize>() as u64 + off as u64);
    let x: Tensor<T> = rng.randn(shape, 3.0, 20.0);
    let d = shape[1];
    let gamma: Tensor<T> = rng.randn(&[d], 1.0, 0.5);
    let beta: Tensor<T> = rng.randn(&[d], 1.0, 0.0);
    let dout: Tensor<T> = rng.randn(shape, 1.0, 0.0);
    let n = x.len();
    let nan = T::from_f(f64::NAN);
    let mut out = vec![nan; n + 2 + off];
    let mut dx = vec![nan; n + 2 + off];
    let (mut dg, mut db) = (
        Tensor::full(&[d], nan).unwrap(),
        Tensor::full(&[d], nan).unwrap(),
    );
    let mut bn = BnParam::train();
    let o = TensorViewMut::new(&mut out[1 + off..1 + off + n], shape).unwrap();
    let (kind, params): (NormKind, NormParams<'_, T>) = match layer {
        Layer::Bn => (NormKind::BatchNorm, NormParams::Batch(&mut bn)),
        Layer::SpatialBn => (NormKind::SpatialBatchNorm, NormParams::Batch(&mut bn)),
        Layer::Ln => (NormKind::LayerNorm, NormParam::default().into()),
        Layer::Gn(g) => (
            NormKind::GroupNorm { groups: g },
            NormParam::default().into(),
        ),
    };
    let plan = NormPlan::<T>::new(kind, shape).unwrap();
    let stats = plan
        .forward_into(&x, &gamma, &beta, params, o, &mut [], par)
        .unwrap();
    let dxs = TensorViewMut::new(&mut dx[1 + off..1 + off + n], shape).unwrap();
    plan.backward_into(
        &x,
        &gamma,
        &stats,
        &dout,
        dxs,
        &mut dg,
        &mut db,
        &mut [],
        par,
    )
    .unwrap();
    Run {
        out,
        dx,
        dg: dg.into_vec(),
        db: db.into_vec(),
    }
}

fn same_bits<T: Float>(what: &str, a: &[T], b: &[T]) {
    assert_eq!(a.len(), b.len());
    for (i, (u, v)) in a.iter().zip(b).enumerate() {
        assert!(
            u.to_f().to_bits() == v.to_f().to_bits(),
            "{what}[{i}]: plain {u:?} streaming {v:?}"
        );
    }
}

fn check<T: Float>(layer: Layer, shape: &[usize]) {
    for off in 0..4 {
        for par in [Parallelism::Sequential, Parallelism::Threads(2)] {
            set_streaming_threshold(Some(usize::MAX - 1));
            let plain = run::<T>(layer, shape, off, par);
            set_streaming_threshold(Some(0));
            let stream = run::<T>(layer, shape, off, par);
            let what = format!("{layer:?} {shape:?} offset {off} {par:?}");
            same_bits(&format!("{what} out"), &plain.out, &stream.out);
            same_bits(&format!("{what} dx"), &plain.dx, &stream.dx);
            same_bits(&format!("{what} dgamma"), &plain.dg, &stream.dg);
            same_bits(&format!("{what} dbeta"), &plain.db, &stream.db);
            let n = shape.iter().product::<usize>();
            for buf in [&stream.out, &stream.dx] {
                assert!(
                    buf[off].is_nan() && buf[1 + off + n].is_nan(),
                    "{what}: wrote outside"
                );
                assert!(
                    buf[1 + off..1 + off + n].iter().all(|v| !v.is_nan()),
                    "{what}: gap"
                );
            }
        }
    }
}

#[test]
fn streaming_stores_give_the_plain_stores_bits() {
    if level() < Level::Avx2 {
        eprintln!("no AVX2 at the current level: the streaming path is never taken here");
    }
    for shape in [[3, 6, 7, 9], [2, 6, 33, 31], [5, 4, 32, 32]] {
        check::<f32>(Layer::SpatialBn, &shape);
        check::<f64>(Layer::SpatialBn, &shape);
        check::<f32>(Layer::Gn(2), &shape);
        check::<f64>(Layer::Gn(2), &shape);
    }
    for shape in [[7, 37], [64, 300]] {
        check::<f32>(Layer::Bn, &shape);
        check::<f64>(Layer::Bn, &shape);
        check::<f32>(Layer::Ln, &shape);
        check::<f64>(Layer::Ln, &shape);
    }
    set_streaming_threshold(Some(12345));
    assert_eq!(streaming_threshold(), 12345);
    set_streaming_threshold(None);
}
