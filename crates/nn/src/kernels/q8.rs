//! int8 products: weights in Burn's block-quantized layout with one scale per `[1, group]` block of the
//! `[k, n]` weight, their values held output by output (`[n, k]`), activations quantized per call, sums in
//! integers.

use rayon::prelude::*;

use super::{KernelPath, SendPtr};

/// An int8 weight of a `Linear` with `k` inputs and `n` outputs: Burn's block-quantized `[k, n]` tensor, with
/// one scale per `[1, group]` block (`group` consecutive outputs of one input row), whose values are held in
/// PyTorch's `[out, in]` order (a transposed view of the `[k, n]` tensor, as blip2 holds its float weights).
/// The weight is `values[j, l] * scales[l, j / group]`.
#[derive(Clone, Copy, Debug)]
pub struct Q8Weight<'a> {
    /// Quantized values in `[-127, 127]`, `[n, k]` row-major: output `j`'s inputs together.
    pub values: &'a [i8],
    /// Scales, `[k, n / group]` row-major (Burn's order of the blocks of the `[k, n]` tensor).
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
        assert_eq!(self.values.len(), k * n, "int8 values are not [n, k]");
        assert_eq!(
            self.scales.len(),
            k * (n / self.group),
            "int8 scales are not [k, n / group]"
        );
    }
}

/// Quantizes a `[k, n]` row-major weight (Burn's `Linear` layout) symmetrically to int8, one scale per `group`
/// consecutive outputs of an input row: `scale = max|w| / 127` (1 when that is zero or not a normal float),
/// `q = round_half_even(w / scale)`. Returns the values in [`Q8Weight`]'s `[n, k]` order and the
/// `[k, n / group]` scales. Threaded.
///
/// # Panics
/// When `w` is not `[k, n]` or `group` does not divide `n`.
pub fn quantize_q8(w: &[f32], k: usize, n: usize, group: usize) -> (Vec<i8>, Vec<f32>) {
    assert_eq!(w.len(), k * n, "the weight is not [k, n]");
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
    scales
        .par_chunks_mut(groups)
        .zip(w.par_chunks(n))
        .for_each(|(s, w)| {
            for (s, w) in s.iter_mut().zip(w.chunks(group)) {
                *s = block_scale(w.iter().fold(0.0f32, |a, v| a.max(v.abs())));
            }
        });
    // Output rows in slabs of 16, read from the `[k, n]` weight 16 columns at a time.
    const SLAB: usize = 16;
    values
        .par_chunks_mut(SLAB * k)
        .enumerate()
        .for_each(|(b, q)| {
            let j0 = b * SLAB;
            let rows = q.len() / k;
            for l in 0..k {
                let src = &w[l * n + j0..l * n + j0 + rows];
                for (dj, &v) in src.iter().enumerate() {
                    q[dj * k + l] = quantize_value(v, scales[l * groups + (j0 + dj) / group]);
                }
            }
        });
    (values, scales)
}

/// The scale of a block whose largest magnitude is `amax`: `amax / 127`, or 1 when that is zero or not normal.
#[inline]
fn block_scale(amax: f32) -> f32 {
    let scale = amax / 127.0;
    if scale.is_normal() { scale } else { 1.0 }
}

/// `clamp(round_half_even(v / scale), -127, 127)`.
#[inline]
fn quantize_value(v: f32, scale: f32) -> i8 {
    round_small(v / scale).clamp(-127.0, 127.0) as i8
}

/// [`quantize_q8`] of the `[k, n]` transpose of a row-major `[n, k]` weight (PyTorch's `Linear` layout, as a
/// checkpoint stores it): the values keep the checkpoint's order. Equal to `quantize_q8(&transpose(w), k, n,
/// group)`.
///
/// # Panics
/// When `w` is not `[n, k]` or `group` does not divide `n`.
pub fn quantize_q8_transposed(w: &[f32], n: usize, k: usize, group: usize) -> (Vec<i8>, Vec<f32>) {
    assert_eq!(w.len(), k * n, "the weight is not [n, k]");
    assert!(
        group > 0 && n.is_multiple_of(group),
        "group {group} does not divide {n}"
    );
    let mut values = vec![0i8; k * n];
    let mut scales = vec![0f32; k * (n / group)];
    if k > 0 {
        quantize_q8_transposed_into(w, 0, n, k, group, &mut values, &mut scales);
    }
    (values, scales)
}

