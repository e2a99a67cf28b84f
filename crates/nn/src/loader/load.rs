//! Strict loading of a Burn module from a [`Checkpoint`].
//!
//! Give it a module straight from its config's `init` (parameters still lazy): loading replaces every parameter
//! without running its initializer, so init + load costs about the time to read the bytes. (A module that already
//! holds values loads too, e.g. to restore fine-tuned weights; its old values are simply replaced.) Each
//! parameter is read from the memory map, cast on the host to the requested dtype and placed on the module's
//! device; `Linear`s built with `LinearLayout::Col` take PyTorch's `[out, in]` weights as they are.
//!
//! Strict in both directions: a parameter without a tensor, a tensor (in the part of the checkpoint the
//! [`KeyMap`] owns) without a parameter, a shape or dtype mismatch: all are collected into one
//! [`LoadReport`], and any of them makes the load fail with [`Error::Incompatible`] listing every problem.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::{Backend, Bool, Int, Tensor};

use super::{Checkpoint, KeyMap, ModulePath};
use crate::Error;
use crate::backend::{FloatDType, ensure_dtype_supported};

/// How to load: the in-memory dtype, the key map, tied parameters and keys that may go unused.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// The dtype parameters get in memory, whatever the dtype on disk.
    pub dtype: FloatDType,
    /// Parameter path -> checkpoint key.
    pub key_map: KeyMap,
    /// `(target, source)` checkpoint keys: when `target` is absent, its parameter is loaded from `source`
    /// (e.g. OPT's `lm_head.weight` from `model.decoder.embed_tokens.weight`).
    pub tied: Vec<(String, String)>,
    /// Checkpoint keys that may be present without a parameter (exact names, or patterns with `*`).
    pub ignore: Vec<String>,
    /// Quantize every `Linear` weight to int8 while loading, with this many outputs per scale (see
    /// [`crate::quantize_linear`]; a weight whose output size this group does not divide takes the largest
    /// multiple of 16 that does, or stays in `dtype` when none does). Each weight is read, quantized and
    /// dropped in turn, so the model never exists in full precision.
    pub int8_group: Option<usize>,
}

/// The in-memory form of a part's weights: a float dtype, and optionally its `Linear` weights in int8.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WeightFormat {
    /// The dtype of every float parameter that is not quantized.
    pub dtype: FloatDType,
    /// `Some(group)`: `Linear` weights in int8 with `group` outputs per scale.
    pub int8_group: Option<usize>,
}

impl From<FloatDType> for WeightFormat {
    fn from(dtype: FloatDType) -> Self {
        Self {
            dtype,
            int8_group: None,
        }
    }
}

impl LoadOptions {
    /// Options with `key_map` and f32 parameters.
    pub fn new(key_map: KeyMap) -> Self {
        Self {
            key_map,
            ..Self::default()
        }
    }

    /// Sets the in-memory dtype.
    pub fn with_dtype(mut self, dtype: FloatDType) -> Self {
        self.dtype = dtype;
        self
    }

    /// Sets the dtype and the int8 quantization.
    pub fn with_format(mut self, format: impl Into<WeightFormat>) -> Self {
        let format = format.into();
        self.dtype = format.dtype;
        self.int8_group = format.int8_group;
        self
    }

    /// Adds a tied parameter: `target` falls back to `source` when absent.
    pub fn with_tied(mut self, target: &str, source: &str) -> Self {
        self.tied.push((target.to_string(), source.to_string()));
        self
    }

    /// Adds a checkpoint key (or `*` pattern) that may go unused.
    pub fn with_ignored(mut self, pattern: &str) -> Self {
        self.ignore.push(pattern.to_string());
        self
    }
}

/// One disagreement between a module and a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The module has a parameter the checkpoint lacks.
    Missing {
        /// The checkpoint key that was looked for.
        key: String,
    },
    /// The checkpoint has a tensor (in the module's part) that no parameter takes.
    Unexpected {
        /// The checkpoint key.
        key: String,
        /// The file that holds it.
        file: PathBuf,
    },
    /// Shapes differ.
    ShapeMismatch {
        /// The checkpoint key.
        key: String,
        /// The file that holds it.
        file: PathBuf,
        /// The parameter's shape (PyTorch layout).
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// The tensor is not a float tensor.
    WrongDtype {
        /// The checkpoint key.
        key: String,
        /// The file that holds it.
        file: PathBuf,
        /// The dtype in the file.
        dtype: String,
    },
    /// An integer or bool parameter in the module: blip2 models have none, and none are loaded.
    UnsupportedParam {
        /// The parameter path.
        path: String,
    },
}

