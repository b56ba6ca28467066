//! Tiny model files: safetensors bytes, configs, a byte-level BPE tokenizer.

use std::collections::BTreeMap;

use safetensors::Dtype;
use serde_json::{json, Value};

/// xorshift64*: small, seeded, good enough for random weights.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// A safetensors file as MLX writes it: compact header with sorted keys, data in key order.
pub fn safetensors_bytes(tensors: &[TensorSpec], format: Option<&str>) -> Vec<u8> {
    let mut sorted: Vec<&TensorSpec> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut header = serde_json::Map::new();
    if let Some(f) = format {
        header.insert("__metadata__".into(), json!({ "format": f }));
    }
    let mut offset = 0usize;
    for t in &sorted {
        header.insert(
            t.name.clone(),
            json!({"dtype": t.dtype.to_string(), "shape": t.shape, "data_offsets": [offset, offset + t.data.len()]}),
        );
        offset += t.data.len();
    }
    // serde_json's Map keeps insertion order (preserve_order); MLX sorts keys.
    let mut entries: Vec<(String, Value)> = header.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let header: serde_json::Map<String, Value> = entries.into_iter().collect();
    let text = serde_json::to_string(&Value::Object(header)).unwrap_or_default();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    for t in &sorted {
        out.extend_from_slice(&t.data);
    }
    out
}

/// A shard whose header describes `data_bytes` of F16 data that the file does not hold: the
/// caller extends the file sparsely (set_len), so its data region is a hole never written.
/// Returns the header part (8 + N bytes).
pub fn sparse_shard(tensor_name: &str, data_bytes: u64) -> Vec<u8> {
    let elements = data_bytes / 2;
    let header = json!({
        "__metadata__": {"format": "mlx"},
        tensor_name: {"dtype": "F16", "shape": [elements], "data_offsets": [0, elements * 2]},
    });
    let text = serde_json::to_string(&header).unwrap_or_default();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    F16,
    BF16,
}

impl WeightDtype {
    fn dtype(self) -> Dtype {
        match self {
            WeightDtype::F32 => Dtype::F32,
            WeightDtype::F16 => Dtype::F16,
            WeightDtype::BF16 => Dtype::BF16,
        }
    }

    fn torch_name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "float32",
            WeightDtype::F16 => "float16",
            WeightDtype::BF16 => "bfloat16",
        }
    }

    /// Random values of standard deviation ~`std` in this dtype.
    fn random(self, n: usize, std: f32, rng: &mut Rng) -> Vec<u8> {
        let mut out = Vec::with_capacity(n * 4);
        for _ in 0..n {
            let v = rng.next_f32() * std * 1.732;
            match self {
                WeightDtype::F32 => out.extend_from_slice(&v.to_le_bytes()),
                WeightDtype::BF16 => out.extend_from_slice(&f32_to_bf16(v).to_le_bytes()),
                WeightDtype::F16 => out.extend_from_slice(&f32_to_f16(v).to_le_bytes()),
            }
        }
        out
    }
}

fn f32_to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    let round = 0x7FFF + ((bits >> 16) & 1);
    ((bits + round) >> 16) as u16
}

/// Round-to-nearest for the small finite values the fixtures use (no NaN/inf handling needed).
fn f32_to_f16(v: f32) -> u16 {
    let bits = v.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xFF) as i32 - 127 + 15;
    let mant = bits & 0x7F_FFFF;
    if exp <= 0 {
        if exp < -10 {
            return sign;
        }
        let m = (mant | 0x80_0000) >> (1 - exp);
        return sign | ((m + 0x1000) >> 13) as u16;
    }
    if exp >= 31 {
        return sign | 0x7C00;
    }
    let h = ((exp as u32) << 10) | (mant >> 13);
    let h = h + ((mant >> 12) & 1);
    sign | h as u16
}

/// A Llama-family model small enough for unit tests.
#[derive(Debug, Clone)]
pub struct LlamaSpec {
    pub model_type: &'static str,
    pub hidden: usize,
    pub layers: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub tie_embeddings: bool,
    pub dtype: WeightDtype,
    /// `(bits, group_size)`: MLX affine quantization of every linear layer and the embedding.
    pub quantization: Option<(u32, usize)>,
    pub seed: u64,
    /// Standard deviation of the random weights.
    pub std: f32,
    /// Biases on the attention projections (llama's `attention_bias`; always on for qwen2's
    /// q/k/v, whatever this says).
    pub attention_bias: bool,
    /// qwen3_moe: experts per layer (every layer sparse) and their intermediate size.
    pub experts: usize,
    pub moe_intermediate: usize,
}

