//! Bad input: every entry point returns the specific typed error, naming the argument.

use fastlayers::*;

fn z(shape: &[usize]) -> Tensor<f64> {
    Tensor::zeros(shape).unwrap()
}

#[track_caller]
fn assert_err<T: std::fmt::Debug>(r: Result<T>, arg: &str, kind: &str) {
    let e = r.expect_err("expected an error");
    let k = match &e {
        Error::Shape { .. } => "shape",
        Error::Param { .. } => "param",
        Error::Label { .. } => "label",
        Error::Cache { .. } => "cache",
        Error::Overflow { .. } => "overflow",
        _ => "other",
    };
    assert_eq!((e.arg(), k), (arg, kind), "got: {e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with(arg) && msg.contains("expected") || k == "overflow",
        "message: {msg}"
    );
}

#[test]
fn conv_bad_inputs() {
    let p = ConvParam::new(1, 1);
    assert_err(
        conv_forward_naive(&z(&[2, 3, 4]), &z(&[2, 3, 3, 3]), &z(&[2]), &p),
        "x",
        "shape",
    );
    assert_err(
        conv_forward_naive(&z(&[2, 3, 4, 4]), &z(&[2, 4, 3, 3]), &z(&[2]), &p),
        "w",
        "shape",
    );
    assert_err(
        conv_forward_naive(&z(&[2, 3, 4, 4]), &z(&[2, 3, 3, 3]), &z(&[3]), &p),
        "b",
        "shape",
    );
    assert_err(
        conv_forward_naive(
            &z(&[2, 3, 4, 4]),
            &z(&[2, 3, 3, 3]),
            &z(&[2]),
            &ConvParam::new(0, 1),
        ),
        "conv_param.stride",
        "param",
    );
    // Window larger than the padded input.
    assert_err(
        conv_forward_naive(
            &z(&[1, 1, 2, 2]),
            &z(&[1, 1, 5, 5]),
            &z(&[1]),
            &ConvParam::new(1, 1),
        ),
        "w",
        "shape",
    );
    assert_err(
        conv_forward_naive(
            &z(&[1, 1, 5, 5]),
            &z(&[1, 1, 3, 3]),
            &z(&[1]),
            &ConvParam::new(1, 0).with_dilation(3, 3),
        ),
        "w",
        "shape",
    );
    assert_err(
        conv_forward_naive(
            &z(&[1, 4, 5, 5]),
            &z(&[3, 2, 3, 3]),
            &z(&[3]),
            &p.with_groups(2),
        ),
        "conv_param.groups",
        "param",
    );
    assert_err(
        conv_forward_naive(
            &z(&[1, 3, 5, 5]),
            &z(&[3, 1, 3, 3]),
            &z(&[3]),
            &p.with_groups(2),
        ),
        "conv_param.groups",
        "param",
    );
    assert_err(
        conv_forward_naive(
            &z(&[1, 3, 5, 5]),
            &z(&[3, 3, 3, 3]),
            &z(&[3]),
            &p.with_groups(0),
        ),
        "conv_param.groups",
        "param",
    );
    let (_, cache) =
        conv_forward_naive(&z(&[2, 3, 4, 4]), &z(&[2, 3, 3, 3]), &z(&[2]), &p).unwrap();
    assert_err(
        conv_backward_naive(&z(&[2, 2, 4, 3]), &cache),
        "dout",
        "shape",
    );
    // Sizes whose product overflows.
    assert_err(
        TensorView::<f64>::new(&[], &[usize::MAX, 2, 0, 1]),
        "data",
        "overflow",
    );
    // Padding so large that the padded extent overflows: refused, not wrapped.
    let huge = ConvParam::new(1, usize::MAX / 2 + 1);
    assert!(conv_forward_naive(&z(&[1, 1, 2, 2]), &z(&[1, 1, 1, 1]), &z(&[1]), &huge).is_err());
}

#[test]
fn pool_bad_inputs() {
    let x = z(&[1, 1, 4, 4]);
    assert_err(
        max_pool_forward_naive(&z(&[4, 4]), &PoolParam::new(2, 2, 2)),
        "x",
        "shape",
    );
    assert_err(
        max_pool_forward_naive(&x, &PoolParam::new(2, 2, 0)),
        "pool_param.stride",
        "param",
    );
    assert_err(
        max_pool_forward_naive(&x, &PoolParam::new(0, 2, 1)),
        "pool_param.pool_height",
        "param",
    );
    assert_err(
        max_pool_forward_naive(&x, &PoolParam::new(5, 2, 1)),
        "x",
        "shape",
    );
    assert_err(
        max_pool_forward_naive(&x, &PoolParam::new(2, 2, 1).with_pad(2, 0)),
        "pool_param.pad",
        "param",
    );
    let (_, cache) = max_pool_forward_naive(&x, &PoolParam::new(2, 2, 2)).unwrap();
    assert_err(
        max_pool_backward_naive(&z(&[1, 1, 3, 2]), &cache),
        "dout",
        "shape",
    );
}

