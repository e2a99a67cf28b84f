//! bf16 × bf16 products on AVX512-BF16 that pack the activation rows instead of the weight: for products with
//! fewer rows than outputs (a vision tower's `Linear`s: 257 rows per image against 1408-6144 outputs), the
//! activations are the smaller operand, so they are packed once per call, shared by every task, and the weight
//! is read where it is stored (PyTorch's `[out, in]`), with no per-call copy of it.
//!
//! The register tiles are [`super::x86_bf16`]'s packed tiles with the operands' roles swapped: six weight rows
//! broadcast their input pairs, and the panel vectors hold 16 activation rows each, so each lane sums one
//! (row, output) pair over the run's inputs, pair after pair, exactly as the weight-packing tiles do. The sums
//! wait per task in an output-major buffer and are transposed into the row-major output at the end.
//!
//! When the rows are not a multiple of 16, a last panel with at most [`TAIL_ROWS`] live rows would compute
//! mostly padding (at 257 rows, one panel in 17), so those rows go through the in-place tiles of
//! [`super::x86_bf16::product_cols`] instead, block by block while the block's weight rows are in cache.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::x86_bf16::{
    Dst, KC, Operands, PANEL, PANELS, PR, narrow16, pack, packed_tile, row_tile, store,
};

/// Rows of a last, partial panel that go through the in-place tiles instead (at most [`super::x86_bf16::MR`]).
pub(super) const TAIL_ROWS: usize = 6;

thread_local! {
    /// The caller's packed activations (`[panel][pair][16]` 4-byte pairs), reused across calls: at most
    /// `ROW_PANELS_MAX_ROWS * k * 2` bytes (3.2 MB for 257 rows of ViT-g's `fc2`, 12.6 MB for 384 rows of 16384
    /// inputs).
    static ROWS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// Per task: the f32 sums of a block's packed rows, output-major (`[j - j0][row]`), and of its tail rows,
    /// row-major (`[row][j - j0]`).
    static SUMS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// The same products as [`super::x86_bf16::product_cols`] for every output (`op.m` rows, `n` outputs, the same
/// runs of inputs), threaded over blocks of 64 outputs, with bf16 outputs written at `op.out16` when it is not
/// null. Each output of a packed row equals, bit for bit, what [`super::x86_bf16::product_packed`] gives it.
///
/// # Safety
/// As [`super::x86_bf16::product_cols`] for the outputs `0..n`; `op.m >= 16`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn product_rows_packed(op: Operands, n: usize) {
    let Operands { m, k, .. } = op;
    debug_assert!(m >= 16 && k > 0 && n > 0);
    let tail = if m % PANEL <= TAIL_ROWS { m % PANEL } else { 0 };
    let packed = m - tail;
    let panels = packed.div_ceil(PANEL);
    // Pairs per panel: every run starts on a multiple of 32 inputs, so a run's pairs start at `l0 / 2`.
    let pairs = k.next_multiple_of(32) / 2;
    super::with_cached_buffer(&ROWS, panels * pairs * PANEL, |rows_ptr| {
        // Each panel packed by one task: 16 rows (the last panel's missing rows repeat its last row).
        super::par_blocks(panels, |q| {
            let op = &op;
            // SAFETY: rows `16q..packed` hold `k` inputs at stride `a_rs`; panel `q` of the buffer holds `pairs`
            // pairs of 16 lanes, and `k.next_multiple_of(32) = 2 * pairs`.
            unsafe {
                pack(
                    op.a,
                    op.a_rs,
                    q * PANEL,
                    packed,
                    1,
                    0,
                    k,
                    pairs,
                    rows_ptr.get().add(q * pairs * PANEL),
                )
            };
        });
        let block = PANELS * PANEL;
        super::par_blocks(n.div_ceil(block), |b| {
            SUMS.with(|s| {
                let (sums, tails) = &mut *s.borrow_mut();
                // SAFETY: the caller's promise; the panels were packed above.
                unsafe {
                    block_rows(
                        op,
                        rows_ptr.get(),
                        pairs,
                        packed,
                        b * block,
                        ((b + 1) * block).min(n),
                        sums,
                        tails,
                    )
                }
            })
        });
    })
}

