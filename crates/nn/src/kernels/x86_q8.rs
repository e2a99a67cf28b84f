//! The int8 product with AVX-512 VNNI (`vpdpbusd`): the same integers and the same f32 operations, in the same
//! order, as the portable reference in `q8.rs`, so the results are bit-identical.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes and sums four neighbouring products into one `i32`. The weight
//! is read output channel by output channel (its `[n, k]` values, 64 inputs per load) as the unsigned operand,
//! offset by 128 (`q ^ 0x80` is `q + 128` as a `u8`), and the activations of the channel's group are the
//! signed one, so `sum (q + 128) p - 128 sum p` is the exact sum of `q p`. For one activation row each
//! channel's sixteen `i32` lanes are summed across at the end of every block of inputs, sixteen channels at a
//! time; for several rows each block of sixteen channels is first transposed so that the lanes are channels.

use std::arch::x86_64::*;

use super::Q8Weight;
use super::q8::{ActsOut, Q8_ACT_BLOCK, QuantizedActs};
use super::x86::{PF_L2, transpose16_epi32};

/// The 16 x 16 transpose of bytes: `out[e]` byte `i` is `rows[i]` byte `e`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
fn transpose16(rows: &[__m128i; 16]) -> [__m128i; 16] {
    // Pairs of rows: 16-bit units of columns 0..8 (`a[2i]`) and 8..16 (`a[2i + 1]`).
    let mut a = [_mm_setzero_si128(); 16];
    for i in 0..8 {
        a[2 * i] = _mm_unpacklo_epi8(rows[2 * i], rows[2 * i + 1]);
        a[2 * i + 1] = _mm_unpackhi_epi8(rows[2 * i], rows[2 * i + 1]);
    }
    // Quads of rows `4h..4h + 4`: 32-bit units of columns `4q..4q + 4` in `b[4h + q]`.
    let mut b = [_mm_setzero_si128(); 16];
    for h in 0..4 {
        b[4 * h] = _mm_unpacklo_epi16(a[4 * h], a[4 * h + 2]);
        b[4 * h + 1] = _mm_unpackhi_epi16(a[4 * h], a[4 * h + 2]);
        b[4 * h + 2] = _mm_unpacklo_epi16(a[4 * h + 1], a[4 * h + 3]);
        b[4 * h + 3] = _mm_unpackhi_epi16(a[4 * h + 1], a[4 * h + 3]);
    }
    // Rows `8h..8h + 8`: 64-bit units of columns `2e..2e + 2` in `c[8h + e]`.
    let mut c = [_mm_setzero_si128(); 16];
    for h in 0..2 {
        for q in 0..4 {
            let (x, y) = (b[8 * h + q], b[8 * h + 4 + q]);
            c[8 * h + 2 * q] = _mm_unpacklo_epi32(x, y);
            c[8 * h + 2 * q + 1] = _mm_unpackhi_epi32(x, y);
        }
    }
    let mut out = [_mm_setzero_si128(); 16];
    for e in 0..8 {
        out[2 * e] = _mm_unpacklo_epi64(c[e], c[8 + e]);
        out[2 * e + 1] = _mm_unpackhi_epi64(c[e], c[8 + e]);
    }
    out
}

/// Groups of 16 quantized together by [`quantize_block_avx512`]: bounds its stack arrays (16 KiB).
const CHUNKS: usize = 64;

