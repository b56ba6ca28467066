//! From source headers and config to a list of jobs: mlx-lm's sanitize (drop rotary buffers and
//! a tied lm_head, stack MoE experts), which tensors `nn.quantize` would quantize and how
//! (the recipe, the model's own rules, the group-size divisibility rule), the `--dtype` cast,
//! and the `quantization` block of the new config. Nothing here reads tensor data.

use std::collections::BTreeMap;

use safetensors::Dtype;
use serde_json::{json, Map, Value};

use super::family::{layer_index, Family, Role, SUPPORTED_MODEL_TYPES};
use super::shards::OutTensor;
use crate::mlx::affine::Affine;
use crate::mlx::fp::FpMode;
use crate::mlx::{FloatDtype, Scheme};
use crate::store::config::QuantizationConfig;
use crate::store::safetensors::ShardHeader;

/// A tensor of the source, in one of its shard files.
#[derive(Debug, Clone)]
pub struct SourceTensor {
    /// Index into the source shards.
    pub shard: usize,
    /// Absolute offset of the data in that file.
    pub offset: u64,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub nbytes: u64,
}

/// An input of a job: one source tensor, or several stacked along a new first axis (MoE
/// experts), which in row-major order is their concatenation.
#[derive(Debug, Clone)]
pub struct Input {
    pub name: String,
    pub parts: Vec<SourceTensor>,
}

impl Input {
    pub fn dtype(&self) -> Dtype {
        self.parts[0].dtype
    }

    pub fn shape(&self) -> Vec<usize> {
        let mut shape = self.parts[0].shape.clone();
        if self.parts.len() > 1 {
            shape.insert(0, self.parts.len());
        }
        shape
    }

    /// Values per row (the last dimension; 1 for a scalar).
    pub fn cols(&self) -> usize {
        self.parts[0].shape.last().copied().unwrap_or(1)
    }

    pub fn nbytes(&self) -> u64 {
        self.parts.iter().map(|p| p.nbytes).sum()
    }
}

/// What a job does to its inputs, row by row.
#[derive(Debug, Clone)]
pub enum Work {
    /// The bytes unchanged.
    Copy,
    /// A float tensor rounded to another float dtype.
    Cast { from: FloatDtype, to: FloatDtype },
    /// `inputs[0]` quantized after casting to `dtype`; outputs weight, scales[, biases].
    Quantize {
        scheme: Scheme,
        source: FloatDtype,
        dtype: FloatDtype,
    },
    /// `inputs` = weight, scales[, biases]; output one float weight.
    Dequantize {
        scheme: Scheme,
        scale_dtype: FloatDtype,
        out: FloatDtype,
    },
}

#[derive(Debug, Clone)]
pub struct Job {
    pub inputs: Vec<Input>,
    pub work: Work,
    pub outputs: Vec<OutTensor>,
}

impl Job {
    /// Source bytes the job reads.
    pub fn source_bytes(&self) -> u64 {
        self.inputs.iter().map(Input::nbytes).sum()
    }

    pub fn name(&self) -> &str {
        &self.outputs[0].name
    }
}

/// mlx-lm's mixed-precision recipes (`--quant-predicate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MixedRecipe {
    Mixed2_6,
    Mixed3_4,
    Mixed3_6,
    Mixed4_6,
}

impl MixedRecipe {
    pub const ALL: [MixedRecipe; 4] = [
        MixedRecipe::Mixed2_6,
        MixedRecipe::Mixed3_4,
        MixedRecipe::Mixed3_6,
        MixedRecipe::Mixed4_6,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MixedRecipe::Mixed2_6 => "mixed_2_6",
            MixedRecipe::Mixed3_4 => "mixed_3_4",
            MixedRecipe::Mixed3_6 => "mixed_3_6",
            MixedRecipe::Mixed4_6 => "mixed_4_6",
        }
    }

    /// (low, high) bits.
    fn bits(self) -> (u32, u32) {
        match self {
            MixedRecipe::Mixed2_6 => (2, 6),
            MixedRecipe::Mixed3_4 => (3, 4),
            MixedRecipe::Mixed3_6 => (3, 6),
            MixedRecipe::Mixed4_6 => (4, 6),
        }
    }
}

