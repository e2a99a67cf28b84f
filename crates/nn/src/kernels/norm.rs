//! The layer norm of bf16 rows in one pass over memory: each row widened, its mean and variance taken in f32,
//! normalised, scaled and shifted, and rounded back to bf16, with no f32 copy of the tensor.

use half::bf16;

use super::KernelPath;
use super::elementwise::bf16_bits;

/// Lanes of the sums: element `l` of a row is added into lane `l % LANES`, and the lanes are then added in order
/// `0..LANES`, on every path (so the vectorised loops and the portable one give the same bits).
const LANES: usize = 16;

/// `out = layer_norm(x)` for `x: [rows, d]` bf16 (row-major), with `gamma` and `beta` (`[d]`, f32) and
/// `epsilon`: per row, in f32, `mean = sum(x) / d`, `var = sum((x - mean)²) / d` (the biased variance, from the
/// centred values: no cancellation when the mean is large against the spread), `inv = 1 / sqrt(var +
/// epsilon)`, and `out = bf16((x - mean) * (inv * gamma) + beta)`, rounded once to nearest even. The sums run
/// in [`LANES`] lanes then across them in a fixed order, so every path gives the same bits. One thread; the
/// caller splits the rows.
///
/// # Panics
/// When `d` is zero, `x` or `out` is not a whole number of rows of `d`, or `gamma` / `beta` are not `[d]`.
pub fn layer_norm_bf16(
    path: KernelPath,
    x: &[bf16],
    d: usize,
    gamma: &[f32],
    beta: Option<&[f32]>,
    epsilon: f32,
    out: &mut [bf16],
) {
    assert!(d > 0, "layer norm over zero features");
    assert!(
        x.len().is_multiple_of(d) && out.len() == x.len(),
        "the layer norm's input and output are not rows of {d}"
    );
    assert_eq!(gamma.len(), d, "gamma is not [{d}]");
    if let Some(beta) = beta {
        assert_eq!(beta.len(), d, "beta is not [{d}]");
    }
    #[cfg(target_arch = "x86_64")]
    match path.checked() {
        // SAFETY: `checked` confirmed the CPU's features.
        KernelPath::Avx512 => return unsafe { rows_avx512(x, d, gamma, beta, epsilon, out) },
        KernelPath::Avx2 => return unsafe { rows_avx2(x, d, gamma, beta, epsilon, out) },
        KernelPath::Portable => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = path;
    rows_body(x, d, gamma, beta, epsilon, out);
}

#[inline(always)]
fn rows_body(
    x: &[bf16],
    d: usize,
    gamma: &[f32],
    beta: Option<&[f32]>,
    epsilon: f32,
    out: &mut [bf16],
) {
    for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mean = lane_sum(row, |v| v) / d as f32;
        let var = lane_sum(row, |v| {
            let c = v - mean;
            c * c
        }) / d as f32;
        let inv = 1.0 / (var + epsilon).sqrt();
        match beta {
            Some(beta) => {
                for (((o, &v), &g), &b) in o.iter_mut().zip(row).zip(gamma).zip(beta) {
                    *o = bf16::from_bits(bf16_bits((widen(v) - mean) * (inv * g) + b));
                }
            }
            None => {
                for ((o, &v), &g) in o.iter_mut().zip(row).zip(gamma) {
                    *o = bf16::from_bits(bf16_bits((widen(v) - mean) * (inv * g)));
                }
            }
        }
    }
}

/// `sum f(x[l])` over a row: term `l` into lane `l % LANES`, then the lanes in order.
#[inline(always)]
fn lane_sum(row: &[bf16], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(widen(v));
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += f(widen(v));
    }
    acc.iter().fold(0f32, |s, &a| s + a)
}

#[inline(always)]
fn widen(v: bf16) -> f32 {
    f32::from_bits(u32::from(v.to_bits()) << 16)
}

/// # Safety
/// The CPU has AVX-512 F/BW/VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn rows_avx512(
    x: &[bf16],
    d: usize,
    gamma: &[f32],
    beta: Option<&[f32]>,
    epsilon: f32,
    out: &mut [bf16],
) {
    rows_body(x, d, gamma, beta, epsilon, out);
}

/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2(
    x: &[bf16],
    d: usize,
    gamma: &[f32],
    beta: Option<&[f32]>,
    epsilon: f32,
    out: &mut [bf16],
) {
    rows_body(x, d, gamma, beta, epsilon, out);
}
