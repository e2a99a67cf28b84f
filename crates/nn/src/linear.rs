//! Applying a PyTorch-layout `Linear` to activations of any rank without copying its weight.
//!
//! Every blip2 model stores linear weights as HF does, `[out, in]` (`LinearLayout::Col`), so `weight.val()` is
//! a transposed view. Burn 0.21's `linear` first reshapes the weight to the input's rank (`[1, in, out]` for a
//! `[batch, seq_len, in]` input), and reshaping a transposed view makes a contiguous copy of the whole weight on
//! every call: for ViT-g's `fc1` (1408 -> 6144, 257 tokens) on flex that took 66 ms against 25 ms for the same
//! product on 2-D operands (2-core EPYC, release). Flattening the leading dimensions keeps both operands 2-D,
//! and flex's gemm reads the transposed view in place.
//!
//! On flex, bf16, f16 and int8 weights (and f32 ones at decoding sizes) go through [`crate::kernels`], which read
//! the weight once in its stored dtype; Burn's own product converts the whole weight to f32 on every call.

use burn::module::{Module, ModuleMapper, Param};
use burn::nn::Linear;
use burn::prelude::{Backend, Tensor};
use burn::tensor::TensorData;
use burn::tensor::quantization::{
    QTensorPrimitive, QuantLevel, QuantParam, QuantScheme, QuantValue,
};

use crate::Error;
use crate::kernels::quantize_q8;

/// Outputs per int8 scale when nothing else is asked (see docs/numerics.md for the measured choice: against 64,
/// half the scales, the same logits error on a real-size random OPT-2.7b, and a decoding step 8-9% faster on an
/// Intel Xeon with AMX, where reading the scales and quantizing the activations per group cost that much).
pub const DEFAULT_Q8_GROUP: usize = 128;

/// `linear.forward(x)` for `x` of shape `[..., in]`, computed on a 2-D view `[prod(...), in]`.
///
/// # Shapes
/// - `x`: `[d0, ..., in]`
/// - returns `[d0, ..., out]`
pub fn linear_forward<B: Backend, const D: usize>(
    linear: &Linear<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    linear_rows(linear, x, false)
}

/// `Activation::Gelu.forward(linear_forward(linear, x))`: the exact (erf) GELU of a `Linear`'s outputs. On flex in
/// bf16 on Intel AMX the GELU is applied as the product stores its outputs (the same bits: each output rounded
/// to bf16, its GELU computed in f32 and rounded), which saves a pass over ViT-g's `fc1` outputs; elsewhere the
/// two steps run one after the other.
///
/// # Shapes
/// - `x`: `[d0, ..., in]`
/// - returns `[d0, ..., out]`
pub fn linear_gelu_forward<B: Backend, const D: usize>(
    linear: &Linear<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    linear_rows(linear, x, true)
}

/// [`linear_forward`] (and with `gelu`, the exact GELU of its outputs) on `x` flattened to `[rows, in]`, through
/// the flex kernels where they take it, shaped back to `[d0, ..., out]`.
fn linear_rows<B: Backend, const D: usize>(
    linear: &Linear<B>,
    x: Tensor<B, D>,
    gelu: bool,
) -> Tensor<B, D> {
    let act = |y: Tensor<B, D>| {
        if gelu {
            crate::Activation::Gelu.forward(y)
        } else {
            y
        }
    };
    if D < 2 {
        return act(linear.forward(x));
    }
    let dims = x.dims();
    let rows: usize = dims[..D - 1].iter().product();
    let flat = x.reshape([rows, dims[D - 1]]); // [rows, in]
    let act2 = |y: Tensor<B, 2>| {
        if gelu {
            crate::Activation::Gelu.forward(y)
        } else {
            y
        }
    };
    #[cfg(feature = "flex")]
    let out = match crate::linear_flex::try_linear(linear, flat, gelu) {
        Ok((out, fused)) if fused => out,
        Ok((out, _)) => act2(out),
        Err(flat) => act2(linear.forward(flat)),
    }; // [rows, out]
    #[cfg(not(feature = "flex"))]
    let out = act2(linear.forward(flat)); // [rows, out]
    let mut shape = dims;
    shape[D - 1] = out.dims()[1];
    out.reshape(shape)
}

/// `x · weightᵀ` for `x: [m, k]` and `weight: [n, k]`: a language-model head tied to its embedding table. On
/// flex a row-major table goes through [`crate::kernels`] (Burn's bf16 product converts the whole table to f32
/// on every call); elsewhere it is `x.matmul(weight.transpose())`.
pub fn matmul_nt<B: Backend>(x: Tensor<B, 2>, weight: &Tensor<B, 2>) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    let x = match crate::linear_flex::try_matmul_nt(x, weight) {
        Ok(out) => return out,
        Err(x) => x,
    };
    x.matmul(weight.clone().transpose())
}

