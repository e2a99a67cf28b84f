//! Activations, masks and the KV cache against closed forms, on every CPU backend.

use blip2_nn::backend::FloatDType;
use blip2_nn::mask::{
    MaskValue, additive_mask, causal_mask, causal_padding_mask, dtype_min, padding_mask,
};
use blip2_nn::{Activation, Error, KvCache, LayerCache};
use blip2_testkit::{Tol, assert_close, backend_tests};
use burn::prelude::*;
use burn::tensor::DType;

const XS: [f64; 9] = [-6.0, -3.0, -1.0, -0.5, 0.0, 0.25, 1.0, 2.5, 7.0];

/// Φ(x) from an erf with 1e-15 accuracy (series for small |x|, continued fraction otherwise).
fn erf(x: f64) -> f64 {
    if x.abs() < 3.0 {
        // Maclaurin series: erf x = 2/√π Σ (-1)^n x^(2n+1) / (n! (2n+1))
        let mut sum = 0.0;
        let mut term = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // Lentz continued fraction for erfc.
        let z = x.abs();
        let mut f = z;
        for k in (1..60).rev() {
            f = z + (k as f64 / 2.0) / f;
        }
        let erfc = (-z * z).exp() / (f * std::f64::consts::PI.sqrt());
        (1.0 - erfc).copysign(x)
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn closed_form(act: Activation, x: f64) -> f64 {
    match act {
        Activation::Gelu => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
        Activation::GeluTanh => {
            0.5 * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
        }
        Activation::QuickGelu => x * sigmoid(1.702 * x),
        Activation::Relu => x.max(0.0),
        Activation::Silu => x * sigmoid(x),
    }
}

fn activations_match_closed_forms<B: Backend>(device: &B::Device) {
    let x = Tensor::<B, 1>::from_data(
        TensorData::new(XS.iter().map(|v| *v as f32).collect(), [XS.len()]),
        device,
    );
    for name in Activation::NAMES {
        let act = Activation::parse("hidden_act", name).unwrap();
        let want: Vec<f32> = XS.iter().map(|&v| closed_form(act, v) as f32).collect();
        assert_close(
            &format!("{name}(x)"),
            &act.forward(x.clone()).to_data(),
            &TensorData::new(want, [XS.len()]),
            Tol::STAGE,
        );
    }
    // The BLIP-2 trap: exact gelu and the tanh form differ by more than the stage tolerance.
    let exact = Activation::Gelu
        .forward(x.clone())
        .to_data()
        .to_vec::<f32>()
        .unwrap();
    let tanh = Activation::GeluTanh
        .forward(x)
        .to_data()
        .to_vec::<f32>()
        .unwrap();
    let gap = exact
        .iter()
        .zip(&tanh)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(gap > 1e-4, "gelu and gelu_new must differ, max gap {gap}");
}

fn activation_names<B: Backend>(_device: &B::Device) {
    assert_eq!(
        Activation::parse("a", "gelu_pytorch_tanh").unwrap(),
        Activation::GeluTanh
    );
    assert_eq!(Activation::parse("a", "swish").unwrap(), Activation::Silu);
    match Activation::parse("dense_act_fn", "gelu_10") {
        Err(e @ Error::UnsupportedConfig { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("dense_act_fn") && message.contains("gelu_10"),
                "{message}"
            );
            assert!(
                message.contains("quick_gelu"),
                "lists the supported names: {message}"
            );
        }
        other => panic!("expected UnsupportedConfig, got {other:?}"),
    }
}

fn bools<B: Backend, const D: usize>(t: Tensor<B, D, Bool>) -> Vec<bool> {
    t.to_data().convert::<bool>().to_vec::<bool>().unwrap()
}

fn padding_mask_marks_pads<B: Backend>(device: &B::Device) {
    let mask = Tensor::<B, 2, Int>::from_data(
        TensorData::new(vec![0i64, 0, 1, 1, 1, 1, 1, 0], [2, 4]),
        device,
    );
    let pad = padding_mask(mask);
    assert_eq!(pad.dims(), [2, 1, 1, 4]);
    assert_eq!(
        bools(pad),
        vec![true, true, false, false, false, false, false, true]
    );
}

fn causal_mask_with_a_cache<B: Backend>(device: &B::Device) {
    // No cache: 3 queries, 3 keys -> strictly upper triangle masked.
    let m = causal_mask::<B>(3, 3, device);
    assert_eq!(m.dims(), [1, 1, 3, 3]);
    assert_eq!(
        bools(m),
        vec![false, true, true, false, false, true, false, false, false]
    );
    // Two cached positions, two new queries at positions 2 and 3.
    let m = causal_mask::<B>(2, 4, device);
    assert_eq!(
        bools(m),
        vec![false, false, false, true, false, false, false, false]
    );
    // One decode step sees everything.
    assert!(bools(causal_mask::<B>(1, 5, device)).iter().all(|b| !b));
}

fn causal_and_padding_combine<B: Backend>(device: &B::Device) {
    // Left padding: row 0 = [pad, tok, tok].
    let mask =
        Tensor::<B, 2, Int>::from_data(TensorData::new(vec![0i64, 1, 1, 1, 1, 1], [2, 3]), device);
    let m = causal_padding_mask(mask, 3);
    assert_eq!(m.dims(), [2, 1, 3, 3]);
    #[rustfmt::skip]
    let want = vec![
        true, true, true,   // the pad query sees nothing: a fully masked row
        true, false, true,
        true, false, false,
        false, true, true,
        false, false, true,
        false, false, false,
    ];
    assert_eq!(bools(m), want);
}

fn additive_masks_use_the_chosen_fill<B: Backend>(device: &B::Device) {
    assert_eq!(dtype_min(FloatDType::F32), f64::from(f32::MIN));
    assert_eq!(dtype_min(FloatDType::F16), -65504.0);
    assert_eq!(dtype_min(FloatDType::BF16), -3.3895313892515355e38);
    let pad = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![1i64, 0], [1, 2]), device);
    let additive = additive_mask(
        padding_mask(pad.clone()),
        MaskValue::DtypeMin,
        FloatDType::F32,
    );
    assert_eq!(
        additive.to_data().to_vec::<f32>().unwrap(),
        vec![0.0, f32::MIN]
    );
    let additive = additive_mask(
        padding_mask(pad),
        MaskValue::Value(-10000.0),
        FloatDType::F32,
    );
    assert_eq!(
        additive.to_data().to_vec::<f32>().unwrap(),
        vec![0.0, -10000.0]
    );
}

