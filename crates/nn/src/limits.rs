//! Resource limits: the largest sizes blip2 accepts from a config or a file, in one place.
//!
//! A config that asks for a billion layers, or a vocabulary of 10^12 rows, is damaged or hostile: building the
//! model would try to allocate terabytes and abort the process, or run for minutes before failing. Every model
//! crate checks its config against these limits before it builds anything ([`check`], [`Error::LimitExceeded`]
//! naming the key, the value and the limit). They are generous: 8 to 50 times the largest released checkpoint
//! of each kind (ViT-g: 1408 wide, 39 layers; OPT-66b: 9216 wide, 64 layers, vocabulary 50272, 2048 positions;
//! OPT-175b: 12288 wide, 96 layers; T5-11B: `d_ff` 65536, 128 heads; Flan-T5-XXL: 4096 wide, 24 layers,
//! vocabulary 32128). docs/weights.md has the table.
//!
//! Files are bounded too: config and index files are read with [`read_bounded`] (at most [`MAX_JSON_BYTES`]),
//! and a safetensors header may not exceed [`MAX_SAFETENSORS_HEADER_BYTES`].

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::Error;

/// Widths: `hidden_size`, `d_model`, `encoder_hidden_size`, `word_embed_proj_dim`, `image_text_hidden_size`.
/// Largest released: 12288 (OPT-175b); 9216 (OPT-66b); 4096 (Flan-T5-XXL); 1408 (ViT-g).
pub const MAX_HIDDEN_SIZE: usize = 65_536;
/// Feed-forward widths: `intermediate_size`, `ffn_dim`, `d_ff`. Largest released: 65536 (T5-11B), 49152
/// (OPT-175b).
pub const MAX_INTERMEDIATE_SIZE: usize = 524_288;
/// Layer counts: `num_hidden_layers`, `num_layers`, `num_decoder_layers`. Largest released: 96 (OPT-175b).
pub const MAX_LAYERS: usize = 1_024;
/// Attention heads: `num_attention_heads`, `num_heads`. Largest released: 128 (T5-11B).
pub const MAX_HEADS: usize = 1_024;
/// Per-head width stated on its own (T5's `d_kv`). Largest released: 128 (T5-11B).
pub const MAX_HEAD_DIM: usize = 16_384;
/// Vocabularies: `vocab_size`. Largest released here: 50304 (BLIP-2's OPT); 262144 in recent LLMs.
pub const MAX_VOCAB_SIZE: usize = 1_048_576;
/// Position tables and distances: `max_position_embeddings`, `relative_attention_max_distance`. Largest
/// released: 2048 (OPT), 512 (the Q-Former), 128 (T5's distance).
pub const MAX_POSITIONS: usize = 65_536;
/// T5's `relative_attention_num_buckets`. Released: 32.
pub const MAX_RELATIVE_BUCKETS: usize = 4_096;
/// The vision tower's training resolution, `image_size`, in pixels. Released: 224, 364.
pub const MAX_IMAGE_SIZE: usize = 16_384;
/// The vision tower's `patch_size`, in pixels. Released: 14.
pub const MAX_PATCH_SIZE: usize = 1_024;
/// Patches of the training resolution, `(image_size / patch_size)^2` (the position table has one row more).
/// Released: 256, 676.
pub const MAX_PATCHES: usize = 1_048_576;
/// Learned queries, `num_query_tokens`. Released: 32.
pub const MAX_QUERY_TOKENS: usize = 4_096;
/// Parameters of one model part (the vision tower, the Q-Former, the language model), counted from its config
/// before anything is built. Largest released: 66e9 (OPT-66b), 12e9 (BLIP-2 Flan-T5-XXL).
pub const MAX_PARAMETERS: u64 = 1_000_000_000_000;

/// Generation: `num_beams` and `num_return_sequences`. Typical: 1 to 10.
pub const MAX_BEAMS: usize = 1_024;
/// Generation: `max_length`, `max_new_tokens`, `min_length`, `min_new_tokens`. Typical: 20 to 512.
pub const MAX_GENERATION_LENGTH: usize = 1_048_576;

