//! [`GenerationConfig`]: transformers' generation options, names and defaults, read from
//! `generation_config.json` and overridable field by field.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Error;

/// Most rows one run decodes at once, and so the largest `num_beams` and `num_return_sequences`: prompts times
/// `num_beams` (or times `num_return_sequences` when sampling). Each row keeps its own key-value cache, so
/// memory and time grow with it; transformers has no cap, blip2 refuses more rather than run for minutes into
/// gigabytes (`num_beams` 1,000,000 with 3 new tokens took 11 GB and 83 s on the tiny test model). It is
/// [`blip2_nn::limits::MAX_BEAMS`] (1024), which [`GenerationConfig::validate`] holds `num_beams` and
/// `num_return_sequences` to on their own.
pub const MAX_ROWS: usize = blip2_nn::limits::MAX_BEAMS;

/// When beam search stops (transformers' `early_stopping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    /// `false` (the default): stop a batch item when its best running beam, at the current length, cannot beat
    /// the worst finished one.
    #[default]
    Heuristic,
    /// `true`: stop a batch item as soon as `num_beams` hypotheses are finished.
    OnBeamsFinished,
    /// `"never"`: the canonical beam search: stop only when no running beam can improve, assuming the longest
    /// possible length when `length_penalty > 0`.
    Never,
}

impl Serialize for EarlyStopping {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Heuristic => s.serialize_bool(false),
            Self::OnBeamsFinished => s.serialize_bool(true),
            Self::Never => s.serialize_str("never"),
        }
    }
}

impl<'de> Deserialize<'de> for EarlyStopping {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        early_stopping_from(&value).map_err(serde::de::Error::custom)
    }
}

fn early_stopping_from(value: &Value) -> Result<EarlyStopping, String> {
    match value {
        Value::Bool(false) | Value::Null => Ok(EarlyStopping::Heuristic),
        Value::Bool(true) => Ok(EarlyStopping::OnBeamsFinished),
        Value::String(s) if s == "never" => Ok(EarlyStopping::Never),
        other => Err(format!("must be true, false or \"never\", not {other}")),
    }
}

/// transformers' generation options with their names and defaults. Build one with [`Default`], read one with
/// [`GenerationConfig::from_file`], and override fields directly:
///
/// ```
/// use blip2_generation::{EarlyStopping, GenerationConfig};
///
/// let config = GenerationConfig {
///     max_new_tokens: Some(30),
///     num_beams: 5,
///     early_stopping: EarlyStopping::OnBeamsFinished,
///     ..GenerationConfig::from_json_str(r#"{"eos_token_id": 50118, "pad_token_id": 1}"#)?
/// };
/// config.validate()?;
/// assert_eq!(config.eos_token_id, vec![50118]);
/// # Ok::<(), blip2_generation::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerationConfig {
    /// New tokens to generate at most. Takes precedence over `max_length`.
    pub max_new_tokens: Option<usize>,
    /// Longest returned sequence (prompt ids included for a decoder-only model; the decoder start token
    /// included for an encoder-decoder one). `None` with `max_new_tokens` unset: 20 new tokens, as transformers.
    pub max_length: Option<usize>,
    /// New tokens to generate at least (eos is banned until then). Takes precedence over `min_length`.
    pub min_new_tokens: Option<usize>,
    /// Shortest returned sequence, counted as `max_length` is.
    pub min_length: usize,
    /// Sample instead of taking the most likely token (with `num_beams > 1`: beam sampling).
    pub do_sample: bool,
    /// Divides the scores before sampling (sampling only).
    pub temperature: f64,
    /// Keep the `top_k` most likely tokens before sampling; 0 keeps all (sampling only).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (sampling only).
    pub top_p: f64,
    /// Beams; 1 means no beam search.
    pub num_beams: usize,
    /// Exponent of the length normalisation of finished beams: `score / generated_len^length_penalty`.
    pub length_penalty: f64,
    /// When beam search stops.
    pub early_stopping: EarlyStopping,
    /// Sequences returned per prompt (at most `num_beams` with beam search; sampling draws them independently).
    pub num_return_sequences: usize,
    /// Divides positive and multiplies negative scores of tokens already present (1.0: off).
    pub repetition_penalty: f64,
    /// Bans any n-gram of this size from occurring twice (0: off).
    pub no_repeat_ngram_size: usize,
    /// Token sequences that must not be generated.
    pub bad_words_ids: Option<Vec<Vec<u32>>>,
    /// End-of-sequence token(s); in JSON one id or a list.
    #[serde(deserialize_with = "token_list")]
    pub eos_token_id: Vec<u32>,
    /// The id finished rows are filled with (defaults to the first eos id).
    pub pad_token_id: Option<u32>,
    /// Beginning-of-sequence id (informational; prompts carry their own).
    pub bos_token_id: Option<u32>,
    /// First decoder token of an encoder-decoder model (falls back to the model's, then to `bos_token_id`).
    pub decoder_start_token_id: Option<u32>,
    /// Stop after this many seconds (each row keeps what it has).
    pub max_time: Option<f64>,
    /// Seed of the sampler (blip2's own; transformers' sampled ids come from torch's generator and differ).
    /// `None`: a fresh seed per run.
    pub seed: Option<u64>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: None,
            max_length: None,
            min_new_tokens: None,
            min_length: 0,
            do_sample: false,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Heuristic,
            num_return_sequences: 1,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            bad_words_ids: None,
            eos_token_id: Vec::new(),
            pad_token_id: None,
            bos_token_id: None,
            decoder_start_token_id: None,
            max_time: None,
            seed: None,
        }
    }
}