/// The AVX-512 form of `q8::quantize_block`: inputs `l0..l1` of one row, sixteen groups to a vector. The block's
/// scales (`[l1 - l0, groups]`, contiguous) are read row after row: a first pass finds each group's largest
/// `|a|`, a second quantizes runs of sixteen inputs and transposes them from group order into input order.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL; `out` is as `q8::quantize_block` needs; `scales` is `[k, groups]` and `x` has
/// `k >= l1` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn quantize_block_avx512(
    x: &[f32],
    scales: &[f32],
    groups: usize,
    l0: usize,
    l1: usize,
    out: &ActsOut,
) {
    debug_assert!(x.len() >= l1 && scales.len() >= l1 * groups);
    let pad = if l1 == x.len() {
        x.len().next_multiple_of(64) - l1
    } else {
        0
    };
    let (xp, sp) = (x.as_ptr(), scales.as_ptr());
    let mut amax = [_mm512_setzero_ps(); CHUNKS];
    let mut rv = [_mm512_setzero_ps(); CHUNKS];
    let mut sum = [_mm512_setzero_si512(); CHUNKS];
    let mut bad: [__mmask16; CHUNKS] = [0; CHUNKS];
    unsafe {
        let mut c0 = 0;
        while c0 * 16 < groups {
            let chunks = (groups.div_ceil(16) - c0).min(CHUNKS);
            let mask = |c: usize| -> __mmask16 {
                let lanes = (groups - 16 * (c0 + c)).min(16);
                ((1u32 << lanes) - 1) as u16
            };
            // A macro, not a closure: closures do not inherit `target_feature`.
            macro_rules! a {
                ($xv:expr, $l:expr, $c:expr) => {
                    _mm512_mul_ps(
                        $xv,
                        _mm512_maskz_loadu_ps(mask($c), sp.add($l * groups + 16 * (c0 + $c))),
                    )
                };
            }
            for c in 0..chunks {
                amax[c] = _mm512_setzero_ps();
                bad[c] = 0;
                sum[c] = _mm512_setzero_si512();
            }
            // The scales come from memory (a decoding step reads 50 MB of them for OPT-2.7b, more than the
            // last-level cache): prefetch about 4 KiB ahead, the next rows of this block or the next block's.
            let ahead = (4096 / (4 * groups)).max(1) * groups;
            for l in l0..l1 {
                let xv = _mm512_set1_ps(*xp.add(l));
                for c in 0..chunks {
                    _mm_prefetch::<_MM_HINT_T0>(
                        sp.wrapping_add(l * groups + 16 * (c0 + c) + ahead).cast(),
                    );
                    let v = a!(xv, l, c);
                    bad[c] |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                    // `max(|v|, amax)` returns `amax` when `v` is NaN, as `f32::max` ignores NaN.
                    amax[c] = _mm512_max_ps(_mm512_abs_ps(v), amax[c]);
                }
            }
            // `q8::act_scale`, lane by lane.
            for c in 0..chunks {
                let m = amax[c];
                bad[c] |= _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(m, _mm512_set1_ps(f32::INFINITY));
                let t0 = _mm512_div_ps(m, _mm512_set1_ps(127.0));
                let r0 = _mm512_div_ps(_mm512_set1_ps(127.0), m);
                let normal =
                    _mm512_cmp_ps_mask::<_CMP_GE_OQ>(t0, _mm512_set1_ps(f32::MIN_POSITIVE));
                let one = _mm512_set1_ps(1.0);
                // `amax` now holds the scale `t`.
                amax[c] = _mm512_mask_mov_ps(
                    _mm512_mask_mov_ps(one, normal, t0),
                    bad[c],
                    _mm512_set1_ps(f32::NAN),
                );
                rv[c] = _mm512_maskz_mov_ps(!bad[c], _mm512_mask_mov_ps(one, normal, r0));
            }
            let mut lt = l0;
            while lt < l1 {
                let here = (l1 - lt).min(16);
                let keep = ((1u32 << here) - 1) as __mmask16;
                for c in 0..chunks {
                    let mut r = [_mm_setzero_si128(); 16];
                    for (dl, r) in r.iter_mut().enumerate().take(here) {
                        let xv = _mm512_set1_ps(*xp.add(lt + dl));
                        // `cvtps_epi32` rounds half to even (the default rounding mode), and no clamp is
                        // needed: `|a| <= amax`, so `|a| * r <= 127 * (1 + 2^-24)` rounds to at most 127 (a
                        // subnormal block's `r = 1` leaves `|a| < 2^-119`, which rounds to 0); a block with a
                        // NaN or an infinity is all zeros, as in the portable path.
                        let iv = _mm512_maskz_cvtps_epi32(
                            !bad[c],
                            _mm512_mul_ps(a!(xv, lt + dl, c), rv[c]),
                        );
                        sum[c] = _mm512_add_epi32(sum[c], iv);
                        *r = _mm512_cvtepi32_epi8(iv);
                    }
                    let cols = transpose16(&r);
                    let g0 = 16 * (c0 + c);
                    for (e, col) in cols.iter().enumerate().take((groups - g0).min(16)) {
                        _mm_mask_storeu_epi8(
                            out.p.add((g0 + e) * out.kp + (lt - l0)).cast(),
                            keep,
                            *col,
                        );
                    }
                }
                lt += 16;
            }
            for c in 0..chunks {
                let (mut ts, mut ss) = ([0f32; 16], [0i32; 16]);
                _mm512_storeu_ps(ts.as_mut_ptr(), amax[c]);
                _mm512_storeu_si512(ss.as_mut_ptr().cast(), sum[c]);
                let g0 = 16 * (c0 + c);
                for e in 0..(groups - g0).min(16) {
                    let g = g0 + e;
                    *out.t.add(g * out.nb) = ts[e];
                    *out.sum.add(g * out.nb) = ss[e];
                    // Only the last block pads (a call per group and block was 4% of an int8 decoding
                    // step's profile when it wrote nothing).
                    if pad > 0 {
                        std::ptr::write_bytes(out.p.add(g * out.kp + (l1 - l0)), 0, pad);
                    }
                }
            }
            c0 += chunks;
        }
    }
}

