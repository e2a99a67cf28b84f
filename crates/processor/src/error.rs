//! The error type of blip2-processor: processor configs, image files, limits, raw buffers and batches;
//! tokenizer files and configs, prompts, lengths and token ids.

use std::path::PathBuf;

/// Where an image came from, as error messages name it: a file path, or `<memory>` for bytes, buffers and
/// already-decoded images.
pub const MEMORY: &str = "<memory>";

/// Everything that can go wrong in blip2-processor. Messages are lowercase, name the file (or `<memory>`),
/// the key or value, and say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A model directory with neither `processor_config.json` (holding an `image_processor` object) nor
    /// `preprocessor_config.json`.
    #[error(
        "no image processor config in {dir}: expected preprocessor_config.json, or processor_config.json \
         with an `image_processor` object"
    )]
    NoConfig {
        /// The directory.
        dir: PathBuf,
    },

    /// A config file that is not valid JSON, or whose values have the wrong JSON type.
    #[error("invalid image processor config {name}: {reason}")]
    BadConfig {
        /// The file, or `<memory>` for a JSON string.
        name: String,
        /// What is wrong.
        reason: String,
    },

    /// A config value that blip2 does not support or that makes no sense.
    #[error("unsupported value {value} for `{key}` in {name}: {reason}")]
    UnsupportedConfig {
        /// The file, or `<memory>`.
        name: String,
        /// The config key, as in the JSON file.
        key: String,
        /// The value found (as JSON).
        value: String,
        /// What is supported.
        reason: String,
    },

    /// Bytes that are not an image in a supported format (PNG, JPEG, WebP, GIF, BMP, TIFF).
    #[error(
        "{name} is not an image in a supported format ({reason}); use PNG, JPEG, WebP, GIF, BMP or TIFF"
    )]
    UnsupportedFormat {
        /// The file, or `<memory>`.
        name: String,
        /// What the decoder said.
        reason: String,
    },

    /// A corrupt or truncated image file.
    #[error("cannot decode {name}: {reason}; the file is corrupt or truncated, get a fresh copy")]
    Decode {
        /// The file, or `<memory>`.
        name: String,
        /// What the decoder said.
        reason: String,
    },

    /// An image larger than the [`Limits`](crate::Limits) allow (a decompression bomb, or simply too big).
    #[error(
        "{name} is {width}x{height} pixels, over the limit of {limit} {what}; shrink the image, or raise \
         the limit if you trust it (`Limits`; the blip2 command's --max-image-pixels)"
    )]
    TooLarge {
        /// The file, or `<memory>`.
        name: String,
        /// Image width in pixels.
        width: u64,
        /// Image height in pixels.
        height: u64,
        /// The limit that was exceeded.
        limit: u64,
        /// What the limit counts: `pixels`, `pixels of width`, `pixels of height` or `bytes of memory`.
        what: &'static str,
    },

    /// An image file (or buffer of encoded bytes) larger than
    /// [`Limits::max_file_bytes`](crate::Limits::max_file_bytes): refused before it is read whole.
    #[error(
        "{name} has {size} bytes or more, over the limit of {limit} bytes for an image file; pass a smaller \
         file, or raise `Limits::max_file_bytes` if you trust it"
    )]
    FileTooLarge {
        /// The file, or `<memory>`.
        name: String,
        /// Its size in bytes, or how much was read before the limit was passed (a pipe or device).
        size: u64,
        /// The limit.
        limit: u64,
    },

    /// The decoder needed more memory than [`Limits::max_alloc`](crate::Limits::max_alloc) allows.
    #[error(
        "decoding {name} needs more memory than allowed ({reason}); raise `Limits::max_alloc` if you trust it"
    )]
    DecoderLimit {
        /// The file, or `<memory>`.
        name: String,
        /// What the decoder said.
        reason: String,
    },

    /// An image with no pixels.
    #[error("{name} has no pixels ({width}x{height}); pass a non-empty image")]
    ZeroSize {
        /// The file, or `<memory>`.
        name: String,
        /// Width in pixels.
        width: u64,
        /// Height in pixels.
        height: u64,
    },

    /// A raw RGB buffer whose length is not `width * height * 3`.
    #[error(
        "raw RGB buffer of {found} bytes does not match {width}x{height} (expected {expected} bytes, \
         3 per pixel, row-major)"
    )]
    BufferLength {
        /// Width in pixels.
        width: u64,
        /// Height in pixels.
        height: u64,
        /// `width * height * 3`.
        expected: u64,
        /// The buffer's length.
        found: u64,
    },

    /// A pixel format the processor cannot convert the way the reference does (e.g. 32-bit float images).
    #[error(
        "{name} has pixel format {format}, which is not supported; convert it to 8-bit RGB first"
    )]
    UnsupportedPixels {
        /// The file, or `<memory>`.
        name: String,
        /// The decoded pixel format.
        format: String,
    },

    /// A processor with `do_convert_rgb: false` was given an image that is not already RGB.
    #[error(
        "{name} has pixel format {format} but `do_convert_rgb` is false and the model needs 8-bit RGB: \
         enable `do_convert_rgb` or convert the image first"
    )]
    NotRgb {
        /// The file, or `<memory>`.
        name: String,
        /// The decoded pixel format (the `image` crate's `ColorType`).
        format: String,
    },

    /// `preprocess` was given no images.
    #[error("empty batch: pass at least one image")]
    EmptyBatch,

    /// Images of a batch that end up at different sizes (only possible with `size: {shortest_edge}`).
    #[error(
        "image {index} of the batch is {height}x{width} after resizing but image 0 is \
         {expected_height}x{expected_width}; process them one at a time or use `size: {{height, width}}`"
    )]
    BatchSizeMismatch {
        /// Position in the batch.
        index: usize,
        /// Its height after resizing.
        height: u64,
        /// Its width after resizing.
        width: u64,
        /// Height of image 0.
        expected_height: u64,
        /// Width of image 0.
        expected_width: u64,
    },

    /// A model directory without `tokenizer.json`.
    #[error(
        "no tokenizer.json in {dir}: blip2 reads the `tokenizers` serialization only; save the tokenizer \
         with transformers (`AutoTokenizer.from_pretrained(dir).save_pretrained(dir)`) to write one"
    )]
    NoTokenizer {
        /// The directory.
        dir: PathBuf,
    },

    /// A `tokenizer.json` that the `tokenizers` crate cannot read (not JSON, truncated, or of an unknown
    /// layout).
    #[error(
        "cannot load tokenizer {name}: {reason}; the file is corrupt or not a tokenizer.json, get a fresh copy"
    )]
    BadTokenizer {
        /// The file, or `<memory>`.
        name: String,
        /// What the `tokenizers` crate said.
        reason: String,
    },

    /// A text-side config file (`tokenizer_config.json`, `special_tokens_map.json`, `processor_config.json`,
    /// `config.json`) that is not valid JSON or not a JSON object.
    #[error("invalid config {name}: {reason}")]
    BadTextConfig {
        /// The file, or `<memory>`.
        name: String,
        /// What is wrong.
        reason: String,
    },

    /// A text-side config value of the wrong type or out of range.
    #[error("invalid value {value} for `{key}` in {name}: {reason}")]
    BadTextConfigValue {
        /// The file, or `<memory>`.
        name: String,
        /// The key, as in the JSON file.
        key: String,
        /// The value found (as JSON).
        value: String,
        /// What is expected.
        reason: String,
    },

    /// No `num_query_tokens` in `processor_config.json` nor in `config.json`.
    #[error(
        "no `num_query_tokens` in {dir}: expected it in processor_config.json (or config.json); \
         BLIP-2 checkpoints use 32"
    )]
    NoNumQueryTokens {
        /// The directory.
        dir: PathBuf,
    },

    /// A special token the operation needs is not configured (e.g. `pad_token` to pad a batch).
    #[error(
        "the tokenizer {name} has no `{key}`, which {needed_for} needs; set `{key}` in tokenizer_config.json"
    )]
    MissingSpecialToken {
        /// The tokenizer file, or `<memory>`.
        name: String,
        /// The special token's attribute (`pad_token`, `bos_token`, ...).
        key: String,
        /// What needed it.
        needed_for: &'static str,
    },

    /// A special-token attribute name that the tokenizer does not know.
    #[error(
        "unknown special token `{key}` for tokenizer {name}; known: bos_token, eos_token, unk_token, \
         sep_token, pad_token, cls_token, mask_token, image_token"
    )]
    UnknownSpecialToken {
        /// The tokenizer file, or `<memory>`.
        name: String,
        /// The name asked for.
        key: String,
    },

    /// No prompts were given.
    #[error(
        "empty prompt list: pass at least one prompt (use `caption_inputs` to caption without a prompt)"
    )]
    EmptyPrompts,

    /// A prompt longer than `max_length` while truncation is off.
    #[error(
        "prompt {index} is {length} tokens long (special and <image> tokens included), over max_length \
         {limit}; enable truncation, shorten the prompt or raise max_length"
    )]
    PromptTooLong {
        /// Position in the batch.
        index: usize,
        /// Its length in tokens.
        length: usize,
        /// The limit.
        limit: usize,
    },

    /// A `max_length` that cannot hold the tokens that are always there.
    #[error(
        "max_length {max_length} is too small: the <image> tokens and the tokenizer's special tokens \
         alone take {needed}; raise max_length"
    )]
    MaxLengthTooSmall {
        /// The `max_length` asked for.
        max_length: usize,
        /// How many tokens are always there.
        needed: usize,
    },

    /// Padding or truncation to a maximum length with none given and no `model_max_length` in the
    /// tokenizer config.
    #[error(
        "{what} needs a maximum length but none was given and the tokenizer {name} has no \
         model_max_length; set `max_length`"
    )]
    NoMaxLength {
        /// The tokenizer file, or `<memory>`.
        name: String,
        /// What needed it.
        what: &'static str,
    },

    /// Rows of different lengths where a rectangular batch is needed (a batch encoded without padding).
    #[error(
        "row {index} of the batch has {length} tokens but row 0 has {expected}; encode with padding to \
         make a tensor"
    )]
    RaggedBatch {
        /// Position in the batch.
        index: usize,
        /// Its length.
        length: usize,
        /// The length of row 0.
        expected: usize,
    },

    /// A token id that cannot be one (negative, or past `u32`), e.g. a `-100` label left in.
    #[error(
        "invalid token id {id} at position {index}: ids are 0..2^32; drop ignored (-100) positions first"
    )]
    InvalidTokenId {
        /// The id.
        id: i64,
        /// Its position.
        index: usize,
    },

    /// The `tokenizers` crate failed to encode or decode.
    #[error("tokenizer {name} failed: {reason}")]
    Tokenize {
        /// The tokenizer file, or `<memory>`.
        name: String,
        /// What the `tokenizers` crate said.
        reason: String,
    },

    /// An error from blip2-nn.
    #[error(transparent)]
    Nn(#[from] blip2_nn::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