/// The outputs `j0..j1` of every row: the first `packed` rows from the packed panels at `rows` (`pairs` pairs
/// each), the rest in place.
///
/// # Safety
/// As [`product_rows_packed`], for outputs `j0 < j1 <= n`; `rows` holds `packed.div_ceil(16)` packed panels.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn block_rows(
    op: Operands,
    rows: *const u32,
    pairs: usize,
    packed: usize,
    j0: usize,
    j1: usize,
    sums: &mut Vec<f32>,
    tails: &mut Vec<f32>,
) {
    let Operands { w, w_rs, m, k, .. } = op;
    let width = j1 - j0;
    let stride = packed.next_multiple_of(PANEL);
    if sums.len() < width * stride {
        sums.resize(width * stride, 0.0);
    }
    let tail = m - packed;
    if tails.len() < tail * width {
        tails.resize(tail * width, 0.0);
    }
    // The tail rows write their f32 sums (no bias) to `tails`, row-major: outputs `0..width` of a weight that
    // starts at output `j0`.
    let tail_op = Operands {
        a: op.a.wrapping_add(packed * op.a_rs),
        w: w.wrapping_add(j0 * w_rs),
        out: tails.as_mut_ptr(),
        out_rs: width,
        out16: std::ptr::null_mut(),
        bias: std::ptr::null(),
        m: tail,
        ..op
    };
    let run = k.div_ceil(k.div_ceil(KC)).next_multiple_of(32);
    let mut l0 = 0;
    while l0 < k {
        let l1 = (l0 + run).min(k);
        let mut i = 0;
        while i < packed {
            let p = (packed - i).div_ceil(PANEL).min(PANELS);
            // SAFETY: panels `i / 16..i / 16 + p` hold this run's pairs from `l0 / 2`.
            let panel = unsafe { rows.add((i / PANEL * pairs + l0 / 2) * PANEL) };
            let mut j = j0;
            while j < j1 {
                let live = (j1 - j).min(PR);
                let wrows: [*const u16; PR] = std::array::from_fn(|r| unsafe {
                    w.add((j + r).min(j1 - 1) * w_rs + l0).cast::<u16>()
                });
                // Roles swapped: the tile's rows are `live` weight rows (outputs), its lanes `width`
                // activation rows, stored output-major into the sums.
                let dst = Dst {
                    acc: sums.as_mut_ptr().wrapping_add((j - j0) * stride + i),
                    acc_rs: stride,
                    out16: std::ptr::null_mut(),
                    out_rs: 0,
                    live,
                    width: (packed - i).min(p * PANEL),
                    first: l0 == 0,
                    last: false,
                    bias: std::ptr::null(),
                };
                let len = l1 - l0;
                // SAFETY: the weight rows hold `len` inputs from `l0`; the sums of outputs `j..j + live` and
                // rows `i..i + 16p` (the live ones) are this task's.
                unsafe {
                    match p {
                        4 => store(packed_tile::<4>(&wrows, panel, pairs, len), &dst),
                        3 => store(packed_tile::<3>(&wrows, panel, pairs, len), &dst),
                        2 => store(packed_tile::<2>(&wrows, panel, pairs, len), &dst),
                        _ => store(packed_tile::<1>(&wrows, panel, pairs, len), &dst),
                    }
                }
                j += PR;
            }
            i += p * PANEL;
        }
        // SAFETY: the tail rows `0..tail` of `tail_op` are rows `packed..m`; its outputs `0..width` are this
        // task's `j0..j1`, written to `tails`.
        unsafe {
            match tail {
                0 => {}
                6 => row_tile::<6>(tail_op, 0, 0, width, l0, l1),
                5 => row_tile::<5>(tail_op, 0, 0, width, l0, l1),
                4 => row_tile::<4>(tail_op, 0, 0, width, l0, l1),
                3 => row_tile::<3>(tail_op, 0, 0, width, l0, l1),
                2 => row_tile::<2>(tail_op, 0, 0, width, l0, l1),
                _ => row_tile::<1>(tail_op, 0, 0, width, l0, l1),
            }
        }
        l0 = l1;
    }
    // SAFETY: the sums are complete; the outputs `j0..j1` of every row are this task's.
    unsafe { write_out(op, sums, stride, tails, packed, j0, j1) };
}

