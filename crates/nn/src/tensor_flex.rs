//! A row-major copy of a strided flex tensor that copies whole inner rows (flex's own `to_contiguous` walks the
//! tensor one element at a time, about 5 ns each: 6 ms per OPT-2.7b decoding step for the key/value cache).

use std::any::TypeId;

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::prelude::{Backend, Tensor};
use burn::tensor::{DType, TensorData, TensorPrimitive};

use burn::nn::LayerNorm;

use crate::kernels::{
    HeadStrides, Heads, HeadsShape, KernelPath, QkvShape, attention_bf16, attention_qkv_bf16,
};
use crate::linear_flex::downcast;
use half::{bf16, f16};

/// `x` laid out row-major when `B` is flex and `x` is a strided float view; `x` itself otherwise.
pub(crate) fn contiguous<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if TypeId::of::<B>() != TypeId::of::<Flex>() {
        return x;
    }
    let TensorPrimitive::Float(p) = x.into_primitive() else {
        unreachable!("a float tensor's primitive is float")
    };
    let t = downcast::<B::FloatTensorPrimitive, FlexTensor>(p).expect("B is Flex");
    let t = if t.is_contiguous() {
        t
    } else {
        copy(&t).unwrap_or(t)
    };
    let t = downcast::<FlexTensor, B::FloatTensorPrimitive>(t).expect("B is Flex");
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn copy(t: &FlexTensor) -> Option<FlexTensor> {
    let layout = t.layout();
    let shape = layout.shape().to_vec();
    let (strides, offset) = (layout.strides(), layout.start_offset());
    let data = match t.dtype() {
        DType::F32 => TensorData::new(rows(t.storage::<f32>(), &shape, strides, offset), shape),
        DType::BF16 => TensorData::new(rows(t.storage::<bf16>(), &shape, strides, offset), shape),
        DType::F16 => TensorData::new(rows(t.storage::<f16>(), &shape, strides, offset), shape),
        _ => return None,
    };
    Some(FlexTensor::from_data(data))
}

/// The elements of the strided view `(shape, strides, offset)` of `src`, row-major, copied a last-axis run at a
/// time.
fn rows<T: Copy>(src: &[T], shape: &[usize], strides: &[isize], offset: usize) -> Vec<T> {
    let len: usize = shape.iter().product();
    let mut out = Vec::with_capacity(len);
    let Some((&inner, outer_dims)) = shape.split_last() else {
        out.push(src[offset]);
        return out;
    };
    if len == 0 {
        return out;
    }
    let inner_stride = strides[shape.len() - 1];
    let mut index = vec![0usize; outer_dims.len()];
    for _ in 0..len / inner {
        let base = offset as isize
            + index
                .iter()
                .zip(strides)
                .map(|(&i, &s)| i as isize * s)
                .sum::<isize>();
        if inner_stride == 1 {
            out.extend_from_slice(&src[base as usize..base as usize + inner]);
        } else {
            out.extend((0..inner as isize).map(|j| src[(base + j * inner_stride) as usize]));
        }
        for (axis, i) in index.iter_mut().enumerate().rev() {
            *i += 1;
            if *i < outer_dims[axis] {
                break;
            }
            *i = 0;
        }
    }
    out
}

/// Elements per parallel task when widening or narrowing.
const CHUNK: usize = 1 << 14;

/// `a.matmul(b)` for two bf16 flex tensors: both widened to f32 in parallel SIMD chunks, multiplied by flex's f32
/// product, the result rounded back to bf16. flex's own bf16 product does the same steps, the conversions on one
/// thread one element at a time, so the bits are the same. Gives the operands back otherwise.
#[allow(clippy::type_complexity)]
pub(crate) fn try_matmul_bf16<B: Backend, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    if TypeId::of::<B>() != TypeId::of::<Flex>()
        || a.dtype() != DType::BF16
        || b.dtype() != DType::BF16
    {
        return Err((a, b));
    }
    let (Some(a32), Some(b32)) = (widened::<B, D>(&a), widened::<B, D>(&b)) else {
        return Err((a, b));
    };
    let product = a32.matmul(b32);
    Ok(narrowed::<B, D>(product).expect("flex's f32 product is an f32 tensor"))
}

