//! Project tasks for blip2. `cargo xtask <task>`:
//!
//! - `fixtures`: regenerate `fixtures/` with the reference implementation (HF transformers), in a venv made
//!   (once) from the pinned `scripts/requirements.txt`;
//! - `fixtures --check`: generate twice in temporary directories and check that both generations are identical
//!   bit for bit and equal the committed `fixtures/`; then re-save the BLIP-2 fixtures with blip2's own writer
//!   (`examples/resave.rs`) and check that transformers loads them to the same parameters and logits.
//!
//! - `bench vision` / `qformer` / `opt` / `t5` / `caption`: the criterion bench (benches/vision.rs, benches/qformer.rs), then
//!   transformers on the same config (scripts/bench_vision.py, scripts/bench_qformer.py; 2 threads) in the same
//!   run; prints both and their ratio as a markdown table for docs/performance.md (also written to
//!   `target/bench/<name>.md`).
//!
//! - `fuzz [TARGET...] [--time S] [--runs N] [--jobs J]`: build the fuzz targets of `fuzz/` (libFuzzer, stable
//!   Rust) and run each for S seconds (default 30) or N executions; see `fuzz.rs` and docs/reliability.md.
//!
//! The venv lives in `.venv-fixtures/` (or `$BLIP2_FIXTURES_VENV`) and is rebuilt when the requirements change.
//! It needs network access to PyPI the first time (about 6 GB: torch with its CUDA libraries).

// A command-line tool: printing is its job (the print lints are for the library crates).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

mod fuzz;

const USAGE: &str = "usage: cargo xtask fixtures [--check]

  fixtures          regenerate fixtures/ with scripts/make_fixtures.py
  fixtures --check  generate twice; check determinism and that fixtures/ equals a fresh generation; check
                    that transformers loads the BLIP-2 fixtures as blip2 re-saves them
  bench vision      ViT-g bench (criterion) and transformers on the same config, with the ratio
  bench qformer     the same for the Q-Former
  bench opt         the same for OPT-2.7b: a 32-token prefill and one decode step
  bench t5          the same for Flan-T5-XL: one decode step
  bench caption     the same end to end: BLIP-2 OPT-2.7b captioning, 20 new tokens (greedy, 5 beams)
  fuzz [TARGET...] [--time S] [--runs N] [--jobs J]
                    build the fuzz targets (fuzz/, libFuzzer) and run each for S seconds (default 30) or N
                    executions, J at a time; fails on any crash, hang (> 10 s) or allocation past 2 GiB

environment: BLIP2_FIXTURES_VENV (venv directory, default .venv-fixtures), PYTHON (default python3),
BLIP2_BENCH_LAYERS / BLIP2_BENCH_BATCHES / BLIP2_BENCH_DTYPES (bench size, for quick runs),
BLIP2_BENCH_ROUNDS (run blip2 and transformers this many times in turn; median ratio and each round's),
BLIP2_BENCH_INT8_GROUP (outputs per int8 scale on blip2's side, default 128)";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["fixtures"] => fixtures(false),
        ["fixtures", "--check"] => fixtures(true),
        ["bench", "vision"] => bench("vision", "vit_g", "ViT-g, 224 px"),
        ["bench", "opt"] => bench("opt", "opt", "OPT-2.7b (BLIP-2 sizes), batch 1"),
        ["bench", "t5"] => bench("t5", "t5", "Flan-T5-XL (BLIP-2 sizes), batch 1"),
        ["bench", "caption"] => bench(
            "caption",
            "caption",
            "BLIP-2 OPT-2.7b captioning, 20 new tokens, 1 image",
        ),
        ["bench", "qformer"] => bench(
            "qformer",
            "qformer",
            "Q-Former, 32 queries on 257 image tokens",
        ),
        ["fuzz", ..] => fuzz::fuzz(&root(), &args[1..]),
        ["help" | "--help" | "-h"] | [] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => bail!("unknown task {args:?}\n\n{USAGE}"),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Makes (or reuses) the venv with the pinned reference implementation; returns its python.
fn venv(root: &Path) -> Result<PathBuf> {
    let dir = std::env::var_os("BLIP2_FIXTURES_VENV")
        .map_or_else(|| root.join(".venv-fixtures"), PathBuf::from);
    let requirements = root.join("scripts/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("cannot read {}", requirements.display()))?;
    let stamp = dir.join("blip2-requirements.txt");
    let python = dir.join("bin/python");
    if python.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str())
    {
        return Ok(python);
    }
    eprintln!(
        "making the reference venv in {} (pinned: scripts/requirements.txt)",
        dir.display()
    );
    let base = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    run(Command::new(&base)
        .args(["-m", "venv", "--clear"])
        .arg(&dir))?;
    run(Command::new(&python).args(["-m", "pip", "install", "--quiet", "--upgrade", "pip"]))?;
    run(Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "-r"])
        .arg(&requirements))?;
    std::fs::write(&stamp, wanted).with_context(|| format!("cannot write {}", stamp.display()))?;
    Ok(python)
}

