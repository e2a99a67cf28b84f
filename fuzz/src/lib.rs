//! The fuzz targets of blip2: one function per parser that reads user files, each fed arbitrary bytes.
//!
//! A target must return for every input: an error is a fine answer, a panic, an abort, a hang (libFuzzer's
//! `-timeout`) or an allocation past [`ALLOC_LIMIT`] is a finding. The binaries in `fuzz_targets/` call these
//! functions; `cargo xtask fuzz` builds them with coverage instrumentation and runs them (docs/reliability.md).
//! Each binary writes its seed corpus (from the fixtures) and exits when `BLIP2_FUZZ_SEEDS` names a folder
//! ([`init`]); `cargo xtask fuzz` does that before a run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use blip2_nn::backend::FloatDType;
use blip2_nn::loader::{Checkpoint, KeyMap, LoadOptions, load_module, save_module};
use blip2_processor::{
    Blip2Processor, Blip2Tokenizer, BlipImageProcessor, EncodeOptions, ImageProcessorConfig,
    Padding, TokenizerConfig,
};
use burn::backend::Flex;
use burn::module::Module;
use burn::nn::{
    Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig, LinearLayout,
};
use burn::prelude::Backend;

/// The backend the loading targets load into.
pub type Cpu = Flex;

mod seeds;

/// Run once by every target before fuzzing: with `BLIP2_FUZZ_SEEDS=<folder>` in the environment, writes every
/// target's seed corpus under `<folder>/<target>/` and exits.
pub fn init() {
    if let Some(root) = std::env::var_os("BLIP2_FUZZ_SEEDS") {
        seeds::write_seeds(Path::new(&root));
        std::process::exit(0);
    }
}

// ------------------------------------------------------------------------------------------------------------
// The allocation bound: no input may make the process hold more than 2 GiB.
// ------------------------------------------------------------------------------------------------------------

/// Most bytes the Rust code may hold at once while a target runs (2 GiB). Past it the process aborts, which
/// libFuzzer reports as a crash and saves the input. libFuzzer's own (C++) allocations are not counted.
pub const ALLOC_LIMIT: usize = 2 << 30;

/// The system allocator, counting live bytes and aborting past [`ALLOC_LIMIT`].
#[derive(Debug)]
pub struct BoundedAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);

impl BoundedAlloc {
    fn admit(size: usize) {
        let live = LIVE.fetch_add(size, Ordering::Relaxed).saturating_add(size);
        if live > ALLOC_LIMIT {
            // No formatting: it could allocate.
            let _ = std::io::stderr().write_all(
                b"blip2-fuzz: an input made the process hold more than 2 GiB (ALLOC_LIMIT)\n",
            );
            std::process::abort();
        }
    }
}

// SAFETY: every call is forwarded to `System` unchanged; the counter only observes sizes.
unsafe impl GlobalAlloc for BoundedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::admit(layout.size());
        // SAFETY: the caller's contract is `System::alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::admit(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            Self::admit(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

// ------------------------------------------------------------------------------------------------------------
// Shared set-up.
// ------------------------------------------------------------------------------------------------------------

/// The repository's `fixtures/` folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// A scratch folder of this process (the loading targets write the input there: checkpoints are files).
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("blip2-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        dir
    })
}

/// A small module with HF-style names (a Linear, a LayerNorm, an embedding), what the loading targets load.
#[derive(Module, Debug)]
pub struct Small<B: Backend> {
    /// `dense.weight` `[5, 3]`, `dense.bias` `[5]`.
    pub dense: Linear<B>,
    /// `layer_norm.weight`, `layer_norm.bias` `[5]`.
    pub layer_norm: LayerNorm<B>,
    /// `embed_tokens.weight` `[7, 3]`.
    pub embed_tokens: Embedding<B>,
}

impl<B: Backend> Small<B> {
    /// A fresh module.
    pub fn init(device: &B::Device) -> Self {
        Self {
            dense: LinearConfig::new(3, 5)
                .with_layout(LinearLayout::Col)
                .init(device),
            layer_norm: LayerNormConfig::new(5).init(device),
            embed_tokens: EmbeddingConfig::new(7, 3).init(device),
        }
    }
}

