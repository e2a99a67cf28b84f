//! Result rows on disk: JSON lines or CSV, written so that a kill at any moment loses no finished row, and read
//! back by `--resume` to skip what is done.
//!
//! Each image's rows are built in memory and written with one `write_all` on an unbuffered file, and the file is
//! synced after every batch. A kill can still cut the last write short; `--resume` drops such a torn tail (a
//! last line without its newline, or a CSV image with fewer rows than it announced) before appending, so the
//! image is done again, once. Anything else it cannot re-create byte for byte makes it refuse, naming the line:
//! it never deletes a finished row.
//!
//! The file is locked (an exclusive advisory lock) for the whole run, so a second run writing to it is refused
//! instead of interleaving rows. Beside it, `FILE.blip2.json` records the command, the model and the settings
//! that wrote it; `--resume` refuses a run whose settings differ.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::CliError;
use crate::model::Located;
use crate::progress::Reporter;

/// How rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line, one line per image.
    Jsonl,
    /// A header, then rows; an image may have several rows (`sequence` of `sequences`).
    Csv,
}

impl Format {
    /// The format of an output path, by extension.
    ///
    /// # Errors
    /// An extension that is neither JSON lines nor CSV.
    pub fn of(path: &Path) -> Result<Self, CliError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("jsonl" | "ndjson") => Ok(Self::Jsonl),
            Some("csv") => Ok(Self::Csv),
            _ => Err(CliError::usage(format!(
                "cannot tell the format of --output {}: name it .jsonl (JSON lines) or .csv",
                path.display()
            ))),
        }
    }
}

/// One image's result, in both formats.
#[derive(Debug, Clone)]
pub struct Record {
    /// The image, as the row names it (the key `--resume` matches).
    pub image: String,
    /// The JSON line (without newline).
    pub json: String,
    /// The CSV rows (each the header's columns).
    pub csv: Vec<Vec<String>>,
}

/// What a run writing rows is: the command, the model and the settings its rows depend on. Saved beside the
/// output as `FILE.blip2.json`; `--resume` carries on only a file whose record agrees.
#[derive(Debug, Clone)]
pub struct RunRecord {
    fields: Map<String, Value>,
}

impl RunRecord {
    /// A run of `command` with the model `located`.
    pub fn new(command: &str, located: &Located) -> Self {
        Self::of_model(command, &located.name, &located.dir)
    }

    /// A run of `command` with the model named `model`, found in `dir`.
    pub fn of_model(command: &str, model: &str, dir: &Path) -> Self {
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let mut fields = Map::new();
        fields.insert(
            "producer".into(),
            format!("blip2 {}", env!("CARGO_PKG_VERSION")).into(),
        );
        fields.insert("command".into(), command.into());
        fields.insert("model".into(), model.into());
        fields.insert(
            "model_dir".into(),
            dir.to_string_lossy().into_owned().into(),
        );
        Self { fields }
    }

    /// With a setting the rows depend on (compared on `--resume`).
    pub fn with(mut self, key: &str, value: impl serde::Serialize) -> Self {
        let value = serde_json::to_value(value).unwrap_or(Value::Null);
        self.fields.insert(key.into(), value);
        self
    }

    /// Where the record of `output` is kept: `rows.csv` → `rows.csv.blip2.json`.
    pub fn path_for(output: &Path) -> PathBuf {
        let mut name = output.as_os_str().to_owned();
        name.push(".blip2.json");
        PathBuf::from(name)
    }

