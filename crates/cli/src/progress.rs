//! Progress on stderr: model downloads, loading, and long jobs (images/s and ETA). Bars draw only on a
//! terminal and never with `--quiet`; notes and summaries go to stderr unless `--quiet`.

#![allow(clippy::print_stderr)] // this module is the CLI's stderr

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// Where progress and notes go.
#[derive(Debug, Clone)]
pub struct Reporter {
    quiet: bool,
    multi: MultiProgress,
}

impl Reporter {
    /// Progress on stderr, or nothing with `quiet`.
    pub fn new(quiet: bool) -> Self {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        Self {
            quiet,
            multi: MultiProgress::with_draw_target(target),
        }
    }

    /// A line on stderr (above any bar), unless quiet.
    pub fn note(&self, line: impl AsRef<str>) {
        if !self.quiet {
            let line = line.as_ref();
            self.multi.suspend(|| eprintln!("{line}"));
        }
    }

    /// An error line on stderr, printed even when quiet.
    pub fn error(&self, line: impl AsRef<str>) {
        let line = line.as_ref();
        self.multi.suspend(|| eprintln!("{line}"));
    }

    /// Runs `f` with the bars cleared (to print to stdout without tearing them).
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.multi.suspend(f)
    }

    /// A spinner with elapsed time, for loading.
    pub fn spinner(&self, message: String) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .expect("static template")
                .tick_strings(&["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏", "✓"]),
        );
        bar.set_message(message);
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    }

    /// A bar over `len` items of `unit` (e.g. "images"), with the rate and the ETA.
    pub fn bar(&self, len: usize, unit: &'static str) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new(len as u64));
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{bar:30}} {{pos}}/{{len}} {unit} · {{rate}} · ETA {{eta}} {{msg}}"
            ))
            .expect("static template")
            .with_key(
                "rate",
                move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.2} {unit}/s", state.per_sec());
                },
            )
            .progress_chars("█▉▊▋▌▍▎▏ "),
        );
        bar
    }

    /// A download progress hook for the hub: a bar per file with bytes, speed and ETA.
    pub fn download_hook(
        &self,
    ) -> impl Fn(&blip2::hub::DownloadProgress<'_>) + Send + Sync + 'static {
        let multi = self.multi.clone();
        let bars: Arc<Mutex<HashMap<String, ProgressBar>>> = Arc::default();
        move |p: &blip2::hub::DownloadProgress<'_>| {
            let Ok(mut bars) = bars.lock() else {
                return;
            };
            let bar = bars.entry(p.file.to_string()).or_insert_with(|| {
                let bar = multi.add(ProgressBar::new(p.total));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{msg:>24} {bar:30} {bytes}/{total_bytes} · {bytes_per_sec} · ETA {eta}",
                    )
                    .expect("static template")
                    .progress_chars("█▉▊▋▌▍▎▏ "),
                );
                bar.set_message(format!("downloading {}", p.file));
                bar
            });
            bar.set_position(p.downloaded);
            if p.downloaded >= p.total {
                bar.finish_and_clear();
            }
        }
    }
}

/// "1.2 s", "3 min 4 s".
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        format!("{} min {} s", (s / 60.0).floor(), (s % 60.0).round())
    }
}

/// A job's end: "captioned 10 images in 12.3 s (0.81 images/s)".
pub fn summary(verb: &str, count: usize, unit: &str, started: Instant) -> String {
    let elapsed = started.elapsed();
    let rate = count as f64 / elapsed.as_secs_f64().max(1e-9);
    let noun = if count == 1 {
        unit.strip_suffix('s').unwrap_or(unit)
    } else {
        unit
    };
    format!(
        "{verb} {count} {noun} in {} ({rate:.2} {unit}/s)",
        human_duration(elapsed)
    )
}
