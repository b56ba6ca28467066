//! The llama-family transformer (llama / mistral, qwen2 with q/k/v biases, qwen3 with q/k RMS
//! norms) as mlx-lm computes it: RMSNorm, GQA attention with RoPE and a KV cache, SiLU MLP,
//! tied or separate lm_head. Activations in f32; weights stay as mapped.

use std::cell::RefCell;
use std::path::Path;

use super::args::{Arch, ModelArgs};
use super::attention::{self, KvCache};
use super::kernels::{
    matmul, matmul_many, matmul_many_rows, matrix_row, rms_norm, rope, rope_table, silu_mul,
    MatmulScratch,
};
use super::weights::{Matrix, WeightFiles};
use super::{Engine, EngineError};

/// Self-attention of one block: projections (with qwen2's biases, qwen3's q/k norms), RoPE,
/// GQA over the block's KV cache, output projection.
struct Attention {
    q: Matrix,
    k: Matrix,
    v: Matrix,
    o: Matrix,
    q_bias: Option<Vec<f32>>,
    k_bias: Option<Vec<f32>>,
    v_bias: Option<Vec<f32>>,
    o_bias: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
}

/// The SiLU-gated MLP of one block.
struct Mlp {
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

/// One transformer block: pre-norm attention and pre-norm MLP, each added to the residual.
struct Block {
    input_norm: Vec<f32>,
    attn: Attention,
    post_norm: Vec<f32>,
    mlp: Mlp,
}

/// Per-forward buffers, kept between calls so that decoding allocates nothing once warm.
#[derive(Default)]
struct Buffers {
    h: Vec<f32>,
    x: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    last: Vec<f32>,
    /// The logits of a step's decode rows (row-major).
    logits: Vec<f32>,
    scores: Vec<f32>,
    /// (cos, sin) per token and frequency.
    rope: Vec<(f32, f32)>,
    scratch: MatmulScratch,
}

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
            caches: (0..a.layers)
                .map(|_| KvCache::new(a.kv_heads, a.head_dim))
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

    /// Forgets everything after `position`.
    pub fn rewind(&mut self, position: usize) {
        self.pos = self.pos.min(position);
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

fn resize(v: &mut Vec<f32>, n: usize) {
    if v.len() != n {
        v.resize(n, 0.0);
    }
}

impl CpuModel {
    /// Maps the weights in `dir` for the already checked `args`.
    pub fn load_with(dir: &Path, args: ModelArgs) -> Result<CpuModel, EngineError> {
        let files = WeightFiles::open(dir)?;
        let a = &args;
        let (hd, kvd) = (a.heads * a.head_dim, a.kv_heads * a.head_dim);
        let embed = files.matrix(a, "model.embed_tokens", a.vocab, a.hidden)?;
        let lm_head = if a.tie || !files.contains("lm_head.weight") {
            embed.clone()
        } else {
            files.matrix(a, "lm_head", a.vocab, a.hidden)?
        };
        let optional = |name: String, len: usize| -> Result<Option<Vec<f32>>, EngineError> {
            if files.contains(&name) {
                files.vector(&name, len).map(Some)
            } else {
                Ok(None)
            }
        };
        let mut blocks = Vec::with_capacity(a.layers);
        for l in 0..a.layers {
            let p = format!("model.layers.{l}");
            let qk_norm = a.arch == Arch::Qwen3;
            let head_norm = |name: &str| -> Result<Option<Vec<f32>>, EngineError> {
                if qk_norm {
                    files
                        .vector(&format!("{p}.self_attn.{name}.weight"), a.head_dim)
                        .map(Some)
                } else {
                    Ok(None)
                }
            };
            blocks.push(Block {
                input_norm: files.vector(&format!("{p}.input_layernorm.weight"), a.hidden)?,
                attn: Attention {
                    q: files.matrix(a, &format!("{p}.self_attn.q_proj"), hd, a.hidden)?,
                    k: files.matrix(a, &format!("{p}.self_attn.k_proj"), kvd, a.hidden)?,
                    v: files.matrix(a, &format!("{p}.self_attn.v_proj"), kvd, a.hidden)?,
                    o: files.matrix(a, &format!("{p}.self_attn.o_proj"), a.hidden, hd)?,
                    q_bias: optional(format!("{p}.self_attn.q_proj.bias"), hd)?,
                    k_bias: optional(format!("{p}.self_attn.k_proj.bias"), kvd)?,
                    v_bias: optional(format!("{p}.self_attn.v_proj.bias"), kvd)?,
                    o_bias: optional(format!("{p}.self_attn.o_proj.bias"), a.hidden)?,
                    q_norm: head_norm("q_norm")?,
                    k_norm: head_norm("k_norm")?,
                },
                post_norm: files
                    .vector(&format!("{p}.post_attention_layernorm.weight"), a.hidden)?,
                mlp: Mlp {
                    gate: files.matrix(
                        a,
                        &format!("{p}.mlp.gate_proj"),
                        a.intermediate,
                        a.hidden,
                    )?,
                    up: files.matrix(a, &format!("{p}.mlp.up_proj"), a.intermediate, a.hidden)?,
                    down: files.matrix(
                        a,
                        &format!("{p}.mlp.down_proj"),
                        a.hidden,
                        a.intermediate,
                    )?,
                },
            });
        }
        let norm = files.vector("model.norm.weight", a.hidden)?;
        let weight_bytes_per_token = blocks
            .iter()
            .map(|b| {
                let (at, mlp) = (&b.attn, &b.mlp);
                [&at.q, &at.k, &at.v, &at.o, &mlp.gate, &mlp.up, &mlp.down]
                    .iter()
                    .map(|m| m.nbytes())
                    .sum::<usize>()
            })
            .sum::<usize>()
            + lm_head.nbytes();
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
                matrix_row(
                    &self.embed,
                    tok as usize,
                    &mut b.h[i * hidden..(i + 1) * hidden],
                );
            }
            b.rope.clear();
            for i in 0..t {
                rope_table(*pos + i, &a.inv_freq, &mut b.rope);
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
        b.rope.clear();
        for (i, &tok) in tokens.iter().enumerate() {
            matrix_row(
                &self.embed,
                tok as usize,
                &mut b.h[i * hidden..(i + 1) * hidden],
            );
            rope_table(positions[i], &a.inv_freq, &mut b.rope);
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
    }

    /// The last logits of `seq`.
    pub fn logits<'s>(&self, seq: &'s Sequence) -> &'s [f32] {
        &seq.logits
    }
}

impl Buffers {
    /// Sizes the buffers for `t` tokens (no allocation when the size is unchanged).
    fn size_for(&mut self, a: &ModelArgs, t: usize) {
        let (hd, kvd) = (a.heads * a.head_dim, a.kv_heads * a.head_dim);
        resize(&mut self.h, t * a.hidden);
        resize(&mut self.x, t * a.hidden);
        resize(&mut self.q, t * hd);
        resize(&mut self.k, t * kvd);
        resize(&mut self.v, t * kvd);
        resize(&mut self.attn, t * hd);
        resize(&mut self.o, t * a.hidden);
        resize(&mut self.gate, t * a.intermediate);
        resize(&mut self.up, t * a.intermediate);
    }

