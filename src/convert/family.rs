//! The model families `convert --quantize` knows, with mlx-lm's rules for each: which tensors
//! are parameters of the model, which of them are the weights of Linear / Embedding modules
//! (the ones `nn.quantize` touches), and the sanitize steps mlx-lm applies when it loads them.

use serde_json::Value;

/// The `model_type` values convert accepts (`mistral` is loaded as `llama`, as mlx-lm does).
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2", "qwen3", "qwen3_moe"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Qwen2,
    Qwen3,
    Qwen3Moe,
}

/// What a tensor is to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The weight of a Linear, Embedding or SwitchLinear module: quantized.
    Quantizable,
    /// A MoE router's weight: quantized at 8 bits / group 64 by the model's own rule.
    Router,
    /// A norm, a bias: always kept in float.
    Float,
    /// `scales` / `biases` of an already quantized module.
    QuantParam,
}

const ATTN_PROJ: &[&str] = &["q_proj", "k_proj", "v_proj", "o_proj"];
const MLP_PROJ: &[&str] = &["gate_proj", "up_proj", "down_proj"];

impl Family {
    pub fn from_model_type(model_type: &str) -> Option<Family> {
        match model_type {
            "llama" | "mistral" => Some(Family::Llama),
            "qwen2" => Some(Family::Qwen2),
            "qwen3" => Some(Family::Qwen3),
            "qwen3_moe" => Some(Family::Qwen3Moe),
            _ => None,
        }
    }

    /// mlx-lm's default when config.json has no `tie_word_embeddings` (`None`: the field is
    /// required, as in mlx-lm's Qwen3 model arguments).
    pub fn default_tie(self) -> Option<bool> {
        match self {
            Family::Llama | Family::Qwen2 => Some(true),
            Family::Qwen3 | Family::Qwen3Moe => None,
        }
    }

    /// The role of tensor `name`, or `None` when it is not a parameter of this family's model
    /// (mlx-lm's strict loader would refuse it).
    pub fn role(self, name: &str) -> Option<Role> {
        let (module, param) = name.rsplit_once('.')?;
        match param {
            "weight" => self.weight_role(module),
            "bias" => self.is_biased_linear(module).then_some(Role::Float),
            "scales" | "biases" => matches!(
                self.weight_role(module),
                Some(Role::Quantizable | Role::Router)
            )
            .then_some(Role::QuantParam),
            _ => None,
        }
    }

    fn weight_role(self, module: &str) -> Option<Role> {
        match module {
            "model.embed_tokens" | "lm_head" => return Some(Role::Quantizable),
            "model.norm" => return Some(Role::Float),
            _ => {}
        }
        let rest = layer_rest(module)?;
        if let Some(proj) = rest.strip_prefix("self_attn.") {
            if ATTN_PROJ.contains(&proj) {
                return Some(Role::Quantizable);
            }
            let qk_norm = matches!(self, Family::Qwen3 | Family::Qwen3Moe)
                && matches!(proj, "q_norm" | "k_norm");
            return qk_norm.then_some(Role::Float);
        }
        if let Some(mlp) = rest.strip_prefix("mlp.") {
            if MLP_PROJ.contains(&mlp) {
                return Some(Role::Quantizable);
            }
            if self == Family::Qwen3Moe {
                if mlp == "gate" {
                    return Some(Role::Router);
                }
                if let Some(proj) = mlp.strip_prefix("switch_mlp.") {
                    return MLP_PROJ.contains(&proj).then_some(Role::Quantizable);
                }
            }
            return None;
        }
        matches!(rest, "input_layernorm" | "post_attention_layernorm").then_some(Role::Float)
    }

    /// Linear modules that may carry a `.bias` (llama's attention_bias / mlp_bias, qwen2's
    /// q/k/v biases).
    fn is_biased_linear(self, module: &str) -> bool {
        let Some(rest) = layer_rest(module) else {
            return false;
        };
        match self {
            Family::Llama => {
                rest.strip_prefix("self_attn.")
                    .is_some_and(|p| ATTN_PROJ.contains(&p))
                    || rest
                        .strip_prefix("mlp.")
                        .is_some_and(|p| MLP_PROJ.contains(&p))
            }
            Family::Qwen2 => rest
                .strip_prefix("self_attn.")
                .is_some_and(|p| matches!(p, "q_proj" | "k_proj" | "v_proj")),
            Family::Qwen3 | Family::Qwen3Moe => false,
        }
    }

