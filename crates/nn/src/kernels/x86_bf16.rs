//! bf16 × bf16 products on AVX512-BF16 (`vdpbf16ps`: 32 bf16 products summed into 16 f32 lanes per
//! instruction). Both operands are read in their stored layout (`[rows, k]` row-major, PyTorch's `[out, in]`
//! for the weight), so nothing is packed: each register tile holds, for at most [`MR`] activation rows and
//! [`NR`] weight rows, one f32 vector of partial dot products per pair, reduced horizontally at the end of each
//! run of at most [`KC`] inputs. [`product_packed`] packs the weight for many rows; its tiles also serve
//! `x86_bf16_rows`, which packs the activation rows instead.
//!
//! `vdpbf16ps` treats subnormal inputs as zero and flushes subnormal results to zero, rounding to nearest
//! even; the products of two bf16 values are exact in f32. So the result differs from the portable path's
//! sequential f32 sum only by the order of the additions, and by values below `f32::MIN_POSITIVE` (about
//! `1.2e-38`), which no BLIP-2 activation or weight reaches.

use std::arch::x86_64::*;

use half::bf16;

/// Activation rows per register tile, at most.
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
    /// When not null, the outputs `[m, n]` (row stride `out_rs`) rounded to bf16, in place of `out`
    /// ([`product_packed`] only; [`product_cols`] writes `out`).
    pub out16: *mut bf16,
    /// A bias `[n]` added to the sums once they are complete, or null.
    pub bias: *const f32,
    pub m: usize,
    pub k: usize,
    /// Whether `x86_bf16_rows::write_out` applies the exact GELU to the bf16 outputs (the sum plus bias rounded
    /// to bf16, its GELU in f32 rounded again); only the AMX product ([`super::x86_amx::product_amx`]) is asked.
    pub gelu: bool,
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
    let Operands { m, k, .. } = op;
    debug_assert!(op.out16.is_null(), "product_cols writes f32 outputs only");
    // Runs of equal length (a multiple of 32), at most KC; row tiles of at most MR rows, as even as can be
    // (32 rows: 6, 6, 5, 5, 5, 5), so that no tile computes a row that is not there.
    let run = k.div_ceil(k.div_ceil(KC)).next_multiple_of(32);
    let tiles = m.div_ceil(MR);
    let mut l0 = 0;
    while l0 < k {
        let l1 = (l0 + run).min(k);
        let mut i = 0;
        for t in 0..tiles {
            // Tiles of `m / tiles` rows, the first `m % tiles` of them one more.
            let rows = m / tiles + usize::from(t < m % tiles);
            // SAFETY: rows `i..i + rows` of `m`, outputs `j0..j1`, inputs `l0..l1`.
            unsafe {
                match rows {
                    6 => row_tile::<6>(op, i, j0, j1, l0, l1),
                    5 => row_tile::<5>(op, i, j0, j1, l0, l1),
                    4 => row_tile::<4>(op, i, j0, j1, l0, l1),
                    3 => row_tile::<3>(op, i, j0, j1, l0, l1),
                    2 => row_tile::<2>(op, i, j0, j1, l0, l1),
                    _ => row_tile::<1>(op, i, j0, j1, l0, l1),
                }
            }
            i += rows;
        }
        l0 = l1;
    }
}

