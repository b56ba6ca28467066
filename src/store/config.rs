//! What the tool needs from a model's `config.json`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// The `quantization` block MLX writes into config.json: the defaults, plus per-module
/// overrides keyed by module path (`{"bits": 8, "group_size": 64}`, or `false` for a module
/// kept in float).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuantizationConfig {
    pub bits: Option<u32>,
    pub group_size: Option<u32>,
    pub mode: Option<String>,
    pub overrides: BTreeMap<String, Option<LayerQuantization>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LayerQuantization {
    pub bits: u32,
    /// mlx-lm's mixed recipes write `null`: the default group size applies.
    #[serde(default)]
    pub group_size: Option<u32>,
    #[serde(default)]
    pub mode: Option<String>,
}

impl QuantizationConfig {
    /// Bits of the module at `path` (e.g. `model.layers.0.mlp.up_proj`); `None` when the module
    /// is not quantized.
    pub fn bits_for(&self, path: &str) -> Option<u32> {
        match self.overrides.get(path) {
            Some(Some(layer)) => Some(layer.bits),
            Some(None) => None,
            None => self.bits,
        }
    }

    /// The quantization mode of the module at `path`: its own entry's (`affine` when the entry
    /// names none, as mlx's `to_quantized` defaults), else the block's (`affine` by default).
    pub fn mode_for(&self, path: &str) -> &str {
        match self.overrides.get(path) {
            Some(Some(layer)) => layer.mode.as_deref().unwrap_or("affine"),
            _ => self.mode.as_deref().unwrap_or("affine"),
        }
    }

    pub fn from_value(value: &Value) -> Option<QuantizationConfig> {
        let obj = value.as_object()?;
        let as_u32 = |v: Option<&Value>| {
            v.and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
        };
        let mut overrides = BTreeMap::new();
        for (k, v) in obj {
            match v {
                Value::Bool(false) => {
                    overrides.insert(k.clone(), None);
                }
                Value::Object(_) => {
                    if let Ok(layer) = serde_json::from_value::<LayerQuantization>(v.clone()) {
                        overrides.insert(k.clone(), Some(layer));
                    }
                }
                _ => {}
            }
        }
        Some(QuantizationConfig {
            bits: as_u32(obj.get("bits")),
            group_size: as_u32(obj.get("group_size")),
            mode: obj.get("mode").and_then(Value::as_str).map(str::to_string),
            overrides,
        })
    }
}

impl<'de> Deserialize<'de> for QuantizationConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        QuantizationConfig::from_value(&v)
            .ok_or_else(|| serde::de::Error::custom("quantization block is not an object"))
    }
}

/// A parsed config.json, kept as JSON with typed accessors for what the tool reads.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub raw: serde_json::Map<String, Value>,
}

