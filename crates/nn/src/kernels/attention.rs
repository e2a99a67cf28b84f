//! Softmax attention of bf16 heads, one task per batch row and head: read straight from a fused `[q | k | v]`
//! projection (the ViT's `qkv` `Linear`), or from separate strided query, key and value heads with an additive
//! mask (the language models' self- and cross-attention), the context written with the heads merged.

use std::cell::RefCell;

use half::bf16;

use super::elementwise::bf16_bits;
use super::{KernelPath, SendPtr, narrow_bf16};

/// The layout of a fused projection `[batch, seq, 3 * heads * head_dim]`: for each token, the query of every
/// head (head-major), then the keys, then the values, as HF's ViT attention splits it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QkvShape {
    /// Batch rows.
    pub batch: usize,
    /// Tokens per row.
    pub seq: usize,
    /// Attention heads.
    pub heads: usize,
    /// Values per head.
    pub head_dim: usize,
}

impl QkvShape {
    /// `heads * head_dim`.
    pub fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// Per-thread buffers of one head: scores `[seq, seq]` f32, probabilities `[seq, seq]` and transposed values
/// `[head_dim, seq]` in bf16, the context `[seq, head_dim]` in f32.
#[derive(Default)]
pub(super) struct Scratch {
    pub scores: Vec<f32>,
    pub probs: Vec<bf16>,
    values_t: Vec<bf16>,
    pub context: Vec<f32>,
    /// On AMX (`x86_amx_heads`): the queries padded to whole tiles, the keys and values packed as the
    /// tiles' second operand.
    pub q_pad: Vec<bf16>,
    pub k_panels: Vec<u32>,
    pub v_panels: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// `out[b, i, h * head_dim + d] = bf16(sum_j p[i, j] * v[j, d])` for every batch row `b` and head `h`, with
/// `p[i, ·] = bf16(softmax(bf16(bf16(q_i · k_j) * scale)))` computed in f32: the rounding steps of HF's eager
/// attention in bf16 (`softmax(q kᵀ * scale) v`, each product and the scaling rounded to bf16, the softmax
/// computed in f32 and rounded once; the scale is an f32, as torch multiplies a bf16 tensor by a Python float).
/// The products sum exact bf16 products in f32 (on `vdpbf16ps` where [`KernelPath::bf16_dot`] holds), in a
/// different order than a plain loop, so the result is within f32 accumulation error of the plain formula
/// before each rounding.
///
/// `qkv` is the fused projection (see [`QkvShape`]) and `out` is `[batch, seq, heads * head_dim]`. Heads run in
/// parallel.
///
/// # Panics
/// When a slice's length does not match `shape`.
pub fn attention_qkv_bf16(
    path: KernelPath,
    qkv: &[bf16],
    shape: QkvShape,
    scale: f32,
    out: &mut [bf16],
) {
    let QkvShape {
        batch, seq, heads, ..
    } = shape;
    let hidden = shape.hidden();
    assert_eq!(
        qkv.len(),
        batch * seq * 3 * hidden,
        "qkv is not [batch, seq, 3 * hidden]"
    );
    assert_eq!(
        out.len(),
        batch * seq * hidden,
        "out is not [batch, seq, hidden]"
    );
    if out.is_empty() {
        return;
    }
    // The queries, keys and values of head `h` of token `t` start at `t * 3 * hidden + part * hidden + h *
    // head_dim`: three strided views of the projection.
    let strides = HeadStrides {
        batch: seq * 3 * hidden,
        head: shape.head_dim,
        token: 3 * hidden,
    };
    let part = |i: usize| Heads {
        data: &qkv[i * hidden..],
        strides,
    };
    let shape = HeadsShape {
        batch,
        heads,
        q_len: seq,
        kv_len: seq,
        head_dim: shape.head_dim,
    };
    all_heads(path, part(0), part(1), part(2), None, shape, scale, out);
}

/// Where the heads of one `[batch, heads, tokens, head_dim]` operand lie in its slice: element `(b, h, t, d)` at
/// `b * batch + h * head + t * token + d` (the values of a head's token are contiguous; a stride of 0 repeats a
/// broadcast axis).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadStrides {
    /// Between batch rows.
    pub batch: usize,
    /// Between heads.
    pub head: usize,
    /// Between tokens.
    pub token: usize,
}

impl HeadStrides {
    /// The strides of a row-major `[batch, heads, tokens, head_dim]` tensor.
    pub fn row_major(heads: usize, tokens: usize, head_dim: usize) -> Self {
        Self {
            batch: heads * tokens * head_dim,
            head: tokens * head_dim,
            token: head_dim,
        }
    }