impl Problem {
    /// The kinds, as the report counts them.
    const KINDS: [&'static str; 5] = [
        "missing",
        "unexpected",
        "shape mismatches",
        "wrong dtypes",
        "unsupported parameters",
    ];

    fn kind_index(&self) -> usize {
        match self {
            Self::Missing { .. } => 0,
            Self::Unexpected { .. } => 1,
            Self::ShapeMismatch { .. } => 2,
            Self::WrongDtype { .. } => 3,
            Self::UnsupportedParam { .. } => 4,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { key } => write!(f, "missing: `{key}`"),
            Self::Unexpected { key, file } => {
                write!(f, "unexpected: `{key}` (in {})", file.display())
            }
            Self::ShapeMismatch {
                key,
                file,
                expected,
                found,
            } => write!(
                f,
                "shape mismatch: `{key}` is {found:?} in {} but the model expects {expected:?}",
                file.display()
            ),
            Self::WrongDtype { key, file, dtype } => write!(
                f,
                "wrong dtype: `{key}` in {} is {dtype}, a float tensor is expected",
                file.display()
            ),
            Self::UnsupportedParam { path } => {
                write!(f, "unsupported: `{path}` is an integer or bool parameter")
            }
        }
    }
}

/// What a load did: the files read, the tensors loaded, tied fallbacks used, ignored keys, and the problems.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Where the checkpoint came from.
    pub source: PathBuf,
    /// Checkpoint keys loaded into parameters, in module order.
    pub loaded: Vec<String>,
    /// `(target, source)` pairs where the target was absent and the source was used.
    pub tied: Vec<(String, String)>,
    /// Unused checkpoint keys that the ignore list allowed.
    pub ignored: Vec<String>,
    /// Every disagreement; empty for a clean load.
    pub problems: Vec<Problem>,
    /// `(key, group)` for each weight held in int8 ([`LoadOptions::int8_group`]): the parameter's own key, also
    /// when it was read from a tied source (listed in `tied`).
    pub quantized: Vec<(String, usize)>,
}

impl LoadReport {
    /// How many problems of each kind (missing, unexpected, shape mismatch, ...) the report's message lists;
    /// the rest are counted ("... and 1234 more missing"). [`LoadReport::problems`] keeps them all.
    pub const MAX_LISTED: usize = 20;

