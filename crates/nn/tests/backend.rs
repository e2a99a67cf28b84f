//! Backend selection by name, the error for a backend that is not compiled in, and dtype support queries.

use blip2_nn::Error;
use blip2_nn::backend::{
    BackendFn, BackendKind, COMPILED_BACKENDS, DeviceSpec, FloatDType, ensure_dtype_supported,
    supported_float_dtypes, with_backend,
};
use blip2_testkit::{Flex, NdArray};
use burn::prelude::*;
use burn::tensor::DType;

/// Generic work: reports the backend's name and the sum of a tensor computed on it.
struct Probe;

impl BackendFn for Probe {
    type Output = (String, f32);
    fn run<B: Backend>(self, device: B::Device) -> (String, f32) {
        let sum = Tensor::<B, 1>::from_floats([1.0, 2.0, 3.5], &device)
            .sum()
            .into_scalar()
            .elem();
        (B::name(&device), sum)
    }
}

#[test]
fn device_strings_parse() {
    let spec = |s: &str| s.parse::<DeviceSpec>().unwrap();
    assert_eq!(
        spec("cpu"),
        DeviceSpec {
            kind: None,
            index: None
        }
    );
    assert_eq!(
        spec("FLEX"),
        DeviceSpec {
            kind: Some(BackendKind::Flex),
            index: None
        }
    );
    assert_eq!(
        spec("cuda"),
        DeviceSpec {
            kind: Some(BackendKind::Cuda),
            index: None
        }
    );
    assert_eq!(
        spec("cuda:1"),
        DeviceSpec {
            kind: Some(BackendKind::Cuda),
            index: Some(1)
        }
    );
    assert_eq!(spec("wgpu:0").to_string(), "wgpu:0");
    assert_eq!(spec("vulkan").kind, Some(BackendKind::Vulkan));
    assert_eq!(spec("metal").kind, Some(BackendKind::Metal));
    assert_eq!(spec("ndarray").kind, Some(BackendKind::NdArray));
}

#[test]
fn malformed_device_strings_are_named() {
    for (input, needle) in [
        ("cuda:x", "`x` is not a device index"),
        ("flex:1", "takes no device index"),
    ] {
        match input.parse::<DeviceSpec>() {
            Err(e @ Error::InvalidDevice { .. }) => {
                let message = e.to_string();
                assert!(
                    message.contains(input) && message.contains(needle),
                    "{message}"
                );
            }
            other => panic!("expected InvalidDevice for {input}, got {other:?}"),
        }
    }
    match with_backend("tpu", Probe) {
        Err(e @ Error::UnknownBackend { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("`tpu`") && message.contains("compiled in: flex"),
                "{message}"
            );
        }
        other => panic!("expected UnknownBackend, got {other:?}"),
    }
}

#[test]
fn cpu_runs_generic_code_on_the_default_backend() {
    assert_eq!(
        COMPILED_BACKENDS.first(),
        Some(&"flex"),
        "flex is the default feature"
    );
    let (name, sum) = with_backend("cpu", Probe).unwrap();
    assert_eq!(sum, 6.5);
    assert!(!name.is_empty());
    assert_eq!(with_backend("flex", Probe).unwrap().1, 6.5);
}

#[test]
fn backends_not_compiled_in_say_how_to_get_them() {
    for name in ["cuda", "cuda:1", "wgpu", "vulkan", "metal", "ndarray"] {
        let kind = name.parse::<DeviceSpec>().unwrap().kind.unwrap();
        if kind.is_compiled() {
            continue;
        }
        match with_backend(name, Probe) {
            Err(e @ Error::BackendNotCompiled { .. }) => {
                let message = e.to_string();
                let base = kind.name();
                assert!(
                    message.contains(&format!("`{base}` is not compiled")),
                    "{message}"
                );
                assert!(message.contains("compiled in: flex"), "{message}");
                assert!(message.contains(&format!("--features {base}")), "{message}");
            }
            other => panic!("expected BackendNotCompiled for {name}, got {other:?}"),
        }
    }
}

#[test]
fn dtype_support_per_backend() {
    assert_eq!(
        supported_float_dtypes::<Flex>(&Default::default()),
        FloatDType::ALL.to_vec()
    );
    assert_eq!(
        supported_float_dtypes::<NdArray>(&Default::default()),
        vec![FloatDType::F32]
    );
    ensure_dtype_supported::<Flex>(&Default::default(), FloatDType::BF16).unwrap();
    match ensure_dtype_supported::<NdArray>(&Default::default(), FloatDType::F16) {
        Err(e @ Error::UnsupportedDtype { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("does not support f16") && message.contains("supports: f32"),
                "{message}"
            );
        }
        other => panic!("expected UnsupportedDtype, got {other:?}"),
    }
}

#[test]
fn dtype_names_parse() {
    assert_eq!("bfloat16".parse::<FloatDType>().unwrap(), FloatDType::BF16);
    assert_eq!("fp16".parse::<FloatDType>().unwrap(), FloatDType::F16);
    assert_eq!("F32".parse::<FloatDType>().unwrap(), FloatDType::F32);
    match "f8".parse::<FloatDType>() {
        Err(e @ Error::UnknownDtype { .. }) => assert!(e.to_string().contains("`f8`")),
        other => panic!("expected UnknownDtype, got {other:?}"),
    }
}

#[test]
fn cast_module_casts_float_params_where_supported() {
    use burn::nn::{Linear, LinearConfig};
    let device = Default::default();
    let linear: Linear<Flex> = LinearConfig::new(3, 2).init(&device);
    let before: Vec<f32> = linear.weight.val().into_data().to_vec().unwrap();
    let half = blip2_nn::backend::cast_module(linear, FloatDType::BF16, &device).unwrap();
    assert_eq!(half.weight.val().dtype(), DType::BF16);
    assert_eq!(half.bias.as_ref().unwrap().val().dtype(), DType::BF16);
    let after: Vec<f32> = half
        .weight
        .val()
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap();
    for (a, b) in before.iter().zip(&after) {
        assert!((a - b).abs() <= a.abs() * 2f32.powi(-8), "{a} -> {b}");
    }

    let linear: Linear<NdArray> = LinearConfig::new(3, 2).init(&Default::default());
    let err =
        blip2_nn::backend::cast_module(linear, FloatDType::F16, &Default::default()).unwrap_err();
    assert!(matches!(err, Error::UnsupportedDtype { .. }), "{err}");
}
