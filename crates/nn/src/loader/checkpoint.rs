//! Memory-mapped safetensors checkpoints: one file, or shards listed by `model.safetensors.index.json`.
//!
//! Headers are parsed and validated when the checkpoint is opened (a garbage header, a truncated file, a missing
//! shard or a broken index fail there, naming the file); tensor bytes are read from the maps one tensor at a time
//! and converted on the host to the dtype asked for.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::TensorData;
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::Dtype;
use safetensors::{SafeTensorError, SafeTensors};

use super::ShardIndex;
use crate::Error;
use crate::backend::FloatDType;

/// The single-file weights name in an HF model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The shard index name in an HF model directory.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Where one tensor lives and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The dtype on disk.
    pub dtype: Dtype,
    /// The shape on disk (PyTorch layout: `Linear` weights are `[out, in]`).
    pub shape: Vec<usize>,
    file: usize,
    start: usize,
    end: usize,
}

impl TensorInfo {
    /// Whether the dtype can become a float parameter.
    pub fn is_float(&self) -> bool {
        matches!(
            self.dtype,
            Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64
        )
    }
}

#[derive(Debug)]
struct MappedFile {
    path: PathBuf,
    map: Mmap,
    data_start: usize,
}

/// An opened checkpoint: every tensor name with its dtype, shape and file, the bytes memory-mapped.
#[derive(Debug)]
pub struct Checkpoint {
    source: PathBuf,
    files: Vec<MappedFile>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl Checkpoint {
    /// Opens a model directory (`model.safetensors`, else `model.safetensors.index.json` and its shards), a
    /// single `.safetensors` file, or an index file.
    ///
    /// # Errors
    /// [`Error::NoWeights`], [`Error::Io`], [`Error::MissingShard`], [`Error::BadIndex`], [`Error::BadHeader`],
    /// [`Error::Truncated`] or [`Error::DuplicateKey`], each naming the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        if path.is_dir() {
            let single = path.join(WEIGHTS_FILE);
            let index = path.join(INDEX_FILE);
            if single.is_file() {
                Self::from_files(path, vec![single])
            } else if index.is_file() {
                Self::open_index(&index)
            } else {
                Err(Error::NoWeights {
                    dir: path.to_path_buf(),
                })
            }
        } else if path.extension().is_some_and(|e| e == "json") {
            Self::open_index(path)
        } else {
            Self::from_files(path, vec![path.to_path_buf()])
        }
    }

    fn open_index(index: &Path) -> Result<Self, Error> {
        let bad = |reason: String| Error::BadIndex {
            path: index.to_path_buf(),
            reason,
        };
        let ShardIndex { weight_map, shards } = ShardIndex::read(index)?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut paths = Vec::with_capacity(shards.len());
        for shard in &shards {
            let shard_path = dir.join(shard);
            if !shard_path.is_file() {
                return Err(Error::MissingShard {
                    index: index.to_path_buf(),
                    shard: shard_path,
                });
            }
            check_link_stays_inside(dir, &shard_path).map_err(bad)?;
            paths.push(shard_path);
        }
        let checkpoint = Self::from_files(index, paths)?;
        for (key, file) in &weight_map {
            match checkpoint.tensors.get(key) {
                Some(info) if checkpoint.files[info.file].path.ends_with(file) => {}
                Some(info) => {
                    return Err(bad(format!(
                        "`{key}` is mapped to {file} but stored in {}",
                        checkpoint.files[info.file].path.display()
                    )));
                }
                None => {
                    return Err(bad(format!(
                        "`{key}` is mapped to {file}, which does not contain it"
                    )));
                }
            }
        }
        Ok(checkpoint)
    }

    fn from_files(source: &Path, paths: Vec<PathBuf>) -> Result<Self, Error> {
        let mut files = Vec::with_capacity(paths.len());
        let mut tensors: BTreeMap<String, TensorInfo> = BTreeMap::new();
        for (index, path) in paths.into_iter().enumerate() {
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: the map is read-only and private to this process. Like every memory-mapped loader
            // (safetensors, transformers, candle), it assumes the file is not truncated by another process
            // while the checkpoint is open.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            let (header_len, metadata) = read_header(&path, &map)?;
            let data_start = 8 + header_len;
            for (name, info) in metadata.tensors() {
                let entry = TensorInfo {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    file: index,
                    start: data_start + info.data_offsets.0,
                    end: data_start + info.data_offsets.1,
                };
                if let Some(previous) = tensors.insert(name.clone(), entry) {
                    return Err(Error::DuplicateKey {
                        key: name,
                        first: files
                            .get(previous.file)
                            .map_or_else(|| path.clone(), |f: &MappedFile| f.path.clone()),
                        second: path,
                    });
                }
            }
            files.push(MappedFile {
                path,
                map,
                data_start,
            });
        }
        Ok(Self {
            source: source.to_path_buf(),
            files,
            tensors,
        })
    }

    /// The directory, file or index this checkpoint was opened from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The safetensors files, in shard order.
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    /// Every tensor name, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the checkpoint holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Whether `key` is stored.
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// Dtype, shape and location of `key`.
    pub fn info(&self, key: &str) -> Option<&TensorInfo> {
        self.tensors.get(key)
    }

    /// The file that stores `key`.
    pub fn file_of(&self, key: &str) -> Option<&Path> {
        self.tensors
            .get(key)
            .map(|info| self.files[info.file].path.as_path())
    }

    /// Reads `key` and converts it on the host to `dtype` (round to nearest even, as torch's `.to()` does).
    ///
    /// # Errors
    /// [`Error::TensorNotFound`], or [`Error::TensorDtype`] for a non-float tensor.
    pub fn read(&self, key: &str, dtype: FloatDType) -> Result<TensorData, Error> {
        let info = self.stored(key)?;
        self.read_bytes(key, info, info.start..info.end, info.shape.clone(), dtype)
    }

    /// Where `key` is stored, or [`Error::TensorNotFound`] naming the files.
    fn stored(&self, key: &str) -> Result<&TensorInfo, Error> {
        self.tensors.get(key).ok_or_else(|| Error::TensorNotFound {
            key: key.to_string(),
            files: self
                .files
                .iter()
                .map(|f| f.path.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Reads the rows `rows` (along the first dimension) of `key`, converted as [`Self::read`] does: a large
    /// tensor can be processed a few rows at a time, without all of it in memory at once.
    ///
    /// # Errors
    /// As [`Self::read`].
    ///
    /// # Panics
    /// When `rows` is not a range of the tensor's first dimension (the callers' bug, not the file's).
    pub(crate) fn read_rows(
        &self,
        key: &str,
        rows: std::ops::Range<usize>,
        dtype: FloatDType,
    ) -> Result<TensorData, Error> {
        let info = self.stored(key)?;
        let first = info.shape.first().copied().unwrap_or(0);
        assert!(
            rows.start < rows.end && rows.end <= first,
            "rows {rows:?} of `{key}`, shape {:?}",
            info.shape
        );
        let row_bytes = (info.end - info.start) / first;
        let mut shape = info.shape.clone();
        shape[0] = rows.len();
        let bytes = info.start + rows.start * row_bytes..info.start + rows.end * row_bytes;
        self.read_bytes(key, info, bytes, shape, dtype)
    }

    /// The bytes `range` of the file holding `info` as a `TensorData` of `shape` in `dtype`.
    fn read_bytes(
        &self,
        key: &str,
        info: &TensorInfo,
        range: std::ops::Range<usize>,
        shape: Vec<usize>,
        dtype: FloatDType,
    ) -> Result<TensorData, Error> {
        let file = &self.files[info.file];
        let bytes = &file.map[range.clone()];
        let data = convert(bytes, info.dtype, dtype, shape).ok_or_else(|| Error::TensorDtype {
            key: key.to_string(),
            path: file.path.clone(),
            dtype: format!("{:?}", info.dtype),
        })?;
        // The values are copied out: let the kernel drop the file's pages from this process, so that loading a
        // model counts each tensor's bytes once (its copy) rather than twice (copy + mapped pages) until the
        // checkpoint is closed. Measured on OPT-6.7b-sized shards: peak RSS 22.9 GB without this.
        #[cfg(unix)]
        {
            // SAFETY: the mapping is a shared, read-only map of a file: MADV_DONTNEED only unmaps its pages from
            // this process, and a later access (another read, a slice someone still holds) faults the same file
            // contents back in. Failure (e.g. an unaligned range on an odd platform) only loses the hint.
            let _ = unsafe {
                file.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    range.start,
                    range.len(),
                )
            };
        }
        Ok(data)
    }

    /// Bytes of tensor data in the files (headers excluded).
    pub fn data_bytes(&self) -> u64 {
        self.files
            .iter()
            .map(|f| (f.map.len() - f.data_start) as u64)
            .sum()
    }
}

/// A shard that is a symbolic link must resolve inside the model directory, or into the `blobs/` folder of the
/// HF cache repository whose snapshot the directory is (`<repo>/snapshots/<commit>/x -> ../../blobs/<hash>`, the
/// layout of `huggingface_hub` and `hf-hub`); a link anywhere else is refused, so that an index cannot make blip2
/// read a file outside the model.
fn check_link_stays_inside(dir: &Path, shard: &Path) -> Result<(), String> {
    let is_link = std::fs::symlink_metadata(shard).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link {
        return Ok(());
    }
    let resolve = |p: &Path| {
        std::fs::canonicalize(p).map_err(|e| format!("cannot resolve {}: {e}", p.display()))
    };
    let target = resolve(shard)?;
    let dir = resolve(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    })?;
    if target.starts_with(&dir) {
        return Ok(());
    }
    let snapshots = dir.parent();
    let cache_blobs = snapshots
        .filter(|s| s.file_name().is_some_and(|n| n == "snapshots"))
        .and_then(Path::parent)
        .map(|repo| repo.join("blobs"));
    if cache_blobs.is_some_and(|blobs| target.parent() == Some(blobs.as_path())) {
        return Ok(());
    }
    Err(format!(
        "the shard {} is a link to {}, outside the model directory {}; copy the file into the directory \
         (or link the whole directory)",
        shard.display(),
        target.display(),
        dir.display()
    ))
}

/// Bits per element of a safetensors dtype name; `None` for a name the format does not define (the crate then
/// refuses the header).
fn dtype_bits(name: &str) -> Option<u64> {
    Some(match name {
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "U16" | "I16" | "F16" | "BF16" => 16,
        "U32" | "I32" | "F32" => 32,
        "U64" | "I64" | "F64" | "C64" => 64,
        _ => return None,
    })
}

/// Checks what the `safetensors` crate does not, or reports without naming the tensor: the header length
/// against [`MAX_SAFETENSORS_HEADER_BYTES`](crate::limits::MAX_SAFETENSORS_HEADER_BYTES), each tensor's
/// element count and byte count (checked arithmetic), its byte range against its shape and dtype, and the
/// ranges against each other (sorted, they must tile the data without overlap or gap). Entries too malformed
/// to read are left to the crate, which refuses them; a file shorter than its header says is left to it too (a
/// truncated download, reported with both lengths).
fn check_header(path: &Path, buffer: &[u8]) -> Result<(), Error> {
    let Some(len) = buffer.get(..8) else {
        return Ok(());
    };
    let n = u64::from_le_bytes(len.try_into().expect("8 bytes"));
    let limit = crate::limits::MAX_SAFETENSORS_HEADER_BYTES;
    if n > limit {
        return Err(Error::HeaderTooLarge {
            path: path.to_path_buf(),
            len: n,
            limit,
        });
    }
    let Some(header) = buffer.get(8..8 + n as usize) else {
        return Ok(());
    };
    let Ok(serde_json::Value::Object(entries)) = serde_json::from_slice(header) else {
        return Ok(());
    };
    let bad = |key: &str, reason: String| Error::BadTensor {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason,
    };
    let mut ranges: Vec<(u64, u64, &str)> = Vec::with_capacity(entries.len());
    // Whether every entry could be read: only then are the ranges checked against each other.
    let mut complete = true;
    for (key, entry) in &entries {
        if key == "__metadata__" {
            continue;
        }
        let dtype = entry.get("dtype").and_then(|d| d.as_str());
        let shape: Option<Vec<u64>> = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|dims| dims.iter().map(serde_json::Value::as_u64).collect());
        let offsets: Option<Vec<u64>> = entry
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|o| o.iter().map(serde_json::Value::as_u64).collect());
        let (Some(dtype), Some(shape), Some(offsets)) = (dtype, shape, offsets) else {
            complete = false;
            continue;
        };
        let (Some(bits), [start, end]) = (dtype_bits(dtype), offsets.as_slice()) else {
            complete = false;
            continue;
        };
        let (start, end) = (*start, *end);
        let elements = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let Some(bits) = elements
            .and_then(|e| e.checked_mul(bits))
            .filter(|b| usize::try_from(*b).is_ok())
        else {
            return Err(bad(
                key,
                format!("has shape {shape:?} of dtype {dtype}, whose size overflows"),
            ));
        };
        if bits % 8 != 0 {
            // Sub-byte dtypes must fill whole bytes: the crate refuses the rest.
            complete = false;
            continue;
        }
        let bytes = bits / 8;
        if end < start {
            return Err(bad(
                key,
                format!("has data offsets [{start}, {end}], which end before they start"),
            ));
        }
        if end - start != bytes {
            return Err(bad(
                key,
                format!(
                    "has shape {shape:?} of dtype {dtype} ({bytes} bytes) but its data offsets [{start}, {end}] \
                     hold {} bytes",
                    end - start
                ),
            ));
        }
        ranges.push((start, end, key));
    }
    if !complete {
        return Ok(());
    }
    ranges.sort_unstable();
    let mut covered: (u64, &str) = (0, "");
    for &(start, end, key) in &ranges {
        if start < covered.0 {
            return Err(bad(
                key,
                format!(
                    "has data offsets [{start}, {end}], which overlap those of `{}` (ending at {})",
                    covered.1, covered.0
                ),
            ));
        }
        if start > covered.0 {
            return Err(bad(
                key,
                format!(
                    "has data offsets [{start}, {end}], leaving bytes {}..{start} of the data unused (the format \
                     stores tensors back to back)",
                    covered.0
                ),
            ));
        }
        covered = (end, key);
    }
    // The data must end where the file does. Checked here (not left to the crate) so that ranges near u64::MAX
    // cannot overflow its arithmetic.
    let expected = n.saturating_add(8).saturating_add(covered.0);
    if expected != buffer.len() as u64 {
        return Err(Error::Truncated {
            path: path.to_path_buf(),
            expected,
            found: buffer.len() as u64,
        });
    }
    Ok(())
}

