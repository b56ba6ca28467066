//! `convert --quantize` / `--dequantize`: a new managed workspace whose weights are computed
//! tensor by tensor from memory-mapped source shards, in row blocks, on every core, and written
//! at offsets planned up front. The whole model is never in memory: peak RSS is a few row
//! blocks, whatever the model's size.
//!
//! Order of writes, so that no interruption leaves a workspace that looks complete: the
//! sentinel first (marked in progress), carried-over files, config.json, the shards, then the
//! index, then the sentinel marked complete.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use memmap2::Mmap;
use rayon::prelude::*;
use serde_json::{json, Map, Value};

use crate::store::cache::{canonicalize_lenient, HubCache};
use crate::store::config::QuantizationConfig;
use crate::store::content;
use crate::store::health::HealthReport;
use crate::store::index::{to_python_json, WeightIndex, INDEX_FILE};
use crate::store::safetensors::{read_header, ShardHeader};
use crate::store::sentinel::{write_file_atomic, Sentinel, SENTINEL_FILE};
use crate::store::spec::ResolvedModel;

use super::copy::{copy_file, CopyStats};
use super::plan::{plan, Job, Operation, Plan, Work};
use super::shards::{Location, ShardFiles, ShardPlan, MAX_SHARD_BYTES};
use super::target::{
    check_result, check_target, create_target, gate_source, source_identity, undo, write_index,
};
use super::ConvertError;
use crate::mlx::{cast_row, FloatDtype, PackedRow, PackedRowMut, Scheme, Scratch};

/// Source bytes per row block (the unit of parallel work): small enough that the blocks in
/// flight (one per thread) keep RSS at a few MiB and that big tensors split evenly across
/// threads, big enough that per-block overhead (a write per output, an madvise) is noise.
const BLOCK_BYTES: u64 = 2 << 20;

/// Where a long convert is, for progress bars.
#[derive(Debug, Clone)]
pub struct WeightsProgress<'a> {
    pub tensors_done: usize,
    pub tensors_total: usize,
    /// Source tensor bytes processed.
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub current: &'a str,
}

#[derive(Debug, Clone, Default)]
pub struct WeightsOptions {
    pub skip_health: bool,
    /// Largest tensor-data size of one output shard (mlx-lm's 5 GiB unless testing).
    pub max_shard_bytes: Option<u64>,
}

#[derive(Debug)]
pub struct WeightsOutcome {
    pub target: PathBuf,
    /// Carried-over files (tokenizer, generation config, ...).
    pub copy: CopyStats,
    pub index: WeightIndex,
    pub shards: Vec<String>,
    /// The new config's `quantization` block (`None` after dequantize).
    pub quantization: Option<Value>,
    /// The top-level scheme of a quantize.
    pub scheme: Option<Scheme>,
    /// The dtype float tensors were cast to, if any.
    pub dtype: Option<FloatDtype>,
    /// Tensors quantized / dequantized / kept.
    pub converted_tensors: usize,
    pub kept_tensors: usize,
    pub dropped: Vec<String>,
    pub source_bytes: u64,
    /// Tensor data bytes written.
    pub output_bytes: u64,
    pub elapsed: Duration,
    pub health: Option<HealthReport>,
    /// The workspace's content hash (`sha256:<hex>`), recorded in its sentinel.
    pub content_hash: String,
}

impl WeightsOutcome {
    /// mlx-lm's bits per weight: every output byte over the unquantized parameter count.
    pub fn bits_per_weight(&self) -> f64 {
        match self.index.total_parameters {
            Some(p) if p > 0 => self.output_bytes as f64 * 8.0 / p as f64,
            _ => 0.0,
        }
    }
}