/// Writes the sums of outputs `j0..j1`, plus the bias, to the output rows: the packed rows' from `sums`
/// (output-major, row stride `stride`) through 16 × 16 transposes, the tail rows' from `tails`.
///
/// # Safety
/// As [`block_rows`]; `sums` holds `(j1 - j0) * stride` values, `tails` `(m - packed) * (j1 - j0)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn write_out(
    op: Operands,
    sums: &[f32],
    stride: usize,
    tails: &[f32],
    packed: usize,
    j0: usize,
    j1: usize,
) {
    let width = j1 - j0;
    let lanes = |count: usize| -> __mmask16 {
        if count >= PANEL {
            !0
        } else {
            ((1u32 << count) - 1) as u16
        }
    };
    // Row groups outside, outputs inside: each output row's `width` values are written one after the other
    // (whole cache lines), not 16 at a time across all the rows.
    let mut i = 0;
    while i < packed {
        let live = (packed - i).min(PANEL);
        let mut c = 0;
        while c < width {
            let cols = lanes(width - c);
            let mut block = [_mm512_setzero_si512(); PANEL];
            for (q, v) in block.iter_mut().enumerate().take((width - c).min(PANEL)) {
                // SAFETY: output `c + q < width`, rows `i..i + live` of the sums.
                *v = unsafe {
                    _mm512_maskz_loadu_epi32(
                        lanes(live),
                        sums.as_ptr().add((c + q) * stride + i).cast(),
                    )
                };
            }
            let t = super::x86::transpose16_epi32(&block);
            for (r, v) in t.iter().enumerate().take(live) {
                // SAFETY: row `i + r < packed <= m`, outputs from `j0 + c` in `j0..j1`.
                unsafe { put(op, i + r, j0 + c, cols, _mm512_castsi512_ps(*v)) };
            }
            c += PANEL;
        }
        i += PANEL;
    }
    for r in 0..op.m - packed {
        let mut c = 0;
        while c < width {
            let cols = lanes(width - c);
            // SAFETY: tail row `r`'s outputs `c..c + 16` (the live ones) of `tails`.
            let v = unsafe { _mm512_maskz_loadu_ps(cols, tails.as_ptr().add(r * width + c)) };
            // SAFETY: row `packed + r < m`, outputs from `j0 + c` in `j0..j1`.
            unsafe { put(op, packed + r, j0 + c, cols, v) };
            c += PANEL;
        }
    }
}

/// Stores one output row's values from output `j` (the lanes of `mask`), plus the bias, in the output's dtype.
///
/// # Safety
/// Row `row < op.m`, and the outputs `j..j + 16` of `mask` are the caller's.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn put(op: Operands, row: usize, j: usize, mask: __mmask16, mut v: __m512) {
    // SAFETY: the caller's promise.
    unsafe {
        if !op.bias.is_null() {
            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, op.bias.add(j)));
        }
        if op.out16.is_null() {
            _mm512_mask_storeu_ps(op.out.add(row * op.out_rs + j), mask, v);
        } else {
            if op.gelu {
                v = gelu16(widen16(narrow16(v)));
            }
            let o = op.out16.add(row * op.out_rs + j);
            _mm256_mask_storeu_epi16(o.cast(), mask, narrow16(v));
        }
    }
}

/// 16 bf16 values as f32 (exact).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn widen16(v: __m256i) -> __m512 {
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v)))
}

/// `elementwise::gelu_one` on 16 lanes, the same operations in the same order (so the same bits): `0.5 x (1 +
/// erf(x / √2))`, erf by its rational approximation on `[-4, 4]` (NaN stays NaN).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
fn gelu16(x: __m512) -> __m512 {
    use super::elementwise::{ERF_P, ERF_Q};
    let t = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
    // `clamp`: the second operand is returned when either is NaN.
    let t = _mm512_min_ps(_mm512_set1_ps(4.0), _mm512_max_ps(_mm512_set1_ps(-4.0), t));
    let t2 = _mm512_mul_ps(t, t);
    let mut p = _mm512_set1_ps(ERF_P[0]);
    for c in &ERF_P[1..] {
        p = _mm512_fmadd_ps(p, t2, _mm512_set1_ps(*c));
    }
    let mut q = _mm512_set1_ps(ERF_Q[0]);
    for c in &ERF_Q[1..] {
        q = _mm512_fmadd_ps(q, t2, _mm512_set1_ps(*c));
    }
    let erf = _mm512_div_ps(_mm512_mul_ps(t, p), q);
    _mm512_mul_ps(
        _mm512_mul_ps(_mm512_set1_ps(0.5), x),
        _mm512_add_ps(_mm512_set1_ps(1.0), erf),
    )
}
