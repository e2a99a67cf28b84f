//! What the user sees when something goes wrong: a sentence, a hint, and an exit code by kind.

use std::fmt;
use std::path::Path;

/// The exit codes, by kind of failure (docs/cli.md lists them; a test checks the two agree).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything asked for was done.
    Ok = 0,
    /// Something failed that is not one of the kinds below (e.g. generation produced NaN scores).
    Failure = 1,
    /// Bad flags or values: an unknown option, an empty prompt, generation options that do not fit together.
    Usage = 2,
    /// An input cannot be used: a path that does not exist, no image found, an unreadable text file.
    Input = 3,
    /// The model cannot be found, downloaded or loaded, or cannot do what was asked.
    Model = 4,
    /// The backend or device: not compiled into this build, not available, or without the dtype.
    Backend = 5,
    /// The output cannot be written, or exists and neither --resume nor --overwrite was given.
    Output = 6,
    /// The job finished, but some images failed (their rows carry an `error` field).
    Partial = 7,
}

impl Exit {
    /// Every exit code, for the docs check.
    #[cfg(test)]
    pub const ALL: [Exit; 8] = [
        Exit::Ok,
        Exit::Failure,
        Exit::Usage,
        Exit::Input,
        Exit::Model,
        Exit::Backend,
        Exit::Output,
        Exit::Partial,
    ];

    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// An error for the user: what went wrong (a sentence naming the file, flag or value) and what to do.
#[derive(Debug)]
pub struct CliError {
    /// The exit code.
    pub exit: Exit,
    /// What went wrong.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl CliError {
    /// An error of `exit`'s kind.
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
            hint: None,
        }
    }

    /// A usage error.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    /// An input error.
    pub fn input(message: impl Into<String>) -> Self {
        Self::new(Exit::Input, message)
    }

    /// An output error.
    pub fn output(message: impl Into<String>) -> Self {
        Self::new(Exit::Output, message)
    }

    /// An output file that cannot be written.
    pub fn write(path: &Path, err: &std::io::Error) -> Self {
        Self::output(format!("cannot write {}: {err}", path.display())).with_hint(
            "check that the folder exists and is writable, and that the disk is not full",
        )
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl From<blip2_nn::Error> for CliError {
    fn from(err: blip2_nn::Error) -> Self {
        use blip2_nn::Error as E;
        let message = err.to_string();
        match err {
            E::UnknownBackend { .. }
            | E::BackendNotCompiled { .. }
            | E::InvalidDevice { .. }
            | E::UnsupportedDtype { .. } => Self::new(Exit::Backend, message).with_hint(
                "`blip2 info` lists the backends of this build; others need a build with their cargo feature, \
                 e.g. `cargo install --path crates/cli --features cuda`",
            ),
            E::UnknownDtype { .. } => Self::usage(message),
            _ => Self::new(Exit::Model, message).with_hint(
                "the weights do not fit the model's config.json: check --model, or download the model again",
            ),
        }
    }
}

/// The command-line flag of a generation option (`num_beams` -> `--num-beams`).
fn flag(field: &str) -> String {
    format!("--{}", field.replace('_', "-"))
}

impl From<blip2::Error> for CliError {
    fn from(err: blip2::Error) -> Self {
        use blip2::Error as E;
        use blip2::generation::Error as G;
        use blip2::processor::Error as P;
        let message = err.to_string();
        match err {
            E::Nn(e) => e.into(),
            E::Hub(_) => Self::new(Exit::Model, message),
            E::Vision(blip2::vision::Error::BadPixelValues { .. }) => Self::input(
                // The library's remedy (`interpolate_pos_encoding`) is not a flag of the CLI.
                message.replace(" or pass interpolate_pos_encoding", ""),
            )
            .with_hint(
                "the model's processor config has `do_resize: false`, so images go in at their own size: resize \
                 the image to the size named first, or set `do_resize` to true in its preprocessor_config.json",
            ),
            E::Mismatch { .. } => Self::new(Exit::Model, message).with_hint(
                "the processor files (processor_config.json, tokenizer files) must come with the checkpoint",
            ),
            E::Io { .. }
            | E::Json { .. }
            | E::NotABlip2Config { .. }
            | E::UnknownLanguageModel { .. }
            | E::UnsupportedConfig { .. }
            | E::Vision(_)
            | E::QFormer(_)
            | E::Opt(_)
            | E::T5(_) => Self::new(Exit::Model, message)
                .with_hint("--model must be a BLIP-2 checkpoint: a folder with config.json and the weights"),
            E::Generation(G::InvalidConfig { ref fields, .. }) => {
                let flags: Vec<String> = fields.iter().map(|f| flag(f)).collect();
                Self::usage(message).with_hint(format!(
                    "check {}; `--help` lists the generation options",
                    flags.join(", ")
                ))
            }
            E::Generation(G::Unsupported { .. } | G::UnknownField { .. }) => {
                Self::usage(message).with_hint("see `--help` for the generation options")
            }
            E::Generation(G::TooManyNewTokens { .. }) => Self::usage(message).with_hint(
                "lower --max-new-tokens, or shorten the prompt (in `chat`, /clear forgets the earlier turns)",
            ),
            E::Generation(G::PromptTooLong { .. }) => Self::usage(message)
                .with_hint("shorten the prompt or question (in `chat`, /clear forgets the earlier turns)"),
            E::Generation(G::TooManyRows { field, .. }) => Self::usage(message).with_hint(format!(
                "lower {} or --batch-size",
                flag(field)
            )),
            E::Generation(_) => Self::new(Exit::Failure, message),
            E::Processor(e) => match e {
                P::TooLarge { .. } | P::DecoderLimit { .. } => Self::input(message).with_hint(
                    "shrink the image, or pass --max-image-pixels with a larger number if you trust it",
                ),
                P::Io { .. }
                | P::UnsupportedFormat { .. }
                | P::Decode { .. }
                | P::ZeroSize { .. }
                | P::FileTooLarge { .. }
                | P::UnsupportedPixels { .. }
                | P::NotRgb { .. } => Self::input(message),
                P::BatchSizeMismatch { .. } => {
                    Self::input(message).with_hint("pass --batch-size 1 to take the images one at a time")
                }
                P::EmptyPrompts | P::PromptTooLong { .. } => Self::usage(message),
                P::Nn(e) => e.into(),
                P::UnsupportedConfig { ref key, .. } if key == "size" => {
                    Self::new(Exit::Model, message).with_hint(
                        "fix the processor config, or pass --max-image-pixels with a larger number to allow it",
                    )
                }
                P::UnsupportedConfig { .. } | P::BadConfig { .. } => Self::new(Exit::Model, message)
                    .with_hint("the model's processor config cannot be used: fix it or download the model again"),
                _ => Self::new(Exit::Model, message).with_hint(
                    "the model folder needs its processor files (tokenizer.json, preprocessor_config.json, ...)",
                ),
            },
            E::ImageTokenInPrompt { token, .. } => Self::usage(format!(
                "the question or prompt contains `{token}`, the model's image placeholder; blip2 puts the image \
                 before the text itself"
            ))
            .with_hint(format!("remove `{token}` from the text")),
            E::TooLong { what: "text", .. } => {
                Self::usage(message).with_hint("shorten the --text (or the line of --texts)")
            }
            E::TooLong { .. } => {
                Self::usage(message).with_hint("shorten the prompt or question")
            }
            E::EmptyText { .. } | E::BadInput { .. } => Self::usage(message),
            _ => Self::new(Exit::Failure, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/cli.md's table of exit codes lists exactly these codes, in order, with the names used here.
    #[test]
    fn the_exit_codes_are_documented() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/cli.md"))
                .expect("docs/cli.md");
        let table: Vec<(u8, String)> = doc
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let code = cells.get(1)?.parse::<u8>().ok()?;
                Some((code, cells.get(2)?.trim_matches('`').to_string()))
            })
            .collect();
        let want: Vec<(u8, String)> = Exit::ALL
            .iter()
            .map(|e| (e.code(), format!("{e:?}").to_lowercase()))
            .collect();
        assert_eq!(table, want, "docs/cli.md's exit code table");
    }
}
