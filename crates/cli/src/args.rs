//! The command line: every subcommand, flag and its help text.

use std::path::PathBuf;

use blip2_nn::backend::FloatDType;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// The model of `caption`, `ask` and `chat` when `--model` is not given.
pub const DEFAULT_MODEL: &str = "Salesforce/blip2-opt-2.7b";
/// The model of `match` and `embed` when `--model` is not given.
pub const DEFAULT_RETRIEVAL_MODEL: &str = "Salesforce/blip2-itm-vit-g";

const ABOUT: &str =
    "BLIP-2 from the command line: captions, answers, chat, features and image-text scores";

const LONG_ABOUT: &str = "BLIP-2 from the command line: captions, answers, chat, features and image-text scores.

Models load from a local directory or a HuggingFace hub id, downloaded once into the HF cache (HF_HOME, \
HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE are honoured). The options of every subcommand are listed by \
`blip2 <command> --help`; the JSON rows and the exit codes are documented in docs/cli.md.";

const EXAMPLES: &str = "Examples:
  blip2 caption photo.jpg
  blip2 caption photos/ --output captions.jsonl          # a folder, one JSON line per image
  blip2 caption photos/ --output captions.jsonl --resume # carry on after an interruption
  blip2 ask photo.jpg \"what is the cat doing?\"
  blip2 chat photo.jpg
  blip2 match a.jpg b.jpg --text \"a cat\" --text \"a dog\"
  blip2 embed photos/ --output features.safetensors
  blip2 info --model Salesforce/blip2-flan-t5-xl";

/// The `blip2` command.
#[derive(Debug, Parser)]
#[command(
    name = "blip2",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXAMPLES,
    propagate_version = true,
    max_term_width = 110
)]
pub struct Cli {
    /// Flags every subcommand takes.
    #[command(flatten)]
    pub common: Common,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes (before or after its name).
#[derive(Debug, Args)]
pub struct Common {
    /// Model directory or hub id (`owner/name[@revision]`) [default: Salesforce/blip2-opt-2.7b; for match and
    /// embed: Salesforce/blip2-itm-vit-g]
    #[arg(
        long,
        short,
        global = true,
        value_name = "DIR|HUB_ID",
        env = "BLIP2_MODEL",
        help_heading = "Model and device"
    )]
    pub model: Option<String>,

    /// Where to run: cpu, flex, ndarray, cuda[:N], vulkan[:N], metal, wgpu[:N] (`blip2 info` lists what this
    /// build has)
    #[arg(
        long,
        visible_alias = "backend",
        global = true,
        default_value = "cpu",
        value_name = "DEVICE",
        env = "BLIP2_DEVICE",
        help_heading = "Model and device"
    )]
    pub device: String,

    /// Weights in memory: f32, f16, bf16 (half modes keep the Q-Former in f32), or int8 (the language model's
    /// linear weights in int8 with bf16 activations, the vision tower in bf16)
    #[arg(
        long,
        global = true,
        default_value = "f32",
        value_parser = parse_dtype,
        help_heading = "Model and device"
    )]
    pub dtype: Dtype,

    /// With `--dtype int8`: outputs per int8 scale, a multiple of 16 up to 240 (default 128). 64 holds twice
    /// the scales (a little more memory, a slower decoding step) for finer steps (docs/numerics.md)
    #[arg(
        long,
        global = true,
        value_name = "N",
        value_parser = parse_int8_group,
        help_heading = "Model and device"
    )]
    pub int8_group: Option<usize>,

    /// Images per forward pass
    #[arg(
        long,
        global = true,
        default_value_t = 8,
        value_name = "N",
        value_parser = parse_positive,
        help_heading = "Model and device"
    )]
    pub batch_size: usize,

    /// Largest image to read or resize to, in pixels (width x height) [default: 89478485, Pillow's
    /// decompression-bomb limit]; raise it for huge images or a processor config with a larger `size`
    #[arg(
        long,
        global = true,
        value_name = "PIXELS",
        value_parser = parse_positive_u64,
        help_heading = "Model and device"
    )]
    pub max_image_pixels: Option<u64>,

    /// GPU backends: keep autotune results (and compiled CUDA kernels) in DIR across runs [default:
    /// $XDG_CACHE_HOME/blip2/kernels, else ~/.cache/blip2/kernels]; `off` leaves cubecl's own defaults
    #[arg(
        long,
        global = true,
        value_name = "DIR|off",
        env = "BLIP2_KERNEL_CACHE",
        help_heading = "Model and device"
    )]
    pub kernel_cache: Option<PathBuf>,

    /// Write the results to FILE: JSON lines (.jsonl, .ndjson) or CSV (.csv); embed writes .safetensors plus
    /// a .jsonl index beside it
    #[arg(
        long,
        short,
        global = true,
        value_name = "FILE",
        help_heading = "Output"
    )]
    pub output: Option<PathBuf>,

    /// Carry on an interrupted job: keep the rows already in --output and skip their images
    #[arg(long, global = true, help_heading = "Output")]
    pub resume: bool,

    /// Replace --output if it exists (without this, an existing file is never overwritten)
    #[arg(long, global = true, help_heading = "Output")]
    pub overwrite: bool,

    /// Print JSON lines on stdout (with token ids and scores) instead of text
    #[arg(long, global = true, help_heading = "Output")]
    pub json: bool,

    /// No progress bars, notes or summaries on stderr (errors are still printed)
    #[arg(long, short, global = true, help_heading = "Output")]
    pub quiet: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Caption images: files, folders (searched recursively), glob patterns, or `-` for paths on stdin
    #[command(after_help = "Examples:
  blip2 caption photo.jpg
  blip2 caption photo.jpg --prompt \"a photo of\" --num-beams 5
  blip2 caption 'shots/**/*.png' --output captions.csv
  find . -name '*.jpg' | blip2 caption - --json > captions.jsonl")]
    Caption(CaptionArgs),

    /// Ask a question about images (visual question answering)
    #[command(after_help = "Examples:
  blip2 ask photo.jpg \"what is the cat doing?\"
  blip2 ask photos/ \"how many people are there?\" --output counts.jsonl
  blip2 ask photo.jpg \"what is this?\" --template \"Q: {} A:\"")]
    Ask(AskArgs),

    /// Talk about one image, question after question; the image is encoded once
    #[command(
        after_help = "Type a question and press Enter. /clear forgets the earlier turns, /history shows \
them, /quit (or Ctrl-D) ends. Questions can also be piped in, one per line.