    /// Writes the record beside `output` (through a temporary file: never half a record).
    fn save(&self, output: &Path) -> Result<(), CliError> {
        let path = Self::path_for(output);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".partial");
        let tmp = PathBuf::from(tmp);
        let mut text = serde_json::to_string_pretty(&Value::Object(Map::from_iter([(
            "blip2".to_string(),
            Value::Object(self.fields.clone()),
        )])))
        .map_err(|e| CliError::output(format!("cannot format {}: {e}", path.display())))?;
        text.push('\n');
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                CliError::write(&path, &e)
            })
    }

    /// Checks that `output`'s record agrees with this run: the same command, model and settings. A file
    /// without a record (written by an older blip2) is resumed with a note.
    fn check(&self, output: &Path, reporter: &Reporter) -> Result<(), CliError> {
        let path = Self::path_for(output);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                reporter.note(format!(
                    "note: {} has no record of the settings that wrote it ({} is missing): resuming without \
                     checking that they are this run's",
                    output.display(),
                    path.display()
                ));
                return Ok(());
            }
            Err(e) => {
                return Err(CliError::output(format!(
                    "cannot read {} to resume {}: {e}",
                    path.display(),
                    output.display()
                )));
            }
        };
        let theirs = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("blip2").and_then(Value::as_object).cloned())
            .ok_or_else(|| {
                CliError::output(format!(
                    "cannot resume {}: {} is not a blip2 run record",
                    output.display(),
                    path.display()
                ))
                .with_hint("delete it to resume without the check, or pass --overwrite")
            })?;
        let differences = self.differences(&theirs);
        if differences.is_empty() {
            return Ok(());
        }
        Err(CliError::usage(format!(
            "cannot resume {}: it was written with other settings: {}",
            output.display(),
            differences.join("; ")
        ))
        .with_hint(format!(
            "resume with the command, --model and options that wrote it (recorded in {}), or pass another \
             --output",
            path.display()
        )))
    }

    /// What differs, as "key: the file's X, this run's Y" (settings known to only one side are not compared).
    fn differences(&self, theirs: &Map<String, Value>) -> Vec<String> {
        let mut out = Vec::new();
        let show = |v: &Value| match v {
            Value::String(s) => format!("\"{s}\""),
            other => other.to_string(),
        };
        for (key, ours) in &self.fields {
            let Some(their) = theirs.get(key) else {
                continue;
            };
            match key.as_str() {
                "producer" | "model_dir" => {}
                // The same model named two ways (a relative path, or a hub id and its folder) is the same.
                "model" => {
                    if their != ours && theirs.get("model_dir") != self.fields.get("model_dir") {
                        out.push(format!(
                            "--model: the file's {}, this run's {}",
                            show(their),
                            show(ours)
                        ));
                    }
                }
                _ => match (their, ours) {
                    (Value::Object(a), Value::Object(b)) => {
                        for (k, mine) in b {
                            if let Some(other) = a.get(k).filter(|o| *o != mine) {
                                out.push(format!(
                                    "{key}.{k}: the file's {}, this run's {}",
                                    show(other),
                                    show(mine)
                                ));
                            }
                        }
                    }
                    _ if their != ours => {
                        out.push(format!(
                            "{key}: the file's {}, this run's {}",
                            show(their),
                            show(ours)
                        ));
                    }
                    _ => {}
                },
            }
        }
        out
    }
}

/// Checks, before any work, that `path` can be created: it names a file, its folder exists, and a file can be
/// made there (a probe beside it, removed at once).
///
/// # Errors
/// A name without a file, a missing folder, a folder that cannot be written.
pub fn check_can_create(path: &Path) -> Result<(), CliError> {
    let Some(name) = path.file_name() else {
        return Err(CliError::usage(format!(
            "--output {} names no file",
            path.display()
        )));
    };
    if path.is_dir() {
        return Err(CliError::output(format!(
            "--output {} is a folder: name a file",
            path.display()
        )));
    }
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !folder.is_dir() {
        return Err(CliError::output(format!(
            "cannot write {}: there is no folder {}",
            path.display(),
            folder.display()
        ))
        .with_hint("create the folder first, or pass another --output"));
    }
    let probe = folder.join(format!(".{}.blip2-probe", name.to_string_lossy()));
    let made = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe);
    match made {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(CliError::write(path, &e)),
    }
}

/// Rows going to a file.
#[derive(Debug)]
pub struct RowWriter {
    file: File,
    path: PathBuf,
    format: Format,
    columns: &'static [&'static str],
    crlf: bool,
}

/// What an existing output already holds.
#[derive(Debug, Default)]
pub struct Done {
    images: HashMap<String, usize>,
    errors: usize,
}

impl Done {
    /// Whether `image` has its rows.
    pub fn contains(&self, image: &str) -> bool {
        self.images.contains_key(image)
    }

    /// Images done.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether no image is done.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Images done whose rows carry an error.
    pub fn errors(&self) -> usize {
        self.errors
    }
}

/// Takes an exclusive advisory lock on `file` for as long as it is open, or says who holds it. A file system
/// without locks is written unlocked.
fn lock(file: &File, path: &Path) -> Result<(), CliError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(CliError::output(format!(
            "{} is being written by another blip2 run (it holds the file's lock)",
            path.display()
        ))
        .with_hint("wait for that run to end (then --resume carries on its file), or pass another --output")),
        Err(std::fs::TryLockError::Error(_)) => Ok(()),
    }
}