/// The int8 group to use for a weight with `n` outputs when `group` is asked: `group` when it divides `n`, else
/// the largest smaller multiple of 16 that does; `None` when no multiple of 16 divides `n`.
pub fn q8_group_for(n: usize, group: usize) -> Option<usize> {
    (1..=group.min(240) / 16)
        .rev()
        .map(|g| g * 16)
        .find(|g| n.is_multiple_of(*g))
}

/// Token embeddings read from an int8 `Linear` weight that holds the embedding table (OPT's tied head loaded in
/// int8, which then replaces the float table): for each id `t`, output `t` of the `[dim, vocab]` weight,
/// dequantized as every int8 product sees it, `q * scale` in f32.
///
/// On flex the values are read where they are; elsewhere the weight is dequantized whole first, as Burn does for
/// every int8 product on those backends.
///
/// # Shapes
/// - `weight`: `[dim, vocab]`, int8 ([`quantize_linear`]'s scheme)
/// - `ids`: `[batch, len]`, each in `0..vocab`
/// - returns `[batch, len, dim]`, f32
///
/// # Panics
/// On flex, when an id is outside `0..vocab` (callers check ids first, as `burn::nn::Embedding` needs too).
pub fn embed_from_q8<B: Backend>(
    weight: &Tensor<B, 2>,
    ids: Tensor<B, 2, burn::tensor::Int>,
) -> Tensor<B, 3> {
    let [batch, len] = ids.dims();
    let dim = weight.dims()[0];
    let flat = ids.reshape([batch * len]);
    #[cfg(feature = "flex")]
    let flat = match crate::linear_flex::try_q8_columns(weight, flat) {
        Ok(rows) => return rows.reshape([batch, len, dim]),
        Err(flat) => flat,
    };
    weight
        .clone()
        .dequantize()
        .cast(burn::tensor::DType::F32)
        .select(1, flat) // [dim, batch * len]
        .transpose()
        .reshape([batch, len, dim])
}

#[cfg(feature = "flex")]
fn is_flex<B: Backend>() -> bool {
    std::any::TypeId::of::<B>() == std::any::TypeId::of::<burn::backend::Flex>()
}

/// Burn's block-quantized int8 tensor `[k, n]` (`D` = 2) for these values, held `[n, k]`, and scales (see
/// [`crate::kernels::Q8Weight`]), in the store backend `B` uses by default. On flex the tensor is a transposed
/// view of the values, kept where they are; other backends get a `[k, n]` copy.
///
/// # Panics
/// When `D` is not 2 (the callers' bug).
pub(crate) fn q8_tensor<B: Backend, const D: usize>(
    values: Vec<i8>,
    scales: Vec<f32>,
    k: usize,
    n: usize,
    group: usize,
    device: &B::Device,
) -> Tensor<B, D> {
    assert_eq!(D, 2, "an int8 weight is [in, out]");
    let scheme = QuantScheme::default()
        .with_value(QuantValue::Q8S)
        .with_level(QuantLevel::block([1, group as u8]))
        .with_param(QuantParam::F32);
    // flex holds int8 values unpacked, next to a vector of their scales: its tensor is made of the two buffers
    // themselves, the values as the transposed view of `[n, k]` that the kernels read (Burn's dequantization
    // and `into_data` follow the view). Through `TensorData`, Burn would append the scales to the values'
    // buffer and flex copy them back out, leaving the values' buffer as large as both: 0.4 GB unused for
    // OPT-6.7b in int8.
    #[cfg(feature = "flex")]
    if is_flex::<B>() {
        use burn::backend::flex::{FlexQTensor, FlexTensor};
        use burn::tensor::TensorPrimitive;
        use burn::tensor::quantization::QuantStore;
        let mut values = values;
        values.shrink_to_fit();
        let tensor = FlexTensor::from_data(TensorData::new(values, [n, k])).transpose(0, 1);
        let q = FlexQTensor::new(tensor, scheme.with_store(QuantStore::Native), scales);
        let q = crate::linear_flex::downcast::<FlexQTensor, B::QuantizedTensorPrimitive>(q)
            .expect("B is flex");
        return Tensor::from_primitive(TensorPrimitive::QFloat(q));
    }
    // `[k, n]`, with room for the scales after the values, so that Burn appends them in place (see
    // `q8_values`).
    let mut kn = crate::kernels::q8_values(values.len(), scales.len());
    for (j, row) in values.chunks_exact(k.max(1)).enumerate() {
        for (l, &v) in row.iter().enumerate() {
            kn[l * n + j] = v;
        }
    }
    drop(values);
    let store = <B::QuantizedTensorPrimitive as QTensorPrimitive>::default_scheme().store;
    Tensor::from_data(
        TensorData::quantized(kn, [k, n], scheme.with_store(store), &scales),
        device,
    )
}

