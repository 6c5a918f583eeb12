//! Update rules against the notebook's formulas, the Solver's notebook behaviour (overfitting
//! 100 samples, determinism over thread counts), checkpoints that resume exactly, and the
//! CIFAR-10 loader on real pixels written in the official binary layout.

use std::path::PathBuf;

use fastlayers::{Rng, Tensor};
use fastlayers_nn::data::{self, RawImages, Split};
use fastlayers_nn::optim::OptimState;
use fastlayers_nn::solver::Observer;
use fastlayers_nn::{
    CnnConfig, Error, FcNetConfig, FullyConnectedNet, Model, OptimConfig, Solver, SolverConfig,
    ThreeLayerConvNet, UpdateRule, checkpoint,
};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fastlayers-nn-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The notebook's optim.py, written out in f64 from its text, as the independent reference.
fn notebook_step(
    rule: UpdateRule,
    c: &OptimConfig,
    w: &mut [f64],
    dw: &[f64],
    s: &mut [Vec<f64>],
    t: &mut u64,
) {
    for i in 0..w.len() {
        match rule {
            UpdateRule::Sgd => w[i] -= c.learning_rate * dw[i],
            UpdateRule::SgdMomentum => {
                let v = c.momentum * s[0][i] - c.learning_rate * dw[i];
                w[i] += v;
                s[0][i] = v;
            }
            UpdateRule::RmsProp => {
                s[0][i] = c.decay_rate * s[0][i] + (1.0 - c.decay_rate) * dw[i] * dw[i];
                w[i] -= c.learning_rate * dw[i] / (s[0][i].sqrt() + c.epsilon);
            }
            UpdateRule::Adam => {
                let tt = (*t + 1) as f64;
                s[0][i] = c.beta1 * s[0][i] + (1.0 - c.beta1) * dw[i];
                s[1][i] = c.beta2 * s[1][i] + (1.0 - c.beta2) * dw[i] * dw[i];
                let mt = s[0][i] / (1.0 - c.beta1.powf(tt));
                let vt = s[1][i] / (1.0 - c.beta2.powf(tt));
                w[i] -= c.learning_rate * mt / (vt.sqrt() + c.epsilon);
            }
        }
    }
    if rule == UpdateRule::Adam {
        *t += 1;
    }
}

#[test]
fn update_rules_follow_the_notebook_formulas() {
    // Large enough (100K) to take the parallel path, on 1 and 3 threads.
    let n = 100_003;
    let mut rng = Rng::new(1);
    let w0: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    for rule in [
        UpdateRule::Sgd,
        UpdateRule::SgdMomentum,
        UpdateRule::RmsProp,
        UpdateRule::Adam,
    ] {
        let c = OptimConfig::defaults(rule);
        let mut want = w0.clone();
        let mut s = vec![vec![0.0; n]; 2];
        let mut t = 0;
        let mut got = [w0.clone(), w0.clone()];
        let mut st = [
            OptimState::<f64>::new(rule, n),
            OptimState::<f64>::new(rule, n),
        ];
        for step in 0..5 {
            let dw: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
            notebook_step(rule, &c, &mut want, &dw, &mut s, &mut t);
            for (k, threads) in [1usize, 3].into_iter().enumerate() {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| st[k].step(rule, &c, &mut got[k], &dw))
                    .unwrap();
            }
            assert_eq!(
                got[0], got[1],
                "{rule:?} step {step}: thread count changed bits"
            );
            // Adam multiplies by the reciprocal bias corrections where the notebook divides:
            // a few ulps of the update.
            for i in 0..n {
                let scale = want[i].abs().max(1.0);
                assert!(
                    (got[0][i] - want[i]).abs() <= 1e-14 * scale,
                    "{rule:?} step {step} [{i}]: {} vs {}",
                    got[0][i],
                    want[i]
                );
            }
        }
    }
    assert!("nesterov".parse::<UpdateRule>().is_err());
    let bad = OptimConfig {
        beta1: 1.0,
        ..OptimConfig::defaults(UpdateRule::Adam)
    };
    assert!(
        bad.validate(UpdateRule::Adam)
            .unwrap_err()
            .to_string()
            .contains("beta1")
    );
}

