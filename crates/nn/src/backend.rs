//! Backend selection: compile-time aliases, a run-time choice among the compiled-in backends, and the float
//! dtypes each backend supports.
//!
//! Library code never names a backend: it is generic over `B: Backend`. Applications pick one at compile time
//! through the aliases below (each behind its cargo feature), or at run time with [`with_backend`], which maps a
//! user string such as `"cpu"`, `"cuda:1"` or `"wgpu"` to a call of generic code with that backend and device.
//!
//! ```
//! use blip2_nn::backend::{with_backend, BackendFn};
//! use burn::prelude::*;
//!
//! /// Generic work, monomorphised once per compiled-in backend.
//! struct SumOnes;
//! impl BackendFn for SumOnes {
//!     type Output = f32;
//!     fn run<B: Backend>(self, device: B::Device) -> f32 {
//!         Tensor::<B, 1>::ones([4], &device).sum().into_scalar().elem()
//!     }
//! }
//!
//! assert_eq!(with_backend("cpu", SumOnes).unwrap(), 4.0);
//! let err = with_backend("tpu", SumOnes).unwrap_err();
//! assert!(err.to_string().contains("unknown backend `tpu`"));
//! ```

use std::fmt;
use std::str::FromStr;

use burn::prelude::Backend;
use burn::tensor::DType;

use crate::Error;

/// The default CPU backend (`flex`: pure Rust, f32/f16/bf16, multithreaded).
#[cfg(feature = "flex")]
pub type Flex = burn::backend::Flex;
/// The ndarray CPU backend (f32 only).
#[cfg(feature = "ndarray")]
pub type NdArray = burn::backend::NdArray;
// The GPU aliases are Burn's cubecl backends *without* its fusion wrapper (`burn::backend::Wgpu` and friends
// are `Fusion<CubeBackend<..>>`). Under Burn 0.21's fusion a one-row product whose right operand is transposed
// (every `Linear` loaded from PyTorch's [out, in], and q·kᵀ in attention) followed by an elementwise op that reads
// another tensor (a bias, a mask) comes out wrong: the fused `gemv_unit_perpendicular` kernel autotune picks for
// it; one-row OPT decoding diverged from the second token. Measured on Mesa lavapipe; docs/backends.md has the
// cases. Unfused, the same kernels give transformers' numbers.
/// wgpu with WGSL shaders (Vulkan, Metal, DX12 or WebGPU underneath). f32 and, with `SHADER_F16`, f16.
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::wgpu::CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>;
/// wgpu with the SPIR-V compiler (Linux, Windows).
#[cfg(feature = "vulkan")]
pub type Vulkan = burn::backend::wgpu::CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u8>;
/// wgpu with the MSL compiler (macOS).
#[cfg(feature = "metal")]
pub type Metal = burn::backend::wgpu::CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u8>;
/// CUDA through cubecl (libcuda is loaded at run time).
#[cfg(feature = "cuda")]
pub type Cuda = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;

/// Training wrapper: `Autodiff<Flex>` and so on.
pub type Autodiff<B> = burn::backend::Autodiff<B>;

/// The first compiled-in backend in the order flex, ndarray, cuda, vulkan, metal, wgpu.
#[cfg(feature = "flex")]
pub type DefaultBackend = Flex;
#[cfg(all(not(feature = "flex"), feature = "ndarray"))]
pub type DefaultBackend = NdArray;
#[cfg(all(not(any(feature = "flex", feature = "ndarray")), feature = "cuda"))]
pub type DefaultBackend = Cuda;
#[cfg(all(
    not(any(feature = "flex", feature = "ndarray", feature = "cuda")),
    feature = "vulkan"
))]
pub type DefaultBackend = Vulkan;
#[cfg(all(
    not(any(
        feature = "flex",
        feature = "ndarray",
        feature = "cuda",
        feature = "vulkan"
    )),
    feature = "metal"
))]
pub type DefaultBackend = Metal;
#[cfg(all(
    not(any(
        feature = "flex",
        feature = "ndarray",
        feature = "cuda",
        feature = "vulkan",
        feature = "metal"
    )),
    feature = "wgpu"
))]
pub type DefaultBackend = Wgpu;