    /// One past the last element of `[batch, heads, tokens, width]` at these strides (0 when empty).
    fn extent(&self, [batch, heads, tokens, width]: [usize; 4]) -> usize {
        if batch * heads * tokens * width == 0 {
            return 0;
        }
        (batch - 1) * self.batch + (heads - 1) * self.head + (tokens - 1) * self.token + width
    }

    pub(super) fn at(&self, b: usize, h: usize) -> usize {
        b * self.batch + h * self.head
    }
}

/// The sizes of a separate-heads attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadsShape {
    /// Batch rows.
    pub batch: usize,
    /// Attention heads.
    pub heads: usize,
    /// Query tokens (rows of the output).
    pub q_len: usize,
    /// Key and value tokens.
    pub kv_len: usize,
    /// Values per head.
    pub head_dim: usize,
}

/// A bf16 operand of [`attention_bf16`]: its values and where its heads lie.
#[derive(Clone, Copy, Debug)]
pub struct Heads<'a> {
    /// The values.
    pub data: &'a [bf16],
    /// Their layout.
    pub strides: HeadStrides,
}

/// `out[b, i, h * head_dim + d] = bf16(sum_j p[i, j] * v[j, d])` for every batch row `b` and head `h`, with
/// `p[i, ·] = bf16(softmax(bf16(bf16(q_i · k_j) + mask[i, j])))` computed in f32: the rounding steps of HF's
/// eager attention in bf16 (`softmax(q kᵀ + mask, dtype=float32).to(bf16) v`, the product and the sum with the
/// mask each rounded to bf16; no scaling, so the queries come scaled, as OPT's do, or not at all, as T5's).
/// `mask` is an additive bf16 mask `[batch, heads, q_len, kv_len]` (often broadcast: strides of 0), read one
/// row of `kv_len` values at a time (its token stride is the row stride). The products sum exact bf16
/// products in f32 (on `vdpbf16ps` where [`KernelPath::bf16_dot`] holds), in a different order than a plain
/// loop, so the result is within f32 accumulation error of the plain formula before each rounding.
///
/// `q` is `[batch, heads, q_len, head_dim]`, `k` and `v` are `[batch, heads, kv_len, head_dim]`, each at its
/// own strides, and `out` is `[batch, q_len, heads * head_dim]`. Heads run in parallel.
///
/// # Panics
/// When a slice is too short for its shape and strides, or `out`'s length is not `batch * q_len * heads *
/// head_dim`.
pub fn attention_bf16(
    path: KernelPath,
    q: Heads<'_>,
    k: Heads<'_>,
    v: Heads<'_>,
    mask: Option<Heads<'_>>,
    shape: HeadsShape,
    out: &mut [bf16],
) {
    let HeadsShape {
        batch,
        heads,
        q_len,
        kv_len,
        head_dim,
    } = shape;
    let need = |x: &Heads<'_>, tokens, width, what| {
        assert!(
            x.data.len() >= x.strides.extent([batch, heads, tokens, width]),
            "{what} does not hold [{batch}, {heads}, {tokens}, {width}] at {:?}",
            x.strides
        );
    };
    need(&q, q_len, head_dim, "the query");
    need(&k, kv_len, head_dim, "the key");
    need(&v, kv_len, head_dim, "the value");
    if let Some(mask) = &mask {
        need(mask, q_len, kv_len, "the mask");
    }
    assert_eq!(
        out.len(),
        batch * q_len * heads * head_dim,
        "out is not [batch, q_len, heads * head_dim]"
    );
    if out.is_empty() {
        return;
    }
    if kv_len == 0 || head_dim == 0 {
        // No keys: the softmax of an empty row has nothing to weigh, as torch gives for an empty key axis.
        out.fill(bf16::ZERO);
        return;
    }
    all_heads(path, q, k, v, mask, shape, 1.0, out);
}

/// Every head of every batch row, a task each, the scores scaled by `scale` (rounded again) before the mask:
/// [`attention_bf16`] (scale 1) and [`attention_qkv_bf16`] (no mask), whose operands are checked.
#[allow(clippy::too_many_arguments)]
fn all_heads(
    path: KernelPath,
    q: Heads<'_>,
    k: Heads<'_>,
    v: Heads<'_>,
    mask: Option<Heads<'_>>,
    shape: HeadsShape,
    scale: f32,
    out: &mut [bf16],
) {
    let out_ptr = SendPtr(out.as_mut_ptr());
    super::par_blocks(shape.batch * shape.heads, |task| {
        let (b, h) = (task / shape.heads, task % shape.heads);
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            // SAFETY: this task writes only the columns `h * head_dim..(h + 1) * head_dim` of batch row `b`;
            // the callers checked the operands' extents.
            unsafe { one_head(path, q, k, v, mask, shape, scale, b, h, &mut s, out_ptr) };
        });
    });
}

