//! The flex fast path of [`crate::linear_forward`]: f32, bf16, f16 and int8 weights go
//! through [`crate::kernels`] instead of Burn's matmul, which converts or dequantizes the whole weight on every
//! call. Every other backend (and `Autodiff<Flex>`, so training keeps its gradients) takes Burn's path.

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::mem::ManuallyDrop;

use burn::backend::Flex;
use burn::backend::flex::{FlexQTensor, FlexTensor};
use burn::nn::Linear;
use burn::prelude::{Backend, Tensor};
use burn::tensor::quantization::{QuantLevel, QuantValue};
use burn::tensor::{DType, TensorData, TensorPrimitive};
use half::{bf16, f16};

use crate::kernels::{self, DenseWeight, KernelPath, Q8Weight};

/// `linear.forward(x)` for a 2-D `x: [rows, in]` through the kernels when `B` is flex and the weight is one
/// they handle; gives `x` back otherwise. With `gelu`, the kernel may also apply the exact GELU as it stores
/// the outputs (bf16 on AMX: `kernels::linear_bf16_rounded_fresh`); the flag returned says whether it did.
pub(crate) fn try_linear<B: Backend>(
    linear: &Linear<B>,
    x: Tensor<B, 2>,
    gelu: bool,
) -> Result<(Tensor<B, 2>, bool), Tensor<B, 2>> {
    if TypeId::of::<B>() != TypeId::of::<Flex>() {
        return Err(x);
    }
    let bias = linear
        .bias
        .as_ref()
        .map(|b| b.val().into_primitive().tensor());
    let TensorPrimitive::Float(xp) = x.into_primitive() else {
        unreachable!("a float tensor's primitive is float")
    };
    let xf = downcast::<B::FloatTensorPrimitive, FlexTensor>(xp).expect("B is Flex");
    let bias = bias.map(|b| downcast::<B::FloatTensorPrimitive, FlexTensor>(b).expect("B is Flex"));
    let y = with_flex_primitive(&linear.weight, |weight| {
        if gelu && let Some(y) = gelu_product(&xf, weight, bias.as_ref()) {
            return Some((y, true));
        }
        flex_linear(&xf, weight, bias.as_ref()).map(|y| (y, false))
    });
    match y.flatten() {
        Some((y, fused)) => {
            let y = downcast::<FlexTensor, B::FloatTensorPrimitive>(y).expect("B is Flex");
            Ok((Tensor::from_primitive(TensorPrimitive::Float(y)), fused))
        }
        None => {
            let xp = downcast::<FlexTensor, B::FloatTensorPrimitive>(xf).expect("B is Flex");
            Err(Tensor::from_primitive(TensorPrimitive::Float(xp)))
        }
    }
}

/// `x · weightᵀ` for `x: [m, k]` and a row-major `weight: [n, k]` (a tied language-model head: the embedding
/// table) through the kernels when `B` is flex; gives `x` back otherwise.
pub(crate) fn try_matmul_nt<B: Backend>(
    x: Tensor<B, 2>,
    weight: &Tensor<B, 2>,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    if TypeId::of::<B>() != TypeId::of::<Flex>() {
        return Err(x);
    }
    let TensorPrimitive::Float(w) = weight.clone().into_primitive() else {
        return Err(x);
    };
    let w = downcast::<B::FloatTensorPrimitive, FlexTensor>(w).expect("B is Flex");
    let TensorPrimitive::Float(xp) = x.into_primitive() else {
        unreachable!("a float tensor's primitive is float")
    };
    let xf = downcast::<B::FloatTensorPrimitive, FlexTensor>(xp).expect("B is Flex");
    let k = xf.layout().shape().to_vec().get(1).copied().unwrap_or(0);
    let product = dense_rows(&w, k).and_then(|(n, start)| dense_product(&xf, &w, n, start, None));
    match product {
        Some(y) => {
            let y = downcast::<FlexTensor, B::FloatTensorPrimitive>(y).expect("B is Flex");
            Ok(Tensor::from_primitive(TensorPrimitive::Float(y)))
        }
        None => {
            let xp = downcast::<FlexTensor, B::FloatTensorPrimitive>(xf).expect("B is Flex");
            Err(Tensor::from_primitive(TensorPrimitive::Float(xp)))
        }
    }
}

