//! What the engine needs from config.json (and generation_config.json), checked before a
//! byte of weights is mapped: the family, the shapes, RoPE, the eos ids, the quantization.

use crate::store::files::read_small;
use std::path::Path;

use serde_json::Value;

use super::EngineError;
use crate::store::config::QuantizationConfig;

/// The `model_type` values `mlxk run` runs (`mistral` is a llama, `gemma3` the text part of a
/// Gemma 3 checkpoint, as in mlx-lm).
pub const RUN_MODEL_TYPES: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "gemma2",
    "gemma3",
    "gemma3_text",
    "phi3",
    "granite",
    "olmo2",
    "smollm3",
    "mixtral",
    "gpt_oss",
];

/// The quantization modes the engine runs, kept packed.
pub const QUANT_MODES: &[&str] = &["affine", "mxfp4", "mxfp8", "nvfp4"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    /// q/k/v biases.
    Qwen2,
    /// RMS norms on q and k per head.
    Qwen3,
    /// qwen3 attention, routed experts (softmax, then top-k).
    Qwen3Moe,
    /// (1 + w) norms around both sublayers, GELU, soft-capped attention and logits.
    Gemma2,
    /// gemma2's shape with q/k norms, sliding-window layers and their own RoPE base.
    Gemma3,
    /// Fused qkv and gate_up projections, partial and su/longrope RoPE.
    Phi3,
    /// llama with multipliers on the embedding, attention, residual and logits.
    Granite,
    /// Norms after each sublayer (none before), q/k norms over the whole projection.
    Olmo2,
    /// llama with RoPE switched off in some layers.
    Smollm3,
    /// llama attention, routed experts (top-k, then softmax).
    Mixtral,
    /// Biased attention with per-head sinks, alternating sliding and full layers, YaRN RoPE,
    /// biased routed experts with a clamped SwiGLU.
    GptOss,
}

/// Where a block's RMS norms sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormPlacement {
    /// Before each sublayer (llama): `input_layernorm`, `post_attention_layernorm`.
    Pre,
    /// Before and after each sublayer (gemma): input, post-attention, pre- and post-feedforward.
    Sandwich,
    /// After each sublayer only (olmo2): post-attention, post-feedforward.
    Post,
}

/// The RMS norms on queries and keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// One norm of `head_dim` applied to every head (qwen3, gemma3).
    PerHead,
    /// One norm over the whole projection, before it is split into heads (olmo2).
    Whole,
}

/// The gate's activation in `act(gate(x)) * up(x)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`, mlx's `gelu_approx`.
    GeluTanh,
    /// gpt-oss: `(clip(up, ±7) + 1) · g · σ(1.702 g)` with `g = min(gate, 7)`.
    SwigluOai,
}

/// A rotary embedding: the angle per position of each rotated pair (pairs `i, i + len`, so
/// `2 · inv_freq.len()` dimensions of a head turn; the rest stay), and the factor the rotated
/// dimensions are multiplied by first (su / longrope's mscale; 1 elsewhere).
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub inv_freq: Vec<f32>,
    pub mscale: f32,
}

/// What differs between the layers of one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerArgs {
    /// Sliding-window attention: a query sees the last `window` positions (itself included).
    pub window: Option<usize>,
    /// The index in [`ModelArgs::ropes`] of the layer's rotary embedding; `None`: no RoPE.
    pub rope: Option<usize>,
    /// Routed experts instead of the dense MLP.
    pub moe: bool,
}