/// `softmax(x, dim)` for a bf16 flex tensor: widened to f32, flex's vectorised f32 softmax, rounded back once.
/// flex's own bf16 softmax is a scalar loop that rounds twice (the exponentials, then the quotients); one
/// rounding of the f32 result is what torch's bf16 softmax gives. Gives `x` back otherwise.
pub(crate) fn try_softmax_bf16<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    dim: usize,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if TypeId::of::<B>() != TypeId::of::<Flex>() || x.dtype() != DType::BF16 {
        return Err(x);
    }
    let Some(wide) = widened::<B, D>(&x) else {
        return Err(x);
    };
    let probs = burn::tensor::activation::softmax(wide, dim);
    Ok(narrowed::<B, D>(probs).expect("flex's f32 softmax is an f32 tensor"))
}

/// Softmax attention of the fused projection `qkv: [batch, seq, 3 * heads * head_dim]` when `B` is flex, `qkv`
/// is bf16 and this CPU multiplies bf16 pairs ([`KernelPath::bf16_dot`]); see [`crate::ops::qkv_attention`].
pub(crate) fn try_qkv_attention<B: Backend>(
    qkv: &Tensor<B, 3>,
    heads: usize,
    scale: f64,
) -> Option<Tensor<B, 3>> {
    let path = KernelPath::detect();
    if TypeId::of::<B>() != TypeId::of::<Flex>() || qkv.dtype() != DType::BF16 || !path.bf16_dot() {
        return None;
    }
    let [batch, seq, width] = qkv.dims();
    if heads == 0 || width % (3 * heads) != 0 || width == 0 {
        return None;
    }
    let t = flex_bf16(qkv)?;
    let t = if t.is_contiguous() { t } else { copy(&t)? };
    let shape = QkvShape {
        batch,
        seq,
        heads,
        head_dim: width / 3 / heads,
    };
    let mut out = vec![bf16::ZERO; batch * seq * shape.hidden()];
    attention_qkv_bf16(path, t.as_slice::<bf16>()?, shape, scale as f32, &mut out);
    flex_tensor(TensorData::new(out, [batch, seq, shape.hidden()]))
}

/// Softmax attention of separate bf16 heads with an optional additive bf16 mask, merged, when `B` is flex and
/// this CPU multiplies bf16 pairs ([`KernelPath::bf16_dot`]); see [`crate::ops::attention`]. `None` otherwise,
/// and for layouts the kernel does not read (a head's values not contiguous, a mask that does not broadcast).
pub(crate) fn try_attention<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    mask: Option<&Tensor<B, 4>>,
) -> Option<Tensor<B, 3>> {
    let path = KernelPath::detect();
    if TypeId::of::<B>() != TypeId::of::<Flex>() || !path.bf16_dot() {
        return None;
    }
    let [batch, heads, q_len, head_dim] = q.dims();
    let [_, _, kv_len, _] = k.dims();
    if k.dims() != [batch, heads, kv_len, head_dim] || v.dims() != k.dims() {
        return None;
    }
    let q = flex_bf16(q)?;
    let k = flex_bf16(k)?;
    let v = flex_bf16(v)?;
    let m = match mask {
        Some(m) => Some(flex_bf16(m)?),
        None => None,
    };
    let shape = HeadsShape {
        batch,
        heads,
        q_len,
        kv_len,
        head_dim,
    };
    let mut out = vec![bf16::ZERO; batch * q_len * heads * head_dim];
    attention_bf16(
        path,
        operand(&q, [batch, heads, q_len, head_dim])?,
        operand(&k, [batch, heads, kv_len, head_dim])?,
        operand(&v, [batch, heads, kv_len, head_dim])?,
        match &m {
            Some(m) => Some(operand(m, [batch, heads, q_len, kv_len])?),
            None => None,
        },
        shape,
        &mut out,
    );
    flex_tensor(TensorData::new(out, [batch, q_len, heads * head_dim]))
}

/// `t` as an operand of [`attention_bf16`] broadcast to `dims` (see [`strides_as`]).
fn operand(t: &FlexTensor, dims: [usize; 4]) -> Option<Heads<'_>> {
    let (strides, offset) = strides_as(t, dims)?;
    Some(Heads {
        data: t.storage::<bf16>().get(offset..)?,
        strides,
    })
}

