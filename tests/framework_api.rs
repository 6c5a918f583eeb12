//! The no-allocation framework entry points: validation before any write, exact workspace
//! queries, and agreement with the notebook-style API.

mod common;

use fastlayers::*;

fn nan_buf(n: usize) -> Vec<f64> {
    vec![f64::NAN; n]
}

fn untouched(v: &[f64]) -> bool {
    v.iter().all(|x| x.is_nan())
}

#[test]
fn conv_into_validates_before_writing_and_matches_the_notebook_api() {
    let mut rng = Rng::new(1);
    let (xs, ws, p) = ([2, 3, 8, 8], [4, 3, 3, 3], ConvParam::new(1, 1));
    let x: Tensor<f64> = rng.randn(&xs, 1.0, 0.0);
    let w: Tensor<f64> = rng.randn(&ws, 1.0, 0.0);
    let b: Tensor<f64> = rng.randn(&[4], 1.0, 0.0);
    let par = Parallelism::Threads(2);
    let need = conv_workspace_len::<f64>(&xs, &ws, &p, par).unwrap();
    let need_fwd = conv_forward_workspace_len::<f64>(&xs, &ws, &p, par).unwrap();
    let need_bwd = conv_backward_workspace_len::<f64>(&xs, &ws, &p, par).unwrap();
    assert_eq!(need, need_fwd.max(need_bwd));
    // Output of the wrong size, workspace one element short: errors, nothing written.
    let (mut out, mut ws_buf) = (nan_buf(2 * 4 * 64 - 1), nan_buf(need));
    let e = conv_forward_into(&x, &w, &b, &p, &mut out, &mut ws_buf, par).unwrap_err();
    assert_eq!(e.arg(), "out");
    assert!(untouched(&out) && untouched(&ws_buf));
    let (mut out, mut short) = (nan_buf(2 * 4 * 64), nan_buf(need_fwd - 1));
    let e = conv_forward_into(&x, &w, &b, &p, &mut out, &mut short, par).unwrap_err();
    assert_eq!(e.arg(), "workspace");
    assert!(untouched(&out));
    // The exact forward workspace is enough; output starts as NaN, so every element must be
    // written.
    let mut fwd_ws = nan_buf(need_fwd);
    conv_forward_into(&x, &w, &b, &p, &mut out, &mut fwd_ws, par).unwrap();
    let mut ws_buf = nan_buf(need);
    let (want, _) = conv_forward_fast(&x, &w, &b, &p).unwrap();
    assert_eq!(out, want.data());
    // Backward: bad dout, then a good call into NaN-filled buffers.
    let dout: Tensor<f64> = rng.randn(&[2, 4, 8, 8], 1.0, 0.0);
    let (mut dx, mut dw, mut db) = (nan_buf(x.len()), nan_buf(w.len()), nan_buf(4));
    let bad: Tensor<f64> = rng.randn(&[2, 4, 8, 7], 1.0, 0.0);
    let e = conv_backward_into(
        &x,
        &w,
        &bad,
        &p,
        &mut dx,
        &mut dw,
        &mut db,
        &mut ws_buf,
        par,
    )
    .unwrap_err();
    assert_eq!(e.arg(), "dout");
    assert!(untouched(&dx) && untouched(&dw) && untouched(&db));
    let e = conv_backward_into(
        &x,
        &w,
        &dout,
        &p,
        &mut dx,
        &mut dw[..10],
        &mut db,
        &mut ws_buf,
        par,
    )
    .unwrap_err();
    assert_eq!(e.arg(), "dw");
    let mut short = nan_buf(need_bwd - 1);
    let e = conv_backward_into(
        &x, &w, &dout, &p, &mut dx, &mut dw, &mut db, &mut short, par,
    )
    .unwrap_err();
    assert_eq!(e.arg(), "workspace");
    assert!(untouched(&dx) && untouched(&dw) && untouched(&db));
    let mut bwd_ws = nan_buf(need_bwd);
    conv_backward_into(
        &x,
        &w,
        &dout,
        &p,
        &mut dx,
        &mut dw,
        &mut db,
        &mut bwd_ws,
        par,
    )
    .unwrap();
    let (_, cache) = conv_forward_fast(&x, &w, &b, &p).unwrap();
    let (ex, ew, eb) = conv_backward_fast(&dout, &cache).unwrap();
    assert_eq!(
        (dx.as_slice(), dw.as_slice(), db.as_slice()),
        (ex.data(), ew.data(), eb.data())
    );
}

