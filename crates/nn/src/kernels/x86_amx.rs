//! bf16 × bf16 products on Intel AMX (Sapphire Rapids and later Xeons): `tdpbf16ps` multiplies a tile of
//! 16 rows × 32 bf16 by a tile of 16 input pairs × 16 columns into 16 × 16 f32 sums, 16 384 products per
//! instruction against `vdpbf16ps`'s 32.
//!
//! The operands' roles are those of `x86_bf16_rows`: the weight (PyTorch's `[out, in]`) is read in place, 16
//! output rows of 32 inputs per tile, and the activation rows are packed once per call into panels of 16 rows
//! by input pairs (`x86_bf16::pack`), which is the layout AMX wants for its second operand. A tile of sums is
//! therefore 16 outputs × 16 rows, stored output-major into a per-task buffer and transposed into the
//! row-major outputs at the end (`x86_bf16_rows::write_out`, which adds the bias, rounds bf16 outputs and can
//! apply the GELU). Four tiles of sums (32 outputs × 32 rows) take their two weight tiles and two row tiles per
//! step of 32 inputs; the inputs go in runs ([`RUN_COPIED`], [`RUN_IN_PLACE`]), the sums staying in the tiles
//! over a run and in the buffer between runs. With many rows ([`PACK_MIN_ROWS`]) each task first copies its run
//! of weight rows tile by tile, so that every weight tile is one contiguous KiB rather than 16 rows `k` apart,
//! and fetches the next run's rows into L2 while the tiles work.
//!
//! Like `vdpbf16ps`, `tdpbf16ps` takes subnormal inputs as zero and flushes subnormal results; the products
//! of two bf16 values are exact in f32, so only the order of the f32 additions differs from the other paths.
//!
//! Linux gives a process the AMX tile state only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); [`enabled`]
//! asks once and reports AMX missing when the kernel refuses or the OS is not Linux.

use std::arch::asm;
use std::arch::x86_64::{__cpuid_count, _MM_HINT_T1, _mm_prefetch};
use std::cell::RefCell;
use std::sync::OnceLock;

use super::x86_bf16::{Operands, PANEL};

/// Inputs per run when the weight tiles are copied (from [`PACK_MIN_ROWS`] rows): the sums go back to the buffer
/// between runs; over a run, each pair of weight tiles (16 KiB) stays in L1 while it meets every pair of row
/// panels, streamed from L2. ViT-g's 8-layer bf16 forward took 112-120 ms against 124-126 ms with runs of 1024
/// and blocks of 64 at batch 1, and 414-418 ms against 486-497 ms at batch 4; runs of 512 (blocks of 128) took
/// 125-128 ms and 437-457 ms (Intel Xeon with AMX, the runs alternated).
pub(super) const RUN_COPIED: usize = 256;

/// Inputs per run when the weight tiles are read in place (fewer rows, where reading the weight bounds the
/// product): OPT-2.7b's 32-token bf16 prefill (8 layers) took 80-82 ms with runs of 1024 and blocks of 64,
/// 79 ms with runs of 2048, 84 ms with 512 and 94-97 ms with runs of 256 and blocks of 128 (Intel Xeon with AMX).
pub(super) const RUN_IN_PLACE: usize = 1024;

/// Outputs per task: four pairs of weight tiles when they are copied, two when they are read in place.
const BLOCK_COPIED: usize = 128;
const BLOCK_IN_PLACE: usize = 64;

/// Rows from which each task copies its run of weight rows tile by tile (1 KiB per tile, read contiguously)
/// before the tiles sweep the row panels; with fewer rows the weight tiles are read in place (16 rows `k`
/// apart). At 257 rows the copy made ViT-g's products 1.3-1.5x faster (4.4-4.9 ms against 3.2-3.3 ms for
/// `fc1`); at 32 rows, where reading the weight bounds the product, it changed nothing (Intel Xeon with AMX,
/// docs/performance.md).
const PACK_MIN_ROWS: usize = 64;

