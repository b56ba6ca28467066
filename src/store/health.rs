//! Strict health: every rule mlx-knife applies, plus what only reading the shard headers shows.
//! All problems are reported, each with a stable code, a message naming the file, and a fix.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::cache::{HubCache, ModelRepo};
use super::config::{ModelConfig, MLX_LM_MODEL_TYPES};
use super::error::StoreError;
use super::files::{
    is_safetensors, open_regular, read_prefix, read_small, FileKind, FileState, ModelFile,
};
use super::index::{
    compare, rebuild_index, IndexDifference, RebuildError, WeightIndex, INDEX_FILE,
};
use super::problem::ProblemCode;
use super::safetensors::{read_header_counted, HeaderError, ShardHeader};
use super::spec::{open_snapshot, ModelLocation, ResolvedModel};

/// One thing wrong with a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Stable identifier, e.g. `index_shard_missing`.
    pub code: ProblemCode,
    /// The file concerned, relative to the model directory.
    pub file: Option<String>,
    /// One line naming the file and what is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Framework {
    #[serde(rename = "MLX")]
    Mlx,
    #[serde(rename = "GGUF")]
    Gguf,
    PyTorch,
    Unknown,
}

impl Framework {
    pub fn as_str(self) -> &'static str {
        match self {
            Framework::Mlx => "MLX",
            Framework::Gguf => "GGUF",
            Framework::PyTorch => "PyTorch",
            Framework::Unknown => "Unknown",
        }
    }
}

/// What a health check found, plus what it learnt on the way (reused by list/show/convert).
#[derive(Debug, Clone)]
pub struct HealthReport {
    pub problems: Vec<Problem>,
    /// Things worth knowing that do not make the model unhealthy (e.g. an older convention).
    pub notes: Vec<Problem>,
    pub framework: Framework,
    pub config: Option<ModelConfig>,
    /// Valid headers of the top-level safetensors files, by file name.
    pub shards: Vec<ShardHeader>,
    /// The index the shard headers imply, when every header could be read.
    pub rebuilt_index: Option<WeightIndex>,
    /// Bytes this check read from the model's files (headers and small metadata files only).
    pub bytes_read: u64,
    /// The model's own index file as this check read it (when it did): whoever compares it
    /// with the rebuilt index need not read it again.
    pub index_bytes: Option<Vec<u8>>,
    /// Total size of the model's present files.
    pub size_bytes: u64,
}

impl HealthReport {
    pub fn healthy(&self) -> bool {
        self.problems.is_empty()
    }

    /// mlx-knife's one-line `reason`: the first problem, or "healthy".
    pub fn reason(&self) -> String {
        match self.problems.as_slice() {
            [] => "All checks passed".to_string(),
            [only] => only.message.clone(),
            [first, rest @ ..] => format!("{} (+{} more problems)", first.message, rest.len()),
        }
    }

    /// Model type known to mlx-lm, framework MLX, healthy: what mlx-knife calls runtime
    /// compatible. The reason is `None` for a runnable model (mlx-knife's `reason: null`).
    pub fn runtime_compatibility(&self) -> (bool, Option<String>) {
        if !self.healthy() {
            return (false, Some(self.reason()));
        }
        if self.framework != Framework::Mlx {
            return (
                false,
                Some(format!("framework is {}, not MLX", self.framework.as_str())),
            );
        }
        match self.config.as_ref().and_then(ModelConfig::model_type) {
            Some(t) if MLX_LM_MODEL_TYPES.contains(&t) => (true, None),
            Some(t) => (
                false,
                Some(format!("model_type `{t}` is not supported by mlx-lm")),
            ),
            None => (false, Some("config.json has no model_type".to_string())),
        }
    }
}

const LFS_POINTER_PREFIX: &[u8] = b"version https://git-lfs.github.com/spec/v1";
/// Files at most this big are sniffed for LFS pointers (real pointers are ~130 bytes).
const LFS_POINTER_MAX: u64 = 1024;
/// tokenizer.json up to this size is parsed fully; larger ones get a cheap structural check.
const TOKENIZER_FULL_PARSE_MAX: u64 = 64 * 1024 * 1024;

