//! The fuzz targets shared by `examples/fuzz.rs` (the mutation fuzzer, scripts/fuzz.sh) and
//! `tests/fuzz_corpus.rs` (its corpus replayed as regression tests): the parsers that read what
//! users and downloads put on disk.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::{llama_model_files, LlamaSpec, Rng};
use crate::store::config::ModelConfig;
use crate::store::{read_header, Sentinel, WeightIndex};

pub const TARGETS: [&str; 4] = ["header", "index", "sentinel", "config"];

/// Runs `target` on `input` (`scratch`: a directory for the header's file); what it says, in a
/// few words with the numbers masked (the behaviour it shows).
pub fn run(target: &str, input: &[u8], scratch: &Path) -> String {
    // The kind of answer, not its details: quoted names and numbers masked, five words.
    let words = |s: String| {
        let mut masked = String::new();
        let mut quoted = false;
        for c in s.chars() {
            match c {
                '`' | '"' | '\'' => quoted = !quoted,
                _ if quoted => {}
                c if c.is_ascii_digit() => {
                    if !masked.ends_with('#') {
                        masked.push('#');
                    }
                }
                c => masked.push(c),
            }
        }
        masked
            .split_whitespace()
            .take(5)
            .collect::<Vec<_>>()
            .join(" ")
    };
    match target {
        "header" => {
            let p = scratch.join("shard.safetensors");
            fs::write(&p, input).expect("scratch file");
            match read_header(&p, "shard.safetensors") {
                Ok(h) => format!("ok {} tensors {:?}", h.tensors.len(), h.format()),
                Err(e) => words(e.to_string().replace(&p.display().to_string(), "")),
            }
        }
        "index" => match WeightIndex::parse(input) {
            Ok(i) => format!("ok {} keys", i.weight_map.len()),
            Err(e) => words(e),
        },
        "sentinel" => match Sentinel::parse(input) {
            Ok(s) => format!("ok {}", s.operation),
            Err(e) => words(e),
        },
        _ => match ModelConfig::parse(input) {
            Ok(c) => format!(
                "ok {:?} {} {}",
                c.model_type(),
                c.quantization().is_some(),
                c.shape_problems().len()
            ),
            Err(e) => words(e),
        },
    }
}

/// Valid inputs of every target.
pub fn seeds() -> BTreeMap<&'static str, Vec<Vec<u8>>> {
    let spec = LlamaSpec {
        quantization: Some((4, 32)),
        layers: 1,
        ..LlamaSpec::default()
    };
    let files = llama_model_files(&spec, 2, true, "mlx");
    let get = |name: &str| {
        files
            .iter()
            .filter(|(n, _)| n.contains(name))
            .map(|(_, b)| b.clone())
            .collect::<Vec<_>>()
    };
    let mut out = BTreeMap::new();
    out.insert("header", get(".safetensors"));
    out.insert("index", get("index.json"));
    let sentinel = Sentinel::new(
        "convert",
        Some("quantize"),
        Some("org/model".into()),
        Some("abc".into()),
    );
    out.insert(
        "sentinel",
        vec![serde_json::to_vec_pretty(&sentinel).expect("sentinel json")],
    );
    let mut configs = get("config.json");
    configs.push(br#"{"model_type":"qwen3","quantization":{"group_size":64,"bits":4,"model.layers.0.mlp.up_proj":{"group_size":32,"bits":8}},"num_attention_heads":16}"#.to_vec());
    configs.push(
        br#"{"model_type":"llava","text_config":{"hidden_size":64},"vision_config":{"depth":2}}"#
            .to_vec(),
    );
    out.insert("config", configs);
    out
}

/// JSON fragments and numbers that parsers meet at their edges.
const TOKENS: [&[u8]; 16] = [
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b",",
    b":",
    b"null",
    b"-1",
    b"1e309",
    b"18446744073709551615",
    b"\"data_offsets\"",
    b"\"dtype\"",
    b"\"U32\"",
    b"\\u0000",
    b"\xff\xfe",
];

/// `input` with one to four random edits.
pub fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    let below = |rng: &mut Rng, n: usize| (rng.next_u64() % n.max(1) as u64) as usize;
    for _ in 0..1 + below(rng, 4) {
        let at = below(rng, v.len() + 1);
        match below(rng, 8) {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] ^= 1 << below(rng, 8);
            }
            1 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] = rng.next_u64() as u8;
            }
            2 => v.truncate(at),
            3 if at < v.len() => {
                let n = below(rng, 16).min(v.len() - at);
                v.drain(at..at + n);
            }
            4 => {
                let t = TOKENS[below(rng, TOKENS.len())];
                v.splice(at..at, t.iter().copied());
            }
            5 if at < v.len() => {
                let n = below(rng, 64).min(v.len() - at);
                let chunk: Vec<u8> = v[at..at + n].to_vec();
                v.splice(at..at, chunk);
            }
            6 if v.len() >= 8 => {
                // The safetensors length prefix, or any 8 bytes, set to an edge value.
                let edge = [
                    0u64,
                    1,
                    7,
                    8,
                    u64::MAX,
                    1 << 40,
                    (v.len() as u64).saturating_sub(8),
                ][below(rng, 7)];
                let i = if below(rng, 2) == 0 {
                    0
                } else {
                    at.min(v.len() - 8)
                };
                v[i..i + 8].copy_from_slice(&edge.to_le_bytes());
            }
            _ => {
                let digit = b'0' + below(rng, 10) as u8;
                if let Some(i) = v[at.min(v.len())..].iter().position(u8::is_ascii_digit) {
                    v[at + i] = digit;
                }
            }
        }
    }
    v
}

/// A short content name for a saved input.
pub fn hash(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(b)[..8]
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}
