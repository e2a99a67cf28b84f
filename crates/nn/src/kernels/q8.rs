//! int8 weight-only products: Burn's block-quantized layout `[k, n]` with one scale per `[1, group]` block.

use rayon::prelude::*;

use super::dense::{gemm_f32, with_scratch};
use super::{KernelPath, SendPtr};

/// Input rows per partial sum in the decoding kernel: fixed, so results do not depend on the thread count.
const K_CHUNK: usize = 256;
/// Output columns per block dequantized to f32 for `gemm`.
const GEMM_BLOCK: usize = 128;

/// An int8 weight of a `Linear` with `k` inputs and `n` outputs, as Burn stores a block-quantized `[k, n]`
/// tensor: `values` row-major `[k, n]`, and `scales` row-major `[k, n / group]`, one per block of `group`
/// consecutive outputs of one input row. The weight is `values[l, j] * scales[l, j / group]`.
#[derive(Clone, Copy, Debug)]
pub struct Q8Weight<'a> {
    /// Quantized values in `[-127, 127]`, `[k, n]` row-major.
    pub values: &'a [i8],
    /// Scales, `[k, n / group]` row-major.
    pub scales: &'a [f32],
    /// Outputs per scale: a multiple of 16 that divides `n`.
    pub group: usize,
}

impl Q8Weight<'_> {
    /// Panics unless the slices describe a `[k, n]` weight.
    pub(super) fn check(&self, k: usize, n: usize) {
        assert!(
            self.group > 0 && self.group.is_multiple_of(16) && n.is_multiple_of(self.group),
            "int8 group {} must be a multiple of 16 that divides {n}",
            self.group
        );
        assert_eq!(self.values.len(), k * n, "int8 values are not [k, n]");
        assert_eq!(
            self.scales.len(),
            k * (n / self.group),
            "int8 scales are not [k, n / group]"
        );
    }
}

/// Quantizes a `[k, n]` row-major weight symmetrically to int8, one scale per `group` consecutive values of
/// a row: `scale = max|w| / 127` (1 when that is zero or not a normal float), `q = round_half_even(w / scale)`.
/// Returns the values and the `[k, n / group]` scales. Rows are quantized in parallel.
///
/// # Panics
/// When `w` is not `[k, n]` or `group` does not divide `n`.
pub fn quantize_q8(w: &[f32], k: usize, n: usize, group: usize) -> (Vec<i8>, Vec<f32>) {
    assert_eq!(w.len(), k * n, "the weight is not [k, n]");
    assert!(
        group > 0 && n.is_multiple_of(group),
        "group {group} does not divide {n}"
    );
    let mut values = vec![0i8; k * n];
    let mut scales = vec![0f32; k * (n / group)];
    if n == 0 {
        return (values, scales);
    }
    values
        .par_chunks_mut(n)
        .zip(scales.par_chunks_mut(n / group))
        .zip(w.par_chunks(n))
        .for_each(|((q, s), w)| {
            for ((q, s), w) in q.chunks_mut(group).zip(s).zip(w.chunks(group)) {
                let amax = w.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let scale = amax / 127.0;
                *s = if scale.is_normal() { scale } else { 1.0 };
                for (q, &v) in q.iter_mut().zip(w) {
                    *q = (v / *s).round_ties_even().clamp(-127.0, 127.0) as i8;
                }
            }
        });
    (values, scales)
}

/// [`quantize_q8`] of the `[k, n]` transpose of a row-major `[n, k]` weight (PyTorch's `Linear` layout, as a
/// checkpoint stores it), without materialising the transpose: slabs of 16 input rows are gathered and quantized
/// in parallel. Equal to `quantize_q8(&transpose(w), k, n, group)`.
///
/// # Panics
/// When `w` is not `[n, k]` or `group` does not divide `n`.
pub fn quantize_q8_transposed(w: &[f32], n: usize, k: usize, group: usize) -> (Vec<i8>, Vec<f32>) {
    const SLAB: usize = 16;
    assert_eq!(w.len(), k * n, "the weight is not [n, k]");
    assert!(
        group > 0 && n.is_multiple_of(group),
        "group {group} does not divide {n}"
    );
    let groups = n / group;
    let mut values = vec![0i8; k * n];
    let mut scales = vec![0f32; k * groups];
    if n == 0 || k == 0 {
        return (values, scales);
    }
    values
        .par_chunks_mut(SLAB * n)
        .zip(scales.par_chunks_mut(SLAB * groups))
        .enumerate()
        .for_each(|(b, (q, s))| {
            let l0 = b * SLAB;
            let rows = q.len() / n;
            let mut slab = vec![0f32; rows * n];
            for (j, src) in w.chunks_exact(k).enumerate() {
                for (dl, v) in src[l0..l0 + rows].iter().enumerate() {
                    slab[dl * n + j] = *v;
                }
            }
            let (sq, ss) = quantize_q8(&slab, rows, n, group);
            q.copy_from_slice(&sq);
            s.copy_from_slice(&ss);
        });
    (values, scales)
}

/// The f32 weight `[k, n]` an int8 weight stands for.
pub fn dequantize_q8(w: &Q8Weight<'_>, k: usize, n: usize) -> Vec<f32> {
    w.check(k, n);
    let mut out = vec![0f32; k * n];
    dequantize_cols(KernelPath::detect(), w, n, 0, n, &mut out);
    out
}

