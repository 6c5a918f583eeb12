//! Who runs a kernel's parallel work.
//!
//! Every fast kernel splits its work into a partition that depends only on the shapes, never on
//! the number of threads, and combines partial results in a fixed order. Results are therefore
//! bitwise identical under any `Parallelism`.

use crate::tuning::{CALLER_SPIN, PAR_MIN_ELEMS};
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// A job over a pair of chunks: (index, chunk of a, chunk of b, slot).
pub(crate) type ChunkPairFn<'f, A, B> = dyn Fn(usize, &mut [A], &mut [B], usize) + Sync + 'f;

/// How many threads a kernel may use. A kernel may use fewer: pooling and element-wise calls
/// that touch fewer than 2 MB, and norm calls on fewer than 32K elements, run on the calling
/// thread whatever is asked (waking a pool costs more than it saves there). Results never
/// depend on the choice.
#[derive(Clone, Copy, Debug, Default)]
pub enum Parallelism<'a> {
    /// The rayon pool the call is made from, when called inside `pool.install(..)`. Called from
    /// outside any pool: as many threads as the global pool has (RAYON_NUM_THREADS or the core
    /// count), made of the calling thread and helpers from a kept pool of one thread fewer (the
    /// global pool's own workers would sit idle beside them and compete for the cores).
    #[default]
    Current,
    /// Strictly on the calling thread: no rayon worker is involved.
    Sequential,
    /// Exactly this many threads (at most [`MAX_THREADS`]; more are capped, which changes no
    /// result): the calling thread and helpers from a pool of one thread fewer (built once per
    /// count and kept).
    Threads(usize),
    /// The caller's own pool: its threads, or (called from outside it) the calling thread and
    /// all but one of them.
    Pool(&'a ThreadPool),
}

/// The most threads a kernel call uses: `Threads(n)` above it runs on this many. Far above any
/// core count this crate is tuned for, and low enough that a workspace query (threads x slot)
/// cannot overflow for a plan that validated and that no call spawns thousands of OS threads.
pub const MAX_THREADS: usize = 256;

/// The pool of `n` helper threads for `Threads(n + 1)`.
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

impl<'a> Parallelism<'a> {
    /// `self`, or `Sequential` when the call touches fewer than `PAR_MIN_ELEMS` elements.
    /// Results do not depend on it (every kernel's partition is a function of the shape only).
    pub(crate) fn for_work(self, elems: usize) -> Parallelism<'a> {
        self.for_work_above(elems, PAR_MIN_ELEMS)
    }

    /// `self`, or `Sequential` when a memory-bound call touches fewer than `PAR_MIN_BYTES`.
    pub(crate) fn for_bytes(self, bytes: usize) -> Parallelism<'a> {
        self.for_work_above(bytes, crate::tuning::PAR_MIN_BYTES)
    }

    /// `self`, or `Sequential` below `min` elements (a kernel's own threshold).
    pub(crate) fn for_work_above(self, elems: usize, min: usize) -> Parallelism<'a> {
        if elems < min {
            Parallelism::Sequential
        } else {
            self
        }
    }
}

impl Parallelism<'_> {
    /// Threads the work may be spread over (the calling thread counts as one).
    pub fn threads(&self) -> usize {
        match self {
            Parallelism::Current => rayon::current_num_threads(),
            Parallelism::Sequential => 1,
            Parallelism::Threads(n) => (*n).clamp(1, MAX_THREADS),
            Parallelism::Pool(p) => p.current_num_threads(),
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
        let la = la.max(1);
        if self.sequential() || a.len() <= la {
            return a.chunks_mut(la).enumerate().for_each(|(i, c)| f(i, c, 0));
        }
        let items: Vec<_> = a.chunks_mut(la).enumerate().collect();
        self.for_each_item(items, &|(i, c), slot| f(i, c, slot));
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
        let (la, lb) = (la.max(1), lb.max(1));
        debug_assert_eq!(a.len().div_ceil(la), b.len().div_ceil(lb));
        let whole = self.sequential() || a.len() <= la;
        let pairs = a.chunks_mut(la).zip(b.chunks_mut(lb)).enumerate();
        if whole {
            return pairs.for_each(|(i, (x, y))| f(i, x, y, 0));
        }
        self.for_each_item(pairs.collect(), &|(i, (x, y)), slot| f(i, x, y, slot));
    }

    /// Runs `f(item, slot)` for every item (one job each), with `slot < self.threads()` unique
    /// among the jobs running at one time.
    ///
    /// Called from outside the pool, the calling thread works as one of the threads (as an
    /// OpenMP master does) with `threads() - 1` helpers from the pool, and spins briefly for the
    /// last helper instead of sleeping. Blocking it in `install` while the pool worked cost
    /// 15-25 us per call on this VM (a wake-up at each end), 8% of group norm backward.
    pub(crate) fn for_each_item<I: Send>(&self, items: Vec<I>, f: &(dyn Fn(I, usize) + Sync)) {
        if self.sequential() || items.len() <= 1 {
            return items.into_iter().for_each(|i| f(i, 0));
        }
        let helpers = self.threads() - 1;
        match self {
            Parallelism::Current if rayon::current_thread_index().is_some() => stolen(items, f),
            Parallelism::Pool(p) if p.current_thread_index().is_some() => stolen(items, f),
            Parallelism::Pool(p) => with_caller(p, helpers, items, f),
            // Threads(n), or Current from outside any pool (Sequential returned above).
            _ => with_caller(&pool_of(helpers), helpers, items, f),
        }
    }
}

/// The items by rayon's work stealing, from a worker of the pool they run in.
fn stolen<I: Send>(items: Vec<I>, f: &(dyn Fn(I, usize) + Sync)) {
    use rayon::prelude::*;
    items
        .into_par_iter()
        .for_each(|i| f(i, rayon::current_thread_index().unwrap_or(0)));
}

