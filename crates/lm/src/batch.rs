//! The token batch every forward reads.

/// Left-padded token batch. Left padding keeps every row's last real token in the last column,
/// which is where next-token logits and the "last prompt token" representation are read.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    pub ids: Vec<u32>,
    pub mask: Vec<bool>,
    pub batch: usize,
    pub seq: usize,
}

impl TokenBatch {
    pub fn left_padded(seqs: &[Vec<u32>], pad_id: u32) -> Self {
        let seq = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(seqs.len() * seq);
        let mut mask = Vec::with_capacity(seqs.len() * seq);
        for s in seqs {
            let pad = seq - s.len();
            ids.extend(std::iter::repeat_n(pad_id, pad));
            mask.extend(std::iter::repeat_n(false, pad));
            ids.extend_from_slice(s);
            mask.extend(std::iter::repeat_n(true, s.len()));
        }
        Self {
            ids,
            mask,
            batch: seqs.len(),
            seq,
        }
    }
    /// Per-row position ids: count of real tokens before each one (pads get 0).
    pub fn positions(&self) -> Vec<usize> {
        let mut pos = Vec::with_capacity(self.ids.len());
        for b in 0..self.batch {
            let mut n = 0usize;
            for t in 0..self.seq {
                pos.push(n.saturating_sub(0));
                if self.mask[b * self.seq + t] {
                    n += 1;
                    *pos.last_mut().unwrap() = n - 1;
                }
            }
        }
        pos
    }
}
