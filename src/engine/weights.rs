//! The model's tensors, memory-mapped from its `model*.safetensors` and never copied: a float
//! matrix is its mapped bytes, a quantized one its mapped packed words, scales and biases.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::Dtype;

use super::args::ModelArgs;
#[cfg(target_arch = "x86_64")]
use super::kernels::Decode;
use super::kernels::Kernels;
use super::EngineError;
use crate::mlx::fp::FpMode;
use crate::mlx::FloatDtype;
use crate::store::files::is_mlx_lm_weights;
use crate::store::safetensors::read_header;

/// A byte range of a mapped file.
#[derive(Clone)]
pub struct Blob {
    map: Arc<Mmap>,
    start: usize,
    len: usize,
}

impl Blob {
    pub fn bytes(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }

    /// Drops this range's pages from the process (they stay in the page cache): for bytes
    /// that were copied elsewhere and are rarely read again.
    #[cfg(target_arch = "x86_64")]
    fn release(&self) {
        // SAFETY: MADV_DONTNEED on a read-only shared file mapping only drops page-table
        // entries; later reads fault the same file contents back in, so every slice of it
        // stays valid.
        let _ = unsafe {
            self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                self.start,
                self.len,
            )
        };
    }

    /// `len` bytes from `offset` of this range (which must hold them).
    fn slice(&self, offset: usize, len: usize) -> Blob {
        assert!(offset + len <= self.len, "a slice past its blob");
        Blob {
            map: self.map.clone(),
            start: self.start + offset,
            len,
        }
    }

    /// `bytes` in a mapped temporary file (kernel tests).
    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: &[u8]) -> Blob {
        use std::io::Write;
        let mut f = tempfile::tempfile().expect("tempfile");
        f.write_all(bytes).expect("write");
        // SAFETY: a private temporary file nobody else holds.
        let map = unsafe { Mmap::map(&f) }.expect("map");
        Blob {
            map: Arc::new(map),
            start: 0,
            len: bytes.len(),
        }
    }
}

struct Entry {
    file: usize,
    offset: usize,
    len: usize,
    dtype: Dtype,
    shape: Vec<usize>,
}

/// Every tensor of the model's weight files.
pub struct WeightFiles {
    dir: PathBuf,
    maps: Vec<Arc<Mmap>>,
    entries: HashMap<String, Entry>,
    /// Bytes of all mapped tensor data.
    pub total_bytes: u64,
}

/// How a 2-D weight is stored.
#[derive(Clone)]
pub enum Weights {
    Float {
        data: Blob,
        dtype: FloatDtype,
    },
    /// MLX affine quantization: `w = q * scale + bias` per group of `group` values.
    Affine {
        words: Blob,
        scales: Blob,
        biases: Blob,
        dtype: FloatDtype,
        bits: u32,
        group: usize,
    },
    /// MLX's microscaling float modes: FP4 E2M1 (mxfp4, nvfp4) or FP8 E4M3 (mxfp8) codes
    /// packed LSB-first, one u8 scale per group (E8M0 `2^(s-127)`; nvfp4: an FP8 E4M3 value).
    Fp {
        words: Blob,
        scales: Blob,
        mode: FpMode,
    },
}

/// A 2-D weight as the kernels read it, with the kernels chosen for it when it was loaded.
#[derive(Clone)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub weights: Weights,
    pub(crate) kernels: Kernels,
    /// The 4-bit rows repacked for the tiled decode kernel, when this CPU has it.
    #[cfg(target_arch = "x86_64")]
    pub(crate) tiles: Option<super::tiles::TiledRows>,
}

/// A quantized matrix's stored bytes as the kernels read them (one argument instead of eight).
#[derive(Clone, Copy)]
pub struct QuantizedRows<'a> {
    pub words: &'a [u8],
    pub scales: &'a [u8],
    pub biases: &'a [u8],
    /// The dtype of the scales and biases.
    pub dtype: FloatDtype,
    pub bits: u32,
    pub group: usize,
    pub rows: usize,
    pub cols: usize,
}