/// The items shared by the calling thread (slot 0) and `helpers` jobs on `pool` (slots
/// 1..=helpers). Each thread takes its own contiguous share of the items
/// front to back (so the hardware prefetchers see one stream per thread, as with rayon's
/// halving; taking the next unclaimed item instead interleaved the threads and measured 10%
/// slower on group norm backward), then takes the others' remaining items from their backs.
fn with_caller<I: Send>(
    pool: &ThreadPool,
    helpers: usize,
    items: Vec<I>,
    f: &(dyn Fn(I, usize) + Sync),
) {
    let len = items.len();
    let team = helpers.min(len - 1) + 1;
    let items: Vec<Mutex<Option<I>>> = items.into_iter().map(|i| Mutex::new(Some(i))).collect();
    let shares: Vec<Share> = (0..team)
        .map(|k| Share::new(k * len / team, (k + 1) * len / team))
        .collect();
    let done = AtomicUsize::new(0);
    // Each index is claimed once, so the lock is never contended and still holds the item.
    let take = |i: usize| items[i].lock().unwrap_or_else(|e| e.into_inner()).take();
    let work = |slot: usize| {
        while let Some(i) = shares[slot].front() {
            if let Some(item) = take(i) {
                f(item, slot);
            }
        }
        for other in (slot + 1..team).chain(0..slot) {
            while let Some(i) = shares[other].back() {
                if let Some(item) = take(i) {
                    f(item, slot);
                }
            }
        }
    };
    let helpers = team - 1;
    let work: &(dyn Fn(usize) + Sync) = &work;
    pool.in_place_scope(|s| share(s, work, &done, helpers))
}

/// A range of item indices `lo..hi`, packed in one word so both ends are claimed atomically.
/// Aligned to 128 bytes (two lines, for the adjacent-line prefetcher) so that threads taking
/// from their own shares do not bounce one cache line between cores.
#[repr(align(128))]
struct Share(AtomicU64);

impl Share {
    fn new(lo: usize, hi: usize) -> Share {
        debug_assert!(lo <= hi && hi < 1 << 32);
        Share(AtomicU64::new(lo as u64 | (hi as u64) << 32))
    }
    /// Claims the lowest remaining index.
    fn front(&self) -> Option<usize> {
        self.claim(|lo, hi| (lo + 1, hi), |lo, _| lo)
    }
    /// Claims the highest remaining index.
    fn back(&self) -> Option<usize> {
        self.claim(|lo, hi| (lo, hi - 1), |_, hi| hi - 1)
    }
    fn claim(
        &self,
        next: impl Fn(u64, u64) -> (u64, u64),
        got: impl Fn(u64, u64) -> u64,
    ) -> Option<usize> {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let (lo, hi) = (cur & 0xffff_ffff, cur >> 32);
            if lo >= hi {
                return None;
            }
            let (nlo, nhi) = next(lo, hi);
            match self.0.compare_exchange_weak(
                cur,
                nlo | nhi << 32,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(got(lo, hi) as usize),
                Err(now) => cur = now,
            }
        }
    }
}

/// `work(slot)` on `helpers` jobs spawned in `s` and on the calling thread; returns once every
/// helper has finished or after `CALLER_SPIN` (the scope's end waits for the rest).
fn share<'s>(
    s: &rayon::Scope<'s>,
    work: &'s (dyn Fn(usize) + Sync),
    done: &'s AtomicUsize,
    helpers: usize,
) {
    for slot in 1..=helpers {
        s.spawn(move |_| {
            work(slot);
            done.fetch_add(1, Ordering::Release);
        });
    }
    work(0);
    let t = std::time::Instant::now();
    while done.load(Ordering::Acquire) < helpers && t.elapsed() < CALLER_SPIN {
        std::hint::spin_loop();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// Every item runs exactly once, and no two jobs running at one time share a slot.
    fn check(par: Parallelism<'_>, len: usize) {
        let runs: Vec<AtomicUsize> = (0..len).map(|_| AtomicUsize::new(0)).collect();
        let busy: Vec<AtomicBool> = (0..par.threads()).map(|_| AtomicBool::new(false)).collect();
        par.for_each_item((0..len).collect(), &|i, slot| {
            assert!(slot < busy.len(), "slot {slot} of {}", busy.len());
            assert!(
                !busy[slot].swap(true, Ordering::SeqCst),
                "slot {slot} shared"
            );
            std::thread::sleep(std::time::Duration::from_micros((i % 3) as u64 * 50));
            runs[i].fetch_add(1, Ordering::SeqCst);
            busy[slot].store(false, Ordering::SeqCst);
        });
        for (i, r) in runs.iter().enumerate() {
            assert_eq!(r.load(Ordering::SeqCst), 1, "item {i} of {len}");
        }
    }

    #[test]
    fn items_run_once_on_exclusive_slots() {
        let pool = ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for len in [0, 1, 2, 3, 5, 64, 257] {
            check(Parallelism::Sequential, len);
            check(Parallelism::Current, len);
            for n in [2, 3, 7] {
                check(Parallelism::Threads(n), len);
            }
            check(Parallelism::Pool(&pool), len);
            pool.install(|| check(Parallelism::Pool(&pool), len));
            pool.install(|| check(Parallelism::Current, len));
        }
    }

    #[test]
    fn shares_hand_out_each_index_once_from_both_ends() {
        let s = Share::new(3, 7);
        assert_eq!(
            (s.front(), s.back(), s.front()),
            (Some(3), Some(6), Some(4))
        );
        assert_eq!((s.back(), s.front(), s.back()), (Some(5), None, None));
        assert_eq!(Share::new(2, 2).front(), None);
    }
}