/// A tokenizer's `model_max_length`: a larger value counts as HF's "no limit" sentinel (`int(1e30)`), as no model
/// here holds that many positions and padding to it would allocate without bound. Typical: 512, 2048.
pub const MAX_TOKENIZER_LENGTH: usize = 1_048_576;

/// A JSON file blip2 reads whole (`config.json`, `generation_config.json`, the shard index, the processor and
/// tokenizer configs): 64 MiB. The hub's are a few kilobytes (an index of 1000 tensors is about 100 KB).
pub const MAX_JSON_BYTES: u64 = 64 << 20;
/// A safetensors header (the JSON after the length): 100,000,000 bytes, the `safetensors` crate's own limit.
/// ViT-g's whole BLIP-2 header is about 100 KB.
pub const MAX_SAFETENSORS_HEADER_BYTES: u64 = 100_000_000;

/// Checks `value` of config key `key` against `limit`.
///
/// # Errors
/// [`Error::LimitExceeded`] (without a file; [`Error::in_config`] adds it) when `value > limit`.
pub fn check(key: &str, value: usize, limit: usize) -> Result<(), Error> {
    check_u64(key, value as u64, limit as u64)
}

/// [`check`] for a count computed in `u64`/`u128` (a parameter count): values past `u64::MAX` count as it.
///
/// # Errors
/// [`Error::LimitExceeded`] when `value > limit`.
pub fn check_u64(key: &str, value: impl TryInto<u64>, limit: u64) -> Result<(), Error> {
    let value = value.try_into().unwrap_or(u64::MAX);
    if value > limit {
        return Err(Error::LimitExceeded {
            path: None,
            key: key.to_string(),
            value,
            limit,
        });
    }
    Ok(())
}

/// Checks several `(key, value, limit)` triples, in order.
///
/// # Errors
/// [`Error::LimitExceeded`] naming the first key over its limit.
pub fn check_all(checks: &[(&str, usize, usize)]) -> Result<(), Error> {
    checks
        .iter()
        .try_for_each(|&(key, value, limit)| check(key, value, limit))
}

/// Adds up parameter counts given as products of sizes, in `u128` (the sizes are checked first, so they fit,
/// but a sum of products of unchecked sizes would still not overflow).
pub fn parameter_count(terms: &[&[usize]]) -> u128 {
    terms
        .iter()
        .map(|factors| {
            factors
                .iter()
                .fold(1u128, |acc, &f| acc.saturating_mul(f as u128))
        })
        .fold(0u128, u128::saturating_add)
}

/// Reads a whole file of at most `max` bytes. The bound holds for what is read, not for what the file system
/// reports, so `/dev/zero`, a pipe or a file that grows while it is read fail as soon as they pass it.
///
/// # Errors
/// The OS error; [`std::io::ErrorKind::FileTooLarge`] (with the limit in the message) past `max` bytes.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let known = file
        .metadata()
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    if let Some(len) = known
        && len > max
    {
        return Err(too_large(len, max));
    }
    let mut bytes = Vec::with_capacity(known.unwrap_or(0).min(max) as usize);
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64, max));
    }
    Ok(bytes)
}

/// [`read_bounded`] for text.
///
/// # Errors
/// As [`read_bounded`]; [`std::io::ErrorKind::InvalidData`] for text that is not UTF-8.
pub fn read_to_string_bounded(path: &Path, max: u64) -> std::io::Result<String> {
    String::from_utf8(read_bounded(path, max)?).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the file is not UTF-8 text ({e})"),
        )
    })
}

fn too_large(len: u64, max: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::FileTooLarge,
        format!(
            "the file has more than {max} bytes (at least {len}), over blip2's limit for this kind of file"
        ),
    )
}

/// Where a [`Error::LimitExceeded`] comes from, for its message.
pub(crate) fn location(path: &Option<PathBuf>) -> String {
    match path {
        Some(path) => format!(" in {}", path.display()),
        None => String::new(),
    }
}
