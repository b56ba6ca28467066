//! A real HF cache layout on disk: blobs named by content hash, relative snapshot links, refs.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::model::{llama_model_files, sparse_shard, LlamaSpec, TensorSpec, WeightDtype};
use crate::store::cache::dir_name_from_repo_id;
use crate::store::index::INDEX_FILE;

/// A cache being written.
#[derive(Debug, Clone)]
pub struct FixtureCache {
    pub root: PathBuf,
}

/// A deterministic 40-hex commit sha for a label.
pub fn fake_sha(label: &str) -> String {
    hex(&Sha256::digest(label.as_bytes()))[..40].to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl FixtureCache {
    pub fn create(root: &Path) -> io::Result<FixtureCache> {
        fs::create_dir_all(root)?;
        Ok(FixtureCache {
            root: root.to_path_buf(),
        })
    }

    pub fn repo_dir(&self, repo_id: &str) -> PathBuf {
        self.root.join(dir_name_from_repo_id(repo_id))
    }

    pub fn snapshot_dir(&self, repo_id: &str, sha: &str) -> PathBuf {
        self.repo_dir(repo_id).join("snapshots").join(sha)
    }

    /// Stores `bytes` as a blob named by its sha256 (as LFS files are) and returns the name.
    pub fn write_blob(&self, repo_id: &str, bytes: &[u8]) -> io::Result<String> {
        let etag = hex(&Sha256::digest(bytes));
        let blobs = self.repo_dir(repo_id).join("blobs");
        fs::create_dir_all(&blobs)?;
        let path = blobs.join(&etag);
        if !path.exists() {
            fs::write(&path, bytes)?;
        }
        Ok(etag)
    }

    /// Links `snapshots/<sha>/<rel>` to `blobs/<etag>` with a relative link, as huggingface_hub does.
    pub fn link(&self, repo_id: &str, sha: &str, rel: &str, etag: &str) -> io::Result<PathBuf> {
        let depth = rel.matches('/').count();
        let target = format!("{}../../blobs/{etag}", "../".repeat(depth));
        self.link_raw(repo_id, sha, rel, &target)
    }

    /// A snapshot link with an arbitrary target (for broken layouts).
    pub fn link_raw(
        &self,
        repo_id: &str,
        sha: &str,
        rel: &str,
        target: &str,
    ) -> io::Result<PathBuf> {
        let link = self.snapshot_dir(repo_id, sha).join(rel);
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent)?;
        }
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link)?;
        Ok(link)
    }

    /// Writes a whole snapshot and points `refs/main` at it.
    pub fn add_model(
        &self,
        repo_id: &str,
        label: &str,
        files: &[(String, Vec<u8>)],
    ) -> io::Result<String> {
        let sha = self.add_snapshot(repo_id, label, files)?;
        self.set_ref(repo_id, "main", &sha)?;
        Ok(sha)
    }

    /// Writes a snapshot without touching refs.
    pub fn add_snapshot(
        &self,
        repo_id: &str,
        label: &str,
        files: &[(String, Vec<u8>)],
    ) -> io::Result<String> {
        let sha = fake_sha(&format!("{repo_id}@{label}"));
        fs::create_dir_all(self.snapshot_dir(repo_id, &sha))?;
        for (rel, bytes) in files {
            let etag = self.write_blob(repo_id, bytes)?;
            self.link(repo_id, &sha, rel, &etag)?;
        }
        Ok(sha)
    }

    pub fn set_ref(&self, repo_id: &str, name: &str, sha: &str) -> io::Result<()> {
        let path = self.repo_dir(repo_id).join("refs").join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(path, sha)
    }

    /// Sets a snapshot directory's mtime (the fallback order when refs/main is absent).
    pub fn set_snapshot_mtime(&self, repo_id: &str, sha: &str, t: SystemTime) -> io::Result<()> {
        File::open(self.snapshot_dir(repo_id, sha))?.set_modified(t)
    }

    /// A model of `shards` shards whose headers describe `bytes_per_shard` bytes of data each,
    /// held as sparse holes: a health check that read tensor data would read them all.
    pub fn add_sparse_model(
        &self,
        repo_id: &str,
        shards: usize,
        bytes_per_shard: u64,
    ) -> io::Result<String> {
        let sha = fake_sha(&format!("{repo_id}@sparse"));
        fs::create_dir_all(self.snapshot_dir(repo_id, &sha))?;
        let mut weight_map = serde_json::Map::new();
        for i in 0..shards {
            let name = super::model::shard_name(i, shards);
            let tensor = format!("model.layers.{i}.mlp.weight");
            let header = sparse_shard(&tensor, bytes_per_shard);
            let etag = format!(
                "{}{:08x}",
                &hex(&Sha256::digest(&header))[..56],
                bytes_per_shard
            );
            let blob = self.repo_dir(repo_id).join("blobs").join(&etag);
            fs::create_dir_all(blob.parent().unwrap_or(&self.root))?;
            let mut f = File::create(&blob)?;
            f.write_all(&header)?;
            f.set_len(header.len() as u64 + bytes_per_shard)?;
            self.link(repo_id, &sha, &name, &etag)?;
            weight_map.insert(tensor, serde_json::Value::String(name));
        }
        let mut sorted: Vec<_> = weight_map.into_iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let index = serde_json::json!({
            "metadata": {"total_size": bytes_per_shard * shards as u64, "total_parameters": bytes_per_shard / 2 * shards as u64},
            "weight_map": sorted.into_iter().collect::<serde_json::Map<_, _>>(),
        });
        let index = crate::store::index::to_python_json(&index);
        let etag = self.write_blob(repo_id, index.as_bytes())?;
        self.link(repo_id, &sha, INDEX_FILE, &etag)?;
        let config = serde_json::to_vec(
            &serde_json::json!({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}),
        )?;
        let etag = self.write_blob(repo_id, &config)?;
        self.link(repo_id, &sha, "config.json", &etag)?;
        self.set_ref(repo_id, "main", &sha)?;
        Ok(sha)
    }
}

