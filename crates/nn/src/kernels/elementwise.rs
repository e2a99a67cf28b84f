//! Element-wise kernels: the exact (erf) GELU, bf16 conversions, the bf16 sum of two tensors.

use super::KernelPath;

/// Coefficients of `erf(x) ≈ x·P(x²)/Q(x²)` on `[-4, 4]` (single precision; outside, erf is ±1 in f32): the
/// rational approximation that Eigen and XLA use for float erf. `P` from the x¹³ term down, `Q` from x⁸ down.
pub(super) const ERF_P: [f32; 7] = [
    -2.726_142_3e-10,
    2.770_681_4e-8,
    -2.101_024e-6,
    -5.692_506_4e-5,
    -7.349_906_3e-4,
    -2.954_6e-3,
    -1.609_603_3e-2,
];
pub(super) const ERF_Q: [f32; 5] = [
    -1.456_607_2e-5,
    -2.133_740_6e-4,
    -1.682_827e-3,
    -7.373_329e-3,
    -1.426_474e-2,
];

/// `erf(x)` by the rational approximation above: within 3.4e-7 of the exact value (the most is near ±3.93,
/// where erf is within 1e-7 of ±1; the kernel tests measure it).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = ERF_P[0];
    for c in &ERF_P[1..] {
        p = p.mul_add(x2, *c);
    }
    let mut q = ERF_Q[0];
    for c in &ERF_Q[1..] {
        q = q.mul_add(x2, *c);
    }
    x * p / q
}

#[inline(always)]
fn gelu_one(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `out[i] = x[i] · Φ(x[i])` (GELU with the exact normal CDF, `0.5 x (1 + erf(x / √2))`), vectorised on the
/// AVX-512 and AVX2 paths; the same formula, so the same values up to the FMA contraction, on every path.
///
/// # Panics
/// When `out` is shorter than `x`.
pub fn gelu_erf(path: KernelPath, x: &[f32], out: &mut [f32]) {
    let out = &mut out[..x.len()];
    #[cfg(target_arch = "x86_64")]
    match path.checked() {
        // SAFETY: `checked` confirmed the CPU's features.
        KernelPath::Avx512 => return unsafe { gelu_avx512(x, out) },
        KernelPath::Avx2 => return unsafe { gelu_avx2(x, out) },
        KernelPath::Portable => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = path;
    gelu_body(x, out);
}

#[inline(always)]
fn gelu_body(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = gelu_one(v);
    }
}

/// # Safety
/// The CPU has AVX-512 F/BW/VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn gelu_avx512(x: &[f32], out: &mut [f32]) {
    gelu_body(x, out);
}

/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(x: &[f32], out: &mut [f32]) {
    gelu_body(x, out);
}

/// [`gelu_erf`] of bf16 values, rounded back to bf16: the bits of [`widen_bf16`], [`gelu_erf`] then
/// [`narrow_bf16`] (torch's bf16 GELU: computed in f32, rounded once), without the f32 values in memory.
///
/// # Panics
/// When `out` is shorter than `x`.
pub fn gelu_erf_bf16(path: KernelPath, x: &[half::bf16], out: &mut [half::bf16]) {
    let out = &mut out[..x.len()];
    #[cfg(target_arch = "x86_64")]
    match path.checked() {
        // SAFETY: `checked` confirmed the CPU's features.
        KernelPath::Avx512 => return unsafe { gelu_bf16_avx512(x, out) },
        KernelPath::Avx2 => return unsafe { gelu_bf16_avx2(x, out) },
        KernelPath::Portable => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = path;
    gelu_bf16_body(x, out);
}

#[inline(always)]
fn gelu_bf16_body(x: &[half::bf16], out: &mut [half::bf16]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o = half::bf16::from_bits(bf16_bits(gelu_one(widen_one(*v))));
    }
}

/// # Safety
/// The CPU has AVX-512 F/BW/VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn gelu_bf16_avx512(x: &[half::bf16], out: &mut [half::bf16]) {
    gelu_bf16_body(x, out);
}

/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_bf16_avx2(x: &[half::bf16], out: &mut [half::bf16]) {
    gelu_bf16_body(x, out);
}