/// [`quantize_q8_transposed`] of the rows `j0..j0 + rows` of an `[n, k]` weight (`w` holds just those rows,
/// `[rows, k]`), written into rows `j0..j0 + rows` of `values` (`[n, k]`) and their scales in `scales`
/// (`[k, n / group]`). The blocks of `group` outputs do not depend on each other, so quantizing a weight a few
/// rows at a time gives the bits of quantizing it whole, without the whole weight in f32.
///
/// # Panics
/// When `group` does not divide `j0` and `rows`, `w` is not `[rows, k]`, or the outputs are not `[n, k]` and
/// `[k, n / group]` with `j0 + rows <= n`.
pub fn quantize_q8_transposed_into(
    w: &[f32],
    j0: usize,
    n: usize,
    k: usize,
    group: usize,
    values: &mut [i8],
    scales: &mut [f32],
) {
    assert!(
        group > 0 && k > 0,
        "group {group} and k {k} must be positive"
    );
    let rows = w.len() / k;
    assert_eq!(w.len(), rows * k, "the rows are not [rows, k]");
    assert!(
        j0.is_multiple_of(group) && rows.is_multiple_of(group) && n.is_multiple_of(group),
        "group {group} does not divide {j0}, {rows} and {n}"
    );
    assert!(j0 + rows <= n, "rows {j0}..{} past {n}", j0 + rows);
    let groups = n / group;
    assert_eq!(values.len(), k * n, "the values are not [n, k]");
    assert_eq!(
        scales.len(),
        k * groups,
        "the scales are not [k, n / group]"
    );
    if rows == 0 {
        return;
    }
    // One task per group of outputs: its scales (one per input), then its values.
    let block_scales: Vec<Vec<f32>> = values[j0 * k..(j0 + rows) * k]
        .par_chunks_mut(group * k)
        .zip(w.par_chunks(group * k))
        .map(|(q, w)| {
            let mut amax = vec![0f32; k];
            for row in w.chunks_exact(k) {
                for (a, v) in amax.iter_mut().zip(row) {
                    *a = a.max(v.abs());
                }
            }
            let s: Vec<f32> = amax.into_iter().map(block_scale).collect();
            for (q, w) in q.chunks_exact_mut(k).zip(w.chunks_exact(k)) {
                for ((q, &v), &s) in q.iter_mut().zip(w).zip(&s) {
                    *q = quantize_value(v, s);
                }
            }
            s
        })
        .collect();
    let g0 = j0 / group;
    for (dg, s) in block_scales.iter().enumerate() {
        for (l, &s) in s.iter().enumerate() {
            scales[l * groups + g0 + dg] = s;
        }
    }
}

/// `len` zeroed int8 values with room after them for `scales` f32 scales: Burn's quantized tensor appends the
/// scales to the values' buffer, and with the room it keeps the values where they are (backends other than
/// flex, whose tensors `crate::linear::q8_tensor` makes through `TensorData`).
pub(crate) fn q8_values(len: usize, scales: usize) -> Vec<i8> {
    let mut values = Vec::with_capacity(q8_capacity(len, scales));
    values.resize(len, 0);
    values
}

/// The bytes a buffer of `len` int8 values needs for Burn to append `scales` f32 scales in place (up to 3 bytes
/// of padding to align them).
fn q8_capacity(len: usize, scales: usize) -> usize {
    len + 3 + 4 * scales
}

/// The f32 weight `[k, n]` an int8 weight stands for.
pub fn dequantize_q8(w: &Q8Weight<'_>, k: usize, n: usize) -> Vec<f32> {
    w.check(k, n);
    let groups = n / w.group;
    let mut out = vec![0f32; k * n];
    out.par_chunks_mut(n.max(1))
        .enumerate()
        .for_each(|(l, row)| {
            for (j, o) in row.iter_mut().enumerate() {
                *o = f32::from(w.values[j * k + l]) * w.scales[l * groups + j / w.group];
            }
        });
    out
}

// ---- the product: int8 weights times int8 activations, quantized per call ----

/// Inputs per activation scale: the activations of one row are quantized in blocks of this many consecutive
/// inputs (one scale per block and weight group). Each block's integer sums are exact in `i32` and in `f32`
/// (`|sum| <= 128 * 127 * 127 < 2^24`).
pub const Q8_ACT_BLOCK: usize = 128;
/// Activation rows quantized and multiplied together: bounds the quantized activations' memory.
const ROW_BATCH: usize = 32;
/// Output channels per strip: the kernels' unit of work (16 outputs share a group, as 16 divides `group`).
const STRIP: usize = 16;