/// Writes columns `c0..c0 + cols` of the dequantized `[k, n]` weight into `dst` (`[k, cols]` row-major). `c0`
/// and `cols` are multiples of 16 (as `group` and `n` are), so each run of 16 values has one scale.
fn dequantize_cols(
    path: KernelPath,
    w: &Q8Weight<'_>,
    n: usize,
    c0: usize,
    cols: usize,
    dst: &mut [f32],
) {
    debug_assert!(c0.is_multiple_of(16) && cols.is_multiple_of(16));
    let groups = n / w.group;
    for (l, row) in dst.chunks_exact_mut(cols).enumerate() {
        let q = &w.values[l * n + c0..l * n + c0 + cols];
        let s = &w.scales[l * groups..(l + 1) * groups];
        #[cfg(target_arch = "x86_64")]
        if path == KernelPath::Avx512 {
            // SAFETY: the path was checked against the CPU's features; `q` and `row` hold `cols` values, and
            // `s[(c0 + j) / group]` exists for every `j < cols`.
            unsafe { super::x86::dequant_row_avx512(q, s, c0, w.group, row) };
            continue;
        }
        for (j, (d, q)) in row.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
            let s = s[(c0 + 16 * j) / w.group];
            for (d, &q) in d.iter_mut().zip(q) {
                *d = q as f32 * s;
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = path;
}

/// Decoding sizes: the input dimension is cut into [`K_CHUNK`]-row chunks, each summed into its own partial
/// output in parallel (streaming the weight row by row), then the partials are added in chunk order.
pub(super) fn gemv(
    path: KernelPath,
    x: &[f32],
    m: usize,
    k: usize,
    w: &Q8Weight<'_>,
    n: usize,
    out: &mut [f32],
) {
    let chunks = k.div_ceil(K_CHUNK).max(1);
    let mut partials = vec![0f32; chunks * m * n];
    let base = SendPtr(partials.as_mut_ptr());
    let partial = |c: usize| {
        // SAFETY: chunk `c` alone writes `partials[c * m * n..(c + 1) * m * n]`, which the buffer holds.
        let p = unsafe { std::slice::from_raw_parts_mut(base.get().add(c * m * n), m * n) };
        let l0 = c * K_CHUNK;
        let l1 = ((c + 1) * K_CHUNK).min(k);
        chunk_rows(path, x, m, k, w, n, l0, l1, p);
    };
    if k * n < 1 << 16 {
        (0..chunks).for_each(partial);
    } else {
        super::par_blocks(chunks, partial);
    }
    out.fill(0.0);
    for p in partials.chunks_exact(m * n) {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
}

/// `p[i, :] += sum_{l0 <= l < l1} x[i, l] * scale[l, :] * q[l, :]`, four input rows at a time, in the order
/// every path uses (so that all paths give the same bits).
#[allow(clippy::too_many_arguments)]
fn chunk_rows(
    path: KernelPath,
    x: &[f32],
    m: usize,
    k: usize,
    w: &Q8Weight<'_>,
    n: usize,
    l0: usize,
    l1: usize,
    p: &mut [f32],
) {
    let groups = n / w.group;
    // a[j, g] = x[i, l + j] * scale[l + j, g]
    let mut a = vec![0f32; 4 * groups];
    let mut l = l0;
    while l < l1 {
        let rows = (l1 - l).min(4);
        let mut q: [&[i8]; 4] = [&[]; 4];
        for (j, q) in q.iter_mut().enumerate().take(rows) {
            *q = &w.values[(l + j) * n..(l + j + 1) * n];
        }
        for i in 0..m {
            for (j, a) in a.chunks_exact_mut(groups).take(rows).enumerate() {
                let xj = x[i * k + l + j];
                let s = &w.scales[(l + j) * groups..(l + j + 1) * groups];
                for (a, s) in a.iter_mut().zip(s) {
                    *a = xj * s;
                }
            }
            axpy(path, &mut p[i * n..(i + 1) * n], &a, &q, rows, w.group);
        }
        l += rows;
    }
}

/// `y[c] = fma(a[rows-1, g], q[rows-1][c], ... fma(a[0, g], q[0][c], y[c]))` with `g = c / group`; `a` is
/// `[4, y.len() / group]`.
fn axpy(path: KernelPath, y: &mut [f32], a: &[f32], q: &[&[i8]; 4], rows: usize, group: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `path` was checked against the CPU's features (`KernelPath::checked`); every `q[j]` (j < rows)
        // has `y.len()` values; `group` (a multiple of 16) divides `y.len()`; `a` is `[4, groups]`.
        match path {
            KernelPath::Avx512 => {
                return unsafe { super::x86::axpy_q8_avx512(y, a, q, rows, group) };
            }
            KernelPath::Avx2 => return unsafe { super::x86::axpy_q8_avx2(y, a, q, rows, group) },
            KernelPath::Portable => {}
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = path;
    let groups = y.len() / group;
    for (c, y) in y.iter_mut().enumerate() {
        let g = c / group;
        let mut v = *y;
        for j in 0..rows {
            v = a[j * groups + g].mul_add(q[j][c] as f32, v);
        }
        *y = v;
    }
}

/// Larger `m`: blocks of [`GEMM_BLOCK`] output columns dequantized to f32 per thread and multiplied by `gemm`.
pub(super) fn gemm_blocks(
    path: KernelPath,
    x: &[f32],
    m: usize,
    k: usize,
    w: &Q8Weight<'_>,
    n: usize,
    out: &mut [f32],
) {
    let out_ptr = SendPtr(out.as_mut_ptr());
    let blocks = n.div_ceil(GEMM_BLOCK);
    (0..blocks).into_par_iter().for_each(|b| {
        let c0 = b * GEMM_BLOCK;
        let cols = GEMM_BLOCK.min(n - c0);
        with_scratch(k * cols, |s| {
            dequantize_cols(path, w, n, c0, cols, s);
            // SAFETY: `s` is `[k, cols]`; this task writes only columns `c0..c0 + cols` of `out` ([m, n]).
            unsafe { gemm_f32(m, cols, k, x, s, (cols, 1), out_ptr.get().add(c0), n) };
        });
    });
}
