//! The normalisation layers' streaming (non-temporal) store path against the plain one: the
//! same bits for every output, whatever the output buffer's alignment and its distance from the
//! inputs (which picks an upward, downward or plain sweep per job), and nothing written outside
//! it. The path is chosen by a process-wide size threshold, so this binary holds one test
//! function that sets it (0: always stream; `usize::MAX - 1`: never).

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

/// Where the outputs lie against the inputs, modulo 4 KB (the streaming sweep's direction
/// depends on it): (bytes from x to the outputs, bytes from x to dout).
#[derive(Clone, Copy, Debug)]
enum Place {
    /// All at the same offset: the upward sweep.
    Same,
    /// Outputs 80 bytes past x and dout: the downward sweep.
    Past,
    /// Outputs 80 bytes past x and 80 before dout: the backward's plain stores.
    Between,
}

impl Place {
    fn gaps(self) -> (usize, usize) {
        match self {
            Place::Same => (0, 0),
            Place::Past => (80, 0),
            Place::Between => (80, 160),
        }
    }
}

fn run<T: Float>(
    layer: Layer,
    shape: &[usize],
    off: usize,
    place: Place,
    par: Parallelism<'_>,
) -> Run<T> {
    let mut rng = Rng::new(shape.iter().product::<usize>() as u64 + off as u64);
    let x0: Tensor<T> = rng.randn(shape, 3.0, 20.0);
    let d = shape[1];
    let gamma: Tensor<T> = rng.randn(&[d], 1.0, 0.5);
    let beta: Tensor<T> = rng.randn(&[d], 1.0, 0.0);
    let dout0: Tensor<T> = rng.randn(shape, 1.0, 0.0);
    let n = x0.len();
    let es = std::mem::size_of::<T>();
    // x, dout and the inputs' copies in one arena, so their distances are exact: slots of whole
    // 4 KB pages, each buffer at its gap from the start of its slot.
    let (to_out, to_dout) = place.gaps();
    let slot = (n + 2 + off + 2 * 4096 / es).next_multiple_of(4096 / es);
    let mut arena = vec![T::zero(); 2 * slot];
    let (xs, ds) = arena.split_at_mut(slot);
    xs[..n].copy_from_slice(x0.data());
    ds[to_dout / es..to_dout / es + n].copy_from_slice(dout0.data());
    let x = TensorView::new(&xs[..n], shape).unwrap();
    let dout = TensorView::new(&ds[to_dout / es..to_dout / es + n], shape).unwrap();
    let nan = T::from_f(f64::NAN);
    // out and dx with room for one guard element each side and any start modulo 4 KB.
    let mut out = vec![nan; n + 2 + 4096 / es];
    let mut dx = vec![nan; n + 2 + 4096 / es];
    let (mut dg, mut db) = (
        Tensor::full(&[d], nan).unwrap(),
        Tensor::full(&[d], nan).unwrap(),
    );
    // The index of `v` whose address lies `to_out` bytes and `off` elements past x (mod 4 KB),
    // at least 1.
    let start = |v: &Vec<T>| {
        let dist = (v.as_ptr() as usize).wrapping_sub(x.data().as_ptr() as usize) & 4095;
        let want = (to_out + off * es) & 4095;
        match (want.wrapping_sub(dist) & 4095) / es {
            0 => 4096 / es,
            i => i,
        }
    };
    let (ob, db_) = (start(&out), start(&dx));
    let mut bn = BnParam::train();
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
    let o = TensorViewMut::new(&mut out[ob..ob + n], shape).unwrap();
    let stats = plan
        .forward_into(x, &gamma, &beta, params, o, &mut [], par)
        .unwrap();
    let dxs = TensorViewMut::new(&mut dx[db_..db_ + n], shape).unwrap();
    plan.backward_into(x, &gamma, &stats, dout, dxs, &mut dg, &mut db, &mut [], par)
        .unwrap();
    // The same layout for every run: the written region and one guard element each side.
    Run {
        out: out[ob - 1..ob + n + 1].to_vec(),
        dx: dx[db_ - 1..db_ + n + 1].to_vec(),
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
        for place in [Place::Same, Place::Past, Place::Between] {
            for par in [Parallelism::Sequential, Parallelism::Threads(2)] {
                set_streaming_threshold(Some(usize::MAX - 1));
                let plain = run::<T>(layer, shape, off, place, par);
                set_streaming_threshold(Some(0));
                let stream = run::<T>(layer, shape, off, place, par);
                let what = format!("{layer:?} {shape:?} offset {off} {place:?} {par:?}");
                same_bits(&format!("{what} out"), &plain.out, &stream.out);
                same_bits(&format!("{what} dx"), &plain.dx, &stream.dx);
                same_bits(&format!("{what} dgamma"), &plain.dg, &stream.dg);
                same_bits(&format!("{what} dbeta"), &plain.db, &stream.db);
                let n = shape.iter().product::<usize>();
                for buf in [&stream.out, &stream.dx] {
                    assert!(
                        buf[0].is_nan() && buf[1 + n].is_nan(),
                        "{what}: wrote outside"
                    );
                    assert!(buf[1..1 + n].iter().all(|v| !v.is_nan()), "{what}: gap");
                }
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
