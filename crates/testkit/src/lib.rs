//! Test support for blip2: reference fixtures, named tolerances, and comparisons that say what went wrong.
//!
//! - [`Fixture`]: a directory under `fixtures/` made by `scripts/make_fixtures.py` (an HF model directory plus
//!   `reference.safetensors` and its manifest `reference.json`); reference tensors by key.
//! - [`Tol`]: the named tolerances every parity test uses (never inline literals).
//! - [`compare`] / [`assert_close`]: element-wise comparison reporting shape, max abs diff, its index and a few
//!   value pairs; [`assert_ids_eq`] for token ids, which must match exactly.
//! - [`backend_tests!`]: writes a generic test once and runs it on every CPU backend (flex, ndarray; plus wgpu
//!   and CUDA with the `wgpu` and `cuda` features).
//! - [`hub_server`]: a tiny local HuggingFace hub, for download tests without the network.
//!
//! ```
//! use blip2_testkit::{Tol, compare};
//! use burn::tensor::TensorData;
//!
//! let want = TensorData::new(vec![1.0f32, 2.0, 3.0], [3]);
//! let got = TensorData::new(vec![1.0f32, 2.00001, 3.5], [3]);
//! let err = compare("demo", &got, &want, Tol::STAGE).unwrap_err();
//! assert!(err.to_string().contains("max abs diff 5.0000e-1 at [2]"));
//! ```

pub mod hub_server;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use burn::prelude::{Backend, Int, Tensor};
use burn::tensor::{DType, TensorData};

/// The default CPU backend in tests.
pub type Flex = burn::backend::Flex;
/// The f32-only CPU backend in tests.
pub type NdArray = burn::backend::NdArray;
/// CUDA (with the `cuda` feature): the unfused backend, as `blip2_nn::backend::Cuda` (which says why).
#[cfg(feature = "cuda")]
pub type Cuda = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;
/// wgpu (with the `wgpu` feature): the unfused backend, as `blip2_nn::backend::Wgpu` (which says why).
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::wgpu::CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>;

/// Writes `#[test]` wrappers that run the generic functions `fn name<B: Backend>(device: &B::Device)` on every
/// test backend: one module per backend (`flex::name`, `ndarray::name`, and `wgpu::name` / `cuda::name` with the
/// features).
///
/// ```
/// use burn::prelude::*;
///
/// fn sums<B: Backend>(device: &B::Device) {
///     let total: f32 = Tensor::<B, 1>::ones([3], device).sum().into_scalar().elem();
///     assert_eq!(total, 3.0);
/// }
///
/// // Expands to `mod flex { #[test] fn sums() }` and `mod ndarray { #[test] fn sums() }`.
/// blip2_testkit::backend_tests!(sums);
///
/// fn main() {
///     sums::<blip2_testkit::Flex>(&Default::default());
///     sums::<blip2_testkit::NdArray>(&Default::default());
/// }
/// ```
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),+ $(,)?) => {
        mod flex {
            $( #[test] fn $name() { super::$name::<$crate::Flex>(&::core::default::Default::default()); } )+
        }
        mod ndarray {
            $( #[test] fn $name() { super::$name::<$crate::NdArray>(&::core::default::Default::default()); } )+
        }
        $crate::__wgpu_tests!($($name),+);
        $crate::__cuda_tests!($($name),+);
    };
}

#[cfg(feature = "wgpu")]
#[doc(hidden)]
#[macro_export]
macro_rules! __wgpu_tests {
    ($($name:ident),+) => {
        mod wgpu {
            $( #[test] fn $name() { super::$name::<$crate::Wgpu>(&::core::default::Default::default()); } )+
        }
    };
}

#[cfg(not(feature = "wgpu"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __wgpu_tests {
    ($($name:ident),+) => {};
}

#[cfg(feature = "cuda")]
#[doc(hidden)]
#[macro_export]
macro_rules! __cuda_tests {
    ($($name:ident),+) => {
        mod cuda {
            $( #[test] fn $name() { super::$name::<$crate::Cuda>(&::core::default::Default::default()); } )+
        }
    };
}

#[cfg(not(feature = "cuda"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __cuda_tests {
    ($($name:ident),+) => {};
}

// ------------------------------------------------------------------------------------------------------------
// Tolerances and comparison
// ------------------------------------------------------------------------------------------------------------

/// A named tolerance: `|got - want| <= abs + rel * |want|` element-wise (numpy's `allclose`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tol {
    /// What the tolerance is for (shows in failure messages).
    pub name: &'static str,
    /// Relative part.
    pub rel: f64,
    /// Absolute part.
    pub abs: f64,
}