#[test]
fn norm_bad_inputs() {
    let mut bn = BnParam::<f64>::train();
    assert_err(
        batchnorm_forward_naive(&z(&[4, 3, 1]), &z(&[3]), &z(&[3]), &mut bn),
        "x",
        "shape",
    );
    assert_err(
        batchnorm_forward_naive(&z(&[4, 3]), &z(&[4]), &z(&[3]), &mut bn),
        "gamma",
        "shape",
    );
    assert_err(
        batchnorm_forward_naive(&z(&[4, 3]), &z(&[3]), &z(&[1, 3]), &mut bn),
        "beta",
        "shape",
    );
    let mut bad = BnParam::<f64>::train();
    bad.running_mean = Some(vec![0.0; 2]);
    assert_err(
        batchnorm_forward_naive(&z(&[4, 3]), &z(&[3]), &z(&[3]), &mut bad),
        "running_mean",
        "shape",
    );
    assert_eq!(
        bad.running_mean,
        Some(vec![0.0; 2]),
        "bn_param untouched on error"
    );
    let mut bad = BnParam::<f64>::train();
    bad.momentum = 1.5;
    assert_err(
        batchnorm_forward_naive(&z(&[4, 3]), &z(&[3]), &z(&[3]), &mut bad),
        "momentum",
        "param",
    );
    let mut bad = BnParam::<f64>::train();
    bad.eps = -1.0;
    assert_err(
        batchnorm_forward_naive(&z(&[4, 3]), &z(&[3]), &z(&[3]), &mut bad),
        "eps",
        "param",
    );
    assert_err(
        batchnorm_forward_naive(&z(&[0, 3]), &z(&[3]), &z(&[3]), &mut BnParam::train()),
        "x",
        "shape",
    );
    assert_err(
        batchnorm_forward_naive(
            &z(&[1, 3]),
            &z(&[3]),
            &z(&[3]),
            &mut BnParam::pytorch(Mode::Train),
        ),
        "x",
        "shape",
    );
    assert_err(
        spatial_groupnorm_forward_naive(
            &z(&[2, 6, 2, 2]),
            &z(&[6]),
            &z(&[6]),
            4,
            &NormParam::default(),
        ),
        "G",
        "param",
    );
    assert_err(
        spatial_groupnorm_forward_naive(
            &z(&[2, 6, 2, 2]),
            &z(&[6]),
            &z(&[6]),
            0,
            &NormParam::default(),
        ),
        "G",
        "param",
    );
    assert_err(
        spatial_groupnorm_forward_naive(
            &z(&[2, 6, 2, 2]),
            &z(&[1, 6]),
            &z(&[6]),
            2,
            &NormParam::default(),
        ),
        "gamma",
        "shape",
    );

    // A cache from another layer, and a dout of another shape.
    let (_, ln_cache) =
        layernorm_forward_naive(&z(&[4, 3]), &z(&[3]), &z(&[3]), &NormParam::default()).unwrap();
    assert_err(
        batchnorm_backward_naive(&z(&[4, 3]), &ln_cache),
        "cache",
        "cache",
    );
    assert_err(
        batchnorm_backward_alt_naive(&z(&[4, 3]), &ln_cache),
        "cache",
        "cache",
    );
    let (_, bn_cache) =
        batchnorm_forward_naive(&z(&[4, 3]), &z(&[3]), &z(&[3]), &mut BnParam::train()).unwrap();
    assert_err(
        layernorm_backward_naive(&z(&[4, 3]), &bn_cache),
        "cache",
        "cache",
    );
    assert_err(
        spatial_batchnorm_backward_naive(&z(&[4, 3]), &bn_cache),
        "cache",
        "cache",
    );
    assert_err(
        batchnorm_backward_naive(&z(&[3, 4]), &bn_cache),
        "dout",
        "shape",
    );
}

#[test]
fn dropout_affine_loss_bad_inputs() {
    for p in [0.0, -0.1, 1.5, f64::NAN] {
        assert_err(
            dropout_forward(&z(&[2, 2]), &DropoutParam::train(p, None)),
            "p",
            "param",
        );
    }
    let (_, c) = dropout_forward(&z(&[2, 2]), &DropoutParam::train(0.5, Some(1))).unwrap();
    assert_err(dropout_backward(&z(&[4]), &c), "dout", "shape");

    assert_err(
        affine_forward_naive(&z(&[2, 3, 4]), &z(&[11, 5]), &z(&[5])),
        "w",
        "shape",
    );
    assert_err(
        affine_forward_naive(&z(&[2, 3, 4]), &z(&[12, 5]), &z(&[4])),
        "b",
        "shape",
    );
    let (_, c) = affine_forward_naive(&z(&[2, 12]), &z(&[12, 5]), &z(&[5])).unwrap();
    assert_err(affine_backward_naive(&z(&[2, 4]), &c), "dout", "shape");
    let (_, c) = relu_forward(&z(&[2, 3])).unwrap();
    assert_err(relu_backward(&z(&[3, 2]), &c), "dout", "shape");

    let e = softmax_loss(&z(&[2, 3]), &[0, 3]).unwrap_err();
    assert_eq!(
        e,
        Error::Label {
            arg: "y",
            index: 1,
            label: 3,
            classes: 3
        }
    );
    assert_err(svm_loss(&z(&[2, 3]), &[0]), "y", "shape");
    assert_err(svm_loss(&z(&[2, 3, 1]), &[0, 1]), "x", "shape");
    assert_err(rel_error(&z(&[2, 3]), &z(&[3, 2])), "y", "shape");
    assert_err(Tensor::new(vec![0.0f32; 5], &[2, 3]), "data", "shape");
}