    /// `x = rms_norm(h) * weight`, token by token.
    fn norm_residual(&mut self, weight: &[f32], eps: f32) {
        let hidden = weight.len();
        for (h, x) in self
            .h
            .chunks_exact(hidden)
            .zip(self.x.chunks_exact_mut(hidden))
        {
            x.copy_from_slice(h);
            rms_norm(x, weight, eps);
        }
    }

    /// `h += o`: a sublayer's output joins the residual stream.
    fn add_to_residual(&mut self) {
        self.h.iter_mut().zip(&self.o).for_each(|(h, o)| *h += o);
    }
}

/// Where the rows of a forward belong: the sequences' caches for one block and each row's
/// cache and position. A prompt chunk is one sequence's consecutive rows (`Rows::Prompt`); a
/// decode batch is one row per sequence (`Rows::Decode`), each through the decode kernels so
/// that a sequence gets exactly what it gets decoding alone.
enum Rows<'c> {
    Prompt {
        t: usize,
        start: usize,
        cache: &'c mut KvCache,
    },
    Decode {
        /// Row i's position.
        positions: &'c [usize],
        /// Row i's cache.
        caches: Vec<&'c mut KvCache>,
    },
}

impl Rows<'_> {
    fn len(&self) -> usize {
        match self {
            Rows::Prompt { t, .. } => *t,
            Rows::Decode { positions, .. } => positions.len(),
        }
    }

    /// Row `i`'s position.
    fn position(&self, i: usize) -> usize {
        match self {
            Rows::Prompt { start, .. } => start + i,
            Rows::Decode { positions, .. } => positions[i],
        }
    }

    fn cache(&self, i: usize) -> &KvCache {
        match self {
            Rows::Prompt { cache, .. } => cache,
            Rows::Decode { caches, .. } => caches[i],
        }
    }

    fn cache_mut(&mut self, i: usize) -> &mut KvCache {
        match self {
            Rows::Prompt { cache, .. } => cache,
            Rows::Decode { caches, .. } => caches[i],
        }
    }

    /// `products` of the rows' inputs `xs`: one product over all rows of a prompt (its
    /// kernels), or each decode row by itself (the decode kernels, as alone).
    fn project(
        &self,
        products: &mut [(&Matrix, &mut [f32])],
        xs: &[f32],
        scratch: &mut MatmulScratch,
    ) {
        match self {
            Rows::Prompt { t, .. } => matmul_many(products, xs, *t, scratch),
            Rows::Decode { positions, .. } => {
                matmul_many_rows(products, xs, positions.len(), scratch)
            }
        }
    }
}

