//! CPU kernels for `Linear` layers whose weights are bf16, f16 or int8 (and f32 at decoding sizes).
//!
//! Burn 0.21's CPU backend converts a whole bf16 weight to f32 on one thread on every product, and dequantizes a
//! whole int8 weight the same way, so a decoding step reads and writes every weight several times. These kernels
//! read each weight once, in its stored dtype, converting it in registers:
//!
//! - **Dense weights** (`f32`, `bf16`, `f16`) are read in PyTorch's `[out, in]` layout, the layout the
//!   checkpoints store and the one blip2's `Linear`s keep (a transposed view), so loading packs nothing. Up to
//!   [`GEMV_MAX_ROWS`] activation rows (decoding, beams), and up to [`DOT_MAX_ROWS`] on AVX-512 (prefill), go
//!   through a dot-product kernel threaded over output channels (an f32 weight from [`F32_ROWS_MIN_ROWS`] to
//!   [`F32_ROWS_MAX_ROWS`] rows on AVX-512: activation rows packed in panels of 16, the weight's values
//!   broadcast); more rows (the vision tower) go through blocks
//!   of 64 output channels converted to f32 in a per-thread buffer and multiplied by `gemm`'s f32 kernels,
//!   threaded over blocks.
//! - **bf16 activations times bf16 weights** ([`linear_bf16`], [`linear_bf16_rounded`]): on a CPU with
//!   AVX512-BF16, more than [`GEMV_MAX_ROWS`] rows multiply on `vdpbf16ps` (pairs of bf16 products summed into
//!   f32), threaded over blocks of outputs. With fewer rows than outputs, from [`ROW_PANELS_MIN_ROWS`] to
//!   [`ROW_PANELS_MAX_ROWS`] rows (prefill, the Q-Former's queries, a vision tower's `Linear`s), the activation
//!   rows are packed once per call into panels of 16 rows by input pairs, and tiles of six weight rows (read in
//!   place, broadcast pair by pair) by 64 rows keep the rows in the lanes: the weight is never copied. Otherwise
//!   up to [`PACKED_MIN_ROWS`] rows multiply in register tiles of at most six rows (as even as can be) by four
//!   outputs that read both operands in their stored layout; from there on, each 64 outputs' weight rows are
//!   packed per call into panels of input pairs, and tiles of six rows by 64 outputs keep the outputs in the
//!   lanes. On Intel AMX ([`amx_enabled`]) products of [`AMX_MIN_ROWS`] rows or more whose inputs and outputs
//!   are multiples of 32 run on `tdpbf16ps` instead: the same packed row panels, the weight in tiles of 16
//!   rows by 32 inputs, sums in 16 × 16 f32 tiles. [`attention_qkv_bf16`] runs a ViT's whole self-attention on the
//!   packed tiles, a head per task; [`attention_bf16`] does the same for separate, strided query, key and value
//!   heads with an additive mask (the language models), writing the heads merged.
//! - **int8 weights** ([`Q8Weight`]) are Burn's own quantized tensors: `[in, out]` int8, symmetric, one f32 scale
//!   per block of `group` consecutive output channels of one input row (Burn's block `[1, group]`), so every
//!   Burn backend can also run them through its generic dequantize-then-multiply path. On flex their values are
//!   held in PyTorch's `[out, in]` order (a transposed view, like the float weights), so that each output
//!   channel's inputs are contiguous. [`linear_q8`] multiplies in integers: it moves the weight's scales onto
//!   the activations and quantizes those per call, in blocks of [`Q8_ACT_BLOCK`] inputs (docs/numerics.md),
//!   then sums int8 products exactly (AVX-512 VNNI where present), threaded over strips of 16 output channels
//!   that each read their rows of the weight once, from start to end.
//!
//! Dense products accumulate in f32; int8 products sum in integers per block of inputs, then in f32. Each routine exists for three [`KernelPath`]s, picked at run time from
//! the CPU's features: AVX-512 (F, BW, VL), AVX2 with FMA and F16C, and a portable scalar path that also
//! compiles on aarch64 and is the reference the others are tested against (the int8 product also uses AVX-512
//! VNNI when the CPU has it). The int8 paths are bit-identical to the portable one; the dense paths sum in a different order and agree within f32 accumulation error.
//!
//! ```
//! use blip2_nn::kernels::{self, DenseWeight, KernelPath};
//!
//! // y = x W^T + b for x: [1, 3], W: [2, 3] (PyTorch layout), in bf16.
//! let w: Vec<half::bf16> = [1.0f32, 2.0, 3.0, -1.0, 0.5, 0.0].iter().map(|&v| half::bf16::from_f32(v)).collect();
//! let mut y = [0.0f32; 2];
//! kernels::linear_dense(KernelPath::detect(), &[1.0, 1.0, 2.0], 1, 3, DenseWeight::Bf16(&w), 2, Some(&[0.5, 0.0]), &mut y);
//! assert_eq!(y, [9.5, -0.5]);
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use half::{bf16, f16};

