//! bf16 × bf16 products on AVX512-BF16 (`vdpbf16ps`: 32 bf16 products summed into 16 f32 lanes per
//! instruction). Both operands are read in their stored layout (`[rows, k]` row-major, PyTorch's `[out, in]`
//! for the weight), so nothing is packed: each register tile holds, for [`MR`] activation rows and [`NR`]
//! weight rows, one f32 vector of partial dot products per pair, reduced horizontally at the end of each run
//! of at most [`KC`] inputs.
//!
//! `vdpbf16ps` treats subnormal inputs as zero and flushes subnormal results to zero, rounding to nearest
//! even; the products of two bf16 values are exact in f32. So the result differs from the portable path's
//! sequential f32 sum only by the order of the additions, and by values below `f32::MIN_POSITIVE` (about
//! `1.2e-38`), which no BLIP-2 activation or weight reaches.

use std::arch::x86_64::*;

use half::bf16;

/// Activation rows per register tile.
pub(super) const MR: usize = 6;
/// Weight rows (outputs) per register tile: one four-lane store per activation row.
pub(super) const NR: usize = 4;
/// Inputs summed in registers before a tile's partial sums are reduced and added to the output, at most: `k`
/// is cut into runs of equal length, a multiple of 32, so that only the last run of a row has a masked tail.
/// A tile reads `(MR + NR) * KC * 2` bytes (30 KiB, within a 48 KiB L1), and the weight rows of one column
/// block (`block * KC * 2` bytes) stay in L2 across the row tiles. Longer runs reduce less often; 1536 was
/// as fast as 2048 on ViT-g's products with `k = 1408` and faster with `k = 6144` (AMD Zen 5).
pub(super) const KC: usize = 1536;

/// The operands `a: [m, k]` and `w: [n, k]` and the output `[m, n]` of one product (`n` is the caller's), each row-major with its own
/// row stride (in elements; the rows' `k` values are contiguous).
#[derive(Clone, Copy)]
pub(super) struct Operands {
    /// Activations `[m, k]`, row stride `a_rs`.
    pub a: *const bf16,
    pub a_rs: usize,
    /// Weight `[n, k]`, row stride `w_rs`.
    pub w: *const bf16,
    pub w_rs: usize,
    /// Output `[m, n]`, row stride `out_rs`.
    pub out: *mut f32,
    pub out_rs: usize,
    /// A bias `[n]` added to the sums once they are complete, or null.
    pub bias: *const f32,
    pub m: usize,
    pub k: usize,
}

// SAFETY: tasks share the operands to read `a` and `w` and to write disjoint outputs, while the caller holds
// the slices borrowed.
unsafe impl Send for Operands {}
unsafe impl Sync for Operands {}

/// `out[i, j] = sum_l a[i, l] * w[j, l] (+ bias[j])` for every row `i < m` and the outputs `j in j0..j1`, in
/// runs of at most [`KC`] inputs; each run's sums are added to the output in order (the first run stores), then
/// the bias.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL and BF16; the pointers of `op` hold `[m, k]`, `[n, k]` and `[m, n]` values at
/// their row strides;
/// `j0 < j1 <= n`, `m > 0`, `k > 0`, a non-null `bias` holds `j1` values, and no other thread writes the
/// outputs `j0..j1`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn product_cols(op: Operands, j0: usize, j1: usize) {
    let Operands {
        a,
        a_rs,
        w,
        w_rs,
        out,
        out_rs,
        bias,
        m,
        k,
    } = op;
    // Runs of equal length (a multiple of 32), at most KC.
    let run = k.div_ceil(k.div_ceil(KC)).next_multiple_of(32);
    let mut l0 = 0;
    while l0 < k {
        let l1 = (l0 + run).min(k);
        let mut i = 0;
        while i < m {
            // A partial tile repeats its last row; only the rows that exist are written.
            let rows: [*const u16; MR] =
                std::array::from_fn(|r| unsafe { a.add((i + r).min(m - 1) * a_rs).cast::<u16>() });
            let live = (m - i).min(MR);
            let mut j = j0;
            while j < j1 {
                let cols: [*const u16; NR] = std::array::from_fn(|c| unsafe {
                    w.add((j + c).min(j1 - 1) * w_rs).cast::<u16>()
                });
                let width = (j1 - j).min(NR);
                // SAFETY: the rows and columns lie inside the operands; `l0 < l1 <= k`.
                let sums = unsafe { tile(&rows, &cols, l0, l1) };
                for (r, s) in sums.iter().enumerate().take(live) {
                    // SAFETY: row `i + r < m`, columns `j..j + width` are this call's.
                    unsafe {
                        let o = out.add((i + r) * out_rs + j);
                        let mask: __mmask8 = (1u8 << width) - 1;
                        let mut s = if l0 == 0 {
                            *s
                        } else {
                            _mm_add_ps(*s, _mm_maskz_loadu_ps(mask, o))
                        };
                        if l1 == k && !bias.is_null() {
                            s = _mm_add_ps(s, _mm_maskz_loadu_ps(mask, bias.add(j)));
                        }
                        _mm_mask_storeu_ps(o, mask, s);
                    }
                }
                j += NR;
            }
            i += MR;
        }
        l0 = l1;
    }
}

