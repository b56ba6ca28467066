//! One transformer block of every family `mlxk run` runs, as mlx-lm computes it: attention
//! (GQA over a KV cache, RoPE, optional biases, q/k norms, a sliding window, soft-capped
//! scores) and a feed-forward part (a gated MLP, or routed experts: [`super::moe`]), with the
//! family's norms around them. The per-forward buffers and the rows a forward runs over live
//! here too; the model ([`super::model`]) owns the blocks and the sequences.

use std::cell::RefCell;

use super::args::{Activation, ModelArgs, NormPlacement, QkNorm};
use super::attention::{self, KvCache, Scoring};
use super::kernels::{
    gelu_tanh_mul, matmul_many, matmul_many_rows, rms_norm, rope, silu_mul, swiglu_oai_mul,
    MatmulScratch,
};
use super::moe::Moe;
use super::weights::{Matrix, WeightFiles};
use super::EngineError;

/// Self-attention of one block: projections (with qwen2's biases, q/k norms), RoPE, GQA over
/// the block's KV cache (all of it, or a sliding window of it), output projection.
pub(crate) struct Attention {
    q: Matrix,
    k: Matrix,
    v: Matrix,
    o: Matrix,
    q_bias: Option<Vec<f32>>,
    k_bias: Option<Vec<f32>>,
    v_bias: Option<Vec<f32>>,
    o_bias: Option<Vec<f32>>,
    /// Per head (`head_dim`) or over the whole projection, as [`ModelArgs::qk_norm`] says.
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    /// A query sees the last `window` positions (itself included); `None`: all before it.
    window: Option<usize>,
    /// The index of this layer's RoPE in [`ModelArgs::ropes`]; `None`: no rotation.
    rope: Option<usize>,
    /// gpt-oss: per query head, a logit that joins the softmax.
    sinks: Option<Vec<f32>>,
}

/// The gated MLP: `down(act(gate(x)) · up(x))`, with optional biases (granite's mlp_bias).
pub(crate) struct Mlp {
    pub(crate) gate: Matrix,
    pub(crate) up: Matrix,
    pub(crate) down: Matrix,
    gate_bias: Option<Vec<f32>>,
    up_bias: Option<Vec<f32>>,
    down_bias: Option<Vec<f32>>,
}

/// A block's feed-forward part.
pub(crate) enum FeedForward {
    Dense(Box<Mlp>),
    Experts(Box<Moe>),
}

/// One transformer block: attention, then the feed-forward part, each added to the residual.
/// `pre[i]` / `post[i]` are the norms before / after sublayer i (0 attention, 1 feed-forward):
/// llama-style blocks have the two pre-norms, gemma's all four, olmo2's the two post-norms.
pub(crate) struct Block {
    pre: [Option<Vec<f32>>; 2],
    post: [Option<Vec<f32>>; 2],
    pub(crate) attn: Attention,
    pub(crate) ffn: FeedForward,
}

/// Per-forward buffers, kept between calls so that decoding allocates nothing once warm.
#[derive(Default)]
pub(crate) struct Buffers {
    pub(crate) h: Vec<f32>,
    pub(crate) x: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    /// Attention outputs by kv head (`[kv head][row][group × dim]`, each head's rows padded
    /// to whole runs), and one task's query rows gathered (see `Attention::forward`).
    attn_by_kv: Vec<f32>,
    q_rows: Vec<f32>,
    pub(crate) o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    pub(crate) last: Vec<f32>,
    /// The logits of a step's decode rows (row-major).
    pub(crate) logits: Vec<f32>,
    scores: Vec<f32>,
    /// Per RoPE of the model: (cos, sin) per token and rotated pair.
    pub(crate) ropes: Vec<Vec<(f32, f32)>>,
    /// Routed experts: router logits, gathered inputs and outputs (see [`super::moe`]).
    pub(crate) router: Vec<f32>,
    pub(crate) expert_x: Vec<f32>,
    pub(crate) expert_gate: Vec<f32>,
    pub(crate) expert_up: Vec<f32>,
    pub(crate) expert_y: Vec<f32>,
    /// Each row's chosen experts and their weights, and the router's probabilities of one
    /// row (kept: a decode step allocates nothing for routing).
    pub(crate) routes: Vec<Vec<(usize, f32)>>,
    pub(crate) route_probs: Vec<f32>,
    pub(crate) scratch: MatmulScratch,
}

