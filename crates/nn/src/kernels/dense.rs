//! Dense (f32, bf16, f16) products with PyTorch-layout weights `[n, k]`.

use std::cell::RefCell;

use half::{bf16, f16};
use rayon::prelude::*;

use super::{DenseWeight, KernelPath, SendPtr};

/// Output channels per rayon task in the dot-product kernel.
const GEMV_BLOCK: usize = 64;
/// Output channels per block converted to f32 for `gemm`, at most: `gemm` packs the activations again for every
/// block, so blocks are as large as a 1 MiB f32 scratch allows (a multiple of 16, at least 64).
const GEMM_BLOCK: usize = 512;
/// f32 values of the per-thread weight scratch that bound [`GEMM_BLOCK`].
const GEMM_SCRATCH: usize = 1 << 18;
/// Output channels per task of the AVX512-BF16 product, at most: their weight rows for one run of
/// `x86_bf16::KC` inputs (288 KiB) stay in L2 while every activation row passes.
#[cfg(target_arch = "x86_64")]
const DP_BLOCK: usize = 96;

/// `out[i, r] = dot(x[i, :], w[r, :])` for `m <= GEMV_MAX_ROWS`, threaded over blocks of output channels.
pub(super) fn gemv(
    path: KernelPath,
    x: &[f32],
    m: usize,
    k: usize,
    w: DenseWeight<'_>,
    n: usize,
    out: &mut [f32],
) {
    let out_ptr = SendPtr(out.as_mut_ptr());
    let blocks = n.div_ceil(GEMV_BLOCK);
    let run = |b: usize| {
        let rows = b * GEMV_BLOCK..((b + 1) * GEMV_BLOCK).min(n);
        // SAFETY: each task writes only the columns `rows` of `out` ([m, n]), disjoint across tasks.
        unsafe { gemv_rows(path, x, m, k, w, rows.start, rows.end, n, out_ptr) }
    };
    if blocks * k * m < 1 << 16 {
        (0..blocks).for_each(run);
    } else {
        super::par_blocks(blocks, run);
    }
}