thread_local! {
    /// The caller's packed activations, reused across calls (as `x86_bf16_rows` keeps its own).
    static ROWS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// Per task: the f32 sums of a block, output-major (`[j - j0][row]`).
    static SUMS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per task: one run of the block's weight rows, tile by tile (`[tile][step][16 rows][32 inputs]`).
    static WEIGHT: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// Whether this process may run AMX bf16 products: the CPU has AMX-TILE and AMX-BF16 (CPUID leaf 7), Linux
/// granted the tile state, and the environment does not set `BLIP2_CPU_AMX=off`. Asked once per process.
pub(super) fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        let off =
            std::env::var("BLIP2_CPU_AMX").is_ok_and(|v| matches!(v.trim(), "off" | "0" | "false"));
        !off && cpu_has_amx_bf16() && request_tile_state()
    })
}

/// CPUID leaf 7, sub-leaf 0, EDX: bit 22 AMX-BF16, bit 24 AMX-TILE.
fn cpu_has_amx_bf16() -> bool {
    // CPUID exists on every x86-64 CPU; leaf 0 gives the highest leaf.
    let max_leaf = __cpuid_count(0, 0).eax;
    if max_leaf < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    edx & (1 << 22) != 0 && edx & (1 << 24) != 0
}

/// Asks Linux for the AMX tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), which
/// then holds for every thread of the process; `false` when refused.
#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: a plain system call that changes only the process's permitted extended states; `syscall`
    // clobbers rcx and r11.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// Whether [`product_amx`] takes a product of `k` inputs and `n` outputs: whole tiles of inputs (the weight is
/// read in place, 32 inputs per row of a tile) and pairs of tiles of outputs.
pub(super) fn fits(k: usize, n: usize) -> bool {
    k > 0 && k.is_multiple_of(32) && n.is_multiple_of(32)
}

/// The tile configuration: palette 1, eight tiles of 16 rows × 64 bytes.
#[repr(C, align(64))]
pub(super) struct TileConfig(pub(super) [u8; 64]);

pub(super) const CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64;
        c[48 + t] = 16;
        t += 1;
    }
    TileConfig(c)
};

/// `out = a W^T (+ bias)` for every row and output of `op` (`n` outputs), threaded over blocks of 64
/// outputs; bf16 outputs at `op.out16` when it is not null.
///
/// # Safety
/// [`enabled`] holds and the CPU has AVX-512 F/BW/VL; [`fits`]`(op.k, n)`; the pointers of `op` hold
/// `[m, k]`, `[n, k]` (row stride `op.w_rs`) and `[m, n]` values, `op.m > 0`, a non-null bias holds `n`
/// values, and no other thread touches the outputs.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn product_amx(op: Operands, n: usize) {
    let Operands { m, k, .. } = op;
    debug_assert!(m > 0 && fits(k, n));
    // Pairs of panels of 16 rows (the rows past `m` repeat row `m - 1`; their sums are not written).
    let panels = m.div_ceil(PANEL).next_multiple_of(2);
    let pairs = k / 2;
    super::with_cached_buffer(&ROWS, panels * pairs * PANEL, |rows_ptr| {
        super::par_blocks(panels, |q| {
            let op = &op;
            // SAFETY: rows `16q..` of `m` hold `k` inputs at stride `a_rs` (rows past `m` repeat row `m - 1`);
            // panel `q` of the buffer holds `pairs` pairs of 16 lanes.
            unsafe {
                super::x86_bf16::pack(
                    op.a,
                    op.a_rs,
                    q * PANEL,
                    m,
                    1,
                    0,
                    k,
                    pairs,
                    rows_ptr.get().add(q * pairs * PANEL),
                )
            };
        });
        let block_len = if m >= PACK_MIN_ROWS {
            BLOCK_COPIED
        } else {
            BLOCK_IN_PLACE
        };
        super::par_blocks(n.div_ceil(block_len), |b| {
            SUMS.with(|s| {
                let buf = &mut *s.borrow_mut();
                let stride = panels * PANEL;
                let (j0, j1) = (b * block_len, ((b + 1) * block_len).min(n));
                // Every tile's rows start on a cache line (a tile row across two lines loads at a third of the
                // speed): the sums from a 64-byte boundary, rows `stride * 4` bytes (a multiple of 64) apart.
                let len = (j1 - j0) * stride;
                if buf.len() < len + 16 {
                    buf.resize(len + 16, 0.0);
                }
                let at = buf.as_ptr().align_offset(64);
                let sums = &mut buf[at..at + len];
                // SAFETY: the caller's promise; the panels were packed above; the sums hold this block.
                unsafe {
                    block(op, rows_ptr.get(), pairs, panels, j0, j1, sums.as_mut_ptr());
                    super::x86_bf16_rows::write_out(op, sums, stride, &[], m, j0, j1);
                }
            })
        });
    })
}