/// The `R` activation rows from `i` times the outputs `j0..j1` over the inputs `l0..l1`, added to the output
/// as [`product_cols`] says.
///
/// # Safety
/// As [`product_cols`]; `i + R <= m`, `l0 < l1 <= k`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn row_tile<const R: usize>(
    op: Operands,
    i: usize,
    j0: usize,
    j1: usize,
    l0: usize,
    l1: usize,
) {
    let Operands {
        a,
        a_rs,
        w,
        w_rs,
        out,
        out_rs,
        bias,
        k,
        ..
    } = op;
    let rows: [*const u16; R] =
        std::array::from_fn(|r| unsafe { a.add((i + r) * a_rs).cast::<u16>() });
    let mut j = j0;
    while j < j1 {
        let cols: [*const u16; NR] =
            std::array::from_fn(|c| unsafe { w.add((j + c).min(j1 - 1) * w_rs).cast::<u16>() });
        let width = (j1 - j).min(NR);
        // SAFETY: the rows and columns lie inside the operands; `l0 < l1 <= k`.
        let sums = if i == 0 {
            // The first row tile reads these weight rows from memory: it fetches the next four rows' inputs
            // as it goes (a prefetch never faults, so past the last row is harmless). At 5-30 rows of
            // OPT-2.7b's shapes this made the products 6-40% faster (AMD Zen 5).
            let ahead: [*const u16; NR] =
                std::array::from_fn(|c| w.wrapping_add((j + NR + c) * w_rs).cast::<u16>());
            unsafe { tile::<R, true>(&rows, &cols, &ahead, l0, l1) }
        } else {
            unsafe { tile::<R, false>(&rows, &cols, &cols, l0, l1) }
        };
        for (r, s) in sums.iter().enumerate() {
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
}

/// The `R × NR` dot products of `rows` and `cols` over the inputs `l0..l1`: for each row, the four sums of
/// its pairs with the four columns. With `AHEAD`, each step also prefetches the same inputs of the four
/// weight rows `ahead` (any addresses: a prefetch never faults).
///
/// # Safety
/// As [`product_cols`]; every pointer holds at least `l1` values.
///
/// No closures here or in [`hsum4`]: a closure does not inherit `target_feature`, and when the compiler did not
/// inline one (`array::map` of the sums, after an unrelated change elsewhere), its intrinsics became calls and
/// the bf16 prefill of OPT-2.7b took twice as long.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn tile<const R: usize, const AHEAD: bool>(
    rows: &[*const u16; R],
    cols: &[*const u16; NR],
    ahead: &[*const u16; NR],
    l0: usize,
    l1: usize,
) -> [__m128; R] {
    let mut acc = [[_mm512_setzero_ps(); NR]; R];
    let mut l = l0;
    // SAFETY: `l + 32 <= l1` in the loop, and the tail's loads are masked to `l1 - l` values.
    unsafe {
        while l + 32 <= l1 {
            if AHEAD {
                for p in ahead {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(l).cast());
                }
            }
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
    let mut sums = [_mm_setzero_ps(); R];
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

/// Outputs per panel of the packed product: one f32 vector of sums.
pub(super) const PANEL: usize = 16;
/// Panels per register tile of the packed product (64 outputs).
pub(super) const PANELS: usize = 4;
/// Activation rows per register tile of the packed product: with [`PANELS`], 24 accumulators, four weight
/// vectors and one broadcast activation pair in the 32 vector registers.
pub(super) const PR: usize = 6;

thread_local! {
    /// Per-thread buffers of the packed product, reused across calls: the weight panels (at most
    /// `PANELS * KC / 2 * PANEL` pairs, 192 KiB), and the f32 sums of the earlier runs of inputs when the
    /// outputs are bf16 (`[m, j1 - j0]`).
    static PACK: std::cell::RefCell<(Vec<u32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// The same products as [`product_cols`] (the same contract, runs of inputs and order of the runs), computed
/// the other way round: for each run of inputs and each 64 outputs, the weight rows are packed once into four
/// panels of `[input pair][16 outputs][2]` bf16 values (a 16 × 16 transpose of 4-byte pairs per 32 inputs),
/// then every tile of [`PR`] activation rows multiplies each panel vector by the row's broadcast input pair,
/// with the outputs in the lanes, so nothing is summed across lanes. The pack is not free (with the weight in
/// cache, about what 15-20 rows' products cost), so it pays from a few dozen rows on
/// ([`super::PACKED_MIN_ROWS`]); on ViT-g's shapes (257 rows) this ran at 76-88% of `vdpbf16ps`'s peak on AMD
/// Zen 5, where the dot-product tiles of [`product_cols`] ran at 60-72% (docs/performance.md).
///
/// Each output lane sums its run's pairs in input order (`vdpbf16ps` adds a pair's two products to the lane),
/// then the run's sum is added to the earlier runs' as in [`product_cols`], then the bias. With `op.out16`,
/// the last run rounds each output to bf16 as it stores it; the earlier runs' sums wait in a per-thread buffer.
///
/// # Safety
/// As [`product_cols`].
pub(super) unsafe fn product_packed(op: Operands, j0: usize, j1: usize) {
    PACK.with(|buf| {
        let (panels, sums) = &mut *buf.borrow_mut();
        // SAFETY: the caller's promise.
        unsafe { packed_cols(op, j0, j1, panels, sums) }
    });
}

/// # Safety
/// As [`product_cols`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn packed_cols(op: Operands, j0: usize, j1: usize, buf: &mut Vec<u32>, sums: &mut Vec<f32>) {
    let Operands {
        a,
        a_rs,
        w,
        w_rs,
        out,
        out_rs,
        out16,
        bias,
        m,
        k,
        ..
    } = op;
    let run = k.div_ceil(k.div_ceil(KC)).next_multiple_of(32);
    // Where the f32 sums of the earlier runs wait: the output itself, or with bf16 outputs and more than one
    // run, this thread's `[m, j1 - j0]` buffer (its column 0 is output `j0`).
    let (acc, acc_rs, acc_j0) = if out16.is_null() {
        (out, out_rs, 0)
    } else if run < k {
        if sums.len() < m * (j1 - j0) {
            sums.resize(m * (j1 - j0), 0.0);
        }
        (sums.as_mut_ptr(), j1 - j0, j0)
    } else {
        (std::ptr::null_mut(), 0, 0)
    };
    // Pairs per panel in the buffer: the pack writes 16 pairs (32 inputs) at a time. The panels start on a
    // 64-byte boundary, so that no vector of theirs straddles two cache lines (a `Vec` of this size is
    // 16-byte aligned).
    let stride = run / 2;
    if buf.len() < PANELS * stride * PANEL + PANEL {
        buf.resize(PANELS * stride * PANEL + PANEL, 0);
    }
    let panels_ptr = {
        let p = buf.as_mut_ptr();
        p.wrapping_add(p.align_offset(64))
    };
    let mut l0 = 0;
    while l0 < k {
        let l1 = (l0 + run).min(k);
        let last = l1 == k;
        let mut j = j0;
        while j < j1 {
            let width = (j1 - j).min(PANELS * PANEL);
            let panels = width.div_ceil(PANEL);
            // SAFETY: rows `j..j1` of the weight hold inputs `l0..l1`; the buffer holds `panels * stride`
            // pairs of 16 outputs, and `(l1 - l0).next_multiple_of(32) <= run = 2 * stride`.
            unsafe { pack(w, w_rs, j, j1, panels, l0, l1, stride, panels_ptr) };
            let mut i = 0;
            while i < m {
                // A partial tile repeats its last row; only the rows that exist are written.
                let rows: [*const u16; PR] = std::array::from_fn(|r| unsafe {
                    a.add((i + r).min(m - 1) * a_rs + l0).cast::<u16>()
                });
                let dst = Dst {
                    acc: acc.wrapping_add(i * acc_rs + j - acc_j0),
                    acc_rs,
                    out16: if out16.is_null() {
                        out16
                    } else {
                        out16.wrapping_add(i * out_rs + j)
                    },
                    out_rs,
                    live: (m - i).min(PR),
                    width,
                    first: l0 == 0,
                    last,
                    bias: if last && !bias.is_null() {
                        unsafe { bias.add(j) }
                    } else {
                        std::ptr::null()
                    },
                };
                let len = l1 - l0;
                // SAFETY: the rows hold `len` inputs from `l0`; the panels were packed above; the
                // outputs `i..i + live` x `j..j + width` are this call's.
                unsafe {
                    match panels {
                        4 => store(packed_tile::<4>(&rows, panels_ptr, stride, len), &dst),
                        3 => store(packed_tile::<3>(&rows, panels_ptr, stride, len), &dst),
                        2 => store(packed_tile::<2>(&rows, panels_ptr, stride, len), &dst),
                        _ => store(packed_tile::<1>(&rows, panels_ptr, stride, len), &dst),
                    }
                }
                i += PR;
            }
            j += PANELS * PANEL;
        }
        l0 = l1;
    }
}

/// Packs the weight rows `j..j + 16 * panels` (rows from `j1` on repeat row `j1 - 1`) for the inputs `l0..l1`
/// into `panels` panels of `stride` pairs each (each panel one stream for the tiles to read): pair `p` of
/// panel `q` holds, for its 16 outputs, inputs `l0 + 2p` and `l0 + 2p + 1` as one 4-byte lane; inputs from
/// `l1` on are zero.
///
/// # Safety
/// Rows `j..j1` of `w` (row stride `w_rs`) hold inputs `l0..l1`; `dst` holds `panels * stride * 16` values and
/// `(l1 - l0).next_multiple_of(32) <= 2 * stride`.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn pack(
    w: *const bf16,
    w_rs: usize,
    j: usize,
    j1: usize,
    panels: usize,
    l0: usize,
    l1: usize,
    stride: usize,
    dst: *mut u32,
) {
    for q in 0..panels {
        let base = j + q * PANEL;
        let mut l = l0;
        while l < l1 {
            let mask: __mmask32 = if l + 32 <= l1 {
                !0
            } else {
                ((1u64 << (l1 - l)) - 1) as u32
            };
            let mut rows = [_mm512_setzero_si512(); 16];
            for (c, row) in rows.iter_mut().enumerate() {
                // SAFETY: row `min(base + c, j1 - 1) < j1` holds inputs `l..l1` (the masked loads read no further).
                *row = unsafe {
                    _mm512_maskz_loadu_epi16(mask, w.add((base + c).min(j1 - 1) * w_rs + l).cast())
                };
            }
            let pairs = super::x86::transpose16_epi32(&rows);
            // SAFETY: pairs `(l - l0) / 2..+16` of panel `q` lie inside the buffer (`l - l0 < 2 * stride`,
            // a multiple of 32).
            unsafe {
                let d = dst.add((q * stride + (l - l0) / 2) * PANEL);
                for (s, v) in pairs.iter().enumerate() {
                    _mm512_storeu_si512(d.add(s * PANEL).cast(), *v);
                }
            }
            l += 32;
        }
    }
}

/// The `PR × P` vectors of sums of one packed tile: lane `c` of `[r][q]` sums activation row `r` times output
/// `16q + c` over the `len` inputs of the run, pair after pair.
///
/// # Safety
/// Every row holds `len` inputs; the panels hold `P * stride` pairs of which the first `len.div_ceil(2)` of
/// each are packed.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn packed_tile<const P: usize>(
    rows: &[*const u16; PR],
    panels: *const u32,
    stride: usize,
    len: usize,
) -> [[__m512; P]; PR] {
    let mut acc = [[_mm512_setzero_ps(); P]; PR];
    let pairs = len / 2;
    let mut bv = [as_bh(_mm512_setzero_si512()); P];
    // SAFETY: pairs `p < len.div_ceil(2)` are packed; a row's pair `p < len / 2` covers inputs `2p + 1 < len`.
    unsafe {
        for p in 0..pairs {
            for (q, bv) in bv.iter_mut().enumerate() {
                *bv = as_bh(_mm512_loadu_si512(
                    panels.add((q * stride + p) * PANEL).cast(),
                ));
            }
            for (acc, row) in acc.iter_mut().zip(rows) {
                let pair = row.add(2 * p).cast::<u32>().read_unaligned();
                let av = as_bh(_mm512_set1_epi32(pair as i32));
                for (acc, bv) in acc.iter_mut().zip(&bv) {
                    *acc = _mm512_dpbf16_ps(*acc, av, *bv);
                }
            }
        }
        if len % 2 == 1 {
            // The last input alone: its pair's second value is zero in the panels and in the broadcast.
            for (q, bv) in bv.iter_mut().enumerate() {
                *bv = as_bh(_mm512_loadu_si512(
                    panels.add((q * stride + pairs) * PANEL).cast(),
                ));
            }
            for (acc, row) in acc.iter_mut().zip(rows) {
                let av = as_bh(_mm512_set1_epi32(i32::from(*row.add(len - 1))));
                for (acc, bv) in acc.iter_mut().zip(&bv) {
                    *acc = _mm512_dpbf16_ps(*acc, av, *bv);
                }
            }
        }
    }
    acc
}

/// Where a packed tile's sums go: `live` rows of `width` outputs.
pub(super) struct Dst {
    /// The tile's first f32 sum (row stride `acc_rs`): the output when it is f32, else where the earlier runs'
    /// sums wait (unused, possibly null, with bf16 outputs and one run).
    pub acc: *mut f32,
    pub acc_rs: usize,
    /// The tile's first bf16 output (row stride `out_rs`), or null when the outputs are f32.
    pub out16: *mut bf16,
    pub out_rs: usize,
    pub live: usize,
    pub width: usize,
    /// The first run stores; later ones add to what is in `acc`.
    pub first: bool,
    /// The last run adds the bias and writes bf16 outputs.
    pub last: bool,
    /// The tile's first output's bias, null unless this is the last run.
    pub bias: *const f32,
}

/// Stores a packed tile's sums: the run's sum, plus the earlier runs' (unless `first`), plus the bias; in f32
/// at `acc`, or on the last run with bf16 outputs, rounded to bf16 at `out16`.
///
/// # Safety
/// `dst` addresses outputs this call owns.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn store<const P: usize>(sums: [[__m512; P]; PR], dst: &Dst) {
    for (r, sums) in sums.iter().enumerate().take(dst.live) {
        for (q, s) in sums.iter().enumerate() {
            let left = dst.width - q * PANEL;
            let mask: __mmask16 = if left >= PANEL {
                !0
            } else {
                ((1u32 << left) - 1) as u16
            };
            // SAFETY: row `r < live`, outputs `16q..16q + min(16, left)` of the tile (the caller's promise).
            unsafe {
                let acc = dst.acc.wrapping_add(r * dst.acc_rs + q * PANEL);
                let mut s = *s;
                if !dst.first {
                    s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(mask, acc));
                }
                if !dst.bias.is_null() {
                    s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(mask, dst.bias.add(q * PANEL)));
                }
                if dst.last && !dst.out16.is_null() {
                    let o = dst.out16.add(r * dst.out_rs + q * PANEL);
                    _mm256_mask_storeu_epi16(o.cast(), mask, narrow16(s));
                } else {
                    _mm512_mask_storeu_ps(acc, mask, s);
                }
            }
        }
    }
}

/// `v` rounded to bf16 lane by lane, the bits of `elementwise::bf16_bits`: to nearest, ties to even, NaN
/// kept a (quiet) NaN.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) fn narrow16(v: __m512) -> __m256i {
    let x = _mm512_castps_si512(v);
    let high = _mm512_srli_epi32::<16>(x);
    let odd = _mm512_and_si512(high, _mm512_set1_epi32(1));
    let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(
        x,
        _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)),
    ));
    let nan = _mm512_or_si512(high, _mm512_set1_epi32(0x40));
    let is_nan = _mm512_cmpgt_epu32_mask(
        _mm512_and_si512(x, _mm512_set1_epi32(0x7fff_ffff)),
        _mm512_set1_epi32(0x7f80_0000),
    );
    _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(is_nan, rounded, nan))
}