impl Tol {
    /// One f32 stage (a layer, an embedding) against the reference.
    pub const STAGE: Tol = Tol {
        name: "stage f32",
        rel: 1e-4,
        abs: 1e-5,
    };
    /// End-to-end logits (many stages of f32 rounding apart).
    pub const LOGITS: Tol = Tol {
        name: "end-to-end logits",
        rel: 1e-3,
        abs: 1e-4,
    };
    /// f16 runs against the f32 reference (and bf16 runs of a single op).
    pub const HALF: Tol = Tol {
        name: "half precision",
        rel: 1e-2,
        abs: 1e-2,
    };
    /// bf16 runs of several layers against the f32 reference. bf16 keeps 8 significant bits (a rounding step of
    /// 2^-8 relative), so drift through a few layers and LayerNorms passes [`Tol::HALF`]: transformers 5.24 itself,
    /// run in bf16 on the fixtures' two-layer vision towers, differs from its own f32 output by up to 4.9e-2
    /// (tiny-opt `last_hidden_state`, values up to 4), where f16 stays within 4.5e-3.
    pub const BF16: Tol = Tol {
        name: "bf16",
        rel: 2e-2,
        abs: 5e-2,
    };
    /// Beam search's `sequences_scores` (sums of f32 log-probabilities, length-normalised). The relative part is
    /// for scores that are not normalised (a negative `length_penalty`: sums of magnitude ~250): blip2's f32
    /// decoding kernel (`blip2_nn::kernels`, up to 4 rows) sums each logit's dot product in another order than
    /// `gemm` and torch, and such a score came out 1.22e-4 from transformers' at -242.69 (8 f32 ulps, 5e-7
    /// relative; tiny-opt-lm-350m and tiny-t5-lm, `gen/variant/beam4_return3_lpneg`).
    pub const BEAM_SCORES: Tol = Tol {
        name: "beam scores",
        rel: 1e-6,
        abs: 1e-4,
    };
    /// Bit-for-bit (ids, masks, integer data, uint8 pixels).
    pub const EXACT: Tol = Tol {
        name: "exact",
        rel: 0.0,
        abs: 0.0,
    };
}

/// Why two tensors differ.
#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    /// The tensor's name.
    pub name: String,
    /// Human-readable details.
    pub details: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.details)
    }
}

impl std::error::Error for Mismatch {}

/// How close two tensors were.
#[derive(Clone, Debug, PartialEq)]
pub struct Closeness {
    /// Largest `|got - want|`.
    pub max_abs_diff: f64,
    /// Where it is (multi-index).
    pub index: Vec<usize>,
}

fn as_f64(data: &TensorData) -> Vec<f64> {
    data.clone()
        .convert_dtype(DType::F64)
        .to_vec::<f64>()
        .expect("converted to f64")
}

fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (i, &dim) in shape.iter().enumerate().rev() {
        if dim > 0 {
            index[i] = flat % dim;
            flat /= dim;
        }
    }
    index
}

/// Compares `got` with `want` under `tol`. Infinities must match exactly (top-k/top-p fill with `-inf`); a NaN
/// anywhere is a mismatch unless `want` has a NaN at the same place.
///
/// # Errors
/// A [`Mismatch`] naming the tensor, with both shapes, or the number of elements outside the tolerance, the
/// max abs diff with its index, and the first few differing value pairs.
pub fn compare(
    name: &str,
    got: &TensorData,
    want: &TensorData,
    tol: Tol,
) -> Result<Closeness, Mismatch> {
    let fail = |details: String| Mismatch {
        name: name.to_string(),
        details,
    };
    let (gs, ws) = (got.shape.to_vec(), want.shape.to_vec());
    if gs != ws {
        return Err(fail(format!("shape {gs:?}, expected {ws:?}")));
    }
    let (g, w) = (as_f64(got), as_f64(want));
    let mut bad = Vec::new();
    let (mut max_diff, mut max_at) = (0.0f64, 0usize);
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        let ok = if a.is_nan() || b.is_nan() {
            a.is_nan() && b.is_nan()
        } else if a.is_infinite() || b.is_infinite() {
            a == b
        } else {
            let diff = (a - b).abs();
            if diff > max_diff {
                max_diff = diff;
                max_at = i;
            }
            diff <= tol.abs + tol.rel * b.abs()
        };
        if !ok {
            bad.push(i);
        }
    }
    if bad.is_empty() {
        return Ok(Closeness {
            max_abs_diff: max_diff,
            index: unravel(max_at, &gs),
        });
    }
    let pairs: Vec<String> = bad
        .iter()
        .take(5)
        .map(|&i| format!("{:?}: got {:.6e} want {:.6e}", unravel(i, &gs), g[i], w[i]))
        .collect();
    Err(fail(format!(
        "{} of {} elements outside {} (rel {:e}, abs {:e}); shape {gs:?}; max abs diff {max_diff:.4e} at {:?} \
         (got {:.6e} want {:.6e}); first: {}",
        bad.len(),
        g.len(),
        tol.name,
        tol.rel,
        tol.abs,
        unravel(max_at, &gs),
        g.get(max_at).copied().unwrap_or(f64::NAN),
        w.get(max_at).copied().unwrap_or(f64::NAN),
        pairs.join("; ")
    )))
}

