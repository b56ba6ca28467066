//! The llama-family transformer (llama / mistral, qwen2 with q/k/v biases, qwen3 with q/k RMS
//! norms) as mlx-lm computes it: RMSNorm, GQA attention with RoPE and a KV cache, SiLU MLP,
//! tied or separate lm_head. Activations in f32; weights stay as mapped.

use std::cell::RefCell;
use std::path::Path;

use super::args::{Arch, ModelArgs};
use super::attention::{self, KvCache};
use super::kernels::{
    matmul, matmul_many, matrix_row, rms_norm, rope, rope_table, silu_mul, MatmulScratch,
};
use super::weights::{Matrix, WeightFiles};
use super::{Engine, EngineError};

struct Layer {
    input_norm: Vec<f32>,
    post_norm: Vec<f32>,
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
    gate: Matrix,
    up: Matrix,
    down: Matrix,
    cache: KvCache,
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
    scores: Vec<f32>,
    /// (cos, sin) per token and frequency.
    rope: Vec<(f32, f32)>,
    scratch: MatmulScratch,
}

pub struct CpuEngine {
    args: ModelArgs,
    embed: Matrix,
    lm_head: Matrix,
    norm: Vec<f32>,
    layers: Vec<Layer>,
    pos: usize,
    buf: Buffers,
    logits: Vec<f32>,
    /// Bytes of weights one decode step reads.
    pub weight_bytes_per_token: usize,
    /// Bytes of all mapped tensor data.
    pub weight_bytes: u64,
}

fn resize(v: &mut Vec<f32>, n: usize) {
    if v.len() != n {
        v.resize(n, 0.0);
    }
}

impl CpuEngine {
    /// Loads the model in `dir` (config checked first, weights mapped).
    pub fn load(dir: &Path) -> Result<CpuEngine, EngineError> {
        CpuEngine::load_with(dir, ModelArgs::load(dir)?)
    }

    /// Loads the weights in `dir` for the already checked `args`.
    pub fn load_with(dir: &Path, args: ModelArgs) -> Result<CpuEngine, EngineError> {
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
        let mut layers = Vec::with_capacity(a.layers);
        for l in 0..a.layers {
            let p = format!("model.layers.{l}");
            let qk_norm = a.arch == Arch::Qwen3;
            layers.push(Layer {
                input_norm: files.vector(&format!("{p}.input_layernorm.weight"), a.hidden)?,
                post_norm: files
                    .vector(&format!("{p}.post_attention_layernorm.weight"), a.hidden)?,
                q: files.matrix(a, &format!("{p}.self_attn.q_proj"), hd, a.hidden)?,
                k: files.matrix(a, &format!("{p}.self_attn.k_proj"), kvd, a.hidden)?,
                v: files.matrix(a, &format!("{p}.self_attn.v_proj"), kvd, a.hidden)?,
                o: files.matrix(a, &format!("{p}.self_attn.o_proj"), a.hidden, hd)?,
                q_bias: optional(format!("{p}.self_attn.q_proj.bias"), hd)?,
                k_bias: optional(format!("{p}.self_attn.k_proj.bias"), kvd)?,
                v_bias: optional(format!("{p}.self_attn.v_proj.bias"), kvd)?,
                o_bias: optional(format!("{p}.self_attn.o_proj.bias"), a.hidden)?,
                q_norm: if qk_norm {
                    Some(files.vector(&format!("{p}.self_attn.q_norm.weight"), a.head_dim)?)
                } else {
                    None
                },
                k_norm: if qk_norm {
                    Some(files.vector(&format!("{p}.self_attn.k_norm.weight"), a.head_dim)?)
                } else {
                    None
                },
                gate: files.matrix(a, &format!("{p}.mlp.gate_proj"), a.intermediate, a.hidden)?,
                up: files.matrix(a, &format!("{p}.mlp.up_proj"), a.intermediate, a.hidden)?,
                down: files.matrix(a, &format!("{p}.mlp.down_proj"), a.hidden, a.intermediate)?,
                cache: KvCache::new(a.kv_heads, a.head_dim),
            });
        }
        let norm = files.vector("model.norm.weight", a.hidden)?;
        let weight_bytes_per_token = layers
            .iter()
            .map(|l| {
                [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]
                    .iter()
                    .map(|m| m.nbytes())
                    .sum::<usize>()
            })
            .sum::<usize>()
            + lm_head.nbytes();
        Ok(CpuEngine {
            weight_bytes: files.total_bytes,
            logits: vec![0.0; args.vocab],
            args,
            embed,
            lm_head,
            norm,
            layers,
            pos: 0,
            buf: Buffers::default(),
            weight_bytes_per_token,
        })
    }

    pub fn args(&self) -> &ModelArgs {
        &self.args
    }

