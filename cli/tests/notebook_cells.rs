//! The notebooks' check cells: `fastlayers check` passes at the notebook's seed, and the cells
//! with printed expected outputs (data/notebook_cells.json, the one copy) hold for the fast
//! kernels and for f32 too.

use fastlayers::*;
use fastlayers_cli::check::{cell_data, reference_checks};

#[test]
fn every_check_cell_passes_at_the_notebook_seed() {
    let cells = reference_checks(231).unwrap();
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

fn to32(t: &Tensor<f64>) -> Tensor<f32> {
    Tensor::from_f64(t)
}

#[test]
fn conv_forward_linspace_cell_fast_and_f32() {
    let d = cell_data("conv_forward_naive");
    let (x, w, b) = (
        d.input("x").unwrap(),
        d.input("w").unwrap(),
        d.input("b").unwrap(),
    );
    let p = ConvParam::new(d.param("stride"), d.param("pad"));
    let correct = d.correct().unwrap();
    let (out, _) = conv_forward_fast(&x, &w, &b, &p).unwrap();
    assert!(rel_error(&out, &correct).unwrap() < d.tol);
    let (out32, _) = conv_forward_fast(&to32(&x), &to32(&w), &to32(&b), &p).unwrap();
    // f32 inputs carry 2^-24 relative rounding; the 8-digit correct_out adds 1e-8.
    assert!(rel_error(&out32, &to32(&correct)).unwrap() < 1e-5);
}

#[test]
fn max_pool_forward_linspace_cell_fast() {
    let d = cell_data("max_pool_forward_naive");
    let x = d.input("x").unwrap();
    let p = PoolParam::new(
        d.param("pool_height"),
        d.param("pool_width"),
        d.param("stride"),
    );
    let (out, _) = max_pool_forward_fast(&x, &p).unwrap();
    assert!(rel_error(&out, &d.correct().unwrap()).unwrap() < d.tol);
    // With linspace input every window's maximum is its bottom-right element.
    for (o, v) in out.data().iter().enumerate() {
        let (nc, oh, ow) = (o / 4, (o / 2) % 2, o % 2);
        let idx = nc * 16 + (2 * oh + 1) * 4 + 2 * ow + 1;
        assert_eq!(*v, x.data()[idx]);
    }
}

#[test]
fn affine_forward_linspace_cell_fast() {
    let d = cell_data("affine_forward");
    let (x, w, b) = (
        d.input("x").unwrap(),
        d.input("w").unwrap(),
        d.input("b").unwrap(),
    );
    let (out, _) = affine_forward(&x, &w, &b).unwrap();
    assert!(rel_error(&out, &d.correct().unwrap()).unwrap() < d.tol);
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