/// [`compare`] that panics with the full report.
#[track_caller]
pub fn assert_close(name: &str, got: &TensorData, want: &TensorData, tol: Tol) -> Closeness {
    match compare(name, got, want, tol) {
        Ok(c) => c,
        Err(m) => panic!("{m}"),
    }
}

/// [`assert_close`] for a tensor against fixture data.
#[track_caller]
pub fn assert_tensor_close<B: Backend, const D: usize>(
    name: &str,
    got: &Tensor<B, D>,
    want: &TensorData,
    tol: Tol,
) -> Closeness {
    assert_close(name, &got.to_data(), want, tol)
}

/// Token ids must be equal: panics with the first differing position of each row.
#[track_caller]
pub fn assert_ids_eq(name: &str, got: &[Vec<i64>], want: &[Vec<i64>]) {
    if got == want {
        return;
    }
    let mut lines = vec![format!(
        "{name}: ids differ ({} rows, expected {})",
        got.len(),
        want.len()
    )];
    for (row, (g, w)) in got.iter().zip(want).enumerate() {
        if g != w {
            let at = g
                .iter()
                .zip(w)
                .position(|(a, b)| a != b)
                .unwrap_or(g.len().min(w.len()));
            lines.push(format!(
                "  row {row}: first difference at {at}\n    got  {g:?}\n    want {w:?}"
            ));
        }
    }
    panic!("{}", lines.join("\n"));
}

/// Generated ids equal to the fixture's `key` exactly, and, where the fixture has `{key}/scores`, beam scores
/// within [`Tol::BEAM_SCORES`].
#[track_caller]
pub fn assert_generated(fixture: &Fixture, key: &str, ids: &[Vec<i64>], scores: Option<&[f32]>) {
    let name = format!("{} {key}", fixture.name());
    assert_ids_eq(&name, ids, &fixture.id_rows(key));
    let scores_key = format!("{key}/scores");
    if fixture.has(&scores_key) {
        let got = scores.unwrap_or_else(|| panic!("{name}: beam search returns scores"));
        assert_close(
            &format!("{name} scores"),
            &TensorData::new(got.to_vec(), [got.len()]),
            fixture.data(&scores_key),
            Tol::BEAM_SCORES,
        );
    }
}

// ------------------------------------------------------------------------------------------------------------
// Fixtures
// ------------------------------------------------------------------------------------------------------------