/// `f` of the flex primitive of `tensor`, borrowed where it is; `None` when `B` is not flex.
///
/// A weight's `Param::val()` clones its tensor, and cloning an int8 flex tensor copies its scales (a `Vec`, not
/// shared): 47 MB per decoding step of OPT-2.7b in int8, 3% of the step's time.
pub(crate) fn with_flex_primitive<B: Backend, const D: usize, R>(
    tensor: &Tensor<B, D>,
    f: impl FnOnce(&TensorPrimitive<Flex>) -> R,
) -> Option<R> {
    if TypeId::of::<B>() != TypeId::of::<Flex>() {
        return None;
    }
    // SAFETY: `copy` holds the same bits as `*tensor`, which stays borrowed, so alive and unchanged, while `f`
    // reads through it. Neither `copy` nor the primitive moved out of it is ever dropped (`ManuallyDrop`, also
    // when `f` panics), so the buffers they share with `*tensor` are released once, by its owner.
    let copy = ManuallyDrop::new(unsafe { std::ptr::read(tensor) });
    let primitive = ManuallyDrop::new(ManuallyDrop::into_inner(copy).into_primitive());
    let primitive: &dyn Any = &*primitive;
    primitive.downcast_ref::<TensorPrimitive<Flex>>().map(f)
}

/// `value` as a `U` when `T` is `U` (the flex primitives behind a generic `B`).
pub(crate) fn downcast<T: 'static, U: 'static>(value: T) -> Option<U> {
    let boxed: Box<dyn Any> = Box::new(value);
    boxed.downcast::<U>().ok().map(|b| *b)
}

/// Outputs `ids` of an int8 `[k, n]` weight, dequantized (`q * scale`, f32), as `[ids, k]` rows when `B` is
/// flex and the weight is one the kernels read; gives the ids back otherwise.
pub(crate) fn try_q8_columns<B: Backend>(
    weight: &Tensor<B, 2>,
    ids: Tensor<B, 1, burn::tensor::Int>,
) -> Result<Tensor<B, 2>, Tensor<B, 1, burn::tensor::Int>> {
    if TypeId::of::<B>() != TypeId::of::<Flex>() {
        return Err(ids);
    }
    let k = weight.dims()[0];
    let wanted: Vec<i64> = ids
        .to_data()
        .convert::<i64>()
        .to_vec()
        .expect("converted to i64");
    let rows = with_flex_primitive(weight, |weight| {
        let TensorPrimitive::QFloat(q) = weight else {
            return None;
        };
        let (n, group, values) = q8_layout(q, k)?;
        let (scales, groups) = (q.scales(), n / group);
        let mut out = vec![0f32; wanted.len() * k];
        for (row, &id) in out.chunks_exact_mut(k.max(1)).zip(&wanted) {
            let t = usize::try_from(id)
                .ok()
                .filter(|&t| t < n)
                .unwrap_or_else(|| panic!("token id {id} is outside the vocabulary (0..{n})"));
            // Output `t`'s inputs are contiguous (values `[n, k]`).
            for (l, (value, &q)) in row.iter_mut().zip(&values[t * k..(t + 1) * k]).enumerate() {
                *value = f32::from(q) * scales[l * groups + t / group];
            }
        }
        Some(out)
    });
    match rows.flatten() {
        Some(out) => Ok(Tensor::from_data(
            TensorData::new(out, [wanted.len(), k]),
            &weight.device(),
        )),
        None => Err(ids),
    }
}

/// The bf16 product with the exact GELU applied as its outputs are stored, where a kernel does that (AMX); `None`
/// otherwise.
fn gelu_product(
    x: &FlexTensor,
    weight: &TensorPrimitive<Flex>,
    bias: Option<&FlexTensor>,
) -> Option<FlexTensor> {
    let TensorPrimitive::Float(w) = weight else {
        return None;
    };
    let [m, k] = x.layout().shape().to_vec()[..] else {
        return None;
    };
    if x.dtype() != DType::BF16 || w.dtype() != DType::BF16 {
        return None;
    }
    let (n, start) = dense_nk(w, k)?;
    let bias = bias_f32(bias, n)?;
    let x = row_major(x);
    let (xs, ws) = (
        x.as_slice::<bf16>()?,
        w.storage::<bf16>().get(start..start + n * k)?,
    );
    let out = kernels::linear_bf16_rounded_fresh(
        KernelPath::detect(),
        xs,
        m,
        k,
        ws,
        n,
        bias.as_deref(),
        true,
    )?;
    Some(FlexTensor::from_data(TensorData::new(out, [m, n])))
}