/// Sixteen vectors of sixteen `i32` to one: lane `r` is the sum of `v[r]`'s lanes (exact).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
fn hsum16(v: &[__m512i; 16]) -> __m512i {
    // Per 128-bit lane: pairs interleaved, then quads: `b[i]` holds the lane's sums of `v[4i..4i + 4]`.
    let mut a = [_mm512_setzero_si512(); 8];
    for i in 0..8 {
        let (x, y) = (v[2 * i], v[2 * i + 1]);
        a[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(x, y), _mm512_unpackhi_epi32(x, y));
    }
    let mut b = [_mm512_setzero_si512(); 4];
    for i in 0..4 {
        let (x, y) = (a[2 * i], a[2 * i + 1]);
        b[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(x, y), _mm512_unpackhi_epi64(x, y));
    }
    // Across the 128-bit lanes: `b[i]`'s four lanes summed land in lane `i`.
    let mut c = [_mm512_setzero_si512(); 2];
    for i in 0..2 {
        let (x, y) = (b[2 * i], b[2 * i + 1]);
        c[i] = _mm512_add_epi32(
            _mm512_shuffle_i32x4::<0b10_00_10_00>(x, y),
            _mm512_shuffle_i32x4::<0b11_01_11_01>(x, y),
        );
    }
    _mm512_add_epi32(
        _mm512_shuffle_i32x4::<0b10_00_10_00>(c[0], c[1]),
        _mm512_shuffle_i32x4::<0b11_01_11_01>(c[0], c[1]),
    )
}

/// How far ahead of its reads [`strip_rows`] prefetches each channel's inputs, in bytes.
const PREFETCH: usize = 1024;

thread_local! {
    /// [`strip_row`]'s per-thread partial sums, `[16 channels][blocks]` vectors, reused across calls.
    static PARTIALS: std::cell::RefCell<Vec<__m512i>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The valid bytes of 64 inputs from `l` of `k`.
#[inline(always)]
fn input_mask(k: usize, l: usize) -> __mmask64 {
    if k - l >= 64 {
        !0
    } else {
        (1u64 << (k - l)) - 1
    }
}

/// The output channels of `strips` (16 each) for every row of `acts`, written into `y` (`[rows, n]`):
/// [`strip_row`] for one activation row, [`strip_rows`] for several.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL and VNNI; as `q8::strips_of`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn strips_vnni(
    w: &Q8Weight<'_>,
    k: usize,
    n: usize,
    strips: std::ops::Range<usize>,
    acts: &QuantizedActs,
    rows: usize,
    y: *mut f32,
) {
    let groups = n / w.group;
    if rows == 1 {
        PARTIALS.with(|buf| {
            // A product started while this thread waits inside another (work stolen by rayon) gets its own.
            let mut own = Vec::new();
            let mut held = buf.try_borrow_mut().ok();
            let partials = held.as_deref_mut().unwrap_or(&mut own);
            if partials.len() < 16 * acts.nb {
                partials.resize(16 * acts.nb, _mm512_setzero_si512());
            }
            for s in strips {
                let j0 = 16 * s;
                // SAFETY: the function's contract; channels `j0..j0 + 16` exist; the buffer holds
                // `16 * nb` vectors.
                unsafe { strip_row(w, k, j0, j0 / w.group, acts, y, partials.as_mut_ptr()) };
            }
        });
        return;
    }
    for s in strips {
        let j0 = 16 * s;
        // SAFETY: the function's contract; channels `j0..j0 + 16` exist.
        unsafe { strip_rows(w, k, n, j0, j0 / w.group, groups, acts, rows, y) };
    }
}

