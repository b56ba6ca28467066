//! Routed experts (mixtral, qwen3_moe) as mlx-lm computes them: a router scores every expert
//! per token, the top k are run and their outputs summed with the router's weights. The
//! experts are stored stacked (`switch_mlp.{gate,up,down}_proj`, `[experts, rows, cols]`) and
//! each is a view of its rows of the mapped tensor, so a token reads only the experts it
//! chose. A prompt's tokens are grouped by expert (each expert's rows read once for all the
//! tokens that chose it); a decoded token runs its experts through the decode kernels, the
//! same way whether it decodes alone or in a batch.

use super::args::{ModelArgs, MoeArgs, Routing};
use super::block::{activate, add_bias, resize, Buffers, Mlp, Rows};
use super::kernels::{exp, matmul, matmul_many};
use super::weights::{Matrix, WeightFiles};
use super::EngineError;

pub(crate) struct Moe {
    router: Matrix,
    /// gpt-oss's router has a bias.
    router_bias: Option<Vec<f32>>,
    experts: Vec<Mlp>,
    args: MoeArgs,
}

/// Where a family keeps its experts under a layer's prefix: the block, the router, the
/// stacked experts, and the per-expert names when the weights are not stacked (checkpoints as
/// Hugging Face ships them).
struct Layout {
    block: &'static str,
    router: &'static str,
    stacked: &'static str,
    per_expert: [&'static str; 3],
}

impl Moe {
    pub(crate) fn load(files: &WeightFiles, a: &ModelArgs, p: &str) -> Result<Moe, EngineError> {
        let m = a.moe.ok_or_else(|| EngineError::Model {
            path: std::path::PathBuf::new(),
            reason: "a routed layer without expert settings".into(),
        })?;
        use super::args::Arch;
        let layout = match a.arch {
            Arch::Mixtral => Layout {
                block: "block_sparse_moe",
                router: "gate",
                stacked: "switch_mlp",
                per_expert: ["w1", "w3", "w2"],
            },
            Arch::GptOss => Layout {
                block: "mlp",
                router: "router",
                stacked: "experts",
                per_expert: ["gate_proj", "up_proj", "down_proj"],
            },
            _ => Layout {
                block: "mlp",
                router: "gate",
                stacked: "switch_mlp",
                per_expert: ["gate_proj", "up_proj", "down_proj"],
            },
        };
        let base = format!("{p}.{}", layout.block);
        let router_name = format!("{base}.{}", layout.router);
        let router = files.matrix(a, &router_name, m.experts, a.hidden)?;
        let router_bias = if files.contains(&format!("{router_name}.bias")) {
            Some(files.vector(&format!("{router_name}.bias"), m.experts)?)
        } else {
            None
        };
        let (h, i, n) = (a.hidden, m.intermediate, m.experts);
        let stacked = format!("{base}.{}", layout.stacked);
        let experts = if files.contains(&format!("{stacked}.gate_proj.weight")) {
            let sw = |name: &str, rows, cols| {
                files.stacked(a, &format!("{stacked}.{name}"), n, rows, cols)
            };
            let (gates, ups, downs) = (
                sw("gate_proj", i, h)?,
                sw("up_proj", i, h)?,
                sw("down_proj", h, i)?,
            );
            // Stacked biases (gpt-oss): `[experts, rows]`, one row per expert.
            let bias = |name: &str, len: usize| -> Result<Vec<Option<Vec<f32>>>, EngineError> {
                let key = format!("{stacked}.{name}.bias");
                if !files.contains(&key) {
                    return Ok(vec![None; n]);
                }
                let all = files.vector(&key, n * len)?;
                Ok(all.chunks_exact(len).map(|c| Some(c.to_vec())).collect())
            };
            let biases = bias("gate_proj", i)?
                .into_iter()
                .zip(bias("up_proj", i)?)
                .zip(bias("down_proj", h)?);
            gates
                .into_iter()
                .zip(ups)
                .zip(downs)
                .zip(biases)
                .map(|(((g, u), d), ((gb, ub), db))| Mlp::of(g, u, d, [gb, ub, db]))
                .collect()
        } else {
            let [g, u, d] = layout.per_expert;
            (0..n)
                .map(|e| {
                    let name = |w: &str| format!("{base}.experts.{e}.{w}");
                    Ok(Mlp::of(
                        files.matrix(a, &name(g), i, h)?,
                        files.matrix(a, &name(u), i, h)?,
                        files.matrix(a, &name(d), h, i)?,
                        [None, None, None],
                    ))
                })
                .collect::<Result<Vec<_>, EngineError>>()?
        };
        Ok(Moe {
            router,
            router_bias,
            experts,
            args: m,
        })
    }