pub(crate) fn resize(v: &mut Vec<f32>, n: usize) {
    if v.len() != n {
        v.resize(n, 0.0);
    }
}

impl Buffers {
    /// Sizes the buffers for `t` tokens (no allocation when the size is unchanged).
    pub(crate) fn size_for(&mut self, a: &ModelArgs, t: usize) {
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
        self.ropes.resize_with(a.ropes.len(), Vec::new);
    }

    /// `x = rms_norm(h) * weight`, token by token.
    pub(crate) fn norm_residual(&mut self, weight: &[f32], eps: f32) {
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

    /// `h += o` (times granite's residual multiplier): a sublayer's output joins the residual.
    fn add_to_residual(&mut self, scale: Option<f32>) {
        match scale {
            None => self.h.iter_mut().zip(&self.o).for_each(|(h, o)| *h += o),
            Some(s) => self
                .h
                .iter_mut()
                .zip(&self.o)
                .for_each(|(h, o)| *h += o * s),
        }
    }

    /// Appends the RoPE tables of a token at `pos`, one per RoPE of the model.
    pub(crate) fn push_rope(&mut self, a: &ModelArgs, pos: usize) {
        for (table, r) in self.ropes.iter_mut().zip(&a.ropes) {
            super::kernels::rope_table(pos, r, table);
        }
    }
}

/// Where the rows of a forward belong: the sequences' caches for one block and each row's
/// cache and position. A prompt chunk is one sequence's consecutive rows (`Rows::Prompt`); a
/// decode batch is one row per sequence (`Rows::Decode`), each through the decode kernels so
/// that a sequence gets exactly what it gets decoding alone.
pub(crate) enum Rows<'c> {
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
    pub(crate) fn len(&self) -> usize {
        match self {
            Rows::Prompt { t, .. } => *t,
            Rows::Decode { positions, .. } => positions.len(),
        }
    }

    /// Each row by itself through the decode kernels (a decode batch, or one decoded token):
    /// what must give a sequence the same numbers whether it runs alone or batched.
    pub(crate) fn row_by_row(&self) -> bool {
        matches!(self, Rows::Decode { .. }) || self.len() == 1
    }

    /// Row `i`'s position.
    fn position(&self, i: usize) -> usize {
        match self {
            Rows::Prompt { start, .. } => start + i,
            Rows::Decode { positions, .. } => positions[i],
        }
    }

