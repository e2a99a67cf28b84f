//! The flex fast path of [`crate::Activation::Gelu`]: flex evaluates GELU one element at a time with a scalar
//! `erf` on one thread (about 5 ms per ViT-g layer); here contiguous f32, bf16 and f16 tensors go through
//! [`crate::kernels::gelu_erf`] in parallel chunks. Every other backend, `Autodiff<Flex>` included, keeps Burn's
//! `gelu`.

use std::any::TypeId;

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::prelude::{Backend, Tensor};
use burn::tensor::{DType, TensorData, TensorPrimitive};

use crate::linear_flex::downcast;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::kernels::{KernelPath, gelu_erf, gelu_erf_bf16};

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// GELU (erf) of `x` through the kernels when `B` is flex and `x` a contiguous float tensor; gives `x` back
/// otherwise.
pub(crate) fn try_gelu<B: Backend, const D: usize>(
    x: Tensor<B, D>,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if TypeId::of::<B>() != TypeId::of::<Flex>() {
        return Err(x);
    }
    let TensorPrimitive::Float(p) = x.into_primitive() else {
        unreachable!("a float tensor's primitive is float")
    };
    let t = downcast::<B::FloatTensorPrimitive, FlexTensor>(p).expect("B is Flex");
    let wrap = |t: FlexTensor| {
        let t = downcast::<FlexTensor, B::FloatTensorPrimitive>(t).expect("B is Flex");
        Tensor::from_primitive(TensorPrimitive::Float(t))
    };
    match gelu_flex(&t) {
        Some(y) => Ok(wrap(y)),
        None => Err(wrap(t)),
    }
}

fn gelu_flex(t: &FlexTensor) -> Option<FlexTensor> {
    let shape = t.layout().shape().to_vec();
    let path = KernelPath::detect();
    let data = match t.dtype() {
        DType::F32 => {
            let x = t.as_slice::<f32>()?;
            let mut out = vec![0f32; x.len()];
            out.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK))
                .for_each(|(o, x)| gelu_erf(path, x, o));
            TensorData::new(out, shape)
        }
        DType::BF16 => {
            let x = t.as_slice::<bf16>()?;
            let mut out = vec![bf16::ZERO; x.len()];
            out.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK))
                .for_each(|(o, x)| gelu_erf_bf16(path, x, o));
            TensorData::new(out, shape)
        }
        DType::F16 => {
            use half::slice::HalfFloatSliceExt;
            let widen = |x: &[f16], w: &mut [f32]| x.convert_to_f32_slice(w);
            let narrow = |w: &[f32], o: &mut [f16]| o.convert_from_f32_slice(w);
            TensorData::new(half_gelu(t.as_slice::<f16>()?, path, widen, narrow), shape)
        }
        _ => return None,
    };
    Some(FlexTensor::from_data(data))
}

/// GELU of half-precision values: each chunk widened to f32, computed, rounded back (as flex's own op does).
fn half_gelu<T: Copy + Default + Send + Sync>(
    x: &[T],
    path: KernelPath,
    widen: impl Fn(&[T], &mut [f32]) + Sync,
    narrow: impl Fn(&[f32], &mut [T]) + Sync,
) -> Vec<T> {
    let mut out = vec![T::default(); x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            let mut wide = vec![0f32; x.len()];
            widen(x, &mut wide);
            let mut g = vec![0f32; x.len()];
            gelu_erf(path, &wide, &mut g);
            narrow(&g, o);
        });
    out
}