/// The flex tensor of a bf16 `Tensor<B, D>` (`B` is flex), or `None`.
fn flex_bf16<B: Backend, const D: usize>(x: &Tensor<B, D>) -> Option<FlexTensor> {
    if x.dtype() != DType::BF16 {
        return None;
    }
    let TensorPrimitive::Float(p) = x.clone().into_primitive() else {
        return None;
    };
    downcast::<B::FloatTensorPrimitive, FlexTensor>(p)
}

/// `data` as a `Tensor<B, D>` (`B` is flex), or `None` when it is not.
fn flex_tensor<B: Backend, const D: usize>(data: TensorData) -> Option<Tensor<B, D>> {
    let t = downcast::<FlexTensor, B::FloatTensorPrimitive>(FlexTensor::from_data(data))?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(t)))
}

/// `t`'s layout as [`HeadStrides`] of a `[batch, heads, tokens, width]` operand broadcast to `dims` (an axis of
/// size 1 repeats: stride 0), and its first element's offset; `None` unless the last axis is contiguous, no
/// stride is negative and every axis is `dims`' or 1.
fn strides_as(t: &FlexTensor, dims: [usize; 4]) -> Option<(HeadStrides, usize)> {
    let layout = t.layout();
    let (shape, strides) = (layout.shape(), layout.strides());
    if shape.len() != 4 || shape[3] != dims[3] {
        return None;
    }
    let mut s = [0usize; 4];
    for axis in 0..4 {
        if shape[axis] == 1 {
            continue;
        }
        if shape[axis] != dims[axis] || strides[axis] < 0 {
            return None;
        }
        s[axis] = strides[axis] as usize;
    }
    if dims[3] > 1 && s[3] != 1 {
        return None;
    }
    Some((
        HeadStrides {
            batch: s[0],
            head: s[1],
            token: s[2],
        },
        layout.start_offset(),
    ))
}

/// `norm.forward(x)` for a bf16 flex tensor with bf16 or f32 parameters: [`crate::kernels::layer_norm_bf16`] on
/// each row (threaded), which reads the bf16 input once and writes the bf16 output once; its f32 steps are those
/// of flex's f32 layer norm except that the variance comes from the centred values (docs/numerics.md), so the
/// output is within one bf16 rounding of Burn's. Gives `x` back otherwise (other backends or dtypes, or when the
/// module's epsilon cannot be read).
pub(crate) fn try_layer_norm_bf16<B: Backend, const D: usize>(
    norm: &LayerNorm<B>,
    x: Tensor<B, D>,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    use rayon::prelude::*;
    if TypeId::of::<B>() != TypeId::of::<Flex>() || x.dtype() != DType::BF16 || D == 0 {
        return Err(x);
    }
    let Some(epsilon) = layer_norm_epsilon(norm) else {
        return Err(x);
    };
    let param = |p: Tensor<B, 1>| -> Option<Vec<f32>> {
        if !matches!(p.dtype(), DType::BF16 | DType::F32) {
            return None;
        }
        p.cast(DType::F32).into_data().to_vec::<f32>().ok()
    };
    let Some(gamma) = param(norm.gamma.val()) else {
        return Err(x);
    };
    let beta = match &norm.beta {
        Some(b) => match param(b.val()) {
            Some(b) => Some(b),
            None => return Err(x),
        },
        None => None,
    };
    let Some(t) = flex_bf16(&x) else {
        return Err(x);
    };
    let shape = t.layout().shape().to_vec();
    let d = shape[D - 1];
    if d == 0 || gamma.len() != d {
        return Err(x);
    }
    let src = bf16_values(&t);
    let path = crate::kernels::KernelPath::detect();
    let mut out = vec![bf16::ZERO; src.len()];
    let rows_per_task = (CHUNK / d).max(1);
    out.par_chunks_mut(rows_per_task * d)
        .zip(src.par_chunks(rows_per_task * d))
        .for_each(|(o, s)| {
            crate::kernels::layer_norm_bf16(path, s, d, &gamma, beta.as_deref(), epsilon, o)
        });
    flex_tensor(TensorData::new(out, shape)).ok_or(x)
}

/// A `LayerNorm`'s epsilon, which Burn keeps private, read from the module's display (`epsilon: 0.000001`; Rust
/// prints a float as the shortest decimal that reads back to the same value, so the value is exact), as f32
/// (what flex's layer norm uses). `None` when the display has no such field.
pub(crate) fn layer_norm_epsilon<B: Backend>(norm: &LayerNorm<B>) -> Option<f32> {
    let text = norm.to_string();
    let at = text.find("epsilon: ")? + "epsilon: ".len();
    let value = text[at..]
        .split(|c: char| c == ',' || c == '}' || c.is_whitespace())
        .next()?;
    let epsilon: f64 = value.parse().ok()?;
    (epsilon.is_finite() && epsilon >= 0.0).then_some(epsilon as f32)
}

