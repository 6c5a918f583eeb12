//! Prints the plan (algorithm per direction, and why) of each named convolution shape.
//! `cargo run --release --example plans`
use fastlayers::{ConvParam, ConvPlan};
use fastlayers_cli::bench::CONV_SHAPES;

fn main() {
    for (name, xs, ws, s, p) in CONV_SHAPES {
        let f32p = ConvPlan::<f32>::new(&xs, &ws, &ConvParam::new(s, p)).expect("valid shape");
        let f64p = ConvPlan::<f64>::new(&xs, &ws, &ConvParam::new(s, p)).expect("valid shape");
        println!("{name} f32: {f32p:?}\n{name} f64: {f64p:?}");
    }
}