/// The key -> shape list of a hub checkpoint in `fixtures/real-keys/{name}.json` (built by transformers on the
/// meta device), restricted to keys for which `keep` holds, without the tied keys a hub file may lack.
///
/// # Panics
/// When the file is missing or malformed (a broken fixture).
#[track_caller]
pub fn real_keys(name: &str, keep: impl Fn(&str) -> bool) -> BTreeMap<String, Vec<usize>> {
    let path = fixtures_root().join(format!("real-keys/{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("real-keys JSON");
    let tied = json["tied"].as_object().expect("`tied` object");
    json["keys"]
        .as_object()
        .expect("`keys` object")
        .iter()
        .filter(|(key, _)| keep(key) && !tied.contains_key(*key))
        .map(|(key, shape)| {
            (
                key.clone(),
                serde_json::from_value(shape.clone()).expect("a shape"),
            )
        })
        .collect()
}

/// The committed fixtures directory (`<workspace>/fixtures`), or `$BLIP2_FIXTURES` when set (a test binary run
/// on another machine than the one that built it).
pub fn fixtures_root() -> PathBuf {
    match std::env::var_os("BLIP2_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"),
    }
}

/// The names of every fixture directory that has a `reference.json`.
pub fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_root())
        .expect("fixtures/ exists (run `cargo xtask fixtures` to make it)")
        .filter_map(Result::ok)
        .filter(|e| e.path().join("reference.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// One stored reference tensor.
#[derive(Clone, Debug)]
pub struct Reference {
    /// Its data (f32, i64 or u8).
    pub data: TensorData,
    /// The manifest's one-line description.
    pub description: String,
}

/// A reference fixture: an HF model directory (maybe without a model, as `logits-processors`) with
/// `reference.safetensors` and `reference.json`.
#[derive(Debug)]
pub struct Fixture {
    name: String,
    dir: PathBuf,
    manifest: serde_json::Value,
    tensors: BTreeMap<String, TensorData>,
}

impl Fixture {
    /// Opens `fixtures/<name>`. Panics with a message saying how to regenerate when it is missing or broken
    /// (this is test code; a broken fixture is a failed test).
    #[track_caller]
    pub fn open(name: &str) -> Self {
        Self::try_open(name).unwrap_or_else(|e| panic!("fixture `{name}`: {e}"))
    }

    /// [`Fixture::open`] returning the problem instead of panicking.
    ///
    /// # Errors
    /// A description of what is missing or malformed.
    pub fn try_open(name: &str) -> Result<Self, String> {
        let dir = fixtures_root().join(name);
        let manifest_path = dir.join("reference.json");
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&manifest_path).map_err(|e| {
                format!(
                    "cannot read {}: {e} (run `cargo xtask fixtures`)",
                    manifest_path.display()
                )
            })?)
            .map_err(|e| format!("{} is not JSON: {e}", manifest_path.display()))?;
        let path = dir.join("reference.safetensors");
        let bytes =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| format!("{} is not valid safetensors: {e:?}", path.display()))?;
        let mut tensors = BTreeMap::new();
        for (key, view) in st.tensors() {
            let shape = view.shape().to_vec();
            let data = view.data();
            let data = match view.dtype() {
                safetensors::Dtype::F32 => TensorData::new(
                    data.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                    shape,
                ),
                safetensors::Dtype::I64 => TensorData::new(
                    data.chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                    shape,
                ),
                safetensors::Dtype::U8 => TensorData::new(data.to_vec(), shape),
                other => {
                    return Err(format!(
                        "{}: `{key}` has unexpected dtype {other:?}",
                        path.display()
                    ));
                }
            };
            tensors.insert(key, data);
        }
        Ok(Self {
            name: name.to_string(),
            dir,
            manifest,
            tensors,
        })
    }

    /// The fixture's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fixture directory (an HF model directory for model fixtures).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `reference.json`.
    pub fn manifest(&self) -> &serde_json::Value {
        &self.manifest
    }

    /// The image files of the fixture's batch, in the batch's order: `pixel_values`' description names the
    /// stems ("... for images ['a', 'b'] ..."), the manifest's `images` maps each to its file under
    /// `fixtures/images/` (serde_json does not keep object order, so the manifest alone cannot give it).
    pub fn batch_images(&self) -> Vec<PathBuf> {
        let description = self.description("pixel_values");
        let (open, close) = (description.find('['), description.find(']'));
        let (Some(open), Some(close)) = (open, close) else {
            panic!(
                "{}: pixel_values' description names no images: {description}",
                self.name
            );
        };
        description[open + 1..close]
            .split(',')
            .map(|stem| {
                let stem = stem.trim().trim_matches('\'');
                let file = self.manifest["images"][stem]
                    .as_str()
                    .unwrap_or_else(|| panic!("{}: no image `{stem}` in the manifest", self.name));
                fixtures_root().join("images").join(file)
            })
            .collect()
    }

    /// All reference keys, sorted.
    pub fn keys(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    /// Whether a reference key exists.
    pub fn has(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// A reference tensor's data; panics naming the fixture and the key when absent.
    #[track_caller]
    pub fn data(&self, key: &str) -> &TensorData {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("fixture `{}` has no reference `{key}`", self.name))
    }

    /// A reference tensor with its description.
    #[track_caller]
    pub fn reference(&self, key: &str) -> Reference {
        Reference {
            data: self.data(key).clone(),
            description: self.description(key).to_string(),
        }
    }

    /// The manifest's description of `key`.
    pub fn description(&self, key: &str) -> &str {
        self.manifest["tensors"][key]["description"]
            .as_str()
            .unwrap_or("")
    }

    /// A float reference as a tensor on `device`.
    #[track_caller]
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        key: &str,
        device: &B::Device,
    ) -> Tensor<B, D> {
        Tensor::from_data(self.data(key).clone().convert_dtype(DType::F32), device)
    }

    /// An integer reference (ids, masks) as a tensor on `device`.
    #[track_caller]
    pub fn int_tensor<B: Backend, const D: usize>(
        &self,
        key: &str,
        device: &B::Device,
    ) -> Tensor<B, D, Int> {
        let data = self.data(key).clone();
        let ints: Vec<i64> = data
            .clone()
            .convert_dtype(DType::I64)
            .to_vec()
            .expect("integer data");
        Tensor::from_data(TensorData::new(ints, data.shape.clone()), device)
    }

    /// Rows of a 2-D integer reference (e.g. generated ids).
    #[track_caller]
    pub fn id_rows(&self, key: &str) -> Vec<Vec<i64>> {
        let data = self.data(key);
        let shape = data.shape.to_vec();
        assert_eq!(shape.len(), 2, "`{key}` is not 2-D: {shape:?}");
        let ints: Vec<i64> = data
            .clone()
            .convert_dtype(DType::I64)
            .to_vec()
            .expect("integer data");
        ints.chunks(shape[1]).map(<[i64]>::to_vec).collect()
    }
}