    /// The router plus `top_k` experts' bytes: what one token reads.
    pub(crate) fn bytes_per_token(&self) -> usize {
        let all: usize = self.experts.iter().map(Mlp::nbytes).sum();
        self.router.nbytes() + all / self.experts.len().max(1) * self.args.top_k
    }

    /// The experts token `logits` (one router row) chooses and their weights, as mlx-lm's
    /// routing for the family computes them, into `chosen`.
    fn route(&self, logits: &[f32], chosen: &mut Vec<(usize, f32)>, probs: &mut Vec<f32>) {
        let k = self.args.top_k;
        // The top k by value (ties: the lower index first).
        let top = |values: &[f32], chosen: &mut Vec<(usize, f32)>| {
            chosen.clear();
            chosen.extend(values.iter().copied().enumerate());
            chosen.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
            chosen.truncate(k);
        };
        match self.args.routing {
            Routing::TopKThenSoftmax => {
                top(logits, chosen);
                softmax_weights(chosen);
            }
            Routing::SoftmaxThenTopK { renormalize } => {
                probs.clear();
                probs.extend_from_slice(logits);
                softmax(probs);
                top(probs, chosen);
                if renormalize {
                    let sum: f32 = chosen.iter().map(|c| c.1).sum();
                    chosen.iter_mut().for_each(|c| c.1 /= sum);
                }
            }
        }
    }

    /// The routed experts of the normed rows in `b.x`, into `b.o`.
    pub(crate) fn forward(&self, a: &ModelArgs, rows: &Rows<'_>, b: &mut Buffers) {
        let (t, h, n) = (rows.len(), a.hidden, self.args.experts);
        resize(&mut b.router, t * n);
        rows.project(&mut [(&self.router, &mut b.router)], &b.x, &mut b.scratch);
        add_bias(&mut b.router, &self.router_bias);
        let mut chosen = std::mem::take(&mut b.routes);
        chosen.resize_with(t, Vec::new);
        for (i, c) in chosen.iter_mut().enumerate() {
            self.route(&b.router[i * n..(i + 1) * n], c, &mut b.route_probs);
        }
        b.o.iter_mut().for_each(|o| *o = 0.0);
        if rows.row_by_row() {
            for (i, c) in chosen.iter().enumerate() {
                self.token(a, i, c, b);
            }
        } else {
            self.grouped(a, &chosen, b);
        }
        b.routes = chosen;
        debug_assert_eq!(b.o.len(), t * h);
    }

    /// Row `i`'s experts through the decode kernels: the gate and up products of all of them
    /// in one parallel region, then each expert's down product; their sum, weighted, in
    /// `b.o`'s row `i`.
    fn token(&self, a: &ModelArgs, i: usize, chosen: &[(usize, f32)], b: &mut Buffers) {
        let (h, inter, k) = (a.hidden, self.args.intermediate, chosen.len());
        resize(&mut b.expert_gate, k * inter);
        resize(&mut b.expert_up, k * inter);
        resize(&mut b.expert_y, k * h);
        let Buffers {
            x,
            expert_gate: gate,
            expert_up: up,
            expert_y,
            o,
            scratch,
            ..
        } = b;
        let xi = &x[i * h..(i + 1) * h];
        {
            let mut products: Vec<(&Matrix, &mut [f32])> = Vec::with_capacity(2 * k);
            for ((&(e, _), g), u) in chosen
                .iter()
                .zip(gate.chunks_exact_mut(inter))
                .zip(up.chunks_exact_mut(inter))
            {
                products.push((&self.experts[e].gate, g));
                products.push((&self.experts[e].up, u));
            }
            matmul_many(&mut products, xi, 1, scratch);
        }
        for ((&(e, _), g), u) in chosen
            .iter()
            .zip(gate.chunks_exact_mut(inter))
            .zip(up.chunks_exact_mut(inter))
        {
            let [gb, ub, _] = self.experts[e].biases();
            add_bias(g, gb);
            add_bias(u, ub);
        }
        activate(a.act, gate, up);
        for ((&(e, _), g), y) in chosen
            .iter()
            .zip(gate.chunks_exact(inter))
            .zip(expert_y.chunks_exact_mut(h))
        {
            matmul(&self.experts[e].down, g, 1, y, scratch);
            add_bias(y, self.experts[e].biases()[2]);
        }
        let out = &mut o[i * h..(i + 1) * h];
        for (&(_, w), y) in chosen.iter().zip(expert_y.chunks_exact(h)) {
            out.iter_mut().zip(y).for_each(|(o, y)| *o += y * w);
        }
    }