fn token_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    let value = Value::deserialize(d)?;
    tokens_from(&value).map_err(serde::de::Error::custom)
}

fn tokens_from(value: &Value) -> Result<Vec<u32>, String> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Number(_) => Ok(vec![token_from(value)?]),
        Value::Array(items) => items.iter().map(token_from).collect(),
        other => Err(format!("must be a token id or a list of them, not {other}")),
    }
}

fn token_from(value: &Value) -> Result<u32, String> {
    value
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| format!("{value} is not a token id"))
}

/// Fields of transformers' `GenerationConfig` that do not affect what blip2 generates (outputs it does not
/// return, caches, assistant decoding, bookkeeping).
const INERT: &[&str] = &[
    "transformers_version",
    "_from_model_config",
    "_commit_hash",
    "use_cache",
    "cache_implementation",
    "cache_config",
    "return_legacy_cache",
    "output_attentions",
    "output_hidden_states",
    "output_scores",
    "output_logits",
    "return_dict_in_generate",
    "compile_config",
    "disable_compile",
    "num_assistant_tokens",
    "num_assistant_tokens_schedule",
    "assistant_confidence_threshold",
    "assistant_lookbehind",
    "target_lookbehind",
    "prompt_lookup_num_tokens",
    "max_matching_ngram_size",
    "is_assistant",
    "trust_remote_code",
    "generation_kwargs",
];

/// Fields of transformers' `GenerationConfig` blip2 does not implement, with the value that leaves them off.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("typical_p", "1.0"),
    ("epsilon_cutoff", "0.0"),
    ("eta_cutoff", "0.0"),
    ("min_p", "null"),
    ("top_h", "null"),
    ("num_beam_groups", "1"),
    ("diversity_penalty", "0.0"),
    ("penalty_alpha", "null"),
    ("encoder_repetition_penalty", "1.0"),
    ("encoder_no_repeat_ngram_size", "0"),
    ("forced_bos_token_id", "null"),
    ("forced_eos_token_id", "null"),
    ("remove_invalid_values", "false"),
    ("exponential_decay_length_penalty", "null"),
    ("suppress_tokens", "null"),
    ("begin_suppress_tokens", "null"),
    ("forced_decoder_ids", "null"),
    ("sequence_bias", "null"),
    ("guidance_scale", "null"),
    ("renormalize_logits", "false"),
    ("constraints", "null"),
    ("force_words_ids", "null"),
    ("low_memory", "null"),
    ("stop_strings", "null"),
    ("watermarking_config", "null"),
    ("dola_layers", "null"),
    ("token_healing", "false"),
];

const FIELDS: &[&str] = &[
    "max_new_tokens",
    "max_length",
    "min_new_tokens",
    "min_length",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "num_beams",
    "length_penalty",
    "early_stopping",
    "num_return_sequences",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "bad_words_ids",
    "eos_token_id",
    "pad_token_id",
    "bos_token_id",
    "decoder_start_token_id",
    "max_time",
    "seed",
];

fn is_off(value: &Value, off: &str) -> bool {
    if value.is_null() {
        return true;
    }
    match (value, serde_json::from_str::<Value>(off)) {
        (Value::Number(a), Ok(Value::Number(b))) => a.as_f64() == b.as_f64(),
        (a, Ok(b)) => *a == b,
        _ => false,
    }
}