/// Converts `src` into a new workspace at `dst` by `op`.
///
/// `dst` must not exist or be an empty directory and must not resolve into any of `caches`.
/// On failure after `dst` was created, its weight files are removed and its sentinel stays
/// marked in progress (health reports "convert_incomplete"); `src` is never written.
pub fn convert_weights(
    src: &ResolvedModel,
    dst: &Path,
    caches: &[&HubCache],
    op: &Operation,
    opts: &WeightsOptions,
    progress: &mut dyn FnMut(WeightsProgress<'_>),
) -> Result<WeightsOutcome, ConvertError> {
    let started = Instant::now();
    let target = canonicalize_lenient(dst);
    check_target(src, dst, &target, caches)?;
    gate_source(src)?;
    let config_file = src
        .file("config.json")
        .and_then(|f| f.readable())
        .ok_or_else(|| ConvertError::Plan {
            model: src.name.clone(),
            reason: "the source has no config.json: its model type (and so which tensors to quantize) is unknown".into(),
        })?;
    let config_bytes = fs::read(config_file).map_err(|source| ConvertError::Io {
        path: config_file.to_path_buf(),
        what: "cannot read",
        source,
    })?;
    let config: Value = serde_json::from_slice(&config_bytes).map_err(|e| ConvertError::Plan {
        model: src.name.clone(),
        reason: format!("config.json is not valid JSON ({e})"),
    })?;
    if !config.is_object() {
        return Err(ConvertError::Plan {
            model: src.name.clone(),
            reason: "config.json is not a JSON object".into(),
        });
    }
    let weight_files: Vec<_> = src
        .model_files()
        .filter(|f| f.is_top_level_shard())
        .collect();
    if weight_files.is_empty() {
        return Err(ConvertError::Plan {
            model: src.name.clone(),
            reason: "no *.safetensors weights to convert".into(),
        });
    }
    let mut headers = Vec::with_capacity(weight_files.len());
    let mut paths = Vec::with_capacity(weight_files.len());
    for f in &weight_files {
        let path = f.readable().ok_or_else(|| ConvertError::Io {
            path: f.path.clone(),
            what: "source file disappeared",
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        headers.push(read_header(path, &f.rel_path)?);
        paths.push(path.to_path_buf());
    }
    let plan = plan(&headers, &config, op).map_err(|e| ConvertError::Plan {
        model: src.name.clone(),
        reason: e.to_string(),
    })?;
    let outputs: Vec<_> = plan.jobs.iter().flat_map(|j| j.outputs.clone()).collect();
    let shard_plan = ShardPlan::new(&outputs, opts.max_shard_bytes.unwrap_or(MAX_SHARD_BYTES));
    // Map every source shard before creating anything: a file that cannot be mapped fails
    // the convert while the target does not exist yet.
    let maps = map_sources(&paths)?;
    tracing::debug!(elapsed = ?started.elapsed(), jobs = plan.jobs.len(), "planned");

    let created = create_target(&target)?;
    let result = fill_target(FillInput {
        src,
        target: &target,
        config,
        headers: &headers,
        plan: &plan,
        shard_plan: &shard_plan,
        maps: &maps,
        op,
        opts,
        started,
        progress,
    });
    if result.is_err() {
        if target.join(SENTINEL_FILE).exists() {
            abandon(&target, &shard_plan);
        } else {
            // Not even the sentinel could be written: nothing here is worth keeping.
            undo(&target, created.as_deref());
        }
    }
    result
}

struct FillInput<'a, 'p> {
    src: &'a ResolvedModel,
    target: &'a Path,
    config: Value,
    headers: &'a [ShardHeader],
    plan: &'a Plan,
    shard_plan: &'a ShardPlan,
    maps: &'a [SourceMap],
    op: &'a Operation,
    opts: &'a WeightsOptions,
    started: Instant,
    progress: &'p mut dyn FnMut(WeightsProgress<'_>),
}

fn fill_target(input: FillInput<'_, '_>) -> Result<WeightsOutcome, ConvertError> {
    let FillInput {
        src,
        target,
        mut config,
        headers,
        plan,
        shard_plan,
        maps,
        op,
        opts,
        started,
        progress,
    } = input;
    let (source_repo, source_revision) = source_identity(src);
    let mode = match op {
        Operation::Quantize(_) => "quantize",
        Operation::Dequantize { .. } => "dequantize",
    };
    let mut sentinel = Sentinel::new("convert", Some(mode), source_repo, source_revision);
    sentinel.convert_state = Some(Sentinel::IN_PROGRESS.to_string());
    if let Some(s) = plan.scheme {
        sentinel.extra.insert(
            "quantization".into(),
            json!({"bits": s.bits(), "group_size": s.group_size(), "mode": s.mode()}),
        );
    }
    sentinel.write_atomic(target)?;

    // Everything but the weights, the index, the sentinel and config.json, verbatim.
    let mut copy = CopyStats::default();
    let mut carried = std::collections::HashSet::new();
    for f in src.model_files() {
        let weights = f.is_top_level_shard();
        let regenerated = [INDEX_FILE, SENTINEL_FILE, "config.json"].contains(&f.rel_path.as_str());
        if weights || regenerated {
            continue;
        }
        if let Some(from) = f.readable() {
            copy_file(from, &target.join(&f.rel_path), &mut copy)?;
            carried.insert(f.rel_path.clone());
        }
    }
    write_config(target, &mut config, plan.quantization.as_ref())?;

    tracing::debug!(elapsed = ?started.elapsed(), "target prepared, computing tensors");
    let files = ShardFiles::create(target, shard_plan)?;
    let bytes_total = run_jobs(plan, maps, shard_plan, &files, headers, progress)?;
    tracing::debug!(elapsed = ?started.elapsed(), "tensors written, flushing");
    files.sync()?;
    drop(files);

    let quant_config = plan
        .quantization
        .as_ref()
        .and_then(QuantizationConfig::from_value);
    let names: Vec<&str> = shard_plan
        .shards
        .iter()
        .map(|s| s.file_name.as_str())
        .collect();
    let index = write_index(target, &names, quant_config.as_ref(), &mut 0)?;
    // Only the files carried over verbatim are the source's bytes; the rest was computed.
    let mut known = content::known_digests(src);
    known.retain(|rel, _| carried.contains(rel));
    let content_hash = super::finish_sentinel(target, &mut sentinel, &known)?;
    tracing::debug!(elapsed = ?started.elapsed(), "index and sentinel written");

    let health = check_result(target, opts.skip_health)?;
    let converted_tensors = plan
        .jobs
        .iter()
        .filter(|j| matches!(j.work, Work::Quantize { .. } | Work::Dequantize { .. }))
        .count();
    let dtype = match op {
        Operation::Quantize(q) => super::plan::conversion_dtype(q.dtype, &config),
        Operation::Dequantize { dtype } => super::plan::conversion_dtype(*dtype, &config),
    };
    Ok(WeightsOutcome {
        target: target.to_path_buf(),
        copy,
        shards: shard_plan
            .shards
            .iter()
            .map(|s| s.file_name.clone())
            .collect(),
        output_bytes: shard_plan.data_bytes(),
        index,
        quantization: plan.quantization.clone(),
        scheme: plan.scheme,
        dtype,
        converted_tensors,
        kept_tensors: plan.jobs.len() - converted_tensors,
        dropped: plan.dropped.clone(),
        source_bytes: bytes_total,
        elapsed: started.elapsed(),
        health,
        content_hash,
    })
}

/// config.json as mlx-lm's `save_config` writes it: `_name_or_path` removed, the quantization
/// block set (twice: `quantization` and `quantization_config`) or removed, keys sorted,
/// 4-space indent.
fn write_config(
    target: &Path,
    config: &mut Value,
    quantization: Option<&Value>,
) -> Result<(), ConvertError> {
    let Some(obj) = config.as_object_mut() else {
        return Ok(());
    };
    obj.remove("_name_or_path");
    obj.remove("quantization");
    obj.remove("quantization_config");
    if let Some(q) = quantization {
        obj.insert("quantization".into(), q.clone());
        obj.insert("quantization_config".into(), q.clone());
    }
    let mut keys: Vec<String> = obj.keys().cloned().collect();
    keys.sort();
    let mut sorted = Map::new();
    for k in keys {
        if let Some(v) = obj.remove(&k) {
            sorted.insert(k, v);
        }
    }
    *obj = sorted;
    let path = target.join("config.json");
    write_file_atomic(&path, to_python_json(config).as_bytes()).map_err(|source| ConvertError::Io {
        path,
        what: "cannot write config.json",
        source,
    })
}

/// A failed convert: the weight files go (they can be large, and a disk-full failure should
/// give the space back); the sentinel stays marked in progress so that nothing mistakes the
/// directory for a complete workspace.
fn abandon(target: &Path, shard_plan: &ShardPlan) {
    for name in shard_plan
        .shards
        .iter()
        .map(|s| s.file_name.as_str())
        .chain([INDEX_FILE])
    {
        let p = target.join(name);
        if let Err(e) = fs::remove_file(&p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %p.display(), "cannot remove a partial file: {e}");
            }
        }
    }
}

