//! Beam search with transformers' semantics (its vectorised `_beam_search`), on the host.
//!
//! Per batch item and step:
//! 1. every running beam's logits go through log-softmax, then the logits processors, then get the beam's
//!    score added;
//! 2. the best `K = max(2, 1 + n_eos) * num_beams` continuations over all beams are kept (or, with
//!    `do_sample`, `K` are drawn without replacement and sorted);
//! 3. a continuation that hits a stopping criterion (eos, the length limit, a caller's criterion) becomes a
//!    finished candidate if it is among the first `num_beams`: its score is divided by
//!    `generated_len ^ length_penalty` and it competes with the finished hypotheses for `num_beams` places;
//! 4. the best `num_beams` continuations that did not stop run on;
//! 5. the item stops improving when, by the `early_stopping` rule, no running beam can beat the worst finished
//!    hypothesis. The loop ends when no item can improve, when all items are full under
//!    `early_stopping = true`, or when every continuation stopped.
//!
//! Scores are f32 and added in transformers' order; -1e9 marks an impossible entry, as there.

use std::cmp::Ordering;
use std::time::Instant;

use crate::output::GenerationOutput;
use crate::plan::{Plan, StoppingCriterion, row_stops};
use crate::processors::{RowIds, log_softmax};
use crate::sampling::{Rng, sample_distinct};
use crate::session::Started;
use crate::{EarlyStopping, Error, GenerationConfig};
use burn::prelude::Backend;

const IMPOSSIBLE: f32 = -1.0e9;

pub(crate) struct BeamSearch<'a, 's, B: Backend> {
    pub config: &'a GenerationConfig,
    pub plan: Plan,
    pub started: Started<'s, B>,
    pub stopping: &'a mut [Box<dyn StoppingCriterion>],
    pub rng: Rng,
}

#[derive(Debug, Clone)]
struct Hypothesis {
    ids: Vec<u32>,
    score: f32,
    finished: bool,
    /// Row of the running beam it came from (running beams only).
    parent: usize,
}

/// Indices of the `k` largest values, largest first, lower index first among equals.
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let cmp = |a: &usize, b: &usize| {
        values[*b]
            .partial_cmp(&values[*a])
            .unwrap_or(Ordering::Equal)
            .then(a.cmp(b))
    };
    let mut idx: Vec<usize> = (0..values.len()).collect();
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

fn length_norm(len: usize, length_penalty: f64) -> f32 {
    (len as f64).powf(length_penalty) as f32
}