/// The same `Linear` with its weight quantized to int8: symmetric, one f32 scale per `group` consecutive
/// outputs of each input (Burn's block `[1, group]` of the `[in, out]` weight). Every backend runs it (Burn
/// dequantizes before its product); flex runs it through [`crate::kernels`]. The bias stays as it is.
///
/// # Errors
/// [`Error::Quantization`] when `group` is not a multiple of 16 (at most 240) dividing the output size.
pub fn quantize_linear<B: Backend>(linear: Linear<B>, group: usize) -> Result<Linear<B>, Error> {
    let [k, n] = linear.weight.dims();
    if group == 0 || !group.is_multiple_of(16) || group > 240 || n % group != 0 {
        return Err(Error::Quantization {
            key: "weight".to_string(),
            reason: format!(
                "the group ({group}) must be a multiple of 16, at most 240, dividing {n} outputs"
            ),
        });
    }
    let device = linear.weight.device();
    let weight = linear.weight.val();
    let w: Vec<f32> = weight
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("converted to f32");
    let (values, scales) = quantize_q8(&w, k, n, group);
    let id = linear.weight.id;
    let tensor = q8_tensor::<B, 2>(values, scales, k, n, group, &device);
    Ok(Linear {
        weight: Param::initialized(id, tensor),
        bias: linear.bias,
    })
}

/// Every `Linear` weight of `module` in int8 ([`quantize_linear`]'s scheme), with `group` outputs per scale
/// where it divides the output size, else the largest multiple of 16 that does ([`q8_group_for`]); a weight with
/// no such divisor stays as it is. For a model read from disk prefer
/// [`crate::loader::LoadOptions::int8_group`], which never holds the float weights of the whole model.
/// Returns the module and how many weights were quantized.
pub fn quantize_linears<B: Backend, M: Module<B>>(module: M, group: usize) -> (M, usize) {
    let mut mapper = QuantizeLinears {
        group,
        containers: Vec::new(),
        count: 0,
    };
    let module = module.map(&mut mapper);
    (module, mapper.count)
}

struct QuantizeLinears {
    group: usize,
    containers: Vec<String>,
    count: usize,
}

impl<B: Backend> ModuleMapper<B> for QuantizeLinears {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.containers.push(format!("{container_type}.{name}"));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.containers.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if D != 2
            || self
                .containers
                .last()
                .is_none_or(|c| c != "Struct:Linear.weight")
        {
            return param;
        }
        let tensor = param.val();
        if matches!(tensor.dtype(), burn::tensor::DType::QFloat(_)) {
            return param;
        }
        let dims = tensor.dims();
        let (k, n) = (dims[0], dims[1]);
        let Some(group) = q8_group_for(n, self.group) else {
            return param;
        };
        let device = tensor.device();
        let w: Vec<f32> = tensor
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("converted to f32");
        let (values, scales) = quantize_q8(&w, k, n, group);
        self.count += 1;
        Param::initialized(
            param.id,
            q8_tensor::<B, D>(values, scales, k, n, group, &device),
        )
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::backend::Flex;
    use burn::backend::flex::FlexQTensor;
    use burn::tensor::TensorPrimitive;

    use super::*;

    /// The int8 values of a flex int8 tensor (the `[n, k]` buffer of its transposed view), and where they live.
    fn values_of(tensor: Tensor<Flex, 2>) -> (Vec<i8>, *const i8) {
        let TensorPrimitive::QFloat(q) = tensor.into_primitive() else {
            panic!("an int8 tensor")
        };
        let q: FlexQTensor = q;
        let values = q.tensor().storage::<i8>();
        (values.to_vec(), values.as_ptr())
    }