fn fully_masked_row_is_uniform_with_dtype_min<B: Backend>(device: &B::Device) {
    // What HF's eager attention does for the query rows of left padding: every score gets exactly the dtype
    // minimum, so the softmax is uniform over all keys instead of NaN.
    let scores =
        Tensor::<B, 2>::from_data(TensorData::new(vec![0.3f32, -1.2, 2.0], [1, 3]), device);
    let masked =
        Tensor::<B, 2, Bool>::from_data(TensorData::new(vec![true, true, true], [1, 3]), device);
    let mask = additive_mask(masked, MaskValue::DtypeMin, FloatDType::F32);
    let probs = burn::tensor::activation::softmax(scores + mask, 1);
    let third = 1.0f32 / 3.0;
    assert_close(
        "uniform",
        &probs.to_data(),
        &TensorData::new(vec![third; 3], [1, 3]),
        Tol::STAGE,
    );
}

fn kv_cache_appends_reorders_and_reuses<B: Backend>(device: &B::Device) {
    let step = |v: f32| Tensor::<B, 4>::full([2, 1, 1, 2], v, device);
    let mut cache = KvCache::<B>::new(2);
    assert!(cache.is_empty());
    for v in [1.0, 2.0, 3.0] {
        let (k, vv) = cache.layer_mut(0).append(step(v), step(-v));
        assert_eq!(k.dims()[2], v as usize);
        assert_eq!(vv.dims()[2], v as usize);
    }
    cache.layer_mut(1).append(step(9.0), step(9.0));
    assert_eq!(cache.seq_len(), 3);
    assert_eq!(cache.layer(1).len(), 1);
    let (k, _) = cache.layer(0).get().unwrap();
    assert_eq!(
        k.clone()
            .slice([0..1, 0..1, 0..3, 0..1])
            .reshape([3])
            .to_data()
            .to_vec::<f32>()
            .unwrap(),
        vec![1.0, 2.0, 3.0]
    );

    // Beam reorder: row 1 twice.
    let rows = Tensor::<B, 1>::from_data(TensorData::new(vec![0.0f32, 10.0], [2]), device)
        .reshape([2, 1, 1, 1]);
    let mut layer = LayerCache::<B>::new();
    layer.append(step(1.0) + rows.clone(), step(1.0));
    layer.reorder(Tensor::<B, 1, Int>::from_data(
        TensorData::new(vec![1i64, 1], [2]),
        device,
    ));
    let (k, _) = layer.get().unwrap();
    assert_eq!(
        k.slice([0..2, 0..1, 0..1, 0..1])
            .reshape([2])
            .to_data()
            .to_vec::<f32>()
            .unwrap(),
        vec![11.0, 11.0]
    );

    // Cross-attention: computed once.
    let mut cross = LayerCache::<B>::new();
    let mut calls = 0;
    for _ in 0..3 {
        cross.get_or_insert_with(|| {
            calls += 1;
            (step(5.0), step(6.0))
        });
    }
    assert_eq!(calls, 1);
    assert_eq!(cross.len(), 1);
    cache.clear();
    assert!(cache.is_empty());
}

