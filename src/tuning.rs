//! Every tuning constant of the kernels, in one place, with what it decides.
//!
//! "Decides the bits" means that changing the constant changes the rounding of some output
//! (a partition of a reduction, an algorithm choice, an accumulation block): such a change breaks
//! the bitwise reproducibility promise across versions and must be measured and noted. The rest
//! move speed only. Sizes of stack buffers and register blocks (`MAX_KC`, `MAX_NR`, the pool's
//! `SCRATCH`, the pad row) are bounds of the code beside them, not tuning, and stay there.
//!
//! Machine facts (cache sizes, the SIMD level) come from [`crate::cpu`] at run time; the
//! constants here are the fractions and counts applied to them.

// Cache-derived blocks. Each is a fixed fraction of one core's L2, chosen so that on a 1 MB L2
// (the Zen 5 they were tuned on) they are the constants measured there; a 2 MB L2 (the Intel
// Xeons) doubles them, a 512 KB one (Zen 3) halves them. Computed once per process, so every
// plan and kernel of a run sees the same blocks (a workspace sized by a query always fits).

/// The L2 size the cache-derived blocks scale with: one core's L2 from CPUID, or the
/// `FASTLAYERS_L2_BYTES` environment variable (read once, at the first use: tests reproduce
/// another machine's blocking with it), clamped to 256 KB..4 MB; 1 MB where neither says.
pub(crate) fn l2_bytes() -> usize {
    static L2: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *L2.get_or_init(|| {
        let env = std::env::var("FASTLAYERS_L2_BYTES").ok();
        let bytes = env
            .and_then(|v| v.trim().parse::<usize>().ok())
            .or_else(|| crate::cpu::data_cache_bytes(2))
            .unwrap_or(1 << 20);
        bytes.clamp(256 << 10, 4 << 20)
    })
}

/// Target size of one column tile, elements of T: 3/16 of the L2 in elements (192K for a 1 MB
/// L2: 768 KB of f32, the tile and the GEMM's packed KC block of it stay in L2).
///
/// Decides the bits: yes: the tile is the block of pixels dw contracts over. Used in `conv/plan.rs`.
pub(crate) fn im2col_tile_elems() -> usize {
    im2col_tile_elems_for(l2_bytes())
}

fn im2col_tile_elems_for(l2: usize) -> usize {
    l2 / 16 * 3
}

/// Target size of the C block of the direct convolution, elements: 1/32 of the L2 in elements
/// (32K for 1 MB: 128 KB of f32, which with the weights' KC block and the padded image stays in
/// L2; on the Zen 5 32K measured 1-2% faster than 16K, 64K no better).
///
/// Decides the bits: no: row blocks of the output; every sum keeps its order. Used in `conv/forward.rs`.
pub(crate) fn direct_c_elems() -> usize {
    direct_c_elems_for(l2_bytes())
}

fn direct_c_elems_for(l2: usize) -> usize {
    l2 / 32
}

/// Target elements of one Winograd block's V and M together (tile rows are blocked to this):
/// 1/8 of the L2 in elements (128K for 1 MB: 512 KB of f32, half the L2; on the Zen 5 64K and
/// 256K measured the same on res2_conv).
///
/// Decides the bits: yes for dw (its dU sums run over a block's tiles), no for the forward and dx. Used in `conv/winograd.rs`.
pub(crate) fn wino_block_elems() -> usize {
    wino_block_elems_for(l2_bytes())
}

fn wino_block_elems_for(l2: usize) -> usize {
    l2 / 8
}

/// Largest output block the group layouts prefetch into L2 during their sums (backward's dx a
/// channel at a time, forward's output a block of the sums at a time): a quarter of the L2, so
/// the lines are still in cache when the output pass reaches them.
///
/// Decides the bits: no: a prefetch only. Used in `norm/fast.rs`.
pub(crate) fn norm_prefetch_max_bytes() -> usize {
    norm_prefetch_max_bytes_for(l2_bytes())
}

fn norm_prefetch_max_bytes_for(l2: usize) -> usize {
    l2 / 4
}

/// Allocations (`Tensor`s, workspaces) from which the 2 MB-aligned interior is advised to take
/// transparent huge pages (`cpu::advise_huge_pages`): two huge pages' worth, so that the advised
/// interior is most of the buffer. The norm rows walk tensors of 8-17 MB with a TLB miss per 4 KB
/// page otherwise: AMD EPYC model 17, 2 threads, `examples/normloop` alternating with the build
/// without, three rounds: group norm backward f32 0.34-0.49 -> 0.32-0.40 ms, f64 0.65-1.06 ->
/// 0.58-0.68, batch norm backward f64 0.67-0.99 -> 0.57-0.95, group norm forward f64 within 3%.
///
/// Decides the bits: no: page size only. Used in `error.rs` and `tensor.rs`.
pub(crate) const HUGE_PAGE_MIN_BYTES: usize = 4 << 20;

