//! Writes fixture caches for the demo, the benchmarks and manual testing.
//!
//! fixture_cache demo   <dir>                   the full catalogue (healthy + every broken variant)
//! fixture_cache many   <dir> <models>          <models> healthy tiny models (benchmarks)
//! fixture_cache sparse <dir> <shards> <bytes>  one model of <shards> sparse shards of <bytes> data each
//! fixture_cache llama  <dir> <hidden> <layers> <intermediate> <vocab> <shards> [f16|bf16|f32]
//!                                               one random Llama `bench/llama` (benchmarks)

use std::path::PathBuf;
use std::process::ExitCode;

use mlxk_fs::testkit::{fixture_cache, llama_model_files, FixtureCache, LlamaSpec, WeightDtype};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["demo", dir] => fixture_cache(&PathBuf::from(dir)).map(|_| ()),
        ["many", dir, n] => many(&PathBuf::from(dir), n.parse().unwrap_or(200)),
        ["sparse", dir, shards, bytes] => FixtureCache::create(&PathBuf::from(dir)).and_then(|c| {
            c.add_sparse_model(
                "bench/sparse-sharded",
                shards.parse().unwrap_or(64),
                bytes.parse().unwrap_or(1 << 30),
            )
            .map(|_| ())
        }),
        ["llama", dir, hidden, layers, inter, vocab, shards, rest @ ..] => {
            let num = |s: &str| s.parse::<usize>().unwrap_or(0);
            let dtype = match rest.first().copied() {
                Some("bf16") => WeightDtype::BF16,
                Some("f32") => WeightDtype::F32,
                _ => WeightDtype::F16,
            };
            let spec = LlamaSpec {
                dtype,
                hidden: num(hidden),
                layers: num(layers),
                intermediate: num(inter),
                vocab: num(vocab),
                heads: num(hidden) / 64,
                kv_heads: (num(hidden) / 64 / 4).max(1),
                ..LlamaSpec::default()
            };
            FixtureCache::create(&PathBuf::from(dir))
                .and_then(|c| {
                    c.add_model(
                        "bench/llama",
                        "v1",
                        &llama_model_files(&spec, num(shards), true, "mlx"),
                    )
                })
                .map(|_| ())
        }
        _ => {
            eprintln!(
                "usage: fixture_cache demo <dir> | many <dir> <models> | sparse <dir> <shards> <bytes-per-shard> \
                 | llama <dir> <hidden> <layers> <intermediate> <vocab> <shards> [f16|bf16|f32]"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fixture_cache: {e}");
            ExitCode::FAILURE
        }
    }
}

fn many(dir: &std::path::Path, n: usize) -> std::io::Result<()> {
    let cache = FixtureCache::create(dir)?;
    for i in 0..n {
        let spec = LlamaSpec {
            seed: i as u64,
            quantization: if i % 2 == 0 { Some((4, 64)) } else { None },
            ..LlamaSpec::default()
        };
        let shards = 1 + i % 4;
        cache.add_model(
            &format!("mlx-community/bench-model-{i:04}"),
            "v1",
            &llama_model_files(&spec, shards, true, "mlx"),
        )?;
    }
    Ok(())
}