impl ModelConfig {
    /// Parses config.json bytes; the error says what is wrong in words a user can act on.
    pub fn parse(bytes: &[u8]) -> Result<ModelConfig, String> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON ({e})"))?;
        match value {
            Value::Object(raw) if !raw.is_empty() => Ok(ModelConfig { raw }),
            Value::Object(_) => Err("is an empty JSON object".to_string()),
            _ => Err("is not a JSON object".to_string()),
        }
    }

    fn str_field(&self, key: &str) -> Option<&str> {
        self.raw.get(key).and_then(Value::as_str)
    }

    fn u64_field(&self, key: &str) -> Option<u64> {
        self.raw
            .get(key)
            .or_else(|| self.raw.get("text_config").and_then(|t| t.get(key)))
            .and_then(Value::as_u64)
    }

    pub fn model_type(&self) -> Option<&str> {
        self.str_field("model_type")
    }

    pub fn architectures(&self) -> Vec<&str> {
        self.raw
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    /// The `quantization` block (MLX), else `quantization_config` (its twin in newer mlx-lm).
    pub fn quantization(&self) -> Option<QuantizationConfig> {
        self.raw
            .get("quantization")
            .or_else(|| self.raw.get("quantization_config"))
            .and_then(QuantizationConfig::from_value)
    }

    /// The raw quantization block as JSON, for display.
    pub fn quantization_value(&self) -> Option<&Value> {
        self.raw
            .get("quantization")
            .or_else(|| self.raw.get("quantization_config"))
    }

    pub fn has_vision(&self) -> bool {
        self.raw.contains_key("vision_config")
    }

    pub fn has_audio(&self) -> bool {
        self.raw.contains_key("audio_config")
            || matches!(self.model_type(), Some("whisper" | "qwen2_audio"))
    }

    pub fn context_length(&self) -> Option<u64> {
        self.u64_field("max_position_embeddings")
            .or_else(|| self.u64_field("max_sequence_length"))
            .or_else(|| self.u64_field("n_ctx"))
    }

    pub fn vocab_size(&self) -> Option<u64> {
        self.u64_field("vocab_size")
    }

    pub fn hidden_size(&self) -> Option<u64> {
        self.u64_field("hidden_size")
    }

    pub fn num_attention_heads(&self) -> Option<u64> {
        self.u64_field("num_attention_heads")
    }

    pub fn num_hidden_layers(&self) -> Option<u64> {
        self.u64_field("num_hidden_layers")
    }

    /// What is wrong with the architecture's sizes, each a sentence: a size present at the top
    /// level must be a positive integer within what any model has (no runtime could allocate
    /// 10⁹ layers), and the kv heads must divide the heads.
    pub fn shape_problems(&self) -> Vec<String> {
        const BOUNDS: [(&str, u64); 7] = [
            ("hidden_size", 1 << 20),
            ("num_hidden_layers", 4096),
            ("num_attention_heads", 4096),
            ("num_key_value_heads", 4096),
            ("head_dim", 4096),
            ("intermediate_size", 1 << 22),
            ("vocab_size", 1 << 24),
        ];
        let mut out = Vec::new();
        for (key, max) in BOUNDS {
            match self.raw.get(key) {
                None | Some(Value::Null) => {}
                Some(v) => match v.as_u64() {
                    Some(0) => out.push(format!("`{key}` is 0")),
                    Some(n) if n > max => out.push(format!("`{key}` is {n}, beyond {max}")),
                    Some(_) => {}
                    None => out.push(format!("`{key}` is {v}, not a positive integer")),
                },
            }
        }
        if let (Some(h), Some(kv)) = (
            self.u64_field("num_attention_heads"),
            self.u64_field("num_key_value_heads"),
        ) {
            if kv > 0 && h > 0 && h % kv != 0 {
                out.push(format!(
                    "`num_key_value_heads` ({kv}) does not divide `num_attention_heads` ({h})"
                ));
            }
        }
        out
    }
}