/// A microscaling-float matrix's stored bytes, row by row (what its kernels read).
#[derive(Clone, Copy)]
pub struct FpRows<'a> {
    pub words: &'a [u8],
    pub scales: &'a [u8],
    pub mode: FpMode,
    /// Bytes of packed codes per row.
    pub row_bytes: usize,
    /// Scales (groups) per row.
    pub groups: usize,
}

impl<'a> FpRows<'a> {
    /// Row `r`'s packed codes and scales.
    pub fn row(&self, r: usize) -> (&'a [u8], &'a [u8]) {
        (
            &self.words[r * self.row_bytes..(r + 1) * self.row_bytes],
            &self.scales[r * self.groups..(r + 1) * self.groups],
        )
    }
}

impl QuantizedRows<'_> {
    pub fn groups(&self) -> usize {
        self.cols / self.group
    }

    /// Bytes of packed codes per row.
    pub fn row_bytes(&self) -> usize {
        self.cols * self.bits as usize / 8
    }
}

impl Matrix {
    /// A matrix with the best kernels this CPU has for it.
    pub fn new(weights: Weights, rows: usize, cols: usize) -> Matrix {
        let mut m = Matrix {
            rows,
            cols,
            kernels: Kernels::best(&weights, cols, crate::simd::cpu()),
            weights,
            #[cfg(target_arch = "x86_64")]
            tiles: None,
        };
        #[cfg(target_arch = "x86_64")]
        m.repack();
        m
    }

    /// On a CPU with the tiled 4-bit kernel: the rows repacked for it (decode and prompts then
    /// read only those) and the mapped pages of the packed codes, scales and biases dropped
    /// from this process (the page cache keeps them; what else reads them faults them back
    /// in). If the memory for the tiles cannot be had, the next-best kernels run on the
    /// mapped rows.
    #[cfg(target_arch = "x86_64")]
    fn repack(&mut self) {
        let cpu = crate::simd::cpu();
        let choices = Kernels::decode_choices(&self.weights, self.cols, cpu);
        if !choices.contains(&Decode::Q4Tiled) {
            return;
        }
        let Some(q) = self.quantized() else { return };
        match super::tiles::Q4Tiles::repack(&q) {
            Ok(tiles) => {
                self.tiles = Some(tiles);
                if let Weights::Affine {
                    words,
                    scales,
                    biases,
                    ..
                } = &self.weights
                {
                    for blob in [words, scales, biases] {
                        blob.release();
                    }
                }
            }
            Err(e) => {
                tracing::warn!("4-bit rows not repacked ({e}): decoding them from the mapping");
                self.kernels = Kernels::without_tiles(&self.weights, self.cols, cpu);
            }
        }
    }

    /// The same weights multiplied by other kernels (tests compare every kernel the CPU has).
    #[cfg(test)]
    pub(crate) fn with_kernels(&self, kernels: Kernels) -> Matrix {
        Matrix {
            kernels,
            ..self.clone()
        }
    }

    /// Rows `first..first + count` as a matrix of their own, on the same mapped bytes (the q, k
    /// and v of a fused qkv projection; one expert of a stacked expert tensor).
    pub fn row_range(&self, first: usize, count: usize) -> Matrix {
        assert!(first + count <= self.rows, "rows past the matrix");
        let weights = match &self.weights {
            Weights::Float { data, dtype } => {
                let row = self.cols * dtype.size();
                Weights::Float {
                    data: data.slice(first * row, count * row),
                    dtype: *dtype,
                }
            }
            Weights::Affine {
                words,
                scales,
                biases,
                dtype,
                bits,
                group,
            } => {
                let row = self.cols * *bits as usize / 8;
                let per_row = self.cols / group * dtype.size();
                Weights::Affine {
                    words: words.slice(first * row, count * row),
                    scales: scales.slice(first * per_row, count * per_row),
                    biases: biases.slice(first * per_row, count * per_row),
                    dtype: *dtype,
                    bits: *bits,
                    group: *group,
                }
            }
            Weights::Fp {
                words,
                scales,
                mode,
            } => {
                let row = self.cols * mode.bits() as usize / 8;
                let per_row = self.cols / mode.group_size();
                Weights::Fp {
                    words: words.slice(first * row, count * row),
                    scales: scales.slice(first * per_row, count * per_row),
                    mode: *mode,
                }
            }
        };
        #[cfg(target_arch = "x86_64")]
        if let Some(tiles) = self.tiles.as_ref().and_then(|t| t.row_range(first, count)) {
            return Matrix {
                rows: count,
                cols: self.cols,
                kernels: self.kernels,
                weights,
                tiles: Some(tiles),
            };
        }
        Matrix::new(weights, count, self.cols)
    }