Example:
  blip2 chat photo.jpg"
    )]
    Chat(ChatArgs),

    /// Write image, text or multimodal features to a .safetensors file, with a JSONL index of the rows
    #[command(
        after_help = "With a retrieval checkpoint (the default, Salesforce/blip2-itm-vit-g):
  image       image_embeds       [images, queries, embed dim]  normalised, what ITC compares
  text        text_embeds        [texts, embed dim]            normalised
  multimodal  multimodal_embeds  [pairs, queries, hidden]      the Q-Former reading image i with text i
With a captioning checkpoint (OPT, Flan-T5), image only:
  image       qformer_embeds     [images, queries, hidden]     the Q-Former's query outputs
              language_model_inputs [images, queries, LM hidden] the soft prompt

Examples:
  blip2 embed photos/ --output images.safetensors
  blip2 embed --text \"a cat\" --text \"a dog\" --output texts.safetensors
  blip2 embed a.jpg b.jpg --text \"a cat\" --text \"a dog\" --kind multimodal -o pairs.safetensors"
    )]
    Embed(EmbedArgs),

    /// Score images against texts: image-text matching (ITM) and contrastive similarity (ITC)
    #[command(
        after_help = "ITM is the probability that the text describes the image; ITC is the cosine \
similarity of the best-matching query with the text.

Examples:
  blip2 match photo.jpg --text \"a cat on a sofa\" --text \"a dog in the snow\"
  blip2 match photos/ --texts labels.txt --scores itc --output scores.csv"
    )]
    Match(MatchArgs),

    /// Describe this build (backends, devices) and a model (architecture, parameters, dtypes)
    #[command(after_help = "Examples:
  blip2 info
  blip2 info --model Salesforce/blip2-opt-2.7b --dtype bf16")]
    Info,
}

/// Where images come from.
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// Image files, folders (searched recursively), glob patterns (quote them), or `-` to read paths from stdin
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<String>,
}

/// `blip2 caption`.
#[derive(Debug, Args)]
pub struct CaptionArgs {
    /// Images.
    #[command(flatten)]
    pub images: ImageArgs,

    /// Text the caption continues, e.g. "a photo of" (without: an unconditional caption)
    #[arg(long)]
    pub prompt: Option<String>,

