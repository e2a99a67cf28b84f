//! int8 products: weights in Burn's block-quantized layout `[k, n]` with one scale per `[1, group]` block,
//! activations quantized per call, sums in integers.

use rayon::prelude::*;

use super::{KernelPath, SendPtr};

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
    let mut values = q8_values(k * n, k * (n / group));
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
                    *q = round_small(v / *s).clamp(-127.0, 127.0) as i8;
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
    assert_eq!(w.len(), k * n, "the weight is not [n, k]");
    assert!(
        group > 0 && n.is_multiple_of(group),
        "group {group} does not divide {n}"
    );
    let mut values = q8_values(k * n, k * (n / group));
    let mut scales = vec![0f32; k * (n / group)];
    quantize_q8_transposed_into(w, 0, n, k, group, &mut values, &mut scales);
    (values, scales)
}

/// [`quantize_q8_transposed`] of the rows `j0..j0 + rows` of an `[n, k]` weight (`w` holds just those rows,
/// `[rows, k]`), written into the output columns `j0..j0 + rows` of `values` (`[k, n]`) and their scales in
/// `scales` (`[k, n / group]`). The blocks of `group` outputs do not depend on each other, so quantizing a
/// weight a few rows at a time gives the bits of quantizing it whole, without the whole weight in f32.
///
/// # Panics
/// When `group` does not divide `j0` and `rows`, `w` is not `[rows, k]`, or the outputs are not `[k, n]` and
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
    const SLAB: usize = 16;
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
    assert_eq!(values.len(), k * n, "the values are not [k, n]");
    assert_eq!(
        scales.len(),
        k * groups,
        "the scales are not [k, n / group]"
    );
    if rows == 0 {
        return;
    }
    let (g0, gr) = (j0 / group, rows / group);
    values
        .par_chunks_mut(SLAB * n)
        .zip(scales.par_chunks_mut(SLAB * groups))
        .enumerate()
        .for_each(|(b, (q, s))| {
            let l0 = b * SLAB;
            let here = q.len() / n;
            let mut slab = vec![0f32; here * rows];
            for (j, src) in w.chunks_exact(k).enumerate() {
                for (dl, v) in src[l0..l0 + here].iter().enumerate() {
                    slab[dl * rows + j] = *v;
                }
            }
            let (sq, ss) = quantize_q8(&slab, here, rows, group);
            for dl in 0..here {
                q[dl * n + j0..dl * n + j0 + rows].copy_from_slice(&sq[dl * rows..(dl + 1) * rows]);
                s[dl * groups + g0..dl * groups + g0 + gr]
                    .copy_from_slice(&ss[dl * gr..(dl + 1) * gr]);
            }
        });
}

/// `len` zeroed int8 values with room after them for `scales` f32 scales: Burn's quantized tensor appends the
/// scales to the values' buffer, and with the room flex keeps the values where they are; without it, they end
/// up copied into another buffer (checked by a test in `linear.rs`).
pub(crate) fn q8_values(len: usize, scales: usize) -> Vec<i8> {
    let mut values = Vec::with_capacity(q8_capacity(len, scales));
    values.resize(len, 0);
    values
}