mod attention;
mod dense;
mod elementwise;
mod norm;
mod q8;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_amx;
#[cfg(target_arch = "x86_64")]
mod x86_amx_heads;
#[cfg(target_arch = "x86_64")]
mod x86_bf16;
#[cfg(target_arch = "x86_64")]
mod x86_bf16_rows;
#[cfg(target_arch = "x86_64")]
mod x86_f32_rows;
#[cfg(target_arch = "x86_64")]
mod x86_q8;

pub use attention::{HeadStrides, Heads, HeadsShape, QkvShape, attention_bf16, attention_qkv_bf16};
pub use elementwise::{add_bf16, erf, gelu_erf, gelu_erf_bf16, narrow_bf16, widen_bf16};
pub use norm::layer_norm_bf16;
pub(crate) use q8::q8_values;
pub use q8::{
    Q8_ACT_BLOCK, Q8Weight, dequantize_q8, quantize_q8, quantize_q8_transposed,
    quantize_q8_transposed_into,
};

/// Activation rows up to which products use the decoding (GEMV) kernels on every path.
pub const GEMV_MAX_ROWS: usize = 4;
/// Activation rows up to which dense products use the dot-product kernel on the AVX-512 path (in tiles of four
/// rows by four outputs); more rows go through blocked `gemm`.
pub const DOT_MAX_ROWS: usize = 64;

/// Activation rows from which bf16 × bf16 products on AVX512-BF16 ([`linear_bf16`]) that do not pack their
/// activation rows (see [`ROW_PANELS_MIN_ROWS`]) pack the weight, 64 outputs at a time, into panels that every
/// row then reads; fewer rows read the weight in place. With OPT-2.7b's shapes (weights streamed from memory)
/// the in-place tiles were 6-15% faster at 32 rows, the two were even at 48, and packing was 10-25% faster from
/// 64 rows on (1.2-1.3x at ViT-g's 257; AMD Zen 5, docs/performance.md).
pub const PACKED_MIN_ROWS: usize = 48;

/// Activation rows from which bf16 × bf16 products on AVX512-BF16 with fewer rows than outputs pack the rows
/// (panels of 16, once per call, shared by the threads) and read the weight where it is stored, up to
/// [`ROW_PANELS_MAX_ROWS`]. On AMD Zen 4 with OPT-2.7b's shapes (weights streamed from memory) this was 16-17%
/// faster than the in-place tiles at 16 and 20 rows and 1.6x at 32, slower at 8 and 12 rows; 13-16% faster
/// than packing the weight at 64 and 128 rows, 3% at 256 (docs/performance.md).
pub const ROW_PANELS_MIN_ROWS: usize = 16;

/// Activation rows up to which products with fewer rows than outputs pack the rows ([`ROW_PANELS_MIN_ROWS`]);
/// beyond, packing the weight was 1-10% faster (OPT-2.7b's shapes at 512 rows, ViT-g's at 514 and 1028, AMD
/// Zen 4).
pub const ROW_PANELS_MAX_ROWS: usize = 384;

