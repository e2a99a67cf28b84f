//! The two products of one attention head on Intel AMX: the scores `q kᵀ` and the context `p v`, each a
//! product of a few hundred rows by a few hundred columns over a short axis (the head's 64-128 values, or
//! the keys), where `vdpbf16ps` reaches a tenth of what the tiles do.
//!
//! Unlike the linear products (`x86_amx`), the rows are the tiles' first operand (16 rows × 32 bf16, row-major,
//! read in place from a padded copy) and the columns the second (pairs of inputs by 16 columns: the keys as
//! `x86_bf16::pack` lays out rows, the values interleaved token pair by token pair), so that a tile of sums is
//! 16 rows × 16 columns of the row-major result, stored as is. Every axis is padded with zeros to whole
//! tiles: zero inputs add exact zeros, and the padded rows and columns of the results are not read.

use std::arch::asm;
use std::arch::x86_64::*;

use half::bf16;

use super::SendPtr;
use super::attention::{Heads, HeadsShape, Scratch};
use super::x86_amx::{CONFIG, WeightTiles, tiles};
use super::x86_bf16::PANEL;

/// Rows and columns of results per call of `tiles`: two tiles each way.
pub(super) const SPAN: usize = 32;

/// `c[i][j] = sum_l a[i][l] * b(l, j)` for `i < rows`, `j < cols` (both multiples of [`SPAN`]) over `depth`
/// inputs (a multiple of 32): `a` row-major with row stride `a_rs` values, `b` as `cols / 16` panels of
/// `depth / 2` pairs (panel `p`, pair `s`, column `c` at `(p * depth / 2 + s) * 16 + c`), `c` row-major
/// with row stride `c_rs` values. The sums add exact bf16 products in f32, 32 inputs per tile instruction.
///
/// # Safety
/// The process has AMX (`x86_amx::enabled`) and the CPU AVX-512 F/BW/VL; the operands hold what is said
/// above; `a`, `b` and `c` lie on 64-byte boundaries and `a_rs * 2`, `c_rs * 4` are multiples of 64.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn product(
    a: *const bf16,
    a_rs: usize,
    rows: usize,
    b: *const u32,
    depth: usize,
    cols: usize,
    c: *mut f32,
    c_rs: usize,
) {
    debug_assert!(
        rows.is_multiple_of(SPAN)
            && cols.is_multiple_of(SPAN)
            && depth.is_multiple_of(32)
            && depth > 0
    );
    let pairs = depth / 2;
    // SAFETY: a valid palette-1 configuration (the tile state was granted: `enabled`).
    unsafe { asm!("ldtilecfg [{0}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly)) };
    for i in (0..rows).step_by(SPAN) {
        let w0 = a.wrapping_add(i * a_rs).cast::<u8>();
        let stride = a_rs * 2;
        let w = WeightTiles {
            w0,
            w1: w0.wrapping_add(16 * stride),
            stride,
            step: 64,
        };
        for j in (0..cols).step_by(SPAN) {
            // SAFETY: rows `i..i + 32` of `a` hold `depth` inputs; panels `j / 16` and `j / 16 + 1` of `b`
            // hold `pairs` pairs; rows `i..i + 32`, columns `j..j + 32` of `c` are the caller's.
            unsafe {
                tiles(
                    w,
                    b.add(j / PANEL * pairs * PANEL).cast(),
                    pairs * PANEL * 4,
                    depth / 32,
                    c.add(i * c_rs + j),
                    c_rs * 4,
                    true,
                )
            };
        }
    }
    // SAFETY: gives the tile state back.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// Copies `rows` rows of `width` values (row stride `src_rs`) into `dst` (row stride `dst_rs >= width`),
/// zero from `width` to `dst_rs` and in the rows from `rows` to `dst_rows`.
///
/// # Safety
/// `src` holds the rows, `dst` holds `dst_rows * dst_rs` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn pad_rows(
    src: *const bf16,
    src_rs: usize,
    rows: usize,
    width: usize,
    dst: *mut bf16,
    dst_rs: usize,
    dst_rows: usize,
) {
    for r in 0..dst_rows {
        let mut l = 0;
        while l < dst_rs {
            let live = if r < rows {
                width.saturating_sub(l).min(32)
            } else {
                0
            };
            let mask = ((1u64 << live) - 1) as __mmask32;
            let keep = ((1u64 << (dst_rs - l).min(32)) - 1) as __mmask32;
            // SAFETY: the masked load reads inputs `l..width` of row `r < rows`; the store writes the row's
            // values `l..dst_rs`.
            unsafe {
                let v = _mm512_maskz_loadu_epi16(mask, src.add(r * src_rs + l).cast());
                _mm512_mask_storeu_epi16(dst.add(r * dst_rs + l).cast(), keep, v);
            }
            l += 32;
        }
    }
}

/// Lays out the values of one head (`tokens` tokens of `width` values, token stride `src_rs`) as the second
/// operand of [`product`] over the tokens: `cols.div_ceil(16)` panels of `depth / 2` pairs, pair `s` of panel
/// `p` holding tokens `2s` and `2s + 1` for values `16p..16p + 16`; zero past `tokens` and `width`.
///
/// # Safety
/// `src` holds the tokens; `dst` holds `width.next_multiple_of(32) * depth / 2` lanes; `depth >= tokens` is
/// even.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn pack_values(
    src: *const bf16,
    src_rs: usize,
    tokens: usize,
    width: usize,
    depth: usize,
    dst: *mut u32,
) {
    let pairs = depth / 2;
    for p in 0..width.next_multiple_of(SPAN) / PANEL {
        let live = width.saturating_sub(p * PANEL).min(PANEL);
        let mask = ((1u32 << live) - 1) as __mmask16;
        let load = |t: usize| -> __m512i {
            if t < tokens {
                // SAFETY: token `t < tokens` holds values `16p..16p + live`.
                unsafe {
                    _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(
                        mask,
                        src.add(t * src_rs + p * PANEL).cast(),
                    ))
                }
            } else {
                _mm512_setzero_si512()
            }
        };
        for s in 0..pairs {
            let v = _mm512_or_si512(load(2 * s), _mm512_slli_epi32::<16>(load(2 * s + 1)));
            // SAFETY: pair `s` of panel `p` lies in `dst`.
            unsafe { _mm512_storeu_si512(dst.add((p * pairs + s) * PANEL).cast(), v) };
        }
    }
}

