//! The image processor's settings: HF `BlipImageProcessor`'s attributes as `preprocessor_config.json` (the hub's
//! layout) or the `image_processor` object of `processor_config.json` (transformers 5.x) store them.
//!
//! Absent or `null` keys take the defaults of the HF class (`BlipImageProcessorPil` class attributes in
//! transformers 5.24: `size` 384x384, bicubic, rescale by 1/255, OpenAI CLIP mean/std, every `do_*` true).
//! [`ImageProcessorConfig::default`] is different on purpose: it is what the BLIP-2 hub checkpoints store
//! (224x224), since that is what a user without a config file wants. Unknown keys are ignored.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, MEMORY};
use crate::image::Limits;

/// OpenAI CLIP's per-channel mean (transformers `OPENAI_CLIP_MEAN`), used by every BLIP-2 checkpoint.
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// OpenAI CLIP's per-channel standard deviation (transformers `OPENAI_CLIP_STD`).
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// The target size of the resize: HF's size dict (`SizeDict`) in the two layouts BLIP's processor can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// `{"height": h, "width": w}` (also written as an int `n` for `n x n`, or a `[h, w]` list): resize
    /// straight to this size, ignoring the aspect ratio (what BLIP-2 uses).
    Fixed {
        /// Output height in pixels.
        height: u32,
        /// Output width in pixels.
        width: u32,
    },
    /// `{"shortest_edge": n}`: keep the aspect ratio, the shorter side becomes `n` and the longer one
    /// `int(n * long / short)` (transformers `get_resize_output_image_size` with `default_to_square=False`).
    ShortestEdge(u32),
}

impl Size {
    /// The `(height, width)` an image of `(height, width)` is resized to (both at least 1 for a non-empty
    /// image). Computed in `u64`, since a shortest-edge resize of a thin image can be very long; the caller
    /// checks it against its limits.
    pub fn output_size(&self, height: u32, width: u32) -> (u64, u64) {
        match *self {
            Size::Fixed { height, width } => (u64::from(height), u64::from(width)),
            Size::ShortestEdge(edge) => {
                let (short, long) = if width <= height {
                    (width, height)
                } else {
                    (height, width)
                };
                // Python: `int(edge * long / short)`; the product is exact in f64 and `/` rounds once,
                // like Python's true division of ints.
                let new_long = if short == 0 {
                    0
                } else {
                    ((f64::from(edge) * f64::from(long)) / f64::from(short)) as u64
                };
                if width <= height {
                    (new_long, u64::from(edge))
                } else {
                    (u64::from(edge), new_long)
                }
            }
        }
    }
}

/// The resampling filter (PIL's `Image.Resampling`, stored in configs as an int). Only bicubic (3), what
/// BLIP-2 uses, is implemented; other values are rejected when a config is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Resample {
    /// `PIL.Image.Resampling.BICUBIC` (3): Pillow's fixed-point bicubic, `a = -0.5`, antialiased.
    #[default]
    Bicubic,
}

/// HF `BlipImageProcessor`'s settings (the keys of `preprocessor_config.json`).
#[derive(Clone, Debug, PartialEq)]
pub struct ImageProcessorConfig {
    /// `do_resize`: resize to [`size`](Self::size).
    pub do_resize: bool,
    /// `size`.
    pub size: Size,
    /// `resample`.
    pub resample: Resample,
    /// `do_rescale`: multiply by [`rescale_factor`](Self::rescale_factor) (in f64, as numpy does).
    pub do_rescale: bool,
    /// `rescale_factor` (1/255).
    pub rescale_factor: f64,
    /// `do_normalize`: `(x - mean) / std` per channel, in f32.
    pub do_normalize: bool,
    /// `image_mean` (a single number in the file applies to all three channels).
    pub image_mean: [f64; 3],
    /// `image_std`.
    pub image_std: [f64; 3],
    /// `do_convert_rgb`: convert to RGB, compositing transparency onto white.
    pub do_convert_rgb: bool,
}

impl Default for ImageProcessorConfig {
    /// What the BLIP-2 hub checkpoints (`Salesforce/blip2-*`, 224 px) store: 224x224 bicubic, 1/255, CLIP
    /// mean/std, convert to RGB.
    fn default() -> Self {
        Self {
            size: Size::Fixed {
                height: 224,
                width: 224,
            },
            ..Self::hf_class_defaults()
        }
    }
}

impl ImageProcessorConfig {
    /// The defaults of HF's `BlipImageProcessorPil` class (384x384), used for keys a config leaves out.
    pub fn hf_class_defaults() -> Self {
        Self {
            do_resize: true,
            size: Size::Fixed {
                height: 384,
                width: 384,
            },
            resample: Resample::Bicubic,
            do_rescale: true,
            // Python's `1 / 255`.
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
            do_convert_rgb: true,
        }
    }