/// How the router's logits pick experts and weigh their outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// mixtral: the top-k logits, softmaxed among themselves.
    TopKThenSoftmax,
    /// qwen3_moe: softmax over all experts, the top-k probabilities (renormalized to sum 1
    /// when `renormalize`, config's `norm_topk_prob`).
    SoftmaxThenTopK { renormalize: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeArgs {
    pub experts: usize,
    pub top_k: usize,
    /// Each expert's intermediate size.
    pub intermediate: usize,
    pub routing: Routing,
}

#[derive(Debug, Clone)]
pub struct ModelArgs {
    pub arch: Arch,
    pub model_type: String,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub eps: f32,
    pub tie: bool,
    /// The rotary embeddings the layers use ([`LayerArgs::rope`]): the global one first.
    pub ropes: Vec<Rope>,
    /// Per layer: window, RoPE, experts.
    pub layer: Vec<LayerArgs>,
    pub norm: NormPlacement,
    /// Norm weights are stored as `w - 1` and applied as `1 + w` (gemma).
    pub norm_shift: bool,
    pub qk_norm: QkNorm,
    pub act: Activation,
    /// The embedding is multiplied by this (gemma: √hidden; granite: embedding_multiplier).
    pub embed_scale: Option<f32>,
    /// Scores are `q·k · attn_scale` (1/√head_dim unless the config says otherwise).
    pub attn_scale: f32,
    /// Each sublayer's output is multiplied by this before it joins the residual (granite).
    pub residual_scale: Option<f32>,
    /// The logits are divided by this (granite's logits_scaling).
    pub logits_divisor: Option<f32>,
    /// Scores become `cap · tanh(scores / cap)` before the softmax (gemma2).
    pub attn_softcap: Option<f32>,
    /// The logits become `cap · tanh(logits / cap)` (gemma2).
    pub final_softcap: Option<f32>,
    pub moe: Option<MoeArgs>,
    /// Each query head has a learned sink logit that joins its softmax (gpt-oss).
    pub sinks: bool,
    /// Before every tensor name (`language_model.` for a gemma3 checkpoint with a vision tower).
    pub prefix: String,
    pub quantization: Option<QuantizationConfig>,
    /// Every eos id of config.json and generation_config.json.
    pub eos: Vec<u32>,
    /// Positions the model was trained for (`max_position_embeddings`), when config.json says.
    pub context: Option<usize>,
}

fn get_usize(c: &Value, key: &str) -> Option<usize> {
    c.get(key)
        .and_then(Value::as_u64)
        .and_then(|v| usize::try_from(v).ok())
}

fn get_f64(c: &Value, key: &str) -> Option<f64> {
    c.get(key).and_then(Value::as_f64)
}

fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// The largest config.json / generation_config.json read (real ones are a few KB).
const CONFIG_MAX: u64 = 16 << 20;

fn not_supported(model_type: &str) -> String {
    format!(
        "model_type `{model_type}` is not supported by `mlxk run` (supported: {})",
        RUN_MODEL_TYPES.join(", ")
    )
}

impl ModelArgs {
    /// Reads and checks `dir/config.json` (and `generation_config.json` for eos ids).
    pub fn load(dir: &Path) -> Result<ModelArgs, EngineError> {
        let path = dir.join("config.json");
        let bytes = read_small(&path, CONFIG_MAX, &mut 0).map_err(|e| EngineError::Model {
            path: path.clone(),
            reason: format!("cannot read: {e}"),
        })?;
        let config: Value = serde_json::from_slice(&bytes).map_err(|e| EngineError::Model {
            path: path.clone(),
            reason: format!("not valid JSON ({e})"),
        })?;
        let generation = read_small(&dir.join("generation_config.json"), CONFIG_MAX, &mut 0)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        ModelArgs::from_config(&config, generation.as_ref())
            .map_err(|reason| EngineError::Model { path, reason })
    }

    pub fn from_config(c: &Value, generation: Option<&Value>) -> Result<ModelArgs, String> {
        let model_type = c
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or("no `model_type`")?;
        let arch = match model_type {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "qwen3_moe" => Arch::Qwen3Moe,
            "gemma2" => Arch::Gemma2,
            "gemma3" | "gemma3_text" => Arch::Gemma3,
            "phi3" => Arch::Phi3,
            "granite" => Arch::Granite,
            "olmo2" => Arch::Olmo2,
            "smollm3" => Arch::Smollm3,
            "mixtral" => Arch::Mixtral,
            "gpt_oss" => Arch::GptOss,
            other => return Err(not_supported(other)),
        };
        // A gemma3 checkpoint is a vision model whose text part mlx-lm runs by itself (the
        // vision tower's weights are ignored); any other vision or audio model is refused.
        let (text, prefix) = if model_type == "gemma3" {
            (gemma3_text_config(c)?, "language_model.")
        } else {
            for (key, what) in [("vision_config", "vision"), ("audio_config", "audio")] {
                if c.get(key).is_some() {
                    return Err(format!(
                        "`{model_type}` is a{} {what} model; `mlxk run` runs text models ({})",
                        if what == "audio" { "n" } else { "" },
                        RUN_MODEL_TYPES.join(", ")
                    ));
                }
            }
            (c.clone(), "")
        };
        let mut args = ModelArgs::from_text_config(arch, model_type, &text)?;
        args.prefix = prefix.to_string();
        // The quantization lives at the top level of a gemma3 checkpoint, not in text_config.
        args.quantization = c
            .get("quantization")
            .or_else(|| c.get("quantization_config"))
            .and_then(QuantizationConfig::from_value);
        if let Some(q) = &args.quantization {
            let modes = std::iter::once(q.mode.as_deref())
                .chain(q.overrides.values().flatten().map(|l| l.mode.as_deref()));
            for m in modes.flatten() {
                if !QUANT_MODES.contains(&m) {
                    return Err(format!(
                        "quantization mode `{m}` is not implemented by `mlxk run` ({}); \
                         `mlxk convert SRC DST --dequantize` gives a float model it runs",
                        QUANT_MODES.join(", ")
                    ));
                }
            }
        }
        // Activations quantized too (mlx's `quantize_input`): a different computation.
        let block = c
            .get("quantization")
            .or_else(|| c.get("quantization_config"));
        let quantized_input =
            |v: &Value| v.get("quantize_input").and_then(Value::as_bool) == Some(true);
        if block.is_some_and(|b| {
            quantized_input(b)
                || b.as_object()
                    .is_some_and(|o| o.values().any(quantized_input))
        }) {
            return Err(
                "`quantize_input` (activations quantized as well as weights) is not implemented \
                 by `mlxk run`"
                    .into(),
            );
        }
        let mut eos = ids(c.get("eos_token_id"));
        for id in ids(text.get("eos_token_id")).into_iter().chain(
            generation
                .map(|g| ids(g.get("eos_token_id")))
                .unwrap_or_default(),
        ) {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
        args.eos = eos;
        Ok(args)
    }

    /// The shapes and the family's knobs from a text model's config (the top level, or a
    /// gemma3 checkpoint's `text_config` completed as mlx-lm completes it).
    fn from_text_config(arch: Arch, model_type: &str, c: &Value) -> Result<ModelArgs, String> {
        let need = |key: &str| get_usize(c, key).ok_or(format!("no `{key}`"));
        let gemma3 = arch == Arch::Gemma3;
        // gemma3_text's defaults are mlx-lm's (its config.json may leave them out).
        let with_default = |key: &str, default: usize| -> Result<usize, String> {
            match get_usize(c, key) {
                Some(v) => Ok(v),
                None if gemma3 => Ok(default),
                None => Err(format!("no `{key}`")),
            }
        };
        let hidden = with_default("hidden_size", 1152)?;
        let heads = with_default("num_attention_heads", 4)?;
        let layers = with_default("num_hidden_layers", 26)?;
        let kv_heads =
            get_usize(c, "num_key_value_heads").unwrap_or(if gemma3 { 1 } else { heads });
        // phi3, granite and mixtral derive head_dim from the hidden size whatever config says.
        let head_dim = match arch {
            Arch::Phi3 | Arch::Granite | Arch::Mixtral => hidden / heads.max(1),
            Arch::Gemma3 => get_usize(c, "head_dim").unwrap_or(256),
            _ => get_usize(c, "head_dim").unwrap_or(hidden / heads.max(1)),
        };
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || !head_dim.is_multiple_of(2) {
            return Err(format!(
                "attention shape not supported: {heads} heads, {kv_heads} kv heads, head_dim {head_dim}"
            ));
        }
        let rope_default = match arch {
            Arch::GptOss => 150_000.0,
            Arch::Qwen2 | Arch::Qwen3 | Arch::Qwen3Moe | Arch::Mixtral | Arch::Gemma3 => {
                1_000_000.0
            }
            _ => 10000.0,
        };
        let theta = get_f64(c, "rope_theta").unwrap_or(rope_default);
        let scaling = c.get("rope_scaling").filter(|v| !v.is_null());
        let global_rope = match arch {
            Arch::Phi3 => phi3_rope(c, head_dim, theta)?,
            // gemma2 and mixtral use a plain RoPE whatever rope_scaling says (as mlx-lm).
            Arch::Gemma2 | Arch::Mixtral => plain_rope(head_dim, theta, 1.0),
            _ => scaled_rope(head_dim, theta, scaling)?,
        };
        let mut ropes = vec![global_rope];
        let eps_default = match arch {
            Arch::Mixtral | Arch::GptOss => 1e-5,
            _ => 1e-6,
        };
        let eps = get_f64(c, "rms_norm_eps").unwrap_or(eps_default) as f32;
        let tie_default = !matches!(
            arch,
            Arch::Qwen3 | Arch::Qwen3Moe | Arch::Phi3 | Arch::Mixtral | Arch::Gemma3
        );
        let tie = match arch {
            Arch::Gemma2 => true,
            // gpt_oss always has its own lm_head.
            Arch::GptOss => false,
            // gemma3 ties exactly when the weights have no lm_head (mlx-lm's sanitize).
            Arch::Gemma3 => false,
            _ => c
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(tie_default),
        };
        let sliding_window = get_usize(c, "sliding_window");
        let mut layer = vec![
            LayerArgs {
                window: None,
                rope: Some(0),
                moe: false,
            };
            layers
        ];
        // llama / smollm3 (and mistral) mark sliding layers in `layer_types`; gpt_oss
        // alternates sliding and full layers unless it says otherwise.
        let alternating: Option<Vec<Value>> = (arch == Arch::GptOss).then(|| {
            (0..layers)
                .map(|i| {
                    Value::from(if i % 2 == 0 {
                        "sliding_attention"
                    } else {
                        "full_attention"
                    })
                })
                .collect()
        });
        let sliding_window = match arch {
            Arch::GptOss => Some(sliding_window.unwrap_or(128)),
            _ => sliding_window,
        };
        if matches!(arch, Arch::Llama | Arch::Smollm3 | Arch::GptOss) {
            let types = c
                .get("layer_types")
                .and_then(Value::as_array)
                .or(alternating.as_ref());
            if let Some(types) = types {
                if types.len() != layers {
                    return Err(format!(
                        "`layer_types` has {} entries for {layers} layers",
                        types.len()
                    ));
                }
                for (l, t) in layer.iter_mut().zip(types) {
                    if t.as_str() == Some("sliding_attention") {
                        l.window =
                            Some(sliding_window.ok_or("sliding layers but no `sliding_window`")?);
                    }
                }
            }
        }
        if arch == Arch::Smollm3 {
            let uses_rope: Vec<bool> = match c.get("no_rope_layers").and_then(Value::as_array) {
                Some(v) => v.iter().map(|x| x.as_u64().unwrap_or(1) != 0).collect(),
                None => {
                    let interval = get_usize(c, "no_rope_layer_interval").unwrap_or(4).max(1);
                    (0..layers).map(|i| (i + 1) % interval != 0).collect()
                }
            };
            if uses_rope.len() != layers {
                return Err(format!(
                    "`no_rope_layers` has {} entries for {layers} layers",
                    uses_rope.len()
                ));
            }
            for (l, uses) in layer.iter_mut().zip(uses_rope) {
                l.rope = uses.then_some(0);
            }
        }
        if gemma3 {
            let pattern = get_usize(c, "sliding_window_pattern").unwrap_or(6).max(1);
            let window = sliding_window.unwrap_or(512);
            let local = get_f64(c, "rope_local_base_freq").unwrap_or(10000.0);
            ropes.push(plain_rope(head_dim, local, 1.0));
            for (i, l) in layer.iter_mut().enumerate() {
                if (i + 1) % pattern != 0 {
                    *l = LayerArgs {
                        window: Some(window),
                        rope: Some(1),
                        moe: false,
                    };
                }
            }
        }
        let mut moe = None;
        match arch {
            Arch::Mixtral | Arch::GptOss => {
                let gpt_oss = arch == Arch::GptOss;
                moe = Some(MoeArgs {
                    experts: get_usize(c, "num_local_experts").unwrap_or(if gpt_oss {
                        128
                    } else {
                        8
                    }),
                    top_k: get_usize(c, "num_experts_per_tok").unwrap_or(if gpt_oss {
                        4
                    } else {
                        2
                    }),
                    intermediate: need("intermediate_size")?,
                    routing: Routing::TopKThenSoftmax,
                });
                layer.iter_mut().for_each(|l| l.moe = true);
            }
            Arch::Qwen3Moe => {
                let experts = need("num_experts")?;
                let step = need("decoder_sparse_step")?.max(1);
                let dense: Vec<usize> = c
                    .get("mlp_only_layers")
                    .and_then(Value::as_array)
                    .map(|v| {
                        v.iter()
                            .filter_map(|x| x.as_u64())
                            .map(|x| x as usize)
                            .collect()
                    })
                    .unwrap_or_default();
                moe = Some(MoeArgs {
                    experts,
                    top_k: need("num_experts_per_tok")?,
                    intermediate: need("moe_intermediate_size")?,
                    routing: Routing::SoftmaxThenTopK {
                        renormalize: c
                            .get("norm_topk_prob")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                    },
                });
                for (i, l) in layer.iter_mut().enumerate() {
                    l.moe = !dense.contains(&i) && experts > 0 && (i + 1) % step == 0;
                }
            }
            _ => {}
        }
        if let Some(m) = &moe {
            if m.top_k == 0 || m.top_k > m.experts {
                return Err(format!(
                    "{} experts per token of {} experts",
                    m.top_k, m.experts
                ));
            }
        }
        let positive = |key: &str| -> Result<f32, String> {
            let v = get_f64(c, key).ok_or(format!("no `{key}`"))?;
            if v.is_finite() && v > 0.0 {
                Ok(v as f32)
            } else {
                Err(format!("`{key}` is {v}; it must be a positive number"))
            }
        };
        let gemma = matches!(arch, Arch::Gemma2 | Arch::Gemma3);
        let query_scalar = match arch {
            Arch::Gemma2 => Some(get_f64(c, "query_pre_attn_scalar").unwrap_or(144.0)),
            Arch::Gemma3 => Some(get_f64(c, "query_pre_attn_scalar").unwrap_or(256.0)),
            _ => None,
        };
        let attn_scale = match (arch, query_scalar) {
            (Arch::Granite, _) => positive("attention_multiplier")?,
            (_, Some(s)) => s.powf(-0.5) as f32,
            _ => (head_dim as f64).powf(-0.5) as f32,
        };
        let embed_scale = match arch {
            // gemma3 rounds √hidden to bf16 first (mlx-lm: `mx.array(hidden**0.5, bfloat16)`).
            Arch::Gemma3 => Some(round_to_bf16((hidden as f64).sqrt() as f32)),
            Arch::Gemma2 => Some((hidden as f64).sqrt() as f32),
            Arch::Granite => Some(positive("embedding_multiplier")?),
            _ => None,
        };
        let softcap = |key: &str, default: f64| -> Option<f32> {
            match c.get(key) {
                Some(Value::Null) => None,
                Some(v) => v.as_f64().map(|v| v as f32),
                None => Some(default as f32),
            }
        };
        Ok(ModelArgs {
            arch,
            model_type: model_type.to_string(),
            hidden,
            layers,
            heads,
            kv_heads,
            head_dim,
            intermediate: if gemma3 {
                with_default("intermediate_size", 6912)?
            } else {
                need("intermediate_size")?
            },
            vocab: if gemma3 {
                with_default("vocab_size", 262144)?
            } else {
                need("vocab_size")?
            },
            eps,
            tie,
            ropes,
            layer,
            norm: match arch {
                Arch::Gemma2 | Arch::Gemma3 => NormPlacement::Sandwich,
                Arch::Olmo2 => NormPlacement::Post,
                _ => NormPlacement::Pre,
            },
            norm_shift: gemma,
            qk_norm: match arch {
                Arch::Qwen3 | Arch::Qwen3Moe | Arch::Gemma3 => QkNorm::PerHead,
                Arch::Olmo2 => QkNorm::Whole,
                _ => QkNorm::None,
            },
            act: match arch {
                Arch::Gemma2 | Arch::Gemma3 => Activation::GeluTanh,
                Arch::GptOss => Activation::SwigluOai,
                _ => Activation::Silu,
            },
            embed_scale,
            attn_scale,
            residual_scale: match arch {
                Arch::Granite => Some(positive("residual_multiplier")?),
                _ => None,
            },
            logits_divisor: match arch {
                Arch::Granite => Some(positive("logits_scaling")?),
                _ => None,
            },
            attn_softcap: match arch {
                Arch::Gemma2 => softcap("attn_logit_softcapping", 50.0),
                _ => None,
            },
            final_softcap: match arch {
                Arch::Gemma2 => softcap("final_logit_softcapping", 30.0),
                _ => None,
            },
            moe,
            sinks: arch == Arch::GptOss,
            prefix: String::new(),
            quantization: None,
            eos: Vec::new(),
            context: get_usize(c, "max_position_embeddings"),
        })
    }
}

/// A gemma3 checkpoint's `text_config` as mlx-lm's `gemma3.ModelArgs` completes it: the
/// vocabulary from the top level (default 262208), 8 heads and 4 kv heads unless it says.
fn gemma3_text_config(c: &Value) -> Result<Value, String> {
    let mut text = c
        .get("text_config")
        .filter(|t| t.is_object())
        .cloned()
        .ok_or("a `gemma3` config without a `text_config` object")?;
    let vocab = c.get("vocab_size").cloned().unwrap_or(Value::from(262208));
    text["vocab_size"] = vocab;
    for (key, default) in [("num_attention_heads", 8), ("num_key_value_heads", 4)] {
        if text.get(key).is_none() {
            text[key] = Value::from(default);
        }
    }
    Ok(text)
}

/// `v` rounded to the nearest bf16 (ties to even), back in f32.
fn round_to_bf16(v: f32) -> f32 {
    let bits = v.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000;
    f32::from_bits(rounded)
}

/// A RoPE over all `dims` with base `base`, positions multiplied by `scale`.
fn plain_rope(dims: usize, base: f64, scale: f64) -> Rope {
    Rope {
        inv_freq: (0..dims / 2)
            .map(|i| (scale / base.powf((2 * i) as f64 / dims as f64)) as f32)
            .collect(),
        mscale: 1.0,
    }
}

/// phi3's RoPE (mlx-lm's `phi3.Attention`): over `partial_rotary_factor` of the head;
/// su / longrope scaling with the long factors and the mscale of the context extension,
/// linear scaling, or plain.
fn phi3_rope(c: &Value, head_dim: usize, base: f64) -> Result<Rope, String> {
    let factor = get_f64(c, "partial_rotary_factor").unwrap_or(1.0);
    let dims = (head_dim as f64 * factor) as usize;
    if dims == 0 || dims > head_dim || !dims.is_multiple_of(2) {
        return Err(format!(
            "partial_rotary_factor {factor} gives {dims} rotary dimensions of {head_dim}"
        ));
    }
    let Some(s) = c.get("rope_scaling").filter(|v| !v.is_null()) else {
        return Ok(plain_rope(dims, base, 1.0));
    };
    let kind = s.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "su" | "longrope" => {
            let long: Vec<f64> = match s.get("long_factor") {
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_f64).collect(),
                Some(v) => vec![v.as_f64().ok_or("`long_factor` is not a number")?; dims / 2],
                None => return Err("rope_scaling `su`/`longrope` without `long_factor`".into()),
            };
            if long.len() != dims / 2 {
                return Err(format!(
                    "rope_scaling has {} long factors for {} rotary pairs",
                    long.len(),
                    dims / 2
                ));
            }
            let max = get_f64(c, "max_position_embeddings").unwrap_or(131072.0);
            let original = get_f64(c, "original_max_position_embeddings").unwrap_or(4096.0);
            let context = max / original;
            let mscale = match s.get("long_mscale").and_then(Value::as_f64) {
                Some(m) if m != 0.0 => m,
                _ if context <= 1.0 => 1.0,
                _ => (1.0 + context.ln() / original.ln()).sqrt(),
            };
            // mlx computes the periods in f32: base^(2i/d) · long_factor, then their inverses.
            let inv_freq = (0..dims / 2)
                .map(|i| {
                    let period = (base as f32).powf((2 * i) as f32 / dims as f32);
                    1.0 / (long[i] as f32 * period)
                })
                .collect();
            Ok(Rope {
                inv_freq,
                mscale: mscale as f32,
            })
        }
        "linear" => {
            let f = s
                .get("factor")
                .and_then(Value::as_f64)
                .ok_or("rope_scaling `linear` without `factor`")?;
            Ok(plain_rope(dims, base, 1.0 / f))
        }
        // mlx-lm warns and runs without scaling.
        _ => Ok(plain_rope(dims, base, 1.0)),
    }
}

