use fastlayers::*;
fn main() {
    let mut rng = Rng::new(1);
    for (xs, ws, p) in [
        ([2usize, 3, 7, 6], [4usize, 3, 3, 2], ConvParam::new(2, 1)),
        (
            [2, 4, 9, 9],
            [6, 2, 3, 3],
            ConvParam::new(1, 2).with_groups(2).with_dilation(2, 1),
        ),
        ([3, 64, 8, 8], [70, 64, 3, 3], ConvParam::new(1, 1)),
    ] {
        let x: Tensor<f64> = rng.randn(&xs, 1.0, 0.0);
        let w: Tensor<f64> = rng.randn(&ws, 1.0, 0.0);
        let b: Tensor<f64> = rng.randn(&[ws[0]], 1.0, 0.0);
        let (o1, c1) = conv_forward_naive(&x, &w, &b, &p).unwrap();
        let (o2, c2) = conv_forward_fast(&x, &w, &b, &p).unwrap();
        let d: Tensor<f64> = rng.randn(o1.shape(), 1.0, 0.0);
        let g1 = conv_backward_naive(&d, &c1).unwrap();
        let g2 = conv_backward_fast(&d, &c2).unwrap();
        println!(
            "conv out {:e} dx {:e} dw {:e} db {:e}",
            rel_error(&o1, &o2).unwrap(),
            rel_error(&g1.0, &g2.0).unwrap(),
            rel_error(&g1.1, &g2.1).unwrap(),
            rel_error(&g1.2, &g2.2).unwrap()
        );
    }
    for (xs, p) in [
        ([2usize, 3, 8, 8], PoolParam::new(2, 2, 2)),
        (
            [2, 3, 9, 7],
            PoolParam::new(3, 3, 2).with_pad(1, 1).with_ceil_mode(true),
        ),
    ] {
        let x: Tensor<f32> = rng.randn(&xs, 1.0, 0.0);
        let (o1, c1) = max_pool_forward_naive(&x, &p).unwrap();
        let (o2, c2) = max_pool_forward_fast(&x, &p).unwrap();
        let d: Tensor<f32> = rng.randn(o1.shape(), 1.0, 0.0);
        println!(
            "pool out {:e} dx {:e}",
            rel_error(&o1, &o2).unwrap(),
            rel_error(
                &max_pool_backward_naive(&d, &c1).unwrap(),
                &max_pool_backward_fast(&d, &c2).unwrap()
            )
            .unwrap()
        );
    }
    let x: Tensor<f32> = rng.randn(&[4, 6, 5, 3], 3.0, 10.0);
    let gm: Tensor<f32> = rng.randn(&[6], 1.0, 0.0);
    let bt: Tensor<f32> = rng.randn(&[6], 1.0, 0.0);
    let d: Tensor<f32> = rng.randn(&[4, 6, 5, 3], 1.0, 0.0);
    let (o1, c1) = spatial_batchnorm_forward_naive(&x, &gm, &bt, &mut BnParam::train()).unwrap();
    let (o2, c2) = spatial_batchnorm_forward(&x, &gm, &bt, &mut BnParam::train()).unwrap();
    let (a, b) = (
        spatial_batchnorm_backward_naive(&d, &c1).unwrap(),
        spatial_batchnorm_backward(&d, &c2).unwrap(),
    );
    println!(
        "sbn out {:e} dx {:e} dg {:e} db {:e}",
        rel_error(&o1, &o2).unwrap(),
        rel_error(&a.0, &b.0).unwrap(),
        rel_error(&a.1, &b.1).unwrap(),
        rel_error(&a.2, &b.2).unwrap()
    );
    let (o1, c1) = spatial_groupnorm_forward_naive(&x, &gm, &bt, 3, &NormParam::default()).unwrap();
    let (o2, c2) = spatial_groupnorm_forward(&x, &gm, &bt, 3, &NormParam::default()).unwrap();
    let (a, b) = (
        spatial_groupnorm_backward_naive(&d, &c1).unwrap(),
        spatial_groupnorm_backward(&d, &c2).unwrap(),
    );
    println!(
        "gn out {:e} dx {:e} dg {:e} db {:e}",
        rel_error(&o1, &o2).unwrap(),
        rel_error(&a.0, &b.0).unwrap(),
        rel_error(&a.1, &b.1).unwrap(),
        rel_error(&a.2, &b.2).unwrap()
    );
    let x2 = x.clone().reshape(&[4, 90]).unwrap();
    let g2: Tensor<f32> = rng.randn(&[90], 1.0, 0.0);
    let d2 = d.clone().reshape(&[4, 90]).unwrap();
    let (o1, c1) = layernorm_forward_naive(&x2, &g2, &g2, &NormParam::default()).unwrap();
    let (o2, c2) = layernorm_forward(&x2, &g2, &g2, &NormParam::default()).unwrap();
    let (a, b) = (
        layernorm_backward_naive(&d2, &c1).unwrap(),
        layernorm_backward(&d2, &c2).unwrap(),
    );
    println!(
        "ln out {:e} dx {:e} dg {:e} db {:e}",
        rel_error(&o1, &o2).unwrap(),
        rel_error(&a.0, &b.0).unwrap(),
        rel_error(&a.1, &b.1).unwrap(),
        rel_error(&a.2, &b.2).unwrap()
    );
    let (o1, c1) = batchnorm_forward_naive(&x2, &g2, &g2, &mut BnParam::train()).unwrap();
    let (o2, c2) = batchnorm_forward(&x2, &g2, &g2, &mut BnParam::train()).unwrap();
    let (a, b) = (
        batchnorm_backward_naive(&d2, &c1).unwrap(),
        batchnorm_backward(&d2, &c2).unwrap(),
    );
    println!(
        "bn out {:e} dx {:e} dg {:e} db {:e}",
        rel_error(&o1, &o2).unwrap(),
        rel_error(&a.0, &b.0).unwrap(),
        rel_error(&a.1, &b.1).unwrap(),
        rel_error(&a.2, &b.2).unwrap()
    );
}