/// # Safety
/// `out` points to an `[m, n]` buffer of which the caller owns columns `r0..r1`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemv_rows(
    path: KernelPath,
    x: &[f32],
    m: usize,
    k: usize,
    w: DenseWeight<'_>,
    r0: usize,
    r1: usize,
    n: usize,
    out: SendPtr,
) {
    #[cfg(target_arch = "x86_64")]
    {
        use super::x86;
        // SAFETY: `path` was checked against the CPU's features by the caller (`KernelPath::checked`).
        match (path, w) {
            (KernelPath::Avx512, DenseWeight::F32(w)) => {
                return unsafe { x86::gemv_f32_avx512(x, m, k, w, r0, r1, n, out.get()) };
            }
            (KernelPath::Avx512, DenseWeight::Bf16(w)) => {
                return unsafe { x86::gemv_bf16_avx512(x, m, k, w, r0, r1, n, out.get()) };
            }
            (KernelPath::Avx512, DenseWeight::F16(w)) => {
                return unsafe { x86::gemv_f16_avx512(x, m, k, w, r0, r1, n, out.get()) };
            }
            (KernelPath::Avx2, DenseWeight::F32(w)) => {
                return unsafe { x86::gemv_f32_avx2(x, m, k, w, r0, r1, n, out.get()) };
            }
            (KernelPath::Avx2, DenseWeight::Bf16(w)) => {
                return unsafe { x86::gemv_bf16_avx2(x, m, k, w, r0, r1, n, out.get()) };
            }
            (KernelPath::Avx2, DenseWeight::F16(w)) => {
                return unsafe { x86::gemv_f16_avx2(x, m, k, w, r0, r1, n, out.get()) };
            }
            (KernelPath::Portable, _) => {}
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = path;
    match w {
        DenseWeight::F32(w) => unsafe { gemv_portable(x, m, k, w, |v| v, r0, r1, n, out) },
        DenseWeight::Bf16(w) => unsafe { gemv_portable(x, m, k, w, bf16::to_f32, r0, r1, n, out) },
        DenseWeight::F16(w) => unsafe { gemv_portable(x, m, k, w, f16::to_f32, r0, r1, n, out) },
    }
}

/// # Safety
/// As [`gemv_rows`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemv_portable<T: Copy>(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[T],
    to_f32: impl Fn(T) -> f32,
    r0: usize,
    r1: usize,
    n: usize,
    out: SendPtr,
) {
    for r in r0..r1 {
        let wr = &w[r * k..(r + 1) * k];
        for i in 0..m {
            let xr = &x[i * k..(i + 1) * k];
            let mut acc = 0.0f32;
            for (a, &b) in xr.iter().zip(wr) {
                acc += a * to_f32(b);
            }
            // SAFETY: `i < m`, `r0 <= r < r1 <= n`, and the caller owns column `r`.
            unsafe { *out.get().add(i * n + r) = acc };
        }
    }
}

thread_local! {
    /// Per-thread f32 copy of a block of weight rows, reused across calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out = x W^T` for larger `m`: blocks of [`GEMM_BLOCK`] weight rows, converted to f32 per thread, each
/// multiplied by `gemm` on one thread; blocks run in parallel.
pub(super) fn gemm_blocks(
    path: KernelPath,
    x: &[f32],
    m: usize,
    k: usize,
    w: DenseWeight<'_>,
    n: usize,
    out: &mut [f32],
) {
    let out_ptr = SendPtr(out.as_mut_ptr());
    // At least two blocks a thread, so that both cores stay busy on products with few outputs.
    let per_thread = n
        .div_ceil(2 * rayon::current_num_threads())
        .next_multiple_of(16);
    let block = (GEMM_SCRATCH / k.max(1) / 16 * 16)
        .clamp(64, GEMM_BLOCK)
        .min(per_thread.max(16));
    let blocks = n.div_ceil(block);
    (0..blocks).into_par_iter().for_each(|b| {
        let r0 = b * block;
        let rows = block.min(n - r0);
        let run = |block: &[f32]| {
            // SAFETY: `block` is `[rows, k]` row-major, `x` is `[m, k]`; this task writes only columns
            // `r0..r0 + rows` of `out` (`[m, n]`), disjoint across tasks.
            unsafe { gemm_f32(m, rows, k, x, block, (1, k), out_ptr.get().add(r0), n) };
        };
        match w {
            DenseWeight::F32(w) => run(&w[r0 * k..(r0 + rows) * k]),
            DenseWeight::Bf16(w) => with_scratch(rows * k, |s| {
                convert_bf16(path, &w[r0 * k..(r0 + rows) * k], s);
                run(s)
            }),
            DenseWeight::F16(w) => with_scratch(rows * k, |s| {
                convert_f16(path, &w[r0 * k..(r0 + rows) * k], s);
                run(s)
            }),
        }
    });
}

/// Where a bf16 × bf16 product writes its `[m, n]` outputs.
pub(super) enum Bf16Out<'a> {
    /// The f32 sums.
    F32(&'a mut [f32]),
    /// The sums rounded to bf16 (`elementwise::bf16_bits`).
    Bf16(&'a mut [bf16]),
}

impl Bf16Out<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            Self::F32(o) => o.len(),
            Self::Bf16(o) => o.len(),
        }
    }
}

