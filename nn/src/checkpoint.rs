//! Checkpoints in safetensors format, written atomically.
//!
//! Tensor names: the parameters under their own names (W1, b1, ...: the file loads into
//! `safetensors.torch.load_file` or numpy as it is), `optim.<buffer>.<param>` for the update
//! rule's state (velocity, cache, m, v), `state.<name>` for model state (batch norm's running
//! statistics), `best.<param>` / `best_state.<name>` for the best validation parameters,
//! and `history.loss`, `history.train_acc`, `history.val_acc` (f64). The metadata holds the
//! epoch, iteration, current learning rate, Adam's step counts, the best validation accuracy
//! and what the run was (dtype, update rule, batch size, epochs, seed), all as text that
//! parses back to the same values.
//!
//! Writing: a temporary file in the same directory, fsync of the file, rename over the target,
//! fsync of the directory. A crash at any point leaves either the old checkpoint or the new
//! one, never a torn file (`safetensors::serialize_to_file` renames but never fsyncs).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use fastlayers::{Float, Tensor};
use safetensors::{Dtype, SafeTensors};

use crate::models::{Model, Params};
use crate::solver::Solver;
use crate::{Error, Result};

/// The format tag in the metadata.
pub const FORMAT: &str = "fastlayers-checkpoint-1";

fn dtype<T: Float>() -> Dtype {
    if T::NAME == "f32" {
        Dtype::F32
    } else {
        Dtype::F64
    }
}

fn to_bytes<T: Float>(v: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(std::mem::size_of_val(v));
    for &x in v {
        if T::NAME == "f32" {
            out.extend_from_slice(&(x.to_f() as f32).to_le_bytes());
        } else {
            out.extend_from_slice(&x.to_f().to_le_bytes());
        }
    }
    out
}

fn from_bytes<T: Float>(b: &[u8]) -> Vec<T> {
    if T::NAME == "f32" {
        b.chunks_exact(4)
            .map(|c| T::from_f(f64::from(f32::from_le_bytes(c.try_into().unwrap()))))
            .collect()
    } else {
        b.chunks_exact(8)
            .map(|c| T::from_f(f64::from_le_bytes(c.try_into().unwrap())))
            .collect()
    }
}

/// Writes `bytes` to `path` atomically and durably (see the module doc).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::config("checkpoint", "a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let res = (|| {
        let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        // The rename is durable once the directory entry is.
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(&dir, e))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Serialises the solver's complete state.
pub fn to_bytes_of<T: Float, M: Model<T>>(s: &Solver<T, M>) -> Result<Vec<u8>> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut add = |name: String, t: &Tensor<T>| {
        tensors.push((name, t.shape().to_vec(), to_bytes(t.data())));
    };
    for (k, v) in s.model.params() {
        add(k.clone(), v);
    }
    for (k, v) in &s.best_params {
        add(format!("best.{k}"), v);
    }
    for (k, v) in &s.model.state() {
        add(format!("state.{k}"), v);
    }
    for (k, v) in &s.best_state {
        add(format!("best_state.{k}"), v);
    }
    let rule = s.config.update_rule;
    let mut meta = HashMap::new();
    for (k, st) in &s.optim_state {
        let shape = s.model.params()[k].shape().to_vec();
        for (b, buf) in rule.state_names().iter().zip([&st.s1, &st.s2]) {
            tensors.push((format!("optim.{b}.{k}"), shape.clone(), to_bytes(buf)));
        }
        meta.insert(format!("optim.t.{k}"), st.t.to_string());
    }
    for (name, h) in [
        ("loss", &s.loss_history),
        ("train_acc", &s.train_acc_history),
        ("val_acc", &s.val_acc_history),
    ] {
        let b: Vec<u8> = h.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((format!("history.{name}"), vec![h.len()], b));
    }
    let c = &s.config;
    for (k, v) in [
        ("format", FORMAT.to_string()),
        ("dtype", T::NAME.to_string()),
        ("update_rule", rule.name().to_string()),
        ("epoch", s.epoch.to_string()),
        ("iteration", s.iteration.to_string()),
        // Rust prints f64 with the fewest digits that parse back to the same value.
        ("learning_rate", format!("{:?}", s.learning_rate)),
        ("best_val_acc", format!("{:?}", s.best_val_acc)),
        ("batch_size", c.batch_size.to_string()),
        ("num_epochs", c.num_epochs.to_string()),
        ("seed", c.seed.to_string()),
    ] {
        meta.insert(k.to_string(), v);
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, shape, b)| {
            let dt = if n.starts_with("history.") {
                Dtype::F64
            } else {
                dtype::<T>()
            };
            safetensors::tensor::TensorView::new(dt, shape.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::config("checkpoint", "a consistent tensor", e))
        })
        .collect::<Result<_>>()?;
    safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| Error::config("checkpoint", "serialisable tensors", e))
}

/// Writes the solver's state to `path` (atomically).
pub fn save<T: Float, M: Model<T>>(s: &Solver<T, M>, path: &Path) -> Result<()> {
    write_atomic(path, &to_bytes_of(s)?)
}