/// One head of one batch row of [`all_heads`].
///
/// # Safety
/// `out` points to the `[batch, q_len, heads * head_dim]` output, of which the caller owns this head's columns
/// of row `b`; the operands hold their shapes (checked by the caller).
#[allow(clippy::too_many_arguments)]
unsafe fn one_head(
    path: KernelPath,
    q: Heads<'_>,
    k: Heads<'_>,
    v: Heads<'_>,
    mask: Option<Heads<'_>>,
    shape: HeadsShape,
    scale: f32,
    b: usize,
    h: usize,
    s: &mut Scratch,
    out: SendPtr<bf16>,
) {
    let HeadsShape {
        heads,
        q_len,
        kv_len,
        head_dim,
        ..
    } = shape;
    #[cfg(target_arch = "x86_64")]
    if q_len >= super::AMX_MIN_ROWS
        && path.checked() == KernelPath::Avx512
        && super::x86_amx::enabled()
    {
        // SAFETY: the caller's promise; `checked` confirmed AVX-512 and `enabled` AMX.
        return unsafe {
            super::x86_amx_heads::one_head(path, [q, k, v], mask, shape, scale, (b, h), s, out)
        };
    }
    let hidden = heads * head_dim;
    s.scores.resize(q_len * kv_len, 0.0);
    s.probs.resize(q_len * kv_len, bf16::ZERO);
    s.values_t.resize(head_dim * kv_len, bf16::ZERO);
    s.context.resize(q_len * head_dim, 0.0);
    products(
        path,
        &q.data[q.strides.at(b, h)..],
        q.strides.token,
        &k.data[k.strides.at(b, h)..],
        k.strides.token,
        q_len,
        kv_len,
        head_dim,
        &mut s.scores,
        kv_len,
    );
    for (i, (scores, probs)) in s
        .scores
        .chunks_exact_mut(kv_len)
        .zip(s.probs.chunks_exact_mut(kv_len))
        .enumerate()
    {
        let row = mask.map(|m| {
            let at = m.strides.at(b, h) + i * m.strides.token;
            &m.data[at..at + kv_len]
        });
        softmax_row(path, scores, scale, row);
        narrow_bf16(path, scores, probs);
    }
    let values = &v.data[v.strides.at(b, h)..];
    for j in 0..kv_len {
        let row = &values[j * v.strides.token..j * v.strides.token + head_dim];
        for (d, &x) in row.iter().enumerate() {
            s.values_t[d * kv_len + j] = x;
        }
    }
    products(
        path,
        &s.probs,
        kv_len,
        &s.values_t,
        kv_len,
        q_len,
        head_dim,
        kv_len,
        &mut s.context,
        head_dim,
    );
    for (i, ctx) in s.context.chunks_exact(head_dim).enumerate() {
        // SAFETY: row `b * q_len + i` of the output, this head's columns (the caller's promise).
        let dst = unsafe {
            std::slice::from_raw_parts_mut(
                out.get().add((b * q_len + i) * hidden + h * head_dim),
                head_dim,
            )
        };
        narrow_bf16(path, ctx, dst);
    }
}

/// The row's products rounded to bf16, scaled and rounded again, plus the mask's row (when given) and rounded
/// again, then their softmax in f32 (in place), with [`exp_neg`] for the exponentials; vectorised on the
/// AVX-512 and AVX2 paths (the same bits on every path but for the order of the sum).
pub(super) fn softmax_row(path: KernelPath, row: &mut [f32], scale: f32, mask: Option<&[bf16]>) {
    #[cfg(target_arch = "x86_64")]
    match path.checked() {
        // SAFETY: `checked` confirmed the CPU's features.
        KernelPath::Avx512 => return unsafe { softmax_avx512(row, scale, mask) },
        KernelPath::Avx2 => return unsafe { softmax_avx2(row, scale, mask) },
        KernelPath::Portable => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = path;
    softmax_body(row, scale, mask);
}

/// # Safety
/// The CPU has AVX-512 F/BW/VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn softmax_avx512(row: &mut [f32], scale: f32, mask: Option<&[bf16]>) {
    softmax_body(row, scale, mask);
}

/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2(row: &mut [f32], scale: f32, mask: Option<&[bf16]>) {
    softmax_body(row, scale, mask);
}

/// Lanes of the running maximum and sum, so that the loops vectorise.
const LANES: usize = 16;