/// Image chunks of the dw reduction: a constant, so the partition depends on N only.
///
/// Decides the bits: yes: the fixed partition of the dw and db reductions. Used in `conv/fast.rs`.
pub(crate) const DW_CHUNKS: usize = 4;

/// Channels per group (in and out) from which Winograd runs. Each transformed value feeds
/// `cout` (input side) or comes from `cin` (output side) multiply-adds, so the transforms' share
/// falls with the channel counts. AMD EPYC model 17, 2 threads, f32, 32 x 32 images of N = 32,
/// every plan timed in the same rounds (`force -- 32,C,32,32,C f32 2 winograd`, seven rounds;
/// AVX-512 / AVX2): at 64 channels forward 12.0 / 11.9 ms against 13.8 / 16.7 direct, backward
/// 25.1 / 26.9 against 29.7 / 35.7; at 48 forward 7.2-8.0 / 8.6 against 8.1-8.3 / 9.7, backward
/// 15.9-16.4 / 18.0 against 17.6-18.2 / 22.1; at 32 the forward is slower (4.0 / 5.7 against
/// 3.6 / 5.3).
///
/// Decides the bits: yes: it chooses the algorithm. Used in `conv/plan.rs`.
pub(crate) const WINO_MIN_CHANNELS: usize = 48;

/// Channels per group (in and out) from which Winograd F(4x4, 3x3) runs (f64 only; with at least
/// `WINO_MIN_BLOCK_TILES` 4 x 4 tiles per image). AMD EPYC model 17, 2 threads, f64, every plan
/// timed in the same rounds (`force -- SHAPE f64 2 winograd winograd4`): res_conv (64 channels,
/// 32 x 32) forward 17.8 ms against 28.1 direct and 23.9 F(2x2), backward 39.5 against 54.9 and
/// 51.5; 48 channels (32,48,32,32,48) forward 10.7 against 17.3 and 15.4, backward 22.7 against
/// 36.2 and 28.5.
///
/// Decides the bits: yes: it chooses the algorithm. Used in `conv/plan.rs`.
pub(crate) const WINO4_MIN_CHANNELS: usize = 48;

/// Input channels per group from which dx runs direct.
///
/// Decides the bits: yes: it chooses the algorithm. Used in `conv/fast.rs`.
pub(crate) const DIRECT_DX_MIN_CHANNELS: usize = 16;

/// Fewest tiles a block holds (when the image has them): the GEMM's N, a few NR panels.
///
/// Decides the bits: as `wino_block_elems`. Used in `conv/winograd.rs`.
pub(crate) const WINO_MIN_BLOCK_TILES: usize = 64;

/// Lanes of T that accumulate side by side.
///
/// Decides the bits: yes: the lanes that accumulate side by side. Used in `norm/fast.rs`.
pub(crate) const NORM_LANES: usize = 16;

/// Rows (of NORM_LANES elements) accumulated in T before flushing to f64: the error of a flushed block is
/// at most about BK ulps of T, whatever the total length.
///
/// Decides the bits: yes: where the T accumulators flush to f64. Used in `norm/fast.rs`.
pub(crate) const NORM_FLUSH_ROWS: usize = 8;

/// Planes at least this long take the sample-major pass 1 (`plane_sums`); shorter ones (batch
/// norm (N, D) has planes of 1) keep one job per channel, whose N x C partials would be as large
/// as the data.
///
/// Decides the bits: yes: it chooses the order of pass 1's partial sums. Used in `norm/fast.rs`.
pub(crate) const NORM_SAMPLE_MAJOR_MIN_HW: usize = 64;

/// Below this many elements of x, a normalisation call runs on the calling thread. bn_fwd f32
/// on the bn shape (2M elements, 2 threads, Intel Xeon model 207) takes 0.6 ms, about 13 GB/s
/// of reads and writes per thread, so the 15-25 us a wake-up of the helpers costs (see
/// `PAR_MIN_ELEMS`) is the time of a pass over 25-40K f32 elements: below that, helpers cannot
/// pay for themselves. Without it the fuzzer's tiny cases with `Threads(usize::MAX)` woke up to
/// a hundred helpers per call on two cores (80 execs/s).
///
/// Decides the bits: no (every norm partition gives the same bits). Used in `norm/fast.rs`.
pub(crate) const NORM_PAR_MIN_ELEMS: usize = 32 * 1024;

