//! The notebooks' check cells, with their exact inputs and printed expected outputs.

#![allow(clippy::needless_range_loop, clippy::identity_op)]

mod common;

use fastlayers::*;

#[test]
fn every_check_cell_passes_at_the_notebook_seed() {
    let cells = check::reference_checks(231).unwrap();
    assert!(cells.len() >= 20);
    for c in &cells {
        assert!(c.passed(), "check cell failed:\n{}", c.render());
        assert!(
            c.measures().count() > 0,
            "cell without a measure: {}",
            c.title
        );
    }
}

#[test]
fn conv_forward_linspace_cell_f64_and_f32() {
    // The notebook's cell: x (2,3,4,4), w (3,3,4,4), stride 2, pad 1; the seed prints 2.2e-08
    // (its correct_out has 8 significant digits).
    #[rustfmt::skip]
    let correct = [
        -0.08759809, -0.10987781, -0.18387192, -0.2109216, 0.21027089, 0.21661097, 0.22847626,
        0.23004637, 0.50813986, 0.54309974, 0.64082444, 0.67101435, -0.98053589, -1.03143541,
        -1.19128892, -1.24695841, 0.69108355, 0.66880383, 0.59480972, 0.56776003, 2.36270298,
        2.36904306, 2.38090835, 2.38247847,
    ];
    let correct = Tensor::new(correct.to_vec(), &[2, 3, 2, 2]).unwrap();
    let x = Tensor::<f64>::linspace(-0.1, 0.5, &[2, 3, 4, 4]).unwrap();
    let w = Tensor::<f64>::linspace(-0.2, 0.3, &[3, 3, 4, 4]).unwrap();
    let b = Tensor::<f64>::linspace(-0.1, 0.2, &[3]).unwrap();
    let (out, _) = conv_forward_naive(&x, &w, &b, &ConvParam::new(2, 1)).unwrap();
    assert!(rel_error(&out, &correct).unwrap() < 1e-7);
    let (out32, _) = conv_forward_naive(
        &common::to32(&x),
        &common::to32(&w),
        &common::to32(&b),
        &ConvParam::new(2, 1),
    )
    .unwrap();
    // f32 inputs carry 2^-24 relative rounding; the 8-digit correct_out adds 1e-8.
    assert!(rel_error(&out32, &common::to32(&correct)).unwrap() < 1e-5);
}

#[test]
fn max_pool_forward_linspace_cell() {
    #[rustfmt::skip]
    let correct = [
        -0.26315789, -0.24842105, -0.20421053, -0.18947368, -0.14526316, -0.13052632,
        -0.08631579, -0.07157895, -0.02736842, -0.01263158, 0.03157895, 0.04631579, 0.09052632,
        0.10526316, 0.14947368, 0.16421053, 0.20842105, 0.22315789, 0.26736842, 0.28210526,
        0.32631579, 0.34105263, 0.38526316, 0.4,
    ];
    let correct = Tensor::new(correct.to_vec(), &[2, 3, 2, 2]).unwrap();
    let x = Tensor::<f64>::linspace(-0.3, 0.4, &[2, 3, 4, 4]).unwrap();
    let (out, _) = max_pool_forward_naive(&x, &PoolParam::new(2, 2, 2)).unwrap();
    let e = rel_error(&out, &correct).unwrap();
    assert!(e < 1e-7, "{e}");
    // With linspace input every window's maximum is its bottom-right element.
    for (o, v) in out.data().iter().enumerate() {
        let (nc, oh, ow) = (o / 4, (o / 2) % 2, o % 2);
        let idx = nc * 16 + (2 * oh + 1) * 4 + 2 * ow + 1;
        assert_eq!(*v, x.data()[idx]);
    }
}

#[test]
fn affine_forward_linspace_cell() {
    let x = Tensor::<f64>::linspace(-0.1, 0.5, &[2, 4, 5, 6]).unwrap();
    let w = Tensor::<f64>::linspace(-0.2, 0.3, &[120, 3]).unwrap();
    let b = Tensor::<f64>::linspace(-0.3, 0.1, &[3]).unwrap();
    let (out, _) = affine_forward_naive(&x, &w, &b).unwrap();
    let correct = Tensor::new(
        vec![
            1.49834967, 1.70660132, 1.91485297, 3.25553199, 3.5141327, 3.77273342,
        ],
        &[2, 3],
    )
    .unwrap();
    assert!(rel_error(&out, &correct).unwrap() < 1e-7);
}

#[test]
fn linspace_matches_numpy() {
    // np.linspace(-0.1, 0.5, num=5) = [-0.1, 0.05, 0.2, 0.35, 0.5]
    let t = Tensor::<f64>::linspace(-0.1, 0.5, &[5]).unwrap();
    let want = [-0.1, 0.05, 0.2, 0.35, 0.5];
    for (a, b) in t.data().iter().zip(want) {
        assert!((a - b).abs() < 1e-15);
    }
}
