//! `blip2`: BLIP-2 from the command line. Captions, answers, chat, features and image-text scores from HF hub
//! checkpoints, on any backend compiled in. See `blip2 --help` and docs/cli.md.

fn main() -> std::process::ExitCode {
    blip2_cli::main()
}