impl Default for LlamaSpec {
    fn default() -> Self {
        LlamaSpec {
            model_type: "llama",
            hidden: 64,
            layers: 2,
            intermediate: 128,
            heads: 4,
            kv_heads: 2,
            vocab: 259,
            tie_embeddings: false,
            dtype: WeightDtype::F16,
            quantization: None,
            seed: 1,
            std: 0.02,
            attention_bias: false,
            experts: 4,
            moe_intermediate: 64,
        }
    }
}

impl LlamaSpec {
    pub fn config(&self) -> Value {
        let mut c = json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": self.model_type,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": self.tie_embeddings,
            "torch_dtype": self.dtype.torch_name(),
            "bos_token_id": 257,
            "eos_token_id": 258,
            "hidden_act": "silu",
        });
        let head_dim = self.hidden / self.heads;
        match self.model_type {
            "qwen2" => c["architectures"] = json!(["Qwen2ForCausalLM"]),
            "qwen3" => {
                c["architectures"] = json!(["Qwen3ForCausalLM"]);
                c["head_dim"] = json!(head_dim);
            }
            "qwen3_moe" => {
                c["architectures"] = json!(["Qwen3MoeForCausalLM"]);
                c["head_dim"] = json!(head_dim);
                c["num_experts"] = json!(self.experts);
                c["num_experts_per_tok"] = json!(2.min(self.experts));
                c["decoder_sparse_step"] = json!(1);
                c["mlp_only_layers"] = json!([]);
                c["moe_intermediate_size"] = json!(self.moe_intermediate);
                c["norm_topk_prob"] = json!(true);
            }
            _ if self.attention_bias => c["attention_bias"] = json!(true),
            _ => {}
        }
        if let Some((bits, group)) = self.quantization {
            let q = json!({"group_size": group, "bits": bits, "mode": "affine"});
            c["quantization"] = q.clone();
            c["quantization_config"] = q;
        }
        c
    }

    /// The model's tensors in Hugging Face names.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let mut rng = Rng::new(self.seed);
        let head_dim = self.hidden / self.heads;
        let kv = self.kv_heads * head_dim;
        let mut out = Vec::new();
        let linear =
            |out: &mut Vec<TensorSpec>, name: String, rows: usize, cols: usize, rng: &mut Rng| {
                self.push_matrix(out, &name, rows, cols, rng);
            };
        linear(
            &mut out,
            "model.embed_tokens".into(),
            self.vocab,
            self.hidden,
            &mut rng,
        );
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            linear(
                &mut out,
                format!("{p}.self_attn.q_proj"),
                self.hidden,
                self.hidden,
                &mut rng,
            );
            linear(
                &mut out,
                format!("{p}.self_attn.k_proj"),
                kv,
                self.hidden,
                &mut rng,
            );
            linear(
                &mut out,
                format!("{p}.self_attn.v_proj"),
                kv,
                self.hidden,
                &mut rng,
            );
            linear(
                &mut out,
                format!("{p}.self_attn.o_proj"),
                self.hidden,
                self.hidden,
                &mut rng,
            );
            let biased: &[(&str, usize)] = match self.model_type {
                "qwen2" => &[("q_proj", self.hidden), ("k_proj", kv), ("v_proj", kv)],
                "llama" if self.attention_bias => &[
                    ("q_proj", self.hidden),
                    ("k_proj", kv),
                    ("v_proj", kv),
                    ("o_proj", self.hidden),
                ],
                _ => &[],
            };
            for &(proj, rows) in biased {
                out.push(TensorSpec {
                    name: format!("{p}.self_attn.{proj}.bias"),
                    dtype: self.dtype.dtype(),
                    shape: vec![rows],
                    data: self.dtype.random(rows, self.std, &mut rng),
                });
            }
            if matches!(self.model_type, "qwen3" | "qwen3_moe") {
                for norm in ["q_norm", "k_norm"] {
                    out.push(self.norm_of(format!("{p}.self_attn.{norm}.weight"), head_dim));
                }
            }
            if self.model_type == "qwen3_moe" {
                linear(
                    &mut out,
                    format!("{p}.mlp.gate"),
                    self.experts,
                    self.hidden,
                    &mut rng,
                );
                for e in 0..self.experts {
                    let x = format!("{p}.mlp.experts.{e}");
                    let mi = self.moe_intermediate;
                    linear(
                        &mut out,
                        format!("{x}.gate_proj"),
                        mi,
                        self.hidden,
                        &mut rng,
                    );
                    linear(&mut out, format!("{x}.up_proj"), mi, self.hidden, &mut rng);
                    linear(
                        &mut out,
                        format!("{x}.down_proj"),
                        self.hidden,
                        mi,
                        &mut rng,
                    );
                }
            } else {
                linear(
                    &mut out,
                    format!("{p}.mlp.gate_proj"),
                    self.intermediate,
                    self.hidden,
                    &mut rng,
                );
                linear(
                    &mut out,
                    format!("{p}.mlp.up_proj"),
                    self.intermediate,
                    self.hidden,
                    &mut rng,
                );
                linear(
                    &mut out,
                    format!("{p}.mlp.down_proj"),
                    self.hidden,
                    self.intermediate,
                    &mut rng,
                );
            }
            for norm in ["input_layernorm", "post_attention_layernorm"] {
                out.push(self.norm(format!("{p}.{norm}.weight")));
            }
        }
        out.push(self.norm("model.norm.weight".into()));
        if !self.tie_embeddings {
            linear(
                &mut out,
                "lm_head".into(),
                self.vocab,
                self.hidden,
                &mut rng,
            );
        }
        out
    }

    fn norm(&self, name: String) -> TensorSpec {
        self.norm_of(name, self.hidden)
    }

    fn norm_of(&self, name: String, len: usize) -> TensorSpec {
        let one: Vec<u8> = match self.dtype {
            WeightDtype::F32 => 1.0f32.to_le_bytes().to_vec(),
            WeightDtype::F16 => f32_to_f16(1.0).to_le_bytes().to_vec(),
            WeightDtype::BF16 => f32_to_bf16(1.0).to_le_bytes().to_vec(),
        };
        TensorSpec {
            name,
            dtype: self.dtype.dtype(),
            shape: vec![len],
            data: one.repeat(len),
        }
    }

    fn push_matrix(
        &self,
        out: &mut Vec<TensorSpec>,
        module: &str,
        rows: usize,
        cols: usize,
        rng: &mut Rng,
    ) {
        match self.quantization {
            None => out.push(TensorSpec {
                name: format!("{module}.weight"),
                dtype: self.dtype.dtype(),
                shape: vec![rows, cols],
                data: self.dtype.random(rows * cols, self.std, rng),
            }),
            Some((bits, group)) => {
                let packed_cols = cols * bits as usize / 32;
                let mut data = Vec::with_capacity(rows * packed_cols * 4);
                for _ in 0..rows * packed_cols {
                    data.extend_from_slice(&(rng.next_u64() as u32).to_le_bytes());
                }
                out.push(TensorSpec {
                    name: format!("{module}.weight"),
                    dtype: Dtype::U32,
                    shape: vec![rows, packed_cols],
                    data,
                });
                for part in ["scales", "biases"] {
                    out.push(TensorSpec {
                        name: format!("{module}.{part}"),
                        dtype: self.dtype.dtype(),
                        shape: vec![rows, cols / group],
                        data: self.dtype.random(rows * cols / group, 0.01, rng),
                    });
                }
            }
        }
    }
}