/// A buffer of `len` values from `v` (grown as needed), its first on a 64-byte boundary.
fn aligned<T: Copy + Default>(v: &mut Vec<T>, len: usize) -> *mut T {
    let pad = 64 / size_of::<T>();
    if v.len() < len + pad {
        v.resize(len + pad, T::default());
    }
    let p = v.as_mut_ptr();
    p.wrapping_add(p.align_offset(64))
}

/// One head of [`super::attention`]'s `one_head` with its two products on AMX: the same rounding steps (the
/// scores rounded to bf16, scaled, masked, softmax in f32, probabilities rounded to bf16, the context
/// rounded to bf16), the sums in another order.
///
/// # Safety
/// As `one_head`, and the process has AMX (`x86_amx::enabled`) and the CPU AVX-512 F/BW/VL.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn one_head(
    path: super::KernelPath,
    [q, k, v]: [Heads<'_>; 3],
    mask: Option<Heads<'_>>,
    shape: HeadsShape,
    scale: f32,
    (b, h): (usize, usize),
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
    let rows = q_len.next_multiple_of(SPAN);
    let depth = head_dim.next_multiple_of(32);
    let keys = kv_len.next_multiple_of(SPAN);
    let width = head_dim.next_multiple_of(SPAN);
    let qa = aligned(&mut s.q_pad, rows * depth);
    let kp = aligned(&mut s.k_panels, keys * depth / 2);
    let sc = aligned(&mut s.scores, rows * keys);
    let pr = aligned(&mut s.probs, rows * keys);
    let vp = aligned(&mut s.v_panels, width * keys / 2);
    let cx = aligned(&mut s.context, rows * width);
    // SAFETY: the caller checked the operands' extents (every head's `q_len` / `kv_len` tokens of `head_dim`
    // values); the buffers hold what each step writes; `depth`, `keys` and `width` are multiples of 32.
    unsafe {
        pad_rows(
            q.data.as_ptr().add(q.strides.at(b, h)),
            q.strides.token,
            q_len,
            head_dim,
            qa,
            depth,
            rows,
        );
        super::x86_bf16::pack(
            k.data.as_ptr().add(k.strides.at(b, h)),
            k.strides.token,
            0,
            kv_len,
            keys / PANEL,
            0,
            head_dim,
            depth / 2,
            kp,
        );
        product(qa, depth, rows, kp, depth, keys, sc, keys);
        for i in 0..q_len {
            let scores = std::slice::from_raw_parts_mut(sc.add(i * keys), kv_len);
            let probs = std::slice::from_raw_parts_mut(pr.add(i * keys), keys);
            let row = mask.map(|m| {
                let at = m.strides.at(b, h) + i * m.strides.token;
                &m.data[at..at + kv_len]
            });
            super::attention::softmax_row(path, scores, scale, row);
            super::narrow_bf16(path, scores, &mut probs[..kv_len]);
            probs[kv_len..].fill(bf16::ZERO);
        }
        std::slice::from_raw_parts_mut(pr.add(q_len * keys), (rows - q_len) * keys)
            .fill(bf16::ZERO);
        pack_values(
            v.data.as_ptr().add(v.strides.at(b, h)),
            v.strides.token,
            kv_len,
            head_dim,
            keys,
            vp,
        );
        product(pr, keys, rows, vp, keys, width, cx, width);
        for i in 0..q_len {
            let ctx = std::slice::from_raw_parts(cx.add(i * width), head_dim);
            let dst = std::slice::from_raw_parts_mut(
                out.get()
                    .add((b * q_len + i) * heads * head_dim + h * head_dim),
                head_dim,
            );
            super::narrow_bf16(path, ctx, dst);
        }
    }
}