    /// Reads the config of a model directory as transformers 5.24 does: the `image_processor` object of
    /// `processor_config.json` when there is one, else `preprocessor_config.json`.
    ///
    /// # Errors
    /// [`Error::NoConfig`] when neither is there; [`Error::Io`], [`Error::BadConfig`] or
    /// [`Error::UnsupportedConfig`] for a file that cannot be read or used.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self, Error> {
        let dir = dir.as_ref();
        let processor = dir.join("processor_config.json");
        if processor.is_file() {
            let name = processor.display().to_string();
            let value = read_json(&processor)?;
            if let Some(nested) = value.get("image_processor") {
                return Self::from_value(nested, &name);
            }
        }
        let legacy = dir.join("preprocessor_config.json");
        if legacy.is_file() {
            return Self::from_file(&legacy);
        }
        Err(Error::NoConfig {
            dir: dir.to_path_buf(),
        })
    }

    /// Reads one JSON file: an image processor object (`preprocessor_config.json`), or a
    /// `processor_config.json` whose `image_processor` object is used.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::BadConfig`] or [`Error::UnsupportedConfig`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let value = read_json(path)?;
        let name = path.display().to_string();
        Self::from_value(value.get("image_processor").unwrap_or(&value), &name)
    }

    /// Parses a JSON string, in either layout (as [`from_file`](Self::from_file)).
    ///
    /// # Errors
    /// [`Error::BadConfig`] or [`Error::UnsupportedConfig`], naming `<memory>`.
    pub fn from_json_str(json: &str) -> Result<Self, Error> {
        let value: Value = serde_json::from_str(json).map_err(|e| Error::BadConfig {
            name: MEMORY.to_string(),
            reason: e.to_string(),
        })?;
        Self::from_value(value.get("image_processor").unwrap_or(&value), MEMORY)
    }

    fn from_value(value: &Value, name: &str) -> Result<Self, Error> {
        let obj = value.as_object().ok_or_else(|| Error::BadConfig {
            name: name.to_string(),
            reason: format!("expected a JSON object, found {value}"),
        })?;
        let fields = Fields { obj, name };
        let defaults = Self::hf_class_defaults();
        let config = Self {
            do_resize: fields.bool("do_resize")?.unwrap_or(defaults.do_resize),
            size: fields.size()?.unwrap_or(defaults.size),
            resample: fields.resample()?.unwrap_or(defaults.resample),
            do_rescale: fields.bool("do_rescale")?.unwrap_or(defaults.do_rescale),
            rescale_factor: fields
                .number("rescale_factor")?
                .unwrap_or(defaults.rescale_factor),
            do_normalize: fields
                .bool("do_normalize")?
                .unwrap_or(defaults.do_normalize),
            image_mean: fields.triple("image_mean")?.unwrap_or(defaults.image_mean),
            image_std: fields.triple("image_std")?.unwrap_or(defaults.image_std),
            do_convert_rgb: fields
                .bool("do_convert_rgb")?
                .unwrap_or(defaults.do_convert_rgb),
        };
        // Steps of HF's pipeline that BLIP never enables; refuse rather than silently skip them.
        for key in ["do_center_crop", "do_pad"] {
            if fields.bool(key)? == Some(true) {
                return Err(
                    fields.unsupported(key, "BLIP's processor does not use it; set it to false")
                );
            }
        }
        if config.do_normalize && config.image_std.contains(&0.0) {
            return Err(fields.unsupported("image_std", "a standard deviation must not be zero"));
        }
        Ok(config)
    }
}

impl ImageProcessorConfig {
    /// The file [`from_model_dir`](Self::from_model_dir) reads in `dir`: `processor_config.json` when it holds
    /// an `image_processor` object, else `preprocessor_config.json`; `None` when neither is there.
    pub fn file_in(dir: impl AsRef<Path>) -> Option<PathBuf> {
        let dir = dir.as_ref();
        let processor = dir.join("processor_config.json");
        if read_json(&processor).is_ok_and(|v| v.get("image_processor").is_some()) {
            return Some(processor);
        }
        Some(dir.join("preprocessor_config.json")).filter(|p| p.is_file())
    }

