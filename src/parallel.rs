//! Who runs a kernel's parallel work.
//!
//! Every fast kernel splits its work into a partition that depends only on the shapes, never on
//! the number of threads, and combines partial results in a fixed order. Results are therefore
//! bitwise identical under any `Parallelism`.

use rayon::{ThreadPool, ThreadPoolBuilder};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// A job over a pair of chunks: (index, chunk of a, chunk of b, slot).
pub(crate) type ChunkPairFn<'f, A, B> = dyn Fn(usize, &mut [A], &mut [B], usize) + Sync + 'f;

/// How many threads a kernel may use. A kernel may use fewer: pooling calls that touch fewer
/// than 512K elements run on the calling thread whatever is asked (waking a pool costs more than
/// it saves there). Results never depend on the choice.
#[derive(Clone, Copy, Debug, Default)]
pub enum Parallelism<'a> {
    /// The rayon pool the call is made from: the global pool (sized by RAYON_NUM_THREADS or the
    /// core count), or the caller's pool when called inside `pool.install(..)`.
    #[default]
    Current,
    /// Strictly on the calling thread: no rayon worker is involved.
    Sequential,
    /// A pool of exactly this many threads (built once per count and kept).
    Threads(usize),
    /// The caller's own pool.
    Pool(&'a ThreadPool),
}

fn pool_of(n: usize) -> Arc<ThreadPool> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<ThreadPool>>>> = OnceLock::new();
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    pools
        .entry(n)
        .or_insert_with(|| {
            Arc::new(
                ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(move |i| format!("fastlayers-{n}-{i}"))
                    .build()
                    .expect("building a rayon thread pool"),
            )
        })
        .clone()
}

/// Below this many elements touched, a kernel runs on the calling thread: waking a pool costs
/// tens of microseconds (measured on the Zen 3 VM: nb_pool, 307K elements, took 0.09 ms on one
/// thread and 0.10-0.22 ms on two), more than splitting such a problem saves.
pub(crate) const PAR_MIN_ELEMS: usize = 512 * 1024;

impl<'a> Parallelism<'a> {
    /// `self`, or `Sequential` when the call touches fewer than `PAR_MIN_ELEMS` elements.
    /// Results do not depend on it (every kernel's partition is a function of the shape only).
    pub(crate) fn for_work(self, elems: usize) -> Parallelism<'a> {
        if elems < PAR_MIN_ELEMS {
            Parallelism::Sequential
        } else {
            self
        }
    }
}

impl Parallelism<'_> {
    /// Threads the work may be spread over.
    pub fn threads(&self) -> usize {
        match self {
            Parallelism::Current => rayon::current_num_threads(),
            Parallelism::Sequential => 1,
            Parallelism::Threads(n) => (*n).max(1),
            Parallelism::Pool(p) => p.current_num_threads(),
        }
    }

    /// Runs `f` on `pool`-appropriate threads.
    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match self {
            Parallelism::Sequential | Parallelism::Current => f(),
            Parallelism::Threads(n) => pool_of((*n).max(1)).install(f),
            Parallelism::Pool(p) => p.install(f),
        }
    }

    fn sequential(&self) -> bool {
        matches!(self, Parallelism::Sequential) || self.threads() == 1
    }

    /// Runs `f(i, chunk_i, slot)` over the consecutive `la`-element chunks of `a`.
    pub(crate) fn for_each_chunk<A: Send>(
        &self,
        a: &mut [A],
        la: usize,
        f: &(dyn Fn(usize, &mut [A], usize) + Sync),
    ) {
        use rayon::prelude::*;
        let la = la.max(1);
        if self.sequential() || a.len() <= la {
            return a.chunks_mut(la).enumerate().for_each(|(i, c)| f(i, c, 0));
        }
        self.run(|| {
            a.par_chunks_mut(la)
                .enumerate()
                .for_each(|(i, c)| f(i, c, rayon::current_thread_index().unwrap_or(0)))
        })
    }

    /// Runs `f(i, a_i, b_i, slot)` over the `la`-chunks of `a` zipped with the `lb`-chunks of `b`.
    pub(crate) fn for_each_chunk2<A: Send, B: Send>(
        &self,
        a: &mut [A],
        la: usize,
        b: &mut [B],
        lb: usize,
        f: &ChunkPairFn<'_, A, B>,
    ) {
        use rayon::prelude::*;
        let (la, lb) = (la.max(1), lb.max(1));
        debug_assert_eq!(a.len().div_ceil(la), b.len().div_ceil(lb));
        if self.sequential() || a.len() <= la {
            return a
                .chunks_mut(la)
                .zip(b.chunks_mut(lb))
                .enumerate()
                .for_each(|(i, (x, y))| f(i, x, y, 0));
        }
        self.run(|| {
            a.par_chunks_mut(la)
                .zip(b.par_chunks_mut(lb))
                .enumerate()
                .for_each(|(i, (x, y))| f(i, x, y, rayon::current_thread_index().unwrap_or(0)))
        })
    }
}

impl Parallelism<'_> {
    /// Runs `f(item, slot)` for every item (one job each; for a handful of shape-defined jobs
    /// whose buffers the caller has split up front).
    pub(crate) fn for_each_item<I: Send>(&self, items: Vec<I>, f: &(dyn Fn(I, usize) + Sync)) {
        use rayon::prelude::*;
        if self.sequential() || items.len() <= 1 {
            return items.into_iter().for_each(|i| f(i, 0));
        }
        self.run(|| {
            items
                .into_par_iter()
                .for_each(|i| f(i, rayon::current_thread_index().unwrap_or(0)))
        })
    }
}

/// Per-slot scratch buffers handed out by `for_each_job`'s slot index.
pub(crate) struct Slots<'a, T> {
    slots: Vec<Mutex<&'a mut [T]>>,
}

impl<'a, T> Slots<'a, T> {
    /// Splits `buf` into `n` slots of `len` elements (buf must hold n * len).
    pub fn new(buf: &'a mut [T], n: usize, len: usize) -> Self {
        debug_assert!(buf.len() >= n * len);
        let mut slots = Vec::with_capacity(n);
        let mut rest = buf;
        for _ in 0..n {
            let (a, b) = rest.split_at_mut(len);
            slots.push(Mutex::new(a));
            rest = b;
        }
        Slots { slots }
    }
    /// Runs `f` on slot `i`'s buffer. Slots are exclusive per running job, so the lock is
    /// never contended; it only proves exclusivity to the compiler.
    pub fn with<R>(&self, i: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
        let mut g = self.slots[i].lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }
}