/// The product on flex tensors, or `None` when the kernels do not handle this weight or input.
fn flex_linear(
    x: &FlexTensor,
    weight: &TensorPrimitive<Flex>,
    bias: Option<&FlexTensor>,
) -> Option<FlexTensor> {
    let dims = x.layout().shape().to_vec();
    let [m, k] = dims[..] else { return None };
    let out_dtype = x.dtype();
    if !matches!(out_dtype, DType::F32 | DType::BF16 | DType::F16) {
        return None;
    }
    let path = KernelPath::detect();
    let (n, out) = match weight {
        TensorPrimitive::Float(w) => {
            let (n, start) = dense_nk(w, k)?;
            return dense_product(x, w, n, start, bias);
        }
        TensorPrimitive::QFloat(q) => {
            let (n, group, values) = q8_layout(q, k)?;
            let bias = bias_f32(bias, n)?;
            let x32 = to_f32(x)?;
            let w = Q8Weight {
                values,
                scales: q.scales(),
                group,
            };
            let mut out = vec![0f32; m * n];
            kernels::linear_q8(path, &x32, m, k, &w, n, bias.as_deref(), &mut out);
            (n, out)
        }
    };
    output(out, [m, n], out_dtype)
}

/// `x · Wᵀ + bias` for `x: [m, k]` and `W` the row-major `[n, k]` buffer at element `start` of `w`'s storage,
/// in `x`'s dtype; `None` for mixed dtypes. f32 products of every size come here too: flex's `gemm` would
/// repack the transposed weight on every call (two thirds of OPT's f32 prefill time in a profile).
fn dense_product(
    x: &FlexTensor,
    w: &FlexTensor,
    n: usize,
    start: usize,
    bias: Option<&FlexTensor>,
) -> Option<FlexTensor> {
    let [m, k] = x.layout().shape().to_vec()[..] else {
        return None;
    };
    let out_dtype = x.dtype();
    if w.dtype() != out_dtype {
        return None;
    }
    let bias = bias_f32(bias, n)?;
    let range = start..start + n * k;
    if out_dtype == DType::BF16 {
        // bf16 activations go in as they are (the kernels widen them only when they must).
        let x = row_major(x);
        let (path, xs, ws) = (
            KernelPath::detect(),
            x.as_slice::<bf16>()?,
            w.storage::<bf16>().get(range.clone())?,
        );
        if let Some(out) =
            kernels::linear_bf16_rounded_fresh(path, xs, m, k, ws, n, bias.as_deref(), false)
        {
            return Some(FlexTensor::from_data(TensorData::new(out, [m, n])));
        }
        let mut out = vec![bf16::ZERO; m * n];
        kernels::linear_bf16_rounded(path, xs, m, k, ws, n, bias.as_deref(), &mut out);
        return Some(FlexTensor::from_data(TensorData::new(out, [m, n])));
    }
    let x32 = to_f32(x)?;
    let mut out = vec![0f32; m * n];
    let weight = match w.dtype() {
        DType::F32 => DenseWeight::F32(w.storage::<f32>().get(range)?),
        DType::BF16 => DenseWeight::Bf16(w.storage::<bf16>().get(range)?),
        DType::F16 => DenseWeight::F16(w.storage::<f16>().get(range)?),
        _ => return None,
    };
    kernels::linear_dense(
        KernelPath::detect(),
        &x32,
        m,
        k,
        weight,
        n,
        bias.as_deref(),
        &mut out,
    );
    output(out, [m, n], out_dtype)
}

fn output(out: Vec<f32>, shape: [usize; 2], dtype: DType) -> Option<FlexTensor> {
    let data = match dtype {
        DType::F32 => TensorData::new(out, shape),
        DType::BF16 => {
            let mut b = vec![bf16::ZERO; out.len()];
            kernels::narrow_bf16_threaded(KernelPath::detect(), &out, &mut b);
            TensorData::new(b, shape)
        }
        DType::F16 => TensorData::new(out.iter().map(|&v| f16::from_f32(v)).collect(), shape),
        _ => return None,
    };
    Some(FlexTensor::from_data(data))
}