/// Activation rows from which bf16 × bf16 products run on Intel AMX where the process has it (see
/// [`amx_enabled`]) and the shape fits its tiles (inputs a multiple of 32, outputs a multiple of 32). A tile
/// always computes 32 rows, but with few rows the products are bound by reading the weight: at 8 rows AMX read
/// OPT-2.7b's `fc1` at 19.9 GB/s against 14.6 GB/s on the `vdpbf16ps` tiles; at 5 rows the two were even on
/// `fc1` and AMX 25% slower on a 2560 × 2560 weight (Intel Xeon with AMX, docs/performance.md).
pub const AMX_MIN_ROWS: usize = 8;

/// Whether bf16 × bf16 products of [`AMX_MIN_ROWS`] rows or more may run on Intel AMX (`tdpbf16ps`): an x86-64
/// CPU with AMX-TILE and AMX-BF16 (Sapphire Rapids and later Xeons), Linux granting the process the tile state,
/// and `BLIP2_CPU_AMX` not set to `off`. Read once per process.
pub fn amx_enabled() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        x86_amx::enabled()
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Activation rows from which f32 products with an f32 weight on the AVX-512 path pack the rows in panels of
/// 16 and broadcast the weight read in place (each lane one (row, output) sum, input after input), up to
/// [`F32_ROWS_MAX_ROWS`]; outside that range they take the dot-product tiles (up to [`DOT_MAX_ROWS`]) or
/// blocked `gemm`. On an Intel Xeon with AMX (docs/performance.md), with OPT-2.7b's shapes: 1.5x the
/// dot-product tiles at 16 rows, 1.8-1.9x at 32 and 64; even at 8; `gemm` was 15% faster at ViT-g's 257.
pub const F32_ROWS_MIN_ROWS: usize = 16;
/// Activation rows up to which f32 products pack the rows (see [`F32_ROWS_MIN_ROWS`]).
pub const F32_ROWS_MAX_ROWS: usize = 128;

// The row-packing product takes at least one whole panel of 16 rows.
const _: () = assert!(ROW_PANELS_MIN_ROWS >= 16 && ROW_PANELS_MIN_ROWS <= ROW_PANELS_MAX_ROWS);

/// Which instruction set a kernel runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KernelPath {
    /// Scalar Rust: every CPU, the reference the other paths are tested against.
    Portable,
    /// x86-64 AVX2 + FMA + F16C (Haswell and later, Zen 1 and later).
    Avx2,
    /// x86-64 AVX-512 F/BW/VL (Skylake-SP and later Xeons, Zen 4 and later), plus AVX2/FMA/F16C.
    Avx512,
}

impl KernelPath {
    /// Every path, from the most portable.
    pub const ALL: [KernelPath; 3] = [Self::Portable, Self::Avx2, Self::Avx512];

    /// The short name (`portable`, `avx2`, `avx512`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the path.
    pub fn is_available(self) -> bool {
        match self {
            Self::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => {
                Self::Avx2.is_available()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The paths this CPU can run, from the most portable.
    pub fn available() -> Vec<KernelPath> {
        Self::ALL.into_iter().filter(|p| p.is_available()).collect()
    }

    /// The best path this CPU runs, or the one `BLIP2_CPU_KERNELS` names (`portable`, `avx2`, `avx512`) when
    /// this CPU can run it (a path it cannot run falls back to the best one). Read once per process.
    pub fn detect() -> KernelPath {
        static DETECTED: OnceLock<KernelPath> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let best = Self::available()
                .into_iter()
                .max()
                .unwrap_or(Self::Portable);
            match std::env::var("BLIP2_CPU_KERNELS")
                .ok()
                .and_then(|v| v.parse::<KernelPath>().ok())
            {
                Some(asked) if asked.is_available() => asked,
                _ => best,
            }
        })
    }

    /// Whether bf16 × bf16 products on this path use AVX512-BF16's `vdpbf16ps` (see [`linear_bf16`]): on the
    /// AVX-512 path of a CPU with AVX512-BF16 (Zen 4 and later, Cooper Lake and later Xeons), unless the
    /// environment sets `BLIP2_CPU_BF16_DOT=off` (read once per process).
    pub fn bf16_dot(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            static DOT: OnceLock<bool> = OnceLock::new();
            self.checked() == Self::Avx512
                && *DOT.get_or_init(|| {
                    std::arch::is_x86_feature_detected!("avx512bf16")
                        && !std::env::var("BLIP2_CPU_BF16_DOT")
                            .is_ok_and(|v| matches!(v.trim(), "off" | "0" | "false"))
                })
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// `self` if this CPU runs it, else the portable path: kernels never execute instructions the CPU lacks.
    fn checked(self) -> KernelPath {
        if self.is_available() {
            self
        } else {
            Self::Portable
        }
    }
}

impl fmt::Display for KernelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KernelPath {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" | "scalar" => Ok(Self::Portable),
            "avx2" => Ok(Self::Avx2),
            "avx512" | "avx-512" => Ok(Self::Avx512),
            other => Err(format!(
                "unknown kernel path `{other}` (expected portable, avx2 or avx512)"
            )),
        }
    }
}

