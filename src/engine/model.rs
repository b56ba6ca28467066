//! A model as `mlxk run` runs it: the embedding, the blocks ([`super::block`]), the final norm
//! and lm_head of every family [`super::args::RUN_MODEL_TYPES`] lists, as mlx-lm computes them.
//! Activations in f32; weights stay as mapped. The weights ([`CpuModel`]) are shared by every
//! sequence ([`Sequence`]: its KV caches, position and buffers) that runs on them.

use std::path::Path;

use super::args::ModelArgs;
use super::attention::KvCache;
use super::block::{norm_weight, resize, Block, Buffers, Rows};
use super::kernels::{matmul, matmul_many_rows, matrix_row, rms_norm};
use super::weights::{Matrix, WeightFiles};
use super::{Engine, EngineError};

/// The weights of a loaded model: immutable once mapped, shared by every sequence that runs on
/// it (an `Arc<CpuModel>` per model, whatever the number of sequences).
pub struct CpuModel {
    args: ModelArgs,
    embed: Matrix,
    lm_head: Matrix,
    norm: Vec<f32>,
    blocks: Vec<Block>,
    /// Bytes of weights one decode step reads.
    pub weight_bytes_per_token: usize,
    /// Bytes of all mapped tensor data.
    pub weight_bytes: u64,
    /// The buffers of a step's decode rows (one step at a time uses them).
    batch: std::sync::Mutex<Buffers>,
}

/// One sequence's state on a model: its KV caches (one per block), its position, its buffers
/// and its last logits — apart from the weights, so that several sequences can run on one
/// model.
pub struct Sequence {
    caches: Vec<KvCache>,
    pos: usize,
    buf: Buffers,
    logits: Vec<f32>,
}

impl Sequence {
    /// An empty sequence on `model`.
    pub fn new(model: &CpuModel) -> Sequence {
        let a = &model.args;
        Sequence {
            caches: a
                .layer
                .iter()
                .map(|l| match l.window {
                    Some(w) => KvCache::sliding(a.kv_heads, a.head_dim, w),
                    None => KvCache::new(a.kv_heads, a.head_dim),
                })
                .collect(),
            pos: 0,
            buf: Buffers::default(),
            logits: vec![0.0; a.vocab],
        }
    }

    /// Tokens processed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Forgets everything after `position` and returns where the sequence now is:
    /// `position` (or where it already was, if earlier), or 0 when a sliding-window layer
    /// has already overwritten what a query there would need — the tokens must then run
    /// again from the start.
    pub fn rewind(&mut self, position: usize) -> usize {
        let mut pos = self.pos.min(position);
        let mut kept = true;
        for cache in &mut self.caches {
            kept &= cache.truncate(pos);
        }
        if !kept {
            for cache in &mut self.caches {
                cache.truncate(0);
            }
            pos = 0;
        }
        self.pos = pos;
        pos
    }

    /// Room for this many positions in every cache.
    pub fn reserve(&mut self, positions: usize) {
        for cache in &mut self.caches {
            cache.reserve(positions);
        }
    }
}

/// The engine `mlxk run` uses: one sequence on a model.
pub struct CpuEngine {
    model: std::sync::Arc<CpuModel>,
    seq: Sequence,
}

impl CpuEngine {
    /// Loads the model in `dir` (config checked first, weights mapped).
    pub fn load(dir: &Path) -> Result<CpuEngine, EngineError> {
        CpuEngine::load_with(dir, ModelArgs::load(dir)?)
    }

    /// Loads the weights in `dir` for the already checked `args`.
    pub fn load_with(dir: &Path, args: ModelArgs) -> Result<CpuEngine, EngineError> {
        Ok(CpuEngine::on(std::sync::Arc::new(CpuModel::load_with(
            dir, args,
        )?)))
    }

    /// A new sequence on an already loaded model.
    pub fn on(model: std::sync::Arc<CpuModel>) -> CpuEngine {
        let seq = Sequence::new(&model);
        CpuEngine { model, seq }
    }

    pub fn model(&self) -> &std::sync::Arc<CpuModel> {
        &self.model
    }