/// Names of the backends compiled into this build, in the order `cpu` resolves them.
pub const COMPILED_BACKENDS: &[&str] = &[
    #[cfg(feature = "flex")]
    "flex",
    #[cfg(feature = "ndarray")]
    "ndarray",
    #[cfg(feature = "cuda")]
    "cuda",
    #[cfg(feature = "vulkan")]
    "vulkan",
    #[cfg(feature = "metal")]
    "metal",
    #[cfg(feature = "wgpu")]
    "wgpu",
];

/// The backend families blip2 knows, whether or not they are compiled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// Pure-Rust CPU backend.
    Flex,
    /// ndarray CPU backend (f32 only).
    NdArray,
    /// wgpu with WGSL.
    Wgpu,
    /// wgpu with SPIR-V.
    Vulkan,
    /// wgpu with MSL.
    Metal,
    /// CUDA.
    Cuda,
}

impl BackendKind {
    /// The feature and user-facing name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Flex => "flex",
            Self::NdArray => "ndarray",
            Self::Wgpu => "wgpu",
            Self::Vulkan => "vulkan",
            Self::Metal => "metal",
            Self::Cuda => "cuda",
        }
    }

    /// Whether this backend was compiled into this build.
    pub fn is_compiled(self) -> bool {
        COMPILED_BACKENDS.contains(&self.name())
    }

    fn is_gpu(self) -> bool {
        !matches!(self, Self::Flex | Self::NdArray)
    }
}

/// A parsed device string: a backend and, for GPU backends, an optional device index.
///
/// Accepted forms: `cpu` (the first compiled-in CPU backend), `flex`, `ndarray`, `wgpu`, `vulkan`, `metal`,
/// `cuda` (device 0), and `NAME:INDEX` for the GPU backends (`cuda:1`, `wgpu:0` = the first discrete GPU).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    /// `None` for `cpu`: resolved to the first compiled-in CPU backend when used.
    pub kind: Option<BackendKind>,
    /// The GPU index, if one was given.
    pub index: Option<usize>,
}