/// One batch of activation rows quantized for one int8 weight (see [`linear_q8`](super::linear_q8)).
///
/// For row `i`, input `l` and weight group `g`: `a = x[i, l] * scale[l, g]` (f32), and per block `b` of
/// [`Q8_ACT_BLOCK`] inputs: `t[i, g, b]` and `p[i, g, l] = clamp(round_half_even(a * r), -127, 127)` with
/// [`act_scale`]'s `(t, r)` from the block's largest `|a|`.
#[derive(Default)]
pub(super) struct QuantizedActs {
    /// Blocks of inputs: `k.div_ceil(Q8_ACT_BLOCK)`.
    pub nb: usize,
    /// Row length of `p`: `k` rounded up to 64 (zeros past `k`), so that 64 bytes can be read from any
    /// multiple of 64 below `k`.
    pub kp: usize,
    /// `[rows, groups, kp]`: the quantized activations of each group, input by input.
    pub p: Vec<i8>,
    /// `[rows, groups, nb]`: the activation scales.
    pub t: Vec<f32>,
    /// `[rows, groups, nb]`: the sum of the block's `p`.
    pub sum: Vec<i32>,
}

impl QuantizedActs {
    /// Sizes the buffers for `rows` rows of `k` inputs and `groups` groups. Every entry the product reads is
    /// written by `quantize_acts` first, so the buffers keep their old contents and are reused across calls (a
    /// fresh allocation of this size is fresh pages from the OS, zeroed on first touch: 15% of an int8 decoding
    /// step in a profile).
    fn resize(&mut self, rows: usize, k: usize, groups: usize) {
        self.nb = k.div_ceil(Q8_ACT_BLOCK);
        self.kp = k.next_multiple_of(64);
        self.p.resize(rows * groups * self.kp, 0);
        self.t.resize(rows * groups * self.nb, 0.0);
        self.sum.resize(rows * groups * self.nb, 0);
    }
}

thread_local! {
    /// The calling thread's quantized activations, reused across products.
    static SCRATCH: std::cell::RefCell<QuantizedActs> = std::cell::RefCell::new(QuantizedActs::default());
}

/// The activation scale `t` of a block and the factor `r` that quantizes it, from the block's largest `|a|`
/// (`bad` when one `a` is NaN): `(amax / 127, 127 / amax)`; `(1, 1)` when `amax / 127` is zero or subnormal; and
/// `(NaN, 0)` when an `a` is NaN or infinite, so that the outputs become NaN rather than silently finite.
#[inline]
pub(super) fn act_scale(amax: f32, bad: bool) -> (f32, f32) {
    if bad || !amax.is_finite() {
        return (f32::NAN, 0.0);
    }
    let t = amax / 127.0;
    if t.is_normal() {
        (t, 127.0 / amax)
    } else {
        (1.0, 1.0)
    }
}

/// `clamp(round_half_even(a * r), -127, 127)`, and 0 for NaN (only reached with `r = 0`).
#[inline]
fn quantize_act(a: f32, r: f32) -> i8 {
    round_small(a * r).clamp(-127.0, 127.0) as i8
}

/// `v.round_ties_even()` for `|v| <= 2^22` (NaN stays NaN, infinities stay infinite): adding and removing
/// `1.5 * 2^23` leaves the sum where f32's spacing is 1, so the float addition itself rounds half to even.
/// Unlike `round_ties_even`, which is a call to libm's `rintf` unless the crate is built for SSE4.1, it inlines
/// and vectorizes: quantizing the OPT bench's int8 model spent 15% of a profile in `rintf`. The values passed
/// are at most about 127 in magnitude, except in a weight group holding an infinity (scale 1): those may be off
/// by one past 2^22, and clamp to ±127 either way (tested against the plain formula).
#[inline]
fn round_small(v: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5 * 2^23
    (v + SHIFT) - SHIFT
}

/// Where block `b` of activation row `i` goes: `p` from input `l0` of group 0 (groups `kp` apart), `t` and `sum`
/// at block `b` of group 0 (groups `nb` apart).
pub(super) struct ActsOut {
    pub p: *mut i8,
    pub t: *mut f32,
    pub sum: *mut i32,
    pub kp: usize,
    pub nb: usize,
}