/// A dense weight in PyTorch's `[out, in]` layout, row-major (`n` rows of `k` values).
#[derive(Clone, Copy, Debug)]
pub enum DenseWeight<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// bfloat16 values.
    Bf16(&'a [bf16]),
    /// IEEE half values.
    F16(&'a [f16]),
}

impl DenseWeight<'_> {
    fn len(&self) -> usize {
        match self {
            Self::F32(w) => w.len(),
            Self::Bf16(w) => w.len(),
            Self::F16(w) => w.len(),
        }
    }
}

/// `out = x W^T + bias` for `x: [m, k]` (row-major f32), `W: [n, k]` and `out: [m, n]`.
///
/// # Panics
/// When a slice's length does not match `m`, `k` and `n`.
#[allow(clippy::too_many_arguments)]
pub fn linear_dense(
    path: KernelPath,
    x: &[f32],
    m: usize,
    k: usize,
    w: DenseWeight<'_>,
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    check_dense(x.len(), w.len(), out.len(), bias, [m, k, n]);
    if m == 0 || n == 0 {
        return;
    }
    let path = path.checked();
    #[cfg(target_arch = "x86_64")]
    if let (KernelPath::Avx512, DenseWeight::F32(w)) = (path, w)
        && k > 0
        && (F32_ROWS_MIN_ROWS..=F32_ROWS_MAX_ROWS).contains(&m)
    {
        // SAFETY: the path was checked against the CPU's features; the lengths were checked above.
        return unsafe { x86_f32_rows::product_rows_f32(x, m, k, w, n, bias, out) };
    }
    if m <= GEMV_MAX_ROWS || (path == KernelPath::Avx512 && m <= DOT_MAX_ROWS) {
        dense::gemv(path, x, m, k, w, n, out);
    } else {
        dense::gemm_blocks(path, x, m, k, w, n, out);
    }
    if let Some(b) = bias {
        add_bias(out, b);
    }
}

/// `out = x W^T + bias` for bf16 activations `x: [m, k]` (row-major), a bf16 weight `W: [n, k]` and
/// `out: [m, n]` (f32).
///
/// With more than [`GEMV_MAX_ROWS`] rows, on a path where [`KernelPath::bf16_dot`] holds, the products run on
/// `vdpbf16ps` straight from the bf16 values: exact products, f32 sums in a different order than the
/// portable path's, and subnormal values (below about `1.2e-38`) taken as zero. Otherwise `x` is widened to
/// f32 (exactly) and multiplied by [`linear_dense`].
///
/// ```
/// use blip2_nn::kernels::{self, KernelPath};
/// use half::bf16;
///
/// let b = |v: &[f32]| v.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>();
/// let (x, w) = (b(&[1.0, 1.0, 2.0, 0.5, 0.0, -1.0]), b(&[1.0, 2.0, 3.0, -1.0, 0.5, 0.0]));
/// let mut y = [0.0f32; 4];
/// kernels::linear_bf16(KernelPath::detect(), &x, 2, 3, &w, 2, None, &mut y);
/// assert_eq!(y, [9.0, -0.5, -2.5, -0.5]);
/// ```
///
/// # Panics
/// When a slice's length does not match `m`, `k` and `n`.
#[allow(clippy::too_many_arguments)]
pub fn linear_bf16(
    path: KernelPath,
    x: &[bf16],
    m: usize,
    k: usize,
    w: &[bf16],
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    linear_bf16_to(path, x, m, k, w, n, bias, dense::Bf16Out::F32(out));
}