/// Runs every check on `model`.
pub fn check(model: &ResolvedModel) -> HealthReport {
    Checker::new(model).run()
}

/// A model and what its health check found.
#[derive(Debug, Clone)]
pub struct CheckedModel {
    pub model: ResolvedModel,
    pub report: HealthReport,
}

/// Every cached model at its default snapshot, checked on up to 8 threads (header reads
/// only), sorted by name. A repo whose snapshot cannot be opened is logged and left out.
pub fn check_cache(cache: &HubCache) -> Result<Vec<CheckedModel>, StoreError> {
    let repos = cache.repos()?;
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8);
    let chunk = repos.len().div_ceil(threads).max(1);
    let mut out: Vec<CheckedModel> = std::thread::scope(|s| {
        let handles: Vec<_> = repos
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .filter_map(|r| check_repo(cache, r))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().ok())
            .flatten()
            .collect()
    });
    out.sort_by(|a, b| a.model.name.cmp(&b.model.name));
    Ok(out)
}

fn check_repo(cache: &HubCache, repo: &ModelRepo) -> Option<CheckedModel> {
    let snapshot = repo.default_snapshot()?;
    match open_snapshot(cache, repo.clone(), snapshot) {
        Ok(model) => {
            let report = check(&model);
            Some(CheckedModel { model, report })
        }
        Err(e) => {
            tracing::warn!("{e}");
            None
        }
    }
}

struct Checker<'m> {
    model: &'m ResolvedModel,
    problems: Vec<Problem>,
    notes: Vec<Problem>,
    bytes_read: u64,
    /// Whole contents of the small files already read (by the LFS sniff), so no file is read twice.
    small_files: BTreeMap<String, Vec<u8>>,
    index_bytes: Option<Vec<u8>>,
}

impl<'m> Checker<'m> {
    fn new(model: &'m ResolvedModel) -> Self {
        Checker {
            model,
            problems: Vec::new(),
            notes: Vec::new(),
            bytes_read: 0,
            small_files: BTreeMap::new(),
            index_bytes: None,
        }
    }

    /// A file's content (at most `limit` bytes), read once per check.
    fn read(&mut self, f: &ModelFile, limit: u64) -> std::io::Result<Vec<u8>> {
        if let Some(bytes) = self.small_files.get(&f.rel_path) {
            return Ok(bytes.iter().take(limit as usize).copied().collect());
        }
        let path = f
            .readable()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
        read_small(path, limit, &mut self.bytes_read)
    }

    fn push(&mut self, code: ProblemCode, file: Option<&str>, message: String, hint: String) {
        self.problems.push(Problem {
            code,
            file: file.map(str::to_string),
            message,
            hint,
        });
    }

    fn redownload_hint(&self) -> String {
        match self.model.repo_id() {
            Some(repo) => format!("re-download it: hf download {repo}"),
            None => "copy the file again from the model's source".to_string(),
        }
    }

    fn repair_hint(&self) -> String {
        format!("mlxk convert {} <output> --repair-index", self.model.name)
    }

