//! Inputs a hostile caller would try (issue 19's list), each of which panicked or aborted
//! before its fix: empty dimensions, an empty batch of huge images, absurd thread counts.
//! Every call must return Ok, agreeing with the reference, or a typed Err.

use fastlayers::*;

fn close<T: Float>(a: &Tensor<T>, b: &Tensor<T>) -> bool {
    a.shape() == b.shape()
        && a.data()
            .iter()
            .zip(b.data())
            .all(|(x, y)| (x.to_f() - y.to_f()).abs() <= 1e-5 * (1.0 + y.to_f().abs()))
}

/// Fast and reference convolution, forward and backward, on random data of these shapes: the
/// same Ok values or the same Err.
fn conv_agrees<T: Float>(xs: &[usize], ws: &[usize], p: &ConvParam) -> Result<()> {
    let mut rng = Rng::new(5);
    let x: Tensor<T> = rng.randn(xs, 1.0, 0.0);
    let w: Tensor<T> = rng.randn(ws, 1.0, 0.0);
    let b: Tensor<T> = rng.randn(&[ws[0]], 1.0, 0.0);
    let fast = conv_forward_fast(&x, &w, &b, p);
    let naive = conv_forward_naive(&x, &w, &b, p);
    let ((out, cache), (out_n, cache_n)) = match (fast, naive) {
        (Ok(f), Ok(n)) => (f, n),
        (Err(e), Err(en)) => {
            assert_eq!(e, en, "{xs:?} {ws:?}");
            return Err(e);
        }
        (f, n) => panic!(
            "{xs:?} {ws:?}: fast {:?} vs reference {:?}",
            f.err(),
            n.err()
        ),
    };
    assert!(close(&out, &out_n), "forward {xs:?} {ws:?}");
    let dout: Tensor<T> = rng.randn(out.shape(), 1.0, 0.0);
    let (dx, dw, db) = conv_backward_fast(&dout, &cache)?;
    let (dxn, dwn, dbn) = conv_backward_naive(&dout, &cache_n)?;
    assert!(
        close(&dx, &dxn) && close(&dw, &dwn) && close(&db, &dbn),
        "backward {xs:?} {ws:?}"
    );
    // The plan's no-dx entry point too.
    let plan = ConvPlan::<T>::new(xs, ws, p)?;
    let par = Parallelism::Threads(2);
    let mut wsb = vec![T::zero(); plan.backward_workspace_len(par)?];
    let (mut dw2, mut db2) = (
        Tensor::full(ws, T::nan())?,
        Tensor::full(&[ws[0]], T::nan())?,
    );
    plan.backward_weights_into(&x, &dout, &mut dw2, &mut db2, &mut wsb, par)?;
    assert!(close(&dw2, &dwn) && close(&db2, &dbn));
    Ok(())
}

#[test]
fn empty_dimensions_in_convolution_on_every_level() {
    let best = cpu::detected_simd_level();
    let cases: [([usize; 4], [usize; 4], usize, bool); 7] = [
        ([2, 0, 5, 5], [3, 0, 3, 3], 1, true), // C = 0: out is the bias
        ([2, 3, 5, 5], [0, 3, 3, 3], 1, true), // F = 0
        ([2, 3, 0, 5], [4, 3, 3, 3], 2, true), // H = 0, padding makes a 4 x 9 input
        ([2, 3, 5, 0], [4, 3, 3, 3], 2, true), // W = 0
        ([0, 3, 5, 5], [4, 3, 3, 3], 1, true), // N = 0
        ([2, 3, 0, 5], [4, 3, 3, 3], 1, false), // the window does not fit 2 x 7: a Shape error
        ([1, 0, 0, 0], [0, 0, 1, 1], 0, false), // a 1 x 1 window on a 0 x 0 input: Shape error
    ];
    for level in [best, cpu::SimdLevel::Avx2, cpu::SimdLevel::Portable] {
        if level > best {
            continue;
        }
        cpu::force_simd_level(level);
        for (xs, ws, pad, ok) in cases {
            let p = ConvParam::new(1, pad);
            for r in [
                conv_agrees::<f32>(&xs, &ws, &p),
                conv_agrees::<f64>(&xs, &ws, &p),
            ] {
                assert_eq!(r.is_ok(), ok, "{level:?} {xs:?} {ws:?} pad {pad}: {r:?}");
            }
        }
    }
    cpu::force_simd_level(best);
}