/// A source shard mapped read-only.
struct SourceMap {
    path: PathBuf,
    map: Mmap,
}

fn map_sources(paths: &[PathBuf]) -> Result<Vec<SourceMap>, ConvertError> {
    paths
        .iter()
        .map(|path| {
            let file = File::open(path).map_err(|source| ConvertError::Io {
                path: path.clone(),
                what: "cannot open",
                source,
            })?;
            // SAFETY: the mapping is read-only and source files are never written by this
            // process. Another process truncating a cache blob while it is converted would
            // fault the reads (SIGBUS); the cache's blobs are immutable by contract.
            let map = unsafe { Mmap::map(&file) }.map_err(|source| ConvertError::Io {
                path: path.clone(),
                what: "cannot map",
                source,
            })?;
            let _ = map.advise(memmap2::Advice::Sequential);
            Ok(SourceMap {
                path: path.clone(),
                map,
            })
        })
        .collect()
}

impl SourceMap {
    /// `len` bytes at `offset`, checked against the mapping (headers were validated, but the
    /// file may have changed since).
    fn bytes(&self, offset: u64, len: u64) -> Result<&[u8], ConvertError> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.map.len() as u64);
        match end {
            Some(end) => Ok(&self.map[offset as usize..end as usize]),
            None => Err(ConvertError::Io {
                path: self.path.clone(),
                what: "the shard is shorter than its header says (changed during the convert?)",
                source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            }),
        }
    }

    /// Drops the pages of a processed range from this process (they stay in the page cache):
    /// what keeps RSS at a few blocks instead of the model's size.
    fn release(&self, offset: u64, len: u64) {
        // SAFETY: MADV_DONTNEED on a read-only shared file mapping only drops page-table
        // entries; later reads fault the same file contents back in. No slice of the range is
        // used after this call (each block's slices end with the block).
        let _ = unsafe {
            self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                offset as usize,
                len as usize,
            )
        };
    }
}