    /// The int8 values stay in the buffer quantization made, and no room is left after them: no copy of the
    /// weight as it becomes a tensor, and no memory held beyond the values and their scales.
    #[test]
    fn int8_tensors_keep_the_quantized_buffer() {
        let (k, n, group) = (48, 96, 32);
        let w: Vec<f32> = (0..k * n).map(|i| (i % 13) as f32 - 6.0).collect();
        for (values, scales) in [
            quantize_q8(&w, k, n, group),
            crate::kernels::quantize_q8_transposed(&w, n, k, group),
        ] {
            assert_eq!(values.capacity(), values.len(), "no room after the values");
            let buffer = values.clone();
            let ptr = buffer.as_ptr();
            let tensor =
                q8_tensor::<Flex, 2>(buffer, scales.clone(), k, n, group, &Default::default());
            let TensorPrimitive::QFloat(q) = tensor.clone().into_primitive() else {
                panic!("an int8 tensor")
            };
            let q: FlexQTensor = q;
            assert_eq!(q.scales(), &scales[..]);
            let held = values_of(tensor.clone());
            assert_eq!(held.1, ptr);
            assert_eq!(held.0, values);
            // The kernels read it as it is.
            assert!(crate::linear_flex::kernels_read_q8(&tensor));
            // A buffer with room (another backend's) is shrunk in place of being kept as large.
            let roomy = crate::kernels::q8_values(values.len(), scales.len());
            let tensor =
                q8_tensor::<Flex, 2>(roomy, scales.clone(), k, n, group, &Default::default());
            assert_eq!(values_of(tensor).0, vec![0; values.len()]);
        }
    }

    /// Through Burn's own path (any other backend), the values and scales come back as they went in.
    #[test]
    fn int8_tensors_through_tensor_data_keep_values_and_scales() {
        let (k, n, group) = (32, 64, 16);
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 7) % 23) as f32 - 11.0).collect();
        let (values, scales) = quantize_q8(&w, k, n, group);
        let tensor = q8_tensor::<burn::backend::NdArray, 2>(
            values.clone(),
            scales.clone(),
            k,
            n,
            group,
            &Default::default(),
        );
        let flex = q8_tensor::<Flex, 2>(values, scales, k, n, group, &Default::default());
        let a: Vec<f32> = tensor
            .clone()
            .dequantize()
            .into_data()
            .to_vec()
            .expect("f32");
        let b: Vec<f32> = flex.clone().dequantize().into_data().to_vec().expect("f32");
        assert_eq!(a, b);
        // Both are the weight the kernels multiply by: `values[j, l] * scales[l, j / group]` at `[l, j]`.
        let (values, scales) = quantize_q8(&w, k, n, group);
        let want = crate::kernels::dequantize_q8(
            &crate::kernels::Q8Weight {
                values: &values,
                scales: &scales,
                group,
            },
            k,
            n,
        );
        assert_eq!(a, want);
        // Burn's `into_data` of flex's view gives the `[k, n]` values Burn's layout describes.
        let data = flex.into_data();
        let other = tensor.into_data();
        assert_eq!(data.shape, other.shape);
        assert_eq!(data.as_bytes(), other.as_bytes());
    }

    /// Lookups from an int8 weight: flex reads the values in place, other backends dequantize the whole weight;
    /// both give `q * scale` for output `t` of every input.
    #[test]
    fn lookups_from_an_int8_weight_are_its_dequantized_outputs() {
        use burn::backend::NdArray;
        use burn::tensor::Int;
        let (k, n, group) = (24, 96, 32);
        let w: Vec<f32> = (0..k * n)
            .map(|i| ((i * 37) % 101) as f32 / 7.0 - 7.0)
            .collect();
        let (values, scales) = quantize_q8(&w, k, n, group);
        let ids = vec![95i64, 0, 31, 32, 64, 7];
        let mut want = Vec::new();
        for &t in &ids {
            let t = t as usize;
            want.extend(
                (0..k).map(|l| f32::from(values[t * k + l]) * scales[l * (n / group) + t / group]),
            );
        }
        let flex = q8_tensor::<Flex, 2>(
            values.clone(),
            scales.clone(),
            k,
            n,
            group,
            &Default::default(),
        );
        let flex_ids = Tensor::<Flex, 2, Int>::from_data(
            TensorData::new(ids.clone(), [2, 3]),
            &Default::default(),
        );
        let got: Vec<f32> = embed_from_q8(&flex, flex_ids)
            .into_data()
            .to_vec()
            .expect("f32");
        assert_eq!(got, want);
        let other = q8_tensor::<NdArray, 2>(values, scales, k, n, group, &Default::default());
        let other_ids =
            Tensor::<NdArray, 2, Int>::from_data(TensorData::new(ids, [2, 3]), &Default::default());
        let out = embed_from_q8(&other, other_ids);
        assert_eq!(out.dims(), [2, 3, k]);
        let got: Vec<f32> = out.into_data().to_vec().expect("f32");
        assert_eq!(got, want);
    }
}