fn fashion_small() -> data::Dataset<f32> {
    data::embedded::<f32>()
}

#[test]
fn overfits_100_samples_like_the_notebook() {
    // The notebook's "Overfit small data" cells: 100 training samples, > 90% train accuracy.
    let small = fashion_small().small(100);
    let cfg = SolverConfig {
        update_rule: UpdateRule::Adam,
        optim_config: OptimConfig::defaults(UpdateRule::Adam),
        num_epochs: 15,
        batch_size: 50,
        verbose: false,
        seed: 231,
        ..SolverConfig::default()
    };
    let model = ThreeLayerConvNet::<f32>::new(CnnConfig {
        weight_scale: 1e-2,
        ..CnnConfig::default()
    })
    .unwrap();
    let mut s = Solver::new(model, cfg.clone(), 100).unwrap();
    s.train(&small).unwrap();
    let acc = *s.train_acc_history.last().unwrap();
    println!(
        "tlcn overfit: train acc {acc}, val acc {}",
        s.val_acc_history.last().unwrap()
    );
    assert!(acc > 0.9, "ThreeLayerConvNet train accuracy {acc}");
    assert_eq!(s.loss_history.len(), 30);

    let model = FullyConnectedNet::<f32>::new(FcNetConfig {
        weight_scale: 1e-2,
        ..FcNetConfig::default()
    })
    .unwrap();
    let cfg = SolverConfig {
        num_epochs: 20,
        batch_size: 25,
        ..cfg
    };
    let mut s = Solver::new(model, cfg, 100).unwrap();
    s.train(&small).unwrap();
    let acc = s.train_acc_history.iter().copied().fold(0.0, f64::max);
    println!("fc overfit: best train acc {acc}");
    assert!(acc > 0.9, "FullyConnectedNet train accuracy {acc}");
}

fn fc_solver(threads_seed: u64) -> Solver<f32, FullyConnectedNet<f32>> {
    let model = FullyConnectedNet::<f32>::new(FcNetConfig {
        hidden_dims: vec![50],
        dropout: 0.8,
        normalization: Some(fastlayers_nn::Normalization::BatchNorm),
        seed: 5,
        ..FcNetConfig::default()
    })
    .unwrap();
    let cfg = SolverConfig {
        update_rule: UpdateRule::Adam,
        optim_config: OptimConfig::defaults(UpdateRule::Adam),
        num_epochs: 3,
        batch_size: 100,
        lr_decay: 0.9,
        verbose: false,
        seed: threads_seed,
        ..SolverConfig::default()
    };
    Solver::new(model, cfg, 1600).unwrap()
}

#[test]
fn same_seed_same_bits_on_any_thread_count() {
    let d = fashion_small();
    let mut runs = Vec::new();
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut s = fc_solver(7);
        pool.install(|| s.train(&d)).unwrap();
        runs.push((s.loss_history.clone(), s.model.params().clone()));
    }
    assert_eq!(runs[0].0.len(), 48);
    for r in &runs[1..] {
        assert_eq!(r.0, runs[0].0, "loss history");
        assert_eq!(r.1, runs[0].1, "final parameters");
    }
    let mut other = fc_solver(8);
    other.train(&d).unwrap();
    assert_ne!(
        other.loss_history, runs[0].0,
        "another seed gives another run"
    );
}

struct StopAfter(usize, PathBuf);
impl<M: Model<f32>> Observer<f32, M> for StopAfter {
    fn epoch_end(&mut self, s: &Solver<f32, M>) -> fastlayers_nn::Result<()> {
        checkpoint::save(s, &self.1)?;
        if s.epoch == self.0 {
            return Err(Error::Config {
                arg: "stop",
                expected: String::new(),
                found: String::new(),
            });
        }
        Ok(())
    }
}