/// The sums of outputs `j0..j1` (a multiple of 32 of them) for the rows of the `panels` packed panels, into
/// `sums` (`[j - j0][row]`, row stride `panels * 16`).
///
/// # Safety
/// As [`product_amx`]; `rows` holds `panels` (even) panels of `pairs = k / 2` pairs.
unsafe fn block(
    op: Operands,
    rows: *const u32,
    pairs: usize,
    panels: usize,
    j0: usize,
    j1: usize,
    sums: *mut f32,
) {
    let stride = panels * PANEL;
    let pack_w = op.m >= PACK_MIN_ROWS;
    let run = if pack_w { RUN_COPIED } else { RUN_IN_PLACE };
    let mut wbuf = if pack_w {
        WEIGHT.with(|b| std::mem::take(&mut *b.borrow_mut()))
    } else {
        Vec::new()
    };
    if pack_w && wbuf.len() < (j1 - j0) * run + 32 {
        wbuf.resize((j1 - j0) * run + 32, 0);
    }
    let wb = {
        let p = wbuf.as_mut_ptr();
        p.wrapping_add(p.align_offset(64))
    };
    // SAFETY: the configuration is a valid palette-1 configuration (the tile state was granted: `enabled`).
    unsafe { asm!("ldtilecfg [{0}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly)) };
    let mut l0 = 0;
    while l0 < op.k {
        let l1 = (l0 + run).min(op.k);
        let steps = (l1 - l0) / 32;
        if pack_w {
            // Tile `t` (outputs `j0 + 16t..`), step `s`: its 16 rows' 32 inputs from `l0 + 32s`, 1 KiB.
            for t in 0..(j1 - j0) / 16 {
                for s in 0..steps {
                    for r in 0..16 {
                        // SAFETY: row `j0 + 16t + r < j1` holds inputs `l0 + 32s..+32 <= l1`; the buffer
                        // holds `(j1 - j0) * run` values from `wb` (`steps * 32 <= run`).
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                op.w.add((j0 + 16 * t + r) * op.w_rs + l0 + 32 * s)
                                    .cast::<u16>(),
                                wb.add(((t * steps + s) * 16 + r) * 32),
                                32,
                            )
                        };
                    }
                }
            }
        }
        // While this run's tiles are computed, the next run's weight rows are fetched into L2 a few lines
        // per call of `tiles`, so that reading the weight from memory overlaps the products (ViT-g's four
        // products at 257 and 1028 rows: 41.0 ms against 42.3-43.3 ms without; a hint into L1 was no better).
        let next = (l1, (l1 + run).min(op.k));
        let row_lines = (next.1 - next.0) / 32;
        let fetch = if pack_w { (j1 - j0) * row_lines } else { 0 };
        let per_call = fetch.div_ceil((j1 - j0) / 32 * (panels / 2));
        let mut line = 0;
        let mut j = j0;
        while j < j1 {
            for q in (0..panels).step_by(2) {
                let end = (line + per_call).min(fetch);
                while line < end {
                    let (r, c) = (line / row_lines, line % row_lines);
                    // SAFETY: row `j0 + r < j1` holds inputs `next.0 + 32c..+32 <= k` (and a prefetch does not
                    // fault).
                    unsafe {
                        _mm_prefetch::<_MM_HINT_T1>(
                            op.w.add((j0 + r) * op.w_rs + next.0 + c * 32).cast(),
                        )
                    };
                    line += 1;
                }
                // The two weight tiles: copied (rows 64 bytes apart, 1 KiB per step) or in place (rows
                // `2 w_rs` bytes apart, 64 bytes per step).
                let weight = if pack_w {
                    let w0 = wb
                        .wrapping_add((j - j0) / 16 * steps * 512)
                        .cast::<u8>()
                        .cast_const();
                    WeightTiles {
                        w0,
                        w1: w0.wrapping_add(steps * 1024),
                        stride: 64,
                        step: 1024,
                    }
                } else {
                    let w0 = op.w.wrapping_add(j * op.w_rs + l0).cast::<u8>();
                    let stride = op.w_rs * 2;
                    WeightTiles {
                        w0,
                        w1: w0.wrapping_add(16 * stride),
                        stride,
                        step: 64,
                    }
                };
                // SAFETY: outputs `j..j + 32` hold inputs `l0..l1` at stride `w_rs`; panels `q, q + 1` hold
                // pairs `l0 / 2..l1 / 2`; the four tiles of sums lie in this task's buffer.
                unsafe {
                    tiles(
                        weight,
                        rows.add((q * pairs + l0 / 2) * PANEL).cast(),
                        pairs * PANEL * 4,
                        steps,
                        sums.add((j - j0) * stride + q * PANEL),
                        stride * 4,
                        l0 == 0,
                    )
                };
            }
            j += 32;
        }
        l0 = l1;
    }
    if pack_w {
        WEIGHT.with(|b| *b.borrow_mut() = wbuf);
    }
    // SAFETY: gives the tile state back (the next task configures it again).
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// Where the two weight tiles of a step are: at `w0` and `w1`, rows `stride` bytes apart, the next step's
/// `step` bytes further.
#[derive(Clone, Copy)]
pub(super) struct WeightTiles {
    pub w0: *const u8,
    pub w1: *const u8,
    pub stride: usize,
    pub step: usize,
}

/// Four tiles of sums: the two weight tiles of `w` times the two panels from `b` (`panel_bytes` apart), over
/// `steps` steps of 32 inputs, into `sums` (row stride `sums_stride` bytes: tile `(a, p)` at output row `16a`,
/// column `16p`); added to what `sums` holds unless `first`.
///
/// # Safety
/// The tiles are configured ([`CONFIG`]); every address read or written lies in its operand; `steps > 0`.
#[inline]
pub(super) unsafe fn tiles(
    w: WeightTiles,
    b: *const u8,
    panel_bytes: usize,
    steps: usize,
    sums: *mut f32,
    sums_stride: usize,
    first: bool,
) {
    let c10 = sums.wrapping_byte_add(16 * sums_stride);
    // SAFETY: the caller's promise: tmm0..3 the sums (outputs 0-15 × rows 0-15, 0-15 × 16-31, 16-31 × 0-15,
    // 16-31 × 16-31), tmm4/5 the two weight tiles, tmm6/7 the two row tiles.
    unsafe {
        asm!(
            "test {first:e}, {first:e}",
            "jz 3f",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "jmp 4f",
            "3:",
            "tileloadd tmm0, [{c00} + {cs}*1]",
            "tileloadd tmm1, [{c00} + {cs}*1 + 64]",
            "tileloadd tmm2, [{c10} + {cs}*1]",
            "tileloadd tmm3, [{c10} + {cs}*1 + 64]",
            "4:",
            "tileloadd tmm4, [{w0} + {ws}*1]",
            "tileloadd tmm6, [{b0} + {bs}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {bs}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{w1} + {ws}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {w0}, {wstep}",
            "add {w1}, {wstep}",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {steps}",
            "jnz 4b",
            "tilestored [{c00} + {cs}*1], tmm0",
            "tilestored [{c00} + {cs}*1 + 64], tmm1",
            "tilestored [{c10} + {cs}*1], tmm2",
            "tilestored [{c10} + {cs}*1 + 64], tmm3",
            first = in(reg) u32::from(first),
            c00 = in(reg) sums,
            c10 = in(reg) c10,
            cs = in(reg) sums_stride,
            w0 = inout(reg) w.w0 => _,
            w1 = inout(reg) w.w1 => _,
            ws = in(reg) w.stride,
            wstep = in(reg) w.step,
            b0 = inout(reg) b => _,
            b1 = inout(reg) b.wrapping_add(panel_bytes) => _,
            bs = in(reg) 64usize,
            steps = inout(reg) steps => _,
            options(nostack)
        );
    }
}
