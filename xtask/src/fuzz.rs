//! `cargo xtask fuzz [TARGET...] [--time S] [--runs N] [--jobs J]`: builds the fuzz targets of `fuzz/` with
//! libFuzzer's coverage instrumentation and runs each one, then prints a table (executions, corpus, findings).
//!
//! The instrumentation is what `cargo fuzz build --sanitizer none` asks of rustc, and needs no nightly:
//! `-Cpasses=sancov-module` with the sanitizer-coverage options (8-bit counters, PC table, comparison tracing).
//! The targets are built for the host triple named explicitly, so build scripts and proc macros are not
//! instrumented. Each target runs with a 10 s per-input timeout (a hang is a finding), a 2 GiB RSS limit, and
//! the targets' own allocator bound (2 GiB of live Rust allocations; `blip2_fuzz::ALLOC_LIMIT`).
//!
//! Seeds come from the fixtures (`fuzz/src/seeds.rs`, written to `fuzz/seeds/` each run); what libFuzzer
//! learns stays in `fuzz/corpus/<target>/`; a crashing input is written to `fuzz/artifacts/<target>/` and the
//! log to `fuzz/logs/<target>.log`. A finding makes the task fail after every target has run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Every target, in the order they run (each is a binary in fuzz/Cargo.toml and a function in fuzz/src/lib.rs).
pub const TARGETS: [&str; 13] = [
    "image",
    "safetensors",
    "shard_index",
    "config_blip2",
    "config_vision",
    "config_qformer",
    "config_opt",
    "config_t5",
    "config_generation",
    "config_processor",
    "config_tokenizer",
    "text",
    "resume",
];

const FLAGS: &str = "--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares";

/// What one target's run gave.
#[derive(Debug, Default)]
struct Outcome {
    target: String,
    executions: u64,
    seconds: f64,
    corpus: u64,
    coverage: u64,
    finding: Option<String>,
}

/// Options of the task.
#[derive(Debug)]
struct Options {
    targets: Vec<String>,
    time: u64,
    runs: Option<u64>,
    jobs: usize,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options {
        targets: vec![],
        time: 30,
        runs: None,
        jobs: 1,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| -> Result<u64> {
            let v = it.next().with_context(|| format!("{flag} needs a value"))?;
            v.parse()
                .with_context(|| format!("{flag} takes a whole number, not {v:?}"))
        };
        match arg.as_str() {
            "--time" => options.time = value("--time")?,
            "--runs" => options.runs = Some(value("--runs")?),
            "--jobs" => options.jobs = value("--jobs")?.max(1) as usize,
            t if TARGETS.contains(&t) => options.targets.push(t.to_string()),
            other => bail!(
                "unknown fuzz target or option {other:?}; targets: {}",
                TARGETS.join(", ")
            ),
        }
    }
    if options.targets.is_empty() {
        options.targets = TARGETS.iter().map(|t| t.to_string()).collect();
    }
    Ok(options)
}

fn host_triple() -> Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("cannot run rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .context("rustc -vV names no host")
}

/// Builds the targets; returns the folder holding the binaries.
pub fn build(root: &Path) -> Result<PathBuf> {
    let triple = host_triple()?;
    let fuzz = root.join("fuzz");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(&fuzz)
        .env("RUSTFLAGS", FLAGS)
        .env("CARGO_TARGET_DIR", fuzz.join("target"))
        .args(["build", "--release", "--bins", "--target", &triple]);
    // fuzz/Cargo.lock is its own (fuzz/ is a workspace of its own): CI builds exactly it; a local run updates it
    // when a crate gained a dependency (commit the change).
    if std::env::var_os("CI").is_some() {
        cmd.arg("--locked");
    }
    super::run(&mut cmd).context(
        "building the fuzz targets failed; if fuzz/Cargo.lock is out of date, run `cargo xtask fuzz` outside CI \
         once (it updates the lock) and commit it",
    )?;
    Ok(fuzz.join("target").join(triple).join("release"))
}