/// Model types mlx-lm 0.32.2 can load: its `mlx_lm/models/*.py` modules plus the names its
/// `MODEL_REMAPPING` maps onto them (generated from the installed package).
pub const MLX_LM_MODEL_TYPES: &[&str] = &[
    "Klear",
    "afm7",
    "afmoe",
    "apertus",
    "baichuan_m1",
    "bailing_hybrid",
    "bailing_moe",
    "bailing_moe_linear",
    "bailing_moe_v3",
    "bitnet",
    "cohere",
    "cohere2",
    "dbrx",
    "deepseek",
    "deepseek_v2",
    "deepseek_v3",
    "deepseek_v32",
    "deepseek_v41",
    "deepseek_v41_text",
    "dots1",
    "ernie4_5",
    "ernie4_5_moe",
    "exaone",
    "exaone4",
    "exaone_moe",
    "falcon_h1",
    "falcon_mamba",
    "gear",
    "gemma",
    "gemma2",
    "gemma3",
    "gemma3_text",
    "gemma3n",
    "gemma4",
    "gemma4_text",
    "gemma4_unified",
    "glm",
    "glm4",
    "glm4_moe",
    "glm4_moe_lite",
    "glm_moe_dsa",
    "gpt2",
    "gpt_bigcode",
    "gpt_neox",
    "gpt_oss",
    "gptj",
    "granite",
    "granitemoe",
    "granitemoehybrid",
    "helium",
    "hunyuan",
    "hunyuan_v1_dense",
    "internlm2",
    "internlm3",
    "iquestcoder",
    "iquestloopcoder",
    "jamba",
    "joyai_llm_flash",
    "kimi_k2",
    "kimi_k25",
    "kimi_k3",
    "kimi_linear",
    "kimi_vl",
    "laguna",
    "lfm2",
    "lfm2-vl",
    "lfm2_moe",
    "lille-130m",
    "llama",
    "llama4",
    "llama4_text",
    "llava",
    "longcat_flash",
    "longcat_flash_ngram",
    "mamba",
    "mamba2",
    "mellum",
    "mimo",
    "mimo_v2_flash",
    "minicpm",
    "minicpm3",
    "minimax",
    "minimax_m2",
    "minimax_m3_vl",
    "ministral3",
    "mistral",
    "mistral3",
    "mistral4",
    "mixtral",
    "muse_glimmer",
    "muse_spark",
    "nanbeige",
    "nanochat",
    "nemotron",
    "nemotron-nas",
    "nemotron_h",
    "olmo",
    "olmo2",
    "olmo3",
    "olmo_hybrid",
    "olmoe",
    "openelm",
    "phi",
    "phi-msft",
    "phi3",
    "phi3small",
    "phimoe",
    "phixtral",
    "pixtral",
    "plamo",
    "plamo2",
    "plamo3",
    "prism_hadamard_qwen35",
    "qwen",
    "qwen2",
    "qwen2_5_vl",
    "qwen2_moe",
    "qwen2_vl",
    "qwen3",
    "qwen3_5",
    "qwen3_5_moe",
    "qwen3_moe",
    "qwen3_next",
    "qwen3_vl",
    "qwen3_vl_moe",
    "recurrent_gemma",
    "rwkv7",
    "seed_oss",
    "smollm3",
    "solar_open",
    "spark2_5",
    "stablelm",
    "starcoder2",
    "step3p5",
    "talkie",
    "telechat3",
    "xverse",
    "youtu_llm",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantization_overrides_and_defaults() {
        let c = ModelConfig::parse(
            br#"{"model_type":"llama","quantization":{"group_size":64,"bits":4,"mode":"affine",
                "model.layers.0.mlp.gate_proj":{"group_size":64,"bits":8},"lm_head":false,
                "model.embed_tokens":{"group_size":null,"bits":3,"mode":"affine"}}}"#,
        )
        .unwrap();
        let q = c.quantization().unwrap();
        assert_eq!(q.bits, Some(4));
        assert_eq!(q.group_size, Some(64));
        assert_eq!(q.mode.as_deref(), Some("affine"));
        assert_eq!(q.bits_for("model.layers.0.mlp.gate_proj"), Some(8));
        assert_eq!(q.bits_for("model.layers.1.mlp.gate_proj"), Some(4));
        assert_eq!(q.bits_for("lm_head"), None);
        // mixed recipes write a null group size
        assert_eq!(q.bits_for("model.embed_tokens"), Some(3));
    }

    #[test]
    fn config_errors_are_worded() {
        assert!(ModelConfig::parse(b"{")
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(ModelConfig::parse(b"{}").unwrap_err().contains("empty"));
        assert!(ModelConfig::parse(b"[1]")
            .unwrap_err()
            .contains("not a JSON object"));
    }

    #[test]
    fn text_config_fields_are_found() {
        let c = ModelConfig::parse(
            br#"{"model_type":"gemma3","text_config":{"hidden_size":8,"vocab_size":3}}"#,
        )
        .unwrap();
        assert_eq!(c.hidden_size(), Some(8));
        assert_eq!(c.vocab_size(), Some(3));
    }
}
