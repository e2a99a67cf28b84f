//! f32 products on AVX-512 that pack the activation rows: for a prefill or the Q-Former's queries (16 to 128
//! rows, `super::F32_ROWS_MIN_ROWS..=super::F32_ROWS_MAX_ROWS`, against thousands of outputs; the vision
//! tower's 257 rows per image stay on `gemm`), the activations are the smaller operand, so they are packed
//! once per call into panels of 16 rows, input by input (`[panel][input][16 rows]`), shared by every task,
//! and the weight is read where it is stored (PyTorch's `[out, in]`), one value at a time, broadcast.
//!
//! A register tile of `R` weight rows by `P` panels keeps each (row, output) sum in its own lane, which adds
//! the products input after input with `vfmadd`: the sum of each output is the sequential sum over its inputs
//! (fused multiply-adds), carried across runs of [`RUN`] inputs through the task's buffer. The sums wait
//! output-major in that buffer and are transposed into the row-major output at the end, where the bias is
//! added (`x86_bf16_rows::write_out`).

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::SendPtr;
use super::x86_bf16::{Operands, PANEL};

/// Inputs per run: a run of four panels (`4 * 16 * RUN * 4` bytes) stays in L2 while a task's weight rows
/// pass.
const RUN: usize = 1024;
/// Outputs per task (a multiple of the tiles' 12 and 6 rows).
const BLOCK: usize = 48;