    /// The packed codes, scales and biases of a quantized matrix.
    pub fn quantized(&self) -> Option<QuantizedRows<'_>> {
        match &self.weights {
            Weights::Affine {
                words,
                scales,
                biases,
                dtype,
                bits,
                group,
            } => Some(QuantizedRows {
                words: words.bytes(),
                scales: scales.bytes(),
                biases: biases.bytes(),
                dtype: *dtype,
                bits: *bits,
                group: *group,
                rows: self.rows,
                cols: self.cols,
            }),
            Weights::Float { .. } | Weights::Fp { .. } => None,
        }
    }

    /// The packed codes and scales of a microscaling-float matrix.
    pub fn fp(&self) -> Option<FpRows<'_>> {
        match &self.weights {
            Weights::Fp {
                words,
                scales,
                mode,
            } => Some(FpRows {
                words: words.bytes(),
                scales: scales.bytes(),
                mode: *mode,
                row_bytes: self.cols * mode.bits() as usize / 8,
                groups: self.cols / mode.group_size(),
            }),
            _ => None,
        }
    }

    /// Bytes read for one full pass over the matrix.
    pub fn nbytes(&self) -> usize {
        match &self.weights {
            Weights::Float { data, .. } => data.len,
            Weights::Affine {
                words,
                scales,
                biases,
                ..
            } => words.len + scales.len + biases.len,
            Weights::Fp { words, scales, .. } => words.len + scales.len,
        }
    }
}