/// The quantization mode requested (`--q-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantMode {
    Affine,
    Fp(FpMode),
}

impl QuantMode {
    pub const ALL: [QuantMode; 4] = [
        QuantMode::Affine,
        QuantMode::Fp(FpMode::Mxfp4),
        QuantMode::Fp(FpMode::Mxfp8),
        QuantMode::Fp(FpMode::Nvfp4),
    ];

    pub fn parse(name: &str) -> Option<QuantMode> {
        match name {
            "affine" => Some(QuantMode::Affine),
            other => FpMode::parse(other).map(QuantMode::Fp),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            QuantMode::Affine => "affine",
            QuantMode::Fp(m) => m.name(),
        }
    }
}

/// What `convert --quantize` was asked for.
#[derive(Debug, Clone)]
pub struct QuantizeSpec {
    pub mode: QuantMode,
    /// `--quantize N`; the mode's default when `None` (4 for affine).
    pub bits: Option<u32>,
    /// `--q-group-size`; the mode's default when `None` (64 for affine).
    pub group_size: Option<usize>,
    pub recipe: Option<MixedRecipe>,
    /// `--dtype`; else the config's `torch_dtype` (mlx-lm's rule).
    pub dtype: Option<FloatDtype>,
}

/// What the plan is for.
#[derive(Debug, Clone)]
pub enum Operation {
    Quantize(QuantizeSpec),
    Dequantize { dtype: Option<FloatDtype> },
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("config.json has no `model_type`: cannot tell which tensors to quantize")]
    NoModelType,
    #[error("model_type `{0}` is not supported by convert --quantize/--dequantize (supported: {list})", list = SUPPORTED_MODEL_TYPES.join(", "))]
    UnsupportedModelType(String),
    #[error("config.json has no `tie_word_embeddings`, which a {0} model must state")]
    TieUnknown(String),
    #[error("{file}: tensor `{name}` is not a parameter of a {model_type} model (mlx-lm would refuse to load it)")]
    UnknownTensor {
        file: String,
        name: String,
        model_type: String,
    },
    #[error("the source is already quantized ({0}): dequantize it first (`mlxk convert SRC DST --dequantize`), then quantize the result")]
    AlreadyQuantized(String),
    #[error("the source is not quantized (config.json has no `quantization` block and no tensor has `.scales`): nothing to dequantize")]
    NotQuantized,
    #[error("{0}")]
    Invalid(String),
}

/// The jobs of a convert and the config block they imply.
#[derive(Debug)]
pub struct Plan {
    pub jobs: Vec<Job>,
    /// The new `quantization` block (`None` for dequantize: the block is removed).
    pub quantization: Option<Value>,
    /// The top-level scheme (quantize only).
    pub scheme: Option<Scheme>,
    /// Source tensors sanitize dropped.
    pub dropped: Vec<String>,
}

/// mlx-lm's conversion dtype: `--dtype`, else `torch_dtype`, else `text_config.dtype`, when one
/// of float16 / bfloat16 / float32.
pub fn conversion_dtype(explicit: Option<FloatDtype>, config: &Value) -> Option<FloatDtype> {
    explicit.or_else(|| {
        let named = config
            .get("torch_dtype")
            .and_then(Value::as_str)
            .or_else(|| {
                config
                    .get("text_config")
                    .and_then(|t| t.get("dtype"))
                    .and_then(Value::as_str)
            });
        named.and_then(FloatDtype::parse)
    })
}

/// Builds the plan for `op` over the source shards' headers and config.
pub fn plan(headers: &[ShardHeader], config: &Value, op: &Operation) -> Result<Plan, PlanError> {
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or(PlanError::NoModelType)?;
    let family = Family::from_model_type(model_type)
        .ok_or_else(|| PlanError::UnsupportedModelType(model_type.to_string()))?;
    let tied = match config.get("tie_word_embeddings").and_then(Value::as_bool) {
        Some(t) => t,
        None => family
            .default_tie()
            .ok_or_else(|| PlanError::TieUnknown(model_type.to_string()))?,
    };
    let (tensors, dropped) = sanitize(headers, family, tied, config, model_type)?;
    match op {
        Operation::Quantize(spec) => plan_quantize(tensors, dropped, family, config, spec),
        Operation::Dequantize { dtype } => plan_dequantize(tensors, dropped, config, *dtype),
    }
}

