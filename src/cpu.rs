//! What the CPU can do, read once: the SIMD level kernels dispatch on and the cache sizes the
//! blocking is derived from.
//!
//! Hot loops are written once as generic `#[inline(always)]` bodies and instantiated inside thin
//! `#[target_feature]` wrappers (the `multiversion!` macro), so a plain `cargo build --release`
//! with no target-cpu flags still runs AVX2/FMA (or AVX-512) code. The level is detected once and
//! cached. `FASTLAYERS_SIMD=portable|avx2|avx512` (or [`force_simd_level`]) pins it, so tests can
//! run each path; a request for a level the CPU lacks falls back to the best available one.
//!
//! Kernels that run explicit SIMD instructions take an `Isa` (crate-private), a proof that the
//! CPU has a level's features: only `Isa::current` builds one, from the level in force, which
//! never exceeds what detection found. No caller can hand a kernel a level the CPU lacks.

use std::sync::atomic::{AtomicU8, Ordering};

/// SIMD instruction sets the kernels are compiled for, ordered from least to most capable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum SimdLevel {
    /// Plain Rust, auto-vectorised for the build's baseline target (SSE2 on x86-64).
    Portable = 1,
    /// AVX2 with FMA (256-bit vectors).
    Avx2 = 2,
    /// AVX-512 F and VL with AVX2 and FMA (512-bit vectors).
    Avx512 = 3,
}

pub(crate) use SimdLevel as Level;

/// Proof that the CPU has the features of one [`SimdLevel`]: kernels with explicit SIMD
/// instructions take one and run that level's code. The field is private and the only
/// constructors read the level in force (never above `detected()`), so a value of this type
/// cannot name a level the CPU lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Isa {
    level: Level,
}

impl Isa {
    /// The level kernels run at now.
    #[inline]
    pub(crate) fn current() -> Isa {
        Isa { level: level() }
    }
    /// The level this proves.
    #[inline(always)]
    pub(crate) fn level(self) -> Level {
        self.level
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(0);

/// The best level this CPU supports.
pub fn detected_simd_level() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            return Level::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Level::Avx2;
        }
    }
    Level::Portable
}

fn from_env() -> Level {
    let best = detected_simd_level();
    let want = match std::env::var("FASTLAYERS_SIMD").as_deref() {
        Ok("portable") => Level::Portable,
        Ok("avx2") => Level::Avx2,
        Ok("avx512") => Level::Avx512,
        _ => best,
    };
    want.min(best)
}

fn decode(v: u8) -> Option<Level> {
    match v {
        1 => Some(Level::Portable),
        2 => Some(Level::Avx2),
        3 => Some(Level::Avx512),
        _ => None,
    }
}

/// The level kernels run at now.
#[inline]
pub(crate) fn level() -> Level {
    decode(LEVEL.load(Ordering::Relaxed)).unwrap_or_else(|| {
        // First use: set the detected level unless a `force_level` got there first (a plain
        // store here once overwrote a level another thread had just forced).
        let l = from_env();
        match LEVEL.compare_exchange(0, l as u8, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => l,
            Err(now) => decode(now).unwrap_or(l),
        }
    })
}

/// The level kernels run at now: the best the CPU has, unless `FASTLAYERS_SIMD` or
/// [`force_simd_level`] lowered it.
pub fn simd_level() -> SimdLevel {
    level()
}

/// Pins the level kernels run at (capped at what the CPU supports) and returns the level now in
/// force. For tests and comparisons: each level gives results within the documented tolerances
/// of the reference, but not the same bits as the others. A [`crate::ConvPlan`] keeps the GEMM
/// level it was built with.
pub fn force_simd_level(want: SimdLevel) -> SimdLevel {
    let l = want.min(detected_simd_level());
    LEVEL.store(l as u8, Ordering::Relaxed);
    l
}