impl DeviceSpec {
    /// The concrete backend this spec runs on in this build.
    pub fn resolve(&self) -> Result<BackendKind, Error> {
        match self.kind {
            Some(kind) if kind.is_compiled() => Ok(kind),
            Some(kind) => Err(Error::BackendNotCompiled {
                name: kind.name().to_string(),
                compiled: compiled_list(),
            }),
            None => [BackendKind::Flex, BackendKind::NdArray]
                .into_iter()
                .find(|k| k.is_compiled())
                .ok_or_else(|| Error::BackendNotCompiled {
                    name: "cpu".to_string(),
                    compiled: compiled_list(),
                }),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self, Error> {
        let trimmed = spec.trim().to_ascii_lowercase();
        let (name, index) = match trimmed.split_once(':') {
            Some((name, index)) => (name, Some(index)),
            None => (trimmed.as_str(), None),
        };
        let kind = match name {
            "cpu" => None,
            "flex" => Some(BackendKind::Flex),
            "ndarray" => Some(BackendKind::NdArray),
            "wgpu" => Some(BackendKind::Wgpu),
            "vulkan" => Some(BackendKind::Vulkan),
            "metal" => Some(BackendKind::Metal),
            "cuda" => Some(BackendKind::Cuda),
            _ => {
                return Err(Error::UnknownBackend {
                    name: spec.to_string(),
                    compiled: compiled_list(),
                });
            }
        };
        let index = match index {
            None => None,
            Some(_) if !kind.is_some_and(BackendKind::is_gpu) => {
                return Err(Error::InvalidDevice {
                    spec: spec.to_string(),
                    reason: format!("`{name}` is a CPU backend and takes no device index"),
                });
            }
            Some(i) => Some(i.parse::<usize>().map_err(|_| Error::InvalidDevice {
                spec: spec.to_string(),
                reason: format!("`{i}` is not a device index (expected e.g. `{name}:0`)"),
            })?),
        };
        Ok(Self { kind, index })
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.kind.map_or("cpu", BackendKind::name);
        match self.index {
            Some(i) => write!(f, "{name}:{i}"),
            None => f.write_str(name),
        }
    }
}

fn compiled_list() -> String {
    if COMPILED_BACKENDS.is_empty() {
        "none".to_string()
    } else {
        COMPILED_BACKENDS.join(", ")
    }
}

/// Generic work to run on a backend chosen at run time (see [`with_backend`]).
///
/// Rust closures cannot be generic, so the work is a type with a generic method; it is monomorphised once for
/// every compiled-in backend.
pub trait BackendFn {
    /// What the work returns.
    type Output;
    /// Runs the work with backend `B` on `device`.
    fn run<B: Backend>(self, device: B::Device) -> Self::Output;
}

/// Runs `work` on the backend and device named by `spec` (`"cpu"`, `"flex"`, `"cuda:1"`, ...).
///
/// # Errors
/// [`Error::UnknownBackend`] for a name blip2 does not know, [`Error::BackendNotCompiled`] (listing the
/// compiled-in backends) when the backend exists but this build lacks its feature, and
/// [`Error::InvalidDevice`] for a malformed index.
pub fn with_backend<F: BackendFn>(spec: &str, work: F) -> Result<F::Output, Error> {
    let spec: DeviceSpec = spec.parse()?;
    run_on(&spec, work)
}

/// [`with_backend`] for an already parsed [`DeviceSpec`].
// In a build with no backend feature (blip2-nn as a dependency of blip2-hub alone) every arm below is compiled
// out: `work` is unused and the match always returns.
#[cfg_attr(
    not(any(
        feature = "flex",
        feature = "ndarray",
        feature = "wgpu",
        feature = "vulkan",
        feature = "metal",
        feature = "cuda"
    )),
    allow(unused_variables, unreachable_code)
)]
pub fn run_on<F: BackendFn>(spec: &DeviceSpec, work: F) -> Result<F::Output, Error> {
    let kind = spec.resolve()?;
    // Each arm exists only when its feature is on; `resolve` already rejected the others.
    #[allow(unreachable_patterns, unused_variables)]
    let out = match kind {
        #[cfg(feature = "flex")]
        BackendKind::Flex => work.run::<Flex>(Default::default()),
        #[cfg(feature = "ndarray")]
        BackendKind::NdArray => work.run::<NdArray>(Default::default()),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => work.run::<Wgpu>(wgpu_device(spec.index)),
        #[cfg(feature = "vulkan")]
        BackendKind::Vulkan => work.run::<Vulkan>(wgpu_device(spec.index)),
        #[cfg(feature = "metal")]
        BackendKind::Metal => work.run::<Metal>(wgpu_device(spec.index)),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => work.run::<Cuda>(burn::backend::cuda::CudaDevice::new(
            spec.index.unwrap_or(0),
        )),
        other => {
            return Err(Error::BackendNotCompiled {
                name: other.name().to_string(),
                compiled: compiled_list(),
            });
        }
    };
    Ok(out)
}

#[cfg(any(feature = "wgpu", feature = "vulkan", feature = "metal"))]
fn wgpu_device(index: Option<usize>) -> burn::backend::wgpu::WgpuDevice {
    use burn::backend::wgpu::WgpuDevice;
    match index {
        // `CUBECL_WGPU_DEFAULT_DEVICE` can steer the default (e.g. `Cpu` for lavapipe).
        None => WgpuDevice::default(),
        Some(i) => WgpuDevice::DiscreteGpu(i),
    }
}