/// The source's tensors after mlx-lm's sanitize, each checked to be a parameter of the model.
fn sanitize(
    headers: &[ShardHeader],
    family: Family,
    tied: bool,
    config: &Value,
    model_type: &str,
) -> Result<(BTreeMap<String, Input>, Vec<String>), PlanError> {
    let mut tensors: BTreeMap<String, Input> = BTreeMap::new();
    let mut experts: BTreeMap<String, BTreeMap<usize, (String, SourceTensor)>> = BTreeMap::new();
    let mut dropped = Vec::new();
    for (shard, header) in headers.iter().enumerate() {
        for (name, meta) in &header.tensors {
            let source = SourceTensor {
                shard,
                offset: meta.offset,
                dtype: meta.dtype,
                shape: meta.shape.clone(),
                nbytes: meta.nbytes,
            };
            if family.drops(name, tied) {
                dropped.push(name.clone());
                continue;
            }
            if let Some((stacked, e)) = family.expert_slot(name) {
                experts
                    .entry(stacked)
                    .or_default()
                    .insert(e, (header.file_name.clone(), source));
                continue;
            }
            if family.role(name).is_none() {
                return Err(PlanError::UnknownTensor {
                    file: header.file_name.clone(),
                    name: name.clone(),
                    model_type: model_type.to_string(),
                });
            }
            tensors.insert(
                name.clone(),
                Input {
                    name: name.clone(),
                    parts: vec![source],
                },
            );
        }
    }
    if !experts.is_empty() {
        let n = family.num_experts(config).ok_or_else(|| {
            PlanError::Invalid(
                "the weights hold MoE experts but config.json has no `num_experts`".into(),
            )
        })?;
        for (stacked, parts) in experts {
            if tensors.contains_key(&stacked) {
                return Err(PlanError::Invalid(format!(
                    "both `{stacked}` and the per-expert tensors it is stacked from are present"
                )));
            }
            let keys: Vec<usize> = parts.keys().copied().collect();
            if keys != (0..n).collect::<Vec<_>>() {
                return Err(PlanError::Invalid(format!(
                    "`{stacked}` stacks experts 0..{n} (num_experts = {n}) but the weights hold experts {keys:?}"
                )));
            }
            let first = &parts[&0].1;
            for (file, p) in parts.values() {
                if p.dtype != first.dtype || p.shape != first.shape {
                    return Err(PlanError::Invalid(format!(
                        "{file}: the experts stacked into `{stacked}` differ in dtype or shape ({:?} {:?} vs {:?} {:?})",
                        p.dtype, p.shape, first.dtype, first.shape
                    )));
                }
            }
            tensors.insert(
                stacked.clone(),
                Input {
                    name: stacked,
                    parts: parts.into_values().map(|(_, p)| p).collect(),
                },
            );
        }
    }
    Ok((tensors, dropped))
}

/// A tensor outside any quantized module: unchanged, or cast to the conversion dtype.
fn keep_job(input: Input, cast: Option<FloatDtype>) -> Job {
    let out_dtype;
    let work = match (FloatDtype::of(input.dtype()), cast) {
        (Some(from), Some(to)) if from != to => {
            out_dtype = to.dtype();
            Work::Cast { from, to }
        }
        _ => {
            out_dtype = input.dtype();
            Work::Copy
        }
    };
    Job {
        outputs: vec![OutTensor {
            name: input.name.clone(),
            dtype: out_dtype,
            shape: input.shape(),
        }],
        inputs: vec![input],
        work,
    }
}

/// The position of the layer number in module paths, as mlx-lm's mixed recipes find it: where
/// the first `down_proj` module path has its first numeric component.
fn layer_location(tensors: &BTreeMap<String, Input>) -> Option<usize> {
    let mut paths: Vec<&str> = tensors
        .keys()
        .filter(|k| k.contains("down_proj"))
        .map(|k| k.rsplit_once('.').map_or(k.as_str(), |(m, _)| m))
        .collect();
    // Module order is layer order: compare layer numbers numerically.
    paths.sort_by_key(|p| {
        p.split('.')
            .map(|c| c.parse::<usize>().unwrap_or(usize::MAX))
            .collect::<Vec<_>>()
    });
    let first = paths.first()?;
    first.split('.').position(|c| c.parse::<usize>().is_ok())
}