/// The lock of a run writing a file in one go at its end (`embed`): held on the temporary file beside it
/// (`.NAME.partial`) from the start of the run, so a second run given the same output is refused instead of
/// writing the same temporary file. Removed at the end if the run left it empty.
#[derive(Debug)]
pub struct PartialLock {
    file: File,
    path: PathBuf,
}

impl PartialLock {
    /// The temporary file a run writes `output` through.
    pub fn partial_path(output: &Path) -> PathBuf {
        let name = output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        output.with_file_name(format!(".{name}.partial"))
    }

    /// Creates and locks `output`'s temporary file.
    ///
    /// # Errors
    /// Another run holds it, or it cannot be created.
    pub fn take(output: &Path) -> Result<Self, CliError> {
        let path = Self::partial_path(output);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| CliError::write(output, &e))?;
        lock(&file, output)?;
        Ok(Self { file, path })
    }
}

impl Drop for PartialLock {
    fn drop(&mut self) {
        // Renamed into place, or removed by a failed write, it is gone; left empty by a run that failed
        // before writing, it is removed (only if it is still this run's file).
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            if let (Ok(ours), Ok(there)) = (self.file.metadata(), std::fs::metadata(&self.path))
                && ours.dev() == there.dev()
                && ours.ino() == there.ino()
                && there.len() == 0
            {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// What to do with an output file that already holds rows (`--resume`, `--overwrite`, neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse it: the user's data is never touched without a flag.
    Refuse,
    /// Keep its finished rows and carry on the run that wrote them.
    Resume,
    /// Replace it.
    Overwrite,
}

impl Existing {
    /// From the two flags, which the command line allows one at a time (`--resume` wins if both are set).
    pub fn from_flags(resume: bool, overwrite: bool) -> Self {
        match (resume, overwrite) {
            (true, _) => Self::Resume,
            (false, true) => Self::Overwrite,
            (false, false) => Self::Refuse,
        }
    }
}

impl RowWriter {
    /// Opens `path` for rows with `columns` (CSV header; the first is `image`, and `sequence`/`sequences`
    /// when present count an image's rows) and locks it for the run. A new file is created; an existing one is
    /// refused unless [`Existing::Overwrite`] (replaced) or [`Existing::Resume`] (its finished rows are kept and
    /// returned, after checking that `run` is the run that wrote them). `run` is saved beside the file.
    ///
    /// # Errors
    /// An existing file without either flag, one another run is writing, an unreadable or foreign one with
    /// `resume`, other settings than the file's (usage), IO errors.
    pub fn open(
        path: &Path,
        columns: &'static [&'static str],
        existing: Existing,
        run: &RunRecord,
        reporter: &Reporter,
    ) -> Result<(Self, Done), CliError> {
        let resume = existing == Existing::Resume;
        let overwrite = existing == Existing::Overwrite;
        let format = Format::of(path)?;
        if path.is_dir() {
            return Err(CliError::output(format!(
                "--output {} is a folder: name a file",
                path.display()
            )));
        }
        let exists_error = || {
            CliError::output(format!("{} already exists", path.display())).with_hint(
                "pass --resume to carry on the job that wrote it, or --overwrite to replace it",
            )
        };
        let nonempty = |file: Option<&File>| match file {
            Some(f) => f.metadata().is_ok_and(|m| m.len() > 0),
            None => std::fs::metadata(path).is_ok_and(|m| m.len() > 0),
        };
        if nonempty(None) && !resume && !overwrite {
            return Err(exists_error());
        }
        // Opened without truncating: nothing changes before the lock is held.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| CliError::write(path, &e))?;
        lock(&file, path)?;
        let mut done = Done::default();
        let mut crlf = false;
        let resuming = resume && nonempty(Some(&file));
        if !resume && !overwrite && nonempty(Some(&file)) {
            return Err(exists_error()); // written by another run since the check above
        }
        if resuming {
            run.check(path, reporter)?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(|e| {
                CliError::output(format!("cannot read {} to resume: {e}", path.display()))
            })?;
            let written = bytes.len();
            let text = resumable_text(bytes).map_err(|e| {
                CliError::output(format!("cannot read {} to resume: {e}", path.display()))
            })?;
            let (keep, found, is_crlf) = scan_resume(&text, path, format, columns)?;
            done = found;
            crlf = is_crlf;
            if keep < written {
                // A torn last write: drop it, its image is done again.
                file.set_len(keep as u64)
                    .map_err(|e| CliError::write(path, &e))?;
            }
        } else {
            file.set_len(0).map_err(|e| CliError::write(path, &e))?;
        }
        file.seek(SeekFrom::End(0))
            .map_err(|e| CliError::write(path, &e))?;
        run.save(path)?;
        let mut writer = Self {
            file,
            path: path.to_path_buf(),
            format,
            columns,
            crlf,
        };
        if format == Format::Csv && !nonempty(Some(&writer.file)) {
            let header = csv_bytes(&[columns.iter().map(|c| c.to_string()).collect()], false)?;
            writer.write_bytes(&header)?;
        }
        Ok((writer, done))
    }

    /// Writes one image's rows in one write.
    ///
    /// # Errors
    /// IO errors.
    pub fn write(&mut self, record: &Record) -> Result<(), CliError> {
        let bytes = match self.format {
            Format::Jsonl => format!("{}\n", record.json).into_bytes(),
            Format::Csv => {
                debug_assert!(record.csv.iter().all(|r| r.len() == self.columns.len()));
                csv_bytes(&record.csv, self.crlf)?
            }
        };
        self.write_bytes(&bytes)
    }

    /// Makes what was written durable (after each batch).
    ///
    /// # Errors
    /// IO errors.
    pub fn sync(&mut self) -> Result<(), CliError> {
        self.file
            .sync_data()
            .map_err(|e| CliError::write(&self.path, &e))
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), CliError> {
        self.file
            .write_all(bytes)
            .map_err(|e| CliError::write(&self.path, &e))
    }
}

/// CSV rows as the writer writes them: fields quoted only where needed, each row ended by `\n` (or `\r\n`).
fn csv_bytes(rows: &[Vec<String>], crlf: bool) -> Result<Vec<u8>, CliError> {
    let terminator = if crlf {
        csv::Terminator::CRLF
    } else {
        csv::Terminator::Any(b'\n')
    };
    let mut w = csv::WriterBuilder::new()
        .terminator(terminator)
        .from_writer(Vec::new());
    for row in rows {
        w.write_record(row)
            .map_err(|e| CliError::output(format!("cannot format a CSV row: {e}")))?;
    }
    w.into_inner()
        .map_err(|e| CliError::output(format!("cannot format a CSV row: {e}")))
}

/// The text of an output file to resume. A write torn inside a multi-byte character leaves invalid UTF-8 in the
/// unterminated last line only: that line is dropped here (it is redone), as a torn ASCII line is by the scan.
/// Invalid UTF-8 before the last newline is a damaged file, an error.
fn resumable_text(bytes: Vec<u8>) -> Result<String, std::str::Utf8Error> {
    match String::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(e) => {
            let error = e.utf8_error();
            let mut bytes = e.into_bytes();
            let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if error.valid_up_to() < complete {
                return Err(error);
            }
            bytes.truncate(complete);
            Ok(String::from_utf8(bytes).expect("valid up to the last newline"))
        }
    }
}