/// `model.safetensors` or `model-0000i-of-0000N.safetensors`.
pub fn shard_name(i: usize, n: usize) -> String {
    if n == 1 {
        "model.safetensors".to_string()
    } else {
        format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
    }
}

/// Splits tensors (in name order) into `n` shards of about equal size.
pub fn split_into_shards(tensors: &[TensorSpec], n: usize) -> Vec<Vec<TensorSpec>> {
    let mut sorted = tensors.to_vec();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let total: usize = sorted.iter().map(|t| t.data.len()).sum();
    let per = total.div_ceil(n.max(1));
    let mut shards: Vec<Vec<TensorSpec>> = vec![Vec::new(); n.max(1)];
    let mut acc = 0usize;
    for t in sorted {
        let i = (acc / per.max(1)).min(n - 1);
        acc += t.data.len();
        shards[i].push(t);
    }
    shards
}

/// The index mlx-lm would write for these shards (computed independently of the library).
pub fn index_json(shards: &[(String, Vec<TensorSpec>)], quant_bits: Option<u32>) -> String {
    let mut weight_map = BTreeMap::new();
    let mut total_size = 0usize;
    let mut params = 0usize;
    let all: Vec<&TensorSpec> = shards.iter().flat_map(|(_, ts)| ts.iter()).collect();
    for (name, ts) in shards {
        for t in ts {
            weight_map.insert(t.name.clone(), name.clone());
            total_size += t.data.len();
            let module = t.name.rsplit_once('.').map(|(m, _)| m).unwrap_or("");
            let quantized = all.iter().any(|o| o.name == format!("{module}.scales"));
            let elems: usize = t.shape.iter().product();
            params += match (quantized, t.name.ends_with(".weight"), quant_bits) {
                (true, true, Some(bits)) => elems * 32 / bits as usize,
                (true, false, _) => 0,
                _ => elems,
            };
        }
    }
    let v = json!({"metadata": {"total_size": total_size, "total_parameters": params}, "weight_map": weight_map});
    crate::store::index::to_python_json(&v)
}

