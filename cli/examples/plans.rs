//! Prints the plan (algorithm per direction, and why) of each named convolution shape.
//! `cargo run --release --example plans [-- measure [THREADS]]`: with `measure`, also what
//! `ConvPlan::measure` times fastest on this machine, direction by direction, flagging where
//! it differs from the cost model's choice (a check of the cost model on a new host).
use fastlayers::{ConvDirection, ConvParam, ConvPlan, Float, Parallelism};
use fastlayers_cli::bench::CONV_SHAPES;

fn show<T: Float>(name: &str, plan: ConvPlan<T>, measure: Option<Parallelism<'_>>) {
    println!("{name} {}: {plan:?}", T::NAME);
    let Some(par) = measure else { return };
    let m = plan.measure(par).expect("a valid plan");
    for d in [
        ConvDirection::Forward,
        ConvDirection::DataGrad,
        ConvDirection::WeightGrad,
    ] {
        let flag = if m.algorithm(d) == plan.algorithm(d) {
            "same"
        } else {
            "DIFFERS"
        };
        println!(
            "  {d:?}: cost model {:?}, measured {:?} ({flag})",
            plan.algorithm(d),
            m.algorithm(d)
        );
    }
    println!("  {m:?}");
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let threads = a.get(1).and_then(|t| t.parse().ok()).unwrap_or(2);
    let measure =
        (a.first().map(String::as_str) == Some("measure")).then_some(Parallelism::Threads(threads));
    for (name, xs, ws, s, p) in CONV_SHAPES {
        let cp = ConvParam::new(s, p);
        show(
            name,
            ConvPlan::<f32>::new(&xs, &ws, &cp).expect("valid shape"),
            measure,
        );
        show(
            name,
            ConvPlan::<f64>::new(&xs, &ws, &cp).expect("valid shape"),
            measure,
        );
    }
}