    /// A prompt's rows grouped by expert: each expert runs once over the rows that chose it
    /// (the prompt kernels read its weights once for all of them).
    fn grouped(&self, a: &ModelArgs, chosen: &[Vec<(usize, f32)>], b: &mut Buffers) {
        let (h, inter) = (a.hidden, self.args.intermediate);
        // Row i's output accumulates its experts in the order it chose them.
        let k = self.args.top_k;
        let t = chosen.len();
        let mut contributions = vec![0f32; t * k * h];
        for e in 0..self.experts.len() {
            let users: Vec<(usize, usize)> = chosen
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.iter().position(|&(x, _)| x == e).map(|slot| (i, slot)))
                .collect();
            if users.is_empty() {
                continue;
            }
            let m = users.len();
            resize(&mut b.expert_x, m * h);
            for (r, &(i, _)) in users.iter().enumerate() {
                b.expert_x[r * h..(r + 1) * h].copy_from_slice(&b.x[i * h..(i + 1) * h]);
            }
            resize(&mut b.expert_gate, m * inter);
            resize(&mut b.expert_up, m * inter);
            resize(&mut b.expert_y, m * h);
            let expert = &self.experts[e];
            let Buffers {
                expert_x,
                expert_gate: gate,
                expert_up: up,
                expert_y,
                scratch,
                ..
            } = b;
            matmul_many(
                &mut [(&expert.gate, &mut gate[..]), (&expert.up, &mut up[..])],
                expert_x,
                m,
                scratch,
            );
            let [gb, ub, db] = expert.biases();
            add_bias(gate, gb);
            add_bias(up, ub);
            activate(a.act, gate, up);
            matmul(&expert.down, gate, m, expert_y, scratch);
            add_bias(expert_y, db);
            for (r, &(i, slot)) in users.iter().enumerate() {
                let w = chosen[i][slot].1;
                let dst = &mut contributions[(i * k + slot) * h..(i * k + slot + 1) * h];
                dst.iter_mut()
                    .zip(&expert_y[r * h..(r + 1) * h])
                    .for_each(|(d, y)| *d = y * w);
            }
        }
        for (i, c) in chosen.iter().enumerate() {
            let out = &mut b.o[i * h..(i + 1) * h];
            for slot in 0..c.len() {
                let y = &contributions[(i * k + slot) * h..(i * k + slot + 1) * h];
                out.iter_mut().zip(y).for_each(|(o, y)| *o += y);
            }
        }
    }
}

/// `v = softmax(v)` (max subtracted first, as mlx's precise softmax).
fn softmax(v: &mut [f32]) {
    let max = v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut sum = 0f32;
    for x in v.iter_mut() {
        *x = exp(*x - max);
        sum += *x;
    }
    v.iter_mut().for_each(|x| *x /= sum);
}

/// The chosen logits replaced by their softmax among themselves.
fn softmax_weights(chosen: &mut [(usize, f32)]) {
    let mut w: Vec<f32> = chosen.iter().map(|c| c.1).collect();
    softmax(&mut w);
    chosen.iter_mut().zip(w).for_each(|(c, w)| c.1 = w);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut v = vec![1.0, 3.0, 2.0, -50.0];
        softmax(&mut v);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(v[1] > v[2] && v[2] > v[0] && v[0] > v[3]);
        let mut c = vec![(4, 2.0), (1, 2.0f32.ln() + 2.0)];
        softmax_weights(&mut c);
        assert!((c[1].1 - 2.0 / 3.0).abs() < 1e-6, "{c:?}");
    }
}
