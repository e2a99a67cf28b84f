//! The int8 product with AVX-512 VNNI (`vpdpbusd`): the same integers and the same f32 operations, in the same
//! order, as the portable reference in `q8.rs`, so the results are bit-identical.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes and sums four neighbouring products into one `i32`. The weight
//! (Burn's `[k, n]` int8 layout) is read four input rows at a time and interleaved in registers so that each
//! `i32` lane holds the four inputs of one output column; its values are offset by 128 (`q ^ 0x80` is `q + 128`
//! as a `u8`) and the activations are the signed operand, so `sum (q + 128) p - 128 sum p` is the exact sum of
//! `q p`. After the interleave, lane `4L + d` of vector `c` (`c, d < 4`, `L` the 128-bit lane) is column
//! `16L + 4c + d` of a tile of 64 columns.

use std::arch::x86_64::*;

use super::Q8Weight;
use super::q8::{Q8_ACT_BLOCK, QuantizedActs};

/// Columns per tile: one 64-byte load per input row.
const TILE: usize = 64;
/// Output columns per pass over a block, as `q8::CHUNK_COLS`.
const CHUNK: usize = 4 * TILE;

/// The AVX-512 form of `q8::quantize_block`: inputs `l0..l1` of one row, sixteen groups at a time.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL; `p` is valid for `(l1 - l0).div_ceil(4) * gp` writes, `t` and `s` for `groups`;
/// `scales` is `[k, groups]` and `x` has `k >= l1` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn quantize_block_avx512(
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
    debug_assert!(x.len() >= l1 && scales.len() >= l1 * groups);
    let (xp, sp) = (x.as_ptr(), scales.as_ptr());
    unsafe {
        let mut g0 = 0;
        while g0 < groups {
            let lanes = (groups - g0).min(16);
            let mask: __mmask16 = ((1u32 << lanes) - 1) as u16;
            // A macro, not a closure: closures do not inherit `target_feature`.
            macro_rules! a {
                ($l:expr) => {
                    _mm512_mul_ps(
                        _mm512_set1_ps(*xp.add($l)),
                        _mm512_maskz_loadu_ps(mask, sp.add($l * groups + g0)),
                    )
                };
            }
            let mut amax = _mm512_setzero_ps();
            let mut nan: __mmask16 = 0;
            for l in l0..l1 {
                let v = a!(l);
                nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                // `max(|v|, amax)` returns `amax` when `v` is NaN, as `f32::max` ignores NaN.
                amax = _mm512_max_ps(_mm512_abs_ps(v), amax);
            }
            // `q8::act_scale`, lane by lane.
            let bad = nan | _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(amax, _mm512_set1_ps(f32::INFINITY));
            let t0 = _mm512_div_ps(amax, _mm512_set1_ps(127.0));
            let r0 = _mm512_div_ps(_mm512_set1_ps(127.0), amax);
            let normal = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(t0, _mm512_set1_ps(f32::MIN_POSITIVE));
            let one = _mm512_set1_ps(1.0);
            let tv = _mm512_mask_mov_ps(
                _mm512_mask_mov_ps(one, normal, t0),
                bad,
                _mm512_set1_ps(f32::NAN),
            );
            let rv = _mm512_maskz_mov_ps(!bad, _mm512_mask_mov_ps(one, normal, r0));
            let (lo, hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
            let mut sum = _mm512_setzero_si512();
            let mut dq = 0;
            let mut q0 = l0;
            while q0 < l1 {
                let mut b = [_mm_setzero_si128(); 4];
                for (dl, b) in b.iter_mut().enumerate() {
                    if q0 + dl < l1 {
                        let v = _mm512_roundscale_ps::<
                            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
                        >(_mm512_mul_ps(a!(q0 + dl), rv));
                        let v = _mm512_maskz_mov_ps(!bad, _mm512_min_ps(_mm512_max_ps(v, lo), hi));
                        let iv = _mm512_cvtps_epi32(v);
                        sum = _mm512_add_epi32(sum, iv);
                        *b = _mm512_cvtepi32_epi8(iv);
                    }
                }
                let (u01lo, u01hi) = (_mm_unpacklo_epi8(b[0], b[1]), _mm_unpackhi_epi8(b[0], b[1]));
                let (u23lo, u23hi) = (_mm_unpacklo_epi8(b[2], b[3]), _mm_unpackhi_epi8(b[2], b[3]));
                let o = [
                    _mm_unpacklo_epi16(u01lo, u23lo),
                    _mm_unpackhi_epi16(u01lo, u23lo),
                    _mm_unpacklo_epi16(u01hi, u23hi),
                    _mm_unpackhi_epi16(u01hi, u23hi),
                ];
                let dst = p.add(dq * gp + g0);
                for (e, o) in o.into_iter().enumerate() {
                    let m4 = ((mask >> (4 * e)) & 0xf) as __mmask8;
                    _mm_mask_storeu_epi32(dst.add(4 * e).cast(), m4, o);
                }
                dq += 1;
                q0 += 4;
            }
            _mm512_mask_storeu_ps(t.add(g0), mask, tv);
            _mm512_mask_storeu_epi32(s.add(g0).cast(), mask, sum);
            g0 += 16;
        }
    }
}

