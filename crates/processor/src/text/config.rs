//! The tokenizer's settings as transformers 5.24 reads them: `tokenizer_config.json`, and
//! `special_tokens_map.json` where the config has no `added_tokens_decoder` (the older hub layout).
//!
//! Keys read: the named special tokens (`bos_token`, `eos_token`, `unk_token`, `sep_token`, `pad_token`,
//! `cls_token`, `mask_token`; a string or an `AddedToken` object), model-specific `*_token` strings such as
//! `image_token`, `extra_special_tokens` / `additional_special_tokens` (a list, or a name -> token object),
//! `added_tokens_decoder`, `padding_side`, `truncation_side`, `model_max_length`,
//! `clean_up_tokenization_spaces` (and its BPE override), `split_special_tokens`. `null` counts as absent;
//! unknown keys are ignored, `add_bos_token` / `add_eos_token` among them: transformers 5.24 drops both
//! whenever a tokenizer.json exists, and blip2 always reads one.

use std::path::Path;

use serde_json::{Map, Value};
use tokenizers::AddedToken;

use crate::error::{Error, MEMORY};

/// Which end of a row padding goes to (HF `padding_side`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PaddingSide {
    /// Pads before the text (what decoder-only generation needs: the last position is a real token).
    Left,
    /// Pads after the text (HF's default).
    #[default]
    Right,
}

/// Which end of a too-long text truncation cuts (HF `truncation_side`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TruncationSide {
    /// Drops tokens from the start of the text.
    Left,
    /// Drops tokens from the end of the text (HF's default).
    #[default]
    Right,
}

/// The standard special-token attributes of HF tokenizers, in HF's order (`SPECIAL_TOKENS_ATTRIBUTES`).
pub(crate) const NAMED_SPECIAL_TOKENS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// `model_max_length` at or above this is HF's "no limit" (`VERY_LARGE_INTEGER`, `int(1e30)`, or any other
/// sentinel past what a model could hold).
const UNLIMITED: f64 = 1e18;

/// `model_max_length` above this counts as "no limit" too: no model blip2 runs holds more positions, and
/// padding to such a length (`Padding::MaxLength`) would allocate without bound.
/// [`MAX_TOKENIZER_LENGTH`](blip2_nn::limits::MAX_TOKENIZER_LENGTH).
const MAX_MODEL_MAX_LENGTH: u64 = blip2_nn::limits::MAX_TOKENIZER_LENGTH as u64;

/// A tokenizer's settings from `tokenizer_config.json` (and `special_tokens_map.json`), with HF's defaults
/// for absent keys.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizerConfig {
    /// `padding_side` (default right).
    pub padding_side: PaddingSide,
    /// `truncation_side` (default right).
    pub truncation_side: TruncationSide,
    /// `model_max_length`: the truncation and `max_length`-padding length when none is given; `None` when absent,
    /// HF's "very large" sentinel, or over [`MAX_TOKENIZER_LENGTH`](blip2_nn::limits::MAX_TOKENIZER_LENGTH).
    pub model_max_length: Option<usize>,
    /// `clean_up_tokenization_spaces` (default false): remove the space before `.`, `?`, `!`, `,` and a few
    /// contractions after decoding. HF skips it for BPE models unless
    /// [`clean_up_for_bpe`](Self::clean_up_for_bpe) is set.
    pub clean_up_tokenization_spaces: bool,
    /// `clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output` (default false).
    pub clean_up_for_bpe: bool,
    /// `split_special_tokens` (default false): tokenize special-token text in prompts as plain text.
    pub split_special_tokens: bool,
    /// Named special tokens (`bos_token`, ...) and model-specific ones (`image_token`, ...), in file order.
    pub(crate) named: Vec<(String, AddedToken)>,
    /// `extra_special_tokens` given as a list.
    pub(crate) extra: Vec<AddedToken>,
    /// `added_tokens_decoder`, by id.
    pub(crate) added_tokens_decoder: Vec<(u32, AddedToken)>,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        Self {
            padding_side: PaddingSide::Right,
            truncation_side: TruncationSide::Right,
            model_max_length: None,
            clean_up_tokenization_spaces: false,
            clean_up_for_bpe: false,
            split_special_tokens: false,
            named: Vec::new(),
            extra: Vec::new(),
            added_tokens_decoder: Vec::new(),
        }
    }
}