thread_local! {
    /// The caller's packed activations, reused across calls.
    static ROWS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per task: the f32 sums of a block, output-major (`[j - j0][row]`).
    static SUMS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out = x W^T (+ bias)` for `x: [m, k]`, `w: [n, k]` and `out: [m, n]`, threaded over blocks of outputs.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL; `x`, `w` and `out` hold `m * k`, `n * k` and `m * n` values, a bias `n`;
/// `m > 0`, `k > 0`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn product_rows_f32(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    debug_assert!(m > 0 && k > 0 && x.len() == m * k && w.len() == n * k && out.len() == m * n);
    let panels = m.div_ceil(PANEL);
    super::with_cached_buffer(&ROWS, panels * k * PANEL, |rows| {
        let xp = SendPtr(x.as_ptr().cast_mut());
        super::par_blocks(panels, |q| {
            // SAFETY: rows `16q..min(16q + 16, m)` of `x` hold `k` inputs; panel `q` holds `k * 16` values.
            unsafe { pack(xp.get(), m, k, q * PANEL, rows.get().add(q * k * PANEL)) };
        });
        // The operands `write_out` reads: the output, its bias and its rows (the bf16 operands are unused).
        let op = Operands {
            a: std::ptr::null(),
            a_rs: 0,
            w: std::ptr::null(),
            w_rs: 0,
            out: out.as_mut_ptr(),
            out_rs: n,
            out16: std::ptr::null_mut(),
            bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
            m,
            k,
            gelu: false,
        };
        let wp = SendPtr(w.as_ptr().cast_mut());
        super::par_blocks(n.div_ceil(BLOCK), |b| {
            SUMS.with(|s| {
                let sums = &mut *s.borrow_mut();
                let stride = panels * PANEL;
                let (j0, j1) = (b * BLOCK, ((b + 1) * BLOCK).min(n));
                if sums.len() < (j1 - j0) * stride {
                    sums.resize((j1 - j0) * stride, 0.0);
                }
                // SAFETY: the panels were packed above; the weight holds rows `j0..j1`; the sums hold this block;
                // this task writes only the outputs `j0..j1`.
                unsafe {
                    block(wp.get(), k, rows.get(), panels, j0, j1, sums);
                    super::x86_bf16_rows::write_out(op, sums, stride, &[], m, j0, j1);
                }
            })
        });
    })
}

/// Packs rows `i0..i0 + 16` of `x` (rows from `m` on are zero) into `dst`, input by input: `dst[l * 16 + r]`
/// is `x[i0 + r, l]`.
///
/// # Safety
/// `x` holds `m` rows of `k` values; `dst` holds `k * 16` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn pack(x: *const f32, m: usize, k: usize, i0: usize, dst: *mut f32) {
    let live = m.saturating_sub(i0).min(PANEL);
    let mut l = 0;
    while l < k {
        let mask: __mmask16 = if l + 16 <= k {
            !0
        } else {
            ((1u32 << (k - l)) - 1) as u16
        };
        let mut block = [_mm512_setzero_si512(); 16];
        for (r, v) in block.iter_mut().enumerate().take(live) {
            // SAFETY: row `i0 + r < m` holds inputs `l..k` (the masked load reads no further).
            *v = unsafe { _mm512_maskz_loadu_epi32(mask, x.add((i0 + r) * k + l).cast()) };
        }
        let t = super::x86::transpose16_epi32(&block);
        for (c, v) in t.iter().enumerate().take((k - l).min(16)) {
            // SAFETY: input `l + c < k` of the panel.
            unsafe { _mm512_storeu_si512(dst.add((l + c) * PANEL).cast(), *v) };
        }
        l += 16;
    }
}

/// The sums of outputs `j0..j1` for the rows of every panel, into `sums` (`[j - j0][row]`, row stride
/// `panels * 16`), run by run: each tile starts from the sums of the runs before it.
///
/// # Safety
/// As [`product_rows_f32`]; `rows` holds `panels` packed panels of `k` inputs.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn block(
    w: *const f32,
    k: usize,
    rows: *const f32,
    panels: usize,
    j0: usize,
    j1: usize,
    sums: &mut [f32],
) {
    let stride = panels * PANEL;
    let sums = sums.as_mut_ptr();
    let mut l0 = 0;
    while l0 < k {
        let l1 = (l0 + RUN).min(k);
        let mut q = 0;
        while q < panels {
            let p = (panels - q).min(4);
            let mut j = j0;
            while j < j1 {
                let live = j1 - j;
                // SAFETY: outputs `j..j + R` (R <= live), panels `q..q + P` (P <= p), inputs `l0..l1`; the
                // sums of those outputs and rows are this task's.
                let step = unsafe {
                    let t = Tile {
                        w,
                        k,
                        rows,
                        sums,
                        stride,
                        j: j - j0,
                        wj: j,
                        q,
                        l0,
                        l1,
                    };
                    match (p, live) {
                        (4, 6..) => t.run::<6, 4>(),
                        (3, 6..) => t.run::<6, 3>(),
                        (2, 12..) => t.run::<12, 2>(),
                        (1, 12..) => t.run::<12, 1>(),
                        (4, _) => t.run::<1, 4>(),
                        (3, _) => t.run::<1, 3>(),
                        (2, _) => t.run::<1, 2>(),
                        _ => t.run::<1, 1>(),
                    }
                };
                j += step;
            }
            q += p;
        }
        l0 = l1;
    }
}

/// One register tile's place: weight rows from `wj` (`k` apart), panels from `q`, inputs `l0..l1`, sums of
/// the block's output `j` on.
#[derive(Clone, Copy)]
struct Tile {
    w: *const f32,
    k: usize,
    rows: *const f32,
    sums: *mut f32,
    stride: usize,
    j: usize,
    wj: usize,
    q: usize,
    l0: usize,
    l1: usize,
}

impl Tile {
    /// Adds `R` outputs × `P` panels over the run to the sums (from zero on the first run); returns `R`.
    ///
    /// # Safety
    /// As [`block`], for these outputs and panels.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn run<const R: usize, const P: usize>(&self) -> usize {
        let Tile {
            w,
            k,
            rows,
            sums,
            stride,
            j,
            wj,
            q,
            l0,
            l1,
        } = *self;
        // SAFETY: the caller's promise.
        unsafe {
            let at = |r: usize, p: usize| sums.add((j + r) * stride + (q + p) * PANEL);
            let mut acc = [[_mm512_setzero_ps(); P]; R];
            if l0 > 0 {
                for (r, acc) in acc.iter_mut().enumerate() {
                    for (p, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm512_loadu_ps(at(r, p));
                    }
                }
            }
            let wr: [*const f32; R] = std::array::from_fn(|r| w.add((wj + r) * k));
            let panel: [*const f32; P] = std::array::from_fn(|p| rows.add((q + p) * k * PANEL));
            for l in l0..l1 {
                let pv: [__m512; P] =
                    std::array::from_fn(|p| _mm512_loadu_ps(panel[p].add(l * PANEL)));
                for (acc, wr) in acc.iter_mut().zip(&wr) {
                    let wv = _mm512_set1_ps(*wr.add(l));
                    for (acc, pv) in acc.iter_mut().zip(&pv) {
                        *acc = _mm512_fmadd_ps(wv, *pv, *acc);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (p, acc) in acc.iter().enumerate() {
                    _mm512_storeu_ps(at(r, p), *acc);
                }
            }
        }
        R
    }
}
