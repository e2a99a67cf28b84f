//! AVX-512 and AVX2 versions of the kernels. Callers check the CPU's features first (`KernelPath::checked`).

use std::arch::x86_64::*;

use half::{bf16, f16};

// ---- loads: 16 (AVX-512) or 8 (AVX2) weights as f32 ----

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn ld16_f32(p: *const f32, mask: __mmask16) -> __m512 {
    unsafe { _mm512_maskz_loadu_ps(mask, p) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn ld16_bf16(p: *const bf16, mask: __mmask16) -> __m512 {
    unsafe {
        let h = _mm256_maskz_loadu_epi16(mask, p.cast());
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn ld16_f16(p: *const f16, mask: __mmask16) -> __m512 {
    unsafe { _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p.cast())) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn ld8_f32(p: *const f32) -> __m256 {
    unsafe { _mm256_loadu_ps(p) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn ld8_bf16(p: *const bf16) -> __m256 {
    unsafe {
        let h = _mm_loadu_si128(p.cast());
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn ld8_f16(p: *const f16) -> __m256 {
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum8(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// How far ahead (in elements) the streaming kernels prefetch the weight rows they read: 512 bf16 values
/// (1 KiB) ahead gave the decode products about 10% more read bandwidth on the Xeon of docs/performance.md.
const PF: usize = 512;

/// How far ahead (in bytes) the one-row kernels, which read each weight row whole, ask for it into L2
/// (`prefetcht1`, one line at a time): 4-8 KiB made the bf16 decode products 10-12% faster and the int8 ones
/// 15% on AMD Zen 4, where prefetching into L1 (`prefetcht0`) or 1-2 KiB ahead gained nothing.
pub(super) const PF_L2: usize = 8192;

// ---- dense dot-product kernels: out[i, r] = dot(x[i, :], w[r, :]) for r in r0..r1 ----

macro_rules! gemv_avx512 {
    ($name:ident, $t:ty, $load:ident) => {
        /// # Safety
        /// The CPU has AVX-512 F/BW/VL; `x` is `[m, k]`, `w` is `[n, k]` with `r1 <= n`, and `out` is valid for
        /// writes at `i * n + r` for `i < m`, `r0 <= r < r1`.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn $name(
            x: &[f32],
            m: usize,
            k: usize,
            w: &[$t],
            r0: usize,
            r1: usize,
            n: usize,
            out: *mut f32,
        ) {
            debug_assert!(x.len() >= m * k && w.len() >= r1 * k);
            let tail = k % 16;
            let kb = k - tail;
            let full: __mmask16 = 0xffff;
            let mask: __mmask16 = ((1u32 << tail) - 1) as u16;
            let wp = w.as_ptr();
            let mut r = r0;
            unsafe {
                // One activation row: the rows are left to the loop after this one, which reads them one
                // after the other, so that the task reads its block as one sequential stream, asking for it
                // `PF_L2` bytes ahead into L2 (each row's sum is the same as here). On AMD Zen 4
                // (docs/performance.md), reading four rows side by side (four streams `k` apart) drew 5-15%
                // less bandwidth, and the stream without the prefetches 10-12% less.
                while m > 1 && r + 4 <= r1 {
                    let w0 = wp.add(r * k);
                    let w1 = w0.add(k);
                    let w2 = w1.add(k);
                    let w3 = w2.add(k);
                    // Four activation rows at a time: 16 accumulators, each weight load used four times.
                    let mut i0 = 0;
                    while i0 + 4 <= m && m > 4 {
                        let x0 = x.as_ptr().add(i0 * k);
                        let x1 = x0.add(k);
                        let x2 = x1.add(k);
                        let x3 = x2.add(k);
                        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
                        let mut l = 0;
                        while l < k {
                            let mk = if l < kb { full } else { mask };
                            let wv = [
                                $load(w0.add(l), mk),
                                $load(w1.add(l), mk),
                                $load(w2.add(l), mk),
                                $load(w3.add(l), mk),
                            ];
                            let xv = [
                                _mm512_maskz_loadu_ps(mk, x0.add(l)),
                                _mm512_maskz_loadu_ps(mk, x1.add(l)),
                                _mm512_maskz_loadu_ps(mk, x2.add(l)),
                                _mm512_maskz_loadu_ps(mk, x3.add(l)),
                            ];
                            for (a, xv) in acc.iter_mut().zip(xv) {
                                for (a, wv) in a.iter_mut().zip(wv) {
                                    *a = _mm512_fmadd_ps(xv, wv, *a);
                                }
                            }
                            l += 16;
                        }
                        for (d, a) in acc.iter().enumerate() {
                            let o = out.add((i0 + d) * n + r);
                            for (j, a) in a.iter().enumerate() {
                                *o.add(j) = _mm512_reduce_add_ps(*a);
                            }
                        }
                        i0 += 4;
                    }
                    for i in i0..m {
                        let xp = x.as_ptr().add(i * k);
                        let mut a0 = _mm512_setzero_ps();
                        let mut a1 = _mm512_setzero_ps();
                        let mut a2 = _mm512_setzero_ps();
                        let mut a3 = _mm512_setzero_ps();
                        let mut l = 0;
                        while l < kb {
                            let xv = _mm512_loadu_ps(xp.add(l));
                            // Streamed from memory: ask for the rows ahead of use (`wrapping_add`: the
                            // address may lie past the weight's end; a prefetch never faults).
                            _mm_prefetch::<_MM_HINT_T0>(w0.wrapping_add(l + PF).cast());
                            _mm_prefetch::<_MM_HINT_T0>(w1.wrapping_add(l + PF).cast());
                            _mm_prefetch::<_MM_HINT_T0>(w2.wrapping_add(l + PF).cast());
                            _mm_prefetch::<_MM_HINT_T0>(w3.wrapping_add(l + PF).cast());
                            a0 = _mm512_fmadd_ps(xv, $load(w0.add(l), full), a0);
                            a1 = _mm512_fmadd_ps(xv, $load(w1.add(l), full), a1);
                            a2 = _mm512_fmadd_ps(xv, $load(w2.add(l), full), a2);
                            a3 = _mm512_fmadd_ps(xv, $load(w3.add(l), full), a3);
                            l += 16;
                        }
                        if tail > 0 {
                            let xv = _mm512_maskz_loadu_ps(mask, xp.add(kb));
                            a0 = _mm512_fmadd_ps(xv, $load(w0.add(kb), mask), a0);
                            a1 = _mm512_fmadd_ps(xv, $load(w1.add(kb), mask), a1);
                            a2 = _mm512_fmadd_ps(xv, $load(w2.add(kb), mask), a2);
                            a3 = _mm512_fmadd_ps(xv, $load(w3.add(kb), mask), a3);
                        }
                        let o = out.add(i * n + r);
                        *o = _mm512_reduce_add_ps(a0);
                        *o.add(1) = _mm512_reduce_add_ps(a1);
                        *o.add(2) = _mm512_reduce_add_ps(a2);
                        *o.add(3) = _mm512_reduce_add_ps(a3);
                    }
                    r += 4;
                }
                while r < r1 {
                    let w0 = wp.add(r * k);
                    for i in 0..m {
                        let xp = x.as_ptr().add(i * k);
                        let mut a0 = _mm512_setzero_ps();
                        let mut l = 0;
                        while l < kb {
                            if (l * size_of::<$t>()).is_multiple_of(64) {
                                _mm_prefetch::<_MM_HINT_T1>(
                                    w0.wrapping_add(l).cast::<u8>().wrapping_add(PF_L2).cast(),
                                );
                            }
                            let xv = _mm512_loadu_ps(xp.add(l));
                            a0 = _mm512_fmadd_ps(xv, $load(w0.add(l), full), a0);
                            l += 16;
                        }
                        if tail > 0 {
                            let xv = _mm512_maskz_loadu_ps(mask, xp.add(kb));
                            a0 = _mm512_fmadd_ps(xv, $load(w0.add(kb), mask), a0);
                        }
                        *out.add(i * n + r) = _mm512_reduce_add_ps(a0);
                    }
                    r += 1;
                }
            }
        }
    };
}

gemv_avx512!(gemv_f32_avx512, f32, ld16_f32);
gemv_avx512!(gemv_bf16_avx512, bf16, ld16_bf16);
gemv_avx512!(gemv_f16_avx512, f16, ld16_f16);

macro_rules! gemv_avx2 {
    ($name:ident, $t:ty, $load:ident, $scalar:expr) => {
        /// # Safety
        /// The CPU has AVX2, FMA and F16C; otherwise as the AVX-512 kernel.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn $name(
            x: &[f32],
            m: usize,
            k: usize,
            w: &[$t],
            r0: usize,
            r1: usize,
            n: usize,
            out: *mut f32,
        ) {
            debug_assert!(x.len() >= m * k && w.len() >= r1 * k);
            let to_f32 = $scalar;
            let kb = k - k % 8;
            let wp = w.as_ptr();
            let mut r = r0;
            unsafe {
                while r + 4 <= r1 {
                    let w0 = wp.add(r * k);
                    let w1 = w0.add(k);
                    let w2 = w1.add(k);
                    let w3 = w2.add(k);
                    for i in 0..m {
                        let xp = x.as_ptr().add(i * k);
                        let mut a0 = _mm256_setzero_ps();
                        let mut a1 = _mm256_setzero_ps();
                        let mut a2 = _mm256_setzero_ps();
                        let mut a3 = _mm256_setzero_ps();
                        let mut l = 0;
                        while l < kb {
                            let xv = _mm256_loadu_ps(xp.add(l));
                            a0 = _mm256_fmadd_ps(xv, $load(w0.add(l)), a0);
                            a1 = _mm256_fmadd_ps(xv, $load(w1.add(l)), a1);
                            a2 = _mm256_fmadd_ps(xv, $load(w2.add(l)), a2);
                            a3 = _mm256_fmadd_ps(xv, $load(w3.add(l)), a3);
                            l += 8;
                        }
                        let mut s = [hsum8(a0), hsum8(a1), hsum8(a2), hsum8(a3)];
                        for l in kb..k {
                            let xv = *xp.add(l);
                            s[0] += xv * to_f32(*w0.add(l));
                            s[1] += xv * to_f32(*w1.add(l));
                            s[2] += xv * to_f32(*w2.add(l));
                            s[3] += xv * to_f32(*w3.add(l));
                        }
                        let o = out.add(i * n + r);
                        for (j, s) in s.into_iter().enumerate() {
                            *o.add(j) = s;
                        }
                    }
                    r += 4;
                }
                while r < r1 {
                    let w0 = wp.add(r * k);
                    for i in 0..m {
                        let xp = x.as_ptr().add(i * k);
                        let mut a0 = _mm256_setzero_ps();
                        let mut l = 0;
                        while l < kb {
                            let xv = _mm256_loadu_ps(xp.add(l));
                            a0 = _mm256_fmadd_ps(xv, $load(w0.add(l)), a0);
                            l += 8;
                        }
                        let mut s = hsum8(a0);
                        for l in kb..k {
                            s += *xp.add(l) * to_f32(*w0.add(l));
                        }
                        *out.add(i * n + r) = s;
                    }
                    r += 1;
                }
            }
        }
    };
}

gemv_avx2!(gemv_f32_avx2, f32, ld8_f32, |v: f32| v);
gemv_avx2!(gemv_bf16_avx2, bf16, ld8_bf16, bf16::to_f32);
gemv_avx2!(gemv_f16_avx2, f16, ld8_f16, f16::to_f32);

macro_rules! widen_avx512 {
    ($name:ident, $t:ty, $load:ident) => {
        /// `dst = src` as f32 (exact).
        ///
        /// # Safety
        /// The CPU has AVX-512 F/BW/VL; `dst` is at least as long as `src`.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
        pub(super) unsafe fn $name(src: &[$t], dst: &mut [f32]) {
            debug_assert!(dst.len() >= src.len());
            let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
            let mut j = 0;
            unsafe {
                while j < src.len() {
                    let left = src.len() - j;
                    let mask: __mmask16 = if left >= 16 {
                        0xffff
                    } else {
                        ((1u32 << left) - 1) as u16
                    };
                    _mm512_mask_storeu_ps(dp.add(j), mask, $load(sp.add(j), mask));
                    j += 16;
                }
            }
        }
    };
}

widen_avx512!(bf16_to_f32_avx512, bf16, ld16_bf16);
widen_avx512!(f16_to_f32_avx512, f16, ld16_f16);

/// The 16 x 16 transpose of `i32`: `out[q]` lane `c` is `rows[c]` lane `q`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
pub(super) fn transpose16_epi32(rows: &[__m512i; 16]) -> [__m512i; 16] {
    // Per 128-bit lane `L`, for each four rows `4c..4c + 4`: `v[4c + j]` holds their lane `4L + j`.
    let mut v = [_mm512_setzero_si512(); 16];
    for c in 0..4 {
        let r = &rows[4 * c..4 * c + 4];
        let (lo01, hi01) = (
            _mm512_unpacklo_epi32(r[0], r[1]),
            _mm512_unpackhi_epi32(r[0], r[1]),
        );
        let (lo23, hi23) = (
            _mm512_unpacklo_epi32(r[2], r[3]),
            _mm512_unpackhi_epi32(r[2], r[3]),
        );
        v[4 * c] = _mm512_unpacklo_epi64(lo01, lo23);
        v[4 * c + 1] = _mm512_unpackhi_epi64(lo01, lo23);
        v[4 * c + 2] = _mm512_unpacklo_epi64(hi01, hi23);
        v[4 * c + 3] = _mm512_unpackhi_epi64(hi01, hi23);
    }
    // The 4 x 4 transpose of 128-bit lanes: lane `L` of `out[4L' + j]` is lane `L'` of `v[4L + j]`.
    let mut out = [_mm512_setzero_si512(); 16];
    for j in 0..4 {
        let (x0, x1, x2, x3) = (v[j], v[4 + j], v[8 + j], v[12 + j]);
        let s0 = _mm512_shuffle_i32x4::<0b01_00_01_00>(x0, x1);
        let s1 = _mm512_shuffle_i32x4::<0b11_10_11_10>(x0, x1);
        let s2 = _mm512_shuffle_i32x4::<0b01_00_01_00>(x2, x3);
        let s3 = _mm512_shuffle_i32x4::<0b11_10_11_10>(x2, x3);
        out[j] = _mm512_shuffle_i32x4::<0b10_00_10_00>(s0, s2);
        out[4 + j] = _mm512_shuffle_i32x4::<0b11_01_11_01>(s0, s2);
        out[8 + j] = _mm512_shuffle_i32x4::<0b10_00_10_00>(s1, s3);
        out[12 + j] = _mm512_shuffle_i32x4::<0b11_01_11_01>(s1, s3);
    }
    out
}