/// Every file of a tiny Llama model directory: config, tokenizer, generation config, shards
/// (`n_shards`), and the index when `with_index`.
pub fn llama_model_files(
    spec: &LlamaSpec,
    n_shards: usize,
    with_index: bool,
    format: &str,
) -> Vec<(String, Vec<u8>)> {
    let tensors = spec.tensors();
    let shards: Vec<(String, Vec<TensorSpec>)> = split_into_shards(&tensors, n_shards)
        .into_iter()
        .enumerate()
        .map(|(i, ts)| (shard_name(i, n_shards), ts))
        .collect();
    let mut files = vec![
        ("config.json".to_string(), pretty(&spec.config())),
        (
            "generation_config.json".to_string(),
            pretty(&json!({"bos_token_id": 257, "eos_token_id": 258, "do_sample": false})),
        ),
        ("tokenizer.json".to_string(), tokenizer_json().into_bytes()),
        (
            "tokenizer_config.json".to_string(),
            pretty(&tokenizer_config()),
        ),
        (
            "special_tokens_map.json".to_string(),
            pretty(&json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})),
        ),
    ];
    for (name, ts) in &shards {
        files.push((name.clone(), safetensors_bytes(ts, Some(format))));
    }
    if with_index {
        files.push((
            crate::store::index::INDEX_FILE.to_string(),
            index_json(&shards, spec.quantization.map(|q| q.0)).into_bytes(),
        ));
    }
    files
}

pub fn pretty(v: &Value) -> Vec<u8> {
    serde_json::to_vec_pretty(v).unwrap_or_default()
}

fn tokenizer_config() -> Value {
    json!({
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": 2048,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}",
    })
}

/// GPT-2's byte-to-unicode table: the symbols a byte-level BPE vocabulary is written in.
fn byte_symbols() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap_or('?')
            }
        })
        .collect()
}

/// A byte-level BPE tokenizer with no merges over the 256 byte symbols plus `<unk>`, `<s>`,
/// `</s>` (ids 256..=258): round-trips any UTF-8 text.
pub fn tokenizer_json() -> String {
    let mut vocab = serde_json::Map::new();
    for (i, c) in byte_symbols().into_iter().enumerate() {
        vocab.insert(c.to_string(), json!(i));
    }
    let specials = ["<unk>", "<s>", "</s>"];
    for (i, s) in specials.iter().enumerate() {
        vocab.insert(s.to_string(), json!(256 + i));
    }
    let added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": 256 + i, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    let tok = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []},
    });
    serde_json::to_string(&tok).unwrap_or_default()
}

/// A model that writes a fixed text whatever it is asked (after a prompt ending in a given
/// byte): for tests of what is done with a model's output — reasoning split from the answer,
/// special tokens decoded — where a random model's text says nothing.
///
/// Every token of the script is its own vocabulary entry, so the next token depends on the
/// current one only: one layer whose attention and MLP add nothing (zero output projections),
/// an embedding that gives each token of the chain its own dimension, and an lm_head that maps
/// that dimension to the successor. Greedy decoding follows the chain.
#[derive(Debug, Clone)]
pub struct Script<'a> {
    /// The prompt's last byte (a byte token), where the script starts.
    pub after: u8,
    /// The text of each token written, in order: a special token (each at most once) or a
    /// plain vocabulary entry of that text (each at most once, and not a single byte nor a
    /// special's text: a repeated marker is written in other pieces, e.g. `<|chan`, `nel|>`).
    pub tokens: &'a [&'a str],
    /// Special tokens of the vocabulary (added tokens, `special: true`).
    pub specials: &'a [&'a str],
    /// The special token written after the script: the tokenizer config's eos token.
    pub eos: &'a str,
    pub chat_template: &'a str,
}