/// [`linear_bf16`] with its outputs rounded to bf16, bit for bit what [`linear_bf16`] then [`narrow_bf16`]
/// give, without the f32 outputs in memory where the kernel can round them as it stores them (AVX512-BF16,
/// the packed products: see [`ROW_PANELS_MIN_ROWS`] and [`PACKED_MIN_ROWS`]).
///
/// ```
/// use blip2_nn::kernels::{self, KernelPath};
/// use half::bf16;
///
/// let b = |v: &[f32]| v.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>();
/// let (x, w) = (b(&[1.0, 1.0, 2.0]), b(&[1.0, 2.0, 3.0, -1.0, 0.5, 0.0]));
/// let mut y = [bf16::ZERO; 2];
/// kernels::linear_bf16_rounded(KernelPath::detect(), &x, 1, 3, &w, 2, Some(&[0.0, 0.25]), &mut y);
/// assert_eq!(y, [bf16::from_f32(9.0), bf16::from_f32(-0.25)]);
/// ```
///
/// # Panics
/// When a slice's length does not match `m`, `k` and `n`.
#[allow(clippy::too_many_arguments)]
pub fn linear_bf16_rounded(
    path: KernelPath,
    x: &[bf16],
    m: usize,
    k: usize,
    w: &[bf16],
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [bf16],
) {
    linear_bf16_to(path, x, m, k, w, n, bias, dense::Bf16Out::Bf16(out));
}

/// [`linear_bf16`] and [`linear_bf16_rounded`]: `vdpbf16ps` where the path has it, else the activations widened
/// to f32 through [`linear_dense`] (then rounded for bf16 outputs).
/// [`linear_bf16_rounded`] into fresh memory that no one zeroes first: `Some` with the `[m, n]` outputs where
/// the kernel that runs writes every output itself (Intel AMX: [`amx_enabled`], from [`AMX_MIN_ROWS`] rows,
/// inputs and outputs multiples of 32), the same bits as [`linear_bf16_rounded`]; `None`, having done
/// nothing, otherwise. Zeroing a fresh output cost 4-5% of ViT-g's bf16 forward on the Xeon with AMX.
///
/// With `gelu`, each output is then [`gelu_erf_bf16`] of itself, applied as it is stored: the bits of
/// [`linear_bf16_rounded`] followed by [`gelu_erf_bf16`], without a second pass over the outputs.
///
/// # Panics
/// When a slice's length does not match `m`, `k` and `n`.
#[allow(clippy::too_many_arguments)]
pub fn linear_bf16_rounded_fresh(
    path: KernelPath,
    x: &[bf16],
    m: usize,
    k: usize,
    w: &[bf16],
    n: usize,
    bias: Option<&[f32]>,
    gelu: bool,
) -> Option<Vec<bf16>> {
    check_dense(x.len(), w.len(), m * n, bias, [m, k, n]);
    // `linear_bf16_rounded` sends the same products to AMX: more than GEMV_MAX_ROWS rows (implied), AVX512-BF16,
    // then `dense::gemm_dpbf16`'s test.
    const _: () = assert!(AMX_MIN_ROWS > GEMV_MAX_ROWS);
    #[cfg(target_arch = "x86_64")]
    if m >= AMX_MIN_ROWS && path.bf16_dot() && x86_amx::fits(k, n) && x86_amx::enabled() {
        let mut out = Vec::<bf16>::with_capacity(m * n);
        let op = x86_bf16::Operands {
            a: x.as_ptr(),
            a_rs: k,
            w: w.as_ptr(),
            w_rs: k,
            out: std::ptr::null_mut(),
            out_rs: n,
            out16: out.as_mut_ptr(),
            bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
            m,
            k,
            gelu,
        };
        // SAFETY: `bf16_dot` checked AVX-512 F/BW/VL, `enabled` AMX; `fits` holds and `m > 0`; the operands
        // were checked above and `out` has room for `[m, n]` values, every one of which `product_amx` writes
        // (its blocks cover the `n` outputs of every row), so its length can then be set.
        unsafe {
            x86_amx::product_amx(op, n);
            out.set_len(m * n);
        }
        return Some(out);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (path, bias, gelu);
    None
}

#[allow(clippy::too_many_arguments)]
fn linear_bf16_to(
    path: KernelPath,
    x: &[bf16],
    m: usize,
    k: usize,
    w: &[bf16],
    n: usize,
    bias: Option<&[f32]>,
    out: dense::Bf16Out<'_>,
) {
    check_dense(x.len(), w.len(), out.len(), bias, [m, k, n]);
    #[cfg(target_arch = "x86_64")]
    if m > GEMV_MAX_ROWS && path.bf16_dot() {
        // SAFETY: `bf16_dot` checked the CPU's features.
        return unsafe { dense::gemm_dpbf16(x, m, k, w, n, bias, out) };
    }
    let mut x32 = vec![0f32; x.len()];
    widen_bf16(path.checked(), x, &mut x32);
    let w = DenseWeight::Bf16(w);
    match out {
        dense::Bf16Out::F32(out) => linear_dense(path, &x32, m, k, w, n, bias, out),
        dense::Bf16Out::Bf16(out) => {
            let mut sums = vec![0f32; m * n];
            linear_dense(path, &x32, m, k, w, n, bias, &mut sums);
            narrow_bf16_threaded(path, &sums, out);
        }
    }
}

/// [`narrow_bf16`] on rayon's threads, in chunks of `1 << 14` values, for large outputs.
pub(crate) fn narrow_bf16_threaded(path: KernelPath, src: &[f32], dst: &mut [bf16]) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 14;
    if src.len() < 2 * CHUNK {
        narrow_bf16(path, src, dst);
    } else {
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(d, s)| narrow_bf16(path, s, d));
    }
}

