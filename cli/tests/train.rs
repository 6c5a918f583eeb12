//! `fastlayers train` as a user runs it: a real child process, killed with SIGKILL mid-run,
//! leaves an intact checkpoint, and `--resume` from it ends with the same parameters, bit for
//! bit, as an uninterrupted run with the same seed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fastlayers"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fastlayers-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small conv net on the embedded data: quick, and long enough (12 epochs) to be killed
/// part way.
fn args(out: &Path) -> Vec<String> {
    [
        "train",
        "--model",
        "tlcn",
        "--num-filters",
        "8",
        "--filter-size",
        "3",
        "--hidden-dim",
        "32",
        "--epochs",
        "12",
        "--batch-size",
        "50",
        "--num-train",
        "800",
        "--seed",
        "3",
        "--threads",
        "2",
        "--no-progress",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.display().to_string()])
    .collect()
}

fn tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec(), t.data().to_vec()))
        .collect();
    v.sort();
    v
}

fn epoch_of(path: &Path) -> Option<usize> {
    let bytes = std::fs::read(path).ok()?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
    meta.metadata().as_ref()?.get("epoch")?.parse().ok()
}

#[test]
fn killed_run_resumes_to_the_uninterrupted_result() {
    let full = tmp("full");
    let st = bin().args(args(&full)).output().unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let log = String::from_utf8_lossy(&st.stdout);
    assert!(log.contains("(Iteration 1 / 192) loss: "), "{log}");
    assert!(log.contains("(Epoch 12 / 12) train acc: "), "{log}");
    for f in [
        "params.safetensors",
        "curves.png",
        "filters.png",
        "checkpoint.safetensors",
    ] {
        assert!(full.join(f).is_file(), "{f}");
    }

    let killed = tmp("killed");
    let ck = killed.join("checkpoint.safetensors");
    let mut child = bin()
        .args(args(&killed))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill once the third epoch's checkpoint exists: the run is then part way through an
    // epoch (or writing the next checkpoint).
    let t0 = Instant::now();
    while epoch_of(&ck).is_none_or(|e| e < 3) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(30));
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert!(
        !killed.join("params.safetensors").exists(),
        "the run finished before the kill"
    );
    // The checkpoint is whole (it parses) and no temporary file is taken for it.
    let e = epoch_of(&ck).expect("an intact checkpoint");
    assert!((3..12).contains(&e), "epoch {e}");
    tensors(&ck);

    let st = bin()
        .args(args(&killed))
        .arg("--resume")
        .arg(&ck)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(
        String::from_utf8_lossy(&st.stdout)
            .contains(&format!("resumed from {} at epoch {e}", ck.display()))
    );
    assert_eq!(
        tensors(&killed.join("params.safetensors")),
        tensors(&full.join("params.safetensors")),
        "resumed and uninterrupted runs end with different parameters"
    );
    assert_eq!(tensors(&ck), tensors(&full.join("checkpoint.safetensors")));
    let _ = std::fs::remove_dir_all(&full);
    let _ = std::fs::remove_dir_all(&killed);
}

#[test]
fn bad_arguments_are_clear_errors() {
    let out = tmp("bad");
    let run = |extra: &[&str]| {
        let o = bin()
            .args(["train", "--epochs", "1", "--out"])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let e = run(&["--cifar10", "/nonexistent/cifar"]);
    assert!(
        e.contains("/nonexistent/cifar") && e.contains("not a directory"),
        "{e}"
    );
    let e = run(&["--update-rule", "nesterov"]);
    assert!(e.contains("update_rule"), "{e}");
    let e = run(&["--resume", "/nonexistent/ck.safetensors"]);
    assert!(e.contains("/nonexistent/ck.safetensors"), "{e}");
    let e = run(&[
        "--update-rule",
        "sgd",
        "--lr",
        "1e30",
        "--weight-scale",
        "1",
    ]);
    assert!(
        e.contains("loss is") && e.contains("training stopped"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