    /// Runs `tokens` at positions `pos..`, leaving the last token's logits in `self.logits`.
    fn forward(&mut self, tokens: &[u32]) -> Result<(), EngineError> {
        let a = &self.args;
        let t = tokens.len();
        if t == 0 {
            return Err(EngineError::Input("no tokens to run".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= a.vocab) {
            return Err(EngineError::Input(format!(
                "token id {bad} is outside the vocabulary ({} entries)",
                a.vocab
            )));
        }
        let (hidden, hd, kvd, d) = (
            a.hidden,
            a.heads * a.head_dim,
            a.kv_heads * a.head_dim,
            a.head_dim,
        );
        let b = &mut self.buf;
        resize(&mut b.h, t * hidden);
        resize(&mut b.x, t * hidden);
        resize(&mut b.q, t * hd);
        resize(&mut b.k, t * kvd);
        resize(&mut b.v, t * kvd);
        resize(&mut b.attn, t * hd);
        resize(&mut b.o, t * hidden);
        resize(&mut b.gate, t * a.intermediate);
        resize(&mut b.up, t * a.intermediate);
        for (i, &tok) in tokens.iter().enumerate() {
            matrix_row(
                &self.embed,
                tok as usize,
                &mut b.h[i * hidden..(i + 1) * hidden],
            );
        }
        let start = self.pos;
        let half = a.inv_freq.len();
        b.rope.clear();
        for i in 0..t {
            rope_table(start + i, &a.inv_freq, &mut b.rope);
        }
        let scale = 1.0 / (d as f32).sqrt();
        let group = a.heads / a.kv_heads;
        for layer in &mut self.layers {
            for i in 0..t {
                let (h, x) = (
                    &b.h[i * hidden..(i + 1) * hidden],
                    &mut b.x[i * hidden..(i + 1) * hidden],
                );
                x.copy_from_slice(h);
                rms_norm(x, &layer.input_norm, a.eps);
            }
            matmul_many(
                &mut [
                    (&layer.q, &mut b.q),
                    (&layer.k, &mut b.k),
                    (&layer.v, &mut b.v),
                ],
                &b.x,
                t,
                &mut b.scratch,
            );
            for (out, bias) in [
                (&mut b.q, &layer.q_bias),
                (&mut b.k, &layer.k_bias),
                (&mut b.v, &layer.v_bias),
            ] {
                if let Some(bias) = bias {
                    for row in out.chunks_exact_mut(bias.len()) {
                        row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
                    }
                }
            }
            for i in 0..t {
                let table = &b.rope[i * half..(i + 1) * half];
                for head in b.q[i * hd..(i + 1) * hd].chunks_exact_mut(d) {
                    if let Some(n) = &layer.q_norm {
                        rms_norm(head, n, a.eps);
                    }
                    rope(head, table);
                }
                for head in b.k[i * kvd..(i + 1) * kvd].chunks_exact_mut(d) {
                    if let Some(n) = &layer.k_norm {
                        rms_norm(head, n, a.eps);
                    }
                    rope(head, table);
                }
            }
            for i in 0..t {
                layer.cache.write(
                    start + i,
                    &b.k[i * kvd..(i + 1) * kvd],
                    &b.v[i * kvd..(i + 1) * kvd],
                );
            }
            let (cache, q) = (&layer.cache, &b.q);
            // One task per (token, kv head): causal attention of the query heads that share
            // the kv head; on the pool when there is enough of it to pay for the region.
            let width = group * d;
            let attend = |first: usize, out: &mut [f32], scores: &mut Vec<f32>| {
                let task = first / width;
                let (i, kvh) = (task / a.kv_heads, task % a.kv_heads);
                let qg = &q[i * hd + kvh * width..i * hd + (kvh + 1) * width];
                attention::attend(cache, kvh, start + i + 1, qg, scale, out, scores);
            };
            let work = t * (start + t) * hd;
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
            matmul(&layer.o, &b.attn, t, &mut b.o, &mut b.scratch);
            if let Some(bias) = &layer.o_bias {
                for row in b.o.chunks_exact_mut(hidden) {
                    row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
                }
            }
            b.h.iter_mut().zip(&b.o).for_each(|(h, o)| *h += o);
            for i in 0..t {
                let (h, x) = (
                    &b.h[i * hidden..(i + 1) * hidden],
                    &mut b.x[i * hidden..(i + 1) * hidden],
                );
                x.copy_from_slice(h);
                rms_norm(x, &layer.post_norm, a.eps);
            }
            matmul_many(
                &mut [(&layer.gate, &mut b.gate), (&layer.up, &mut b.up)],
                &b.x,
                t,
                &mut b.scratch,
            );
            silu_mul(&mut b.gate, &b.up);
            matmul(&layer.down, &b.gate, t, &mut b.o, &mut b.scratch);
            b.h.iter_mut().zip(&b.o).for_each(|(h, o)| *h += o);
        }
        resize(&mut b.last, hidden);
        b.last.copy_from_slice(&b.h[(t - 1) * hidden..t * hidden]);
        rms_norm(&mut b.last, &self.norm, a.eps);
        matmul(&self.lm_head, &b.last, 1, &mut self.logits, &mut b.scratch);
        self.pos += t;
        Ok(())
    }
}

impl Engine for CpuEngine {
    fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32], EngineError> {
        self.forward(tokens)?;
        Ok(&self.logits)
    }

    fn decode(&mut self, token: u32) -> Result<&[f32], EngineError> {
        self.forward(&[token])?;
        Ok(&self.logits)
    }

    fn rewind(&mut self, position: usize) {
        self.pos = self.pos.min(position);
    }

    fn position(&self) -> usize {
        self.pos
    }

    fn reserve(&mut self, positions: usize) {
        for l in &mut self.layers {
            l.cache.reserve(positions);
        }
    }

    fn vocab_size(&self) -> usize {
        self.args.vocab
    }
}