/// `a + b` for two bf16 flex tensors of one shape, both contiguous: [`crate::kernels::add_bf16`] in parallel
/// chunks, the bits of flex's own sum (`bf16::from_f32` of the f32 sum, on one thread). Gives both back
/// otherwise.
#[allow(clippy::type_complexity)]
pub(crate) fn try_add_bf16<B: Backend, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    use rayon::prelude::*;
    if TypeId::of::<B>() != TypeId::of::<Flex>() || a.dims() != b.dims() {
        return Err((a, b));
    }
    let (Some(x), Some(y)) = (flex_bf16(&a), flex_bf16(&b)) else {
        return Err((a, b));
    };
    let (Some((x0, x1)), Some((y0, y1))) = (
        x.layout().contiguous_offsets(),
        y.layout().contiguous_offsets(),
    ) else {
        return Err((a, b));
    };
    let (xs, ys) = (&x.storage::<bf16>()[x0..x1], &y.storage::<bf16>()[y0..y1]);
    let path = crate::kernels::KernelPath::detect();
    let mut out = vec![bf16::ZERO; xs.len()];
    out.par_chunks_mut(CHUNK)
        .zip(xs.par_chunks(CHUNK).zip(ys.par_chunks(CHUNK)))
        .for_each(|(o, (x, y))| crate::kernels::add_bf16(path, x, y, o));
    match flex_tensor(TensorData::new(out, a.dims().to_vec())) {
        Some(sum) => Ok(sum),
        None => Err((a, b)),
    }
}

/// A bf16 flex tensor's values in row-major order: where they are when they already lie so, else a copy.
fn bf16_values(t: &FlexTensor) -> std::borrow::Cow<'_, [bf16]> {
    let layout = t.layout();
    match layout.contiguous_offsets() {
        Some((start, end)) => std::borrow::Cow::Borrowed(&t.storage::<bf16>()[start..end]),
        None => std::borrow::Cow::Owned(rows(
            t.storage::<bf16>(),
            layout.shape(),
            layout.strides(),
            layout.start_offset(),
        )),
    }
}

/// A bf16 flex tensor as a row-major f32 `Tensor<Flex, D>` (exact), or `None` for other dtypes.
fn widened<B: Backend, const D: usize>(x: &Tensor<B, D>) -> Option<Tensor<Flex, D>> {
    use rayon::prelude::*;
    let t = flex_bf16(x)?;
    let shape = t.layout().shape().to_vec();
    let src = bf16_values(&t);
    let path = crate::kernels::KernelPath::detect();
    let mut wide = vec![0f32; src.len()];
    wide.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(w, s)| crate::kernels::widen_bf16(path, s, w));
    flex_tensor(TensorData::new(wide, shape))
}

/// An f32 `Tensor<Flex, D>` rounded to bf16 as a `Tensor<B, D>` (`B` is flex).
fn narrowed<B: Backend, const D: usize>(x: Tensor<Flex, D>) -> Option<Tensor<B, D>> {
    use rayon::prelude::*;
    let TensorPrimitive::Float(t) = x.into_primitive() else {
        return None;
    };
    let shape = t.layout().shape().to_vec();
    let c;
    let t = if t.is_contiguous() {
        &t
    } else {
        c = copy(&t)?;
        &c
    };
    let src = t.as_slice::<f32>()?;
    let path = crate::kernels::KernelPath::detect();
    let mut out = vec![bf16::ZERO; src.len()];
    out.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(o, s)| crate::kernels::narrow_bf16(path, s, o));
    flex_tensor(TensorData::new(out, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_epsilons_read_back_exactly() {
        use burn::nn::LayerNormConfig;
        for eps in [1e-6, 1e-5, 1e-12, 3.0e-7, 0.1, 1.0, 0.0] {
            let norm = LayerNormConfig::new(4)
                .with_epsilon(eps)
                .init::<Flex>(&Default::default());
            assert_eq!(layer_norm_epsilon(&norm), Some(eps as f32), "{norm}");
        }
    }
}