/// One 64-column tile's groups: per 128-bit lane `L`, the group of columns `16L..16L + 16`.
#[derive(Clone, Copy)]
struct TileGroups {
    /// The first lane's group.
    g0: usize,
    /// Whether every lane has group `g0`.
    uniform: bool,
    /// `g_L - g0` in dwords `4L..4L + 4`.
    idx: __m512i,
    /// Valid bytes of a 64-byte weight row.
    mask: __mmask64,
}

/// The groups of the four tiles of the 256 columns from `j0` (of which `cols` exist).
fn tile_groups(w: &Q8Weight<'_>, j0: usize, cols: usize) -> [TileGroups; 4] {
    let tiles = cols.div_ceil(TILE);
    // SAFETY: AVX-512 F was detected by the caller of `split_vnni`, the only user.
    let zero = unsafe { _mm512_setzero_si512() };
    let mut tg = [TileGroups {
        g0: 0,
        uniform: true,
        idx: zero,
        mask: 0,
    }; 4];
    for (s, tg) in tg.iter_mut().enumerate().take(tiles) {
        let c0 = s * TILE;
        let valid = (cols - c0).min(TILE);
        let g = |lane: usize| (j0 + c0 + 16 * lane.min(valid / 16 - 1)) / w.group;
        let g0 = g(0);
        let mut idx = [0i32; 16];
        for (e, v) in idx.iter_mut().enumerate() {
            *v = (g(e / 4) - g0) as i32;
        }
        *tg = TileGroups {
            g0,
            uniform: g(3) == g0,
            // SAFETY: reading 16 i32 from a 16-element array (AVX-512 F, as above).
            idx: unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) },
            mask: if valid == TILE {
                !0
            } else {
                (1u64 << valid) - 1
            },
        };
    }
    // Tiles past the columns read nothing (mask 0) and use the first tile's groups; their sums are never read.
    for s in tiles..4 {
        tg[s] = TileGroups { mask: 0, ..tg[0] };
    }
    tg
}

/// The blocks `blocks` of the product for the columns `cols` of every row of `acts`, summed into `y` (`[rows,
/// width]` from column `cols.start`, zeroed; each 64-column tile in register order): block by block, 256
/// columns at a time, up to four rows at a time, prefetching the lines of the next pass.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL and VNNI; `cols.start` is a multiple of 256 and `y` is `[rows, width]` with
/// `width` a multiple of 256 at least `cols.len()`; `acts` was quantized for `w`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn split_vnni(
    w: &Q8Weight<'_>,
    k: usize,
    n: usize,
    blocks: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    acts: &QuantizedActs,
    rows: usize,
    y: &mut [f32],
) {
    let width = y.len() / rows;
    debug_assert!(
        cols.start.is_multiple_of(CHUNK) && width.is_multiple_of(CHUNK) && width >= cols.len()
    );
    let groups: Vec<[TileGroups; 4]> = (cols.start..cols.end)
        .step_by(CHUNK)
        .map(|j0| tile_groups(w, j0, (cols.end - j0).min(CHUNK)))
        .collect();
    for b in blocks {
        let l0 = b * Q8_ACT_BLOCK;
        let l1 = (l0 + Q8_ACT_BLOCK).min(k);
        let quads = l0 / 4..l1.div_ceil(4);
        for (cc, tg) in groups.iter().enumerate() {
            let j0 = cols.start + cc * CHUNK;
            let tiles = (cols.end - j0).min(CHUNK).div_ceil(TILE);
            // The lines the next pass reads (into L2: one pass ahead is 32 KiB, most of L1): the same rows' next
            // 256 columns, or the next block's first ones.
            let next = if j0 + CHUNK < cols.end {
                (0, j0 + CHUNK)
            } else {
                (Q8_ACT_BLOCK, cols.start)
            };
            let at = Place {
                n,
                j0,
                y0: cc * CHUNK,
                width,
            };
            let mut i0 = 0;
            while i0 < rows {
                let r = (rows - i0).min(4);
                let q = || quads.clone();
                let pf = (i0 == 0).then_some(next);
                // SAFETY: the function's contract; rows `i0..i0 + r` exist. Sixteen accumulators per pass: one
                // row and four tiles, two rows and two tiles, or four (three) rows and one tile.
                unsafe {
                    match r {
                        1 => block::<1, 4>(w, k, at, tg, 0, acts, i0, b, q(), pf, y),
                        2 => {
                            for t0 in [0, 2] {
                                let t = [tg[t0], tg[t0 + 1]];
                                block::<2, 2>(w, k, at, &t, t0, acts, i0, b, q(), pf, y);
                            }
                        }
                        3 => {
                            for (t0, t) in tg.iter().enumerate().take(tiles) {
                                block::<3, 1>(w, k, at, &[*t], t0, acts, i0, b, q(), pf, y);
                            }
                        }
                        _ => {
                            for (t0, t) in tg.iter().enumerate().take(tiles) {
                                block::<4, 1>(w, k, at, &[*t], t0, acts, i0, b, q(), pf, y);
                            }
                        }
                    }
                }
                i0 += r;
            }
        }
    }
}