/// Defines `fn name<T: Float>(args) -> R` as a dispatcher over copies of one body compiled
/// for each level: the body is an `#[inline(always)]` function and each copy is a thin
/// `#[target_feature]` wrapper around it, so the whole loop is compiled with the features on.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident<$T:ident>($($a:ident : $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name<$T: $crate::scalar::Float>($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body<$T: $crate::scalar::Float>($($a: $t),*) $(-> $r)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            fn avx2<$T: $crate::scalar::Float>($($a: $t),*) $(-> $r)? { body::<$T>($($a),*) }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            fn avx512<$T: $crate::scalar::Float>($($a: $t),*) $(-> $r)? { body::<$T>($($a),*) }

            match $crate::cpu::level() {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: level() reports Avx512 only when the CPU has AVX-512F/VL, AVX2, FMA.
                $crate::cpu::Level::Avx512 => unsafe { avx512::<$T>($($a),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: level() reports Avx2 only when the CPU has AVX2 and FMA.
                $crate::cpu::Level::Avx2 => unsafe { avx2::<$T>($($a),*) },
                _ => body::<$T>($($a),*),
            }
        }
    };
}
pub(crate) use multiversion;

/// Bytes of the largest (last-level) data cache, from CPUID (leaf 4 on Intel, 0x8000001D on
/// AMD), cached. `None` when the CPU does not report it (or is not x86_64).
pub fn last_level_cache_bytes() -> Option<usize> {
    caches().bytes.iter().rev().find_map(|&c| c)
}

/// Bytes of one core's data (or unified) cache at `level` (1, 2 or 3), from CPUID as
/// [`last_level_cache_bytes`]; `None` when the CPU does not report that level. The L3 is the
/// whole cache as CPUID describes it (shared by the cores that share it).
pub fn data_cache_bytes(level: usize) -> Option<usize> {
    caches().bytes.get(level.checked_sub(1)?).copied().flatten()
}

/// Bytes of a cache line on every x86-64 part: what the prefetches and the padded pitches step
/// by, and the line `CacheGeometry` assumes where CPUID does not say.
pub(crate) const CACHE_LINE: usize = 64;

/// Elements of T in a cache line.
#[inline(always)]
pub(crate) fn line_elems<T>() -> usize {
    (CACHE_LINE / std::mem::size_of::<T>()).max(1)
}

/// Geometry of one core's L1 data cache from the same CPUID leaf: what decides whether rows a
/// power-of-two stride apart all fit (more rows per set than ways evict each other).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CacheGeometry {
    /// Sets (lines whose addresses differ by a multiple of `sets * line` bytes share one).
    pub(crate) sets: usize,
    /// Lines per set.
    pub(crate) ways: usize,
    /// Bytes per line.
    pub(crate) line: usize,
}

/// The L1d geometry, detected once with the sizes; `None` when the CPU does not report it.
pub(crate) fn l1d_geometry() -> Option<CacheGeometry> {
    caches().l1d
}

/// What one CPUID walk found: [L1d, L2, L3] bytes and the L1d's geometry.
struct Caches {
    bytes: [Option<usize>; 3],
    l1d: Option<CacheGeometry>,
}

/// The caches, detected once.
fn caches() -> &'static Caches {
    static CACHES: std::sync::OnceLock<Caches> = std::sync::OnceLock::new();
    CACHES.get_or_init(detect_caches)
}

fn detect_caches() -> Caches {
    let mut out = Caches {
        bytes: [None; 3],
        l1d: None,
    };
    cpuid_caches(|kind, level, g| {
        // 1 = data, 3 = unified (2 = instruction, skipped).
        if (kind == 1 || kind == 3) && (1..=3).contains(&level) {
            let bytes = g.sets * g.ways * g.line;
            let slot = &mut out.bytes[level - 1];
            *slot = Some(slot.map_or(bytes, |b: usize| b.max(bytes)));
        }
        if kind == 1 && level == 1 {
            out.l1d = Some(g);
        }
    });
    out
}

