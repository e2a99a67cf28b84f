//! `caption`, `ask` and `chat`: generation from images, batch by batch, into rows.

#![allow(clippy::print_stdout)] // the CLI's results go to stdout

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use blip2::generation::GenerationConfig;
use blip2::{Blip2, Generated};
use burn::prelude::Backend;
use serde::Serialize;

use crate::Ctx;
use crate::args::{GenerationArgs, Stream};
use crate::error::{CliError, Exit};
use crate::inputs::open_all;
use crate::model::load_blip2;
use crate::output::{Done, Existing, Record, RowWriter, RunRecord};
use crate::progress::{Reporter, summary};

/// CSV columns of `caption`.
pub const CAPTION_COLUMNS: &[&str] = &[
    "image",
    "prompt",
    "sequence",
    "sequences",
    "text",
    "token_ids",
    "score",
    "error",
];
/// CSV columns of `ask`.
pub const ASK_COLUMNS: &[&str] = &[
    "image",
    "question",
    "prompt",
    "sequence",
    "sequences",
    "text",
    "token_ids",
    "score",
    "error",
];

/// What to generate for every image.
#[derive(Debug, Clone)]
pub enum Task {
    /// A caption, continuing `prompt` if given.
    Caption {
        /// The text the caption continues.
        prompt: Option<String>,
    },
    /// An answer to `question`, asked as `prompt` (the template filled in).
    Ask {
        /// The question.
        question: String,
        /// The prompt given to the model.
        prompt: String,
    },
}

impl Task {
    fn prompt(&self) -> Option<&str> {
        match self {
            Self::Caption { prompt } => prompt.as_deref(),
            Self::Ask { prompt, .. } => Some(prompt),
        }
    }

    fn question(&self) -> Option<&str> {
        match self {
            Self::Caption { .. } => None,
            Self::Ask { question, .. } => Some(question),
        }
    }

    fn columns(&self) -> &'static [&'static str] {
        match self {
            Self::Caption { .. } => CAPTION_COLUMNS,
            Self::Ask { .. } => ASK_COLUMNS,
        }
    }

    fn verb(&self) -> &'static str {
        match self {
            Self::Caption { .. } => "captioned",
            Self::Ask { .. } => "answered",
        }
    }
}

/// `ask`'s prompt from `--template` and the question.
///
/// # Errors
/// An empty question, a template without `{}`.
pub fn ask_prompt(template: &str, question: &str) -> Result<String, CliError> {
    if question.trim().is_empty() {
        return Err(CliError::usage("the question is empty"));
    }
    let image = blip2::processor::DEFAULT_IMAGE_TOKEN;
    if question.contains(image) || template.contains(image) {
        let what = if question.contains(image) {
            "the question"
        } else {
            "--template"
        };
        return Err(CliError::usage(format!(
            "{what} contains `{image}`, the model's image placeholder; blip2 puts the image before the text itself"
        ))
        .with_hint(format!("remove `{image}` from it")));
    }
    if !template.contains("{}") {
        return Err(CliError::usage(format!(
            "--template \"{template}\" has no {{}} where the question goes"
        ))
        .with_hint("e.g. --template \"Question: {} Answer:\""));
    }
    Ok(template.replacen("{}", question, 1))
}

/// The generation config: `base` (the model's) with the flags given on the command line.
pub fn generation_config(base: &GenerationConfig, args: &GenerationArgs) -> GenerationConfig {
    let mut c = base.clone();
    if let Some(v) = args.max_new_tokens {
        c.max_new_tokens = Some(v);
        c.max_length = None;
    }
    if let Some(v) = args.min_new_tokens {
        c.min_new_tokens = Some(v);
    }
    if let Some(v) = args.num_beams {
        c.num_beams = v;
    }
    if args.do_sample {
        c.do_sample = true;
    }
    if let Some(v) = args.temperature {
        c.temperature = v;
    }
    if let Some(v) = args.top_k {
        c.top_k = v;
    }
    if let Some(v) = args.top_p {
        c.top_p = v;
    }
    if let Some(v) = args.seed {
        c.seed = Some(v);
    }
    if let Some(v) = args.repetition_penalty {
        c.repetition_penalty = v;
    }
    if let Some(v) = args.no_repeat_ngram_size {
        c.no_repeat_ngram_size = v;
    }
    if let Some(v) = args.num_return_sequences {
        c.num_return_sequences = v;
    }
    if let Some(v) = args.length_penalty {
        c.length_penalty = v;
    }
    c
}