fn replace(files: &mut Vec<(String, Vec<u8>)>, name: &str, bytes: Vec<u8>) {
    files.retain(|(n, _)| n != name);
    files.push((name.to_string(), bytes));
}

fn remove(files: &mut Vec<(String, Vec<u8>)>, name: &str) -> Vec<u8> {
    let pos = files
        .iter()
        .position(|(n, _)| n == name)
        .unwrap_or(usize::MAX);
    if pos == usize::MAX {
        return Vec::new();
    }
    files.remove(pos).1
}

fn mlx_readme(base: &str) -> Vec<u8> {
    format!("---\nlibrary_name: mlx\ntags:\n- mlx\nbase_model: {base}\n---\n# {base}\n\nConverted to MLX.\n").into_bytes()
}

/// Every repo [`fixture_cache`] writes, with what it is for.
pub const FIXTURE_REPOS: &[(&str, &str)] = &[
    ("mlx-community/Llama-tiny-f16", "healthy, 2 shards + index"),
    (
        "mlx-community/Llama-tiny-bf16",
        "healthy, model.safetensors + index",
    ),
    (
        "mlx-community/Llama-tiny-f32",
        "healthy, model.safetensors, no index",
    ),
    (
        "mlx-community/Llama-tiny-4bit",
        "healthy, 4-bit quantized, 2 shards + index",
    ),
    (
        "meta-test/Llama-tiny",
        "healthy PyTorch-style original (bf16, 3 shards, format pt)",
    ),
    (
        "mlx-community/Qwen2.5-VL-tiny-4bit",
        "the mlx-vlm 624 defect: 4 shards, index of a 10-shard source",
    ),
    ("broken/missing-shard", "index names a shard that is absent"),
    ("broken/unlisted-shard", "a shard the index does not name"),
    ("broken/truncated-shard", "a shard cut short"),
    ("broken/corrupt-header", "a shard whose header is not JSON"),
    (
        "broken/absurd-header",
        "a shard whose header length is 2^60",
    ),
    (
        "broken/lfs-pointer",
        "a Git LFS pointer instead of the weights",
    ),
    (
        "broken/incomplete-download",
        "a dangling link to an .incomplete blob",
    ),
    ("broken/no-index", "2 shards, no index"),
    ("broken/duplicate-key", "one tensor in two shards"),
    ("broken/escaping-link", "a snapshot link leaving the cache"),
    (
        "broken/no-tokenizer",
        "tokenizer_config.json without tokenizer.json",
    ),
    ("broken/bad-config", "config.json without model_type"),
    (
        "test-org/Multi-snap",
        "two snapshots: refs/main the older, refs/dev the newer",
    ),
    (
        "test-org/No-refs",
        "two snapshots, no refs: the newest wins",
    ),
    ("TheBloke/tiny-GGUF", "a GGUF repo"),
];