impl Block {
    /// The block over the rows in `b.h`, in place.
    fn forward(&self, a: &ModelArgs, rows: &mut Rows<'_>, b: &mut Buffers) {
        b.norm_residual(&self.input_norm, a.eps);
        self.attn.forward(a, rows, b);
        b.add_to_residual();
        b.norm_residual(&self.post_norm, a.eps);
        self.mlp.forward(rows, b);
        b.add_to_residual();
    }
}

/// Adds `bias` to every row of `out`.
fn add_bias(out: &mut [f32], bias: &Option<Vec<f32>>) {
    if let Some(bias) = bias {
        for row in out.chunks_exact_mut(bias.len()) {
            row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
        }
    }
}

impl Attention {
    /// Attention of the normed rows in `b.x`, writing their keys and values into their caches
    /// and the projected output into `b.o`.
    fn forward(&self, a: &ModelArgs, rows: &mut Rows<'_>, b: &mut Buffers) {
        let (hd, kvd, d) = (a.heads * a.head_dim, a.kv_heads * a.head_dim, a.head_dim);
        let t = rows.len();
        rows.project(
            &mut [
                (&self.q, &mut b.q),
                (&self.k, &mut b.k),
                (&self.v, &mut b.v),
            ],
            &b.x,
            &mut b.scratch,
        );
        add_bias(&mut b.q, &self.q_bias);
        add_bias(&mut b.k, &self.k_bias);
        add_bias(&mut b.v, &self.v_bias);
        let half = a.inv_freq.len();
        for i in 0..t {
            let table = &b.rope[i * half..(i + 1) * half];
            for head in b.q[i * hd..(i + 1) * hd].chunks_exact_mut(d) {
                if let Some(n) = &self.q_norm {
                    rms_norm(head, n, a.eps);
                }
                rope(head, table);
            }
            for head in b.k[i * kvd..(i + 1) * kvd].chunks_exact_mut(d) {
                if let Some(n) = &self.k_norm {
                    rms_norm(head, n, a.eps);
                }
                rope(head, table);
            }
        }
        for i in 0..t {
            let pos = rows.position(i);
            rows.cache_mut(i).write(
                pos,
                &b.k[i * kvd..(i + 1) * kvd],
                &b.v[i * kvd..(i + 1) * kvd],
            );
        }
        let scale = 1.0 / (d as f32).sqrt();
        let group = a.heads / a.kv_heads;
        let (rows, q) = (&*rows, &b.q);
        // One task per (row, kv head): causal attention of the query heads that share the kv
        // head; on the pool when there is enough of it to pay for the region.
        let width = group * d;
        let attend = |first: usize, out: &mut [f32], scores: &mut Vec<f32>| {
            let task = first / width;
            let (i, kvh) = (task / a.kv_heads, task % a.kv_heads);
            let qg = &q[i * hd + kvh * width..i * hd + (kvh + 1) * width];
            attention::attend(
                rows.cache(i),
                kvh,
                rows.position(i) + 1,
                qg,
                scale,
                out,
                scores,
            );
        };
        let work: usize = (0..t).map(|i| rows.position(i) + 1).sum::<usize>() * hd;
        if work < (1 << 14) {
            // A short context: on this thread, one reused score buffer.
            let scores = &mut b.scores;
            for (task, out) in b.attn.chunks_mut(width).enumerate() {
                attend(task * width, out, scores);
            }
        } else {
            thread_local! {
                static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
            }
            super::pool::pool().for_each_chunk(&mut b.attn, width, |first, out| {
                SCORES.with_borrow_mut(|scores| attend(first, out, scores))
            });
        }
        rows.project(&mut [(&self.o, &mut b.o)], &b.attn, &mut b.scratch);
        add_bias(&mut b.o, &self.o_bias);
    }
}

impl Mlp {
    /// `down(silu(gate(x)) * up(x))` of the normed rows in `b.x`, into `b.o`.
    fn forward(&self, rows: &Rows<'_>, b: &mut Buffers) {
        rows.project(
            &mut [(&self.gate, &mut b.gate), (&self.up, &mut b.up)],
            &b.x,
            &mut b.scratch,
        );
        silu_mul(&mut b.gate, &b.up);
        rows.project(&mut [(&self.down, &mut b.o)], &b.gate, &mut b.scratch);
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

    fn rewind(&mut self, position: usize) {
        self.seq.rewind(position);
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
        seqs[0].rewind(2);
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