/// Calls `each(kind, level, geometry)` for every cache CPUID describes (leaf 4 on Intel,
/// 0x8000001D on AMD): kind 1 data, 2 instruction, 3 unified; level 1-3. Nothing where the leaf
/// is absent.
#[cfg(target_arch = "x86_64")]
fn cpuid_caches(mut each: impl FnMut(u32, usize, CacheGeometry)) {
    use std::arch::x86_64::__cpuid_count;
    let vendor = __cpuid_count(0, 0);
    let amd = (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
    let leaf = if amd {
        // TOPOEXT (CPUID 0x80000001 ECX bit 22) says whether leaf 0x8000001D exists.
        if __cpuid_count(0x8000_0000, 0).eax < 0x8000_001D
            || __cpuid_count(0x8000_0001, 0).ecx & (1 << 22) == 0
        {
            return;
        }
        0x8000_001D
    } else {
        if __cpuid_count(0, 0).eax < 4 {
            return;
        }
        4
    };
    for sub in 0..16 {
        let r = __cpuid_count(leaf, sub);
        let kind = r.eax & 0x1f;
        if kind == 0 {
            break;
        }
        // EAX bits 7:5 the level; EBX ways, partitions and line size, ECX sets (each minus
        // one). Partitions share a set's ways, so they count as ways here.
        let level = ((r.eax >> 5) & 0x7) as usize;
        let ways = ((r.ebx >> 22) & 0x3ff) as usize + 1;
        let parts = ((r.ebx >> 12) & 0x3ff) as usize + 1;
        let line = (r.ebx & 0xfff) as usize + 1;
        let sets = r.ecx as usize + 1;
        each(
            kind,
            level,
            CacheGeometry {
                sets,
                ways: ways * parts,
                line,
            },
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn cpuid_caches(_each: impl FnMut(u32, usize, CacheGeometry)) {}

/// Asks Linux to back the 2 MB-aligned interior of `buf` with transparent huge pages
/// (`madvise(MADV_HUGEPAGE)`), for buffers of `tuning::HUGE_PAGE_MIN_BYTES` or more; called on
/// a fresh allocation before its first touch, so the first faults take huge pages. The memory
/// is the buffer's own (no rounding up, nothing allocated beyond it); an error (a kernel
/// without transparent huge pages) leaves ordinary pages. Elsewhere it does nothing.
pub(crate) fn advise_huge_pages<T>(buf: &mut [std::mem::MaybeUninit<T>]) {
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    {
        const HUGE: usize = 2 << 20;
        // asm-generic/mman-common.h, the value on x86_64 and aarch64.
        const MADV_HUGEPAGE: i32 = 14;
        let (p, len) = (buf.as_mut_ptr() as usize, std::mem::size_of_val(buf));
        if len < crate::tuning::HUGE_PAGE_MIN_BYTES {
            return;
        }
        let start = p.next_multiple_of(HUGE);
        let end = (p + len) / HUGE * HUGE;
        if end > start {
            unsafe extern "C" {
                fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
            }
            debug_assert!(p <= start && end <= p + len && start % HUGE == 0);
            // SAFETY: start..end is a page-aligned range inside `buf`, memory this process owns
            // and that nothing else maps; MADV_HUGEPAGE changes no contents, only how the kernel
            // backs the range (its return value is advice's too: ignored).
            unsafe { madvise(start as *mut std::ffi::c_void, end - start, MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    let _ = buf;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l1d_geometry_is_the_l1d_size() {
        // Both come from one CPUID walk: the geometry's product is the reported L1d, and a
        // data cache has at least one way of one line in one set.
        match (l1d_geometry(), data_cache_bytes(1)) {
            (Some(g), Some(bytes)) => {
                assert!(g.sets >= 1 && g.ways >= 1 && g.line >= 16, "{g:?}");
                assert_eq!(g.sets * g.ways * g.line, bytes, "{g:?}");
            }
            (None, None) => {}
            (g, b) => panic!("geometry {g:?} without size {b:?}, or the reverse"),
        }
    }
}