/// Quantizes activation rows `x: [rows, k]` for `w` into `acts` (see [`QuantizedActs`]), threaded over blocks.
#[allow(clippy::too_many_arguments)]
fn quantize_acts(
    path: KernelPath,
    vnni: bool,
    x: &[f32],
    rows: usize,
    k: usize,
    w: &Q8Weight<'_>,
    groups: usize,
    acts: &mut QuantizedActs,
) {
    let (nb, kp) = (acts.nb, acts.kp);
    let (pp, tp, sp) = (
        SendPtr(acts.p.as_mut_ptr()),
        SendPtr(acts.t.as_mut_ptr()),
        SendPtr(acts.sum.as_mut_ptr()),
    );
    let block = |b: usize| {
        let l0 = b * Q8_ACT_BLOCK;
        let l1 = (l0 + Q8_ACT_BLOCK).min(k);
        for i in 0..rows {
            let xi = &x[i * k..(i + 1) * k];
            // SAFETY: block `b` of row `i` alone writes inputs `l0..l1` of every group's `p` (and, for the last
            // block, the zeros up to `kp`) and entry `b` of every group's `t` and `sum` in row `i`, all inside
            // the buffers `QuantizedActs::resize` sized for `rows`, `k` and `groups`.
            unsafe {
                let out = ActsOut {
                    p: pp.get().add(i * groups * kp + l0),
                    t: tp.get().add(i * groups * nb + b),
                    sum: sp.get().add(i * groups * nb + b),
                    kp,
                    nb,
                };
                #[cfg(target_arch = "x86_64")]
                if path == KernelPath::Avx512 && vnni {
                    super::x86_q8::quantize_block_avx512(xi, w.scales, groups, l0, l1, &out);
                    continue;
                }
                let _ = (path, vnni);
                quantize_block(xi, w.scales, groups, l0, l1, &out);
            }
        }
    };
    if rows * k * groups < 1 << 15 {
        (0..nb).for_each(block);
    } else {
        super::par_blocks(nb, block);
    }
}

/// The portable quantization of inputs `l0..l1` (one block) of one row, and the zeros after `l1` up to `kp`
/// when `l1` is the last input (`x.len()`).
///
/// # Safety
/// `out` is valid for `groups` rows of `p` (inputs `l0..l1`, and up to `kp` for the last block) and `groups`
/// entries of `t` and `sum`; `scales` is `[k, groups]`.
unsafe fn quantize_block(
    x: &[f32],
    scales: &[f32],
    groups: usize,
    l0: usize,
    l1: usize,
    out: &ActsOut,
) {
    let pad = if l1 == x.len() {
        x.len().next_multiple_of(64) - l1
    } else {
        0
    };
    for g in 0..groups {
        let a = |l: usize| x[l] * scales[l * groups + g];
        let (mut amax, mut bad) = (0.0f32, false);
        for l in l0..l1 {
            let v = a(l);
            bad |= v.is_nan();
            amax = amax.max(v.abs());
        }
        let (tg, r) = act_scale(amax, bad);
        let mut sum = 0i32;
        // SAFETY: as the function's contract.
        unsafe {
            let p = out.p.add(g * out.kp);
            for l in l0..l1 {
                let v = quantize_act(a(l), r);
                sum += i32::from(v);
                *p.add(l - l0) = v;
            }
            if pad > 0 {
                std::ptr::write_bytes(p.add(l1 - l0), 0, pad);
            }
            *out.t.add(g * out.nb) = tg;
            *out.sum.add(g * out.nb) = sum;
        }
    }
}