fn small_options(dtype: FloatDType) -> LoadOptions {
    LoadOptions::new(KeyMap::new()).with_dtype(dtype)
}

/// Writes [`Small`]'s weights as a checkpoint at `path` (a seed for the loading targets).
pub fn write_small_checkpoint(path: &Path) {
    let device = Default::default();
    save_module::<Cpu, _>(
        &Small::<Cpu>::init(&device),
        path,
        &KeyMap::new(),
        FloatDType::F32,
        &Default::default(),
    )
    .expect("write the seed checkpoint");
}

fn dtype_of(byte: u8) -> FloatDType {
    match byte % 3 {
        0 => FloatDType::F32,
        1 => FloatDType::F16,
        _ => FloatDType::BF16,
    }
}

/// Reads every tensor of an opened checkpoint and loads [`Small`] from it.
fn exercise_checkpoint(checkpoint: &Checkpoint, dtype: FloatDType) {
    let _ = checkpoint.data_bytes();
    let keys: Vec<String> = checkpoint.keys().map(str::to_string).collect();
    for key in &keys {
        let _ = checkpoint.info(key);
        let _ = checkpoint.file_of(key);
        let _ = checkpoint.read(key, dtype);
    }
    let device = Default::default();
    if let Ok((_, report)) = load_module::<Cpu, _>(
        Small::<Cpu>::init(&device),
        checkpoint,
        &small_options(dtype),
        &device,
    ) {
        let _ = report.to_string();
    }
}

// ------------------------------------------------------------------------------------------------------------
// The targets.
// ------------------------------------------------------------------------------------------------------------

/// `image`: decode (every format), RGB conversion, resize and normalise with the fixture processor's config
/// (30 x 30, bicubic) and the default limits, as `blip2 caption` does for a file.
pub fn image(data: &[u8]) {
    static PROCESSOR: OnceLock<BlipImageProcessor> = OnceLock::new();
    let processor = PROCESSOR.get_or_init(|| {
        BlipImageProcessor::from_model_dir(fixtures().join("tiny-opt")).expect("fixture processor")
    });
    if let Ok(rgb) = processor.decode(data) {
        let _ = processor.preprocess(&[rgb]);
    }
}

/// `safetensors`: a `.safetensors` file (header and data) opened as a [`Checkpoint`], every tensor read, and
/// [`Small`] loaded from it. The first byte picks the dtype asked for; the rest is the file.
pub fn safetensors(data: &[u8]) {
    let Some((&first, file)) = data.split_first() else {
        return;
    };
    let path = scratch().join("model.safetensors");
    std::fs::write(&path, file).expect("write scratch checkpoint");
    if let Ok(checkpoint) = Checkpoint::open(&path) {
        exercise_checkpoint(&checkpoint, dtype_of(first));
    }
}

/// `shard_index`: a `model.safetensors.index.json` over two valid shards (`shard-1.safetensors` holds
/// `dense.*`, `shard-2.safetensors` the rest) in a model folder; the checkpoint is opened from the folder, read
/// and loaded. A shard name leaving the folder must be refused, a missing one reported.
pub fn shard_index(data: &[u8]) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = scratch().join("sharded");
        std::fs::create_dir_all(&dir).expect("shard folder");
        write_shards(&dir);
        dir
    });
    std::fs::write(dir.join("model.safetensors.index.json"), data).expect("write scratch index");
    if let Ok(checkpoint) = Checkpoint::open(dir) {
        exercise_checkpoint(&checkpoint, FloatDType::F32);
    }
}