    pub fn args(&self) -> &ModelArgs {
        &self.model.args
    }
}

impl CpuModel {
    /// Maps the weights in `dir` for the already checked `args`.
    pub fn load_with(dir: &Path, args: ModelArgs) -> Result<CpuModel, EngineError> {
        let files = WeightFiles::open(dir)?;
        let a = &args;
        let m = format!("{}model", a.prefix);
        let embed = files.matrix(a, &format!("{m}.embed_tokens"), a.vocab, a.hidden)?;
        let lm_head_name = format!("{}lm_head", a.prefix);
        let lm_head = if a.tie || !files.contains(&format!("{lm_head_name}.weight")) {
            embed.clone()
        } else {
            files.matrix(a, &lm_head_name, a.vocab, a.hidden)?
        };
        let blocks = (0..a.layers)
            .map(|l| Block::load(&files, a, l, &format!("{m}.layers.{l}")))
            .collect::<Result<Vec<_>, _>>()?;
        let norm = norm_weight(&files, a, &format!("{m}.norm.weight"), a.hidden)?;
        let weight_bytes_per_token =
            blocks.iter().map(|b| b.bytes_per_token()).sum::<usize>() + lm_head.nbytes();
        Ok(CpuModel {
            batch: Default::default(),
            weight_bytes: files.total_bytes,
            args,
            embed,
            lm_head,
            norm,
            blocks,
            weight_bytes_per_token,
        })
    }

    pub fn args(&self) -> &ModelArgs {
        &self.args
    }

    /// Runs `tokens` at the sequence's positions `pos..`, leaving the last token's logits in
    /// `seq.logits`.
    pub fn forward(&self, seq: &mut Sequence, tokens: &[u32]) -> Result<(), EngineError> {
        self.step(&mut [(seq, tokens)])
    }