fn fixtures(check: bool) -> Result<()> {
    let root = root();
    let python = venv(&root)?;
    let mut cmd = Command::new(&python);
    cmd.current_dir(&root)
        .arg("scripts/make_fixtures.py")
        .args(["--out", "fixtures"]);
    if check {
        cmd.arg("--check");
    }
    run(&mut cmd)?;
    if check {
        check_resaved(&root, &python)?;
    }
    Ok(())
}

/// The BLIP-2 fixtures re-saved by blip2 (`examples/resave.rs`, `save_weights`) load in transformers to the
/// same parameters and logits (`scripts/check_resaved.py`).
fn check_resaved(root: &Path, python: &Path) -> Result<()> {
    let out = root.join("target/resaved");
    let mut pairs = Vec::new();
    for name in ["tiny-opt", "tiny-t5", "tiny-opt-saved", "tiny-t5-saved"] {
        let fixture = root.join("fixtures").join(name);
        let dir = out.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        run(Command::new(env!("CARGO"))
            .current_dir(root)
            .args(["run", "--quiet", "-p", "blip2", "--example", "resave", "--"])
            .arg(&fixture)
            .arg(&dir))?;
        pairs.push(dir);
        pairs.push(fixture);
    }
    run(Command::new(python)
        .current_dir(root)
        .arg("scripts/check_resaved.py")
        .args(&pairs))
}

/// The criterion bench `name` (criterion group `group`), then `scripts/bench_<name>.py`, then a table of both.
/// With `BLIP2_BENCH_ROUNDS=N` (default 1) the pair runs N times, one after the other, and the table gives the
/// median over the rounds of each side and of the per-round ratios, with every round's ratio: on a machine
/// whose speed drifts over minutes (a shared VM), a ratio of two runs made minutes apart says little alone.
fn bench(name: &str, group: &str, what: &str) -> Result<()> {
    let root = root();
    let python = venv(&root)?;
    let rounds: usize = match std::env::var("BLIP2_BENCH_ROUNDS") {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .with_context(|| format!("BLIP2_BENCH_ROUNDS={v:?} is not a positive number"))?,
        Err(_) => 1,
    };
    let script = format!("scripts/bench_{name}.py");
    // Case id -> (ours, theirs) seconds, one entry per round, in the order torch lists the cases.
    let mut cases: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    // What the transformers side says of itself (versions, threads, the read probe), one per round.
    let mut metas = Vec::new();
    for round in 0..rounds {
        if rounds > 1 {
            eprintln!("bench {name}: round {} of {rounds}", round + 1);
        }
        run(Command::new(env!("CARGO")).current_dir(&root).args([
            "bench",
            "-p",
            "blip2-benches",
            "--bench",
            name,
        ]))?;
        let out = Command::new(&python)
            .current_dir(&root)
            .arg(&script)
            .output()
            .with_context(|| format!("cannot run {script}"))?;
        if !out.status.success() {
            bail!("{script} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        let torch: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("{script} did not print JSON"))?;
        for (id, theirs) in torch.as_object().into_iter().flatten() {
            if id == "meta" {
                metas.push(theirs.clone());
                continue;
            }
            let estimates = root
                .join("target/criterion")
                .join(group)
                .join(id)
                .join("new/estimates.json");
            let ours: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(&estimates)
                    .with_context(|| format!("cannot read {}", estimates.display()))?,
            )?;
            let ours_s = ours["median"]["point_estimate"]
                .as_f64()
                .context("criterion median")?
                / 1e9;
            let theirs_s = theirs["median_s"].as_f64().context("torch median")?;
            match cases.iter_mut().find(|(c, _)| c == id) {
                Some((_, runs)) => runs.push((ours_s, theirs_s)),
                None => cases.push((id.clone(), vec![(ours_s, theirs_s)])),
            }
        }
    }
    let mut table = format!(
        "| {what} | blip2 (flex), median | transformers (torch), median | speed-up |{}\n|---|---|---|---|{}\n",
        if rounds > 1 {
            " speed-up by round |"
        } else {
            ""
        },
        if rounds > 1 { "---|" } else { "" },
    );
    for (id, runs) in &cases {
        let (dtype, case) = id.split_once('/').unwrap_or((id, "?"));
        let case = match case.parse::<usize>() {
            Ok(batch) => format!("batch {batch}"),
            Err(_) => case.to_string(),
        };
        let ours = median(runs.iter().map(|r| r.0));
        let theirs = median(runs.iter().map(|r| r.1));
        let ratios: Vec<f64> = runs.iter().map(|(o, t)| t / o).collect();
        table.push_str(&format!(
            "| {dtype}, {case} | {:.2} ms | {:.2} ms | {:.2}x |",
            ours * 1e3,
            theirs * 1e3,
            median(ratios.iter().copied())
        ));
        if rounds > 1 {
            let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
            table.push_str(&format!(" {} |", each.join(", ")));
        }
        table.push('\n');
    }
    table.push('\n');
    for (round, meta) in metas.iter().enumerate() {
        match metas.len() {
            1 => table.push_str(&format!("transformers side: {meta}\n")),
            _ => table.push_str(&format!("transformers side, round {}: {meta}\n", round + 1)),
        }
    }
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{name}.md")), &table)?;
    println!("\n{table}");
    Ok(())
}

/// The median of some values (the mean of the middle two for an even count).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