    /// Stream the words as they are generated: auto streams one image's caption on a terminal
    #[arg(long, value_enum, default_value_t = Stream::Auto)]
    pub stream: Stream,

    /// Generation options.
    #[command(flatten)]
    pub generation: GenerationArgs,
}

/// `blip2 ask`.
#[derive(Debug, Args)]
pub struct AskArgs {
    /// An image file, a folder, a glob pattern, or `-` to read paths from stdin
    #[arg(value_name = "IMAGE")]
    pub image: String,

    /// The question, asked of every image
    #[arg(value_name = "QUESTION")]
    pub question: String,

    /// The prompt around the question; `{}` marks where it goes
    #[arg(long, default_value = "Question: {} Answer:")]
    pub template: String,

    /// Stream the words as they are generated: auto streams one image's answer on a terminal
    #[arg(long, value_enum, default_value_t = Stream::Auto)]
    pub stream: Stream,

    /// Generation options.
    #[command(flatten)]
    pub generation: GenerationArgs,
}

/// `blip2 chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// The image to talk about
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,

    /// Stream each answer as it is generated: auto streams on a terminal
    #[arg(long, value_enum, default_value_t = Stream::Auto)]
    pub stream: Stream,

    /// Generation options.
    #[command(flatten)]
    pub generation: GenerationArgs,
}

/// `blip2 embed`.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Image files, folders, glob patterns, or `-` to read paths from stdin
    #[arg(value_name = "IMAGE")]
    pub images: Vec<String>,

    /// Texts.
    #[command(flatten)]
    pub texts: TextArgs,

    /// Which features: image, text, multimodal, or several separated by commas [default: image for images,
    /// text for texts]
    #[arg(long, value_enum, value_delimiter = ',')]
    pub kind: Vec<EmbedKind>,
}

/// `blip2 match`.
#[derive(Debug, Args)]
pub struct MatchArgs {
    /// Images.
    #[command(flatten)]
    pub images: ImageArgs,

    /// Texts.
    #[command(flatten)]
    pub texts: TextArgs,

    /// Which scores: both, itm (a Q-Former pass per pair) or itc (one per image and per text, cheap)
    #[arg(long, value_enum, default_value_t = ScoreKind::Both)]
    pub scores: ScoreKind,
}

/// Texts given on the command line or in a file.
#[derive(Debug, Args)]
pub struct TextArgs {
    /// A text (repeat for several)
    #[arg(long = "text", short = 't', value_name = "TEXT")]
    pub text: Vec<String>,

    /// A file with one text per line (empty lines skipped)
    #[arg(long, value_name = "FILE")]
    pub texts: Option<PathBuf>,
}

/// The generation options, named and defaulting as in transformers' `generate()` (unset: the model's
/// generation config, greedy and 20 new tokens).
#[derive(Debug, Default, Args)]
#[command(next_help_heading = "Generation (transformers' generate() options)")]
pub struct GenerationArgs {
    /// Most tokens to generate after the prompt [default: 20]
    #[arg(long, value_name = "N")]
    pub max_new_tokens: Option<usize>,
    /// Fewest tokens to generate before the end-of-sequence token may come
    #[arg(long, value_name = "N")]
    pub min_new_tokens: Option<usize>,
    /// Beam search with N beams (1: greedy decoding or sampling) [default: 1]
    #[arg(long, value_name = "N")]
    pub num_beams: Option<usize>,
    /// Sample the next token instead of taking the most likely one
    #[arg(long)]
    pub do_sample: bool,
    /// Sampling temperature (with --do-sample) [default: 1.0]
    #[arg(long, value_name = "T")]
    pub temperature: Option<f64>,
    /// Sample among the K most likely tokens (with --do-sample; 0 turns it off) [default: 50]
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Sample among the most likely tokens whose probabilities add up to P (with --do-sample) [default: 1.0]
    #[arg(long, value_name = "P")]
    pub top_p: Option<f64>,
    /// Seed of the sampler: the same seed gives the same text
    #[arg(long, value_name = "SEED")]
    pub seed: Option<u64>,
    /// Penalty on tokens already in the text (1.0: none; above 1 discourages repeats) [default: 1.0]
    #[arg(long, value_name = "R")]
    pub repetition_penalty: Option<f64>,
    /// Never repeat a run of N tokens (0: off) [default: 0]
    #[arg(long, value_name = "N")]
    pub no_repeat_ngram_size: Option<usize>,
    /// Sequences to return per image (at most --num-beams with beam search) [default: 1]
    #[arg(long, value_name = "N")]
    pub num_return_sequences: Option<usize>,
    /// Beam search: exponent of the length in the score's normalisation [default: 1.0]
    #[arg(long, value_name = "L")]
    pub length_penalty: Option<f64>,
}

