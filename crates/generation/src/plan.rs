//! What a run is resolved to before its first step ([`Plan`]), and when a row ends ([`row_stops`],
//! [`StoppingCriterion`]): shared by greedy decoding, sampling and beam search.

use crate::processors::ProcessorList;

/// A caller's reason to stop a row, checked after every new token (beside eos, the length limit and
/// `max_time`).
pub trait StoppingCriterion: Send {
    /// Whether the row holding `ids` (prompt ids, then generated ones) is done; `prompt_len` ids are the
    /// prompt's.
    fn should_stop(&mut self, ids: &[u32], prompt_len: usize) -> bool;
}

impl<F: FnMut(&[u32], usize) -> bool + Send> StoppingCriterion for F {
    fn should_stop(&mut self, ids: &[u32], prompt_len: usize) -> bool {
        self(ids, prompt_len)
    }
}

/// Lengths and ids resolved against a prompt.
pub(crate) struct Plan {
    pub rows: Vec<Vec<u32>>,
    pub padding: Vec<usize>,
    pub prompt_len: usize,
    pub max_total: usize,
    pub processors: ProcessorList,
    pub fill: Option<u32>,
}

/// Whether `ids` ends a row: eos, the length limit, a caller's criterion.
pub(crate) fn row_stops(
    ids: &[u32],
    plan: &Plan,
    eos: &[u32],
    stopping: &mut [Box<dyn StoppingCriterion>],
) -> bool {
    let mut stop = ids.len() >= plan.max_total || ids.last().is_some_and(|t| eos.contains(t));
    for criterion in stopping.iter_mut() {
        stop |= criterion.should_stop(ids, plan.prompt_len);
    }
    stop
}