/// The geometry of a job: bytes per row of each input and output, where its outputs go.
struct JobLayout {
    in_row: Vec<u64>,
    out_row: Vec<u64>,
    locations: Vec<Location>,
    rows_per_part: u64,
}

impl JobLayout {
    fn new(job: &Job, shard_plan: &ShardPlan) -> JobLayout {
        // Rows are everything but the last dimension (1 for vectors and scalars).
        let rows =
            |shape: &[usize]| -> u64 { shape.iter().rev().skip(1).map(|&d| d as u64).product() };
        let in_row = job
            .inputs
            .iter()
            .map(|i| i.parts[0].nbytes / rows(&i.parts[0].shape).max(1))
            .collect();
        let out_row = job
            .outputs
            .iter()
            .map(|o| o.nbytes() / rows(&o.shape).max(1))
            .collect();
        let locations = job
            .outputs
            .iter()
            .map(|o| shard_plan.locations[&o.name])
            .collect();
        JobLayout {
            in_row,
            out_row,
            locations,
            rows_per_part: rows(&job.inputs[0].parts[0].shape),
        }
    }

    fn empty(&self) -> bool {
        self.rows_per_part == 0 || self.in_row.contains(&0) || self.out_row.contains(&0)
    }
}

/// A run of rows of one job: the unit of parallel work.
struct Block {
    job: usize,
    part: usize,
    /// First row within the part.
    row: u64,
    rows: u64,
    /// First row of the output (parts are concatenated).
    out_row: u64,
}