#[test]
fn a_run_resumed_from_a_checkpoint_ends_where_the_uninterrupted_run_does() {
    let d = fashion_small();
    let dir = tmpdir("resume");
    let path = dir.join("ck.safetensors");
    let mut full = fc_solver(11);
    full.train(&d).unwrap();

    let mut first = fc_solver(11);
    assert!(
        first
            .train_with(&d, &mut StopAfter(1, path.clone()))
            .is_err()
    );
    let mut resumed = fc_solver(11);
    checkpoint::load(&mut resumed, &path).unwrap();
    assert_eq!(resumed.iteration, 16);
    assert_eq!(resumed.epoch, 1);
    resumed.train(&d).unwrap();
    assert_eq!(resumed.loss_history, full.loss_history);
    assert_eq!(resumed.val_acc_history, full.val_acc_history);
    assert_eq!(resumed.model.params(), full.model.params());
    assert_eq!(resumed.model.state(), full.model.state());

    // The file is plain safetensors: parameters under their own names, f32.
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let w1 = st.tensor("W1").unwrap();
    assert_eq!(w1.shape(), &[3072, 50]);
    assert_eq!(w1.dtype(), safetensors::Dtype::F32);
    assert!(st.tensor("optim.m.W1").is_ok() && st.tensor("state.running_mean1").is_ok());

    // A checkpoint of another run's shape or rule is refused and changes nothing.
    let mut other = Solver::new(
        FullyConnectedNet::<f32>::new(FcNetConfig {
            hidden_dims: vec![40],
            ..FcNetConfig::default()
        })
        .unwrap(),
        SolverConfig {
            update_rule: UpdateRule::Adam,
            optim_config: OptimConfig::defaults(UpdateRule::Adam),
            batch_size: 100,
            ..SolverConfig::default()
        },
        1600,
    )
    .unwrap();
    let before = other.model.params().clone();
    let e = checkpoint::load(&mut other, &path).unwrap_err().to_string();
    assert!(e.contains("W1"), "{e}");
    assert_eq!(other.model.params(), &before);
    let mut f64_solver = Solver::new(
        FullyConnectedNet::<f64>::new(FcNetConfig {
            hidden_dims: vec![50],
            ..FcNetConfig::default()
        })
        .unwrap(),
        SolverConfig {
            update_rule: UpdateRule::Adam,
            optim_config: OptimConfig::defaults(UpdateRule::Adam),
            batch_size: 100,
            ..SolverConfig::default()
        },
        1600,
    )
    .unwrap();
    assert!(
        checkpoint::load(&mut f64_solver, &path)
            .unwrap_err()
            .to_string()
            .contains("dtype")
    );
    // A torn file is refused.
    std::fs::write(dir.join("torn.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    assert!(checkpoint::load(&mut other, &dir.join("torn.safetensors")).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn non_finite_loss_stops_training_with_a_clear_error() {
    let d = fashion_small().small(200);
    let model = ThreeLayerConvNet::<f32>::new(CnnConfig {
        weight_scale: 1e3,
        ..CnnConfig::default()
    })
    .unwrap();
    let cfg = SolverConfig {
        num_epochs: 2,
        batch_size: 50,
        verbose: false,
        optim_config: OptimConfig {
            learning_rate: 1e6,
            ..OptimConfig::defaults(UpdateRule::Sgd)
        },
        ..SolverConfig::default()
    };
    let mut s = Solver::new(model, cfg, 200).unwrap();
    let e = s.train(&d).unwrap_err();
    assert!(matches!(e, Error::NonFinite { .. }), "{e}");
    assert!(e.to_string().contains("iteration"), "{e}");
}

fn write_dir(dir: &std::path::Path, raw: &RawImages, per_batch: usize) {
    for i in 0..5 {
        let r = RawImages {
            labels: raw.labels[i * per_batch..(i + 1) * per_batch].to_vec(),
            pixels: raw.pixels[i * per_batch * 3072..(i + 1) * per_batch * 3072].to_vec(),
        };
        data::write_cifar10_batch(&dir.join(format!("data_batch_{}.bin", i + 1)), &r).unwrap();
    }
    let t = RawImages {
        labels: raw.labels[5 * per_batch..].to_vec(),
        pixels: raw.pixels[5 * per_batch * 3072..].to_vec(),
    };
    data::write_cifar10_batch(&dir.join("test_batch.bin"), &t).unwrap();
}

#[test]
fn cifar10_loader_reads_the_official_layout_and_names_bad_files() {
    let raw = data::embedded_raw();
    let dir = tmpdir("cifar");
    write_dir(&dir, &raw, 320); // 1600 training images in 5 files, 400 test images
    let split = Split {
        num_training: 1600,
        num_validation: 0,
        num_test: 200,
    };
    let d = data::load_cifar10::<f32>(
        &dir,
        Split {
            num_validation: 0,
            ..split
        },
    )
    .unwrap();
    let e = data::embedded::<f32>();
    // The same pixels through the loader give the embedded set's preprocessing exactly.
    assert_eq!(d.x_train.data(), e.x_train.data());
    assert_eq!(d.y_train, e.y_train);
    assert_eq!(d.mean_image, e.mean_image);
    assert_eq!(d.x_test.shape(), &[200, 3, 32, 32]);
    assert_eq!(
        d.y_test,
        raw.labels[1600..1800]
            .iter()
            .map(|&l| l as usize)
            .collect::<Vec<_>>()
    );
    let d = data::load_cifar10::<f64>(
        &dir,
        Split {
            num_training: 1500,
            num_validation: 100,
            num_test: 10,
        },
    )
    .unwrap();
    assert_eq!(d.x_val.shape(), &[100, 3, 32, 32]);
    // Mean subtracted: the training split's mean image is zero.
    let m: f64 = d.x_train.data().iter().step_by(3072).sum::<f64>() / 1500.0;
    assert!(m.abs() < 1e-9, "{m}");

    let err = |dir: &std::path::Path| {
        data::load_cifar10::<f32>(dir, split)
            .unwrap_err()
            .to_string()
    };
    assert!(err(&dir.join("nope")).contains("not a directory"));
    let b3 = dir.join("data_batch_3.bin");
    let good = std::fs::read(&b3).unwrap();
    std::fs::write(&b3, &good[..good.len() - 100]).unwrap();
    let e = err(&dir);
    assert!(e.contains("data_batch_3.bin") && e.contains("3073"), "{e}");
    let mut bad = good.clone();
    bad[3073 * 7] = 10;
    std::fs::write(&b3, &bad).unwrap();
    let e = err(&dir);
    assert!(
        e.contains("data_batch_3.bin") && e.contains("record 7") && e.contains("label byte 10"),
        "{e}"
    );
    std::fs::remove_file(&b3).unwrap();
    let e = err(&dir);
    assert!(e.contains("data_batch_3.bin"), "{e}");
    std::fs::write(&b3, &good).unwrap();
    let e = data::load_cifar10::<f32>(&dir, Split::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("split"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn embedded_set_is_the_fashion_slice() {
    let raw = data::embedded_raw();
    assert_eq!(raw.len(), 2000);
    // Label counts of the first 2,000 Fashion-MNIST test images (scripts/make_fashion_slice.py).
    let mut counts = [0; 10];
    raw.labels.iter().for_each(|&l| counts[l as usize] += 1);
    assert_eq!(counts, [200, 203, 214, 190, 219, 195, 197, 200, 194, 188]);
    // Padded: the 2-pixel frame is zero; the three channels are equal.
    let img = &raw.pixels[..3072];
    assert!(img[..64].iter().all(|&p| p == 0));
    assert_eq!(&img[..1024], &img[1024..2048]);
    let d = data::embedded::<f64>();
    assert_eq!(
        (d.y_train.len(), d.y_val.len(), d.y_test.len()),
        (1600, 200, 200)
    );
    let t: Tensor<f64> = d.x_train.clone();
    assert_eq!(t.shape(), &[1600, 3, 32, 32]);
}
