//! What the engine needs from config.json (and generation_config.json), checked before a
//! byte of weights is mapped: the family, the shapes, RoPE, the eos ids, the quantization.

use crate::store::files::read_small;
use std::path::Path;

use serde_json::Value;

use super::EngineError;
use crate::store::config::QuantizationConfig;

/// The `model_type` values `mlxk run` runs (`mistral` is a llama, as in mlx-lm).
pub const RUN_MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2", "qwen3"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    /// q/k/v biases.
    Qwen2,
    /// RMS norms on q and k per head.
    Qwen3,
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
    /// Per rotary pair i (of head_dim / 2): the angle per position.
    pub inv_freq: Vec<f32>,
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
        if c.get("vision_config").is_some() {
            return Err(format!(
                "`{model_type}` is a vision model; `mlxk run` runs text models ({})",
                RUN_MODEL_TYPES.join(", ")
            ));
        }
        if c.get("audio_config").is_some() {
            return Err(format!(
                "`{model_type}` is an audio model; `mlxk run` runs text models ({})",
                RUN_MODEL_TYPES.join(", ")
            ));
        }
        let arch = match model_type {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            other => {
                return Err(format!(
                    "model_type `{other}` is not supported by `mlxk run` (supported: {})",
                    RUN_MODEL_TYPES.join(", ")
                ))
            }
        };
        let need = |key: &str| get_usize(c, key).ok_or(format!("no `{key}`"));
        let hidden = need("hidden_size")?;
        let heads = need("num_attention_heads")?;
        let kv_heads = get_usize(c, "num_key_value_heads").unwrap_or(heads);
        let head_dim = get_usize(c, "head_dim").unwrap_or(hidden / heads.max(1));
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || !head_dim.is_multiple_of(2) {
            return Err(format!(
                "attention shape not supported: {heads} heads, {kv_heads} kv heads, head_dim {head_dim}"
            ));
        }
        let quantization = c
            .get("quantization")
            .or_else(|| c.get("quantization_config"))
            .and_then(QuantizationConfig::from_value);
        if let Some(q) = &quantization {
            let modes = std::iter::once(q.mode.as_deref())
                .chain(q.overrides.values().flatten().map(|l| l.mode.as_deref()));
            for m in modes.flatten() {
                if m != "affine" {
                    return Err(format!(
                        "quantization mode `{m}` is not implemented by `mlxk run` (affine only); \
                         `mlxk convert SRC DST --dequantize` gives a float model it runs"
                    ));
                }
            }
        }
        let theta = c
            .get("rope_theta")
            .and_then(Value::as_f64)
            .unwrap_or(if arch == Arch::Llama {
                10000.0
            } else {
                1_000_000.0
            });
        let inv_freq = rope_inv_freq(head_dim, theta, c.get("rope_scaling"))?;
        let tie = c
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(arch != Arch::Qwen3);
        let mut eos = ids(c.get("eos_token_id"));
        if let Some(g) = generation {
            for id in ids(g.get("eos_token_id")) {
                if !eos.contains(&id) {
                    eos.push(id);
                }
            }
        }
        Ok(ModelArgs {
            arch,
            model_type: model_type.to_string(),
            hidden,
            layers: need("num_hidden_layers")?,
            heads,
            kv_heads,
            head_dim,
            intermediate: need("intermediate_size")?,
            vocab: need("vocab_size")?,
            eps: c
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-6) as f32,
            tie,
            inv_freq,
            quantization,
            eos,
            context: get_usize(c, "max_position_embeddings"),
        })
    }
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
        c["model_type"] = "gemma3".into();
        let e = ModelArgs::from_config(&c, None).unwrap_err();
        assert!(
            e.contains("gemma3") && e.contains("llama, mistral, qwen2, qwen3"),
            "{e}"
        );
        let mut c = base();
        c["vision_config"] = json!({});
        assert!(ModelArgs::from_config(&c, None)
            .unwrap_err()
            .contains("vision"));
        let mut c = base();
        c["quantization"] = json!({"group_size": 32, "bits": 4, "mode": "mxfp4"});
        assert!(ModelArgs::from_config(&c, None)
            .unwrap_err()
            .contains("mxfp4"));
    }

    #[test]
    fn eos_ids_come_from_both_configs_and_rope_from_theta() {
        let g = json!({"eos_token_id": [2, 7]});
        let a = ModelArgs::from_config(&base(), Some(&g)).unwrap();
        assert_eq!(a.eos, [2, 7]);
        assert_eq!(a.head_dim, 16);
        assert_eq!(a.inv_freq.len(), 8);
        assert_eq!(a.inv_freq[0], 1.0);
        assert!((a.inv_freq[1] - 10000f32.powf(-2.0 / 16.0)).abs() < 1e-7);
        let mut c = base();
        c["rope_scaling"] = json!({"type": "linear", "factor": 2.0});
        let a = ModelArgs::from_config(&c, None).unwrap();
        assert_eq!(a.inv_freq[0], 0.5);
    }
}
