//! Reference normalisation: every norm layer is "standardise x within its statistic group, then
//! scale and shift per channel"; a [`NormLayout`] says which group and channel an element has.
//! Everything accumulates in f64 with two passes (mean first, then squared deviations).

use super::{BwdIn, BwdOut, NormLayout};
use crate::scalar::Float;

/// Per-group mean and (uncorrected) variance, two-pass, in f64.
pub fn stats<T: Float>(l: &NormLayout, x: &[T]) -> (Vec<f64>, Vec<f64>) {
    let count = l.group_size() as f64;
    let mut mean = vec![0.0f64; l.groups()];
    for (i, &v) in x.iter().enumerate() {
        mean[l.group_of(i)] += v.to_f();
    }
    mean.iter_mut().for_each(|m| *m /= count);
    let mut var = vec![0.0f64; l.groups()];
    for (i, &v) in x.iter().enumerate() {
        let g = l.group_of(i);
        let d = v.to_f() - mean[g];
        var[g] += d * d;
    }
    var.iter_mut().for_each(|v| *v /= count);
    (mean, var)
}

/// `out = gamma[c] * (x - mean[g]) * inv_std[g] + beta[c]`.
pub fn normalize<T: Float>(
    l: &NormLayout,
    x: &[T],
    gamma: &[T],
    beta: &[T],
    mean: &[f64],
    inv_std: &[f64],
    out: &mut [T],
) {
    for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        let (g, c) = (l.group_of(i), l.channel_of(i));
        let xhat = (v.to_f() - mean[g]) * inv_std[g];
        *o = T::from_f(gamma[c].to_f() * xhat + beta[c].to_f());
    }
}

/// Simplified closed form. With xhat = (x - mean) * inv_std and dxhat = dout * gamma:
/// train: dx = inv_std * (dxhat - mean_g(dxhat) - xhat * mean_g(dxhat * xhat));
/// fixed statistics (test mode): dx = inv_std * dxhat.
/// dgamma[c] = sum dout * xhat, dbeta[c] = sum dout over the elements of channel c.
pub(crate) fn backward<T: Float>(a: BwdIn<'_, T>, o: BwdOut<'_, T>) {
    let BwdIn {
        l,
        batch_stats,
        x,
        gamma,
        mean,
        inv_std,
        dout,
        mask,
    } = a;
    debug_assert!(
        mask.is_none(),
        "a fused ReLU's mask is applied by the caller"
    );
    let BwdOut { dx, dgamma, dbeta } = o;
    let xhat = |i: usize| (x[i].to_f() - mean[l.group_of(i)]) * inv_std[l.group_of(i)];
    let mut dg = vec![0.0f64; l.channels()];
    let mut dbt = vec![0.0f64; l.channels()];
    let mut sum_dxhat = vec![0.0f64; l.groups()];
    let mut sum_dxhat_xhat = vec![0.0f64; l.groups()];
    for (i, &d) in dout.iter().enumerate() {
        let (g, c) = (l.group_of(i), l.channel_of(i));
        let d = d.to_f();
        let xh = xhat(i);
        dg[c] += d * xh;
        dbt[c] += d;
        let dxh = d * gamma[c].to_f();
        sum_dxhat[g] += dxh;
        sum_dxhat_xhat[g] += dxh * xh;
    }
    let count = l.group_size() as f64;
    for (i, o) in dx.iter_mut().enumerate() {
        let (g, c) = (l.group_of(i), l.channel_of(i));
        let dxh = dout[i].to_f() * gamma[c].to_f();
        let v = if batch_stats {
            inv_std[g] * (dxh - sum_dxhat[g] / count - xhat(i) * sum_dxhat_xhat[g] / count)
        } else {
            inv_std[g] * dxh
        };
        *o = T::from_f(v);
    }
    for (o, v) in dgamma.iter_mut().zip(dg) {
        *o = T::from_f(v);
    }
    for (o, v) in dbeta.iter_mut().zip(dbt) {
        *o = T::from_f(v);
    }
}

/// Batch norm (N, D) backward through the computation graph, node by node, as the notebook's
/// `batchnorm_backward` asks: xmu = x - mu, sqrtvar = sqrt(var + eps), ivar = 1 / sqrtvar,
/// xhat = xmu * ivar, out = gamma * xhat + beta. An independent derivation from `backward`;
/// the two must agree.
#[allow(clippy::too_many_arguments)]
pub fn backward_graph<T: Float>(
    n: usize,
    d: usize,
    x: &[T],
    gamma: &[T],
    mean: &[f64],
    inv_std: &[f64],
    dout: &[T],
    dx: &mut [T],
    dgamma: &mut [T],
    dbeta: &mut [T],
) {
    let nf = n as f64;
    for j in 0..d {
        let col = |i: usize| i * d + j;
        let ivar = inv_std[j];
        let sqrtvar = 1.0 / ivar;
        let xmu: Vec<f64> = (0..n).map(|i| x[col(i)].to_f() - mean[j]).collect();
        let xhat: Vec<f64> = xmu.iter().map(|v| v * ivar).collect();
        let dy: Vec<f64> = (0..n).map(|i| dout[col(i)].to_f()).collect();
        // out = gamma * xhat + beta
        dbeta[j] = T::from_f(dy.iter().sum());
        dgamma[j] = T::from_f(dy.iter().zip(&xhat).map(|(a, b)| a * b).sum());
        let dxhat: Vec<f64> = dy.iter().map(|v| v * gamma[j].to_f()).collect();
        // xhat = xmu * ivar
        let divar: f64 = dxhat.iter().zip(&xmu).map(|(a, b)| a * b).sum();
        let dxmu1: Vec<f64> = dxhat.iter().map(|v| v * ivar).collect();
        // ivar = 1 / sqrtvar
        let dsqrtvar = -divar / (sqrtvar * sqrtvar);
        // sqrtvar = sqrt(var + eps)
        let dvar = 0.5 * ivar * dsqrtvar;
        // var = mean(sq), sq = xmu^2
        let dsq = dvar / nf;
        let dxmu2: Vec<f64> = xmu.iter().map(|v| 2.0 * v * dsq).collect();
        // xmu = x - mu
        let dx1: Vec<f64> = dxmu1.iter().zip(&dxmu2).map(|(a, b)| a + b).collect();
        let dmu = -dx1.iter().sum::<f64>();
        // mu = mean(x)
        let dx2 = dmu / nf;
        for i in 0..n {
            dx[col(i)] = T::from_f(dx1[i] + dx2);
        }
    }
}