/// Parses and validates a safetensors header against the whole file.
fn read_header(
    path: &Path,
    buffer: &[u8],
) -> Result<(usize, safetensors::tensor::Metadata), Error> {
    check_header(path, buffer)?;
    SafeTensors::read_metadata(buffer).map_err(|e| match e {
        SafeTensorError::MetadataIncompleteBuffer | SafeTensorError::InvalidHeaderLength => {
            match declared_len(buffer) {
                Some(expected) => Error::Truncated {
                    path: path.to_path_buf(),
                    expected,
                    found: buffer.len() as u64,
                },
                None => Error::BadHeader {
                    path: path.to_path_buf(),
                    reason: format!("{e:?}"),
                },
            }
        }
        SafeTensorError::HeaderTooSmall => Error::Truncated {
            path: path.to_path_buf(),
            expected: 8,
            found: buffer.len() as u64,
        },
        SafeTensorError::ValidationOverflow => Error::BadHeader {
            path: path.to_path_buf(),
            reason: overflow_reason(buffer),
        },
        other => Error::BadHeader {
            path: path.to_path_buf(),
            reason: header_reason(&other),
        },
    })
}

/// Names the tensor whose byte size overflows (the safetensors crate's `ValidationOverflow` does not).
fn overflow_reason(buffer: &[u8]) -> String {
    let n = buffer
        .get(..8)
        .and_then(|b| usize::try_from(u64::from_le_bytes(b.try_into().ok()?)).ok());
    let header = n
        .and_then(|n| buffer.get(8..8usize.checked_add(n)?))
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(h).ok());
    let tensor = header.as_ref().and_then(|h| h.as_object()).and_then(|map| {
        map.iter().find(|(_, info)| {
            let bytes: usize = match info.get("dtype").and_then(|d| d.as_str()) {
                Some("F64" | "I64" | "U64" | "C64") => 8,
                Some("F32" | "I32" | "U32") => 4,
                Some("F16" | "BF16" | "I16" | "U16") => 2,
                _ => 1,
            };
            let shape = info.get("shape").and_then(|s| s.as_array());
            shape.is_some_and(|dims| {
                dims.iter()
                    .try_fold(bytes, |acc, d| {
                        acc.checked_mul(usize::try_from(d.as_u64()?).ok()?)
                    })
                    .is_none()
            })
        })
    });
    match tensor {
        Some((key, info)) => format!(
            "tensor `{key}` has shape {}, whose size in bytes overflows: the header is damaged",
            info.get("shape")
                .map_or_else(String::new, ToString::to_string)
        ),
        None => {
            "a tensor's shape is so large that its size in bytes overflows: the header is damaged"
                .to_string()
        }
    }
}