impl TokenizerConfig {
    /// Reads the config of a model directory: `tokenizer_config.json` (defaults when absent), then
    /// `special_tokens_map.json` where the config has no `added_tokens_decoder` (its values win, as in
    /// transformers' legacy path).
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::BadTextConfig`] or [`Error::BadTextConfigValue`], naming the file.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self, Error> {
        let dir = dir.as_ref();
        let config_path = dir.join("tokenizer_config.json");
        let map_path = dir.join("special_tokens_map.json");
        let config = if config_path.is_file() {
            Some((
                read_object(&config_path)?,
                config_path.display().to_string(),
            ))
        } else {
            None
        };
        let map = if map_path.is_file() {
            Some((read_object(&map_path)?, map_path.display().to_string()))
        } else {
            None
        };
        Self::from_objects(
            config.as_ref().map(|(o, n)| (o, n.as_str())),
            map.as_ref().map(|(o, n)| (o, n.as_str())),
        )
    }

    /// Parses a `tokenizer_config.json` string.
    ///
    /// # Errors
    /// [`Error::BadTextConfig`] or [`Error::BadTextConfigValue`], naming `<memory>`.
    pub fn from_json_str(json: &str) -> Result<Self, Error> {
        let obj = parse_object(json, MEMORY)?;
        Self::from_objects(Some((&obj, MEMORY)), None)
    }

    fn from_objects(
        config: Option<(&Map<String, Value>, &str)>,
        special_tokens_map: Option<(&Map<String, Value>, &str)>,
    ) -> Result<Self, Error> {
        let mut out = Self::default();
        let Some((obj, name)) = config else {
            if let Some((map, map_name)) = special_tokens_map {
                out.read_tokens(map, map_name)?;
            }
            return Ok(out);
        };
        let f = Fields { obj, name };
        if let Some(side) = f.side("padding_side")? {
            out.padding_side = if side {
                PaddingSide::Left
            } else {
                PaddingSide::Right
            };
        }
        if let Some(side) = f.side("truncation_side")? {
            out.truncation_side = if side {
                TruncationSide::Left
            } else {
                TruncationSide::Right
            };
        }
        out.model_max_length = f.max_length("model_max_length")?;
        out.clean_up_tokenization_spaces = f.bool("clean_up_tokenization_spaces")?.unwrap_or(false);
        out.clean_up_for_bpe = f
            .bool("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output")?
            .unwrap_or(false);
        out.split_special_tokens = f.bool("split_special_tokens")?.unwrap_or(false);
        out.read_tokens(obj, name)?;
        if let Some(decoder) = f.get("added_tokens_decoder") {
            out.added_tokens_decoder = f.added_tokens_decoder(decoder)?;
        } else if let Some((map, map_name)) = special_tokens_map {
            // transformers' legacy path: special_tokens_map.json overrides the config's special tokens.
            out.read_tokens(map, map_name)?;
        }
        Ok(out)
    }

    /// Reads named, model-specific and extra special tokens from `obj`, replacing those already read.
    fn read_tokens(&mut self, obj: &Map<String, Value>, name: &str) -> Result<(), Error> {
        let f = Fields { obj, name };
        for (key, value) in obj {
            if value.is_null() {
                continue;
            }
            let named = NAMED_SPECIAL_TOKENS.contains(&key.as_str());
            // Model-specific tokens (`image_token`, ...) count only as plain strings, as in transformers.
            let model_specific = !named && key.ends_with("_token") && value.is_string();
            if named || model_specific {
                let token = f.token(key, value)?;
                self.set_named(key, token);
            }
        }
        // transformers reads the older `additional_special_tokens` where `extra_special_tokens` is absent.
        let extra_key = ["extra_special_tokens", "additional_special_tokens"]
            .into_iter()
            .find(|k| f.get(k).is_some());
        if let Some(extra_key) = extra_key {
            match f.get(extra_key) {
                Some(Value::Array(items)) => {
                    self.extra = items
                        .iter()
                        .map(|v| f.token(extra_key, v))
                        .collect::<Result<_, _>>()?;
                }
                Some(Value::Object(map)) => {
                    for (key, v) in map {
                        let token = f.token(extra_key, v)?;
                        self.set_named(key, token);
                    }
                }
                _ => {
                    return Err(f.bad(
                        extra_key,
                        "expected a list of tokens or an object of named tokens",
                    ));
                }
            }
        }
        Ok(())
    }

    fn set_named(&mut self, key: &str, token: AddedToken) {
        match self.named.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = token,
            None => self.named.push((key.to_string(), token)),
        }
    }

    /// The same config with a named or model-specific special token set (`"pad_token"`, `"image_token"`, ...),
    /// as `tokenizer_config.json` would set it with a plain string.
    #[must_use]
    pub fn with_token(mut self, key: &str, content: &str) -> Self {
        self.set_named(key, AddedToken::from(content.to_string(), true));
        self
    }

    /// The configured content of a named or model-specific special token (`"bos_token"`, `"image_token"`).
    pub fn token(&self, key: &str) -> Option<&str> {
        self.named
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, t)| t.content.as_str())
    }
}

fn parse_object(text: &str, name: &str) -> Result<Map<String, Value>, Error> {
    let value: Value = serde_json::from_str(text).map_err(|e| Error::BadTextConfig {
        name: name.to_string(),
        reason: e.to_string(),
    })?;
    match value {
        Value::Object(obj) => Ok(obj),
        other => Err(Error::BadTextConfig {
            name: name.to_string(),
            reason: format!("expected a JSON object, found {}", short(&other)),
        }),
    }
}

/// Reads a JSON object from a file.
pub(crate) fn read_object(path: &Path) -> Result<Map<String, Value>, Error> {
    let text = blip2_nn::limits::read_to_string_bounded(path, blip2_nn::limits::MAX_JSON_BYTES)
        .map_err(|e| Error::io(path, e))?;
    parse_object(&text, &path.display().to_string())
}

/// A value for an error message, cut to a readable length.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 80 {
        format!("{}...", text.chars().take(77).collect::<String>())
    } else {
        text
    }
}

/// Typed access to a config object; `null` counts as absent.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    name: &'a str,
}

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn bad(&self, key: &str, reason: &str) -> Error {
        Error::BadTextConfigValue {
            name: self.name.to_string(),
            key: key.to_string(),
            value: self.obj.get(key).map_or("null".into(), short),
            reason: reason.to_string(),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, Error> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.bad(key, "expected true or false"))
            })
            .transpose()
    }

    /// `Some(true)` for "left", `Some(false)` for "right".
    fn side(&self, key: &str) -> Result<Option<bool>, Error> {
        self.get(key)
            .map(|v| match v.as_str() {
                Some("left") => Ok(true),
                Some("right") => Ok(false),
                _ => Err(self.bad(key, "expected \"left\" or \"right\"")),
            })
            .transpose()
    }

    fn max_length(&self, key: &str) -> Result<Option<usize>, Error> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        if let Some(n) = v.as_u64() {
            return Ok(if n as f64 >= UNLIMITED || n > MAX_MODEL_MAX_LENGTH {
                None
            } else {
                usize::try_from(n).ok()
            });
        }
        match v.as_f64() {
            Some(x) if x >= UNLIMITED => Ok(None),
            _ => Err(self.bad(key, "expected a non-negative integer")),
        }
    }

    /// A token as HF stores it: a string, or an `AddedToken` object (`content` plus flags). Named tokens are
    /// special; a string becomes `AddedToken(content, special=True)` (not normalized).
    fn token(&self, key: &str, value: &Value) -> Result<AddedToken, Error> {
        match value {
            Value::String(s) => Ok(AddedToken::from(s.clone(), true)),
            Value::Object(map) => {
                let mut token = self.added_token(key, map)?;
                token.special = true;
                Ok(token)
            }
            _ => Err(Error::BadTextConfigValue {
                name: self.name.to_string(),
                key: key.to_string(),
                value: short(value),
                reason: "expected a token string or an object with a `content` string".to_string(),
            }),
        }
    }

    /// An `AddedToken` object: `content` and the optional flags, with the `tokenizers` defaults
    /// (`normalized` defaults to `!special`).
    fn added_token(&self, key: &str, map: &Map<String, Value>) -> Result<AddedToken, Error> {
        let bad = |reason: &str| Error::BadTextConfigValue {
            name: self.name.to_string(),
            key: key.to_string(),
            value: short(&Value::Object(map.clone())),
            reason: reason.to_string(),
        };
        let content = map
            .get("content")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("expected a `content` string"))?;
        let flag = |k: &str| -> Result<Option<bool>, Error> {
            match map.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Bool(b)) => Ok(Some(*b)),
                Some(_) => Err(bad(&format!("`{k}` must be true or false"))),
            }
        };
        let special = flag("special")?.unwrap_or(false);
        let mut token = AddedToken::from(content.to_string(), special);
        token.single_word = flag("single_word")?.unwrap_or(false);
        token.lstrip = flag("lstrip")?.unwrap_or(false);
        token.rstrip = flag("rstrip")?.unwrap_or(false);
        token.normalized = flag("normalized")?.unwrap_or(!special);
        Ok(token)
    }

    fn added_tokens_decoder(&self, value: &Value) -> Result<Vec<(u32, AddedToken)>, Error> {
        const KEY: &str = "added_tokens_decoder";
        let map = value
            .as_object()
            .ok_or_else(|| self.bad(KEY, "expected an object of id -> token"))?;
        let mut out = Vec::with_capacity(map.len());
        for (id, token) in map {
            let id: u32 = id.parse().map_err(|_| Error::BadTextConfigValue {
                name: self.name.to_string(),
                key: format!("{KEY}.{id}"),
                value: short(token),
                reason: "the key must be a token id (a non-negative integer)".to_string(),
            })?;
            let obj = token.as_object().ok_or_else(|| Error::BadTextConfigValue {
                name: self.name.to_string(),
                key: format!("{KEY}.{id}"),
                value: short(token),
                reason: "expected a token object with a `content` string".to_string(),
            })?;
            out.push((id, self.added_token(&format!("{KEY}.{id}"), obj)?));
        }
        out.sort_by_key(|(id, _)| *id);
        Ok(out)
    }
}