#[inline(always)]
fn softmax_body(row: &mut [f32], scale: f32, mask: Option<&[bf16]>) {
    let mut max = [f32::NEG_INFINITY; LANES];
    match mask {
        None => {
            for chunk in row.chunks_mut(LANES) {
                for (x, m) in chunk.iter_mut().zip(&mut max) {
                    *x = round_bf16(round_bf16(*x) * scale);
                    *m = m.max(*x);
                }
            }
        }
        Some(mask) => {
            for (chunk, add) in row.chunks_mut(LANES).zip(mask.chunks(LANES)) {
                for ((x, m), add) in chunk.iter_mut().zip(&mut max).zip(add) {
                    let add = f32::from_bits(u32::from(add.to_bits()) << 16);
                    *x = round_bf16(round_bf16(round_bf16(*x) * scale) + add);
                    *m = m.max(*x);
                }
            }
        }
    }
    let max = max.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = [0f32; LANES];
    for chunk in row.chunks_mut(LANES) {
        for (x, s) in chunk.iter_mut().zip(&mut sum) {
            *x = exp_neg(*x - max);
            *s += *x;
        }
    }
    let sum: f32 = sum.iter().sum();
    for x in row.iter_mut() {
        *x /= sum;
    }
}

/// `v` rounded to the nearest bf16 (ties to even), as an f32; NaN stays NaN.
#[inline(always)]
fn round_bf16(v: f32) -> f32 {
    f32::from_bits(u32::from(bf16_bits(v)) << 16)
}

/// `e^x` for `x <= 0` (a softmax's shifted scores) within about 2 ulp: `x = n ln 2 + r` with `|r| <= ln 2 / 2`,
/// `e^r` by its Taylor polynomial of degree 7 (truncation below 6e-9), times `2^n`; 0 below -87.3 (where `e^x`
/// leaves f32's normal range); NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_neg(x: f32) -> f32 {
    const SHIFTER: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer (ties to even).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let t = x * std::f32::consts::LOG2_E + SHIFTER;
    let n = t - SHIFTER;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // `t`'s low bits hold `n` (two's complement); `n + 127` is a normal exponent for `x >= -87.3`.
    let e = (t.to_bits().wrapping_sub(SHIFTER.to_bits()) as i32).wrapping_add(127);
    let y = p * f32::from_bits((e.clamp(1, 254) as u32) << 23);
    if x < -87.3 { 0.0 } else { y }
}

/// `out[i * out_rs + j] = sum_l a[i * a_rs + l] * w[j * w_rs + l]` for `i < m`, `j < n`, `l < k`, on this
/// thread.
#[allow(clippy::too_many_arguments)]
fn products(
    path: KernelPath,
    a: &[bf16],
    a_rs: usize,
    w: &[bf16],
    w_rs: usize,
    m: usize,
    n: usize,
    k: usize,
    out: &mut [f32],
    out_rs: usize,
) {
    assert!(m > 0 && n > 0 && k > 0);
    assert!(a.len() >= (m - 1) * a_rs + k && w.len() >= (n - 1) * w_rs + k);
    assert!(out.len() >= (m - 1) * out_rs + n);
    #[cfg(target_arch = "x86_64")]
    if path.bf16_dot() {
        let op = super::x86_bf16::Operands {
            a: a.as_ptr(),
            a_rs,
            w: w.as_ptr(),
            w_rs,
            out: out.as_mut_ptr(),
            out_rs,
            out16: std::ptr::null_mut(),
            bias: std::ptr::null(),
            m,
            k,
            gelu: false,
        };
        // SAFETY: `bf16_dot` checked the CPU's features; the asserts above bound every row read and written.
        return unsafe { super::x86_bf16::product_packed(op, 0, n) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = path;
    for i in 0..m {
        let ar = &a[i * a_rs..i * a_rs + k];
        for j in 0..n {
            let wr = &w[j * w_rs..j * w_rs + k];
            out[i * out_rs + j] = ar
                .iter()
                .zip(wr)
                .map(|(x, y)| x.to_f32() * y.to_f32())
                .sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::exp_neg;

    #[test]
    fn exp_neg_is_within_two_ulp_of_the_exact_exponential() {
        let mut worst = 0f64;
        for i in 0..=2_000_000 {
            let x = -87.3f32 * i as f32 / 2_000_000.0;
            let exact = f64::from(x).exp();
            let ulps = (f64::from(exp_neg(x)) - exact).abs() / (exact * f64::from(f32::EPSILON));
            worst = worst.max(ulps);
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp_neg(0.0), 1.0);
        assert_eq!(exp_neg(-100.0), 0.0);
        assert_eq!(exp_neg(f32::NEG_INFINITY), 0.0);
        assert!(exp_neg(f32::NAN).is_nan());
    }
}