/// What `--resume` keeps of an output file's `text`: the length of its finished rows (a torn last write after
/// them is dropped), the images they hold, and whether its rows end with `\r\n` (CSV). `columns` are the CSV
/// columns of the command. Anything it could not write again byte for byte is refused, naming the line.
///
/// # Errors
/// A file that is not what this command writes, naming `path` and the line.
#[doc(hidden)]
pub fn scan_resume(
    text: &str,
    path: &Path,
    format: Format,
    columns: &[&str],
) -> Result<(usize, Done, bool), CliError> {
    let mut done = Done::default();
    let (keep, crlf) = match format {
        Format::Jsonl => (scan_jsonl(text, path, &mut done)?, false),
        Format::Csv => scan_csv(text, path, columns, &mut done)?,
    };
    Ok((keep, done, crlf))
}

/// Line numbers (from 1) of byte offsets asked for in increasing order: each call counts only the newlines
/// since the last one, so numbering every row of a long file stays linear.
#[derive(Debug, Default)]
struct Lines {
    at: usize,
    newlines: usize,
}

impl Lines {
    /// The line of byte `at` of `text` (`at` not before the previous call's).
    fn at(&mut self, text: &str, at: usize) -> usize {
        let at = at.clamp(self.at, text.len());
        self.newlines += text.as_bytes()[self.at..at]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        self.at = at;
        self.newlines + 1
    }
}