#[test]
fn an_empty_batch_of_huge_images_needs_no_workspace() {
    // Formerly sized the per-image workspace (2^61 elements): capacity-overflow panic, or an
    // aborting allocation at the portable level.
    let p = ConvParam::new(1, 0);
    let (xs, ws) = ([0, 1, 1 << 30, 1 << 30], [1, 1, 1, 1]);
    let plan = ConvPlan::<f32>::new(&xs, &ws, &p).unwrap();
    assert_eq!(plan.workspace_len(Parallelism::Threads(2)).unwrap(), 0);
    let x = Tensor::<f32>::zeros(&xs).unwrap();
    let (w, b) = (
        Tensor::<f32>::zeros(&ws).unwrap(),
        Tensor::<f32>::zeros(&[1]).unwrap(),
    );
    let (out, cache) = conv_forward_fast(&x, &w, &b, &p).unwrap();
    assert_eq!(out.shape(), &xs);
    let (dx, dw, db) = conv_backward_fast(&out, &cache).unwrap();
    assert!(dx.is_empty() && dw.data() == [0.0] && db.data() == [0.0]);
}

#[test]
fn absurd_thread_counts_are_capped() {
    // Formerly threads * slot wrapped (an Err quoting a wrapped size, or a 3 EB allocation), and
    // Threads(usize::MAX) over a large pooling call spawned threads without end.
    let p = ConvParam::new(1, 1);
    let plan = ConvPlan::<f32>::new(&[2, 3, 8, 8], &[4, 3, 3, 3], &p).unwrap();
    let capped = plan
        .workspace_len(Parallelism::Threads(MAX_THREADS))
        .unwrap();
    for t in [usize::MAX, usize::MAX / 2, 1 << 40, MAX_THREADS + 1] {
        assert_eq!(
            plan.workspace_len(Parallelism::Threads(t)).unwrap(),
            capped,
            "{t}"
        );
        assert_eq!(Parallelism::Threads(t).threads(), MAX_THREADS);
    }
    let x: Tensor<f32> = Rng::new(1).randn(&[4, 16, 128, 128], 1.0, 0.0);
    let pp = PoolParam::new(2, 2, 2);
    let pool = PoolPlan::<f32>::new(x.shape(), &pp).unwrap();
    let mut out = Tensor::zeros(&pool.geom().out_shape()).unwrap();
    let mut idx = vec![0u32; out.len()];
    pool.forward_into(
        &x,
        &mut out,
        &mut idx,
        &mut [],
        Parallelism::Threads(usize::MAX),
    )
    .unwrap();
    let mut out1 = Tensor::zeros(&pool.geom().out_shape()).unwrap();
    pool.forward_into(&x, &mut out1, &mut idx, &mut [], Parallelism::Sequential)
        .unwrap();
    assert_eq!(out.data(), out1.data());
}

#[test]
fn buffers_the_allocator_refuses_are_errors_not_aborts() {
    // 2^62 bytes: a size Rust accepts, which no allocator here can give.
    let e = Tensor::<f32>::zeros(&[1 << 40, 1 << 20]).unwrap_err();
    assert!(matches!(e, Error::Alloc { arg: "shape", .. }), "{e}");
    // Past isize::MAX bytes: formerly a capacity-overflow panic.
    let e = Tensor::<f64>::zeros(&[1 << 61, 4]).unwrap_err();
    assert!(matches!(e, Error::Alloc { .. }), "{e}");
    // A one-pixel image padded to 2^29 x 2^29: the output alone is 2^58 elements.
    let x = Tensor::<f32>::zeros(&[1, 1, 1, 1]).unwrap();
    let w = Tensor::<f32>::zeros(&[1, 1, 1, 1]).unwrap();
    let b = Tensor::<f32>::zeros(&[1]).unwrap();
    let e = conv_forward_fast(&x, &w, &b, &ConvParam::new(1, 1 << 28)).unwrap_err();
    assert!(
        matches!(e, Error::Alloc { .. } | Error::Overflow { .. }),
        "{e}"
    );
    let e = max_pool_forward_fast(&x, &PoolParam::new(1, 1, 1).with_pad(0, 0)).map(|_| ());
    assert!(e.is_ok());
}