/// Runs every job as row blocks on the thread pool. Each block reads its rows from the
/// mapping, computes them, writes them at their planned offsets and releases the source pages,
/// so reading, computing and writing overlap across threads. Progress is reported between
/// batches of blocks, on the calling thread.
fn run_jobs(
    plan: &Plan,
    maps: &[SourceMap],
    shard_plan: &ShardPlan,
    files: &ShardFiles,
    headers: &[ShardHeader],
    progress: &mut dyn FnMut(WeightsProgress<'_>),
) -> Result<u64, ConvertError> {
    let layouts: Vec<JobLayout> = plan
        .jobs
        .iter()
        .map(|j| JobLayout::new(j, shard_plan))
        .collect();
    let mut blocks = Vec::new();
    for (j, (job, layout)) in plan.jobs.iter().zip(&layouts).enumerate() {
        if layout.empty() {
            continue; // a tensor with a zero dimension: its header says it all
        }
        let per_block = (BLOCK_BYTES / layout.in_row.iter().sum::<u64>().max(1)).max(1);
        let mut out_row = 0;
        for part in 0..job.inputs[0].parts.len() {
            let mut row = 0;
            while row < layout.rows_per_part {
                let rows = per_block.min(layout.rows_per_part - row);
                blocks.push(Block {
                    job: j,
                    part,
                    row,
                    rows,
                    out_row,
                });
                row += rows;
                out_row += rows;
            }
        }
    }
    let tensors_total = plan.jobs.len();
    let bytes_total: u64 = plan.jobs.iter().map(Job::source_bytes).sum();
    let batch = rayon::current_num_threads().max(1) * 8;
    let mut bytes_done = 0u64;
    for chunk in blocks.chunks(batch) {
        let last = &plan.jobs[chunk[chunk.len() - 1].job];
        progress(WeightsProgress {
            tensors_done: chunk[0].job,
            tensors_total,
            bytes_done,
            bytes_total,
            current: last.name(),
        });
        chunk.par_iter().try_for_each(|b| {
            run_block(&plan.jobs[b.job], &layouts[b.job], b, maps, files, headers)
        })?;
        bytes_done += chunk
            .iter()
            .map(|b| layouts[b.job].in_row.iter().sum::<u64>() * b.rows)
            .sum::<u64>();
    }
    progress(WeightsProgress {
        tensors_done: tensors_total,
        tensors_total,
        bytes_done: bytes_total,
        bytes_total,
        current: "",
    });
    Ok(bytes_total)
}

fn run_block(
    job: &Job,
    layout: &JobLayout,
    b: &Block,
    maps: &[SourceMap],
    files: &ShardFiles,
    headers: &[ShardHeader],
) -> Result<(), ConvertError> {
    let mut inputs = Vec::with_capacity(job.inputs.len());
    for (input, &rb) in job.inputs.iter().zip(&layout.in_row) {
        let p = &input.parts[b.part];
        let bytes = maps[p.shard]
            .bytes(p.offset + b.row * rb, b.rows * rb)
            .map_err(|e| annotate(e, &headers[p.shard].file_name, &input.name))?;
        inputs.push(bytes);
    }
    let mut outputs: Vec<Vec<u8>> = layout
        .out_row
        .iter()
        .map(|&rb| vec![0u8; (b.rows * rb) as usize])
        .collect();
    let mut scratch = Scratch::default();
    for r in 0..b.rows as usize {
        let row_in: Vec<&[u8]> = inputs
            .iter()
            .zip(&layout.in_row)
            .map(|(buf, &rb)| &buf[r * rb as usize..(r + 1) * rb as usize])
            .collect();
        let mut row_out: Vec<&mut [u8]> = outputs
            .iter_mut()
            .zip(&layout.out_row)
            .map(|(buf, &rb)| &mut buf[r * rb as usize..(r + 1) * rb as usize])
            .collect();
        compute_row(&job.work, &row_in, &mut row_out, &mut scratch);
    }
    for ((buf, &rb), loc) in outputs.iter().zip(&layout.out_row).zip(&layout.locations) {
        files.write_at(loc.shard, loc.offset + b.out_row * rb, buf)?;
    }
    for (input, &rb) in job.inputs.iter().zip(&layout.in_row) {
        let p = &input.parts[b.part];
        maps[p.shard].release(p.offset + b.row * rb, b.rows * rb);
    }
    Ok(())
}

fn annotate(e: ConvertError, file: &str, tensor: &str) -> ConvertError {
    match e {
        ConvertError::Io { path, what, source } => ConvertError::Io {
            path,
            what,
            source: std::io::Error::new(
                source.kind(),
                format!("{source} (reading `{tensor}` of {file})"),
            ),
        },
        other => other,
    }
}

fn compute_row(work: &Work, inputs: &[&[u8]], outputs: &mut [&mut [u8]], s: &mut Scratch) {
    match *work {
        Work::Copy => outputs[0].copy_from_slice(inputs[0]),
        Work::Cast { from, to } => cast_row(inputs[0], from, to, outputs[0], s),
        Work::Quantize {
            scheme,
            source,
            dtype,
        } => {
            let (weight, rest) = outputs.split_at_mut(1);
            let (scales, biases) = rest.split_at_mut(1);
            let mut none: [u8; 0] = [];
            let biases: &mut [u8] = match biases.first_mut() {
                Some(b) => b,
                None => &mut none,
            };
            let out = PackedRowMut {
                words: weight[0],
                scales: scales[0],
                biases,
            };
            scheme.quantize_row(inputs[0], source, dtype, out, s);
        }
        Work::Dequantize {
            scheme,
            scale_dtype,
            out,
        } => {
            let biases = inputs.get(2).copied().unwrap_or(&[]);
            let packed = PackedRow {
                words: inputs[0],
                scales: inputs[1],
                biases,
            };
            scheme.dequantize_row(packed, scale_dtype, out, outputs[0], s);
        }
    }
}
