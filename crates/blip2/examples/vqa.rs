//! Asks questions about one image, each with the earlier questions and answers as context (a chat).
//!
//! ```text
//! cargo run --release -p blip2 --example vqa -- <model> <image> "what is in the picture?" "what color is it?"
//! ```
//!
//! Offline on the tiny test model (random weights):
//! `cargo run -p blip2 --example vqa -- fixtures/tiny-t5 fixtures/images/gray_19x41.png "what is it?"`.

// An example program: printing is its job.
#![allow(clippy::print_stdout)]

use anyhow::{Result, bail};
use blip2::Blip2;
use blip2_nn::backend::{DefaultBackend, FloatDType};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, image, questions @ ..] = args.as_slice() else {
        bail!("usage: vqa <model dir or hub id> <image> <question>...");
    };
    if questions.is_empty() {
        bail!("give at least one question");
    }
    blip2_nn::alloc::tune_malloc_for_inference();
    let blip2 =
        Blip2::<DefaultBackend>::from_pretrained(model, FloatDType::F32, &Default::default())?;
    let mut chat = blip2.chat(blip2.encode_image_files(&[image])?)?; // the image is encoded once
    for question in questions {
        let answer = chat.ask(question)?;
        println!("Q: {question}\nA: {}", answer.text);
    }
    Ok(())
}
