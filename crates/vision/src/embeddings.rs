//! `Blip2VisionEmbeddings`: patch convolution, CLS token and learned positions, with HF's
//! `interpolate_pos_encoding` for other image sizes.
//!
//! Keys (under `vision_model.embeddings.`): `class_embedding [1, 1, hidden]`,
//! `patch_embedding.{weight [hidden, 3, patch, patch], bias [hidden]}`, `position_embedding [1, num_positions, hidden]`.
//!
//! Deliberate choice: the bicubic resize of the position grid is written as two small matrix products
//! (`W_h · grid · W_wᵀ`) whose weights are torch's bicubic coefficients, instead of Burn's `interpolate` op. It is
//! the same arithmetic as torch's separable kernel, runs on every backend (Burn's op is not implemented
//! identically everywhere), and is differentiable, so fine-tuning at a new resolution trains the 224 table.

use burn::module::{Initializer, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::DType;

use crate::Blip2VisionConfig;

/// HF `Blip2VisionEmbeddings`.
#[derive(Module, Debug)]
pub struct Blip2VisionEmbeddings<B: Backend> {
    /// The CLS token, `[1, 1, hidden]`.
    pub class_embedding: Param<Tensor<B, 3>>,
    /// Patch convolution (kernel = stride = `patch_size`, with bias); a remainder of the image beyond a whole
    /// number of patches is dropped, as torch's valid convolution does.
    pub patch_embedding: Conv2d<B>,
    /// Learned positions, `[1, num_positions, hidden]` (row 0 is the CLS position).
    pub position_embedding: Param<Tensor<B, 3>>,
    /// Patch side.
    pub patch_size: usize,
}

impl<B: Backend> Blip2VisionEmbeddings<B> {
    /// Fresh (lazily initialised) embeddings: truncated-normal-like `N(0, initializer_range)` for the CLS token
    /// and positions as HF, Burn's default for the convolution.
    pub fn new(config: &Blip2VisionConfig, device: &B::Device) -> Self {
        let hidden = config.hidden_size;
        let normal = Initializer::Normal {
            mean: 0.0,
            std: config.initializer_range,
        };
        Self {
            class_embedding: normal.init([1, 1, hidden], device),
            patch_embedding: Conv2dConfig::new([3, hidden], [config.patch_size; 2])
                .with_stride([config.patch_size; 2])
                .with_bias(true)
                .init(device),
            position_embedding: normal.init([1, config.num_positions(), hidden], device),
            patch_size: config.patch_size,
        }
    }

    /// Embeds images.
    ///
    /// With `interpolate_pos_encoding`, the position grid is resized (bicubic) to the image's patch grid, as HF
    /// does for images of another size; otherwise the first `num_patches + 1` positions are added, as HF does
    /// (so the image must not have more patches than the table).
    ///
    /// # Shapes
    /// - `pixel_values`: `[batch, 3, height, width]` (any float dtype; cast to the weights' dtype)
    /// - returns `[batch, num_patches + 1, hidden]`, `num_patches = (height / patch) * (width / patch)`
    pub fn forward(
        &self,
        pixel_values: Tensor<B, 4>,
        interpolate_pos_encoding: bool,
    ) -> Tensor<B, 3> {
        let [batch, _, height, width] = pixel_values.dims();
        let weight_dtype = self.patch_embedding.weight.val().dtype();
        // [batch, num_patches, hidden]
        let patches =
            blip2_nn::ops::patch_embed(&self.patch_embedding, pixel_values.cast(weight_dtype));
        let [_, num_patches, hidden] = patches.dims();
        let class = self
            .class_embedding
            .val()
            .cast(weight_dtype)
            .expand([batch, 1, hidden]);
        let embeddings = Tensor::cat(vec![class, patches], 1); // [batch, num_patches + 1, hidden]

        let positions = if interpolate_pos_encoding {
            self.interpolate_pos_encoding(num_patches, height, width)
        } else {
            self.position_embedding.val()
        };
        let positions = positions.narrow(1, 0, num_patches + 1).cast(weight_dtype);
        embeddings + positions
    }

    /// HF's `interpolate_pos_encoding`: the CLS position unchanged, the square grid of patch positions resized
    /// with torch's bicubic (`align_corners = false`, A = -0.75, edge indices clamped) to
    /// `(height / patch, width / patch)`. Returns the table unchanged, as HF does, when the image is square and
    /// has as many patches as the table.
    ///
    /// # Shapes
    /// - returns `[1, new_h * new_w + 1, hidden]`
    pub fn interpolate_pos_encoding(
        &self,
        num_patches: usize,
        height: usize,
        width: usize,
    ) -> Tensor<B, 3> {
        let table = self.position_embedding.val();
        let [_, num_positions, hidden] = table.dims();
        if num_patches == num_positions - 1 && height == width {
            return table;
        }
        let device = table.device();
        let dtype = table.dtype();
        let side = ((num_positions - 1) as f64).sqrt().round() as usize;
        let (new_h, new_w) = (height / self.patch_size, width / self.patch_size);

        let class = table.clone().narrow(1, 0, 1);
        let grid = table.narrow(1, 1, num_positions - 1).cast(DType::F32); // [1, side*side, hidden]
        let grid = grid.reshape([side, side, hidden]); // [old_h, old_w, hidden]
        // Width pass (every source row), then height pass: torch's order.
        let w_w = bicubic_matrix::<B>(side, new_w, &device).unsqueeze_dim::<3>(0); // [1, new_w, old_w]
        let rows = w_w.matmul(grid); // [old_h, new_w, hidden]
        let w_h = bicubic_matrix::<B>(side, new_h, &device); // [new_h, old_h]
        let resized = w_h.matmul(rows.reshape([side, new_w * hidden])); // [new_h, new_w * hidden]
        let resized = resized.reshape([1, new_h * new_w, hidden]).cast(dtype);
        Tensor::cat(vec![class, resized], 1)
    }
}

/// torch's cubic convolution kernel with `A = -0.75` (the value `upsample_bicubic2d` uses).
fn cubic_weight(distance: f64) -> f64 {
    const A: f64 = -0.75;
    let x = distance.abs();
    if x <= 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// The `[out_size, in_size]` matrix of torch's 1-D bicubic resize with `align_corners = false` and no explicit
/// scale factor: output `o` samples the input at `(o + 0.5) * in/out - 0.5` from the four neighbours
/// `floor - 1 ..= floor + 2`, indices clamped to the edge (so clamped taps add up on the edge column).
pub(crate) fn bicubic_weights(in_size: usize, out_size: usize) -> Vec<f32> {
    let scale = in_size as f64 / out_size as f64;
    let mut matrix = vec![0.0f64; out_size * in_size];
    for o in 0..out_size {
        let source = (o as f64 + 0.5) * scale - 0.5;
        let floor = source.floor();
        let t = source - floor;
        for tap in -1i64..=2 {
            let index = (floor as i64 + tap).clamp(0, in_size as i64 - 1) as usize;
            matrix[o * in_size + index] += cubic_weight(t - tap as f64);
        }
    }
    matrix.into_iter().map(|w| w as f32).collect()
}

fn bicubic_matrix<B: Backend>(in_size: usize, out_size: usize, device: &B::Device) -> Tensor<B, 2> {
    let data = TensorData::new(bicubic_weights(in_size, out_size), [out_size, in_size]);
    Tensor::from_data(data, (device, DType::F32))
}

#[cfg(test)]
mod tests {
    use super::bicubic_weights;

    #[test]
    fn same_size_is_the_identity() {
        let w = bicubic_weights(5, 5);
        for o in 0..5 {
            for i in 0..5 {
                let want = if o == i { 1.0 } else { 0.0 };
                assert!(
                    (w[o * 5 + i] - want).abs() < 1e-7,
                    "[{o}, {i}] = {}",
                    w[o * 5 + i]
                );
            }
        }
    }

    #[test]
    fn rows_sum_to_one() {
        for (i, o) in [(16, 26), (16, 8), (3, 7), (7, 2)] {
            let w = bicubic_weights(i, o);
            for row in w.chunks(i) {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn matches_torch() {
        // F.interpolate(torch.eye(n)[None, None], size=(n, m), mode="bicubic", align_corners=False)[0, 0].T,
        // torch 2.15 (float32): upscaling 4 -> 6 and downscaling 5 -> 2, edge taps clamped.
        let up: [f32; 24] = [
            1.086_805_8,
            -0.086_805_58,
            0.0,
            0.0,
            0.5,
            0.593_75,
            -0.093_75,
            0.0,
            -0.086_805_34,
            0.943_287,
            0.160_879_6,
            -0.017_361_164,
            -0.017_360_926,
            0.160_879_6,
            0.943_287_1,
            -0.086_805_58,
            0.0,
            -0.093_75,
            0.593_75,
            0.5,
            0.0,
            0.0,
            -0.086_805_34,
            1.086_805_5,
        ];
        let down: [f32; 10] = [
            0.226_562_5,
            0.878_906_25,
            -0.105_468_75,
            0.0,
            0.0,
            0.0,
            0.0,
            -0.105_468_75,
            0.878_906_25,
            0.226_562_5,
        ];
        for (got, want) in [
            (bicubic_weights(4, 6), &up[..]),
            (bicubic_weights(5, 2), &down[..]),
        ] {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
            }
        }
    }
}