/// `out ≈ x Wq + bias` for `x: [m, k]` (row-major f32), an int8 weight `[k, n]` (its values held `[n, k]`, see
/// [`Q8Weight`]) and `out: [m, n]`, multiplying
/// in integers: the activations are quantized per call, like the weights, to symmetric int8.
///
/// The scheme, for row `i`, input `l` and output `j` of group `g = j / group`, with `s[l, g]` the weight's scale
/// and `q[l, j]` its value:
/// 1. `a[l, g] = x[i, l] * s[l, g]` (f32): the weight's scale moves onto the activation, since it varies along
///    the input dimension;
/// 2. per block `b` of [`Q8_ACT_BLOCK`] consecutive inputs and per group: `amax` the largest `|a|`,
///    `t = amax / 127` and `p[l, g] = clamp(round_half_even(a[l, g] * (127 / amax)), -127, 127)`; `t = 1` and
///    the factor 1 when `amax / 127` is zero or subnormal; `t = NaN` (and `p = 0`) when an `a` is NaN or
///    infinite, so such inputs give NaN outputs;
/// 3. with `S_b = sum_{l in b} q[l, j] * p[l, g]` exact in integers, `out[i, j] = fma(S_b', t_b', ...
///    fma(S_0, t_0, 0))` over the blocks in order (the threads split the output channels, so the bits do not
///    depend on the thread count); then the bias is added.
///
/// Every path gives the same bits: AVX-512 VNNI where the CPU has it (`vpdpbusd`), else the portable integer
/// loops (compiled for AVX2 where available).
///
/// # Panics
/// When a slice's length does not match `m`, `k` and `n`, or the weight's group does not divide `n`.
#[allow(clippy::too_many_arguments)]
pub fn linear_q8(
    path: KernelPath,
    x: &[f32],
    m: usize,
    k: usize,
    w: &Q8Weight<'_>,
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    assert_eq!(x.len(), m * k, "x is not [m, k]");
    w.check(k, n);
    assert_eq!(out.len(), m * n, "out is not [m, n]");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "the bias is not [n]");
    }
    if m == 0 || n == 0 {
        return;
    }
    q8::product(path.checked(), x, m, k, w, n, out);
    if let Some(b) = bias {
        add_bias(out, b);
    }
}