backend_tests!(
    activations_match_closed_forms,
    activation_names,
    padding_mask_marks_pads,
    causal_mask_with_a_cache,
    causal_and_padding_combine,
    additive_masks_use_the_chosen_fill,
    fully_masked_row_is_uniform_with_dtype_min,
    kv_cache_appends_reorders_and_reuses,
    kv_cache_keeps_the_values_of_strided_views,
    vector_matrix_products_of_any_size_equal_the_sums,
);

/// `ops::matmul` with one row in `a` or one column in `b`, at sizes no plane size divides (cubecl's backends pad
/// them: see `ops::matmul`), and two sizes of one autotune bucket one after the other (22 after 24 outputs: the
/// reuse that made cubecl launch a kernel the smaller size does not fit).
fn vector_matrix_products_of_any_size_equal_the_sums<B: Backend>(device: &B::Device) {
    for &(m, k, n) in &[
        (1, 24, 24),
        (1, 22, 22),
        (1, 5, 70),
        (7, 22, 1),
        (1, 1, 1),
        (1, 64, 64),
    ] {
        let (batch, heads) = (2, 3);
        let val = |i: usize, s: f64| ((i as f64 * s).sin() * 2.0) as f32;
        let av: Vec<f32> = (0..batch * heads * m * k).map(|i| val(i, 0.37)).collect();
        let bv: Vec<f32> = (0..batch * heads * k * n).map(|i| val(i, 0.91)).collect();
        let a =
            Tensor::<B, 4>::from_data(TensorData::new(av.clone(), [batch, heads, m, k]), device);
        let b =
            Tensor::<B, 4>::from_data(TensorData::new(bv.clone(), [batch, heads, k, n]), device);
        let mut want = vec![0f32; batch * heads * m * n];
        for bh in 0..batch * heads {
            for i in 0..m {
                for j in 0..n {
                    want[(bh * m + i) * n + j] = (0..k)
                        .map(|l| {
                            f64::from(av[(bh * m + i) * k + l])
                                * f64::from(bv[(bh * k + l) * n + j])
                        })
                        .sum::<f64>() as f32;
                }
            }
        }
        let got = blip2_nn::ops::matmul(a, b);
        assert_eq!(got.dims(), [batch, heads, m, n]);
        assert_close(
            &format!("[{m}, {k}] x [{k}, {n}]"),
            &got.into_data(),
            &TensorData::new(want, [batch, heads, m, n]),
            Tol::LOGITS,
        );
    }
}

/// Keys and values arrive as strided views (heads swapped with positions, sliced, flipped); the cache stores them
/// row-major (a copy on flex) and must give back the same values in every dtype.
fn kv_cache_keeps_the_values_of_strided_views<B: Backend>(device: &B::Device) {
    let base = |seed: f32| {
        let values: Vec<f32> = (0..2 * 5 * 3 * 4).map(|i| seed + i as f32 * 0.25).collect();
        Tensor::<B, 4>::from_data(TensorData::new(values, [2, 5, 3, 4]), device) // [batch, len, heads, dim]
    };
    let views = [
        base(0.0).swap_dims(1, 2),                                   // [2, 3, 5, 4]
        base(100.0).swap_dims(1, 2).slice([0..2, 0..3, 1..3, 0..4]), // [2, 3, 2, 4], offset
        base(200.0).swap_dims(1, 2).flip([2]),                       // negative strides
        base(300.0).reshape([2, 5, 4, 3]).permute([0, 3, 1, 2]),     // last axis strided
    ];
    let dtypes = [DType::F32, DType::BF16, DType::F16];
    for dtype in dtypes.into_iter().filter(|&d| B::supports_dtype(device, d)) {
        let mut cache = LayerCache::<B>::new();
        let mut want_k = Vec::new();
        for view in &views {
            let view = view.clone().cast(dtype);
            want_k.push(view.clone().into_data().convert::<f32>());
            cache.append(view.clone(), view.neg());
        }
        let (k, v) = cache.get().unwrap();
        let mut offset = 0;
        for want in &want_k {
            let len = want.shape[2];
            let got = k.clone().slice([0..2, 0..3, offset..offset + len, 0..4]);
            assert_eq!(got.into_data().convert::<f32>(), *want, "{dtype:?}");
            let got_v = v
                .clone()
                .slice([0..2, 0..3, offset..offset + len, 0..4])
                .neg();
            assert_eq!(got_v.into_data().convert::<f32>(), *want, "{dtype:?}");
            offset += len;
        }
    }
}