fn header_reason(e: &SafeTensorError) -> String {
    match e {
        SafeTensorError::InvalidHeader(_) => "the header is not UTF-8".to_string(),
        SafeTensorError::InvalidHeaderDeserialization(e) => {
            format!("the header is not valid safetensors JSON ({e})")
        }
        SafeTensorError::HeaderTooLarge => "the header length is implausibly large".to_string(),
        SafeTensorError::InvalidOffset(key) => format!("tensor `{key}` has invalid offsets"),
        SafeTensorError::TensorInvalidInfo => {
            "a tensor's shape and dtype do not match its byte range".to_string()
        }
        other => format!("{other:?}"),
    }
}

/// The file length a well-formed header implies, when the header itself can be read.
fn declared_len(buffer: &[u8]) -> Option<u64> {
    let n = u64::from_le_bytes(buffer.get(..8)?.try_into().ok()?);
    let header = buffer.get(8..8usize.checked_add(usize::try_from(n).ok()?)?);
    let data_end = match header.and_then(|h| serde_json::from_slice::<serde_json::Value>(h).ok()) {
        Some(json) => json
            .as_object()?
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
            .max()
            .unwrap_or(0),
        // The header itself is cut off: all that is known is that it needs 8 + n bytes.
        None => 0,
    };
    Some(n.saturating_add(8).saturating_add(data_end))
}