fn plan_quantize(
    tensors: BTreeMap<String, Input>,
    dropped: Vec<String>,
    family: Family,
    config: &Value,
    spec: &QuantizeSpec,
) -> Result<Plan, PlanError> {
    if config.get("quantization").is_some() || config.get("quantization_config").is_some() {
        return Err(PlanError::AlreadyQuantized(
            "config.json has a quantization block".into(),
        ));
    }
    if let Some(name) = tensors.keys().find(|k| k.ends_with(".scales")) {
        return Err(PlanError::AlreadyQuantized(format!("tensor `{name}`")));
    }
    let (default_group, default_bits) = match spec.mode {
        QuantMode::Affine => (64, 4),
        QuantMode::Fp(m) => (m.group_size(), m.bits()),
    };
    let group_size = spec.group_size.unwrap_or(default_group);
    let bits = spec.bits.unwrap_or(default_bits);
    let top = make_scheme(spec.mode, bits, group_size)?;
    if spec.recipe.is_some() && spec.mode != QuantMode::Affine {
        return Err(PlanError::Invalid(
            "mixed recipes only support affine quantization (as in mlx-lm)".into(),
        ));
    }
    let cast = conversion_dtype(spec.dtype, config);
    let num_layers = config
        .get("num_hidden_layers")
        .and_then(Value::as_u64)
        .unwrap_or(0) as usize;
    let location = match spec.recipe {
        Some(_) => Some(layer_location(&tensors).ok_or_else(|| {
            PlanError::Invalid(
                "Model does not have expected keys for mixed quant (no down_proj)".into(),
            )
        })?),
        None => None,
    };

    let mut block = Map::new();
    block.insert("group_size".into(), json!(group_size));
    block.insert("bits".into(), json!(bits));
    block.insert("mode".into(), json!(spec.mode.name()));
    let mut jobs = Vec::with_capacity(tensors.len());
    for (name, input) in tensors {
        let role = family.role(&name);
        let module = name.strip_suffix(".weight");
        let quantizable = matches!(role, Some(Role::Quantizable | Role::Router))
            && module.is_some()
            && input.shape().len() >= 2
            // mlx-lm's rule: a last dimension the (top-level) group size does not divide
            // stays float, with no config entry.
            && input.cols() % group_size == 0;
        let (Some(module), true) = (module, quantizable) else {
            jobs.push(keep_job(input, cast));
            continue;
        };
        let source = FloatDtype::of(input.dtype()).ok_or_else(|| {
            PlanError::Invalid(format!(
                "`{name}` is {:?}, not a float tensor: it cannot be quantized",
                input.dtype()
            ))
        })?;
        // The layer's parameters: the recipe's, else the model's own rule, else the defaults.
        let (scheme, entry) = if let (Some(recipe), Some(loc)) = (spec.recipe, location) {
            let (low, high) = recipe.bits();
            let more = uses_more_bits(layer_index(module, loc), num_layers);
            let high_here = (["v_proj", "v_a_proj", "v_b_proj"]
                .iter()
                .any(|p| module.contains(p))
                || module.contains("down_proj"))
                && more
                || module.contains("lm_head");
            let b = if high_here { high } else { low };
            let g = spec.group_size.unwrap_or(64);
            (
                make_scheme(QuantMode::Affine, b, g)?,
                Some(json!({"group_size": spec.group_size, "bits": b, "mode": "affine"})),
            )
        } else if role == Some(Role::Router) {
            (
                make_scheme(QuantMode::Affine, 8, 64)?,
                Some(json!({"group_size": 64, "bits": 8})),
            )
        } else {
            (top, None)
        };
        if input.cols() % scheme.group_size() != 0 {
            return Err(PlanError::Invalid(format!(
                "`{name}`: its last dimension {} is not divisible by the group size {} this layer is quantized with",
                input.cols(),
                scheme.group_size()
            )));
        }
        if let Some(e) = entry {
            block.insert(module.to_string(), e);
        }
        let dtype = cast.unwrap_or(source);
        jobs.push(quantize_job(input, module, scheme, source, dtype));
    }
    Ok(Plan {
        jobs,
        quantization: Some(Value::Object(block)),
        scheme: Some(top),
        dropped,
    })
}