    /// Whether mlx-lm's sanitize drops tensor `name` (precomputed rotary frequencies; the
    /// lm_head of a model with tied embeddings).
    pub fn drops(self, name: &str, tied: bool) -> bool {
        name.ends_with(".rotary_emb.inv_freq") || (tied && name == "lm_head.weight")
    }

    /// For a qwen3_moe expert tensor `model.layers.L.mlp.experts.E.P.weight`: the stacked
    /// tensor it becomes (`model.layers.L.mlp.switch_mlp.P.weight`) and its expert index.
    pub fn expert_slot(self, name: &str) -> Option<(String, usize)> {
        if self != Family::Qwen3Moe {
            return None;
        }
        let (head, tail) = name.split_once(".mlp.experts.")?;
        let (expert, proj) = tail.split_once('.')?;
        let proj = proj.strip_suffix(".weight")?;
        if !MLP_PROJ.contains(&proj) || layer_rest(&format!("{head}.mlp")).is_none() {
            return None;
        }
        let e = expert.parse::<usize>().ok()?;
        Some((format!("{head}.mlp.switch_mlp.{proj}.weight"), e))
    }

    /// `num_experts` from the config (qwen3_moe only).
    pub fn num_experts(self, config: &Value) -> Option<usize> {
        (self == Family::Qwen3Moe)
            .then(|| config.get("num_experts").and_then(Value::as_u64))
            .flatten()
            .and_then(|n| usize::try_from(n).ok())
    }
}

/// `model.layers.<i>.<rest>` → `<rest>`.
fn layer_rest(module: &str) -> Option<&str> {
    let rest = module.strip_prefix("model.layers.")?;
    let (index, rest) = rest.split_once('.')?;
    index.parse::<usize>().ok()?;
    Some(rest)
}

/// The layer index in a module path (`model.layers.7.mlp.down_proj` → 7), as mlx-lm's mixed
/// recipes read it: the component at the position where the first `down_proj` path has its
/// number; 0 when the path is shorter.
pub fn layer_index(module: &str, location: usize) -> usize {
    module
        .split('.')
        .nth(location)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_of_llama_and_qwen_tensors() {
        let l = Family::Llama;
        assert_eq!(l.role("model.embed_tokens.weight"), Some(Role::Quantizable));
        assert_eq!(
            l.role("model.layers.3.self_attn.v_proj.weight"),
            Some(Role::Quantizable)
        );
        assert_eq!(
            l.role("model.layers.3.input_layernorm.weight"),
            Some(Role::Float)
        );
        assert_eq!(l.role("model.layers.3.self_attn.q_norm.weight"), None);
        assert_eq!(l.role("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(l.role("vision_tower.blocks.0.weight"), None);
        assert_eq!(
            Family::Qwen2.role("model.layers.0.self_attn.k_proj.bias"),
            Some(Role::Float)
        );
        assert_eq!(
            Family::Qwen2.role("model.layers.0.self_attn.o_proj.bias"),
            None
        );
        assert_eq!(
            Family::Qwen3.role("model.layers.0.self_attn.k_norm.weight"),
            Some(Role::Float)
        );
        let m = Family::Qwen3Moe;
        assert_eq!(m.role("model.layers.1.mlp.gate.weight"), Some(Role::Router));
        assert_eq!(
            m.role("model.layers.1.mlp.switch_mlp.down_proj.weight"),
            Some(Role::Quantizable)
        );
        assert_eq!(
            m.role("model.layers.1.mlp.switch_mlp.down_proj.scales"),
            Some(Role::QuantParam)
        );
        assert_eq!(
            m.expert_slot("model.layers.1.mlp.experts.12.up_proj.weight"),
            Some(("model.layers.1.mlp.switch_mlp.up_proj.weight".into(), 12))
        );
        assert_eq!(
            l.expert_slot("model.layers.1.mlp.experts.12.up_proj.weight"),
            None
        );
        assert!(l.drops("model.layers.0.self_attn.rotary_emb.inv_freq", false));
        assert!(l.drops("lm_head.weight", true) && !l.drops("lm_head.weight", false));
        assert_eq!(layer_index("model.layers.17.mlp.down_proj", 2), 17);
        assert_eq!(layer_index("lm_head", 2), 0);
    }
}