impl GenerationConfig {
    /// Reads `generation_config.json` from a model directory (or the file itself). Fields transformers uses only
    /// for outputs blip2 does not return are ignored; options blip2 does not implement are accepted only at
    /// their neutral value.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::Json`], [`Error::UnknownField`], [`Error::Unsupported`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let path = if path.is_dir() {
            path.join("generation_config.json")
        } else {
            path.to_path_buf()
        };
        let text =
            blip2_nn::limits::read_to_string_bounded(&path, blip2_nn::limits::MAX_JSON_BYTES)
                .map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?;
        Self::parse(&text, path)
    }

    /// As [`Self::from_file`], from a JSON string.
    ///
    /// # Errors
    /// As [`Self::from_file`].
    pub fn from_json_str(json: &str) -> Result<Self, Error> {
        Self::parse(json, PathBuf::from("<memory>"))
    }

    fn parse(json: &str, path: PathBuf) -> Result<Self, Error> {
        let json_err = |reason: String| Error::Json {
            path: path.clone(),
            reason,
        };
        let value: Value = serde_json::from_str(json).map_err(|e| json_err(e.to_string()))?;
        let Value::Object(map) = value else {
            return Err(json_err("expected a JSON object".into()));
        };
        let mut known = Map::new();
        for (key, value) in map {
            if FIELDS.contains(&key.as_str()) {
                known.insert(key, value);
            } else if INERT.contains(&key.as_str()) {
                continue;
            } else if let Some((_, off)) = UNSUPPORTED.iter().find(|(k, _)| *k == key) {
                if !is_off(&value, off) {
                    return Err(Error::Unsupported {
                        key,
                        value: value.to_string(),
                        path,
                        reason: format!("remove it or set it to {off}"),
                    });
                }
            } else {
                return Err(Error::UnknownField { key, path });
            }
        }
        // Type errors name the field: check each one before the whole.
        for (key, value) in &known {
            let mut probe = Map::new();
            probe.insert(key.clone(), value.clone());
            if let Err(e) = serde_json::from_value::<GenerationConfig>(Value::Object(probe)) {
                return Err(json_err(format!("`{key}` = {value}: {e}")));
            }
        }
        serde_json::from_value(Value::Object(known)).map_err(|e| json_err(e.to_string()))
    }

    /// Checks values alone and together, as transformers does before generating.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the fields.
    pub fn validate(&self) -> Result<(), Error> {
        use blip2_nn::limits::{MAX_BEAMS, MAX_GENERATION_LENGTH};
        // Sizes that set how many rows run and how long: a damaged file must not make generation allocate
        // without bound.
        for (key, value, limit) in [
            ("num_beams", Some(self.num_beams), MAX_BEAMS),
            (
                "num_return_sequences",
                Some(self.num_return_sequences),
                MAX_BEAMS,
            ),
            ("max_new_tokens", self.max_new_tokens, MAX_GENERATION_LENGTH),
            ("max_length", self.max_length, MAX_GENERATION_LENGTH),
            ("min_new_tokens", self.min_new_tokens, MAX_GENERATION_LENGTH),
            ("min_length", Some(self.min_length), MAX_GENERATION_LENGTH),
        ] {
            if let Some(value) = value
                && value > limit
            {
                return Err(Error::invalid(
                    &[key],
                    format!(
                        "{value} is over blip2's limit of {limit} (blip2_nn::limits, documented in docs/weights.md)"
                    ),
                ));
            }
        }
        if self.num_beams == 0 {
            return Err(Error::invalid(&["num_beams"], "must be at least 1"));
        }
        if self.num_return_sequences == 0 {
            return Err(Error::invalid(
                &["num_return_sequences"],
                "must be at least 1",
            ));
        }
        if self.max_new_tokens == Some(0) {
            return Err(Error::invalid(
                &["max_new_tokens"],
                "must be greater than 0",
            ));
        }
        if self.max_length == Some(0) {
            return Err(Error::invalid(&["max_length"], "must be greater than 0"));
        }
        if self.num_return_sequences > 1 && self.num_beams == 1 && !self.do_sample {
            return Err(Error::invalid(
                &["num_return_sequences", "num_beams", "do_sample"],
                format!(
                    "greedy decoding returns one sequence per prompt, not {}: set do_sample or num_beams >= {0}",
                    self.num_return_sequences
                ),
            ));
        }
        if self.num_beams > 1 && self.num_return_sequences > self.num_beams {
            return Err(Error::invalid(
                &["num_return_sequences", "num_beams"],
                format!(
                    "beam search returns at most num_beams ({}) sequences per prompt, not {}",
                    self.num_beams, self.num_return_sequences
                ),
            ));
        }
        if self.do_sample && !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::invalid(
                &["temperature", "do_sample"],
                format!(
                    "must be a positive number when sampling, not {} (for greedy decoding unset do_sample)",
                    self.temperature
                ),
            ));
        }
        if self.do_sample && !(0.0..=1.0).contains(&self.top_p) {
            return Err(Error::invalid(
                &["top_p"],
                format!("must lie in [0, 1], not {}", self.top_p),
            ));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(Error::invalid(
                &["repetition_penalty"],
                format!(
                    "must be a positive number (1.0: off), not {}",
                    self.repetition_penalty
                ),
            ));
        }
        if !self.length_penalty.is_finite() {
            return Err(Error::invalid(&["length_penalty"], "must be finite"));
        }
        if let Some(bad) = &self.bad_words_ids
            && (bad.is_empty() || bad.iter().any(Vec::is_empty))
        {
            return Err(Error::invalid(
                &["bad_words_ids"],
                "must be a non-empty list of non-empty token sequences",
            ));
        }
        if let Some(t) = self.max_time
            && (t.is_nan() || t <= 0.0)
        {
            return Err(Error::invalid(
                &["max_time"],
                format!("must be positive, not {t}"),
            ));
        }
        Ok(())
    }

    /// Settings that are valid but have no effect in the chosen mode (transformers warns about the same ones):
    /// sampling options without `do_sample`, beam options without beams.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.do_sample {
            for (name, set) in [
                ("temperature", self.temperature != 1.0),
                ("top_p", self.top_p != 1.0),
                ("top_k", self.top_k != 50),
            ] {
                if set {
                    out.push(format!(
                        "`{name}` only applies when sampling (do_sample = true); it is ignored"
                    ));
                }
            }
        }
        if self.num_beams == 1 {
            for (name, set) in [
                (
                    "early_stopping",
                    self.early_stopping != EarlyStopping::Heuristic,
                ),
                ("length_penalty", self.length_penalty != 1.0),
            ] {
                if set {
                    out.push(format!(
                        "`{name}` only applies to beam search (num_beams > 1); it is ignored"
                    ));
                }
            }
        }
        out
    }

    /// How many new tokens a run generates at most after a prompt of `prompt_positions` positions (what the
    /// model reads, `<image>` tokens and padding included), for a model whose position table holds
    /// `max_positions` (`None`: no table, as T5's relative positions): `max_new_tokens`, else what `max_length`
    /// leaves, else transformers' default of 20 (capped to the table).
    ///
    /// # Errors
    /// [`Error::PromptTooLong`] for a prompt over the table; [`Error::TooManyNewTokens`] when the prompt and
    /// the new tokens do not fit in it (the last new token is never read, so `prompt + new - 1` positions are
    /// needed); [`Error::InvalidConfig`] for a `max_length` that leaves no room.
    pub fn new_tokens_for(
        &self,
        prompt_positions: usize,
        max_positions: Option<usize>,
    ) -> Result<usize, Error> {
        if let Some(max) = max_positions
            && prompt_positions > max
        {
            return Err(Error::PromptTooLong {
                length: prompt_positions,
                max_positions: max,
            });
        }
        let max_new = match (self.max_new_tokens, self.max_length) {
            (Some(n), _) => n,
            (None, Some(max_length)) => match max_length.checked_sub(prompt_positions) {
                Some(n) if n > 0 => n,
                _ => {
                    return Err(Error::invalid(
                        &["max_length"],
                        format!(
                            "max_length {max_length} leaves no room after the prompt's {prompt_positions} positions: raise it or set max_new_tokens"
                        ),
                    ));
                }
            },
            (None, None) => max_positions.map_or(20, |p| 20.min(p - prompt_positions).max(1)),
        };
        if let Some(max) = max_positions
            && prompt_positions + max_new - 1 > max
        {
            return Err(Error::TooManyNewTokens {
                prompt: prompt_positions,
                max_new_tokens: max_new,
                max_positions: max,
            });
        }
        Ok(max_new)
    }

    /// The id finished rows are filled with: `pad_token_id`, else the first eos id.
    pub fn fill_token_id(&self) -> Option<u32> {
        self.pad_token_id
            .or_else(|| self.eos_token_id.first().copied())
    }

    /// The config as `generation_config.json` text (the fields blip2 knows).
    pub fn to_json_string(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