/// Restores a solver (built with the same model, dtype and update rule) from `path`, so that
/// training continues from the checkpoint's iteration.
pub fn load<T: Float, M: Model<T>>(s: &mut Solver<T, M>, path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |what: String| Error::Checkpoint {
        path: path.into(),
        what,
    };
    let (_, header) =
        SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not safetensors: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("not safetensors: {e}")))?;
    let get = |k: &str| -> Result<&String> {
        meta.get(k)
            .ok_or_else(|| bad(format!("metadata has no {k:?}")))
    };
    let want = |k: &str, v: String| -> Result<()> {
        let found = get(k)?;
        if *found == v {
            Ok(())
        } else {
            Err(bad(format!("{k} is {found}, this run has {v}")))
        }
    };
    want("format", FORMAT.into())?;
    want("dtype", T::NAME.into())?;
    want("update_rule", s.config.update_rule.name().into())?;
    want("batch_size", s.config.batch_size.to_string())?;
    let num =
        |k: &str| -> Result<f64> { get(k)?.parse::<f64>().map_err(|e| bad(format!("{k}: {e}"))) };
    let int =
        |k: &str| -> Result<u64> { get(k)?.parse::<u64>().map_err(|e| bad(format!("{k}: {e}"))) };
    let tensor = |name: &str, shape: &[usize]| -> Result<Tensor<T>> {
        let v = st
            .tensor(name)
            .map_err(|_| bad(format!("no tensor {name:?}")))?;
        if v.dtype() != dtype::<T>() || v.shape() != shape {
            return Err(bad(format!(
                "{name} is {:?} {:?}, expected {:?} {shape:?}",
                v.dtype(),
                v.shape(),
                dtype::<T>()
            )));
        }
        Ok(Tensor::new(from_bytes(v.data()), shape)?)
    };
    let history = |name: &str| -> Result<Vec<f64>> {
        let v = st
            .tensor(&format!("history.{name}"))
            .map_err(|_| bad(format!("no tensor history.{name}")))?;
        if v.dtype() != Dtype::F64 || v.shape().len() != 1 {
            return Err(bad(format!("history.{name} is not an f64 vector")));
        }
        Ok(v.data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect())
    };
    // Read everything first: on error the solver is unchanged.
    let names: Vec<(String, Vec<usize>)> = s
        .model
        .params()
        .iter()
        .map(|(k, v)| (k.clone(), v.shape().to_vec()))
        .collect();
    let mut params = Params::new();
    let mut best = Params::new();
    let mut optim = s.optim_state.clone();
    let rule = s.config.update_rule;
    for (k, shape) in &names {
        params.insert(k.clone(), tensor(k, shape)?);
        best.insert(k.clone(), tensor(&format!("best.{k}"), shape)?);
        let o = optim
            .get_mut(k)
            .ok_or_else(|| bad(format!("no optimiser state for {k}")))?;
        for (b, buf) in rule.state_names().iter().zip([&mut o.s1, &mut o.s2]) {
            *buf = tensor(&format!("optim.{b}.{k}"), shape)?.into_vec();
        }
        o.t = int(&format!("optim.t.{k}"))?;
    }
    let state_of = |prefix: &str| -> Result<Params<T>> {
        let mut p = Params::new();
        for name in st.names() {
            if let Some(k) = name.strip_prefix(prefix) {
                let v = st.tensor(name).map_err(|e| bad(e.to_string()))?;
                p.insert(k.to_string(), tensor(name, v.shape())?);
            }
        }
        Ok(p)
    };
    let state = state_of("state.")?;
    let best_state = state_of("best_state.")?;
    let (loss, tr, va) = (history("loss")?, history("train_acc")?, history("val_acc")?);
    let (epoch, iteration) = (int("epoch")? as usize, int("iteration")? as usize);
    let (lr, best_acc) = (num("learning_rate")?, num("best_val_acc")?);
    s.model.load_state(&state)?;
    *s.model.params_and_grads().0 = params;
    s.best_params = best;
    s.best_state = best_state;
    s.optim_state = optim;
    s.loss_history = loss;
    s.train_acc_history = tr;
    s.val_acc_history = va;
    s.epoch = epoch;
    s.iteration = iteration;
    s.learning_rate = lr;
    s.best_val_acc = best_acc;
    Ok(())
}

/// Writes `params` alone (atomically) as a safetensors file, tensor names = parameter names,
/// with `meta` as its metadata: the trained model, for `safetensors.torch.load_file` or numpy.
pub fn save_params<T: Float>(
    params: &Params<T>,
    meta: HashMap<String, String>,
    path: &Path,
) -> Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = params
        .iter()
        .map(|(k, v)| (k.clone(), v.shape().to_vec(), to_bytes(v.data())))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(dtype::<T>(), s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::config("params", "a consistent tensor", e))
        })
        .collect::<Result<_>>()?;
    let out = safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| Error::config("params", "serialisable tensors", e))?;
    write_atomic(path, &out)
}

/// Reads a parameters file written by [`save_params`] (or any safetensors file of f32/f64
/// tensors) as `T`.
pub fn load_params<T: Float>(path: &Path) -> Result<Params<T>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::Checkpoint {
        path: path.into(),
        what: format!("not safetensors: {e}"),
    })?;
    let mut p = Params::new();
    for (name, v) in st.tensors() {
        if v.dtype() != dtype::<T>() {
            return Err(Error::Checkpoint {
                path: path.into(),
                what: format!("{name} is {:?}, expected {:?}", v.dtype(), dtype::<T>()),
            });
        }
        p.insert(name, Tensor::new(from_bytes(v.data()), v.shape())?);
    }
    Ok(p)
}