/// Panics unless the lengths are those of `x: [m, k]`, `w: [n, k]`, `out: [m, n]` and `bias: [n]`.
fn check_dense(x: usize, w: usize, out: usize, bias: Option<&[f32]>, [m, k, n]: [usize; 3]) {
    assert_eq!(x, m * k, "x is not [m, k]");
    assert_eq!(w, n * k, "the weight is not [n, k]");
    assert_eq!(out, m * n, "out is not [m, n]");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "the bias is not [n]");
    }
}

fn add_bias(out: &mut [f32], bias: &[f32]) {
    for row in out.chunks_exact_mut(bias.len()) {
        for (o, b) in row.iter_mut().zip(bias) {
            *o += b;
        }
    }
}

/// Runs `f` with a buffer of `len` values taken from the thread's `cache` (grown as needed and put back
/// afterwards; a nested call on the same thread, which finds the cache taken, gets a buffer of its own), its
/// first value on a 64-byte boundary. The values are whatever an earlier call left.
#[cfg(target_arch = "x86_64")]
fn with_cached_buffer<T: Copy + Default, R>(
    cache: &'static std::thread::LocalKey<std::cell::RefCell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(SendPtr<T>) -> R,
) -> R {
    let mut own = Vec::new();
    let mut cached = cache.with(|b| b.try_borrow_mut().ok().as_deref_mut().map(std::mem::take));
    let buf = cached.as_mut().unwrap_or(&mut own);
    let pad = 64 / size_of::<T>().max(1);
    if buf.len() < len + pad {
        buf.resize(len + pad, T::default());
    }
    let p = buf.as_mut_ptr();
    let result = f(SendPtr(p.wrapping_add(p.align_offset(64))));
    if let Some(buf) = cached {
        cache.with(|b| {
            if let Ok(mut b) = b.try_borrow_mut() {
                *b = buf;
            }
        });
    }
    result
}