/// mlx-lm's mixed-recipe layer rule: the first and last eighth of the layers, and every third
/// layer in between, get the high bits (Python's floored `%` on a negative difference included).
fn uses_more_bits(i: usize, layers: usize) -> bool {
    let eighth = layers / 8;
    i < eighth || i >= 7 * layers / 8 || (i as i64 - eighth as i64).rem_euclid(3) == 2
}

fn make_scheme(mode: QuantMode, bits: u32, group_size: usize) -> Result<Scheme, PlanError> {
    match mode {
        QuantMode::Affine => Affine::new(bits, group_size)
            .map(Scheme::Affine)
            .map_err(|e| PlanError::Invalid(e.to_string())),
        QuantMode::Fp(m) => {
            if bits != m.bits() || group_size != m.group_size() {
                return Err(PlanError::Invalid(format!(
                    "{} quantization uses {} bits and group size {} (got bits {bits}, group size {group_size})",
                    m.name(),
                    m.bits(),
                    m.group_size()
                )));
            }
            Ok(Scheme::Fp(m))
        }
    }
}

fn quantize_job(
    input: Input,
    module: &str,
    scheme: Scheme,
    source: FloatDtype,
    dtype: FloatDtype,
) -> Job {
    let shape = input.shape();
    let lead = &shape[..shape.len() - 1];
    let cols = input.cols();
    let with_last = |last: usize| {
        let mut s = lead.to_vec();
        s.push(last);
        s
    };
    let groups = cols / scheme.group_size();
    let scale_dtype = match scheme {
        Scheme::Affine(_) => dtype.dtype(),
        Scheme::Fp(_) => Dtype::U8,
    };
    let mut outputs = vec![
        OutTensor {
            name: format!("{module}.weight"),
            dtype: Dtype::U32,
            shape: with_last(scheme.words_per_row(cols)),
        },
        OutTensor {
            name: format!("{module}.scales"),
            dtype: scale_dtype,
            shape: with_last(groups),
        },
    ];
    if scheme.has_biases() {
        outputs.push(OutTensor {
            name: format!("{module}.biases"),
            dtype: scale_dtype,
            shape: with_last(groups),
        });
    }
    Job {
        inputs: vec![input],
        work: Work::Quantize {
            scheme,
            source,
            dtype,
        },
        outputs,
    }
}

