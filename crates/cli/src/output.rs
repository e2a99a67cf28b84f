//! Result rows on disk: JSON lines or CSV, written so that a kill at any moment loses no finished row, and read
//! back by `--resume` to skip what is done.
//!
//! Each image's rows are built in memory and written with one `write_all` on an unbuffered file, and the file is
//! synced after every batch. A kill can still cut the last write short; `--resume` drops such a torn tail (a
//! last line without its newline, or a CSV image with fewer rows than it announced) before appending, so the
//! image is done again, once.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::CliError;

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

/// Rows going to a file.
#[derive(Debug)]
pub struct RowWriter {
    file: File,
    path: PathBuf,
    format: Format,
    columns: &'static [&'static str],
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

    /// Images done whose rows carry an error.
    pub fn errors(&self) -> usize {
        self.errors
    }
}

impl RowWriter {
    /// Opens `path` for rows with `columns` (CSV header; the first is `image`, and `sequence`/`sequences`
    /// when present count an image's rows). A new file is created; an existing one is refused unless
    /// `overwrite` (replaced) or `resume` (its finished rows are kept and returned).
    ///
    /// # Errors
    /// An existing file without either flag, an unreadable or foreign one with `resume`, IO errors.
    pub fn open(
        path: &Path,
        columns: &'static [&'static str],
        resume: bool,
        overwrite: bool,
    ) -> Result<(Self, Done), CliError> {
        let format = Format::of(path)?;
        let exists = path.exists();
        if exists && path.is_dir() {
            return Err(CliError::output(format!(
                "--output {} is a folder: name a file",
                path.display()
            )));
        }
        let nonempty = exists && std::fs::metadata(path).is_ok_and(|m| m.len() > 0);
        if nonempty && !resume && !overwrite {
            return Err(
                CliError::output(format!("{} already exists", path.display())).with_hint(
                    "pass --resume to carry on the job that wrote it, or --overwrite to replace it",
                ),
            );
        }
        let mut done = Done::default();
        let file = if resume && nonempty {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| CliError::write(path, &e))?;
            let mut text = String::new();
            file.read_to_string(&mut text).map_err(|e| {
                CliError::output(format!("cannot read {} to resume: {e}", path.display()))
            })?;
            let keep = match format {
                Format::Jsonl => scan_jsonl(&text, path, &mut done)?,
                Format::Csv => scan_csv(&text, path, columns, &mut done)?,
            };
            if keep < text.len() {
                // A torn last write: drop it, its image is done again.
                file.set_len(keep as u64)
                    .map_err(|e| CliError::write(path, &e))?;
            }
            file.seek(SeekFrom::End(0))
                .map_err(|e| CliError::write(path, &e))?;
            file
        } else {
            File::create(path).map_err(|e| CliError::write(path, &e))?
        };
        let mut writer = Self {
            file,
            path: path.to_path_buf(),
            format,
            columns,
        };
        let fresh = !(resume && nonempty) || writer.file.metadata().is_ok_and(|m| m.len() == 0);
        if format == Format::Csv && fresh {
            let header = csv_bytes(&[columns.iter().map(|c| c.to_string()).collect()])?;
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
                csv_bytes(&record.csv)?
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

fn csv_bytes(rows: &[Vec<String>]) -> Result<Vec<u8>, CliError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for row in rows {
        w.write_record(row)
            .map_err(|e| CliError::output(format!("cannot format a CSV row: {e}")))?;
    }
    w.into_inner()
        .map_err(|e| CliError::output(format!("cannot format a CSV row: {e}")))
}