/// When to stream generated text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stream {
    /// On a terminal, for a single image, with greedy decoding or sampling.
    Auto,
    /// Whenever it can (one image, greedy decoding or sampling, text output).
    Always,
    /// Print the whole text when it is done.
    Never,
}

/// A kind of features for `blip2 embed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum EmbedKind {
    /// Image features.
    Image,
    /// Text features.
    Text,
    /// Image i read together with text i.
    Multimodal,
}

/// Which scores `blip2 match` computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScoreKind {
    /// ITM and ITC.
    Both,
    /// Image-text matching probabilities.
    Itm,
    /// Image-text contrastive cosines.
    Itc,
}

impl ScoreKind {
    /// Whether ITM is computed.
    pub fn itm(self) -> bool {
        matches!(self, Self::Both | Self::Itm)
    }

    /// Whether ITC is computed.
    pub fn itc(self) -> bool {
        matches!(self, Self::Both | Self::Itc)
    }
}

fn parse_dtype(s: &str) -> Result<Dtype, String> {
    if matches!(s.trim().to_ascii_lowercase().as_str(), "int8" | "i8" | "q8") {
        return Ok(Dtype::Int8 {
            group: blip2_nn::DEFAULT_Q8_GROUP,
        });
    }
    s.parse()
        .map(Dtype::Float)
        .map_err(|_| format!("`{s}` is not a dtype: use f32, f16, bf16 or int8"))
}

/// What `--dtype` asks for: a float dtype, or int8 weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// Every part in this dtype (the Q-Former in f32 for the half dtypes).
    Float(FloatDType),
    /// [`blip2::Precision::INT8`], with this many outputs per scale (`--int8-group`).
    Int8 {
        /// Outputs per scale.
        group: usize,
    },
}

impl Dtype {
    /// The model's precision.
    pub fn precision(self) -> blip2::Precision {
        match self {
            Self::Float(dtype) => dtype.into(),
            Self::Int8 { group } => {
                let mut precision = blip2::Precision::INT8;
                precision.int8.group = group;
                precision
            }
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Float(dtype) => dtype.fmt(f),
            Self::Int8 { group } if *group == blip2_nn::DEFAULT_Q8_GROUP => f.write_str("int8"),
            Self::Int8 { group } => write!(f, "int8 (group {group})"),
        }
    }
}

fn parse_int8_group(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (16..=240).contains(&n) && n.is_multiple_of(16) => Ok(n),
        _ => Err(format!(
            "`{s}` is not an int8 group: use a multiple of 16 from 16 to 240 (default {})",
            blip2_nn::DEFAULT_Q8_GROUP
        )),
    }
}

fn parse_positive_u64(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{s}` is not a positive whole number")),
    }
}

impl Common {
    /// Folds `--int8-group` into `--dtype int8`.
    ///
    /// # Errors
    /// A usage error when `--int8-group` comes without `--dtype int8`.
    pub fn resolve_int8_group(&mut self) -> Result<(), String> {
        match (self.int8_group, &mut self.dtype) {
            (None, _) => Ok(()),
            (Some(n), Dtype::Int8 { group }) => {
                *group = n;
                Ok(())
            }
            (Some(_), dtype) => Err(format!(
                "--int8-group applies to --dtype int8, not --dtype {dtype}"
            )),
        }
    }

    /// The image limits: the library's defaults, with `--max-image-pixels` (and the decoder's memory
    /// allowance and the largest file raised in proportion: 12 bytes a pixel, as the defaults allow).
    pub fn image_limits(&self) -> blip2::processor::Limits {
        let defaults = blip2::processor::Limits::default();
        match self.max_image_pixels {
            Some(pixels) => {
                let bytes = pixels.saturating_mul(12);
                blip2::processor::Limits {
                    max_pixels: pixels,
                    max_alloc: defaults.max_alloc.max(bytes),
                    max_file_bytes: defaults.max_file_bytes.max(bytes),
                    max_resize_pixels: defaults.max_resize_pixels.max(pixels),
                    ..defaults
                }
            }
            None => defaults,
        }
    }
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{s}` is not a positive whole number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
