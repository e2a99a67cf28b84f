//! The code of the `blip2` command (src/main.rs calls [`main`]). It is a library so that the command's file
//! readers can be fuzzed (`fuzz/`, target `resume`: [`output::scan_resume`]); it is not a stable API. See
//! docs/cli.md for the command.

#![allow(clippy::print_stderr)] // errors go to stderr

mod args;
mod embed;
#[doc(hidden)]
pub mod error;
mod generate;
mod info;
mod inputs;
mod model;
#[doc(hidden)]
pub mod output;
mod progress;
mod retrieval;

use std::path::PathBuf;
use std::process::ExitCode;

use blip2_nn::backend::{BackendFn, BackendKind, DeviceSpec, run_on};
use burn::prelude::Backend;
use clap::Parser;

#[doc(hidden)]
pub use crate::generate::{ASK_COLUMNS, CAPTION_COLUMNS};
#[doc(hidden)]
pub use crate::retrieval::MATCH_COLUMNS;

use crate::args::{
    Cli, Command, Common, DEFAULT_MODEL, DEFAULT_RETRIEVAL_MODEL, EmbedKind, GenerationArgs,
    ScoreKind, Stream,
};
use crate::error::{CliError, Exit};
use crate::generate::Task;
use crate::progress::Reporter;

/// The command: parses the arguments, runs, and returns the exit code (docs/cli.md).
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(Exit::Usage.code())
            } else {
                ExitCode::SUCCESS // --help, --version
            };
        }
    };
    die_on_broken_pipe();
    blip2_nn::alloc::tune_malloc_for_inference();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if is_broken_pipe(info) {
            // A reader that went away (`| head -1`) is not a crash: end quietly, as with SIGPIPE.
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        eprintln!(
            "error: blip2 crashed: {info}\n  hint: this is a bug, or a backend failure such as running out of GPU \
             memory; rows written so far are kept. Please report it with the command line (RUST_BACKTRACE=1 \
             shows where)"
        );
        if std::env::var_os("RUST_BACKTRACE").is_some() {
            default_hook(info);
        }
    }));
    match run(cli) {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit.code())
        }
    }
}

/// The status of a process that wrote to a closed pipe: 128 + SIGPIPE, what a shell reports for `ls | head`.
const BROKEN_PIPE_EXIT: i32 = 141;

