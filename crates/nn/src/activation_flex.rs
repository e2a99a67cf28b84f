//! The flex fast path of [`crate::Activation::Gelu`]: flex evaluates GELU one element at a time with a scalar
//! `erf` on one thread (about 5 ms per ViT-g layer); here contiguous f32, bf16 and f16 tensors go through
//! [`crate::kernels::gelu_erf`] in parallel chunks. Every other backend, `Autodiff<Flex>` included, keeps Burn's
//! `gelu`.

use std::any::{Any, TypeId};

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::prelude::{Backend, Tensor};
use burn::tensor::{DType, TensorData, TensorPrimitive};
use half::{bf16, f16};
use rayon::prelude::*;

use crate::kernels::{KernelPath, gelu_erf};

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

fn downcast<T: 'static, U: 'static>(value: T) -> Option<U> {
    let boxed: Box<dyn Any> = Box::new(value);
    boxed.downcast::<U>().ok().map(|b| *b)
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
        DType::BF16 => TensorData::new(
            half_gelu(t.as_slice::<bf16>()?, path, bf16::to_f32, bf16::from_f32),
            shape,
        ),
        DType::F16 => TensorData::new(
            half_gelu(t.as_slice::<f16>()?, path, f16::to_f32, f16::from_f32),
            shape,
        ),
        _ => return None,
    };
    Some(FlexTensor::from_data(data))
}

/// GELU of half-precision values: each chunk widened to f32, computed, rounded back (as flex's own op does).
fn half_gelu<T: Copy + Default + Send + Sync>(
    x: &[T],
    path: KernelPath,
    widen: fn(T) -> f32,
    narrow: fn(f32) -> T,
) -> Vec<T> {
    let mut out = vec![T::default(); x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            let wide: Vec<f32> = x.iter().map(|&v| widen(v)).collect();
            let mut g = vec![0f32; wide.len()];
            gelu_erf(path, &wide, &mut g);
            for (o, g) in o.iter_mut().zip(g) {
                *o = narrow(g);
            }
        });
    out
}