/// Below this many elements touched, a kernel runs on the calling thread: waking a pool costs
/// tens of microseconds (measured on the Zen 3 VM: nb_pool, 307K elements, took 0.09 ms on one
/// thread and 0.10-0.22 ms on two), more than splitting such a problem saves.
///
/// Decides the bits: no: results are bitwise the same for any thread count. Used in `parallel.rs`
/// (the affine GEMMs, whose work is counted in multiply-adds / 64).
pub(crate) const PAR_MIN_ELEMS: usize = 512 * 1024;

/// Below this many bytes touched, a memory-bound kernel (pooling, the element-wise plans) runs
/// on the calling thread: the bytes, not the elements, set its time, so f64 data (twice the
/// bytes per element) splits at half the elements. 2 MB is `PAR_MIN_ELEMS` of f32, where the
/// f32 calls stay. Intel Xeon reporting model 167, nb_pool f64 (2.4 MB; best medians of three
/// alternating runs of `fastlayers bench --filter nb_pool`): forward 0.107 -> 0.028 ms, backward
/// 0.122 -> 0.062-0.10 on two threads; nb_pool f32 (1.2 MB) backward ran slower split (0.060 ->
/// 0.073-0.079 ms).
///
/// Decides the bits: no. Used in `pool/fast.rs`, `affine.rs` (ReLU), `dropout.rs`.
pub(crate) const PAR_MIN_BYTES: usize = 2 << 20;

/// How long the calling thread spins for the last helper before it sleeps in rayon's wait: the
/// wake-up it saves costs tens of microseconds here; a helper still busy after this is running
/// a long job, next to which a wake-up is small.
///
/// Decides the bits: no: scheduling only. Used in `parallel.rs`.
pub(crate) const CALLER_SPIN: std::time::Duration = std::time::Duration::from_micros(100);

// The norms' streaming-store threshold: a fraction of the measured last-level cache.

use std::sync::atomic::Ordering;

/// `usize::MAX` means "not set": the last-level cache size.
static STREAM_MIN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(usize::MAX);

/// Bytes (inputs plus output) above which the normalisation layers' element-wise passes write
/// their output with non-temporal stores (decides the bits: no), which bypass the caches: by default 7/8 of the
/// last-level cache (never, where the CPU does not report one), since tensors as large as the
/// whole cache do not stay in it. Results are the same either way. On the Zen 5 (32 MB L3) the
/// f64 backwards (48 MB) ran 15-25% faster streaming; the f32 backwards (24 MB) ran the same
/// in-process but slower in the bench binary; the f64 forwards (exactly 32 MB) ran faster
/// streaming (20-25% with half the L3 as threshold; 0.59 -> 0.51 ms for batch norm at 28 MB,
/// medians of six alternating in-process rounds).
pub fn streaming_threshold() -> usize {
    match STREAM_MIN.load(Ordering::Relaxed) {
        usize::MAX => crate::cpu::last_level_cache_bytes().map_or(usize::MAX, |b| b / 8 * 7),
        b => b,
    }
}

/// Sets the `streaming_threshold` (`None`: back to the default). A framework that reads the
/// output straight away while it is still cache-resident may want it higher; tests set 0 to
/// run the streaming path on small tensors.
pub fn set_streaming_threshold(bytes: Option<usize>) {
    let v = bytes.map_or(usize::MAX, |b| b.min(usize::MAX - 1));
    STREAM_MIN.store(v, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_derived_blocks_are_the_tuned_constants_on_a_1mb_l2_and_scale_with_it() {
        // The Zen 5 (1 MB L2) values the kernels were tuned with.
        let mb = 1 << 20;
        assert_eq!(im2col_tile_elems_for(mb), 192 * 1024);
        assert_eq!(direct_c_elems_for(mb), 32 * 1024);
        assert_eq!(wino_block_elems_for(mb), 128 * 1024);
        assert_eq!(norm_prefetch_max_bytes_for(mb), 256 * 1024);
        for f in [
            im2col_tile_elems_for,
            direct_c_elems_for,
            wino_block_elems_for,
            norm_prefetch_max_bytes_for,
        ] {
            assert_eq!(f(2 * mb), 2 * f(mb));
            assert_eq!(f(mb / 2), f(mb) / 2);
        }
        let l2 = l2_bytes();
        assert!((256 << 10..=4 << 20).contains(&l2), "{l2}");
        // scripts/test runs this again with the override set.
        if let Some(v) = std::env::var("FASTLAYERS_L2_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            assert_eq!(
                l2,
                usize::clamp(v, 256 << 10, 4 << 20),
                "the override is honoured"
            );
        }
    }
}