    /// Whether nothing is missing, unexpected or mismatched.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// Keys of the missing parameters.
    pub fn missing(&self) -> Vec<&str> {
        self.problems
            .iter()
            .filter_map(|p| match p {
                Problem::Missing { key } => Some(key.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Keys of the unexpected tensors.
    pub fn unexpected(&self) -> Vec<&str> {
        self.problems
            .iter()
            .filter_map(|p| match p {
                Problem::Unexpected { key, .. } => Some(key.as_str()),
                _ => None,
            })
            .collect()
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            return write!(
                f,
                "loaded {} tensors from {}",
                self.loaded.len(),
                self.source.display()
            );
        }
        write!(
            f,
            "checkpoint {} does not match the model ({} problem{}):",
            self.source.display(),
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        // A damaged config can make every key of a checkpoint unexpected, or ask for thousands of parameters:
        // list the first few of each kind, then count the rest.
        let mut shown = [0usize; Problem::KINDS.len()];
        for problem in &self.problems {
            let kind = problem.kind_index();
            shown[kind] += 1;
            if shown[kind] <= Self::MAX_LISTED {
                write!(f, "\n  - {problem}")?;
            }
        }
        for (kind, &count) in shown.iter().enumerate() {
            if count > Self::MAX_LISTED {
                write!(
                    f,
                    "\n  - ... and {} more {} (LoadReport::problems has them all)",
                    count - Self::MAX_LISTED,
                    Problem::KINDS[kind]
                )?;
            }
        }
        Ok(())
    }
}

/// Loads every parameter of a freshly `init`ed `module` from `checkpoint`.
///
/// # Errors
/// [`Error::UnsupportedDtype`] when the backend cannot hold `options.dtype`; [`Error::Incompatible`] with the
/// full report when anything is missing, unexpected or mismatched; [`Error::Io`]-like errors from reading.
pub fn load_module<B: Backend, M: Module<B>>(
    module: M,
    checkpoint: &Checkpoint,
    options: &LoadOptions,
    device: &B::Device,
) -> Result<(M, LoadReport), Error> {
    ensure_dtype_supported::<B>(device, options.dtype)?;
    let mut applier = Applier {
        checkpoint,
        options,
        path: ModulePath::default(),
        containers: Vec::new(),
        consumed: BTreeSet::new(),
        report: LoadReport {
            source: checkpoint.source().to_path_buf(),
            ..LoadReport::default()
        },
        failure: None,
    };
    let module = module.map(&mut applier);
    crate::alloc::release_free_memory();
    let Applier {
        consumed,
        mut report,
        failure,
        ..
    } = applier;
    if let Some(error) = failure {
        return Err(error);
    }
    for key in checkpoint.keys() {
        if consumed.contains(key) || !options.key_map.owns(key) {
            continue;
        }
        if options.ignore.iter().any(|p| matches_pattern(p, key)) {
            report.ignored.push(key.to_string());
        } else {
            report.problems.push(Problem::Unexpected {
                key: key.to_string(),
                file: checkpoint
                    .file_of(key)
                    .unwrap_or(checkpoint.source())
                    .to_path_buf(),
            });
        }
    }
    if report.is_clean() {
        Ok((module, report))
    } else {
        Err(Error::Incompatible(Box::new(report)))
    }
}

struct Applier<'a> {
    checkpoint: &'a Checkpoint,
    options: &'a LoadOptions,
    path: ModulePath,
    /// The struct type each entered field belongs to (`Struct:Linear`, ...).
    containers: Vec<String>,
    consumed: BTreeSet<String>,
    report: LoadReport,
    /// The first read error: it ends the load.
    failure: Option<Error>,
}

impl Applier<'_> {
    /// The checkpoint key holding the current parameter: its own key, else a tied source.
    fn resolve(&mut self, key: &str) -> Option<String> {
        if self.checkpoint.contains(key) {
            return Some(key.to_string());
        }
        let (_, source) = self
            .options
            .tied
            .iter()
            .find(|(target, source)| target == key && self.checkpoint.contains(source))?;
        self.report.tied.push((key.to_string(), source.clone()));
        Some(source.clone())
    }
}

impl<B: Backend> ModuleMapper<B> for Applier<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
        self.containers.push(format!("{container_type}.{name}"));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
        self.containers.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if self.failure.is_some() {
            return param;
        }
        let key = self.options.key_map.to_file_key(&self.path.current());
        let Some(stored) = self.resolve(&key) else {
            self.report.problems.push(Problem::Missing { key });
            return param;
        };
        self.consumed.insert(stored.clone());
        let info = self
            .checkpoint
            .info(&stored)
            .expect("resolve returns stored keys");
        let file = || {
            self.checkpoint
                .file_of(&stored)
                .expect("resolve returns stored keys")
                .to_path_buf()
        };
        if !info.is_float() {
            self.report.problems.push(Problem::WrongDtype {
                key: stored.clone(),
                file: file(),
                dtype: format!("{:?}", info.dtype),
            });
            return param;
        }
        // Shapes are compared in the checkpoint's layout: the lazy shape of a fresh `LinearLayout::Col` weight is
        // PyTorch's [out, in]; an initialised one (reloading into a trained module) is a transposed view, and its
        // save mapper gives the stored layout back without copying.
        let expected = if param.is_initialized() {
            param.transform_for_save().val().shape().to_vec()
        } else {
            param.lazy_shape().to_vec()
        };
        if info.shape != expected {
            self.report.problems.push(Problem::ShapeMismatch {
                key: stored.clone(),
                file: file(),
                expected,
                found: info.shape.clone(),
            });
            return param;
        }
        if let Some(group) = self.options.int8_group
            && D == 2
            && self
                .containers
                .last()
                .is_some_and(|c| c == "Struct:Linear.weight")
            && let Some(group) = crate::q8_group_for(info.shape[0], group)
        {
            return self.load_q8(param, &key, &stored, group);
        }
        let data = match self.checkpoint.read(&stored, self.options.dtype) {
            Ok(data) => data,
            Err(error) => {
                self.failure = Some(error);
                return param;
            }
        };
        let device = param.lazy_device();
        let tensor = Tensor::<B, D>::from_data(data, (&device, self.options.dtype.dtype()));
        self.report.loaded.push(stored.clone());
        let id = param.id;
        // Applies the parameter's load mapper (the transpose of a Col-layout Linear) and keeps require_grad.
        param.transform_for_load(tensor, id)
    }