/// Writes the full fixture cache under `root`: healthy models, every broken variant, several
/// snapshots, a dataset that must be ignored, and a file outside the cache that a link points to.
pub fn fixture_cache(root: &Path) -> io::Result<FixtureCache> {
    let cache = FixtureCache::create(root)?;
    let base = LlamaSpec::default();
    let f16 = LlamaSpec {
        seed: 2,
        ..base.clone()
    };
    let q4 = LlamaSpec {
        quantization: Some((4, 64)),
        seed: 3,
        ..base.clone()
    };

    let mut files = llama_model_files(&f16, 2, true, "mlx");
    files.push(("README.md".into(), mlx_readme("meta-test/Llama-tiny")));
    cache.add_model("mlx-community/Llama-tiny-f16", "v1", &files)?;

    let bf16 = LlamaSpec {
        dtype: WeightDtype::BF16,
        tie_embeddings: true,
        seed: 4,
        ..base.clone()
    };
    cache.add_model(
        "mlx-community/Llama-tiny-bf16",
        "v1",
        &llama_model_files(&bf16, 1, true, "mlx"),
    )?;

    let f32 = LlamaSpec {
        dtype: WeightDtype::F32,
        seed: 5,
        ..base.clone()
    };
    cache.add_model(
        "mlx-community/Llama-tiny-f32",
        "v1",
        &llama_model_files(&f32, 1, false, "mlx"),
    )?;

    let mut files = llama_model_files(&q4, 2, true, "mlx");
    files.push(("README.md".into(), mlx_readme("meta-test/Llama-tiny")));
    cache.add_model("mlx-community/Llama-tiny-4bit", "v1", &files)?;

    let orig = LlamaSpec {
        dtype: WeightDtype::BF16,
        seed: 6,
        ..base.clone()
    };
    cache.add_model(
        "meta-test/Llama-tiny",
        "v1",
        &llama_model_files(&orig, 3, true, "pt"),
    )?;

    // mlx-vlm 624: the converted model's 4 shards with the bf16 source's 10-shard index copied over.
    // The tensors are Llama's (no q/k/v biases), so the model type says llama: the repaired
    // workspace must load in mlx-lm, which checks every parameter.
    let vl = LlamaSpec {
        layers: 4,
        quantization: Some((4, 64)),
        seed: 7,
        ..base.clone()
    };
    let mut files = llama_model_files(&vl, 4, true, "mlx");
    let source = LlamaSpec {
        layers: 4,
        dtype: WeightDtype::BF16,
        seed: 7,
        ..base.clone()
    };
    let source_files = llama_model_files(&source, 10, true, "pt");
    let source_index = source_files
        .iter()
        .find(|(n, _)| n == INDEX_FILE)
        .map(|(_, b)| b.clone())
        .unwrap_or_default();
    replace(&mut files, INDEX_FILE, source_index);
    files.push(("README.md".into(), mlx_readme("Qwen/Qwen2.5-VL-tiny")));
    cache.add_model("mlx-community/Qwen2.5-VL-tiny-4bit", "v1", &files)?;

    let sharded = |seed| {
        llama_model_files(
            &LlamaSpec {
                seed,
                ..base.clone()
            },
            3,
            true,
            "mlx",
        )
    };

    let mut files = sharded(10);
    remove(&mut files, "model-00002-of-00003.safetensors");
    cache.add_model("broken/missing-shard", "v1", &files)?;

    // The index of a 2-shard split, beside 3 shards.
    let mut files = sharded(11);
    let two = llama_model_files(
        &LlamaSpec {
            seed: 11,
            ..base.clone()
        },
        2,
        true,
        "mlx",
    );
    let stale: Vec<u8> = two
        .iter()
        .find(|(n, _)| n == INDEX_FILE)
        .map(|(_, b)| b.clone())
        .unwrap_or_default();
    let stale = String::from_utf8_lossy(&stale).replace("-of-00002", "-of-00003");
    replace(&mut files, INDEX_FILE, stale.into_bytes());
    cache.add_model("broken/unlisted-shard", "v1", &files)?;

    let mut files = sharded(12);
    let mut shard = remove(&mut files, "model-00002-of-00003.safetensors");
    shard.truncate(shard.len() - 100);
    files.push(("model-00002-of-00003.safetensors".into(), shard));
    cache.add_model("broken/truncated-shard", "v1", &files)?;

    let mut files = sharded(13);
    let mut shard = remove(&mut files, "model-00001-of-00003.safetensors");
    shard[8] = b'#'; // the header's opening brace
    shard[20] = b'\xff';
    files.push(("model-00001-of-00003.safetensors".into(), shard));
    cache.add_model("broken/corrupt-header", "v1", &files)?;

    let mut files = sharded(14);
    let mut shard = remove(&mut files, "model-00003-of-00003.safetensors");
    shard[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    files.push(("model-00003-of-00003.safetensors".into(), shard));
    cache.add_model("broken/absurd-header", "v1", &files)?;

    let mut files = llama_model_files(
        &LlamaSpec {
            seed: 15,
            ..base.clone()
        },
        1,
        false,
        "mlx",
    );
    let real = remove(&mut files, "model.safetensors");
    let pointer = format!(
        "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n",
        hex(&Sha256::digest(&real)),
        real.len()
    );
    files.push(("model.safetensors".into(), pointer.into_bytes()));
    cache.add_model("broken/lfs-pointer", "v1", &files)?;

    let mut files = llama_model_files(
        &LlamaSpec {
            seed: 16,
            ..base.clone()
        },
        1,
        false,
        "mlx",
    );
    let real = remove(&mut files, "model.safetensors");
    let sha = cache.add_model("broken/incomplete-download", "v1", &files)?;
    let etag = hex(&Sha256::digest(&real));
    let blobs = cache.repo_dir("broken/incomplete-download").join("blobs");
    fs::write(
        blobs.join(format!("{etag}.incomplete")),
        &real[..real.len() / 2],
    )?;
    cache.link(
        "broken/incomplete-download",
        &sha,
        "model.safetensors",
        &etag,
    )?;

    let mut files = sharded(17);
    let mut two = llama_model_files(
        &LlamaSpec {
            seed: 17,
            ..base.clone()
        },
        2,
        false,
        "mlx",
    );
    files.retain(|(n, _)| !n.ends_with(".safetensors") && n != INDEX_FILE);
    files.extend(two.drain(..).filter(|(n, _)| n.ends_with(".safetensors")));
    cache.add_model("broken/no-index", "v1", &files)?;

    // One tensor in both shards.
    let spec = LlamaSpec {
        seed: 18,
        ..base.clone()
    };
    let tensors = spec.tensors();
    let dup = tensors
        .iter()
        .find(|t| t.name == "model.norm.weight")
        .cloned();
    let mut split = super::model::split_into_shards(&tensors, 2);
    if let Some(d) = dup {
        let first_has = split[0].iter().any(|t| t.name == d.name);
        split[if first_has { 1 } else { 0 }].push(d);
    }
    let shards: Vec<(String, Vec<TensorSpec>)> = split
        .into_iter()
        .enumerate()
        .map(|(i, ts)| (super::model::shard_name(i, 2), ts))
        .collect();
    let mut files: Vec<(String, Vec<u8>)> = llama_model_files(&spec, 1, false, "mlx")
        .into_iter()
        .filter(|(n, _)| !n.ends_with(".safetensors"))
        .collect();
    for (name, ts) in &shards {
        files.push((
            name.clone(),
            super::model::safetensors_bytes(ts, Some("mlx")),
        ));
    }
    files.push((
        INDEX_FILE.into(),
        super::model::index_json(&shards, None).into_bytes(),
    ));
    cache.add_model("broken/duplicate-key", "v1", &files)?;

    // A link out of the cache, to a real file that must never be read.
    let outside = root
        .parent()
        .unwrap_or(root)
        .join("outside-the-cache.safetensors");
    let f32_files = llama_model_files(
        &LlamaSpec {
            seed: 19,
            ..base.clone()
        },
        1,
        false,
        "mlx",
    );
    if let Some((_, bytes)) = f32_files.iter().find(|(n, _)| n == "model.safetensors") {
        fs::write(&outside, bytes)?;
    }
    let files: Vec<_> = f32_files
        .into_iter()
        .filter(|(n, _)| n != "model.safetensors")
        .collect();
    let sha = cache.add_model("broken/escaping-link", "v1", &files)?;
    cache.link_raw(
        "broken/escaping-link",
        &sha,
        "model.safetensors",
        "../../../../outside-the-cache.safetensors",
    )?;

    let mut files = llama_model_files(
        &LlamaSpec {
            seed: 20,
            ..base.clone()
        },
        1,
        true,
        "mlx",
    );
    remove(&mut files, "tokenizer.json");
    cache.add_model("broken/no-tokenizer", "v1", &files)?;

    let mut files = llama_model_files(
        &LlamaSpec {
            seed: 21,
            ..base.clone()
        },
        1,
        true,
        "mlx",
    );
    replace(
        &mut files,
        "config.json",
        br#"{"hidden_size": 64, "num_hidden_layers": 2}"#.to_vec(),
    );
    cache.add_model("broken/bad-config", "v1", &files)?;

    // Two snapshots: refs/main names the older one, refs/dev the newer.
    let old = cache.add_snapshot(
        "test-org/Multi-snap",
        "old",
        &llama_model_files(
            &LlamaSpec {
                seed: 22,
                ..base.clone()
            },
            1,
            true,
            "mlx",
        ),
    )?;
    let new = cache.add_snapshot(
        "test-org/Multi-snap",
        "new",
        &llama_model_files(
            &LlamaSpec {
                seed: 23,
                layers: 3,
                ..base.clone()
            },
            1,
            true,
            "mlx",
        ),
    )?;
    cache.set_ref("test-org/Multi-snap", "main", &old)?;
    cache.set_ref("test-org/Multi-snap", "dev", &new)?;
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    cache.set_snapshot_mtime("test-org/Multi-snap", &old, t0)?;
    cache.set_snapshot_mtime("test-org/Multi-snap", &new, t0 + Duration::from_secs(3600))?;

    let a = cache.add_snapshot(
        "test-org/No-refs",
        "a",
        &llama_model_files(
            &LlamaSpec {
                seed: 24,
                ..base.clone()
            },
            1,
            true,
            "mlx",
        ),
    )?;
    let b = cache.add_snapshot(
        "test-org/No-refs",
        "b",
        &llama_model_files(
            &LlamaSpec {
                seed: 25,
                layers: 3,
                ..base.clone()
            },
            1,
            true,
            "mlx",
        ),
    )?;
    cache.set_snapshot_mtime("test-org/No-refs", &a, t0 + Duration::from_secs(7200))?;
    cache.set_snapshot_mtime("test-org/No-refs", &b, t0)?;

    let mut gguf = b"GGUF".to_vec();
    gguf.extend_from_slice(&3u32.to_le_bytes());
    gguf.extend_from_slice(&[0u8; 24]);
    cache.add_model(
        "TheBloke/tiny-GGUF",
        "v1",
        &[
            ("tiny.Q4_0.gguf".into(), gguf),
            ("README.md".into(), b"# tiny GGUF\n".to_vec()),
        ],
    )?;

    // Not models: ignored by every command.
    fs::create_dir_all(root.join("datasets--someone--data/snapshots"))?;
    fs::create_dir_all(root.join(".locks/models--mlx-community--Llama-tiny-f16"))?;
    Ok(cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of fixture repos says exactly what the fixture writes.
    #[test]
    fn the_fixture_writes_exactly_the_repos_its_table_lists() {
        let t = tempfile::tempdir().unwrap();
        fixture_cache(t.path()).unwrap();
        let cache = crate::store::HubCache::open(t.path()).unwrap();
        let mut written: Vec<String> = cache
            .repos()
            .unwrap()
            .into_iter()
            .map(|r| r.repo_id)
            .collect();
        let mut listed: Vec<String> = FIXTURE_REPOS.iter().map(|(r, _)| r.to_string()).collect();
        written.sort();
        listed.sort();
        assert_eq!(written, listed);
    }
}