/// Runs `f(b)` for every `b < blocks`, in parallel: the calling thread takes blocks too, next to
/// `current_num_threads() - 1` helpers sent to rayon's pool, all pulling block numbers from one counter.
///
/// A decoding step calls a product about fifty times, each a millisecond or less, and a sleeping helper wakes
/// tens of microseconds late. So the caller never waits for a helper to start: it starts at once, and when the
/// blocks are done it closes the call, so that a helper arriving later leaves without touching `f`; it waits
/// only for helpers already inside, each finishing its last block. (A rayon scope waited for every spawned
/// helper to run, even one that found no block left: about a tenth of an int8 decoding step on 2 cores.)
pub(crate) fn par_blocks(blocks: usize, f: impl Fn(usize) + Sync) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// Set in `entry` once the caller has closed the call; the bits below count the helpers inside.
    const CLOSED: usize = 1 << (usize::BITS - 1);

    struct Shared {
        /// The next block to take.
        next: AtomicUsize,
        /// `CLOSED` and the number of helpers inside (allowed to call `f`).
        entry: AtomicUsize,
        /// Whether a helper's block panicked.
        panicked: AtomicBool,
        blocks: usize,
        /// `&f` with its lifetime erased: called only by helpers inside, which the caller waits for.
        f: *const (dyn Fn(usize) + Sync),
    }
    // SAFETY: `f` points to a `Sync` closure, called from other threads only while the caller (which owns it)
    // waits for them (see `Close`); the rest are atomics.
    unsafe impl Send for Shared {}
    unsafe impl Sync for Shared {}

    impl Shared {
        /// Takes blocks until none is left.
        ///
        /// # Safety
        /// `self.f` is alive: the caller's own thread, or a helper inside.
        unsafe fn work(&self) {
            loop {
                let b = self.next.fetch_add(1, Ordering::Relaxed);
                if b >= self.blocks {
                    break;
                }
                // SAFETY: the function's contract.
                unsafe { (*self.f)(b) };
            }
        }
    }

    /// Closes the call when the caller leaves (also by unwinding), then waits for the helpers inside.
    struct Close<'a>(&'a Shared);
    impl Drop for Close<'_> {
        fn drop(&mut self) {
            // No block is handed out after this (a helper inside finishes the one it holds).
            self.0.next.store(self.0.blocks, Ordering::Relaxed);
            let mut spins = 0u32;
            while self.0.entry.fetch_or(CLOSED, Ordering::AcqRel) & !CLOSED != 0 {
                spins += 1;
                if spins < 1 << 12 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }

    let helpers = rayon::current_num_threads().min(blocks).saturating_sub(1);
    if helpers == 0 {
        (0..blocks).for_each(f);
        return;
    }
    let f: &(dyn Fn(usize) + Sync) = &f;
    // SAFETY: only the lifetime changes; `Close` keeps the caller here until no helper can call it.
    let f: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
    let shared = Arc::new(Shared {
        next: AtomicUsize::new(0),
        entry: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
        blocks,
        f,
    });
    for _ in 0..helpers {
        let shared = Arc::clone(&shared);
        rayon::spawn(move || {
            let entered = shared
                .entry
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| {
                    (e & CLOSED == 0).then_some(e + 1)
                })
                .is_ok();
            if !entered {
                return;
            }
            // SAFETY: inside (counted in `entry`), so the caller waits in `Close` until this helper leaves.
            let run =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe { shared.work() }));
            if run.is_err() {
                shared.panicked.store(true, Ordering::Relaxed);
            }
            shared.entry.fetch_sub(1, Ordering::AcqRel);
        });
    }
    {
        let _close = Close(&shared);
        // SAFETY: the caller's own closure, alive for this whole block.
        unsafe { shared.work() };
    }
    assert!(
        !shared.panicked.load(Ordering::Relaxed),
        "a block of a parallel kernel panicked on a helper thread"
    );
}

/// A raw pointer that rayon tasks may share when each writes a disjoint part of what it points to.
struct SendPtr<T = f32>(*mut T);
// SAFETY: only used to write disjoint ranges from different tasks, while the owner is borrowed mutably.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}

impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::par_blocks;

    /// Every block runs exactly once, with helpers that arrive early, late or never, from outside a pool and
    /// from inside one (nested calls included).
    #[test]
    fn par_blocks_runs_every_block_once() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        for blocks in [0, 1, 2, 3, 7, 64, 1000] {
            for inside in [false, true] {
                let counts: Vec<AtomicUsize> = (0..blocks).map(|_| AtomicUsize::new(0)).collect();
                let run = || {
                    par_blocks(blocks, |b| {
                        counts[b].fetch_add(1, Ordering::Relaxed);
                        // A nested call, as a product started inside another's task would make.
                        if b % 97 == 0 {
                            let inner = AtomicUsize::new(0);
                            par_blocks(5, |_| {
                                inner.fetch_add(1, Ordering::Relaxed);
                            });
                            assert_eq!(inner.load(Ordering::Relaxed), 5);
                        }
                    })
                };
                if inside {
                    pool.install(run)
                } else {
                    run()
                }
                for (b, c) in counts.iter().enumerate() {
                    assert_eq!(
                        c.load(Ordering::Relaxed),
                        1,
                        "block {b} of {blocks}, in a pool: {inside}"
                    );
                }
            }
        }
    }

    /// A panicking block reaches the caller as a panic, wherever it ran, and the call still waits for the
    /// helpers inside before its closure goes away.
    #[test]
    fn par_blocks_reports_a_panicking_block() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for bad in [0, 5, 63] {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.install(|| {
                    par_blocks(64, |b| {
                        std::thread::sleep(std::time::Duration::from_micros(50));
                        assert_ne!(b, bad, "block {bad} fails");
                    })
                })
            }));
            assert!(result.is_err(), "block {bad} panicked");
        }
    }
}
