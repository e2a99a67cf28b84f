//! Strict safetensors loading and saving with HF names and layouts.
//!
//! - [`Checkpoint`]: a model directory (`model.safetensors`, or shards with `model.safetensors.index.json`), a
//!   file or an index; memory-mapped; F32, F16, BF16 (and F64) on disk.
//! - [`KeyMap`]: parameter path -> checkpoint key (prefix routes, renames, norm `gamma/beta` -> `weight/bias`).
//! - [`load_module`]: fills every parameter of a freshly initialised module, cast on the host to the requested
//!   dtype, and fails with a [`LoadReport`] listing every missing, unexpected and mis-shaped tensor.
//! - [`save_module`]: writes a module back with the checkpoint's names and `[out, in]` layouts.
//!
//! ```no_run
//! use blip2_nn::loader::{Checkpoint, KeyMap, LoadOptions, load_module};
//! use blip2_nn::backend::{Flex, FloatDType};
//! use burn::nn::{LinearConfig, LinearLayout};
//!
//! let device = Default::default();
//! // A PyTorch `Linear(8, 4)` stored as `proj.weight` [4, 8] and `proj.bias` [4].
//! let model = LinearConfig::new(8, 4).with_layout(LinearLayout::Col).init::<Flex>(&device);
//! let checkpoint = Checkpoint::open("path/to/model_dir")?;
//! let options = LoadOptions::new(KeyMap::under("proj")).with_dtype(FloatDType::BF16);
//! let (model, report) = load_module(model, &checkpoint, &options, &device)?;
//! println!("{report}");
//! # Ok::<(), blip2_nn::Error>(())
//! ```

mod checkpoint;
mod expected;
mod index;
mod keymap;
mod load;
mod save;

pub use checkpoint::{Checkpoint, INDEX_FILE, TensorInfo, WEIGHTS_FILE};
pub use expected::expected_keys;
pub use index::ShardIndex;
pub use keymap::KeyMap;
pub use load::{LoadOptions, LoadReport, Problem, WeightFormat, load_module};
pub use safetensors::tensor::Dtype as FileDtype;
pub use save::{SafetensorsWriter, save_module};

/// The dotted path of the parameter being visited, as Burn's visitors and mappers walk a module. Enum variants
/// are left out: Burn reports them as modules (`Enum:` containers), but HF keys never name them, so a module may
/// hold an enum (say, a gated or a plain feed-forward) without changing its checkpoint keys.
#[derive(Debug, Default)]
pub(crate) struct ModulePath {
    segments: Vec<Option<String>>,
}

impl ModulePath {
    pub(crate) fn enter(&mut self, name: &str, container_type: &str) {
        self.segments
            .push((!container_type.starts_with("Enum:")).then(|| name.to_string()));
    }

    pub(crate) fn exit(&mut self) {
        self.segments.pop();
    }

    pub(crate) fn current(&self) -> String {
        let named: Vec<&str> = self.segments.iter().flatten().map(String::as_str).collect();
        named.join(".")
    }
}