    /// One step of several sequences on this model: each runs its own tokens (one to decode,
    /// or a chunk of a prompt) at its own positions and is left with the logits after its last
    /// token. Prompt chunks run as they would alone; the decodes run together, one row per
    /// sequence, block by block, each row through the decode kernels so that every sequence
    /// gets exactly what it would get alone — the place where kernels that read a weight row
    /// once for all the rows go.
    pub fn step(&self, work: &mut [(&mut Sequence, &[u32])]) -> Result<(), EngineError> {
        let a = &self.args;
        for (_, tokens) in work.iter() {
            if tokens.is_empty() {
                return Err(EngineError::Input("no tokens to run".into()));
            }
            if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= a.vocab) {
                return Err(EngineError::Input(format!(
                    "token id {bad} is outside the vocabulary ({} entries)",
                    a.vocab
                )));
            }
        }
        let hidden = a.hidden;
        // Two or more decodes run together; anything else (prompt chunks, a lone decode) runs
        // as one sequence in its own buffers — allocation-free, as `mlxk run` decodes.
        let batched = work.iter().filter(|(_, t)| t.len() == 1).count() >= 2;
        for (seq, tokens) in work.iter_mut().filter(|(_, t)| !(batched && t.len() == 1)) {
            let t = tokens.len();
            let Sequence {
                caches,
                pos,
                buf: b,
                logits,
            } = &mut **seq;
            b.size_for(a, t);
            for (i, &tok) in tokens.iter().enumerate() {
                self.embed_into(tok, &mut b.h[i * hidden..(i + 1) * hidden]);
            }
            b.ropes.iter_mut().for_each(Vec::clear);
            for i in 0..t {
                b.push_rope(a, *pos + i);
            }
            for (block, cache) in self.blocks.iter().zip(caches.iter_mut()) {
                let mut rows = Rows::Prompt {
                    t,
                    start: *pos,
                    cache,
                };
                block.forward(a, &mut rows, b);
            }
            self.final_logits(b, t - 1, logits);
            *pos += t;
        }
        if !batched {
            return Ok(());
        }
        // Decodes: one row per sequence, all in one set of buffers, block by block.
        let tokens: Vec<u32> = work
            .iter()
            .filter(|(_, t)| t.len() == 1)
            .map(|(_, t)| t[0])
            .collect();
        let mut decoding: Vec<&mut Sequence> = work
            .iter_mut()
            .filter(|(_, t)| t.len() == 1)
            .map(|(s, _)| &mut **s)
            .collect();
        let n = decoding.len();
        let mut guard = self.batch.lock().unwrap_or_else(|p| p.into_inner());
        let b = &mut *guard;
        b.size_for(a, n);
        let positions: Vec<usize> = decoding.iter().map(|s| s.pos).collect();
        b.ropes.iter_mut().for_each(Vec::clear);
        for (i, &tok) in tokens.iter().enumerate() {
            self.embed_into(tok, &mut b.h[i * hidden..(i + 1) * hidden]);
            b.push_rope(a, positions[i]);
        }
        for (l, block) in self.blocks.iter().enumerate() {
            let mut rows = Rows::Decode {
                positions: &positions,
                caches: decoding.iter_mut().map(|s| &mut s.caches[l]).collect(),
            };
            block.forward(a, &mut rows, b);
        }
        // The final norm and lm_head for every row together (lm_head is the largest matrix
        // of a small model: read once, not once per sequence).
        b.norm_residual(&self.norm, a.eps);
        resize(&mut b.logits, n * a.vocab);
        let Buffers {
            x, logits, scratch, ..
        } = b;
        matmul_many_rows(&mut [(&self.lm_head, &mut logits[..])], x, n, scratch);
        for row in logits.chunks_exact_mut(a.vocab) {
            self.finish_logits(row);
        }
        for (i, seq) in decoding.iter_mut().enumerate() {
            seq.logits
                .copy_from_slice(&logits[i * a.vocab..(i + 1) * a.vocab]);
            seq.pos += 1;
        }
        Ok(())
    }

    /// The logits after row `row` of the residual stream in `b.h`: final norm, lm_head.
    fn final_logits(&self, b: &mut Buffers, row: usize, logits: &mut [f32]) {
        let a = &self.args;
        resize(&mut b.last, a.hidden);
        b.last
            .copy_from_slice(&b.h[row * a.hidden..(row + 1) * a.hidden]);
        rms_norm(&mut b.last, &self.norm, a.eps);
        matmul(&self.lm_head, &b.last, 1, logits, &mut b.scratch);
        self.finish_logits(logits);
    }

    /// Token `tok`'s embedding (times the family's embedding scale) into `out`.
    fn embed_into(&self, tok: u32, out: &mut [f32]) {
        matrix_row(&self.embed, tok as usize, out);
        if let Some(s) = self.args.embed_scale {
            out.iter_mut().for_each(|v| *v *= s);
        }
    }

    /// What a family does to lm_head's output: granite divides it, gemma2 soft-caps it.
    fn finish_logits(&self, logits: &mut [f32]) {
        if let Some(d) = self.args.logits_divisor {
            logits.iter_mut().for_each(|v| *v /= d);
        }
        if let Some(cap) = self.args.final_softcap {
            logits.iter_mut().for_each(|v| *v = (*v / cap).tanh() * cap);
        }
    }

    /// The last logits of `seq`.
    pub fn logits<'s>(&self, seq: &'s Sequence) -> &'s [f32] {
        &seq.logits
    }
}