#[test]
fn conv_cache_new_is_the_forwards_cache() {
    let mut rng = Rng::new(5);
    let p = ConvParam::new(2, 1).with_groups(2);
    let x: Tensor<f64> = rng.randn(&[2, 4, 7, 9], 1.0, 0.0);
    let w: Tensor<f64> = rng.randn(&[6, 2, 3, 3], 1.0, 0.0);
    let b: Tensor<f64> = rng.randn(&[6], 1.0, 0.0);
    let (out, fwd) = conv_forward_naive(&x, &w, &b, &p).unwrap();
    let dout: Tensor<f64> = rng.randn(out.shape(), 1.0, 0.0);
    let made = ConvCache::new(&x, &w, &p).unwrap();
    assert_eq!(made.geom(), fwd.geom());
    assert_eq!(
        conv_backward_naive(&dout, &made).unwrap(),
        conv_backward_naive(&dout, &fwd).unwrap()
    );
    // Shapes are validated like the forward's: w's channels must be C / groups.
    let bad: Tensor<f64> = rng.randn(&[6, 4, 3, 3], 1.0, 0.0);
    let e = ConvCache::new(&x, &bad, &p).unwrap_err();
    assert_eq!(e.arg(), "w");
}

#[test]
fn pool_into_checks_argmax_indices() {
    let mut rng = Rng::new(2);
    let x: Tensor<f64> = rng.randn(&[2, 2, 4, 4], 1.0, 0.0);
    let p = PoolParam::new(2, 2, 2);
    let par = Parallelism::Sequential;
    let (mut out, mut idx) = (nan_buf(16), vec![0u32; 16]);
    assert_eq!(
        max_pool_forward_into(&x, &p, &mut out[..15], &mut idx, par)
            .unwrap_err()
            .arg(),
        "out"
    );
    assert!(untouched(&out));
    max_pool_forward_into(&x, &p, &mut out, &mut idx, par).unwrap();
    let dout: Tensor<f64> = rng.randn(&[2, 2, 2, 2], 1.0, 0.0);
    let mut dx = nan_buf(64);
    let mut corrupt = idx.clone();
    corrupt[5] = 16; // outside a 4x4 plane
    let e = max_pool_backward_into(&dout, &corrupt, &[2, 2, 4, 4], &p, &mut dx, par).unwrap_err();
    assert_eq!(e.arg(), "argmax");
    assert!(untouched(&dx));
    max_pool_backward_into(&dout, &idx, &[2, 2, 4, 4], &p, &mut dx, par).unwrap();
    let (_, cache) = max_pool_forward_naive(&x, &p).unwrap();
    assert_eq!(dx, max_pool_backward_naive(&dout, &cache).unwrap().data());
}

#[test]
fn norm_into_validates_and_matches() {
    let mut rng = Rng::new(3);
    let x: Tensor<f64> = rng.randn(&[3, 4, 2, 5], 2.0, 1.0);
    let g: Tensor<f64> = rng.randn(&[4], 1.0, 0.0);
    let par = Parallelism::Threads(2);
    let mut out = nan_buf(x.len());
    let mut bn = BnParam::train();
    let before = bn.clone();
    let e = batchnorm_forward_into(true, &x, &g, &g, &mut bn, &mut out[..7], par).unwrap_err();
    assert_eq!(e.arg(), "out");
    assert!(
        untouched(&out) && bn == before,
        "nothing written on error, bn_param included"
    );
    let st = batchnorm_forward_into(true, &x, &g, &g, &mut bn, &mut out, par).unwrap();
    let (want, cache) = spatial_batchnorm_forward(&x, &g, &g, &mut BnParam::train()).unwrap();
    assert_eq!(out, want.data());
    assert_eq!(st.mean, cache.mean());
    let dout: Tensor<f64> = rng.randn(x.shape(), 1.0, 0.0);
    let (mut dx, mut dg, mut db) = (nan_buf(x.len()), nan_buf(4), nan_buf(4));
    let mut wrong = st.clone();
    wrong.mean.pop();
    assert_eq!(
        norm_backward_into(&x, &g, &wrong, &dout, &mut dx, &mut dg, &mut db, par)
            .unwrap_err()
            .arg(),
        "stats"
    );
    assert!(untouched(&dx));
    norm_backward_into(&x, &g, &st, &dout, &mut dx, &mut dg, &mut db, par).unwrap();
    let (ex, eg, eb) = spatial_batchnorm_backward(&dout, &cache).unwrap();
    assert_eq!(
        (dx.as_slice(), dg.as_slice(), db.as_slice()),
        (ex.data(), eg.data(), eb.data())
    );
}