/// Channels `j0..j0 + 16` (group `g`) for the one activation row. The strip's weight rows lie one after the
/// other in memory (`16 * k` bytes), and they are read in that order, channel after channel, each block's
/// sixteen `i32` lanes kept in `partials`; then each block's sixteen channels are summed across at once. One
/// sequential stream per thread, asked for [`PF_L2`] bytes ahead into L2: on AMD Zen 4, reading the sixteen
/// rows block by block (sixteen streams `k` bytes apart, as this did before) was 6-8% slower, and the stream
/// without the prefetches 15% slower (docs/performance.md).
///
/// # Safety
/// As [`strips_vnni`]; `partials` holds `16 * acts.nb` vectors.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn strip_row(
    w: &Q8Weight<'_>,
    k: usize,
    j0: usize,
    g: usize,
    acts: &QuantizedActs,
    y: *mut f32,
    partials: *mut __m512i,
) {
    let (nb, kp) = (acts.nb, acts.kp);
    let flip = _mm512_set1_epi8(-128);
    unsafe {
        let base = w.values.as_ptr().add(j0 * k);
        let p = acts.p.as_ptr().add(g * kp);
        let t = acts.t.as_ptr().add(g * nb);
        let sums = acts.sum.as_ptr().add(g * nb);
        for r in 0..16 {
            let row = base.add(r * k);
            let part = partials.add(r * nb);
            for b in 0..nb {
                let l = b * Q8_ACT_BLOCK;
                let acc = if k - l >= Q8_ACT_BLOCK {
                    // A whole block: 128 inputs, two lines.
                    _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(l + PF_L2).cast());
                    _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(l + PF_L2 + 64).cast());
                    let w0 = _mm512_xor_si512(_mm512_loadu_si512(row.add(l).cast()), flip);
                    let w1 = _mm512_xor_si512(_mm512_loadu_si512(row.add(l + 64).cast()), flip);
                    let (p0, p1) = (
                        _mm512_loadu_si512(p.add(l).cast()),
                        _mm512_loadu_si512(p.add(l + 64).cast()),
                    );
                    _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), w0, p0), w1, p1)
                } else {
                    let mut acc = _mm512_setzero_si512();
                    let mut l = l;
                    while l < k {
                        let wv = _mm512_maskz_loadu_epi8(input_mask(k, l), row.add(l).cast());
                        let pv = _mm512_loadu_si512(p.add(l).cast());
                        acc = _mm512_dpbusd_epi32(acc, _mm512_xor_si512(wv, flip), pv);
                        l += 64;
                    }
                    acc
                };
                part.add(b).write(acc);
            }
        }
        let mut yv = _mm512_setzero_ps();
        let mut acc = [_mm512_setzero_si512(); 16];
        for b in 0..nb {
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = partials.add(r * nb + b).read();
            }
            let s = _mm512_sub_epi32(hsum16(&acc), _mm512_set1_epi32(*sums.add(b) << 7));
            yv = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(*t.add(b)), yv);
        }
        _mm512_storeu_ps(y.add(j0), yv);
    }
}

/// Channels `j0..j0 + 16` (group `g`) for activation rows `0..rows` (two or more, at most 32): each block's
/// `16 x 128` weight bytes are transposed once into 32 vectors of four inputs of the 16 channels (the channels in
/// the lanes), which every row then multiplies by its broadcast activations, with no sums across lanes.
///
/// # Safety
/// As [`strips_vnni`], with `rows <= 32`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn strip_rows(
    w: &Q8Weight<'_>,
    k: usize,
    n: usize,
    j0: usize,
    g: usize,
    groups: usize,
    acts: &QuantizedActs,
    rows: usize,
    y: *mut f32,
) {
    debug_assert!((2..=32).contains(&rows));
    let (nb, kp) = (acts.nb, acts.kp);
    let flip = _mm512_set1_epi8(-128);
    let mut yacc = [_mm512_setzero_ps(); 32];
    let mut tile = [flip; 32];
    unsafe {
        let base = w.values.as_ptr().add(j0 * k);
        for b in 0..nb {
            let l0 = b * Q8_ACT_BLOCK;
            let halves = (k - l0).min(Q8_ACT_BLOCK).div_ceil(64);
            for h in 0..halves {
                let l = l0 + 64 * h;
                let mask = input_mask(k, l);
                let mut r = [_mm512_setzero_si512(); 16];
                for (c, r) in r.iter_mut().enumerate() {
                    let src = base.add(c * k + l);
                    _mm_prefetch::<_MM_HINT_T0>(src.wrapping_add(PREFETCH).cast());
                    *r = _mm512_maskz_loadu_epi8(mask, src.cast());
                }
                for (q, v) in transpose16_epi32(&r).into_iter().enumerate() {
                    tile[16 * h + q] = _mm512_xor_si512(v, flip);
                }
            }
            let quads = 16 * halves;
            for (i, yacc) in yacc.iter_mut().enumerate().take(rows) {
                let at = (i * groups + g) * nb + b;
                let p = acts
                    .p
                    .as_ptr()
                    .add((i * groups + g) * kp + l0)
                    .cast::<i32>();
                let mut a = [_mm512_setzero_si512(); 4];
                let mut q = 0;
                while q < quads {
                    for (d, a) in a.iter_mut().enumerate() {
                        let pv = _mm512_set1_epi32(p.add(q + d).read_unaligned());
                        *a = _mm512_dpbusd_epi32(*a, tile[q + d], pv);
                    }
                    q += 4;
                }
                let sum =
                    _mm512_add_epi32(_mm512_add_epi32(a[0], a[1]), _mm512_add_epi32(a[2], a[3]));
                let s = _mm512_sub_epi32(sum, _mm512_set1_epi32(*acts.sum.as_ptr().add(at) << 7));
                *yacc = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(s),
                    _mm512_set1_ps(*acts.t.as_ptr().add(at)),
                    *yacc,
                );
            }
        }
        for (i, yacc) in yacc.iter().enumerate().take(rows) {
            _mm512_storeu_ps(y.add(i * n + j0), *yacc);
        }
    }
}