    fn top(&self, name: &str) -> Option<&'m ModelFile> {
        self.model.file(name)
    }

    fn run(mut self) -> HealthReport {
        // First, so that it is the reason shown: whatever else is wrong follows from it.
        if let Some(sentinel) = self.model.sentinel().filter(|s| s.is_incomplete()) {
            self.push(
                ProblemCode::ConvertIncomplete,
                Some(super::sentinel::SENTINEL_FILE),
                format!(
                    "incomplete convert: this workspace is an interrupted `{}` ({}); its files may be partial or missing",
                    sentinel.operation,
                    sentinel.mode.as_deref().unwrap_or("convert")
                ),
                "delete the directory and run the convert again into a fresh one".into(),
            );
        }
        let files: Vec<&ModelFile> = self.model.model_files().collect();
        let size_bytes = files.iter().filter_map(|f| f.size()).sum();
        let mut lfs_pointers = Vec::new();
        for f in &files {
            self.check_file_state(f, &mut lfs_pointers);
        }
        let config = self.check_config(&files);
        let shards = self.check_weights(&files, &lfs_pointers);
        let rebuilt_index = self.check_index(&files, &shards, config.as_ref(), &lfs_pointers);
        self.check_tokenizer();
        if let Some(c) = &config {
            if c.has_vision()
                && self.top("preprocessor_config.json").is_none()
                && self.top("processor_config.json").is_none()
            {
                self.push(
                    ProblemCode::ProcessorConfigMissing,
                    Some("preprocessor_config.json"),
                    "vision model without preprocessor_config.json or processor_config.json".into(),
                    "copy the processor config from the source model".into(),
                );
            }
        }
        if let ModelLocation::Workspace {
            sentinel_error: Some(e),
            ..
        } = &self.model.location
        {
            self.push(
                ProblemCode::SentinelInvalid,
                Some(super::sentinel::SENTINEL_FILE),
                e.clone(),
                "delete .mlxk_workspace.json to treat the directory as unmanaged, or recreate the workspace with mlxk convert".into(),
            );
        }
        let framework = self.detect_framework(&files, &shards, config.as_ref());
        HealthReport {
            problems: self.problems,
            notes: self.notes,
            framework,
            config,
            shards,
            rebuilt_index,
            bytes_read: self.bytes_read,
            size_bytes,
            index_bytes: self.index_bytes,
        }
    }

    fn check_file_state(&mut self, f: &ModelFile, lfs_pointers: &mut Vec<String>) {
        match &f.state {
            FileState::Missing {
                incomplete: true, ..
            } => {
                let hint = self.redownload_hint();
                self.push(
                    ProblemCode::DownloadIncomplete,
                    Some(&f.rel_path),
                    format!(
                        "{}: download incomplete (its blob is still .incomplete)",
                        f.rel_path
                    ),
                    hint,
                );
            }
            FileState::Missing { target, .. } => {
                let hint = self.redownload_hint();
                let to = target
                    .as_ref()
                    .map(|t| format!(" -> {}", t.display()))
                    .unwrap_or_default();
                self.push(
                    ProblemCode::FileMissing,
                    Some(&f.rel_path),
                    format!("{}: dangling link{to} (its content is missing)", f.rel_path),
                    hint,
                );
            }
            FileState::NotRegular { what } => {
                let hint = self.redownload_hint();
                self.push(
                    ProblemCode::FileUnreadable,
                    Some(&f.rel_path),
                    format!(
                        "{}: is {what}, not a regular file (never opened)",
                        f.rel_path
                    ),
                    hint,
                );
            }
            FileState::EscapesCache { target } => {
                let hint = self.redownload_hint();
                self.push(
                    ProblemCode::LinkEscapesCache,
                    Some(&f.rel_path),
                    format!(
                        "{}: link leaves the cache ({}); not followed",
                        f.rel_path,
                        target.display()
                    ),
                    hint,
                );
            }
            FileState::Present { resolved, size, .. } => {
                if *size <= LFS_POINTER_MAX && *size >= LFS_POINTER_PREFIX.len() as u64 {
                    if let Ok(head) = read_prefix(resolved, LFS_POINTER_MAX, &mut self.bytes_read) {
                        let is_pointer = head.starts_with(LFS_POINTER_PREFIX);
                        self.small_files.insert(f.rel_path.clone(), head);
                        if is_pointer {
                            lfs_pointers.push(f.rel_path.clone());
                            self.push(
                                ProblemCode::LfsPointer,
                                Some(&f.rel_path),
                                format!("{}: is a Git LFS pointer ({size} bytes), not the real file", f.rel_path),
                                "fetch the real content: git lfs pull, or re-download with hf download".into(),
                            );
                        }
                    }
                }
            }
        }
    }

    fn check_config(&mut self, files: &[&ModelFile]) -> Option<ModelConfig> {
        let has_gguf = files.iter().any(|f| f.name().ends_with(".gguf"));
        let Some(file) = self.top("config.json") else {
            if !has_gguf {
                self.push(
                    ProblemCode::ConfigMissing,
                    Some("config.json"),
                    "config.json is missing".into(),
                    "a model directory needs config.json: copy it from the source model".into(),
                );
            }
            return None;
        };
        file.readable()?;
        let bytes = match self.read(file, 16 * 1024 * 1024) {
            Ok(b) => b,
            Err(e) => {
                self.push(
                    ProblemCode::ConfigInvalid,
                    Some("config.json"),
                    format!("config.json: cannot read ({e})"),
                    "check the file's permissions".into(),
                );
                return None;
            }
        };
        if bytes.starts_with(LFS_POINTER_PREFIX) {
            return None; // already reported as lfs_pointer
        }
        match ModelConfig::parse(&bytes) {
            Ok(c) => {
                for why in c.shape_problems() {
                    self.push(
                        ProblemCode::ConfigInvalid,
                        Some("config.json"),
                        format!("config.json: {why}"),
                        "restore config.json from the source model".into(),
                    );
                }
                if c.model_type().is_none() {
                    self.push(
                        ProblemCode::ConfigModelTypeMissing,
                        Some("config.json"),
                        "config.json has no `model_type`".into(),
                        "add the source model's model_type (e.g. \"llama\") to config.json".into(),
                    );
                }
                Some(c)
            }
            Err(why) => {
                self.push(
                    ProblemCode::ConfigInvalid,
                    Some("config.json"),
                    format!("config.json {why}"),
                    "restore config.json from the source model".into(),
                );
                None
            }
        }
    }

    /// Reads every safetensors header (top level and subdirectories); returns the valid
    /// top-level ones, which are what the index describes.
    fn check_weights(&mut self, files: &[&ModelFile], lfs_pointers: &[String]) -> Vec<ShardHeader> {
        let weights: Vec<&&ModelFile> = files
            .iter()
            .filter(|f| f.kind() == FileKind::Weights)
            .collect();
        if weights.is_empty() {
            self.push(
                ProblemCode::WeightsMissing,
                None,
                "no weight files (*.safetensors, *.gguf, *.bin, *.npz)".into(),
                self.redownload_hint(),
            );
            return vec![];
        }
        let mut shards = Vec::new();
        for f in weights {
            let (Some(path), Some(size)) = (f.readable(), f.size()) else {
                continue;
            };
            if lfs_pointers.contains(&f.rel_path) {
                continue;
            }
            if size == 0 {
                self.push(
                    ProblemCode::WeightsEmpty,
                    Some(&f.rel_path),
                    format!("{}: empty weight file", f.rel_path),
                    self.redownload_hint(),
                );
                continue;
            }
            if f.name().ends_with(".gguf") {
                if let Ok(head) = read_prefix(path, 4, &mut self.bytes_read) {
                    if head != b"GGUF" {
                        self.push(
                            ProblemCode::GgufInvalid,
                            Some(&f.rel_path),
                            format!("{}: not a GGUF file (bad magic)", f.rel_path),
                            self.redownload_hint(),
                        );
                    }
                }
                continue;
            }
            if !is_safetensors(f.name()) {
                continue;
            }
            match read_header_counted(path, &f.rel_path, &mut self.bytes_read) {
                Ok(h) if f.is_top_level() => shards.push(h),
                Ok(_) => {}
                Err(e) => self.header_problem(&f.rel_path, e),
            }
        }
        // Duplicates across shards are an error of the files themselves, index or not.
        let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
        let mut dups = Vec::new();
        for s in &shards {
            for k in s.tensors.keys() {
                if let Some(first) = owner.insert(k, &s.file_name) {
                    dups.push((k.clone(), first.to_string(), s.file_name.clone()));
                }
            }
        }
        for (key, a, b) in dups {
            self.push(
                ProblemCode::TensorDuplicated,
                Some(&b),
                format!("tensor `{key}` is stored in two shards: {a} and {b}"),
                "remove the stale shard (one of the two files is left over from another conversion)".into(),
            );
        }
        shards.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        shards
    }

    fn header_problem(&mut self, rel: &str, e: HeaderError) {
        let hint = self.redownload_hint();
        let code = match &e {
            HeaderError::Truncated { .. } => ProblemCode::ShardTruncated,
            HeaderError::HeaderTooLarge { .. } => ProblemCode::ShardHeaderTooLarge,
            HeaderError::TrailingBytes { .. } => ProblemCode::ShardTrailingBytes,
            HeaderError::Io { .. } => ProblemCode::FileUnreadable,
            HeaderError::TooSmall { .. }
            | HeaderError::HeaderPastEnd { .. }
            | HeaderError::Corrupt { .. } => ProblemCode::ShardHeaderInvalid,
        };
        // The error's own text starts with the absolute path; the report names files relative
        // to the model directory.
        let text = e.to_string();
        let detail = text.split_once(": ").map(|(_, d)| d).unwrap_or(&text);
        self.push(code, Some(rel), format!("{rel}: {detail}"), hint);
    }

    fn check_index(
        &mut self,
        files: &[&ModelFile],
        shards: &[ShardHeader],
        config: Option<&ModelConfig>,
        lfs_pointers: &[String],
    ) -> Option<WeightIndex> {
        let st_files: Vec<&&ModelFile> = files.iter().filter(|f| f.is_top_level_shard()).collect();
        let all_headers_ok = !st_files.is_empty() && st_files.len() == shards.len();
        let quant = config.and_then(ModelConfig::quantization);
        let rebuilt = if all_headers_ok {
            match rebuild_index(shards, quant.as_ref()) {
                Ok(i) => Some(i),
                Err(RebuildError::DuplicateTensor { .. }) | Err(RebuildError::NoShards) => None,
            }
        } else {
            None
        };
        let Some(index_file) = self.top(INDEX_FILE) else {
            let names: Vec<&str> = st_files.iter().map(|f| f.name()).collect();
            self.check_shard_set(&names);
            if st_files.len() > 1 {
                self.push(
                    ProblemCode::IndexMissing,
                    Some(INDEX_FILE),
                    format!(
                        "Safetensors index missing for sharded model ({} shards, no {INDEX_FILE})",
                        st_files.len()
                    ),
                    self.repair_hint(),
                );
            }
            return rebuilt;
        };
        if lfs_pointers.iter().any(|p| p == INDEX_FILE) {
            return rebuilt;
        }
        if index_file.readable().is_none() {
            return rebuilt;
        }
        let parsed = match self.read(index_file, 256 * 1024 * 1024) {
            Ok(bytes) => {
                let parsed = WeightIndex::parse(&bytes);
                self.index_bytes = Some(bytes);
                parsed
            }
            Err(e) => Err(e.to_string()),
        };
        let on_disk = match parsed {
            Ok(i) => i,
            Err(why) => {
                self.push(
                    ProblemCode::IndexInvalid,
                    Some(INDEX_FILE),
                    format!("{INDEX_FILE}: {why}"),
                    self.repair_hint(),
                );
                return rebuilt;
            }
        };
        if on_disk.weight_map.is_empty() {
            self.push(
                ProblemCode::IndexEmpty,
                Some(INDEX_FILE),
                format!("{INDEX_FILE}: weight_map is empty"),
                self.repair_hint(),
            );
            return rebuilt;
        }
        let sizes: Vec<(String, u64)> = st_files
            .iter()
            .map(|f| (f.name().to_string(), f.size().unwrap_or(0)))
            .collect();
        match &rebuilt {
            Some(rebuilt) => {
                let diffs = compare(&on_disk, rebuilt, &sizes);
                self.report_index_differences(&diffs, &sizes);
            }
            None => {
                // Some header is unreadable: compare what can be compared, the file names.
                let present: Vec<&str> = sizes.iter().map(|(n, _)| n.as_str()).collect();
                let named = on_disk.shard_names();
                let mut diffs = Vec::new();
                for n in &named {
                    if !present.contains(n) && !files.iter().any(|f| f.rel_path == *n) {
                        let keys = on_disk.weight_map.values().filter(|s| s == n).count();
                        diffs.push(IndexDifference::ShardMissing {
                            shard: n.to_string(),
                            keys,
                        });
                    }
                }
                for n in &present {
                    if !named.contains(n) {
                        diffs.push(IndexDifference::ShardUnlisted {
                            shard: n.to_string(),
                        });
                    }
                }
                self.report_index_differences(&diffs, &sizes);
            }
        }
        rebuilt
    }

    fn report_index_differences(&mut self, diffs: &[IndexDifference], present: &[(String, u64)]) {
        let hint = self.repair_hint();
        let mut missing_keys = Vec::new();
        let mut extra_keys = Vec::new();
        let mut wrong_shard = Vec::new();
        // The 624 signature: the index names a numbered set other than the one on disk.
        let set_of = |name: &str| parse_shard_name(name).map(|(_, m)| m);
        let present_sets: Vec<u32> = present.iter().filter_map(|(n, _)| set_of(n)).collect();
        for d in diffs {
            match d {
                IndexDifference::ShardMissing { shard, keys } => {
                    let foreign_set = set_of(shard)
                        .is_some_and(|m| !present_sets.is_empty() && !present_sets.contains(&m));
                    let why = if foreign_set {
                        " (index/shard mismatch: the index comes from another conversion, the mlx-vlm #624 defect)"
                    } else {
                        ""
                    };
                    self.push(
                        ProblemCode::IndexShardMissing,
                        Some(shard),
                        format!("{INDEX_FILE} names {shard} ({keys} tensors) but the file does not exist{why}"),
                        hint.clone(),
                    );
                }
                IndexDifference::ShardUnlisted { shard } => self.push(
                    ProblemCode::IndexShardUnlisted,
                    Some(shard),
                    format!("{shard} exists but {INDEX_FILE} does not name it"),
                    hint.clone(),
                ),
                IndexDifference::KeyMissing { key, shard } => {
                    missing_keys.push(format!("{key} ({shard})"))
                }
                IndexDifference::KeyExtra { key, .. } => extra_keys.push(key.clone()),
                IndexDifference::KeyWrongShard {
                    key,
                    index_shard,
                    actual_shard,
                } => wrong_shard.push(format!(
                    "{key} (index: {index_shard}, header: {actual_shard})"
                )),
                IndexDifference::TotalSizeMismatch {
                    on_disk,
                    rebuilt,
                    file_size_convention,
                } => {
                    if *file_size_convention {
                        // Older tools (mlx-knife 2.0.7, older mlx-lm) summed file sizes; loaders
                        // accept it. Worth saying, not a failure.
                        self.notes.push(Problem {
                            code: ProblemCode::IndexTotalSizeFileConvention,
                            file: Some(INDEX_FILE.to_string()),
                            message: format!(
                                "{INDEX_FILE}: total_size {on_disk} is the sum of the shard file sizes (older tools' convention); current tools write the tensor bytes, {rebuilt}"
                            ),
                            hint: format!("optional: {hint} writes the current convention"),
                        });
                    } else {
                        self.push(
                            ProblemCode::IndexTotalSizeMismatch,
                            Some(INDEX_FILE),
                            format!("{INDEX_FILE}: total_size is {on_disk} but the shards hold {rebuilt} bytes of tensor data"),
                            hint.clone(),
                        );
                    }
                }
            }
        }
        let mut grouped = |code: ProblemCode, what: &str, items: Vec<String>| {
            if items.is_empty() {
                return;
            }
            let examples: Vec<&str> = items.iter().take(3).map(String::as_str).collect();
            let more = if items.len() > 3 { ", ..." } else { "" };
            self.push(
                code,
                Some(INDEX_FILE),
                format!(
                    "{INDEX_FILE}: {} {} {what}: {}{more}",
                    items.len(),
                    plural_tensor(items.len()),
                    examples.join(", ")
                ),
                hint.clone(),
            );
        };
        grouped(
            ProblemCode::IndexKeyMissing,
            "in the shards but absent from the index",
            missing_keys,
        );
        grouped(
            ProblemCode::IndexKeyExtra,
            "in the index but in no shard header",
            extra_keys,
        );
        grouped(
            ProblemCode::IndexKeyWrongShard,
            "mapped to the wrong shard",
            wrong_shard,
        );
    }

    /// `model-NNNNN-of-MMMMM.safetensors` files must agree on MMMMM and be complete.
    fn check_shard_set(&mut self, names: &[&str]) {
        let mut totals: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for n in names {
            if let Some((i, m)) = parse_shard_name(n) {
                totals.entry(m).or_default().push(i);
            }
        }
        if totals.len() > 1 {
            let sets: Vec<String> = totals.keys().map(|m| format!("-of-{m:05}")).collect();
            self.push(
                ProblemCode::ShardSetIncomplete,
                None,
                format!("shards from different sets are mixed: {}", sets.join(", ")),
                "remove the shards of the stale set, or re-download the model".into(),
            );
            return;
        }
        if let Some((&m, present)) = totals.iter().next() {
            let missing: Vec<String> = (1..=m)
                .filter(|i| !present.contains(i))
                .map(|i| format!("model-{i:05}-of-{m:05}.safetensors"))
                .collect();
            if !missing.is_empty() {
                self.push(
                    ProblemCode::ShardSetIncomplete,
                    missing.first().map(String::as_str),
                    format!(
                        "sharded set incomplete: {} of {m} shards missing ({})",
                        missing.len(),
                        missing.join(", ")
                    ),
                    self.redownload_hint(),
                );
            }
        }
    }

    fn check_tokenizer(&mut self) {
        if self.top("tokenizer_config.json").is_none() {
            return;
        }
        let Some(tok) = self.top("tokenizer.json") else {
            // A SentencePiece or tiktoken model is a complete tokenizer too.
            let alternative = ["tokenizer.model", "tiktoken.model", "vocab.json"]
                .iter()
                .any(|n| self.top(n).is_some());
            if !alternative {
                self.push(
                    ProblemCode::TokenizerMissing,
                    Some("tokenizer.json"),
                    "tokenizer_config.json is present but tokenizer.json is missing".into(),
                    "copy tokenizer.json from the source model".into(),
                );
            }
            return;
        };
        let (Some(path), Some(size)) = (tok.readable(), tok.size()) else {
            return;
        };
        if self
            .small_files
            .get(&tok.rel_path)
            .is_some_and(|b| b.starts_with(LFS_POINTER_PREFIX))
        {
            return; // reported as lfs_pointer
        }
        let valid = if let Some(bytes) = self.small_files.get(&tok.rel_path) {
            serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else if size <= TOKENIZER_FULL_PARSE_MAX {
            match open_regular(path) {
                Ok(f) => {
                    self.bytes_read += size;
                    serde_json::from_reader::<_, serde::de::IgnoredAny>(std::io::BufReader::new(f))
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            }
        } else {
            structurally_json_object(path, size, &mut self.bytes_read)
        };
        if let Err(why) = valid {
            self.push(
                ProblemCode::TokenizerInvalid,
                Some("tokenizer.json"),
                format!("tokenizer.json is not valid JSON ({why})"),
                "copy tokenizer.json again from the source model".into(),
            );
        }
    }

    fn detect_framework(
        &mut self,
        files: &[&ModelFile],
        shards: &[ShardHeader],
        config: Option<&ModelConfig>,
    ) -> Framework {
        if shards.iter().any(|s| s.format() == Some("mlx"))
            || config.is_some_and(|c| c.quantization_value().is_some())
        {
            return Framework::Mlx;
        }
        if self
            .model
            .repo_id()
            .is_some_and(|r| r.starts_with("mlx-community/"))
        {
            return Framework::Mlx;
        }
        if let Some(readme) = self.top("README.md").filter(|f| f.readable().is_some()) {
            let path = readme.readable().unwrap_or(Path::new(""));
            if let Ok(text) = read_prefix(path, 64 * 1024, &mut self.bytes_read) {
                if readme_declares_mlx(&String::from_utf8_lossy(&text)) {
                    return Framework::Mlx;
                }
            }
        }
        if files.iter().any(|f| f.name().ends_with(".gguf")) {
            return Framework::Gguf;
        }
        if files
            .iter()
            .any(|f| is_safetensors(f.name()) || f.name().ends_with(".bin"))
        {
            return Framework::PyTorch;
        }
        Framework::Unknown
    }
}

fn plural_tensor(n: usize) -> &'static str {
    if n == 1 {
        "tensor"
    } else {
        "tensors"
    }
}