/// The RoPE mlx-lm's `initialize_rope` builds for `scaling`: YaRN (gpt-oss, DeepSeek) here,
/// the others by [`rope_inv_freq`].
fn scaled_rope(dims: usize, base: f64, scaling: Option<&Value>) -> Result<Rope, String> {
    let kind = scaling
        .and_then(|s| s.get("type").or_else(|| s.get("rope_type")))
        .and_then(Value::as_str);
    let Some(s) = scaling.filter(|_| matches!(kind, Some("yarn" | "deepseek_yarn"))) else {
        return Ok(Rope {
            inv_freq: rope_inv_freq(dims, base, scaling)?,
            mscale: 1.0,
        });
    };
    let get = |k: &str, d: f64| s.get(k).and_then(Value::as_f64).unwrap_or(d);
    let factor = s
        .get("factor")
        .and_then(Value::as_f64)
        .ok_or("rope_scaling `yarn` without `factor`")?;
    let original = get("original_max_position_embeddings", 4096.0);
    let (beta_fast, beta_slow) = (get("beta_fast", 32.0), get("beta_slow", 1.0));
    let get_mscale = |m: f64| {
        if factor <= 1.0 {
            1.0
        } else {
            0.1 * m * factor.ln() + 1.0
        }
    };
    let mscale = get_mscale(get("mscale", 1.0)) / get_mscale(get("mscale_all_dim", 0.0));
    let correction = |rotations: f64| {
        dims as f64 * (original / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
    };
    let low = correction(beta_fast).floor().max(0.0);
    let mut high = correction(beta_slow).ceil().min(dims as f64 - 1.0);
    if low == high {
        high += 0.001;
    }
    let inv_freq = (0..dims / 2)
        .map(|i| {
            // mlx computes these in f32: the period base^(2i/d), interpolated between itself
            // and `factor` times itself by the ramp over the correction range.
            let extra = (base as f32).powf((2 * i) as f32 / dims as f32);
            let inter = factor as f32 * extra;
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0) as f32;
            let mask = 1.0 - ramp;
            1.0 / (inter * extra / (inter * mask + extra * (1.0 - mask)))
        })
        .collect();
    Ok(Rope {
        inv_freq,
        mscale: mscale as f32,
    })
}