/// A floating-point dtype a model can hold in memory or on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FloatDType {
    /// 32-bit IEEE float (the reference precision).
    #[default]
    F32,
    /// 16-bit IEEE half. Overflows in T5; fine for OPT and the vision tower.
    F16,
    /// bfloat16: f32's range with 8 bits of mantissa. Recommended half precision for T5.
    BF16,
}

impl FloatDType {
    /// All float dtypes blip2 handles.
    pub const ALL: [FloatDType; 3] = [Self::F32, Self::F16, Self::BF16];

    /// The Burn dtype.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
        }
    }

    /// The short name (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }
}

impl fmt::Display for FloatDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FloatDType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" | "float" => Ok(Self::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::BF16),
            _ => Err(Error::UnknownDtype {
                name: s.to_string(),
            }),
        }
    }
}

impl TryFrom<DType> for FloatDType {
    type Error = Error;

    fn try_from(dtype: DType) -> Result<Self, Error> {
        match dtype {
            DType::F32 => Ok(Self::F32),
            DType::F16 => Ok(Self::F16),
            DType::BF16 => Ok(Self::BF16),
            other => Err(Error::UnknownDtype {
                name: format!("{other:?}"),
            }),
        }
    }
}

/// The float dtypes backend `B` can compute with on `device` (ndarray: f32 only; wgpu: f32 and maybe f16).
pub fn supported_float_dtypes<B: Backend>(device: &B::Device) -> Vec<FloatDType> {
    FloatDType::ALL
        .into_iter()
        .filter(|d| B::supports_dtype(device, d.dtype()))
        .collect()
}

/// Checks that `B` can compute in `dtype` on `device`, with an error that names the backend and what it supports.
pub fn ensure_dtype_supported<B: Backend>(
    device: &B::Device,
    dtype: FloatDType,
) -> Result<(), Error> {
    if B::supports_dtype(device, dtype.dtype()) {
        return Ok(());
    }
    Err(Error::UnsupportedDtype {
        backend: B::name(device),
        dtype,
        supported: supported_float_dtypes::<B>(device),
    })
}

/// Casts every float parameter of `module` to `dtype` (Burn 0.21 has no `Module::cast`); integer, bool and
/// int8 tensors are left alone. Lazy parameters are initialised first. For a model read from disk, prefer loading
/// straight into the wanted dtype ([`crate::loader::LoadOptions::with_dtype`]), which never holds two copies.
///
/// # Errors
/// [`Error::UnsupportedDtype`] when the backend cannot hold `dtype` (ndarray: f32 only).
pub fn cast_module<B: Backend, M: burn::module::Module<B>>(
    module: M,
    dtype: FloatDType,
    device: &B::Device,
) -> Result<M, Error> {
    ensure_dtype_supported::<B>(device, dtype)?;
    Ok(module.map(&mut CastParams {
        dtype: dtype.dtype(),
        containers: Vec::new(),
    }))
}

struct CastParams {
    dtype: DType,
    /// `Struct:Type.field` of each entered field.
    containers: Vec<String>,
}

impl<B: Backend> burn::module::ModuleMapper<B> for CastParams {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.containers.push(format!("{container_type}.{name}"));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.containers.pop();
    }

    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<burn::prelude::Tensor<B, D>>,
    ) -> burn::module::Param<burn::prelude::Tensor<B, D>> {
        let dtype = self.dtype;
        // int8 weights stay int8 (their scales are f32 whatever the activations' dtype).
        if matches!(param.val().dtype(), DType::QFloat(_)) {
            return param;
        }
        // A `Linear` weight is cast in its PyTorch layout ([out, in], of which the parameter is a transposed
        // view), so that the cast keeps that layout: a CPU backend materialises a cast of a view in the view's
        // order, which would turn the weight into a row-major [in, out] copy that the flex kernels cannot read.
        if D == 2
            && self
                .containers
                .last()
                .is_some_and(|c| c == "Struct:Linear.weight")
        {
            return param.map(move |tensor| tensor.swap_dims(0, 1).cast(dtype).swap_dims(0, 1));
        }
        param.map(move |tensor| tensor.cast(dtype))
    }
}