/// `out[i] = bf16(f32(a[i]) + f32(b[i]))`: torch's (and Burn's) sum of two bf16 tensors, computed in f32 and
/// rounded once (ties to even; NaN stays NaN), vectorised on the AVX-512 and AVX2 paths.
///
/// # Panics
/// When `b` or `out` is shorter than `a`.
pub fn add_bf16(path: KernelPath, a: &[half::bf16], b: &[half::bf16], out: &mut [half::bf16]) {
    let (b, out) = (&b[..a.len()], &mut out[..a.len()]);
    #[cfg(target_arch = "x86_64")]
    match path.checked() {
        // SAFETY: `checked` confirmed the CPU's features.
        KernelPath::Avx512 => return unsafe { add_bf16_avx512(a, b, out) },
        KernelPath::Avx2 => return unsafe { add_bf16_avx2(a, b, out) },
        KernelPath::Portable => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = path;
    add_bf16_body(a, b, out);
}

#[inline(always)]
fn add_bf16_body(a: &[half::bf16], b: &[half::bf16], out: &mut [half::bf16]) {
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = half::bf16::from_bits(bf16_bits(widen_one(*x) + widen_one(*y)));
    }
}

/// # Safety
/// The CPU has AVX-512 F/BW/VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn add_bf16_avx512(a: &[half::bf16], b: &[half::bf16], out: &mut [half::bf16]) {
    add_bf16_body(a, b, out);
}

/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn add_bf16_avx2(a: &[half::bf16], b: &[half::bf16], out: &mut [half::bf16]) {
    add_bf16_body(a, b, out);
}

#[inline(always)]
fn widen_one(v: half::bf16) -> f32 {
    f32::from_bits(u32::from(v.to_bits()) << 16)
}

/// `dst = src` rounded to bfloat16 (to nearest, ties to even; NaN stays NaN), bit-identical to
/// `half::bf16::from_f32` and vectorised on the AVX-512 and AVX2 paths.
///
/// # Panics
/// When `dst` is shorter than `src`.
pub fn narrow_bf16(path: KernelPath, src: &[f32], dst: &mut [half::bf16]) {
    let dst = &mut dst[..src.len()];
    #[cfg(target_arch = "x86_64")]
    match path.checked() {
        // SAFETY: `checked` confirmed the CPU's features.
        KernelPath::Avx512 => return unsafe { narrow_avx512(src, dst) },
        KernelPath::Avx2 => return unsafe { narrow_avx2(src, dst) },
        KernelPath::Portable => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = path;
    narrow_body(src, dst);
}

/// `dst = src` as f32 (exact), vectorised on the AVX-512 and AVX2 paths.
///
/// # Panics
/// When `dst` is shorter than `src`.
pub fn widen_bf16(path: KernelPath, src: &[half::bf16], dst: &mut [f32]) {
    let dst = &mut dst[..src.len()];
    #[cfg(target_arch = "x86_64")]
    match path.checked() {
        // SAFETY: `checked` confirmed the CPU's features; `dst` is as long as `src`.
        KernelPath::Avx512 => return unsafe { super::x86::bf16_to_f32_avx512(src, dst) },
        KernelPath::Avx2 => return unsafe { widen_avx2(src, dst) },
        KernelPath::Portable => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = path;
    widen_body(src, dst);
}

#[inline(always)]
fn narrow_body(src: &[f32], dst: &mut [half::bf16]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = half::bf16::from_bits(bf16_bits(v));
    }
}

/// The bits of `v` rounded to bfloat16 (to nearest, ties to even; NaN stays NaN), as `half::bf16::from_f32`
/// gives them, in plain integer steps that vectorise.
#[inline(always)]
pub(super) fn bf16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    let rounded = (x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16) as u16;
    let nan = ((x >> 16) | 0x0040) as u16;
    if x & 0x7fff_ffff > 0x7f80_0000 {
        nan
    } else {
        rounded
    }
}

#[inline(always)]
fn widen_body(src: &[half::bf16], dst: &mut [f32]) {
    for (d, v) in dst.iter_mut().zip(src) {
        *d = f32::from_bits((v.to_bits() as u32) << 16);
    }
}

/// # Safety
/// The CPU has AVX-512 F/BW/VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn narrow_avx512(src: &[f32], dst: &mut [half::bf16]) {
    narrow_body(src, dst);
}

/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn narrow_avx2(src: &[f32], dst: &mut [half::bf16]) {
    narrow_body(src, dst);
}

/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn widen_avx2(src: &[half::bf16], dst: &mut [f32]) {
    widen_body(src, dst);
}
