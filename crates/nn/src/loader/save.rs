//! Saving a module back to safetensors with HF names and layouts, so that transformers can load it.
//!
//! Tensors are written one at a time (the header first, from the shapes alone), so saving needs host memory for
//! one tensor, not for the model. The file is written next to the target and renamed over it at the end: an
//! interrupted save never leaves a truncated checkpoint behind.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::{Backend, Tensor};
use burn::tensor::TensorData;

use super::{KeyMap, ModulePath};
use crate::Error;
use crate::backend::FloatDType;

/// Writes every float parameter of `module` to the safetensors file `path`, keys mapped by `key_map` (the same
/// map that loads it), values converted to `dtype`, `Linear` weights in PyTorch's `[out, in]` layout.
///
/// `metadata` goes into the header next to `"format": "pt"` (which transformers requires). A model made of parts
/// with their own key maps is saved into one file with [`SafetensorsWriter`].
///
/// # Errors
/// [`Error::Io`] naming the file; [`Error::DuplicateKey`] if two parameters map to one key.
pub fn save_module<B: Backend, M: Module<B>>(
    module: &M,
    path: impl AsRef<Path>,
    key_map: &KeyMap,
    dtype: FloatDType,
    metadata: &BTreeMap<String, String>,
) -> Result<(), Error> {
    let mut writer = SafetensorsWriter::new();
    writer.add(module, key_map);
    writer.write(path, dtype, metadata)
}

/// Collects the parameters of one or more modules, each under its own [`KeyMap`], and writes them to one
/// safetensors file (see [`save_module`] for the layout). Values stay on their device until written; writing
/// needs host memory for one tensor at a time.
///
/// ```no_run
/// # use blip2_nn::loader::{KeyMap, SafetensorsWriter};
/// # use blip2_nn::backend::FloatDType;
/// # fn save<B: burn::prelude::Backend>(vision: &burn::nn::Linear<B>, head: &burn::nn::Linear<B>) -> Result<(), blip2_nn::Error> {
/// let mut writer = SafetensorsWriter::new();
/// writer.add(vision, &KeyMap::under("vision_model")).add(head, &KeyMap::under("itm_head"));
/// writer.write("model.safetensors", FloatDType::F32, &Default::default())
/// # }
/// ```
#[derive(Debug)]
pub struct SafetensorsWriter<B: Backend> {
    /// Sorted by key, which is the order of the header and of the data.
    tensors: BTreeMap<String, ErasedTensor<B>>,
    duplicate: Option<String>,
}

impl<B: Backend> Default for SafetensorsWriter<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: Backend> SafetensorsWriter<B> {
    /// An empty writer.
    pub fn new() -> Self {
        Self {
            tensors: BTreeMap::new(),
            duplicate: None,
        }
    }

    /// Adds every float parameter of `module`, keys mapped by `key_map`.
    pub fn add<M: Module<B>>(&mut self, module: &M, key_map: &KeyMap) -> &mut Self {
        let mut collector = Collector::<B> {
            key_map,
            path: ModulePath::default(),
            writer: self,
        };
        module.visit(&mut collector);
        self
    }

    /// Writes the collected tensors to `path` in `dtype`, atomically (a `.partial` file renamed at the end).
    ///
    /// # Errors
    /// [`Error::Io`] naming the file; [`Error::DuplicateKey`] if two parameters mapped to one key.
    pub fn write(
        &self,
        path: impl AsRef<Path>,
        dtype: FloatDType,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let path = path.as_ref();
        if let Some(key) = &self.duplicate {
            return Err(Error::DuplicateKey {
                key: key.clone(),
                first: path.to_path_buf(),
                second: path.to_path_buf(),
            });
        }

        let mut header = serde_json::Map::new();
        let mut meta = serde_json::Map::new();
        meta.insert("format".into(), "pt".into());
        for (k, v) in metadata {
            meta.insert(k.clone(), v.clone().into());
        }
        header.insert("__metadata__".into(), meta.into());
        let mut offset = 0usize;
        for (key, tensor) in &self.tensors {
            let shape = tensor.shape().to_vec();
            let len = shape.iter().product::<usize>() * dtype.size();
            header.insert(
                key.clone(),
                serde_json::json!({
                    "dtype": match dtype { FloatDType::F32 => "F32", FloatDType::F16 => "F16", FloatDType::BF16 => "BF16" },
                    "shape": shape,
                    "data_offsets": [offset, offset + len],
                }),
            );
            offset += len;
        }
        let mut header = serde_json::to_vec(&serde_json::Value::Object(header))
            .expect("a JSON map of strings and numbers serializes");
        // Pad the header with spaces so the data starts 8-byte aligned, as the reference writer does.
        header.resize(header.len().next_multiple_of(8), b' ');

        let tmp = path.with_extension("safetensors.partial");
        let write = || -> std::io::Result<()> {
            let mut out = BufWriter::new(std::fs::File::create(&tmp)?);
            out.write_all(&(header.len() as u64).to_le_bytes())?;
            out.write_all(&header)?;
            for tensor in self.tensors.values() {
                out.write_all(&to_le_bytes(tensor.to_data(), dtype))?;
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(&tmp, e));
        }
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }
}

/// The tensor's bytes in `dtype`, little-endian as safetensors stores them.
fn to_le_bytes(data: TensorData, dtype: FloatDType) -> Vec<u8> {
    // `TensorData` holds native-endian bytes; safetensors is little-endian.
    const _: () = assert!(
        cfg!(target_endian = "little"),
        "blip2 supports little-endian hosts only"
    );
    data.convert_dtype(dtype.dtype()).into_bytes().to_vec()
}

struct Collector<'a, B: Backend> {
    key_map: &'a KeyMap,
    path: ModulePath,
    writer: &'a mut SafetensorsWriter<B>,
}

/// A parameter value of any rank, in the layout it is saved in.
#[derive(Debug)]
struct ErasedTensor<B: Backend> {
    shape: Vec<usize>,
    flat: Tensor<B, 1>,
}

impl<B: Backend> ErasedTensor<B> {
    fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values in row-major order of `shape` (all the file needs).
    fn to_data(&self) -> TensorData {
        self.flat.to_data()
    }
}

impl<B: Backend> ModuleVisitor<B> for Collector<'_, B> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let key = self.key_map.to_file_key(&self.path.current());
        // `transform_for_save` undoes the Col-layout transpose: the value is PyTorch's [out, in].
        let value = param.transform_for_save().val();
        let shape = value.shape().to_vec();
        let flat = value.reshape([shape.iter().product::<usize>()]);
        if self
            .writer
            .tensors
            .insert(key.clone(), ErasedTensor { shape, flat })
            .is_some()
        {
            self.writer.duplicate.get_or_insert(key);
        }
    }
}