/// Where a pass of [`block`] reads and writes: the weight's row length `n`, the pass's first column `j0`, and
/// its first column `y0` in `y`, whose rows are `width` long.
#[derive(Clone, Copy)]
struct Place {
    n: usize,
    j0: usize,
    y0: usize,
    width: usize,
}

/// Block `b` (its input quads `quads`) for rows `i0..i0 + R` and the `T` tiles `tg` (tiles `t0..t0 + T` of the
/// chunk): the integer sums, then `y = fma(sum - 128 * psum, t, y)`.
///
/// # Safety
/// As [`chunk_vnni`], with rows `i0..i0 + R` in `acts`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn block<const R: usize, const T: usize>(
    w: &Q8Weight<'_>,
    k: usize,
    at: Place,
    tg: &[TileGroups; T],
    t0: usize,
    acts: &QuantizedActs,
    i0: usize,
    b: usize,
    quads: std::ops::Range<usize>,
    prefetch: Option<(usize, usize)>,
    y: &mut [f32],
) {
    let (kq, nb, gp) = (acts.kq, acts.nb, acts.gp);
    let Place { n, j0, y0, width } = at;
    let vp = w.values.as_ptr();
    let pp = acts.p.as_ptr();
    let flip = _mm512_set1_epi8(-128);
    let mut acc = [[[_mm512_setzero_si512(); 4]; T]; R];
    unsafe {
        for quad in quads {
            let l = 4 * quad;
            let rows_here = (k - l).min(4);
            if let Some((dl, col)) = prefetch {
                for d in 0..4 {
                    let ahead = vp.wrapping_add((l + d + dl) * n + col + t0 * TILE);
                    for s in 0..T {
                        _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(s * TILE).cast());
                    }
                }
            }
            for (s, tg) in tg.iter().enumerate() {
                let mut wv = [_mm512_setzero_si512(); 4];
                for (d, wv) in wv.iter_mut().enumerate() {
                    if d < rows_here {
                        *wv = _mm512_maskz_loadu_epi8(
                            tg.mask,
                            vp.wrapping_add((l + d) * n + j0 + (t0 + s) * TILE).cast(),
                        );
                    }
                    *wv = _mm512_xor_si512(*wv, flip);
                }
                let (u01lo, u01hi) = (
                    _mm512_unpacklo_epi8(wv[0], wv[1]),
                    _mm512_unpackhi_epi8(wv[0], wv[1]),
                );
                let (u23lo, u23hi) = (
                    _mm512_unpacklo_epi8(wv[2], wv[3]),
                    _mm512_unpackhi_epi8(wv[2], wv[3]),
                );
                let v = [
                    _mm512_unpacklo_epi16(u01lo, u23lo),
                    _mm512_unpackhi_epi16(u01lo, u23lo),
                    _mm512_unpacklo_epi16(u01hi, u23hi),
                    _mm512_unpackhi_epi16(u01hi, u23hi),
                ];
                for (ri, acc) in acc.iter_mut().enumerate() {
                    let src = pp.add(((i0 + ri) * kq + quad) * gp + tg.g0);
                    let pv = if tg.uniform {
                        _mm512_set1_epi32(*src as i32)
                    } else {
                        _mm512_permutexvar_epi32(
                            tg.idx,
                            _mm512_castsi128_si512(_mm_loadu_si128(src.cast())),
                        )
                    };
                    for (a, v) in acc[s].iter_mut().zip(v) {
                        *a = _mm512_dpbusd_epi32(*a, v, pv);
                    }
                }
            }
        }
        for (ri, acc) in acc.iter().enumerate() {
            let at = (i0 + ri) * nb + b;
            let yr = y.as_mut_ptr().add((i0 + ri) * width + y0);
            for (s, tg) in tg.iter().enumerate() {
                let (tsrc, ssrc) = (
                    acts.t.as_ptr().add(at * gp + tg.g0),
                    acts.sum.as_ptr().add(at * gp + tg.g0),
                );
                let (tv, sv) = if tg.uniform {
                    (_mm512_set1_ps(*tsrc), _mm512_set1_epi32(*ssrc))
                } else {
                    (
                        _mm512_permutexvar_ps(tg.idx, _mm512_castps128_ps512(_mm_loadu_ps(tsrc))),
                        _mm512_permutexvar_epi32(
                            tg.idx,
                            _mm512_castsi128_si512(_mm_loadu_si128(ssrc.cast())),
                        ),
                    )
                };
                let corr = _mm512_slli_epi32::<7>(sv);
                for (c, a) in acc[s].iter().enumerate() {
                    let dst = yr.add((t0 + s) * TILE + 16 * c);
                    let sumf = _mm512_cvtepi32_ps(_mm512_sub_epi32(*a, corr));
                    _mm512_storeu_ps(dst, _mm512_fmadd_ps(sumf, tv, _mm512_loadu_ps(dst)));
                }
            }
        }
    }
}