/// For a row-major `[n, k]` weight (an embedding table), `n` and its element offset in the storage.
fn dense_rows(w: &FlexTensor, k: usize) -> Option<(usize, usize)> {
    let layout = w.layout();
    let [n, wk] = layout.shape().to_vec()[..] else {
        return None;
    };
    if wk != k || layout.strides() != [k as isize, 1] {
        return None;
    }
    Some((n, layout.start_offset()))
}

/// For a weight `[k, n]` that is the transposed view of a row-major `[n, k]` buffer (how a PyTorch-layout
/// `Linear` holds it), `n` and the element offset of that buffer in the storage.
fn dense_nk(w: &FlexTensor, k: usize) -> Option<(usize, usize)> {
    let layout = w.layout();
    let [wk, n] = layout.shape().to_vec()[..] else {
        return None;
    };
    if wk != k || layout.strides() != [1, k as isize] {
        return None;
    }
    Some((n, layout.start_offset()))
}

/// `n`, the group and the `[n, k]` values of an int8 weight the kernels read: Burn's `Q8S`/`Q8F` values stored
/// as i8 with blocks `[1, group]` (group a multiple of 16 dividing `n`), the `[k, n]` tensor a transposed view of
/// `[n, k]` values (as [`crate::linear`] makes them). Other int8 tensors (Burn's own `quantize`, contiguous
/// `[k, n]`) take Burn's path.
fn q8_layout(q: &FlexQTensor, k: usize) -> Option<(usize, usize, &[i8])> {
    use burn::tensor::quantization::QTensorPrimitive;
    let scheme = q.scheme();
    if !matches!(scheme.value, QuantValue::Q8S | QuantValue::Q8F) {
        return None;
    }
    let t = q.tensor();
    let layout = t.layout();
    let [qk, n] = layout.shape().to_vec()[..] else {
        return None;
    };
    if qk != k || t.dtype() != DType::I8 || layout.strides() != [1, k as isize] {
        return None;
    }
    let group = match scheme.level {
        QuantLevel::Block(block) => match block.as_slice() {
            [1, g] => *g as usize,
            _ => return None,
        },
        QuantLevel::Tensor => return None,
    };
    if group % 16 != 0 || n % group != 0 || q.scales().len() != k * (n / group) {
        return None;
    }
    let start = layout.start_offset();
    let values = t.storage::<i8>().get(start..start + k * n)?;
    Some((n, group, values))
}

/// Whether `weight` is an int8 tensor the kernels read in place (tests).
#[cfg(test)]
pub(crate) fn kernels_read_q8<B: Backend>(weight: &Tensor<B, 2>) -> bool {
    let k = weight.dims()[0];
    with_flex_primitive(weight, |w| match w {
        TensorPrimitive::QFloat(q) => q8_layout(q, k).is_some(),
        TensorPrimitive::Float(_) => false,
    })
    .unwrap_or(false)
}

/// The bias as f32 (`Some(None)` without one; `None` when it is not `[n]`).
fn bias_f32(bias: Option<&FlexTensor>, n: usize) -> Option<Option<Vec<f32>>> {
    match bias {
        None => Some(None),
        Some(b) if b.layout().shape().to_vec() == [n] => to_f32(b).map(Some),
        Some(_) => None,
    }
}

/// `t` itself when its values are row-major in its storage, else a row-major copy.
fn row_major(t: &FlexTensor) -> Cow<'_, FlexTensor> {
    if t.layout().contiguous_offsets().is_some() {
        Cow::Borrowed(t)
    } else {
        Cow::Owned(t.to_contiguous())
    }
}

/// A float tensor's values, row-major, as f32.
fn to_f32(t: &FlexTensor) -> Option<Vec<f32>> {
    let t = row_major(t);
    Some(match t.dtype() {
        DType::F32 => t.as_slice::<f32>()?.to_vec(),
        DType::BF16 => {
            let src = t.as_slice::<bf16>()?;
            let mut out = vec![0f32; src.len()];
            kernels::widen_bf16(KernelPath::detect(), src, &mut out);
            out
        }
        DType::F16 => t.as_slice::<f16>()?.iter().map(|v| v.to_f32()).collect(),
        _ => return None,
    })
}