/// `out = a W^T + bias` for bf16 activations `a: [m, k]` and a bf16 weight `[n, k]` on AVX512-BF16, threaded over
/// blocks of output channels.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL and BF16.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_dpbf16(
    a: &[bf16],
    m: usize,
    k: usize,
    w: &[bf16],
    n: usize,
    bias: Option<&[f32]>,
    out: Bf16Out<'_>,
) {
    use super::x86_bf16::{NR, Operands, PANELS, product_cols, product_packed};
    assert!(a.len() == m * k && w.len() == n * k && out.len() == m * n);
    assert!(bias.is_none_or(|b| b.len() == n));
    if m == 0 || n == 0 {
        return;
    }
    // Fewer rows than outputs: pack the activations (the smaller operand) and read the weight in place; else,
    // from PACKED_MIN_ROWS rows, pack the weight.
    // AMX where the process has it and the shape fits its tiles (whole tiles of inputs, pairs of tiles of
    // outputs).
    let amx = m >= super::AMX_MIN_ROWS && super::x86_amx::fits(k, n) && super::x86_amx::enabled();
    let rows_packed =
        k > 0 && m < n && (super::ROW_PANELS_MIN_ROWS..=super::ROW_PANELS_MAX_ROWS).contains(&m);
    let packed = amx || rows_packed || (k > 0 && m >= super::PACKED_MIN_ROWS);
    let (out, out16) = match out {
        Bf16Out::F32(o) => (o.as_mut_ptr(), std::ptr::null_mut()),
        Bf16Out::Bf16(o) if packed => (std::ptr::null_mut(), o.as_mut_ptr()),
        Bf16Out::Bf16(o) => {
            // The dot-product tiles (and `k = 0`) write f32: round afterwards.
            let mut sums = vec![0f32; m * n];
            // SAFETY: the caller's promise.
            unsafe { gemm_dpbf16(a, m, k, w, n, bias, Bf16Out::F32(&mut sums)) };
            super::narrow_bf16_threaded(KernelPath::Avx512, &sums, o);
            return;
        }
    };
    if k == 0 {
        // SAFETY: `out` holds `[m, n]` f32 values (bf16 outputs went above).
        let out = unsafe { std::slice::from_raw_parts_mut(out, m * n) };
        for row in out.chunks_exact_mut(n) {
            match bias {
                Some(b) => row.copy_from_slice(b),
                None => row.fill(0.0),
            }
        }
        return;
    }
    let op = Operands {
        a: a.as_ptr(),
        a_rs: k,
        w: w.as_ptr(),
        w_rs: k,
        out,
        out_rs: n,
        out16,
        bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
        m,
        k,
        gelu: false,
    };
    if amx {
        // SAFETY: as below, for every output; `enabled` and `fits` hold.
        unsafe { super::x86_amx::product_amx(op, n) };
        return;
    }
    if rows_packed {
        // SAFETY: as below, for every output; `m >= 16`.
        unsafe { super::x86_bf16_rows::product_rows_packed(op, n) };
        return;
    }
    if packed {
        // One task per 64 outputs (one pack of the weight per run of inputs), for an even split between
        // threads.
        let block = PANELS * 16;
        super::par_blocks(n.div_ceil(block), |b| {
            // SAFETY: the CPU has the features (the caller's promise); the operands are `[m, k]`, `[n, k]`
            // and `[m, n]`, and each task writes only its own outputs.
            unsafe { product_packed(op, b * block, ((b + 1) * block).min(n)) }
        });
        return;
    }
    // At least two blocks a thread and the same number for every thread, each at most DP_BLOCK outputs.
    let threads = rayon::current_num_threads();
    let blocks = threads * n.div_ceil(threads * DP_BLOCK).max(2);
    let block = n.div_ceil(blocks).next_multiple_of(NR);
    super::par_blocks(n.div_ceil(block), |b| {
        // SAFETY: the CPU has the features (the caller's promise); the operands are `[m, k]`, `[n, k]` and
        // `[m, n]`, and each task writes only its own outputs.
        unsafe { product_cols(op, b * block, ((b + 1) * block).min(n)) }
    });
}

/// `dst = src` as f32 (exact).
fn convert_bf16(path: KernelPath, src: &[bf16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if path == KernelPath::Avx512 {
        // SAFETY: the path was checked against the CPU's features by the caller.
        return unsafe { super::x86::bf16_to_f32_avx512(src, dst) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = path;
    for (d, v) in dst.iter_mut().zip(src) {
        *d = v.to_f32();
    }
}

/// `dst = src` as f32 (exact).
fn convert_f16(path: KernelPath, src: &[f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if path == KernelPath::Avx512 {
        // SAFETY: the path was checked against the CPU's features by the caller.
        return unsafe { super::x86::f16_to_f32_avx512(src, dst) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = path;
    use half::slice::HalfFloatSliceExt;
    src.convert_to_f32_slice(dst);
}

pub(super) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

/// `dst[i, j] = sum_l x[i, l] * w[l, j]` on one thread, for `x: [m, k]` row-major, `w` the `[k, cols]` matrix
/// with strides `(w_rs, w_cs)` (`(cols, 1)` row-major; `(1, k)` for a row-major `[cols, k]` read transposed),
/// and `dst` with row stride `dst_rs`.
///
/// # Safety
/// `w` must hold every element the strides address, and `dst` must be valid for writes at `i * dst_rs + j` for
/// `i < m`, `j < cols`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_f32(
    m: usize,
    cols: usize,
    k: usize,
    x: &[f32],
    w: &[f32],
    (w_rs, w_cs): (usize, usize),
    dst: *mut f32,
    dst_rs: usize,
) {
    debug_assert_eq!(x.len(), m * k);
    debug_assert_eq!(w.len(), k * cols);
    // SAFETY: the strides describe `x` and `w` as the caller promised, and `dst` likewise.
    unsafe {
        gemm::gemm(
            m,
            cols,
            k,
            dst,
            1,
            dst_rs as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            w_cs as isize,
            w_rs as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}