/// Writing to a closed pipe (`blip2 caption ... | head -1`) ends the process quietly, killed by SIGPIPE as `ls`
/// or `cat` are: Rust's runtime ignores the signal, which turns the write into an error, and `println!` into a
/// panic. Sockets are not affected (the standard library sends with `MSG_NOSIGNAL`).
#[cfg(unix)]
fn die_on_broken_pipe() {
    // SAFETY: `signal` with a valid signal number and `SIG_DFL` only restores the default action; no thread
    // has started yet.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn die_on_broken_pipe() {}

/// Whether a panic is `println!`'s on a closed pipe (where SIGPIPE does not end the process first).
fn is_broken_pipe(info: &std::panic::PanicHookInfo<'_>) -> bool {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    message.starts_with("failed printing to std")
        && (message.contains("(os error 32)") || message.contains("(os error 232)")) // EPIPE, ERROR_NO_DATA
}

/// What every command works with once its model is located: the common flags, the model, the reporter.
pub(crate) struct Ctx {
    pub common: Common,
    pub located: model::Located,
    pub reporter: Reporter,
}

/// One command's work, resolved before its backend is chosen: the checks that need no model run while it is
/// made, so a typo fails before a model loads.
enum Plan {
    /// `caption` and `ask`.
    Generate {
        images: Vec<PathBuf>,
        task: Task,
        generation: GenerationArgs,
        stream: Stream,
    },
    /// `chat`.
    Chat {
        image: PathBuf,
        generation: GenerationArgs,
        stream: Stream,
    },
    /// `embed`.
    Embed {
        images: Vec<PathBuf>,
        texts: Vec<String>,
        kinds: Vec<EmbedKind>,
    },
    /// `match`.
    Match {
        images: Vec<PathBuf>,
        texts: Vec<String>,
        scores: ScoreKind,
    },
}

/// A command ready to run on a backend.
struct Job {
    ctx: Ctx,
    plan: Plan,
}

fn run(mut cli: Cli) -> Result<Exit, CliError> {
    cli.common.resolve_int8_group().map_err(CliError::usage)?;
    let reporter = Reporter::new(cli.common.quiet);
    let Cli { common, command } = cli;
    if matches!(command, Command::Info) {
        return info::run(&common, &reporter);
    }
    if common.resume && common.output.is_none() {
        return Err(CliError::usage(
            "--resume needs --output: the file to carry on",
        ));
    }
    if common.resume && common.overwrite {
        return Err(CliError::usage(
            "--resume keeps the output and --overwrite replaces it: pass one",
        ));
    }
    let spec: DeviceSpec = common.device.parse().map_err(CliError::from)?;
    let backend = spec.resolve().map_err(CliError::from)?;
    if !matches!(backend, BackendKind::Flex | BackendKind::NdArray) {
        // Before the first GPU op: cubecl reads its settings once per process.
        kernel_caches(common.kernel_cache.as_deref(), backend, &reporter);
        // A GPU that is not there makes its runtime panic at the first op: ask it first.
        if let Err(reason) = info::probe_spec(&spec) {
            return Err(CliError::new(
                Exit::Backend,
                format!("device {spec} is not available: {reason}"),
            )
            .with_hint(
                "`blip2 info` lists the devices this build can use; --device cpu runs on the CPU",
            ));
        }
    }
    let (plan, default) = plan(&common, command)?;
    let located = model::locate(&common, default, &reporter)?;
    let ctx = Ctx {
        common,
        located,
        reporter,
    };
    run_on(&spec, Job { ctx, plan }).map_err(CliError::from)?
}

/// The command's [`Plan`] and its default model, after the checks that need no model.
fn plan(common: &Common, command: Command) -> Result<(Plan, &'static str), CliError> {
    let stdin = || std::io::stdin().lock();
    Ok(match command {
        Command::Caption(a) => {
            if a.prompt.as_deref().is_some_and(|p| p.trim().is_empty()) {
                return Err(CliError::usage(
                    "the --prompt is empty: leave it out to caption without a prompt",
                ));
            }
            generate::check_generation_flags(&a.generation)?;
            let images = inputs::image_paths(&a.images.images, stdin())?;
            let task = Task::Caption { prompt: a.prompt };
            let plan = Plan::Generate {
                images,
                task,
                generation: a.generation,
                stream: a.stream,
            };
            (plan, DEFAULT_MODEL)
        }
        Command::Ask(a) => {
            let prompt = generate::ask_prompt(&a.template, &a.question)?;
            generate::check_generation_flags(&a.generation)?;
            let images = inputs::image_paths(std::slice::from_ref(&a.image), stdin())?;
            let task = Task::Ask {
                question: a.question,
                prompt,
            };
            let plan = Plan::Generate {
                images,
                task,
                generation: a.generation,
                stream: a.stream,
            };
            (plan, DEFAULT_MODEL)
        }
        Command::Chat(a) => {
            if common.output.is_some() {
                return Err(CliError::usage(
                    "chat answers on the terminal; --output is for caption, ask, embed and match",
                ));
            }
            generate::check_generation_flags(&a.generation)?;
            if !a.image.is_file() {
                return Err(CliError::input(format!(
                    "{}: no such image file",
                    a.image.display()
                )));
            }
            let plan = Plan::Chat {
                image: a.image,
                generation: a.generation,
                stream: a.stream,
            };
            (plan, DEFAULT_MODEL)
        }
        Command::Embed(a) => {
            // The output is checked before anything is computed.
            embed::check_embed_output(common)?;
            let texts = inputs::texts(&a.texts)?;
            let images = if a.images.is_empty() {
                Vec::new()
            } else {
                inputs::image_paths(&a.images, stdin())?
            };
            let mut kinds = a.kind;
            if kinds.is_empty() {
                if !images.is_empty() {
                    kinds.push(EmbedKind::Image);
                }
                if !texts.is_empty() {
                    kinds.push(EmbedKind::Text);
                }
            }
            kinds.sort();
            kinds.dedup();
            if kinds.is_empty() {
                return Err(CliError::usage(
                    "nothing to embed: give images, --text TEXT or --texts FILE",
                ));
            }
            let plan = Plan::Embed {
                images,
                texts,
                kinds,
            };
            (plan, DEFAULT_RETRIEVAL_MODEL)
        }
        Command::Match(a) => {
            let texts = inputs::texts(&a.texts)?;
            if texts.is_empty() {
                return Err(CliError::usage(
                    "match needs texts: --text TEXT (repeat it) or --texts FILE",
                ));
            }
            let images = inputs::image_paths(&a.images.images, stdin())?;
            let plan = Plan::Match {
                images,
                texts,
                scores: a.scores,
            };
            (plan, DEFAULT_RETRIEVAL_MODEL)
        }
        Command::Info => unreachable!("`run` handles info before planning"),
    })
}

impl BackendFn for Job {
    type Output = Result<Exit, CliError>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let Job { ctx, plan } = self;
        match plan {
            Plan::Generate {
                images,
                task,
                generation,
                stream,
            } => generate::run::<B>(&ctx, images, &task, &generation, stream, &device),
            Plan::Chat {
                image,
                generation,
                stream,
            } => generate::chat::<B>(&ctx, &image, &generation, stream, &device),
            Plan::Embed {
                images,
                texts,
                kinds,
            } => embed::embed::<B>(&ctx, images, texts, &kinds, &device),
            Plan::Match {
                images,
                texts,
                scores,
            } => retrieval::matching::<B>(&ctx, images, texts, scores, &device),
        }
    }
}

/// `--kernel-cache`: cubecl's autotune results (and CUDA's compiled kernels) under DIR, by default the user
/// cache; `off` leaves cubecl's defaults (docs/backends.md, "Start-up").
fn kernel_caches(dir: Option<&std::path::Path>, backend: BackendKind, reporter: &Reporter) {
    let root = match dir {
        Some(dir) if dir.as_os_str() == "off" => return,
        Some(dir) => dir.to_path_buf(),
        None => match blip2_nn::kernel_cache::default_root() {
            Some(root) => root,
            None => return,
        },
    };
    let caches = blip2_nn::kernel_cache::persist_kernel_caches(backend, &root);
    if let Some(note) = caches.note {
        reporter.note(format!("kernel cache: {note}"));
    }
}