/// The per-pair rotary frequencies, as mlx-lm's `initialize_rope` builds them: plain
/// (`base^(-2i/d)`), linear scaling (`/ factor`), or Llama 3's smoothed scaling.
fn rope_inv_freq(dims: usize, base: f64, scaling: Option<&Value>) -> Result<Vec<f32>, String> {
    let half = dims / 2;
    let periods: Vec<f64> = (0..half)
        .map(|i| base.powf((2 * i) as f64 / dims as f64))
        .collect();
    let Some(s) = scaling.filter(|v| !v.is_null()) else {
        return Ok(periods.iter().map(|p| (1.0 / p) as f32).collect());
    };
    let kind = s
        .get("type")
        .or_else(|| s.get("rope_type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let factor = s.get("factor").and_then(Value::as_f64);
    match kind {
        "default" => Ok(periods.iter().map(|p| (1.0 / p) as f32).collect()),
        "linear" => {
            let f = factor.ok_or("rope_scaling `linear` without `factor`")?;
            Ok(periods.iter().map(|p| (1.0 / (p * f)) as f32).collect())
        }
        "llama3" => {
            let f = factor.ok_or("rope_scaling `llama3` without `factor`")?;
            let get = |k: &str, d: f64| s.get(k).and_then(Value::as_f64).unwrap_or(d);
            let low = get("low_freq_factor", 1.0);
            let high = get("high_freq_factor", 4.0);
            let old = get("original_max_position_embeddings", 8192.0);
            let low_wavelen = old / low;
            let high_wavelen = old / high;
            Ok(periods
                .iter()
                .map(|&p| {
                    let wavelen = 2.0 * std::f64::consts::PI * p;
                    let scaled = if wavelen > low_wavelen { p * f } else { p };
                    let period = if wavelen > high_wavelen && wavelen < low_wavelen {
                        let smooth = (old / wavelen - low) / (high - low);
                        scaled / ((1.0 - smooth) / f + smooth)
                    } else {
                        scaled
                    };
                    (1.0 / period) as f32
                })
                .collect())
        }
        other => Err(format!(
            "rope_scaling type `{other}` is not supported by `mlxk run`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
               "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 128,
               "vocab_size": 100, "eos_token_id": 2})
    }

    #[test]
    fn refuses_what_it_cannot_run_before_loading() {
        let mut c = base();
        c["model_type"] = "mamba".into();
        let e = ModelArgs::from_config(&c, None).unwrap_err();
        assert!(
            e.contains("mamba")
                && e.contains("llama, mistral, qwen2, qwen3")
                && e.contains("gemma3"),
            "{e}"
        );
        let mut c = base();
        c["vision_config"] = json!({});
        assert!(ModelArgs::from_config(&c, None)
            .unwrap_err()
            .contains("vision"));
        let mut c = base();
        c["quantization"] = json!({"group_size": 32, "bits": 4, "mode": "int4_awq"});
        assert!(ModelArgs::from_config(&c, None)
            .unwrap_err()
            .contains("int4_awq"));
        c["quantization"] = json!({"group_size": 16, "bits": 4, "mode": "nvfp4",
                                   "quantize_input": true});
        assert!(ModelArgs::from_config(&c, None)
            .unwrap_err()
            .contains("quantize_input"));
    }

    #[test]
    fn eos_ids_come_from_both_configs_and_rope_from_theta() {
        let g = json!({"eos_token_id": [2, 7]});
        let a = ModelArgs::from_config(&base(), Some(&g)).unwrap();
        assert_eq!(a.eos, [2, 7]);
        assert_eq!(a.head_dim, 16);
        assert_eq!(a.ropes[0].inv_freq.len(), 8);
        assert_eq!(a.ropes[0].inv_freq[0], 1.0);
        assert!((a.ropes[0].inv_freq[1] - 10000f32.powf(-2.0 / 16.0)).abs() < 1e-7);
        let mut c = base();
        c["rope_scaling"] = json!({"type": "linear", "factor": 2.0});
        let a = ModelArgs::from_config(&c, None).unwrap();
        assert_eq!(a.ropes[0].inv_freq[0], 0.5);
    }
}