fn plan_dequantize(
    mut tensors: BTreeMap<String, Input>,
    dropped: Vec<String>,
    config: &Value,
    explicit: Option<FloatDtype>,
) -> Result<Plan, PlanError> {
    let block = config
        .get("quantization")
        .or_else(|| config.get("quantization_config"));
    let quant = block.and_then(QuantizationConfig::from_value);
    let modules: Vec<String> = tensors
        .keys()
        .filter_map(|k| k.strip_suffix(".scales").map(str::to_string))
        .collect();
    if modules.is_empty() {
        return Err(PlanError::NotQuantized);
    }
    let quant = quant.ok_or_else(|| {
        PlanError::Invalid(
            "tensors have `.scales` but config.json has no `quantization` block: their bits are unknown".into(),
        )
    })?;
    let cast = conversion_dtype(explicit, config);
    let top_mode = quant.mode.clone().unwrap_or_else(|| "affine".into());
    let mut jobs = Vec::new();
    for module in modules {
        let take = |tensors: &mut BTreeMap<String, Input>, part: &str| {
            tensors.remove(&format!("{module}.{part}"))
        };
        let scales = take(&mut tensors, "scales").ok_or_else(|| {
            PlanError::Invalid(format!("`{module}.scales` vanished while planning"))
        })?;
        let weight = take(&mut tensors, "weight").ok_or_else(|| {
            PlanError::Invalid(format!(
                "`{module}.scales` has no `{module}.weight` beside it"
            ))
        })?;
        let (bits, mode) = match quant.overrides.get(&module) {
            Some(Some(layer)) => (
                layer.bits,
                layer.mode.clone().unwrap_or_else(|| "affine".into()),
            ),
            Some(None) => {
                return Err(PlanError::Invalid(format!(
                    "config.json marks `{module}` as not quantized, but `{module}.scales` exists"
                )))
            }
            None => (
                quant.bits.ok_or_else(|| {
                    PlanError::Invalid("the quantization block has no `bits`".into())
                })?,
                top_mode.clone(),
            ),
        };
        let mode = QuantMode::parse(&mode).ok_or_else(|| {
            PlanError::Invalid(format!("`{module}`: unknown quantization mode `{mode}`"))
        })?;
        if weight.dtype() != Dtype::U32 {
            return Err(PlanError::Invalid(format!(
                "`{module}.weight` is {:?}, not the U32 of a packed quantized weight",
                weight.dtype()
            )));
        }
        let words = weight.cols();
        let cols = words * 32 / bits as usize;
        if (words * 32) % bits as usize != 0
            || scales.cols() == 0
            || !cols.is_multiple_of(scales.cols())
        {
            return Err(PlanError::Invalid(format!(
                "`{module}`: {words} packed words per row and {} scales do not fit {bits}-bit groups",
                scales.cols()
            )));
        }
        let group_size = cols / scales.cols();
        let scheme = make_scheme(mode, bits, group_size)?;
        let lead = weight.shape()[..weight.shape().len() - 1].to_vec();
        if scales.shape()[..scales.shape().len() - 1] != lead[..] {
            return Err(PlanError::Invalid(format!(
                "`{module}`: scales {:?} do not match weight {:?}",
                scales.shape(),
                weight.shape()
            )));
        }
        let (scale_dtype, out) = match scheme {
            Scheme::Affine(_) => {
                let sd = FloatDtype::of(scales.dtype()).ok_or_else(|| {
                    PlanError::Invalid(format!(
                        "`{module}.scales` is {:?}; affine scales are float",
                        scales.dtype()
                    ))
                })?;
                (sd, cast.unwrap_or(sd))
            }
            // mx.dequantize returns bf16 for the float modes; an explicit --dtype is honoured.
            Scheme::Fp(_) => (FloatDtype::BF16, explicit.unwrap_or(FloatDtype::BF16)),
        };
        let mut inputs = vec![weight, scales];
        if scheme.has_biases() {
            let biases = take(&mut tensors, "biases").ok_or_else(|| {
                PlanError::Invalid(format!("affine `{module}` has no `{module}.biases`"))
            })?;
            if biases.shape() != inputs[1].shape() || biases.dtype() != inputs[1].dtype() {
                return Err(PlanError::Invalid(format!(
                    "`{module}.biases` does not match `{module}.scales` in shape or dtype"
                )));
            }
            inputs.push(biases);
        }
        let mut shape = lead;
        shape.push(cols);
        jobs.push(Job {
            inputs,
            work: Work::Dequantize {
                scheme,
                scale_dtype,
                out,
            },
            outputs: vec![OutTensor {
                name: format!("{module}.weight"),
                dtype: out.dtype(),
                shape,
            }],
        });
    }
    if let Some(name) = tensors.keys().find(|k| k.ends_with(".biases")) {
        return Err(PlanError::Invalid(format!(
            "`{name}` has no `.scales` beside it"
        )));
    }
    for (_, input) in tensors {
        jobs.push(keep_job(input, cast));
    }
    jobs.sort_by(|a, b| a.name().cmp(b.name()));
    Ok(Plan {
        jobs,
        quantization: None,
        scheme: None,
        dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_recipe_layer_rule_matches_mlx_lm() {
        // L = 16: high bits for i < 2, i >= 14, and (i - 2) % 3 == 2.
        let more: Vec<usize> = (0..16).filter(|&i| uses_more_bits(i, 16)).collect();
        assert_eq!(more, [0, 1, 4, 7, 10, 13, 14, 15]);
        // L = 4: L/8 = 0, so i >= 3 and i % 3 == 2.
        let more: Vec<usize> = (0..4).filter(|&i| uses_more_bits(i, 4)).collect();
        assert_eq!(more, [2, 3]);
    }
}