/// The bytes a buffer of `len` int8 values needs for Burn to append `scales` f32 scales in place (up to 3 bytes
/// of padding to align them).
pub(crate) fn q8_capacity(len: usize, scales: usize) -> usize {
    len + 3 + 4 * scales
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

// ---- the product: int8 weights times int8 activations, quantized per call ----

/// Inputs per activation scale: the activations of one row are quantized in blocks of this many consecutive
/// inputs (one scale per block and weight group). Each block's integer sums are exact in `i32` and in `f32`
/// (`|sum| <= 128 * 127 * 127 < 2^24`).
pub const Q8_ACT_BLOCK: usize = 128;
/// Inputs per task of the product: each task sums its blocks into its own partial output, and the partials are
/// added in order, so the result does not depend on the number of threads.
pub const Q8_K_SPLIT: usize = 2 * Q8_ACT_BLOCK;
/// Output columns the VNNI kernel handles together (four tiles of 64); partial outputs are padded to it.
const CHUNK_COLS: usize = 256;
/// Activation rows quantized and multiplied together: bounds the quantized activations' memory.
const ROW_BATCH: usize = 32;

/// One batch of activation rows quantized for one int8 weight (see [`linear_q8`](super::linear_q8)).
///
/// For row `i`, input `l` and weight group `g`: `a = x[i, l] * scale[l, g]` (f32), and per block `b` of
/// [`Q8_ACT_BLOCK`] inputs: `t[i, b, g]` and `p[i, l, g] = clamp(round_half_even(a * r), -127, 127)` with
/// [`act_scale`]'s `(t, r)` from the block's largest `|a|`.
#[derive(Default)]
pub(super) struct QuantizedActs {
    /// Quads of inputs: `k.div_ceil(4)`.
    pub kq: usize,
    /// Blocks of inputs: `k.div_ceil(Q8_ACT_BLOCK)`.
    pub nb: usize,
    /// Row stride of `p`, `t` and `sum`: the groups plus 3, so that four consecutive groups can be read from any.
    pub gp: usize,
    /// `[rows, kq, gp]`: the four `p` of inputs `4q..4q + 4` of group `g` in one little-endian `u32` (0 past `k`).
    pub p: Vec<u32>,
    /// `[rows, nb, gp]`: the activation scales.
    pub t: Vec<f32>,
    /// `[rows, nb, gp]`: the sum of the block's `p`.
    pub sum: Vec<i32>,
}

impl QuantizedActs {
    /// Sizes the buffers for `rows` rows of `k` inputs and `groups` groups. Every entry the product reads is
    /// written by `quantize_acts` first, so the buffers keep their old contents and are reused across calls (a
    /// fresh allocation of this size is fresh pages from the OS, zeroed on first touch: 15% of an int8 decoding
    /// step in a profile).
    fn resize(&mut self, rows: usize, k: usize, groups: usize) {
        let (kq, nb, gp) = (k.div_ceil(4), k.div_ceil(Q8_ACT_BLOCK), groups + 3);
        *self = Self {
            kq,
            nb,
            gp,
            p: std::mem::take(&mut self.p),
            t: std::mem::take(&mut self.t),
            sum: std::mem::take(&mut self.sum),
        };
        self.p.resize(rows * kq * gp, 0);
        self.t.resize(rows * nb * gp, 0.0);
        self.sum.resize(rows * nb * gp, 0);
    }
}

thread_local! {
    /// The calling thread's quantized activations and partial outputs, reused across products.
    static SCRATCH: std::cell::RefCell<(QuantizedActs, Vec<f32>)> =
        std::cell::RefCell::new((QuantizedActs::default(), Vec::new()));
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
    let (kq, nb, gp) = (acts.kq, acts.nb, acts.gp);
    let (pp, tp, sp) = (
        SendPtr::<f32>(acts.p.as_mut_ptr().cast()),
        SendPtr(acts.t.as_mut_ptr()),
        SendPtr::<f32>(acts.sum.as_mut_ptr().cast()),
    );
    let block = |b: usize| {
        let l0 = b * Q8_ACT_BLOCK;
        let l1 = (l0 + Q8_ACT_BLOCK).min(k);
        for i in 0..rows {
            let xi = &x[i * k..(i + 1) * k];
            // SAFETY: block `b` of row `i` alone writes quads `l0 / 4..l1.div_ceil(4)` of `p` and entry `b` of
            // `t` and `sum` (row `i`), all inside the buffers `QuantizedActs::new` sized for `rows`, `k`, groups.
            unsafe {
                let p = pp.get().cast::<u32>().add((i * kq + l0 / 4) * gp);
                let t = tp.get().add((i * nb + b) * gp);
                let s = sp.get().cast::<i32>().add((i * nb + b) * gp);
                #[cfg(target_arch = "x86_64")]
                if path == KernelPath::Avx512 && vnni {
                    super::x86_q8::quantize_block_avx512(xi, w.scales, groups, l0, l1, gp, p, t, s);
                    continue;
                }
                let _ = (path, vnni);
                quantize_block(xi, w.scales, groups, l0, l1, gp, p, t, s);
            }
        }
    };
    if rows * k * groups < 1 << 15 {
        (0..nb).for_each(block);
    } else {
        super::par_blocks(nb, block);
    }
}

/// The portable quantization of inputs `l0..l1` (one block) of one row.
///
/// # Safety
/// `p` is valid for `(l1 - l0).div_ceil(4) * gp` writes, `t` and `s` for `groups`; `scales` is `[k, groups]`.
#[allow(clippy::too_many_arguments)]
unsafe fn quantize_block(
    x: &[f32],
    scales: &[f32],
    groups: usize,
    l0: usize,
    l1: usize,
    gp: usize,
    p: *mut u32,
    t: *mut f32,
    s: *mut i32,
) {
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
        for (dq, q0) in (l0..l1).step_by(4).enumerate() {
            let mut bytes = [0u8; 4];
            for (dl, byte) in bytes.iter_mut().enumerate() {
                if q0 + dl < l1 {
                    let v = quantize_act(a(q0 + dl), r);
                    sum += i32::from(v);
                    *byte = v as u8;
                }
            }
            // SAFETY: as the function's contract.
            unsafe { *p.add(dq * gp + g) = u32::from_le_bytes(bytes) };
        }
        // SAFETY: as the function's contract.
        unsafe {
            *t.add(g) = tg;
            *s.add(g) = sum;
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
/// [`ROW_BATCH`], each quantized once; then each run of [`Q8_K_SPLIT`] inputs is a task (threaded) that sums its
/// blocks into its own partial output, reading whole rows of the weight, and the partials are added in order.
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
    let n_pad = n.next_multiple_of(CHUNK_COLS);
    let splits = k.div_ceil(Q8_K_SPLIT);
    SCRATCH.with(|scratch| {
        // A product started while this thread waits inside another (work stolen by rayon) gets its own buffers.
        let mut own = None;
        let mut held = scratch.try_borrow_mut().ok();
        let (acts, partials) = match held.as_deref_mut() {
            Some(s) => (&mut s.0, &mut s.1),
            None => {
                let s = own.insert((QuantizedActs::default(), Vec::new()));
                (&mut s.0, &mut s.1)
            }
        };
        for (r0, xb) in (0..m).step_by(ROW_BATCH).zip(x.chunks(ROW_BATCH * k)) {
            let rows = (m - r0).min(ROW_BATCH);
            acts.resize(rows, k, groups);
            quantize_acts(path, vnni, xb, rows, k, w, groups, acts);
            // Tasks: runs of inputs times parts of the columns, enough for the threads to share out evenly (a
            // helper thread wakes tens of microseconds late, and a product of 2560 x 2560 takes 0.3 ms).
            let parts = 32usize
                .div_ceil(splits.max(1))
                .min(n_pad / CHUNK_COLS)
                .max(1);
            let width = (n_pad / CHUNK_COLS).div_ceil(parts) * CHUNK_COLS;
            let parts = n_pad.div_ceil(width);
            let len = splits * parts * rows * width;
            if partials.len() < len {
                partials.resize(len, 0.0);
            }
            let partials = &mut partials[..len];
            let base = SendPtr(partials.as_mut_ptr());
            let acts = &*acts;
            let run = |task: usize| {
                let (c, part) = (task / parts, task % parts);
                // SAFETY: task `task` alone writes its `[rows, width]` partial. It zeroes it itself (in parallel,
                // in its own cache).
                let y = unsafe {
                    std::slice::from_raw_parts_mut(
                        base.get().add(task * rows * width),
                        rows * width,
                    )
                };
                y.fill(0.0);
                let blocks = c * Q8_K_SPLIT / Q8_ACT_BLOCK
                    ..((c + 1) * Q8_K_SPLIT).min(k).div_ceil(Q8_ACT_BLOCK);
                let cols = part * width..((part + 1) * width).min(n);
                split(path, vnni, w, k, n, blocks, cols, acts, rows, y);
            };
            if rows * k * n < 1 << 16 {
                (0..splits * parts).for_each(run);
            } else {
                super::par_blocks(splits * parts, run);
            }
            let ob = &mut out[r0 * n..(r0 + rows) * n];
            reduce(partials, splits, parts, rows, width, vnni, ob);
        }
    });
}

/// `out[i, j] = ((0 + P_0[i, j]) + P_1[i, j]) + ...` over the `splits` partials, each in `parts` parts
/// `[rows, width]` of consecutive columns; the VNNI partials hold each 64-column tile in the order its registers
/// do (see `x86_q8`).
fn reduce(
    partials: &[f32],
    splits: usize,
    parts: usize,
    rows: usize,
    width: usize,
    vnni: bool,
    out: &mut [f32],
) {
    let n = out.len() / rows.max(1);
    let mut acc = vec![0f32; width];
    for i in 0..rows {
        for part in 0..parts {
            let j0 = part * width;
            let cols = width.min(n - j0);
            acc.fill(0.0);
            for c in 0..splits {
                let at = ((c * parts + part) * rows + i) * width;
                for (a, v) in acc.iter_mut().zip(&partials[at..at + width]) {
                    *a += v;
                }
            }
            let o = &mut out[i * n + j0..i * n + j0 + cols];
            if vnni {
                for (j, o) in o.iter_mut().enumerate() {
                    let (tile, c) = (j / 64, j % 64);
                    *o = acc[tile * 64 + 16 * ((c % 16) / 4) + 4 * (c / 16) + c % 4];
                }
            } else {
                o.copy_from_slice(&acc[..cols]);
            }
        }
    }
}

/// The blocks `blocks` of the product, for the output columns `cols` (from a multiple of 256) of every row of
/// `acts`, summed into `y` (`[rows, width]` from column `cols.start`, zeroed).
#[allow(clippy::too_many_arguments)]
fn split(
    path: KernelPath,
    vnni: bool,
    w: &Q8Weight<'_>,
    k: usize,
    n: usize,
    blocks: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    acts: &QuantizedActs,
    rows: usize,
    y: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if vnni {
            // SAFETY: VNNI was detected; `y` is `[rows, width]` with `width >= cols.len()` a multiple of 256, and
            // `acts` was quantized for `w`.
            return unsafe { super::x86_q8::split_vnni(w, k, n, blocks, cols, acts, rows, y) };
        }
        if path >= KernelPath::Avx2 {
            // SAFETY: the path was checked against the CPU's features (AVX-512 implies AVX2 and FMA here).
            return unsafe { split_avx2(w, k, n, blocks, cols, acts, rows, y) };
        }
    }
    let _ = (path, vnni);
    split_portable(w, k, n, blocks, cols, acts, rows, y);
}

/// [`split_portable`] compiled for AVX2 and FMA (the compiler vectorises its integer loops).
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn split_avx2(
    w: &Q8Weight<'_>,
    k: usize,
    n: usize,
    blocks: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    acts: &QuantizedActs,
    rows: usize,
    y: &mut [f32],
) {
    split_portable(w, k, n, blocks, cols, acts, rows, y);
}

/// The reference: for each row and output column `j` (group `g = j / group`), `y = fma(S_b as f32, t[b, g], y)`
/// over the blocks `b` in order, where `S_b = sum_{l in b} q[l, j] * p[l, g]` in `i32`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn split_portable(
    w: &Q8Weight<'_>,
    k: usize,
    n: usize,
    blocks: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    acts: &QuantizedActs,
    rows: usize,
    y: &mut [f32],
) {
    let (kq, nb, gp) = (acts.kq, acts.nb, acts.gp);
    let width = y.len() / rows.max(1);
    let j0 = cols.start;
    let mut acc = vec![0i32; cols.len()];
    for i in 0..rows {
        let yi = &mut y[i * width..i * width + cols.len()];
        for b in blocks.clone() {
            acc.fill(0);
            let l0 = b * Q8_ACT_BLOCK;
            let l1 = (l0 + Q8_ACT_BLOCK).min(k);
            for l in l0..l1 {
                let q = &w.values[l * n + j0..l * n + cols.end];
                let prow = &acts.p[(i * kq + l / 4) * gp..];
                // Runs of 16 columns share a group (the group is a multiple of 16, as is `j0`).
                for (c, (acc, q)) in acc.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
                    let pv = i32::from(prow[(j0 + 16 * c) / w.group].to_le_bytes()[l % 4] as i8);
                    for (a, &q) in acc.iter_mut().zip(q) {
                        *a += i32::from(q) * pv;
                    }
                }
            }
            let tb = &acts.t[(i * nb + b) * gp..];
            for (c, (y, acc)) in yi
                .chunks_exact_mut(16)
                .zip(acc.chunks_exact(16))
                .enumerate()
            {
                let t = tb[(j0 + 16 * c) / w.group];
                for (y, &a) in y.iter_mut().zip(acc) {
                    *y = (a as f32).mul_add(t, *y);
                }
            }
        }
    }
}
