//! A row-major copy of a strided flex tensor that copies whole inner rows (flex's own `to_contiguous` walks the
//! tensor one element at a time, about 5 ns each: 6 ms per OPT-2.7b decoding step for the key/value cache).

use std::any::TypeId;

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::prelude::{Backend, Tensor};
use burn::tensor::{DType, TensorData, TensorPrimitive};

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