/// The task.
pub fn fuzz(root: &Path, args: &[String]) -> Result<()> {
    let options = parse(args)?;
    let bin = build(root)?;
    let fuzz = root.join("fuzz");
    let seeds = fuzz.join("seeds");
    if seeds.exists() {
        std::fs::remove_dir_all(&seeds)
            .with_context(|| format!("cannot remove {}", seeds.display()))?;
    }
    // Any target writes every target's seeds when asked (`blip2_fuzz::init`).
    super::run(Command::new(bin.join(TARGETS[0])).env("BLIP2_FUZZ_SEEDS", &seeds))?;

    let queue = Mutex::new(options.targets.clone().into_iter());
    let outcomes = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..options.jobs.min(options.targets.len()) {
            scope.spawn(|| {
                loop {
                    let Some(target) = queue.lock().expect("queue").next() else {
                        break;
                    };
                    let outcome =
                        run_target(&fuzz, &bin, &target, &options).unwrap_or_else(|e| Outcome {
                            target: target.clone(),
                            finding: Some(format!("could not run: {e:#}")),
                            ..Outcome::default()
                        });
                    eprintln!(
                        "fuzz {target}: {} executions in {:.0} s, corpus {}, {}",
                        outcome.executions,
                        outcome.seconds,
                        outcome.corpus,
                        outcome.finding.as_deref().unwrap_or("no finding")
                    );
                    outcomes.lock().expect("outcomes").push(outcome);
                }
            });
        }
    });
    let mut outcomes = outcomes.into_inner().expect("outcomes");
    outcomes.sort_by_key(|o| TARGETS.iter().position(|t| *t == o.target));

    let mut table = String::from(
        "| target | executions | seconds | exec/s | corpus | coverage (features) | result |\n|---|---|---|---|---|---|---|\n",
    );
    for o in &outcomes {
        table.push_str(&format!(
            "| `{}` | {} | {:.0} | {:.0} | {} | {} | {} |\n",
            o.target,
            o.executions,
            o.seconds,
            o.executions as f64 / o.seconds.max(1e-9),
            o.corpus,
            o.coverage,
            o.finding.as_deref().unwrap_or("0 crashes, 0 hangs")
        ));
    }
    println!("\n{table}");
    let summary = fuzz.join("target/summary.md");
    std::fs::write(&summary, &table)
        .with_context(|| format!("cannot write {}", summary.display()))?;
    let found: Vec<_> = outcomes.iter().filter(|o| o.finding.is_some()).collect();
    if !found.is_empty() {
        bail!(
            "{} target(s) found something: {} (inputs in fuzz/artifacts/, logs in fuzz/logs/)",
            found.len(),
            found
                .iter()
                .map(|o| o.target.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

fn run_target(fuzz: &Path, bin: &Path, target: &str, options: &Options) -> Result<Outcome> {
    let corpus = fuzz.join("corpus").join(target);
    let artifacts = fuzz.join("artifacts").join(target);
    let logs = fuzz.join("logs");
    for dir in [&corpus, &artifacts, &logs] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let log = logs.join(format!("{target}.log"));
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut cmd = Command::new(bin.join(target));
    cmd.arg(format!("-max_total_time={}", options.time))
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(&corpus)
        .arg(fuzz.join("seeds").join(target))
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    if let Some(runs) = options.runs {
        cmd.arg(format!("-runs={runs}"));
    }
    let start = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("cannot start fuzz target {target}"))?;
    let seconds = start.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let stat = |name: &str| {
        text.lines()
            .rev()
            .find_map(|l| {
                l.strip_prefix(name)
                    .map(|v| v.trim().parse::<u64>().unwrap_or(0))
            })
            .unwrap_or(0)
    };
    let last_number = |key: &str| {
        text.lines()
            .rev()
            .find_map(|l| {
                let rest = &l[l.find(key)? + key.len()..];
                rest.split(|c: char| !c.is_ascii_digit())
                    .find(|s| !s.is_empty())?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    let finding = (!status.success()).then(|| {
        let artifact = text
            .lines()
            .find_map(|l| l.split("Test unit written to ").nth(1))
            .unwrap_or("no input saved");
        let kind = text
            .lines()
            .find(|l| {
                l.contains("==ERROR:") || l.contains("panicked at") || l.contains("ALLOC_LIMIT")
            })
            .unwrap_or("failed");
        format!(
            "FOUND ({status}): {kind}; input {artifact}; log {}",
            log.display()
        )
    });
    Ok(Outcome {
        target: target.to_string(),
        executions: stat("stat::number_of_executed_units:"),
        seconds,
        corpus: last_number(" corp: "),
        coverage: last_number(" ft: "),
        finding,
    })
}