/// `model-00002-of-00004.safetensors` -> (2, 4).
pub fn parse_shard_name(name: &str) -> Option<(u32, u32)> {
    let rest = name.strip_prefix("model-")?.strip_suffix(".safetensors")?;
    let (i, m) = rest.split_once("-of-")?;
    Some((i.parse().ok()?, m.parse().ok()?))
}

/// For files too large to parse on every health check: starts with `{` and ends with `}`.
fn structurally_json_object(path: &Path, size: u64, bytes_read: &mut u64) -> Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = open_regular(path).map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = f.read(&mut head).map_err(|e| e.to_string())?;
    let tail_len = 64.min(size);
    f.seek(SeekFrom::End(-(tail_len as i64)))
        .map_err(|e| e.to_string())?;
    let mut tail = vec![0u8; tail_len as usize];
    f.read_exact(&mut tail).map_err(|e| e.to_string())?;
    *bytes_read += n as u64 + tail_len;
    let first = head[..n].iter().find(|b| !b.is_ascii_whitespace());
    let last = tail.iter().rev().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') && last == Some(&b'}') {
        Ok(())
    } else {
        Err("does not begin with `{` and end with `}`: truncated?".into())
    }
}

/// README front matter with `library_name: mlx` or an `mlx` tag.
fn readme_declares_mlx(text: &str) -> bool {
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some("---") {
        return false;
    }
    let mut in_tags = false;
    for line in lines {
        let t = line.trim();
        if t == "---" {
            break;
        }
        if let Some(v) = t.strip_prefix("library_name:") {
            if v.trim().trim_matches(['"', '\'']) == "mlx" {
                return true;
            }
        }
        if let Some(v) = t.strip_prefix("tags:") {
            let v = v.trim();
            if v.starts_with('[')
                && v.trim_matches(['[', ']'])
                    .split(',')
                    .any(|x| x.trim().trim_matches(['"', '\'']) == "mlx")
            {
                return true;
            }
            in_tags = v.is_empty();
            continue;
        }
        if in_tags {
            if let Some(item) = t.strip_prefix("- ") {
                if item.trim().trim_matches(['"', '\'']) == "mlx" {
                    return true;
                }
            } else if !t.is_empty() {
                in_tags = false;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names() {
        assert_eq!(
            parse_shard_name("model-00002-of-00004.safetensors"),
            Some((2, 4))
        );
        assert_eq!(parse_shard_name("model.safetensors"), None);
    }

    #[test]
    fn readme_front_matter() {
        assert!(readme_declares_mlx("---\nlibrary_name: mlx\n---\n# x"));
        assert!(readme_declares_mlx("---\ntags:\n- text\n- mlx\n---\n"));
        assert!(readme_declares_mlx("---\ntags: [a, \"mlx\"]\n---\n"));
        assert!(!readme_declares_mlx(
            "---\ntags:\n- mlx-lm-ish\n---\nlibrary_name: mlx"
        ));
        assert!(!readme_declares_mlx("# library_name: mlx"));
    }
}