    /// Checks that the fixed `size` every image is resized to fits `limits`. Such a size is the config's
    /// choice, not the image's, so it is checked once, when a processor is set up, and reported as a problem
    /// of the config file `name` (the image limits are also checked for each resize, where a
    /// `shortest_edge` size can still be over them for a very thin image).
    ///
    /// # Errors
    /// [`Error::UnsupportedConfig`] naming `name`, the `size` key and the limit.
    pub fn check_limits(&self, limits: &Limits, name: &str) -> Result<(), Error> {
        let Size::Fixed { height, width } = self.size else {
            return Ok(());
        };
        if !self.do_resize {
            return Ok(());
        }
        let (h, w) = (u64::from(height), u64::from(width));
        let over = |limit: u64, what: &str| Error::UnsupportedConfig {
            name: name.to_string(),
            key: "size".to_string(),
            value: format!("{{\"height\": {height}, \"width\": {width}}}"),
            reason: format!(
                "resizing every image to {width}x{height} is over the image limit of {limit} {what} \
                 (BLIP-2 checkpoints use 224x224); fix the file, or raise the limit if you mean it \
                 (`Limits::max_pixels`, `max_side` and `max_resize_pixels`; the CLI's --max-image-pixels)"
            ),
        };
        let side = u64::from(limits.max_side);
        if w > side || h > side {
            return Err(over(side, "pixels per side"));
        }
        if w * h > limits.max_pixels {
            return Err(over(limits.max_pixels, "pixels"));
        }
        if w * h > limits.max_resize_pixels {
            return Err(over(limits.max_resize_pixels, "pixels of resize output"));
        }
        Ok(())
    }
}

fn read_json(path: &Path) -> Result<Value, Error> {
    let text = blip2_nn::limits::read_to_string_bounded(path, blip2_nn::limits::MAX_JSON_BYTES)
        .map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::BadConfig {
        name: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Typed access to a config object; `null` counts as absent (HF's `_set_attributes` treats `None` so).
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    name: &'a str,
}

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn unsupported(&self, key: &str, reason: &str) -> Error {
        Error::UnsupportedConfig {
            name: self.name.to_string(),
            key: key.to_string(),
            value: self.obj.get(key).map_or("null".into(), Value::to_string),
            reason: reason.to_string(),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, Error> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.unsupported(key, "expected true or false"))
            })
            .transpose()
    }

    fn number(&self, key: &str) -> Result<Option<f64>, Error> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| self.unsupported(key, "expected a number"))
            })
            .transpose()
    }

    /// A number for all three channels, or a list of three.
    fn triple(&self, key: &str) -> Result<Option<[f64; 3]>, Error> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let bad = || self.unsupported(key, "expected a number or a list of 3 numbers (R, G, B)");
        if let Some(x) = v.as_f64() {
            return Ok(Some([x; 3]));
        }
        let list = v.as_array().ok_or_else(bad)?;
        match list.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>() {
            Some(values) if values.len() == 3 => Ok(Some([values[0], values[1], values[2]])),
            _ => Err(bad()),
        }
    }

    fn resample(&self) -> Result<Option<Resample>, Error> {
        match self.get("resample") {
            None => Ok(None),
            Some(v) if v.as_u64() == Some(3) => Ok(Some(Resample::Bicubic)),
            Some(_) => Err(self.unsupported(
                "resample",
                "only 3 (PIL bicubic, what BLIP-2 uses) is implemented",
            )),
        }
    }

    /// `size` as HF's `get_size_dict(default_to_square=True)` reads it, restricted to what BLIP's PIL
    /// processor can resize to with a fixed output: `n`, `[h, w]`, `{height, width}`, `{shortest_edge}`.
    fn size(&self) -> Result<Option<Size>, Error> {
        let Some(v) = self.get("size") else {
            return Ok(None);
        };
        let reason = "expected {\"height\": h, \"width\": w}, {\"shortest_edge\": n}, an int or [h, w], \
                      with positive sizes";
        let bad = || self.unsupported("size", reason);
        let positive = |v: &Value| {
            v.as_u64()
                .filter(|&n| n > 0)
                .and_then(|n| u32::try_from(n).ok())
        };
        let size = match v {
            Value::Number(_) => positive(v).map(|n| Size::Fixed {
                height: n,
                width: n,
            }),
            Value::Array(list) if list.len() == 2 => {
                match (positive(&list[0]), positive(&list[1])) {
                    (Some(height), Some(width)) => Some(Size::Fixed { height, width }),
                    _ => None,
                }
            }
            Value::Object(map) => {
                let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
                keys.sort_unstable();
                match keys.as_slice() {
                    ["height", "width"] => {
                        match (positive(&map["height"]), positive(&map["width"])) {
                            (Some(height), Some(width)) => Some(Size::Fixed { height, width }),
                            _ => None,
                        }
                    }
                    ["shortest_edge"] => positive(&map["shortest_edge"]).map(Size::ShortestEdge),
                    _ => None,
                }
            }
            _ => None,
        };
        size.map(Some).ok_or_else(bad)
    }
}
