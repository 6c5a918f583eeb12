//! The fuzz targets' checks (fuzz/src/checks.rs) on stable, in the ordinary test run: each
//! target over the committed seeds (fuzz/seeds/<target>/: every fixed finding, named after
//! what it found), a local corpus if one was grown (fuzz/corpus/<target>/), and 1,500 generated
//! inputs, so the harness and the regressions run on every CI run whether or not cargo-fuzz is
//! installed.

#[allow(dead_code)]
#[path = "../fuzz/src/checks.rs"]
mod checks;

fn run(target: &str, check: fn(&[u8])) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let seeds = std::fs::read_dir(root.join("seeds").join(target))
        .expect("fuzz/seeds/<target> is committed")
        .count();
    assert!(seeds > 0, "fuzz/seeds/{target} is empty");
    for dir in ["seeds", "corpus"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) {
            for e in entries.flatten() {
                check(&std::fs::read(e.path()).unwrap());
            }
        }
    }
    let mut rng = fastlayers::Rng::new(target.len() as u64);
    for i in 0..1500 {
        let len = rng.below(64 + i % 512);
        let bytes: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
        check(&bytes);
    }
}

#[test]
fn conv() {
    run("conv", checks::conv);
}

#[test]
fn pool() {
    run("pool", checks::pool);
}

#[test]
fn norm() {
    run("norm", checks::norm);
}

#[test]
fn dense() {
    run("dense", checks::dense);
}