    /// Room in every row's cache for the positions this forward writes.
    fn prepare(&mut self) {
        match self {
            Rows::Prompt { t, start, cache } => cache.prepare(*start, *t),
            Rows::Decode { positions, caches } => {
                for (cache, &pos) in caches.iter_mut().zip(positions.iter()) {
                    cache.prepare(pos, 1);
                }
            }
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
    pub(crate) fn project(
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

/// A norm weight as the family applies it: gemma stores `w - 1` and multiplies by `1 + w`.
pub(crate) fn norm_weight(
    files: &WeightFiles,
    a: &ModelArgs,
    name: &str,
    len: usize,
) -> Result<Vec<f32>, EngineError> {
    let mut w = files.vector(name, len)?;
    if a.norm_shift {
        w.iter_mut().for_each(|v| *v += 1.0);
    }
    Ok(w)
}

fn optional(
    files: &WeightFiles,
    name: String,
    len: usize,
) -> Result<Option<Vec<f32>>, EngineError> {
    if files.contains(&name) {
        files.vector(&name, len).map(Some)
    } else {
        Ok(None)
    }
}

impl Block {
    /// Layer `l`'s weights (`p` is its tensor prefix, `model.layers.{l}`).
    pub(crate) fn load(
        files: &WeightFiles,
        a: &ModelArgs,
        l: usize,
        p: &str,
    ) -> Result<Block, EngineError> {
        let norm = |name: &str| norm_weight(files, a, &format!("{p}.{name}.weight"), a.hidden);
        let (pre, post) = match a.norm {
            NormPlacement::Pre => (
                [
                    Some(norm("input_layernorm")?),
                    Some(norm("post_attention_layernorm")?),
                ],
                [None, None],
            ),
            NormPlacement::Sandwich => (
                [
                    Some(norm("input_layernorm")?),
                    Some(norm("pre_feedforward_layernorm")?),
                ],
                [
                    Some(norm("post_attention_layernorm")?),
                    Some(norm("post_feedforward_layernorm")?),
                ],
            ),
            NormPlacement::Post => (
                [None, None],
                [
                    Some(norm("post_attention_layernorm")?),
                    Some(norm("post_feedforward_layernorm")?),
                ],
            ),
        };
        let ffn = if a.layer[l].moe {
            FeedForward::Experts(Box::new(Moe::load(files, a, p)?))
        } else {
            FeedForward::Dense(Box::new(Mlp::load(
                files,
                a,
                &format!("{p}.mlp"),
                a.intermediate,
            )?))
        };
        Ok(Block {
            pre,
            post,
            attn: Attention::load(files, a, l, &format!("{p}.self_attn"))?,
            ffn,
        })
    }

    /// Bytes of weights one token reads in this block (for experts: the routed ones).
    pub(crate) fn bytes_per_token(&self) -> usize {
        let at = &self.attn;
        let attn: usize = [&at.q, &at.k, &at.v, &at.o]
            .iter()
            .map(|m| m.nbytes())
            .sum();
        attn + match &self.ffn {
            FeedForward::Dense(m) => m.nbytes(),
            FeedForward::Experts(moe) => moe.bytes_per_token(),
        }
    }

    /// The block over the rows in `b.h`, in place.
    pub(crate) fn forward(&self, a: &ModelArgs, rows: &mut Rows<'_>, b: &mut Buffers) {
        for sublayer in 0..2 {
            match &self.pre[sublayer] {
                Some(w) => b.norm_residual(w, a.eps),
                None => b.x.copy_from_slice(&b.h),
            }
            if sublayer == 0 {
                self.attn.forward(a, rows, b);
            } else {
                match &self.ffn {
                    FeedForward::Dense(mlp) => mlp.forward(a, rows, b),
                    FeedForward::Experts(moe) => moe.forward(a, rows, b),
                }
            }
            if let Some(w) = &self.post[sublayer] {
                for o in b.o.chunks_exact_mut(a.hidden) {
                    rms_norm(o, w, a.eps);
                }
            }
            b.add_to_residual(a.residual_scale);
        }
    }
}

/// Adds `bias` to every row of `out`.
pub(crate) fn add_bias(out: &mut [f32], bias: &Option<Vec<f32>>) {
    if let Some(bias) = bias {
        for row in out.chunks_exact_mut(bias.len()) {
            row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
        }
    }
}

impl Attention {
    fn load(
        files: &WeightFiles,
        a: &ModelArgs,
        l: usize,
        p: &str,
    ) -> Result<Attention, EngineError> {
        let (hd, kvd) = (a.heads * a.head_dim, a.kv_heads * a.head_dim);
        // phi3 stores q, k and v as one matrix (rows q, then k, then v).
        let (q, k, v) = if files.contains(&format!("{p}.qkv_proj.weight")) {
            let qkv = files.matrix(a, &format!("{p}.qkv_proj"), hd + 2 * kvd, a.hidden)?;
            (
                qkv.row_range(0, hd),
                qkv.row_range(hd, kvd),
                qkv.row_range(hd + kvd, kvd),
            )
        } else {
            (
                files.matrix(a, &format!("{p}.q_proj"), hd, a.hidden)?,
                files.matrix(a, &format!("{p}.k_proj"), kvd, a.hidden)?,
                files.matrix(a, &format!("{p}.v_proj"), kvd, a.hidden)?,
            )
        };
        let (q_norm_len, k_norm_len) = match a.qk_norm {
            QkNorm::None => (0, 0),
            QkNorm::PerHead => (a.head_dim, a.head_dim),
            QkNorm::Whole => (hd, kvd),
        };
        let qk_norm = |name: &str, len: usize| -> Result<Option<Vec<f32>>, EngineError> {
            if len == 0 {
                return Ok(None);
            }
            norm_weight(files, a, &format!("{p}.{name}.weight"), len).map(Some)
        };
        Ok(Attention {
            q,
            k,
            v,
            o: files.matrix(a, &format!("{p}.o_proj"), a.hidden, hd)?,
            q_bias: optional(files, format!("{p}.q_proj.bias"), hd)?,
            k_bias: optional(files, format!("{p}.k_proj.bias"), kvd)?,
            v_bias: optional(files, format!("{p}.v_proj.bias"), kvd)?,
            o_bias: optional(files, format!("{p}.o_proj.bias"), a.hidden)?,
            q_norm: qk_norm("q_norm", q_norm_len)?,
            k_norm: qk_norm("k_norm", k_norm_len)?,
            window: a.layer[l].window,
            rope: a.layer[l].rope,
            sinks: if a.sinks {
                Some(files.vector(&format!("{p}.sinks"), a.heads)?)
            } else {
                None
            },
        })
    }

    /// Normalizes (per head or whole, per `a.qk_norm`) and rotates the `heads` heads of one
    /// row of queries or keys.
    fn norm_and_rotate(
        &self,
        a: &ModelArgs,
        row: &mut [f32],
        norm: &Option<Vec<f32>>,
        table: Option<&[(f32, f32)]>,
    ) {
        if let (QkNorm::Whole, Some(n)) = (a.qk_norm, norm) {
            rms_norm(row, n, a.eps);
        }
        for head in row.chunks_exact_mut(a.head_dim) {
            if let (QkNorm::PerHead, Some(n)) = (a.qk_norm, norm) {
                rms_norm(head, n, a.eps);
            }
            if let Some(table) = table {
                rope(head, table);
            }
        }
    }

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
        for i in 0..t {
            let table = self.rope.map(|r| {
                let half = a.ropes[r].inv_freq.len();
                &b.ropes[r][i * half..(i + 1) * half]
            });
            self.norm_and_rotate(a, &mut b.q[i * hd..(i + 1) * hd], &self.q_norm, table);
            self.norm_and_rotate(a, &mut b.k[i * kvd..(i + 1) * kvd], &self.k_norm, table);
        }
        rows.prepare();
        for i in 0..t {
            let pos = rows.position(i);
            rows.cache_mut(i).write(
                pos,
                &b.k[i * kvd..(i + 1) * kvd],
                &b.v[i * kvd..(i + 1) * kvd],
            );
        }
        let window = self.window;
        let seen = |pos: usize| {
            let end = pos + 1;
            window.map_or(0, |w| end.saturating_sub(w))..end
        };
        let group = a.heads / a.kv_heads;
        let sinks = self.sinks.as_deref();
        let scoring = |kvh: usize| Scoring {
            scale: a.attn_scale,
            softcap: a.attn_softcap,
            sinks: sinks.map(|s| &s[kvh * group..(kvh + 1) * group]),
        };
        let width = group * d;
        let work: usize = (0..t).map(|i| seen(rows.position(i)).len()).sum::<usize>() * hd;
        // One task per kv head and run of rows: a prompt's consecutive rows are scored
        // together (each key read once for all of them), a decode batch's rows (each its own
        // sequence and cache) one at a time. The outputs go into a kv-head-major buffer, each
        // head's rows padded to whole runs so that no task straddles two heads, then into
        // `attn`'s row-major order.
        let together = match rows {
            Rows::Prompt { .. } => attention::rows_per_call(group),
            Rows::Decode { .. } => 1,
        };
        let run = together * width;
        let per_head = t.div_ceil(together) * run;
        resize(&mut b.attn_by_kv, a.kv_heads * per_head);
        let (rows, q) = (&*rows, &b.q);
        let attend_rows =
            |first: usize, out: &mut [f32], q_rows: &mut Vec<f32>, scores: &mut Vec<f32>| {
                let (kvh, r0) = (first / per_head, first % per_head / width);
                let n = together.min(t - r0);
                let ranges: [std::ops::Range<usize>; attention::MAX_ROWS_PER_CALL] =
                    std::array::from_fn(|r| {
                        if r < n {
                            seen(rows.position(r0 + r))
                        } else {
                            0..0
                        }
                    });
                q_rows.clear();
                for r in r0..r0 + n {
                    q_rows.extend_from_slice(&q[r * hd + kvh * width..r * hd + (kvh + 1) * width]);
                }
                // A run's rows share one cache (a prompt's); a decode run is one row.
                let cache = rows.cache(r0);
                attention::attend(
                    cache,
                    kvh,
                    &ranges[..n],
                    q_rows,
                    scoring(kvh),
                    &mut out[..n * width],
                    scores,
                );
            };
        if work < (1 << 14) {
            // A short context: on this thread, one reused set of scratch buffers.
            let (q_rows, scores) = (&mut b.q_rows, &mut b.scores);
            for (task, out) in b.attn_by_kv.chunks_mut(run).enumerate() {
                attend_rows(task * run, out, q_rows, scores);
            }
        } else {
            thread_local! {
                static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> =
                    const { RefCell::new((Vec::new(), Vec::new())) };
            }
            super::pool::pool().for_each_chunk(&mut b.attn_by_kv, run, |first, out| {
                SCRATCH.with_borrow_mut(|(q_rows, scores)| attend_rows(first, out, q_rows, scores))
            });
        }
        for (kvh, head) in b.attn_by_kv.chunks(per_head).enumerate() {
            for (r, row) in head.chunks(width).take(t).enumerate() {
                b.attn[r * hd + kvh * width..r * hd + (kvh + 1) * width].copy_from_slice(row);
            }
        }
        rows.project(&mut [(&self.o, &mut b.o)], &b.attn, &mut b.scratch);
        add_bias(&mut b.o, &self.o_bias);
    }
}

impl Mlp {
    /// The MLP under `p` (`{p}.gate_proj` …, or phi3's fused `{p}.gate_up_proj`: the gate's
    /// rows, then the up projection's) with `intermediate` hidden units.
    pub(crate) fn load(
        files: &WeightFiles,
        a: &ModelArgs,
        p: &str,
        intermediate: usize,
    ) -> Result<Mlp, EngineError> {
        let (gate, up) = if files.contains(&format!("{p}.gate_up_proj.weight")) {
            let fused =
                files.matrix(a, &format!("{p}.gate_up_proj"), 2 * intermediate, a.hidden)?;
            (
                fused.row_range(0, intermediate),
                fused.row_range(intermediate, intermediate),
            )
        } else {
            (
                files.matrix(a, &format!("{p}.gate_proj"), intermediate, a.hidden)?,
                files.matrix(a, &format!("{p}.up_proj"), intermediate, a.hidden)?,
            )
        };
        Ok(Mlp {
            gate,
            up,
            down: files.matrix(a, &format!("{p}.down_proj"), a.hidden, intermediate)?,
            gate_bias: optional(files, format!("{p}.gate_proj.bias"), intermediate)?,
            up_bias: optional(files, format!("{p}.up_proj.bias"), intermediate)?,
            down_bias: optional(files, format!("{p}.down_proj.bias"), a.hidden)?,
        })
    }

    /// An MLP made of already loaded matrices (one routed expert) and its biases, if any
    /// (gate, up, down).
    pub(crate) fn of(gate: Matrix, up: Matrix, down: Matrix, biases: [Option<Vec<f32>>; 3]) -> Mlp {
        let [gate_bias, up_bias, down_bias] = biases;
        Mlp {
            gate,
            up,
            down,
            gate_bias,
            up_bias,
            down_bias,
        }
    }

    /// The expert's biases, added to its products' outputs (gate, up, down).
    pub(crate) fn biases(&self) -> [&Option<Vec<f32>>; 3] {
        [&self.gate_bias, &self.up_bias, &self.down_bias]
    }

    pub(crate) fn nbytes(&self) -> usize {
        self.gate.nbytes() + self.up.nbytes() + self.down.nbytes()
    }

    /// `down(act(gate(x)) * up(x))` of the normed rows in `b.x`, into `b.o`.
    fn forward(&self, a: &ModelArgs, rows: &Rows<'_>, b: &mut Buffers) {
        rows.project(
            &mut [(&self.gate, &mut b.gate), (&self.up, &mut b.up)],
            &b.x,
            &mut b.scratch,
        );
        add_bias(&mut b.gate, &self.gate_bias);
        add_bias(&mut b.up, &self.up_bias);
        activate(a.act, &mut b.gate, &b.up);
        rows.project(&mut [(&self.down, &mut b.o)], &b.gate, &mut b.scratch);
        add_bias(&mut b.o, &self.down_bias);
    }
}

/// `gate = act(gate) * up`; a batch's or a prompt's rows on the pool (on one thread, a
/// decode step of 8 sequences spent 2% of its time here with the other core waiting).
pub(crate) fn activate(act: Activation, gate: &mut [f32], up: &[f32]) {
    /// Elements below which one thread is quicker than starting a region.
    const PARALLEL_FROM: usize = 1 << 14;
    const CHUNK: usize = 4096;
    let f = match act {
        Activation::Silu => silu_mul,
        Activation::GeluTanh => gelu_tanh_mul,
        Activation::SwigluOai => swiglu_oai_mul,
    };
    if gate.len() < PARALLEL_FROM {
        f(gate, up);
        return;
    }
    super::pool::pool().for_each_chunk(gate, CHUNK, |first, g| f(g, &up[first..first + g.len()]));
}