/// Whether this CPU has AVX-512 VNNI (`vpdpbusd`), read once.
fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *VNNI.get_or_init(|| std::arch::is_x86_feature_detected!("avx512vnni"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `out = x Wq` for `x: [m, k]` (see [`linear_q8`](super::linear_q8) for the scheme): rows in batches of
/// [`ROW_BATCH`], each quantized once; then the output channels in strips of 16, a task per run of strips
/// (threaded), each reading its channels' rows of the weight once for every activation row of the batch.
pub(super) fn product(
    path: KernelPath,
    x: &[f32],
    m: usize,
    k: usize,
    w: &Q8Weight<'_>,
    n: usize,
    out: &mut [f32],
) {
    let vnni = path == KernelPath::Avx512 && has_vnni();
    let groups = n / w.group;
    let strips = n / STRIP;
    // At most 64 tasks: enough for the threads to share out evenly (a helper thread wakes tens of microseconds
    // late, and a product of 2560 x 2560 takes a fifth of a millisecond).
    let per_task = strips.div_ceil(64).max(1);
    let tasks = strips.div_ceil(per_task);
    SCRATCH.with(|scratch| {
        // A product started while this thread waits inside another (work stolen by rayon) gets its own buffers.
        let mut own = None;
        let mut held = scratch.try_borrow_mut().ok();
        let acts = match held.as_deref_mut() {
            Some(s) => s,
            None => own.insert(QuantizedActs::default()),
        };
        for (r0, xb) in (0..m).step_by(ROW_BATCH).zip(x.chunks(ROW_BATCH * k)) {
            let rows = (m - r0).min(ROW_BATCH);
            acts.resize(rows, k, groups);
            quantize_acts(path, vnni, xb, rows, k, w, groups, acts);
            let ob = SendPtr(out[r0 * n..(r0 + rows) * n].as_mut_ptr());
            let acts = &*acts;
            let run = |task: usize| {
                let s0 = task * per_task;
                let s1 = (s0 + per_task).min(strips);
                // SAFETY: task `task` alone writes columns `16 * s0..16 * s1` of the batch's `rows` output rows.
                unsafe { strips_of(path, vnni, w, k, n, s0..s1, acts, rows, ob.get()) };
            };
            if rows * k * n < 1 << 16 {
                (0..tasks).for_each(run);
            } else {
                super::par_blocks(tasks, run);
            }
        }
    });
}

/// The output channels of strips `strips` (16 each) for every row of `acts`, written into `y` (`[rows, n]`).
///
/// # Safety
/// `y` is valid for `[rows, n]` writes and no one else touches these columns; `acts` was quantized for `w`.
#[allow(clippy::too_many_arguments)]
unsafe fn strips_of(
    path: KernelPath,
    vnni: bool,
    w: &Q8Weight<'_>,
    k: usize,
    n: usize,
    strips: std::ops::Range<usize>,
    acts: &QuantizedActs,
    rows: usize,
    y: *mut f32,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if vnni {
            // SAFETY: VNNI was detected; the rest is the function's contract.
            return unsafe { super::x86_q8::strips_vnni(w, k, n, strips, acts, rows, y) };
        }
        if path >= KernelPath::Avx2 {
            // SAFETY: the path was checked against the CPU's features (AVX-512 implies AVX2 and FMA here).
            return unsafe { strips_avx2(w, k, n, strips, acts, rows, y) };
        }
    }
    let _ = (path, vnni);
    // SAFETY: the function's contract.
    unsafe { strips_portable(w, k, n, strips, acts, rows, y) };
}

/// [`strips_portable`] compiled for AVX2 and FMA (the compiler vectorises its integer loops).
///
/// # Safety
/// The CPU has AVX2 and FMA; as [`strips_portable`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn strips_avx2(
    w: &Q8Weight<'_>,
    k: usize,
    n: usize,
    strips: std::ops::Range<usize>,
    acts: &QuantizedActs,
    rows: usize,
    y: *mut f32,
) {
    // SAFETY: the function's contract.
    unsafe { strips_portable(w, k, n, strips, acts, rows, y) };
}

/// The reference: for each row `i` and output channel `j` (group `g = j / group`),
/// `y = fma(S_b as f32, t[i, g, b], y)` over the blocks `b` in order from 0, where
/// `S_b = sum_{l in b} q[j, l] * p[i, g, l]` in `i32`.
///
/// # Safety
/// As [`strips_of`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn strips_portable(
    w: &Q8Weight<'_>,
    k: usize,
    n: usize,
    strips: std::ops::Range<usize>,
    acts: &QuantizedActs,
    rows: usize,
    y: *mut f32,
) {
    let (nb, kp) = (acts.nb, acts.kp);
    let groups = n / w.group;
    for j in strips.start * STRIP..strips.end * STRIP {
        let g = j / w.group;
        let q = &w.values[j * k..(j + 1) * k];
        for i in 0..rows {
            let p = &acts.p[(i * groups + g) * kp..][..k];
            let t = &acts.t[(i * groups + g) * nb..][..nb];
            let mut acc = 0f32;
            for (b, (q, p)) in q
                .chunks(Q8_ACT_BLOCK)
                .zip(p.chunks(Q8_ACT_BLOCK))
                .enumerate()
            {
                let sum: i32 = q
                    .iter()
                    .zip(p)
                    .map(|(&q, &p)| i32::from(q) * i32::from(p))
                    .sum();
                acc = (sum as f32).mul_add(t[b], acc);
            }
            // SAFETY: `(i, j)` is inside `[rows, n]`, one of this call's columns.
            unsafe { *y.add(i * n + j) = acc };
        }
    }
}