/// Checks the generation flags before the model loads (the model only adds its special tokens).
///
/// # Errors
/// Options that do not fit together, named.
pub fn check_generation_flags(args: &GenerationArgs) -> Result<(), CliError> {
    let config = generation_config(&GenerationConfig::default(), args);
    config.validate().map_err(blip2::Error::from)?;
    Ok(())
}

fn configure<B: Backend>(
    blip2: &mut Blip2<B>,
    args: &GenerationArgs,
    reporter: &Reporter,
) -> Result<GenerationConfig, CliError> {
    let config = generation_config(blip2.generation_config(), args);
    for warning in config.warnings() {
        reporter.note(format!("note: {warning}"));
    }
    blip2.set_generation_config(config.clone())?;
    Ok(config)
}

/// How a row names its image (the key `--resume` matches).
pub fn image_key(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[derive(Serialize)]
struct SequenceRow<'a> {
    text: &'a str,
    token_ids: &'a [u32],
    sequence: &'a [u32],
    score: Option<f32>,
}

impl<'a> From<&'a Generated> for SequenceRow<'a> {
    fn from(g: &'a Generated) -> Self {
        Self {
            text: &g.text,
            token_ids: &g.token_ids,
            sequence: &g.sequence,
            score: g.score,
        }
    }
}

#[derive(Serialize)]
struct Row<'a> {
    image: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    question: Option<&'a str>,
    prompt: Option<&'a str>,
    #[serde(flatten)]
    best: Option<SequenceRow<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequences: Option<Vec<SequenceRow<'a>>>,
    error: Option<&'a str>,
}

fn ids(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
}

fn record(task: &Task, image: &str, result: Result<&[Generated], &str>) -> Record {
    let (best, sequences, error) = match result {
        Ok(seqs) => (
            seqs.first().map(SequenceRow::from),
            (seqs.len() > 1).then(|| seqs.iter().map(SequenceRow::from).collect()),
            None,
        ),
        Err(e) => (None, None, Some(e)),
    };
    let row = Row {
        image,
        question: task.question(),
        prompt: task.prompt(),
        best,
        sequences,
        error,
    };
    let json = serde_json::to_string(&row).expect("rows serialise");
    let lead = |mut cells: Vec<String>| {
        let mut out = vec![image.to_string()];
        if let Some(q) = task.question() {
            out.push(q.to_string());
        }
        out.push(task.prompt().unwrap_or_default().to_string());
        out.append(&mut cells);
        out
    };
    let csv = match result {
        Ok(seqs) => seqs
            .iter()
            .enumerate()
            .map(|(i, g)| {
                lead(vec![
                    (i + 1).to_string(),
                    seqs.len().to_string(),
                    g.text.clone(),
                    ids(&g.token_ids),
                    g.score.map(|s| s.to_string()).unwrap_or_default(),
                    String::new(),
                ])
            })
            .collect(),
        Err(e) => vec![lead(vec![
            "1".into(),
            "1".into(),
            String::new(),
            String::new(),
            String::new(),
            e.to_string(),
        ])],
    };
    Record {
        image: image.to_string(),
        json,
        csv,
    }
}

/// Where rows go: a file, JSON lines on stdout, or text on stdout.
struct Sink<'a> {
    writer: Option<RowWriter>,
    json: bool,
    reporter: &'a Reporter,
    show_names: bool,
}

impl Sink<'_> {
    fn emit(
        &mut self,
        record: &Record,
        result: Result<&[Generated], &str>,
    ) -> Result<(), CliError> {
        if let Some(w) = &mut self.writer {
            return w.write(record);
        }
        if self.json {
            self.reporter.suspend(|| println!("{}", record.json));
            return Ok(());
        }
        let name = &record.image;
        match result {
            Ok(seqs) => self.reporter.suspend(|| {
                for (i, g) in seqs.iter().enumerate() {
                    match (self.show_names, seqs.len() > 1) {
                        (false, false) => println!("{}", g.text),
                        (false, true) => println!("[{}] {}", i + 1, g.text),
                        (true, false) => println!("{name}: {}", g.text),
                        (true, true) => println!("{name} [{}]: {}", i + 1, g.text),
                    }
                }
            }),
            Err(e) => self.reporter.error(format!("{name}: error: {e}")),
        }
        Ok(())
    }
}