/// The `MR × NR` dot products of `rows` and `cols` over the inputs `l0..l1`: for each row, the four sums of
/// its pairs with the four columns.
///
/// # Safety
/// As [`product_cols`]; every pointer holds at least `l1` values.
///
/// No closures here or in [`hsum4`]: a closure does not inherit `target_feature`, and when the compiler did not
/// inline one (`array::map` of the sums, after an unrelated change elsewhere), its intrinsics became calls and
/// the bf16 prefill of OPT-2.7b took twice as long.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn tile(
    rows: &[*const u16; MR],
    cols: &[*const u16; NR],
    l0: usize,
    l1: usize,
) -> [__m128; MR] {
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    let mut l = l0;
    // SAFETY: `l + 32 <= l1` in the loop, and the tail's loads are masked to `l1 - l` values.
    unsafe {
        while l + 32 <= l1 {
            let mut wv = [as_bh(_mm512_setzero_si512()); NR];
            for (wv, col) in wv.iter_mut().zip(cols) {
                *wv = as_bh(_mm512_loadu_si512(col.add(l).cast()));
            }
            for (acc, row) in acc.iter_mut().zip(rows) {
                let av = as_bh(_mm512_loadu_si512(row.add(l).cast()));
                for (acc, wv) in acc.iter_mut().zip(&wv) {
                    *acc = _mm512_dpbf16_ps(*acc, av, *wv);
                }
            }
            l += 32;
        }
        if l < l1 {
            let mask: __mmask32 = ((1u64 << (l1 - l)) - 1) as u32;
            let mut wv = [as_bh(_mm512_setzero_si512()); NR];
            for (wv, col) in wv.iter_mut().zip(cols) {
                *wv = as_bh(_mm512_maskz_loadu_epi16(mask, col.add(l).cast()));
            }
            for (acc, row) in acc.iter_mut().zip(rows) {
                let av = as_bh(_mm512_maskz_loadu_epi16(mask, row.add(l).cast()));
                for (acc, wv) in acc.iter_mut().zip(&wv) {
                    *acc = _mm512_dpbf16_ps(*acc, av, *wv);
                }
            }
        }
    }
    let mut sums = [_mm_setzero_ps(); MR];
    for (sum, acc) in sums.iter_mut().zip(acc) {
        *sum = hsum4(acc);
    }
    sums
}

/// The horizontal sums of four vectors, in order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn hsum4(v: [__m512; NR]) -> __m128 {
    let mut half = [_mm256_setzero_ps(); NR];
    for (half, v) in half.iter_mut().zip(v) {
        *half = _mm256_add_ps(
            _mm512_castps512_ps256(v),
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))),
        );
    }
    // hadd: [v0 pairs, v1 pairs | v0 pairs, v1 pairs] per 128-bit lane, twice, leaves lane sums in order.
    let a = _mm256_hadd_ps(half[0], half[1]);
    let b = _mm256_hadd_ps(half[2], half[3]);
    let s = _mm256_hadd_ps(a, b);
    _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s))
}

#[inline]
#[target_feature(enable = "avx512f")]
fn as_bh(v: __m512i) -> __m512bh {
    // SAFETY: both are 64-byte vectors of plain bits.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}