/// Records the images of complete lines; returns the length to keep.
fn scan_jsonl(text: &str, path: &Path, done: &mut Done) -> Result<usize, CliError> {
    let mut keep = 0;
    for line in text.split_inclusive('\n') {
        if !line.ends_with('\n') {
            break; // torn
        }
        let trimmed = line.trim();
        if !trimmed.is_empty() {
            let value: serde_json::Value = serde_json::from_str(trimmed).map_err(|e| {
                foreign(
                    path,
                    format!(
                        "line {} is not JSON ({e})",
                        text[..keep].lines().count() + 1
                    ),
                )
            })?;
            let Some(image) = value.get("image").and_then(|v| v.as_str()) else {
                return Err(foreign(path, "a line has no \"image\" field".into()));
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

/// Records the images whose rows are all there; returns the length to keep.
fn scan_csv(text: &str, path: &Path, columns: &[&str], done: &mut Done) -> Result<usize, CliError> {
    let header = csv_bytes(&[columns.iter().map(|c| c.to_string()).collect()])?;
    if text.len() < header.len() && header.starts_with(text.as_bytes()) {
        return Ok(0); // a torn header: start again
    }
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| foreign(path, e.to_string()))?
        .iter()
        .map(str::to_string)
        .collect();
    if header != columns {
        return Err(foreign(
            path,
            format!("its columns are {header:?}, this command writes {columns:?}"),
        ));
    }
    let index = |name: &str| columns.iter().position(|c| *c == name);
    let (seq, seqs, err) = (index("sequence"), index("sequences"), index("error"));
    let header_end = reader.position().byte() as usize;
    // (image, rows so far, rows announced, end of its last row, an error)
    let mut groups: Vec<(String, usize, usize, usize, bool)> = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut start = header_end;
    while let Ok(true) = reader.read_record(&mut record) {
        let end = reader.position().byte() as usize;
        // A complete row is exactly what the writer makes of its fields; a cut one (even one cut right after
        // a newline inside a quoted field) is not.
        let fields: Vec<String> = record.iter().map(str::to_string).collect();
        if record.len() != columns.len() || csv_bytes(&[fields])? != text.as_bytes()[start..end] {
            break; // torn
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
            _ => groups.push((image, 1, announced, end, error)),
        }
    }
    let mut keep = header_end;
    for (image, rows, announced, end, error) in groups {
        if rows < announced {
            break; // an image cut between its rows: done again
        }
        done.images.insert(image, rows);
        done.errors += usize::from(error);
        keep = end;
    }
    Ok(keep)
}

fn foreign(path: &Path, reason: String) -> CliError {
    CliError::output(format!("cannot resume from {}: {reason}", path.display())).with_hint(
        "--resume continues a file this command wrote; pass another --output, or --overwrite",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: &[&str] = &["image", "sequence", "sequences", "text"];

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
            let (mut w, done) = RowWriter::open(&path, COLUMNS, false, false).unwrap();
            assert_eq!(done.len(), 0);
            w.write(&record("a.png", 2)).unwrap();
            w.write(&record("b.png", 2)).unwrap();
            drop(w);
            let full = std::fs::read(&path).unwrap();
            // Every cut of the last image's bytes keeps a and drops b.
            let a_end = {
                let (mut w, _) =
                    RowWriter::open(&dir.path().join(format!("a.{name}")), COLUMNS, false, false)
                        .unwrap();
                w.write(&record("a.png", 2)).unwrap();
                std::fs::metadata(dir.path().join(format!("a.{name}")))
                    .unwrap()
                    .len() as usize
            };
            for cut in a_end..full.len() {
                std::fs::write(&path, &full[..cut]).unwrap();
                let (_, done) = RowWriter::open(&path, COLUMNS, true, false).unwrap();
                assert!(done.contains("a.png"), "{name} cut at {cut}");
                assert!(!done.contains("b.png"), "{name} cut at {cut}");
                assert_eq!(
                    std::fs::read(&path).unwrap(),
                    full[..a_end],
                    "{name} cut at {cut}"
                );
            }
            std::fs::write(&path, &full).unwrap();
            let (_, done) = RowWriter::open(&path, COLUMNS, true, false).unwrap();
            assert_eq!(done.len(), 2);
            let err = RowWriter::open(&path, COLUMNS, false, false).unwrap_err();
            assert!(err.message.contains("already exists"), "{err}");
            let (_, done) = RowWriter::open(&path, COLUMNS, false, true).unwrap();
            assert_eq!(done.len(), 0);
        }
        let err = RowWriter::open(&dir.path().join("x.txt"), COLUMNS, false, false).unwrap_err();
        assert!(err.message.contains(".jsonl"), "{err}");
        let path = dir.path().join("other.csv");
        std::fs::write(&path, "a,b\n1,2\n").unwrap();
        let err = RowWriter::open(&path, COLUMNS, true, false).unwrap_err();
        assert!(err.message.contains("cannot resume"), "{err}");
    }
}