/// `caption` and `ask` over `images`.
///
/// # Errors
/// The output, the model, generation. A bad image is a row with an error, not an error.
#[allow(clippy::too_many_arguments)]
pub fn run<B: Backend>(
    ctx: &Ctx,
    images: Vec<PathBuf>,
    task: &Task,
    args: &GenerationArgs,
    stream: Stream,
    device: &B::Device,
) -> Result<Exit, CliError> {
    let (common, located, reporter) = (&ctx.common, &ctx.located, &ctx.reporter);
    let command = match task {
        Task::Caption { .. } => "caption",
        Task::Ask { .. } => "ask",
    };
    let (writer, done) = match &common.output {
        Some(path) => {
            // What the rows depend on, checked by --resume against the file's record.
            let run = RunRecord::new(command, located)
                .with("prompt", task.prompt())
                .with("question", task.question())
                .with(
                    "generation",
                    generation_config(&GenerationConfig::default(), args),
                );
            let existing = Existing::from_flags(common.resume, common.overwrite);
            let (w, done) = RowWriter::open(path, task.columns(), existing, &run, reporter)?;
            (Some(w), done)
        }
        None => (None, Done::default()),
    };
    let total = images.len();
    let todo: Vec<PathBuf> = images
        .into_iter()
        .filter(|p| !done.contains(&image_key(p)))
        .collect();
    if let (Some(path), true) = (&common.output, !done.is_empty()) {
        reporter.note(format!(
            "resuming {}: {} of {total} images done, {} to go",
            path.display(),
            total - todo.len(),
            todo.len()
        ));
    }
    // The exit code speaks for the whole output, rows of earlier runs included.
    let earlier_errors = done.errors();
    if todo.is_empty() {
        reporter.note("nothing to do: every image is in the output already");
        return Ok(if earlier_errors > 0 {
            Exit::Partial
        } else {
            Exit::Ok
        });
    }

    let mut blip2 = load_blip2::<B>(located, common, command, device, reporter)?;
    let config = configure(&mut blip2, args, reporter)?;
    let mut sink = Sink {
        writer,
        json: common.json,
        reporter,
        show_names: total > 1,
    };

    let streamable = todo.len() == 1
        && sink.writer.is_none()
        && !common.json
        && config.num_beams == 1
        && config.num_return_sequences == 1;
    let streaming = streamable
        && match stream {
            Stream::Auto => std::io::stdout().is_terminal(),
            Stream::Always => true,
            Stream::Never => false,
        };
    if stream == Stream::Always && !streamable {
        reporter.note(
            "note: not streaming: streaming needs one image, text output and --num-beams 1 with one sequence",
        );
    }

    let started = Instant::now();
    let bar = (todo.len() > 1).then(|| reporter.bar(todo.len(), "images"));
    let ip = blip2.processor().image_processor().clone();
    let mut failed = 0usize;
    for chunk in todo.chunks(common.batch_size) {
        let (opened, errors) = open_all(&ip, chunk);
        let mut results = Vec::new();
        if !opened.is_empty() {
            let features = blip2.encode_images(&opened)?;
            results = if streaming {
                let mut stdout = std::io::stdout();
                let on_text = |piece: &str| {
                    let _ = stdout.write_all(piece.as_bytes());
                    let _ = stdout.flush();
                };
                let g = match task {
                    Task::Caption { prompt } => {
                        blip2.caption_streaming(&features, prompt.as_deref(), on_text)?
                    }
                    Task::Ask { prompt, .. } => {
                        blip2.generate_streaming(&features, prompt, on_text)?
                    }
                };
                println!();
                vec![g]
            } else {
                match task {
                    Task::Caption { prompt } => blip2.caption(&features, prompt.as_deref())?,
                    Task::Ask { prompt, .. } => {
                        blip2.generate(&features, &vec![prompt.as_str(); opened.len()])?
                    }
                }
            };
        }
        let per_image = config.num_return_sequences;
        let mut next = results.chunks(per_image);
        for (path, error) in chunk.iter().zip(&errors) {
            let key = image_key(path);
            let result = match error {
                Some(e) => {
                    failed += 1;
                    Err(e.as_str())
                }
                None => Ok(next.next().unwrap_or_default()),
            };
            let record = record(task, &key, result);
            if streaming && result.is_ok() {
                continue; // already printed
            }
            sink.emit(&record, result)?;
        }
        if let Some(w) = &mut sink.writer {
            w.sync()?;
        }
        if let Some(bar) = &bar {
            bar.inc(chunk.len() as u64);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    // Images that could not be read are counted apart, not as captioned.
    let mut line = summary(task.verb(), todo.len() - failed, "images", started);
    if failed > 0 {
        line.push_str(&format!(
            "; {failed} could not be read (their rows carry the error)"
        ));
    }
    if let Some(path) = &common.output {
        line.push_str(&format!("; rows in {}", path.display()));
    }
    if earlier_errors > 0 {
        line.push_str(&format!("; {earlier_errors} earlier rows carry an error"));
    }
    reporter.note(line);
    Ok(if failed + earlier_errors > 0 {
        Exit::Partial
    } else {
        Exit::Ok
    })
}

#[derive(Serialize)]
struct Turn<'a> {
    turn: usize,
    question: &'a str,
    answer: &'a str,
    token_ids: &'a [u32],
    sequence: &'a [u32],
}

/// `chat`: questions from stdin, answers on stdout, the image encoded once.
///
/// # Errors
/// The model, the image, reading stdin.
pub fn chat<B: Backend>(
    ctx: &Ctx,
    image: &Path,
    args: &GenerationArgs,
    stream: Stream,
    device: &B::Device,
) -> Result<Exit, CliError> {
    let (common, located, reporter) = (&ctx.common, &ctx.located, &ctx.reporter);
    let mut blip2 = load_blip2::<B>(located, common, "chat", device, reporter)?;
    let config = configure(&mut blip2, args, reporter)?;
    let picture = blip2
        .processor()
        .image_processor()
        .open(image)
        .map_err(blip2::Error::from)?;
    let features = blip2.encode_images(&[picture])?;
    let mut chat = blip2.chat(features)?;

    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let streaming = !common.json
        && config.num_beams == 1
        && match stream {
            Stream::Auto => std::io::stdout().is_terminal(),
            Stream::Always => true,
            Stream::Never => false,
        };
    if interactive {
        reporter.note(format!(
            "chatting about {}: type a question; /clear forgets the earlier turns, /history shows them, /quit ends",
            image.display()
        ));
    }
    let mut failed = 0usize;
    let mut input = stdin.lock();
    let mut turn = 0usize;
    loop {
        if interactive {
            eprint_prompt();
        }
        let line = crate::inputs::read_line(&mut input, crate::inputs::MAX_TEXT_LINE)
            .map_err(|e| CliError::input(format!("cannot read the question: {e}")))?;
        let Some(line) = line else {
            break;
        };
        let question = line.trim();
        match question {
            "" => continue,
            "/quit" | "/exit" | "/q" => break,
            "/clear" => {
                chat.clear();
                reporter.note("(earlier turns forgotten)");
                continue;
            }
            "/history" => {
                for (q, a) in chat.history() {
                    println!("Q: {q}\nA: {a}");
                }
                continue;
            }
            q if q.starts_with('/') => {
                reporter.note(format!(
                    "unknown command {q}: /clear, /history and /quit are the commands"
                ));
                continue;
            }
            _ => {}
        }
        turn += 1;
        let answer = if streaming {
            let mut stdout = std::io::stdout();
            let answer = chat.ask_streaming(question, |piece| {
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            });
            if answer.is_ok() {
                println!();
            }
            answer
        } else {
            chat.ask(question)
        };
        match answer {
            Ok(answer) => {
                if chat.forgotten() > 0 {
                    reporter.note(format!(
                        "(forgot the {} oldest turn(s) so that the question fits the model; /clear forgets them all)",
                        chat.forgotten()
                    ));
                }
                if common.json {
                    let row = Turn {
                        turn,
                        question,
                        answer: &answer.text,
                        token_ids: &answer.token_ids,
                        sequence: &answer.sequence,
                    };
                    println!("{}", serde_json::to_string(&row).expect("rows serialise"));
                } else if !streaming {
                    println!("{}", answer.text);
                }
            }
            Err(e) => {
                failed += 1;
                reporter.error(CliError::from(e).to_string());
            }
        }
    }
    Ok(if failed > 0 { Exit::Partial } else { Exit::Ok })
}

fn eprint_prompt() {
    let mut stderr = std::io::stderr();
    let _ = stderr.write_all(b"> ");
    let _ = stderr.flush();
}