/// The weight files' total size in `dir` (what loading maps), before opening any of them.
pub fn weight_files_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_str().is_some_and(is_mlx_lm_weights))
                .filter_map(|e| std::fs::metadata(e.path()).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

impl WeightFiles {
    /// Maps every `model*.safetensors` of `dir` (headers validated against the file sizes).
    pub fn open(dir: &Path) -> Result<WeightFiles, EngineError> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| EngineError::Model {
                path: dir.to_path_buf(),
                reason: format!("cannot list: {e}"),
            })?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| is_mlx_lm_weights(n))
            .collect();
        names.sort();
        if names.is_empty() {
            return Err(EngineError::Model {
                path: dir.to_path_buf(),
                reason: "no model*.safetensors weights".into(),
            });
        }
        let mut maps = Vec::new();
        let mut entries = HashMap::new();
        let mut total_bytes = 0;
        for (i, name) in names.iter().enumerate() {
            let path = dir.join(name);
            let header = read_header(&path, name).map_err(|e| EngineError::Model {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let file = File::open(&path).map_err(|e| EngineError::Model {
                path: path.clone(),
                reason: format!("cannot open: {e}"),
            })?;
            // SAFETY: read-only mapping of a weight file; model files are not modified while a
            // model runs (a truncation under a running model would fault its reads).
            let map = unsafe { Mmap::map(&file) }.map_err(|e| EngineError::Model {
                path: path.clone(),
                reason: format!("cannot map: {e}"),
            })?;
            for (tensor, meta) in header.tensors {
                total_bytes += meta.nbytes;
                entries.insert(
                    tensor,
                    Entry {
                        file: i,
                        offset: meta.offset as usize,
                        len: meta.nbytes as usize,
                        dtype: meta.dtype,
                        shape: meta.shape,
                    },
                );
            }
            maps.push(Arc::new(map));
        }
        Ok(WeightFiles {
            dir: dir.to_path_buf(),
            maps,
            entries,
            total_bytes,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    fn missing(&self, name: &str) -> EngineError {
        EngineError::Model {
            path: self.dir.clone(),
            reason: format!("the weights have no tensor `{name}`"),
        }
    }

    fn blob(&self, name: &str) -> Result<(Blob, &Entry), EngineError> {
        let e = self.entries.get(name).ok_or_else(|| self.missing(name))?;
        Ok((
            Blob {
                map: self.maps[e.file].clone(),
                start: e.offset,
                len: e.len,
            },
            e,
        ))
    }

    /// A float vector (norm weights, biases) widened to f32.
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, EngineError> {
        let (blob, e) = self.blob(name)?;
        let dtype = FloatDtype::of(e.dtype).filter(|_| e.shape.iter().product::<usize>() == len);
        let dtype = dtype.ok_or_else(|| EngineError::Model {
            path: self.dir.clone(),
            reason: format!(
                "`{name}` is {:?} {:?}; expected {len} float values",
                e.dtype, e.shape
            ),
        })?;
        let mut out = Vec::with_capacity(len);
        dtype.widen(blob.bytes(), &mut out);
        Ok(out)
    }

    /// The weight of module `module` (`{module}.weight`, plus `.scales` / `.biases` when
    /// quantized) as a `rows × cols` matrix.
    pub fn matrix(
        &self,
        args: &ModelArgs,
        module: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Matrix, EngineError> {
        self.stacked_matrix(args, module, None, rows, cols)
    }

    /// The `n` matrices (`rows × cols` each) of a stacked `[n, rows, cols]` weight (mlx-lm's
    /// `switch_mlp` experts), each on its slice of the mapped bytes.
    pub fn stacked(
        &self,
        args: &ModelArgs,
        module: &str,
        n: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Vec<Matrix>, EngineError> {
        let all = self.stacked_matrix(args, module, Some(n), rows, cols)?;
        Ok((0..n).map(|e| all.row_range(e * rows, rows)).collect())
    }

    /// The weight of `module` as one `(n ·) rows × cols` matrix; `stack`: stored as
    /// `[n, rows, cols]` (scales and biases `[n, rows, groups]`).
    fn stacked_matrix(
        &self,
        args: &ModelArgs,
        module: &str,
        stack: Option<usize>,
        rows: usize,
        cols: usize,
    ) -> Result<Matrix, EngineError> {
        let name = format!("{module}.weight");
        let lead: Vec<usize> = stack.into_iter().collect();
        let shape =
            |inner: usize| -> Vec<usize> { lead.iter().copied().chain([rows, inner]).collect() };
        let total_rows = rows * stack.unwrap_or(1);
        let (data, e) = self.blob(&name)?;
        let bad = |what: String| EngineError::Model {
            path: self.dir.clone(),
            reason: format!("`{name}`: {what}"),
        };
        if !self.contains(&format!("{module}.scales")) {
            let dtype =
                FloatDtype::of(e.dtype).ok_or_else(|| bad(format!("{:?} weights", e.dtype)))?;
            if e.shape != shape(cols) {
                return Err(bad(format!(
                    "shape {:?}, expected {:?}",
                    e.shape,
                    shape(cols)
                )));
            }
            return Ok(Matrix::new(
                Weights::Float { data, dtype },
                total_rows,
                cols,
            ));
        }
        let bits = args
            .quantization
            .as_ref()
            .and_then(|q| q.bits_for(module))
            .ok_or_else(
                || bad("has scales but config.json gives it no quantization bits".into()),
            )?;
        if !(2..=8).contains(&bits) || bits == 7 {
            return Err(bad(format!(
                "{bits}-bit quantization is not implemented (2-6, 8)"
            )));
        }
        let quantization = args.quantization.as_ref();
        let mode = quantization.map_or("affine", |q| q.mode_for(module));
        if mode != "affine" {
            return self.fp_matrix(module, mode, &shape, total_rows, cols, data, e);
        }
        let (scales, se) = self.blob(&format!("{module}.scales"))?;
        let (biases, be) = self.blob(&format!("{module}.biases"))?;
        let dtype = FloatDtype::of(se.dtype)
            .ok_or_else(|| bad(format!("scales are {:?}, not a float dtype", se.dtype)))?;
        if be.dtype != se.dtype {
            return Err(bad(format!(
                "biases are {:?} but scales are {:?}: both must have one float dtype",
                be.dtype, se.dtype
            )));
        }
        let words_per_row = cols * bits as usize / 32;
        if e.dtype != Dtype::U32 || e.shape != shape(words_per_row) {
            return Err(bad(format!(
                "{:?} {:?}, expected U32 {:?} for {bits} bits",
                e.dtype,
                e.shape,
                shape(words_per_row)
            )));
        }
        let groups = se.shape.last().copied().unwrap_or(0);
        if groups == 0
            || !cols.is_multiple_of(groups)
            || se.shape != shape(groups)
            || be.shape != se.shape
        {
            return Err(bad(format!(
                "scales {:?} / biases {:?} do not fit {:?}",
                se.shape,
                be.shape,
                shape(cols)
            )));
        }
        let group = cols / groups;
        if !group.is_multiple_of(32) {
            return Err(bad(format!("group size {group} is not implemented")));
        }
        Ok(Matrix::new(
            Weights::Affine {
                words: data,
                scales,
                biases,
                dtype,
                bits,
                group,
            },
            total_rows,
            cols,
        ))
    }

    /// A microscaling-float weight (`mode` mxfp4 / mxfp8 / nvfp4): packed codes and one u8
    /// scale per group, no biases; the group size is the mode's.
    #[allow(clippy::too_many_arguments)]
    fn fp_matrix(
        &self,
        module: &str,
        mode: &str,
        shape: &dyn Fn(usize) -> Vec<usize>,
        total_rows: usize,
        cols: usize,
        words: Blob,
        e: &Entry,
    ) -> Result<Matrix, EngineError> {
        let bad = |what: String| EngineError::Model {
            path: self.dir.clone(),
            reason: format!("`{module}.weight`: {what}"),
        };
        let mode = FpMode::parse(mode)
            .ok_or_else(|| bad(format!("quantization mode `{mode}` is not implemented")))?;
        if self.contains(&format!("{module}.global_scale")) {
            return Err(bad(
                "an nvfp4 global scale is not implemented by `mlxk run`".into(),
            ));
        }
        let (bits, group) = (mode.bits() as usize, mode.group_size());
        if !cols.is_multiple_of(group) || !(cols * bits).is_multiple_of(32) {
            return Err(bad(format!(
                "{cols} columns do not fill {} groups of {group}",
                mode.name()
            )));
        }
        let words_per_row = cols * bits / 32;
        if e.dtype != Dtype::U32 || e.shape != shape(words_per_row) {
            return Err(bad(format!(
                "{:?} {:?}, expected U32 {:?} for {}",
                e.dtype,
                e.shape,
                shape(words_per_row),
                mode.name()
            )));
        }
        let (scales, se) = self.blob(&format!("{module}.scales"))?;
        if se.dtype != Dtype::U8 || se.shape != shape(cols / group) {
            return Err(bad(format!(
                "scales {:?} {:?}, expected U8 {:?} for {}",
                se.dtype,
                se.shape,
                shape(cols / group),
                mode.name()
            )));
        }
        if self.contains(&format!("{module}.biases")) {
            return Err(bad(format!(
                "{} has no biases, but the weights do",
                mode.name()
            )));
        }
        Ok(Matrix::new(
            Weights::Fp {
                words,
                scales,
                mode,
            },
            total_rows,
            cols,
        ))
    }
}