    fn map_int<const D: usize>(
        &mut self,
        param: Param<Tensor<B, D, Int>>,
    ) -> Param<Tensor<B, D, Int>> {
        self.report.problems.push(Problem::UnsupportedParam {
            path: self.path.current(),
        });
        param
    }

    fn map_bool<const D: usize>(
        &mut self,
        param: Param<Tensor<B, D, Bool>>,
    ) -> Param<Tensor<B, D, Bool>> {
        self.report.problems.push(Problem::UnsupportedParam {
            path: self.path.current(),
        });
        param
    }
}

impl Applier<'_> {
    /// Reads the PyTorch-layout weight `[n, k]` of a `Linear` as f32 (from `stored`: its own key `key` or a tied
    /// source) and holds it as Burn's int8 `[k, n]` (on flex a view of `[n, k]` values, in the checkpoint's
    /// order).
    fn load_q8<B: Backend, const D: usize>(
        &mut self,
        param: Param<Tensor<B, D>>,
        key: &str,
        stored: &str,
        group: usize,
    ) -> Param<Tensor<B, D>> {
        // In runs of rows, about 32 MiB of f32 at a time: the whole weight in f32 would add its size to the peak
        // (824 MB for OPT-6.7b's head, quantized last, with the rest of the model already in memory).
        const RUN_BYTES: usize = 32 << 20;
        let shape = &self
            .checkpoint
            .info(stored)
            .expect("resolve returns stored keys")
            .shape;
        let [n, k] = [shape[0], shape[1]];
        let run = (RUN_BYTES / (4 * k.max(1)) / group).max(1) * group;
        let groups = n / group;
        let mut values = vec![0i8; k * n];
        let mut scales = vec![0f32; k * groups];
        for j0 in (0..n).step_by(run) {
            let rows = j0..(j0 + run).min(n);
            let data = match self.checkpoint.read_rows(stored, rows, FloatDType::F32) {
                Ok(data) => data,
                Err(error) => {
                    self.failure = Some(error);
                    return param;
                }
            };
            let w: &[f32] = data.as_slice().expect("read as f32");
            crate::kernels::quantize_q8_transposed_into(
                w,
                j0,
                n,
                k,
                group,
                &mut values,
                &mut scales,
            );
        }
        let device = param.lazy_device();
        let tensor = crate::linear::q8_tensor::<B, D>(values, scales, k, n, group, &device);
        crate::alloc::release_free_memory();
        self.report.loaded.push(stored.to_string());
        self.report.quantized.push((key.to_string(), group));
        Param::initialized(param.id, tensor)
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub(crate) fn matches_pattern(pattern: &str, key: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == key;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !key.starts_with(first) || !key[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &key[first.len()..key.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::matches_pattern;

    #[test]
    fn patterns() {
        assert!(matches_pattern("a.b", "a.b"));
        assert!(!matches_pattern("a.b", "a.bc"));
        assert!(matches_pattern(
            "*.rotary.inv_freq",
            "layers.3.rotary.inv_freq"
        ));
        assert!(matches_pattern(
            "decoder.block.0.*.relative_attention_bias.weight",
            "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"
        ));
        assert!(!matches_pattern("x*y", "xy_"));
        assert!(matches_pattern("*", "anything"));
    }
}