pub(crate) fn beam_search<B: Backend>(
    search: BeamSearch<'_, '_, B>,
) -> Result<GenerationOutput, Error> {
    let BeamSearch {
        config,
        mut plan,
        started,
        stopping,
        mut rng,
    } = search;
    let Started {
        mut session,
        logits,
        vocab,
    } = started;
    let num_beams = config.num_beams;
    let batch = plan.rows.len() / num_beams;
    let prompt_len = plan.prompt_len;
    let eos = &config.eos_token_id;
    let keep = 2.max(1 + eos.len()) * num_beams;
    let length_penalty = config.length_penalty;
    let start_time = Instant::now();

    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|b| plan.rows[b * num_beams].clone())
        .collect();
    let padding: Vec<usize> = (0..batch).map(|b| plan.padding[b * num_beams]).collect();
    let mut running: Vec<Vec<Hypothesis>> = (0..batch)
        .map(|b| {
            (0..num_beams)
                .map(|j| Hypothesis {
                    ids: prompts[b].clone(),
                    // Only the first beam is live at first, so that the beams do not pick the same tokens.
                    score: if j == 0 { 0.0 } else { IMPOSSIBLE },
                    finished: false,
                    parent: b * num_beams + j,
                })
                .collect()
        })
        .collect();
    let mut finished: Vec<Vec<Hypothesis>> = (0..batch)
        .map(|b| {
            (0..num_beams)
                .map(|_| Hypothesis {
                    ids: prompts[b].clone(),
                    score: IMPOSSIBLE,
                    finished: false,
                    parent: 0,
                })
                .collect()
        })
        .collect();
    let mut improvable = vec![true; batch];
    let mut logits = logits;
    let mut cur_len = prompt_len;
    let mut step = 0usize;

    loop {
        let mut all_hit = true;
        let mut next_rows = Vec::with_capacity(batch * num_beams);
        for b in 0..batch {
            // 1. Accumulated log-probabilities of every continuation of every beam.
            let mut accumulated = Vec::with_capacity(num_beams * vocab);
            for (j, beam) in running[b].iter().enumerate() {
                let row = b * num_beams + j;
                let mut scores = log_softmax(&logits[row * vocab..(row + 1) * vocab]);
                plan.processors
                    .process(&RowIds::with_padding(&beam.ids, padding[b]), &mut scores);
                if scores.iter().any(|s| s.is_nan()) {
                    return Err(Error::NanLogits { step, row });
                }
                accumulated.extend(scores.into_iter().map(|s| s + beam.score));
            }
            // 2. The best (or sampled) `keep` continuations, best first.
            let picked = if config.do_sample {
                let mut picked =
                    sample_distinct(&accumulated, keep, &mut rng).ok_or_else(|| {
                        Error::NothingToSample {
                            step,
                            row: b,
                            available: accumulated.iter().filter(|s| s.is_finite()).count(),
                            needed: keep,
                        }
                    })?;
                picked.sort_by(|x, y| {
                    accumulated[*y]
                        .partial_cmp(&accumulated[*x])
                        .unwrap_or(Ordering::Equal)
                });
                picked
            } else {
                top_k(&accumulated, keep)
            };
            let timed_out = config
                .max_time
                .is_some_and(|t| start_time.elapsed().as_secs_f64() > t);
            let candidates: Vec<(Hypothesis, bool)> = picked
                .iter()
                .map(|&i| {
                    let (beam, token) = (i / vocab, (i % vocab) as u32);
                    let mut ids = running[b][beam].ids.clone();
                    ids.push(token);
                    let hit = timed_out || row_stops(&ids, &plan, eos, stopping);
                    let hypothesis = Hypothesis {
                        ids,
                        score: accumulated[i],
                        finished: false,
                        parent: b * num_beams + beam,
                    };
                    (hypothesis, hit)
                })
                .collect();
            all_hit &= candidates.iter().all(|(_, hit)| *hit);

            // 4. The best continuations that did not stop run on (stopped ones are pushed to the back).
            let running_scores: Vec<f32> = candidates
                .iter()
                .map(|(h, hit)| h.score + if *hit { IMPOSSIBLE } else { 0.0 })
                .collect();
            running[b] = top_k(&running_scores, num_beams)
                .into_iter()
                .map(|k| Hypothesis {
                    score: running_scores[k],
                    ..candidates[k].0.clone()
                })
                .collect();

            // 3. Stopped continuations among the first num_beams compete with the finished hypotheses.
            let full = finished[b].iter().all(|h| h.finished)
                && config.early_stopping == EarlyStopping::OnBeamsFinished;
            let norm = length_norm(cur_len + 1 - prompt_len, length_penalty);
            let mut merged: Vec<Hypothesis> = finished[b].clone();
            for (k, (h, hit)) in candidates.iter().enumerate() {
                let just_finished = *hit && k < num_beams;
                let mut score = h.score / norm;
                if full {
                    score += IMPOSSIBLE;
                }
                if !improvable[b] {
                    score += IMPOSSIBLE;
                }
                if !just_finished {
                    score += IMPOSSIBLE;
                }
                merged.push(Hypothesis {
                    ids: h.ids.clone(),
                    score,
                    finished: just_finished,
                    parent: 0,
                });
            }
            let scores: Vec<f32> = merged.iter().map(|h| h.score).collect();
            finished[b] = top_k(&scores, num_beams)
                .into_iter()
                .map(|k| merged[k].clone())
                .collect();
            next_rows.extend(running[b].iter().map(|h| h.parent));
        }

        cur_len += 1;
        step += 1;
        // 5. Can any item still improve?
        for b in 0..batch {
            let best_len = if config.early_stopping == EarlyStopping::Never && length_penalty > 0.0
            {
                plan.max_total - prompt_len
            } else {
                cur_len - prompt_len
            };
            let best_possible = running[b][0].score / length_norm(best_len, length_penalty);
            let worst_finished = finished[b]
                .iter()
                .map(|h| h.score)
                .fold(f32::INFINITY, f32::min);
            let beats_some = finished[b].iter().any(|h| {
                let worst = if h.finished {
                    worst_finished
                } else {
                    IMPOSSIBLE
                };
                best_possible > worst
            });
            improvable[b] &= beats_some;
        }
        let all_full = finished.iter().flatten().all(|h| h.finished)
            && config.early_stopping == EarlyStopping::OnBeamsFinished;
        if !improvable.iter().any(|&i| i) || all_full || all_hit {
            break;
        }
        session.reorder(&next_rows);
        let tokens: Vec<u32> = running
            .iter()
            .flatten()
            .map(|h| *h.ids.last().expect("a token per step"))
            .collect();
        logits = session.step(&tokens)?;
    }

    // The best num_return_sequences of every item, padded to the longest returned one.
    let returned: Vec<&Hypothesis> = finished
        .iter()
        .flat_map(|item| item.iter().take(config.num_return_sequences))
        .collect();
    let len = returned
        .iter()
        .map(|h| h.ids.len())
        .max()
        .unwrap_or(prompt_len);
    // transformers fills with `pad_token_id or eos_token_id[0]` on a tensor: a pad id of 0 (T5's) is falsy
    // there, so T5 beams are filled with eos.
    let fill = match (config.pad_token_id, eos.first()) {
        (Some(pad), Some(_)) if pad != 0 => pad,
        (_, Some(&eos)) => eos,
        (pad, None) => pad.unwrap_or(0),
    };
    let sequences = returned
        .iter()
        .map(|h| {
            let mut ids = h.ids.clone();
            ids.resize(len, fill);
            ids
        })
        .collect();
    plan.rows.clear();
    Ok(GenerationOutput {
        sequences,
        sequences_scores: Some(returned.iter().map(|h| h.score).collect()),
        prompt_len,
        num_return_sequences: config.num_return_sequences,
    })
}