/// Records the images of complete lines; returns the length to keep.
fn scan_jsonl(text: &str, path: &Path, done: &mut Done) -> Result<usize, CliError> {
    let mut keep = 0;
    let mut lines = Lines::default();
    for line in text.split_inclusive('\n') {
        if !line.ends_with('\n') {
            break; // torn
        }
        let trimmed = line.trim();
        if !trimmed.is_empty() {
            let number = lines.at(text, keep);
            let value: serde_json::Value = serde_json::from_str(trimmed)
                .map_err(|e| foreign(path, format!("line {number} is not JSON ({e})")))?;
            let Some(image) = value.get("image").and_then(|v| v.as_str()) else {
                return Err(foreign(
                    path,
                    format!("line {number} has no \"image\" field"),
                ));
            };
            done.images.insert(image.to_string(), 1);
            if value.get("error").is_some_and(|e| !e.is_null()) {
                done.errors += 1;
            }
        }
        keep += line.len();
    }
    Ok(keep)
}

/// Records the images whose rows are all there; returns the length to keep and whether the file's rows end
/// with `\r\n`. Every row must be what the writer makes of its fields, except a torn last write.
fn scan_csv(
    text: &str,
    path: &Path,
    columns: &[&str],
    done: &mut Done,
) -> Result<(usize, bool), CliError> {
    let header = csv_bytes(&[columns.iter().map(|c| c.to_string()).collect()], false)?;
    if text.len() < header.len() && header.starts_with(text.as_bytes()) {
        return Ok((0, false)); // a torn header: start again
    }
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let found: Vec<String> = reader
        .headers()
        .map_err(|e| foreign(path, format!("line 1: {e}")))?
        .iter()
        .map(str::to_string)
        .collect();
    if found != columns {
        return Err(foreign(
            path,
            format!("its columns (line 1) are {found:?}, this command writes {columns:?}"),
        ));
    }
    let index = |name: &str| columns.iter().position(|c| *c == name);
    let (seq, seqs, err) = (index("sequence"), index("sequences"), index("error"));
    // The reader stops after the `\r` of a `\r\n` line end; the `\n` belongs to the line it ends.
    let line_end = |at: usize| {
        if text[..at].ends_with('\r') && text[at..].starts_with('\n') {
            at + 1
        } else {
            at
        }
    };
    let header_end = line_end(reader.position().byte() as usize);
    // A file saved with Windows line ends is read, and carried on, with them.
    let crlf = text[..header_end].ends_with("\r\n");
    // (image, rows so far, rows announced, end of its last row, an error, line of its first row)
    let mut groups: Vec<(String, usize, usize, usize, bool, usize)> = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut start = header_end;
    let mut lines = Lines::default();
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                return Err(foreign(
                    path,
                    format!("line {}: {e}", lines.at(text, start)),
                ));
            }
        }
        let end = line_end(reader.position().byte() as usize);
        let line = lines.at(text, start);
        // A complete row is exactly what the writer makes of its fields.
        let fields: Vec<String> = record.iter().map(str::to_string).collect();
        if record.len() != columns.len()
            || csv_bytes(&[fields], crlf)? != text.as_bytes()[start..end]
        {
            // Only the last write may be cut short: it ends without its line end, or inside a quoted field.
            let tail = &text[start..];
            let torn =
                end == text.len() && (!tail.ends_with('\n') || tail.matches('"').count() % 2 == 1);
            if torn {
                break;
            }
            return Err(foreign(
                path,
                format!(
                    "line {line} is not a row as blip2 writes it (its fields, quoting or line end differ), so it \
                     could not be written again the same"
                ),
            ));
        }
        start = end;
        let image = record[0].to_string();
        let announced = seqs
            .and_then(|i| record[i].parse::<usize>().ok())
            .unwrap_or(1)
            .max(1);
        let number = seq
            .and_then(|i| record[i].parse::<usize>().ok())
            .unwrap_or(1);
        let error = err.is_some_and(|i| !record[i].is_empty());
        match groups.last_mut() {
            Some(g) if g.0 == image && number > 1 => {
                g.1 += 1;
                g.3 = end;
            }
            _ => groups.push((image, 1, announced, end, error, line)),
        }
    }
    let mut keep = header_end;
    let last = groups.len().saturating_sub(1);
    for (i, (image, rows, announced, end, error, line)) in groups.into_iter().enumerate() {
        if rows != announced {
            if i == last && rows < announced {
                break; // the last image cut between its rows: done again
            }
            return Err(foreign(
                path,
                format!(
                    "line {line}: {image} has {rows} rows where its `sequences` column says {announced}"
                ),
            ));
        }
        done.images.insert(image, rows);
        done.errors += usize::from(error);
        keep = end;
    }
    Ok((keep, crlf))
}