impl Engine for CpuEngine {
    fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32], EngineError> {
        self.model.forward(&mut self.seq, tokens)?;
        Ok(&self.seq.logits)
    }

    fn decode(&mut self, token: u32) -> Result<&[f32], EngineError> {
        self.model.forward(&mut self.seq, &[token])?;
        Ok(&self.seq.logits)
    }

    fn rewind(&mut self, position: usize) -> usize {
        self.seq.rewind(position)
    }

    fn position(&self) -> usize {
        self.seq.position()
    }

    fn reserve(&mut self, positions: usize) {
        self.seq.reserve(positions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{llama_model_files, LlamaSpec};
    use std::sync::Arc;

    fn model_dir(spec: &LlamaSpec) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in llama_model_files(spec, 1, false, "mlx") {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        dir
    }

    #[test]
    fn sequences_share_the_weights_and_nothing_else() {
        fn shareable<T: Send + Sync>() {}
        shareable::<CpuModel>();
        // A float model and affine 4- and 8-bit ones wide enough for every decode kernel this
        // CPU has (the batched decode rows must match each one's single decode bit for bit).
        let wide = LlamaSpec {
            hidden: 256,
            intermediate: 512,
            ..LlamaSpec::default()
        };
        for spec in [
            LlamaSpec {
                seed: 5,
                ..LlamaSpec::default()
            },
            LlamaSpec {
                seed: 6,
                quantization: Some((4, 64)),
                ..wide.clone()
            },
            LlamaSpec {
                seed: 7,
                quantization: Some((8, 64)),
                ..wide.clone()
            },
            // Routed experts: a prompt's rows grouped by expert, decoded rows one by one.
            LlamaSpec {
                seed: 8,
                model_type: "qwen3_moe",
                ..LlamaSpec::default()
            },
            LlamaSpec {
                seed: 9,
                model_type: "qwen3_moe",
                quantization: Some((4, 64)),
                moe_intermediate: 128,
                ..wide.clone()
            },
        ] {
            check_sequences(&spec);
        }
    }

    fn check_sequences(spec: &LlamaSpec) {
        let dir = model_dir(spec);
        let model = Arc::new(
            CpuModel::load_with(dir.path(), ModelArgs::load(dir.path()).unwrap()).unwrap(),
        );
        let prompts: [&[u32]; 3] = [&[1, 2, 3, 4], &[9, 8], &[5, 5, 5, 5, 5, 5]];
        // Each prompt alone, on an engine of its own.
        let alone: Vec<Vec<f32>> = prompts
            .iter()
            .map(|p| {
                let mut e = CpuEngine::on(model.clone());
                e.prefill(p).unwrap();
                e.decode(7).unwrap().to_vec()
            })
            .collect();
        // The same prompts as interleaved sequences of one model: identical logits.
        let mut seqs: Vec<Sequence> = prompts.iter().map(|_| Sequence::new(&model)).collect();
        for (s, p) in seqs.iter_mut().zip(prompts) {
            model.forward(s, p).unwrap();
        }
        for (i, s) in seqs.iter_mut().enumerate() {
            model.forward(s, &[7]).unwrap();
            assert_eq!(model.logits(s), alone[i].as_slice(), "sequence {i}");
            assert_eq!(s.position(), prompts[i].len() + 1);
        }
        // One step of all three (a decode each), then a step mixing a decode with a prompt
        // chunk: each as it would be alone.
        let mut alone_next: Vec<Vec<f32>> = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            let mut e = CpuEngine::on(model.clone());
            e.prefill(p).unwrap();
            e.decode(7).unwrap();
            e.decode(i as u32 + 20).unwrap();
            let second: &[u32] = if i == 1 { &[9] } else { &[3, 1, 4] };
            alone_next.push(e.prefill(second).unwrap().to_vec());
        }
        {
            let [s0, s1, s2] = &mut seqs[..] else {
                unreachable!()
            };
            let (t0, t1, t2) = ([20u32], [21u32], [22u32]);
            model
                .step(&mut [(s0, &t0[..]), (s1, &t1[..]), (s2, &t2[..])])
                .unwrap();
            let (chunk, one) = ([3u32, 1, 4], [9u32]);
            model
                .step(&mut [(s0, &chunk[..]), (s1, &one[..]), (s2, &chunk[..])])
                .unwrap();
        }
        for (i, s) in seqs.iter().enumerate() {
            assert_eq!(
                model.logits(s),
                alone_next[i].as_slice(),
                "stepped sequence {i}"
            );
        }
        // Rewinding one sequence leaves the others where they are.
        assert_eq!(seqs[0].rewind(2), 2);
        assert_eq!(seqs[0].position(), 2);
        assert_eq!(seqs[1].position(), 2 + 1 + 1 + 1);
        assert!(
            model.step(&mut [(&mut seqs[1], &[][..])]).is_err(),
            "an empty step is refused"
        );
        assert!(model.step(&mut [(&mut seqs[1], &[u32::MAX][..])]).is_err());
        assert_eq!(Arc::strong_count(&model), 1);
    }
}