/// The files of a [`Script`] model: config, tokenizer, tokenizer config (template, eos) and
/// f32 weights.
pub fn scripted_model_files(script: &Script) -> Vec<(String, Vec<u8>)> {
    let mut tok: Value = serde_json::from_str(&tokenizer_json()).unwrap_or_default();
    let symbols = byte_symbols();
    let mut next_id = 259usize;
    let mut special_ids = BTreeMap::new();
    for &s in script.specials.iter().chain([&script.eos]) {
        if special_ids.contains_key(s) {
            continue;
        }
        special_ids.insert(s, next_id);
        tok["model"]["vocab"][s] = json!(next_id);
        if let Some(added) = tok["added_tokens"].as_array_mut() {
            added.push(
                json!({"id": next_id, "content": s, "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": true}),
            );
        }
        next_id += 1;
    }
    let mut chain = vec![script.after as usize];
    for &t in script.tokens {
        match special_ids.get(t) {
            Some(&id) => chain.push(id),
            None => {
                // A plain entry: the text in the byte-level vocabulary's symbols, so that it
                // decodes to exactly `t`.
                // (tokenizers gives an added token the id of a vocabulary entry of the same
                // text, so a special's text cannot be a plain entry too.)
                let key: String = t.bytes().map(|b| symbols[b as usize]).collect();
                assert!(
                    tok["model"]["vocab"].get(&key).is_none(),
                    "script token {t:?} is already in the vocabulary: split it differently"
                );
                tok["model"]["vocab"][key] = json!(next_id);
                chain.push(next_id);
                next_id += 1;
            }
        }
    }
    let eos = special_ids[script.eos];
    let distinct: std::collections::BTreeSet<usize> = chain.iter().copied().collect();
    assert_eq!(distinct.len(), chain.len(), "a script token repeats");
    let hidden = chain.len().next_multiple_of(16).max(64);
    let spec = LlamaSpec {
        hidden,
        layers: 1,
        intermediate: 64,
        heads: 4,
        kv_heads: 2,
        vocab: next_id,
        dtype: WeightDtype::F32,
        ..LlamaSpec::default()
    };
    let mut tensors = spec.tensors();
    let f32s = |v: Vec<f32>| {
        v.into_iter()
            .flat_map(f32::to_le_bytes)
            .collect::<Vec<u8>>()
    };
    for t in &mut tensors {
        let (rows, cols) = (t.shape[0], t.shape.get(1).copied().unwrap_or(1));
        let mut m = vec![0f32; rows * cols];
        match t.name.as_str() {
            "model.embed_tokens.weight" => {
                for (dim, &id) in chain.iter().enumerate() {
                    m[id * cols + dim] = 1.0;
                }
            }
            "lm_head.weight" => {
                for dim in 0..chain.len() {
                    let successor = chain.get(dim + 1).copied().unwrap_or(eos);
                    m[successor * cols + dim] = 8.0;
                }
            }
            n if n.ends_with("o_proj.weight") || n.ends_with("down_proj.weight") => {}
            _ => continue,
        }
        t.data = f32s(m);
    }
    let mut config = spec.config();
    config["eos_token_id"] = json!(eos);
    let mut tc = tokenizer_config();
    tc["eos_token"] = json!(script.eos);
    tc["chat_template"] = json!(script.chat_template);
    vec![
        ("config.json".to_string(), pretty(&config)),
        ("tokenizer.json".to_string(), tok.to_string().into_bytes()),
        ("tokenizer_config.json".to_string(), pretty(&tc)),
        (
            "model.safetensors".to_string(),
            safetensors_bytes(&tensors, Some("mlx")),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversions() {
        assert_eq!(f32_to_f16(1.0), 0x3C00);
        assert_eq!(f32_to_f16(-2.0), 0xC000);
        assert_eq!(f32_to_f16(0.0), 0);
        assert_eq!(f32_to_bf16(1.0), 0x3F80);
    }

    #[test]
    fn written_files_parse_with_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let spec = LlamaSpec {
            quantization: Some((4, 32)),
            ..Default::default()
        };
        for (name, bytes) in llama_model_files(&spec, 2, true, "mlx") {
            std::fs::write(dir.path().join(&name), bytes).unwrap();
        }
        let h =
            crate::store::read_header(&dir.path().join("model-00001-of-00002.safetensors"), "x")
                .unwrap();
        assert!(h.tensors.len() > 3);
        assert_eq!(h.format(), Some("mlx"));
    }
}
