//! The `blip2` binary end to end on the tiny fixtures: ids and text equal transformers' references, batches with
//! bad images, interrupted jobs resumed, features equal the library's, scores equal transformers' ITM/ITC, errors
//! with their exit codes, and the help texts.

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use blip2::generation::GenerationConfig;
use blip2::{Blip2, Blip2Retrieval};
use blip2_nn::backend::FloatDType;
use blip2_testkit::{Fixture, Flex, Tol, assert_close, fixtures_root};
use burn::tensor::TensorData;
use serde_json::Value;

fn blip2() -> Command {
    let mut cmd = assert_cmd::cargo::cargo_bin_cmd!("blip2");
    // Tests never touch the network or the user's settings.
    cmd.env_remove("BLIP2_MODEL")
        .env_remove("BLIP2_DEVICE")
        .env("HF_HUB_OFFLINE", "1");
    cmd
}

fn model(name: &str) -> String {
    fixtures_root().join(name).display().to_string()
}

fn image(name: &str) -> String {
    fixtures_root()
        .join("images")
        .join(name)
        .display()
        .to_string()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not ids: {v}"))
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

/// Runs and checks the exit code; returns the output.
fn run(cmd: &mut Command, code: i32) -> Output {
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code\nstdout:\n{}\nstderr:\n{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

/// The new tokens of a reference row: after the prompt (`prompt_len` ids), up to eos or padding.
fn new_tokens(row: &[i64], prompt_len: usize, stop: &[i64]) -> Vec<i64> {
    row[prompt_len..]
        .iter()
        .copied()
        .take_while(|t| !stop.contains(t))
        .collect()
}

const MAX_NEW: &str = "8";

/// The question inside a VQA prompt `Question: {q} Answer:`.
fn question_of(prompt: &str) -> &str {
    prompt
        .strip_prefix("Question: ")
        .and_then(|q| q.strip_suffix(" Answer:"))
        .unwrap_or_else(|| panic!("not a VQA prompt: {prompt}"))
}

/// The text transformers decodes for ids (the tiny tokenizers do not mark eos as special, so transformers'
/// decoded rows carry its text).
fn decode(model_name: &str, ids: &[i64]) -> String {
    let processor =
        blip2::processor::Blip2Processor::from_model_dir(fixtures_root().join(model_name)).unwrap();
    processor.decode(ids, true).unwrap()
}

#[test]
fn caption_and_ask_give_transformers_ids_and_text() {
    let fixture = Fixture::open("tiny-opt");
    let (rgb, rgba) = (image("rgb_37x29.png"), image("rgba_31x23.png"));

    // Caption without a prompt: [<image> x 32, bos] -> 8 new tokens.
    let out = run(
        blip2()
            .args([
                "caption",
                "--model",
                &model("tiny-opt"),
                &rgb,
                "--max-new-tokens",
                MAX_NEW,
            ])
            .arg("--json"),
        0,
    );
    let rows = json_lines(&stdout(&out));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["image"], rgb.as_str());
    assert_eq!(
        vec![ids(&rows[0]["sequence"])],
        fixture.id_rows("gen/greedy/noprompt")
    );
    assert_eq!(ids(&rows[0]["token_ids"]).len(), 8);
    assert!(rows[0]["error"].is_null());

    // The same caption as plain text, and streamed: the text of the JSON row.
    for stream in ["never", "always"] {
        let out = run(
            blip2().args([
                "caption",
                "-m",
                &model("tiny-opt"),
                &rgb,
                "--max-new-tokens",
                MAX_NEW,
                "--stream",
                stream,
            ]),
            0,
        );
        assert_eq!(
            stdout(&out),
            format!("{}\n", rows[0]["text"].as_str().unwrap()),
            "{stream}"
        );
    }

    // VQA: "Question: {q} Answer:", greedy and 3 beams.
    let single = fixture.manifest()["prompts"]["single"].as_str().unwrap();
    let question = question_of(single);
    for (beams, key) in [("1", "gen/greedy/single"), ("3", "gen/beam3/single")] {
        let out = run(
            blip2().args([
                "ask",
                "-m",
                &model("tiny-opt"),
                &rgb,
                question,
                "--max-new-tokens",
                MAX_NEW,
                "--num-beams",
                beams,
                "--json",
            ]),
            0,
        );
        let rows = json_lines(&stdout(&out));
        assert_eq!(
            vec![ids(&rows[0]["sequence"])],
            fixture.id_rows(key),
            "{key}"
        );
        assert_eq!(rows[0]["question"], question);
        assert_eq!(rows[0]["prompt"], single);
        assert_eq!(rows[0]["score"].is_null(), beams == "1", "{key}");
    }

    // A batch of two with one prompt: each row's new tokens are transformers' for that image and prompt (the
    // reference batch is left-padded with other prompts; batch invariance is tested in the library).
    let batch = fixture.id_rows("gen/greedy/batch");
    let decoded = &fixture.manifest()["generation"]["decoded_greedy_batch"];
    let prompts = &fixture.manifest()["prompts"]["batch"];
    let out = run(
        blip2().args([
            "caption",
            "-m",
            &model("tiny-opt"),
            &rgb,
            &rgba,
            "--prompt",
            prompts[0].as_str().unwrap(),
            "--max-new-tokens",
            MAX_NEW,
            "--json",
            "--batch-size",
            "2",
        ]),
        0,
    );
    let rows = json_lines(&stdout(&out));
    let stop = [47, 1]; // eos, pad
    let width = batch[0].len() - 8;
    assert_eq!(
        ids(&rows[0]["token_ids"]),
        new_tokens(&batch[0], width, &stop)
    );
    // transformers decodes the whole row: the prompt, the new tokens, and (not special in the tiny tokenizer)
    // the eos token.
    let tail = |row: &[i64]| decode("tiny-opt", &row[width..]);
    let decoded_new = |i: usize| {
        let prompt = prompts[i].as_str().unwrap();
        decoded[i]
            .as_str()
            .unwrap()
            .strip_prefix(prompt)
            .unwrap()
            .to_string()
    };
    assert_eq!(decoded_new(0), tail(&batch[0]));
    assert!(
        tail(&batch[0])
            .trim()
            .starts_with(rows[0]["text"].as_str().unwrap())
    );
    assert_eq!(
        rows[0]["text"],
        decode("tiny-opt", &ids(&rows[0]["token_ids"])).trim()
    );
    // The second image asked the batch's second prompt.
    let out = run(
        blip2().args([
            "ask",
            "-m",
            &model("tiny-opt"),
            &rgba,
            question_of(prompts[1].as_str().unwrap()),
            "--max-new-tokens",
            MAX_NEW,
            "--json",
        ]),
        0,
    );
    let rows = json_lines(&stdout(&out));
    assert_eq!(
        ids(&rows[0]["token_ids"]),
        new_tokens(&batch[1], width, &stop)
    );
    assert_eq!(rows[0]["text"], decoded_new(1).trim());
}

#[test]
fn flan_t5_answers_and_returns_several_beams() {
    let fixture = Fixture::open("tiny-t5");
    let batch = fixture.id_rows("gen/greedy/batch");
    let beams = fixture.id_rows("gen/beam3/batch");
    let gray = image("gray_19x41.png"); // the batch's second image, with the batch's second prompt
    let question =
        question_of(fixture.manifest()["prompts"]["batch"][1].as_str().unwrap()).to_string();
    let out = run(
        blip2().args([
            "ask",
            "-m",
            &model("tiny-t5"),
            &gray,
            &question,
            "--max-new-tokens",
            MAX_NEW,
            "--json",
        ]),
        0,
    );
    let rows = json_lines(&stdout(&out));
    let stop = [1, 0]; // eos, pad
    assert_eq!(ids(&rows[0]["token_ids"]), new_tokens(&batch[1], 1, &stop));
    let out = run(
        blip2().args([
            "ask",
            "-m",
            &model("tiny-t5"),
            &gray,
            &question,
            "--max-new-tokens",
            MAX_NEW,
            "--num-beams",
            "3",
            "--num-return-sequences",
            "2",
            "--json",
        ]),
        0,
    );
    let rows = json_lines(&stdout(&out));
    let sequences = rows[0]["sequences"].as_array().unwrap();
    assert_eq!(sequences.len(), 2);
    assert_eq!(
        ids(&sequences[0]["token_ids"]),
        new_tokens(&beams[1], 1, &stop)
    );
    assert_eq!(sequences[0]["text"], rows[0]["text"]);
    let (s0, s1) = (
        sequences[0]["score"].as_f64().unwrap(),
        sequences[1]["score"].as_f64().unwrap(),
    );
    assert!(s0 >= s1, "beams come best first: {s0} {s1}");
}

/// A folder of 3 images and a corrupt one; returns the folder.
fn folder_with_a_corrupt_image(dir: &Path) -> PathBuf {
    let folder = dir.join("shots");
    std::fs::create_dir_all(folder.join("more")).unwrap();
    for (from, to) in [
        ("rgb_37x29.png", "a.png"),
        ("rgba_31x23.png", "c.png"),
        ("gray_19x41.png", "more/d.png"),
    ] {
        std::fs::copy(image(from), folder.join(to)).unwrap();
    }
    std::fs::write(
        folder.join("b.png"),
        b"\x89PNG\r\n\x1a\nthis is not an image",
    )
    .unwrap();
    std::fs::write(folder.join("notes.txt"), b"not picked up").unwrap();
    folder
}

#[test]
fn a_bad_image_becomes_an_error_row_and_the_job_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let folder = folder_with_a_corrupt_image(dir.path());
    let alone = run(
        blip2().args([
            "caption",
            "-m",
            &model("tiny-opt"),
            &folder.join("a.png").display().to_string(),
            "--max-new-tokens",
            MAX_NEW,
            "--json",
        ]),
        0,
    );
    let alone = json_lines(&stdout(&alone)).remove(0);
    for (name, batch) in [("rows.jsonl", "8"), ("rows.csv", "2")] {
        let output = dir.path().join(name);
        let out = run(
            blip2().args([
                "caption",
                "-m",
                &model("tiny-opt"),
                &folder.display().to_string(),
                "--max-new-tokens",
                MAX_NEW,
                "--batch-size",
                batch,
                "--output",
                &output.display().to_string(),
            ]),
            7,
        );
        assert!(
            stderr(&out).contains("1 could not be read"),
            "{}",
            stderr(&out)
        );
        let text = std::fs::read_to_string(&output).unwrap();
        let key = |f: &str| folder.join(f).display().to_string();
        if name.ends_with("jsonl") {
            let rows = json_lines(&text);
            let images: Vec<&str> = rows.iter().map(|r| r["image"].as_str().unwrap()).collect();
            assert_eq!(
                images,
                [key("a.png"), key("b.png"), key("c.png"), key("more/d.png")]
            );
            let error = rows[1]["error"].as_str().unwrap();
            assert!(error.contains("b.png"), "{error}");
            assert!(rows[1].get("text").is_none());
            for i in [0, 2, 3] {
                assert!(rows[i]["error"].is_null());
            }
            // In a batch with a failed image, the others' results are what they are alone.
            assert_eq!(rows[0]["sequence"], alone["sequence"]);
        } else {
            let mut reader = csv::Reader::from_reader(text.as_bytes());
            let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
            assert_eq!(
                header,
                [
                    "image",
                    "prompt",
                    "sequence",
                    "sequences",
                    "text",
                    "token_ids",
                    "score",
                    "error"
                ]
            );
            let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
            assert_eq!(rows.len(), 4);
            assert_eq!(&rows[0][0], key("a.png"));
            assert_eq!(&rows[0][4], alone["text"].as_str().unwrap());
            let want: Vec<String> = ids(&alone["token_ids"])
                .iter()
                .map(i64::to_string)
                .collect();
            assert_eq!(&rows[0][5], want.join(" "));
            assert!(rows[1][7].contains("b.png"));
        }
    }
}

#[test]
fn an_interrupted_job_resumes_with_nothing_lost_or_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let folder = folder_with_a_corrupt_image(dir.path());
    let folder_arg = folder.display().to_string();
    for name in ["full.jsonl", "full.csv"] {
        let full_path = dir.path().join(name);
        let caption = |output: &Path, extra: &[&str]| {
            let mut cmd = blip2();
            cmd.args([
                "caption",
                "-m",
                &model("tiny-opt"),
                &folder_arg,
                "--max-new-tokens",
                MAX_NEW,
                "--batch-size",
                "1",
                "--num-beams",
                "2",
                "--num-return-sequences",
                "2",
                "--output",
                &output.display().to_string(),
            ])
            .args(extra);
            cmd
        };
        run(&mut caption(&full_path, &[]), 7);
        let full = std::fs::read(&full_path).unwrap();
        // A kill leaves a prefix of what was written: every cut, resumed, gives the uninterrupted file.
        let mut cuts: Vec<usize> = (0..full.len()).step_by(full.len() / 7 + 1).collect();
        let ends: Vec<usize> = full
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i + 1)
            .collect();
        cuts.extend(&ends);
        cuts.extend(ends.iter().map(|e| e - 1));
        for cut in cuts {
            let path = dir
                .path()
                .join(format!("cut.{}", name.split('.').nth(1).unwrap()));
            std::fs::write(&path, &full[..cut]).unwrap();
            let out = run(&mut caption(&path, &["--resume"]), 7);
            assert_eq!(
                String::from_utf8_lossy(&std::fs::read(&path).unwrap()),
                String::from_utf8_lossy(&full),
                "{name} cut at byte {cut} of {}:\n{}",
                full.len(),
                stderr(&out)
            );
        }
        // A finished file resumes to itself, doing nothing.
        let out = run(&mut caption(&full_path, &["--resume"]), 7);
        assert!(stderr(&out).contains("nothing to do"), "{}", stderr(&out));
        assert_eq!(std::fs::read(&full_path).unwrap(), full);
        // Without --resume or --overwrite an existing output is never touched.
        let out = run(&mut caption(&full_path, &[]), 6);
        assert!(stderr(&out).contains("--resume"), "{}", stderr(&out));
        assert_eq!(std::fs::read(&full_path).unwrap(), full);
    }

    // A real kill: many images, one per batch, killed as soon as rows appear.
    let many = dir.path().join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..60 {
        std::fs::copy(image("rgb_37x29.png"), many.join(format!("{i:02}.png"))).unwrap();
    }
    let output = dir.path().join("killed.jsonl");
    let args = |resume: bool| {
        let mut a = vec![
            "caption".to_string(),
            "-m".into(),
            model("tiny-opt"),
            many.display().to_string(),
            "--max-new-tokens".into(),
            MAX_NEW.into(),
            "--batch-size".into(),
            "1".into(),
            "--output".into(),
            output.display().to_string(),
        ];
        if resume {
            a.push("--resume".into());
        }
        a
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_blip2"))
        .args(args(false))
        .env("HF_HUB_OFFLINE", "1")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while std::fs::read(&output).map_or(0, |b| b.len()) == 0
        && started.elapsed() < std::time::Duration::from_secs(60)
    {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    // The kill must have interrupted the job, or the resume below tests nothing: the process died of the signal
    // (a run that had already finished would exit 0), and fewer rows than images were written.
    assert!(
        !status.success(),
        "the job finished before the kill: {status:?}"
    );
    let before = std::fs::read(&output).unwrap();
    let complete = before.iter().filter(|&&b| b == b'\n').count();
    assert!(
        complete < 60,
        "the kill came after all 60 rows were written ({complete})"
    );
    run(blip2().args(args(true)), 0);
    let rows = json_lines(&std::fs::read_to_string(&output).unwrap());
    let images: Vec<String> = rows
        .iter()
        .map(|r| r["image"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = (0..60)
        .map(|i| many.join(format!("{i:02}.png")).display().to_string())
        .collect();
    assert_eq!(images, want, "every image once, in order");
    assert!(rows.iter().all(|r| r["sequence"] == rows[0]["sequence"]));
}

#[test]
fn chat_keeps_the_history_and_encodes_the_image_once() {
    let fixture = Fixture::open("tiny-opt");
    let single = fixture.manifest()["prompts"]["single"].as_str().unwrap();
    let question = question_of(single);
    let script =
        format!("{question}\n\n/history\nand then?\n/clear\n{question}\n/quit\nnot asked\n");
    let out = run(
        blip2()
            .args([
                "chat",
                "-m",
                &model("tiny-opt"),
                &image("rgb_37x29.png"),
                "--max-new-tokens",
                MAX_NEW,
                "--json",
            ])
            .write_stdin(script),
        0,
    );
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    let turns: Vec<Value> = lines
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(turns.len(), 3, "{lines:?}");
    assert_eq!(
        vec![ids(&turns[0]["sequence"])],
        fixture.id_rows("gen/greedy/single")
    );
    // The second turn carries the first in its prompt; after /clear the first question is asked afresh.
    assert!(ids(&turns[1]["sequence"]).len() > ids(&turns[0]["sequence"]).len());
    assert_eq!(turns[2]["sequence"], turns[0]["sequence"]);
    let answer = turns[0]["answer"].as_str().unwrap();
    assert!(
        lines.contains(&format!("Q: {question}").as_str()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&format!("A: {answer}").as_str()),
        "{lines:?}"
    );
}

fn retrieval_setup() -> (Fixture, Vec<String>, Vec<String>) {
    let fixture = Fixture::open("tiny-itm");
    let images = fixture
        .batch_images()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let texts = fixture.manifest()["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    (fixture, images, texts)
}

#[test]
fn match_scores_equal_transformers_itm_and_itc() {
    let (fixture, images, texts) = retrieval_setup();
    let mut cmd = blip2();
    cmd.args(["match", "-m", &model("tiny-itm")])
        .args(&images)
        .args(["--text", &texts[0], "--text", &texts[1], "--json"]);
    let rows = json_lines(&stdout(&run(&mut cmd, 0)));
    assert_eq!(rows.len(), 2);
    let mut itc = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["image"], images[i].as_str());
        let scores = row["scores"].as_array().unwrap();
        assert_eq!(scores[1]["text"], texts[1].as_str());
        itc.extend(scores.iter().map(|s| s["itc"].as_f64().unwrap() as f32));
    }
    assert_close(
        "itc",
        &TensorData::new(itc, [2, 2]),
        fixture.data("itc/logits_per_image"),
        Tol::LOGITS,
    );
    // transformers' ITM logits of image i with text i, as the probability of "match".
    let logits: Vec<f32> = fixture.data("itm/logits").clone().to_vec().unwrap();
    for i in 0..2 {
        let p = 1.0 / (1.0 + (logits[2 * i] - logits[2 * i + 1]).exp());
        let got = rows[i]["scores"][i]["itm"].as_f64().unwrap() as f32;
        assert!((got - p).abs() < 1e-5, "itm[{i}][{i}] {got} vs {p}");
    }

    // ITC only; the table for people; texts from a file; CSV rows.
    let dir = tempfile::tempdir().unwrap();
    let texts_file = dir.path().join("texts.txt");
    std::fs::write(&texts_file, format!("{}\n\n{}\n", texts[0], texts[1])).unwrap();
    let mut cmd = blip2();
    cmd.args(["match", "-m", &model("tiny-itm")])
        .args(&images)
        .args([
            "--texts",
            &texts_file.display().to_string(),
            "--scores",
            "itc",
            "--json",
        ]);
    let only = json_lines(&stdout(&run(&mut cmd, 0)));
    assert!(only[0]["scores"][0].get("itm").is_none());
    assert_eq!(only[0]["scores"][1]["itc"], rows[0]["scores"][1]["itc"]);
    let mut cmd = blip2();
    cmd.args(["match", "-m", &model("tiny-itm")])
        .args(&images)
        .args(["--text", &texts[0]]);
    let table = stdout(&run(&mut cmd, 0));
    assert!(
        table.contains("ITM [1]") && table.contains("ITC [1]"),
        "{table}"
    );
    assert!(table.contains(&format!("[1] {}", texts[0])), "{table}");
    let csv_path = dir.path().join("scores.csv");
    let mut cmd = blip2();
    cmd.args(["match", "-m", &model("tiny-itm")])
        .args(&images)
        .args([
            "--text",
            &texts[0],
            "--text",
            &texts[1],
            "-o",
            &csv_path.display().to_string(),
        ]);
    run(&mut cmd, 0);
    let csv_text = std::fs::read_to_string(&csv_path).unwrap();
    assert_eq!(csv_text.lines().count(), 5, "{csv_text}");
    assert!(csv_text.starts_with("image,text,itm,itc,error\n"));
}

fn read_safetensors(path: &Path) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32);
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

fn values<const D: usize>(t: burn::tensor::Tensor<Flex, D>) -> (Vec<usize>, Vec<f32>) {
    (
        t.dims().to_vec(),
        t.into_data().convert::<f32>().into_vec().unwrap(),
    )
}

#[test]
fn embed_writes_the_library_features_and_an_index() {
    let (_, images, texts) = retrieval_setup();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("features.safetensors");
    let mut cmd = blip2();
    cmd.args(["embed", "-m", &model("tiny-itm")])
        .args(&images)
        .args([
            "--text",
            &texts[0],
            "--text",
            &texts[1],
            "--kind",
            "image,text,multimodal",
        ])
        .args(["--output", &out.display().to_string()]);
    run(&mut cmd, 0);
    let got = read_safetensors(&out);

    let r = Blip2Retrieval::<Flex>::from_pretrained(
        model("tiny-itm"),
        FloatDType::F32,
        &Default::default(),
    )
    .unwrap();
    let encoded = r.encode_image_files(&images).unwrap();
    let encoded_texts = r.encode_texts(&texts).unwrap();
    assert_eq!(got["image_embeds"], values(encoded.image_embeds.clone()));
    assert_eq!(
        got["text_embeds"],
        values(encoded_texts.text_embeds.clone())
    );
    assert_eq!(
        got["multimodal_embeds"],
        values(r.multimodal_features(&encoded, &encoded_texts).unwrap())
    );
    let index = json_lines(&std::fs::read_to_string(dir.path().join("features.jsonl")).unwrap());
    assert_eq!(index.len(), 6);
    let image_rows: Vec<&Value> = index
        .iter()
        .filter(|r| r["tensor"] == "image_embeds")
        .collect();
    assert_eq!(image_rows[1]["row"], 1);
    assert_eq!(image_rows[1]["image"], images[1].as_str());
    let text_rows: Vec<&Value> = index
        .iter()
        .filter(|r| r["tensor"] == "text_embeds")
        .collect();
    assert_eq!(text_rows[0]["text"], texts[0].as_str());

    // A captioning checkpoint gives the Q-Former's queries and the soft prompt; a corrupt image is an index
    // row with an error and no tensor row.
    let bad = dir.path().join("bad.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff truncated").unwrap();
    let out = dir.path().join("opt.safetensors");
    let rgb = image("rgb_37x29.png");
    let mut cmd = blip2();
    cmd.args([
        "embed",
        "-m",
        &model("tiny-opt"),
        &bad.display().to_string(),
        &rgb,
    ])
    .args(["-o", &out.display().to_string()]);
    run(&mut cmd, 7);
    let got = read_safetensors(&out);
    let lib =
        Blip2::<Flex>::from_pretrained(model("tiny-opt"), FloatDType::F32, &Default::default())
            .unwrap();
    let features = lib.encode_image_files(&[&rgb]).unwrap();
    assert_eq!(
        got["qformer_embeds"],
        values(features.qformer.last_hidden_state.clone())
    );
    assert_eq!(
        got["language_model_inputs"],
        values(features.language_inputs.clone())
    );
    let index = json_lines(&std::fs::read_to_string(dir.path().join("opt.jsonl")).unwrap());
    assert!(index[0]["row"].is_null() && index[0]["error"].as_str().unwrap().contains("bad.jpg"));
    assert_eq!(index[2]["row"], 0);
    // Text features need a retrieval checkpoint.
    let out = run(
        blip2().args([
            "embed",
            "-m",
            &model("tiny-opt"),
            "--text",
            "a cat",
            "-o",
            "x.safetensors",
        ]),
        4,
    );
    assert!(
        stderr(&out).contains("retrieval checkpoint"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn inputs_come_from_globs_and_stdin() {
    let pattern = fixtures_root()
        .join("images")
        .join("rgb_*.png")
        .display()
        .to_string();
    let out = run(
        blip2().args([
            "caption",
            "-m",
            &model("tiny-opt"),
            &pattern,
            "--max-new-tokens",
            "2",
            "--json",
        ]),
        0,
    );
    let rows = json_lines(&stdout(&out));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["image"], image("rgb_37x29.png").as_str());
    let list = format!(
        "{}\n# a comment\n\n{}\n",
        image("rgba_31x23.png"),
        image("rgb_37x29.png")
    );
    let out = run(
        blip2()
            .args([
                "caption",
                "-m",
                &model("tiny-opt"),
                "-",
                "--max-new-tokens",
                "2",
                "--json",
            ])
            .write_stdin(list),
        0,
    );
    let rows = json_lines(&stdout(&out));
    let names: Vec<&str> = rows.iter().map(|r| r["image"].as_str().unwrap()).collect();
    assert_eq!(names, [image("rgba_31x23.png"), image("rgb_37x29.png")]);
    // Several images as text: "path: caption".
    let out = run(
        blip2().args([
            "caption",
            "-m",
            &model("tiny-opt"),
            &image("rgb_37x29.png"),
            &image("rgba_31x23.png"),
            "--max-new-tokens",
            "2",
        ]),
        0,
    );
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("{}: ", image("rgb_37x29.png"))),
        "{text}"
    );
    assert_eq!(text.lines().count(), 2);
}

#[test]
fn errors_are_sentences_with_hints_and_exit_codes() {
    let rgb = image("rgb_37x29.png");
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("rows.jsonl");
    std::fs::write(&existing, "{\"image\":\"x\"}\n").unwrap();
    let existing = existing.display().to_string();
    let missing_dir = dir.path().join("no-such-model").display().to_string();
    let opt = model("tiny-opt");
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["caption", "-m", &opt, &rgb, "--do-sample", "--top-p", "2"],
            2,
            "top_p",
        ),
        (
            vec!["caption", "-m", &opt, &rgb, "--prompt", " "],
            2,
            "--prompt is empty",
        ),
        (
            vec!["caption", "-m", &opt, &rgb, "--dtype", "f64"],
            2,
            "f32, f16, bf16 or int8",
        ),
        (
            vec!["caption", "-m", &opt, &rgb, "--int8-group", "128"],
            2,
            "--int8-group applies to --dtype int8, not --dtype f32",
        ),
        (
            vec![
                "caption",
                "-m",
                &opt,
                &rgb,
                "--dtype",
                "int8",
                "--int8-group",
                "20",
            ],
            2,
            "multiple of 16 from 16 to 240",
        ),
        (
            vec!["caption", "-m", &opt, &rgb, "--batch-size", "0"],
            2,
            "positive",
        ),
        (
            vec!["caption", "-m", &opt, &rgb, "--resume"],
            2,
            "--resume needs --output",
        ),
        (vec!["ask", "-m", &opt, &rgb, " "], 2, "question is empty"),
        (
            vec!["ask", "-m", &opt, &rgb, "what?", "--template", "Q:"],
            2,
            "has no {}",
        ),
        (
            vec!["caption", "-m", &opt, "no/such/image.png"],
            3,
            "no such file or folder",
        ),
        (
            vec!["caption", "-m", &missing_dir, &rgb],
            4,
            "does not exist",
        ),
        (
            vec!["caption", "-m", "Salesforce/not-cached-here", &rgb],
            4,
            "not in the HF cache",
        ),
        (
            vec!["match", "-m", &opt, &rgb, "--text", "a cat"],
            4,
            "retrieval checkpoint",
        ),
        (
            vec!["caption", "-m", &opt, &rgb, "--device", "tpu"],
            5,
            "unknown backend `tpu`",
        ),
        (
            vec!["caption", "-m", &opt, &rgb, "--device", "metal"],
            5,
            "not compiled",
        ),
        (
            vec!["caption", "-m", &opt, &rgb, "-o", &existing],
            6,
            "--overwrite",
        ),
        (
            vec!["caption", "-m", &opt, &rgb, "-o", "rows.txt"],
            2,
            ".jsonl",
        ),
        (
            vec!["chat", "-m", &opt, &rgb, "-o", &existing],
            2,
            "--output is for",
        ),
    ];
    for (args, code, needle) in cases {
        let out = run(blip2().args(&args).env("HF_HOME", dir.path()), code);
        let err = stderr(&out);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(err.starts_with("error:"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    assert_eq!(
        std::fs::read_to_string(&existing).unwrap(),
        "{\"image\":\"x\"}\n"
    );
}

#[test]
fn info_describes_the_build_and_the_model() {
    let out = run(
        blip2().args(["info", "-m", &model("tiny-opt"), "--json"]),
        0,
    );
    let info: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(
        info["backends"]
            .as_array()
            .unwrap()
            .contains(&Value::from("flex"))
    );
    assert_eq!(info["devices"][0]["available"], true);
    let m = &info["model"];
    assert_eq!(m["architecture"], "Blip2ForConditionalGeneration");
    let bytes = std::fs::read(fixtures_root().join("tiny-opt/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let total: u64 = st
        .tensors()
        .iter()
        .map(|(_, v)| v.shape().iter().product::<usize>() as u64)
        .sum();
    assert_eq!(m["parameters"], total);
    let parts: u64 = m["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["parameters"].as_u64().unwrap())
        .sum();
    assert_eq!(parts, total);
    let text = stdout(&run(
        blip2().args(["info", "-m", &model("tiny-t5"), "--dtype", "bf16"]),
        0,
    ));
    assert!(text.contains("language model:  T5"), "{text}");
    assert!(
        text.contains("qformer f32") && text.contains("language_model bf16"),
        "{text}"
    );
    let int8 = |group: Option<&str>, json: bool| {
        let mut cmd = blip2();
        cmd.args(["info", "-m", &model("tiny-opt-q8"), "--dtype", "int8"]);
        if let Some(group) = group {
            cmd.args(["--int8-group", group]);
        }
        if json {
            cmd.arg("--json");
        }
        stdout(&run(&mut cmd, 0))
    };
    let text = int8(Some("16"), false);
    assert!(text.contains("with --dtype int8 (group 16) ("), "{text}");
    // Group 16 holds eight times the scales of the default 128: more bytes in memory.
    let bytes = |group| {
        let info: Value = serde_json::from_str(&int8(group, true)).unwrap();
        info["model"]["memory_bytes"].as_u64().unwrap()
    };
    assert!(bytes(Some("16")) > bytes(None));
    let text = stdout(&run(blip2().arg("info"), 0));
    assert!(text.contains("backends compiled in: flex"), "{text}");
}

#[test]
fn help_reads_well() {
    let top = stdout(&run(blip2().arg("--help"), 0));
    for word in [
        "caption",
        "ask",
        "chat",
        "embed",
        "match",
        "info",
        "Examples:",
        "--model",
        "--device",
    ] {
        assert!(top.contains(word), "blip2 --help lacks {word}:\n{top}");
    }
    for (sub, needles) in [
        (
            "caption",
            vec![
                "--prompt",
                "--num-beams",
                "--top-p",
                "--seed",
                "--no-repeat-ngram-size",
                "Examples:",
            ],
        ),
        ("ask", vec!["QUESTION", "--template", "Examples:"]),
        ("chat", vec!["/clear", "Example:"]),
        ("embed", vec!["--kind", "image_embeds", "Examples:"]),
        ("match", vec!["--text", "--scores", "Examples:"]),
        ("info", vec!["Examples:"]),
    ] {
        let help = stdout(&run(blip2().args([sub, "--help"]), 0));
        assert!(help.contains(&format!("Usage: blip2 {sub}")), "{help}");
        for needle in needles {
            assert!(
                help.contains(needle),
                "blip2 {sub} --help lacks {needle}:\n{help}"
            );
        }
        for line in help.lines() {
            assert!(
                line.chars().count() <= 110,
                "blip2 {sub} --help: a long line: {line}"
            );
        }
    }
    let version = stdout(&run(blip2().arg("--version"), 0));
    assert!(version.starts_with("blip2 "), "{version}");
    // GenerationConfig's defaults are what the help says.
    let d = GenerationConfig::default();
    let caption = stdout(&run(blip2().args(["caption", "--help"]), 0));
    assert!(
        caption.contains(&format!("[default: {}]", d.top_k)),
        "{caption}"
    );
}

#[test]
fn the_default_model_downloads_on_first_use_then_runs_offline() {
    use blip2_testkit::hub_server::{HubRepo, HubServer};
    // A local hub serving the tiny model under the default id: `blip2 caption IMAGE` with no --model.
    let server = HubServer::start(vec![("Salesforce/blip2-opt-2.7b", HubRepo::tiny_opt())]);
    let home = tempfile::tempdir().unwrap();
    let caption = |offline: bool| {
        let mut cmd = blip2();
        cmd.env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_TOKEN")
            .env_remove("HF_HUB_CACHE")
            .env("HF_HOME", home.path())
            .env("HF_ENDPOINT", &server.endpoint)
            .args([
                "caption",
                &image("rgb_37x29.png"),
                "--max-new-tokens",
                MAX_NEW,
                "--json",
            ]);
        if offline {
            cmd.env("HF_HUB_OFFLINE", "1");
        }
        json_lines(&stdout(&run(&mut cmd, 0)))
    };
    let first = caption(false);
    let want = Fixture::open("tiny-opt").id_rows("gen/greedy/noprompt");
    assert_eq!(vec![ids(&first[0]["sequence"])], want);
    let snapshots = home
        .path()
        .join("hub/models--Salesforce--blip2-opt-2.7b/snapshots");
    assert!(std::fs::read_dir(&snapshots).unwrap().count() == 1);
    let requests = server.requests().len();
    assert!(requests > 0);
    // Cached: no request, also offline.
    assert_eq!(caption(true), first);
    assert_eq!(caption(false), first);
    assert_eq!(server.requests().len(), requests);
}