/// Writes the two shards of [`shard_index`] into `dir`, and returns a valid index for them.
pub fn write_shards(dir: &Path) -> String {
    let whole = dir.join("whole.safetensors.tmp");
    write_small_checkpoint(&whole);
    let bytes = std::fs::read(&whole).expect("read the seed checkpoint");
    let _ = std::fs::remove_file(&whole);
    let tensors = safetensors::SafeTensors::deserialize(&bytes).expect("seed checkpoint");
    let mut map = serde_json::Map::new();
    let mut parts: [Vec<(String, safetensors::tensor::TensorView<'_>)>; 2] = [vec![], vec![]];
    for (name, view) in tensors.tensors() {
        let shard = usize::from(!name.starts_with("dense."));
        map.insert(
            name.clone(),
            serde_json::Value::String(format!("shard-{}.safetensors", shard + 1)),
        );
        parts[shard].push((name, view));
    }
    for (i, part) in parts.into_iter().enumerate() {
        safetensors::serialize_to_file(
            part,
            None,
            &dir.join(format!("shard-{}.safetensors", i + 1)),
        )
        .expect("write a seed shard");
    }
    serde_json::json!({ "metadata": { "total_size": bytes.len() }, "weight_map": map }).to_string()
}

/// `config_blip2`: a BLIP-2 `config.json` (both the 5.x and the 4.x forms).
pub fn config_blip2(data: &[u8]) {
    if let Ok(json) = std::str::from_utf8(data) {
        if let Ok(config) = blip2::Blip2Config::from_json_str(json, "<fuzz>") {
            let _ = config.validate();
        }
    }
}

/// `config_vision`: a vision config (standalone or inside a BLIP-2 config).
pub fn config_vision(data: &[u8]) {
    if let Ok(json) = std::str::from_utf8(data) {
        let _ = blip2_vision::Blip2VisionConfig::from_json_str(json, "<fuzz>");
    }
}

/// `config_qformer`: a Q-Former config (standalone, a BLIP-2 config, or an ITM checkpoint's).
pub fn config_qformer(data: &[u8]) {
    if let Ok(json) = std::str::from_utf8(data) {
        let _ = blip2_qformer::QFormerConfig::from_json_str(json, "<fuzz>");
    }
}

/// `config_opt`: an OPT config (standalone or a BLIP-2 `text_config`).
pub fn config_opt(data: &[u8]) {
    if let Ok(json) = std::str::from_utf8(data) {
        if let Ok(config) = blip2_opt::OptConfig::from_json_str(json, "<fuzz>") {
            let _ = config.validate();
        }
    }
}

/// `config_t5`: a T5 / Flan-T5 config (standalone or a BLIP-2 `text_config`).
pub fn config_t5(data: &[u8]) {
    if let Ok(json) = std::str::from_utf8(data) {
        if let Ok(config) = blip2_t5::T5Config::from_json_str(json, "<fuzz>") {
            let _ = config.scales_decoder_outputs();
        }
    }
}

/// `config_generation`: a `generation_config.json`, validated and turned into its logits processors.
pub fn config_generation(data: &[u8]) {
    if let Ok(json) = std::str::from_utf8(data) {
        if let Ok(config) = blip2_generation::GenerationConfig::from_json_str(json) {
            if config.validate().is_ok() {
                let _ = config.warnings();
                let _ = config.fill_token_id();
                let _ = config.to_json_string();
                let _ = blip2_generation::processors::ProcessorList::from_config(&config, 3);
            }
        }
    }
}

/// `config_processor`: a `preprocessor_config.json`, then a 7 x 5 image preprocessed with it (the config's
/// sizes must be refused before they allocate).
pub fn config_processor(data: &[u8]) {
    if let Ok(json) = std::str::from_utf8(data) {
        if let Ok(config) = ImageProcessorConfig::from_json_str(json) {
            let processor = BlipImageProcessor::new(config);
            let pixels: Vec<u8> = (0..7 * 5 * 3).map(|i| (i * 37 % 256) as u8).collect();
            if let Ok(image) = processor.from_raw_rgb(7, 5, &pixels) {
                let _ = processor.preprocess(&[image]);
            }
        }
    }
}

/// `config_tokenizer`: a `tokenizer_config.json`, applied to the tiny OPT fixture's `tokenizer.json`, then a
/// prompt encoded and decoded.
pub fn config_tokenizer(data: &[u8]) {
    static INNER: OnceLock<tokenizers::Tokenizer> = OnceLock::new();
    let inner = INNER.get_or_init(|| {
        tokenizers::Tokenizer::from_file(fixtures().join("tiny-opt/tokenizer.json"))
            .expect("fixture tokenizer")
    });
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = TokenizerConfig::from_json_str(json) else {
        return;
    };
    if let Ok(tokenizer) = Blip2Tokenizer::new(inner.clone(), config, "<fuzz>") {
        let options = EncodeOptions {
            max_length: Some(12),
            truncation: true,
            padding: Padding::MaxLength,
            ..EncodeOptions::default()
        };
        if let Ok(batch) =
            tokenizer.encode_batch(&["a photo of", "Question: why? Answer:"], &options)
        {
            let _ = tokenizer.batch_decode(&batch.input_ids, true);
            let _ = tokenizer.batch_decode(&batch.input_ids, false);
        }
    }
}

/// `text`: the text processors of the tiny OPT and T5 fixtures on arbitrary input. The first byte picks the
/// processor and the options; the rest is a prompt (UTF-8, or lossily converted bytes) to encode, and the same
/// bytes read as token ids (any value, negative and out of vocabulary included) to decode.
pub fn text(data: &[u8]) {
    static PROCESSORS: OnceLock<[Blip2Processor; 2]> = OnceLock::new();
    let processors = PROCESSORS.get_or_init(|| {
        let load = |name: &str| {
            Blip2Processor::from_model_dir(fixtures().join(name)).expect("fixture processor")
        };
        [load("tiny-opt"), load("tiny-t5")]
    });
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let processor = &processors[usize::from(first & 1)];
    let prompt = String::from_utf8_lossy(rest);
    let options = EncodeOptions {
        add_special_tokens: first & 2 == 0,
        padding: if first & 4 == 0 {
            Padding::Longest
        } else {
            Padding::MaxLength
        },
        truncation: first & 8 != 0,
        max_length: (first & 16 != 0).then_some(usize::from(first >> 5) * 8),
        ..EncodeOptions::default()
    };
    if let Ok(batch) = processor.encode_prompts(&[prompt.as_ref(), "a photo of"], &options) {
        let _ = processor.batch_decode(&batch.input_ids, true);
    }
    let ids: Vec<i64> = rest
        .chunks(2)
        .map(|c| i64::from(i16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .collect();
    let _ = processor.decode(&ids, first & 32 != 0);
}

/// `resume`: what `--resume` reads back from an output file (`blip2_cli::output::scan_resume`). The first byte
/// picks the format (JSON lines or CSV) and the command's columns (caption, ask, match); the rest is the file.
/// Beyond not crashing: what it keeps is a prefix at a character boundary; a JSON-lines resume drops at most a
/// last line without its newline; and the kept prefix, read again, is kept whole with the same images (a
/// second resume deletes nothing more).
pub fn resume(data: &[u8]) {
    use blip2_cli::output::{Format, scan_resume};
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let format = if first & 1 == 0 {
        Format::Jsonl
    } else {
        Format::Csv
    };
    let columns = [
        blip2_cli::CAPTION_COLUMNS,
        blip2_cli::ASK_COLUMNS,
        blip2_cli::MATCH_COLUMNS,
    ][usize::from(first >> 1) % 3];
    let path = Path::new("<fuzz>.out");
    if let Ok((keep, done, _)) = scan_resume(text, path, format, columns) {
        assert!(
            keep <= text.len() && text.is_char_boundary(keep),
            "kept {keep} bytes"
        );
        if format == Format::Jsonl {
            assert!(!text[keep..].contains('\n'), "dropped a finished JSON line");
        }
        let (again, done_again, _) =
            scan_resume(&text[..keep], path, format, columns).expect("the kept rows read again");
        assert_eq!(again, keep, "a second resume dropped more");
        assert_eq!(
            done_again.len(),
            done.len(),
            "a second resume found other images"
        );
    }
}