/// Converts little-endian tensor bytes of dtype `from` into a `TensorData` of `to`; `None` for non-float input.
pub(crate) fn convert(
    bytes: &[u8],
    from: Dtype,
    to: FloatDType,
    shape: Vec<usize>,
) -> Option<TensorData> {
    fn words<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        bytes
            .chunks_exact(N)
            .map(|c| c.try_into().expect("chunks_exact yields N bytes"))
    }
    let data = match (from, to) {
        (Dtype::F32, FloatDType::F32) => {
            TensorData::new(words(bytes).map(f32::from_le_bytes).collect(), shape)
        }
        (Dtype::F16, FloatDType::F16) => TensorData::new(
            words(bytes).map(f16::from_le_bytes).collect::<Vec<_>>(),
            shape,
        ),
        (Dtype::BF16, FloatDType::BF16) => TensorData::new(
            words(bytes).map(bf16::from_le_bytes).collect::<Vec<_>>(),
            shape,
        ),
        (Dtype::F64, _) => {
            let values = words(bytes).map(f64::from_le_bytes);
            match to {
                FloatDType::F32 => TensorData::new(values.map(|v| v as f32).collect(), shape),
                FloatDType::F16 => TensorData::new(values.map(f16::from_f64).collect(), shape),
                FloatDType::BF16 => TensorData::new(values.map(bf16::from_f64).collect(), shape),
            }
        }
        (Dtype::F32 | Dtype::F16 | Dtype::BF16, _) => {
            // Widen to f32 (exact for f16/bf16), then round once to the target.
            let wide: Box<dyn Iterator<Item = f32> + '_> = match from {
                Dtype::F32 => Box::new(words(bytes).map(f32::from_le_bytes)),
                Dtype::F16 => Box::new(words(bytes).map(|w| f16::from_le_bytes(w).to_f32())),
                _ => Box::new(words(bytes).map(|w| bf16::from_le_bytes(w).to_f32())),
            };
            match to {
                FloatDType::F32 => TensorData::new(wide.collect(), shape),
                FloatDType::F16 => TensorData::new(wide.map(f16::from_f32).collect(), shape),
                FloatDType::BF16 => TensorData::new(wide.map(bf16::from_f32).collect(), shape),
            }
        }
        _ => return None,
    };
    Some(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `read_rows` gives the rows of what `read` gives, converted the same way, for any run of rows.
    #[test]
    fn read_rows_are_rows_of_read() {
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<f32> = (0..7 * 5).map(|i| i as f32 * 0.37 - 3.0).collect();
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        let view = safetensors::tensor::TensorView::new(Dtype::BF16, vec![7, 5], &bytes).unwrap();
        let file = dir.path().join(WEIGHTS_FILE);
        std::fs::write(&file, safetensors::serialize([("w", view)], None).unwrap()).unwrap();
        let checkpoint = Checkpoint::open(&file).unwrap();
        let whole: Vec<f32> = checkpoint
            .read("w", FloatDType::F32)
            .unwrap()
            .to_vec()
            .unwrap();
        for rows in [0..7, 0..1, 2..5, 6..7] {
            let part = checkpoint
                .read_rows("w", rows.clone(), FloatDType::F32)
                .unwrap();
            assert_eq!(part.shape.to_vec(), vec![rows.len(), 5]);
            assert_eq!(
                part.to_vec::<f32>().unwrap(),
                whole[rows.start * 5..rows.end * 5]
            );
        }
        assert!(matches!(
            checkpoint.read_rows("v", 0..1, FloatDType::F32),
            Err(Error::TensorNotFound { .. })
        ));
    }
}