fn foreign(path: &Path, reason: String) -> CliError {
    CliError::output(format!("cannot resume from {}: {reason}", path.display())).with_hint(
        "--resume continues a file this command wrote, unedited; pass another --output, or --overwrite",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_torn_inside_a_character_is_dropped_like_any_torn_line() {
        // "é" is two bytes; the kill came after the first.
        let torn = b"{\"a\":1}\n{\"text\":\"caf\xc3".to_vec();
        assert_eq!(super::resumable_text(torn).unwrap(), "{\"a\":1}\n");
        // Invalid UTF-8 in a finished line is damage, not a torn write.
        assert!(super::resumable_text(b"caf\xc3\nnext\n".to_vec()).is_err());
        assert_eq!(super::resumable_text(b"ok\n".to_vec()).unwrap(), "ok\n");
    }

    const COLUMNS: &[&str] = &["image", "sequence", "sequences", "text"];

    fn open(path: &Path, resume: bool, overwrite: bool) -> Result<(RowWriter, Done), CliError> {
        let run = RunRecord::of_model("caption", "m", Path::new("m"));
        let existing = Existing::from_flags(resume, overwrite);
        RowWriter::open(path, COLUMNS, existing, &run, &Reporter::new(true))
    }

    fn record(image: &str, n: usize) -> Record {
        Record {
            image: image.into(),
            json: format!("{{\"image\":\"{image}\",\"text\":\"a\\nb\"}}"),
            csv: (1..=n)
                .map(|i| {
                    vec![
                        image.into(),
                        i.to_string(),
                        n.to_string(),
                        format!("line\n{i}"),
                    ]
                })
                .collect(),
        }
    }

    #[test]
    fn resume_keeps_finished_rows_and_drops_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["rows.jsonl", "rows.csv"] {
            let path = dir.path().join(name);
            let (mut w, done) = open(&path, false, false).unwrap();
            assert_eq!(done.len(), 0);
            w.write(&record("a.png", 2)).unwrap();
            w.write(&record("b.png", 2)).unwrap();
            drop(w);
            let full = std::fs::read(&path).unwrap();
            // Every cut of the last image's bytes keeps a and drops b.
            let a_end = {
                let (mut w, _) = open(&dir.path().join(format!("a.{name}")), false, false).unwrap();
                w.write(&record("a.png", 2)).unwrap();
                std::fs::metadata(dir.path().join(format!("a.{name}")))
                    .unwrap()
                    .len() as usize
            };
            for cut in a_end..full.len() {
                std::fs::write(&path, &full[..cut]).unwrap();
                let (_, done) = open(&path, true, false).unwrap();
                assert!(done.contains("a.png"), "{name} cut at {cut}");
                assert!(!done.contains("b.png"), "{name} cut at {cut}");
                assert_eq!(
                    std::fs::read(&path).unwrap(),
                    full[..a_end],
                    "{name} cut at {cut}"
                );
            }
            std::fs::write(&path, &full).unwrap();
            let (_, done) = open(&path, true, false).unwrap();
            assert_eq!(done.len(), 2);
            let err = open(&path, false, false).unwrap_err();
            assert!(err.message.contains("already exists"), "{err}");
            let (_, done) = open(&path, false, true).unwrap();
            assert_eq!(done.len(), 0);
        }
        let err = open(&dir.path().join("x.txt"), false, false).unwrap_err();
        assert!(err.message.contains(".jsonl"), "{err}");
        let path = dir.path().join("other.csv");
        std::fs::write(&path, "a,b\n1,2\n").unwrap();
        let err = open(&path, true, false).unwrap_err();
        assert!(err.message.contains("cannot resume"), "{err}");
    }
}
