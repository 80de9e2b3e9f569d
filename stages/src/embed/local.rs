//! A sentence-transformers BERT model (all-MiniLM-L6-v2) run in process with candle: the
//! tokenizer from `tokenizer.json` (Hugging Face `tokenizers`), BERT from `model.safetensors`
//! (candle-transformers), then what sentence-transformers does after the transformer: mean
//! pooling over the real (unpadded) tokens and L2 normalisation. Texts are stripped and cut at
//! the model's `max_seq_length` word pieces, as sentence-transformers does.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use pipeline::StageError;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tokenizers::{Tokenizer, TruncationParams};

/// Sequences per forward pass. Texts are sorted by length first, so a pass pads little.
const SEQUENCES_PER_PASS: usize = 16;

pub struct LocalModel {
    bert: BertModel,
    tokenizer: Tokenizer,
    max_seq_length: usize,
    normalize: bool,
    dimensions: usize,
    dir: PathBuf,
    name: String,
}

/// Vectors of a batch, in input order, and how many texts were cut at `max_seq_length`.
#[derive(Debug)]
pub struct Embedding {
    pub vectors: Vec<Vec<f32>>,
    pub truncated: usize,
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl LocalModel {
    /// Loads a sentence-transformers directory (`config.json`, `tokenizer.json`,
    /// `model.safetensors`, and when present `sentence_bert_config.json`,
    /// `1_Pooling/config.json`, `modules.json`).
    pub fn load(dir: &Path) -> Result<LocalModel, StageError> {
        let fail = |what: String| StageError::run(format!("local model {}: {what}", dir.display()));
        let config: Config =
            serde_json::from_value(read_json(&dir.join("config.json")).map_err(fail)?)
                .map_err(|e| fail(format!("config.json is not a BERT config: {e}")))?;
        // sentence-transformers' own settings; the defaults are all-MiniLM-L6-v2's.
        let st_config = dir.join("sentence_bert_config.json");
        let max_seq_length = if st_config.is_file() {
            read_json(&st_config).map_err(fail)?["max_seq_length"]
                .as_u64()
                .map(|n| n as usize)
                .unwrap_or(256)
        } else {
            256
        }
        .min(config.max_position_embeddings);
        let pooling = dir.join("1_Pooling/config.json");
        if pooling.is_file() {
            let pooling = read_json(&pooling).map_err(fail)?;
            if pooling["pooling_mode_mean_tokens"] != Value::Bool(true) {
                return Err(fail(
                    "1_Pooling/config.json asks for a pooling other than mean pooling, which \
                     is the only one supported"
                        .into(),
                ));
            }
        }
        let modules = dir.join("modules.json");
        let normalize = if modules.is_file() {
            read_json(&modules)
                .map_err(fail)?
                .as_array()
                .is_some_and(|m| {
                    m.iter().any(|module| {
                        module["type"]
                            .as_str()
                            .is_some_and(|t| t.ends_with("Normalize"))
                    })
                })
        } else {
            true
        };
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| fail(format!("tokenizer.json: {e}")))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                ..Default::default()
            }))
            .map_err(|e| fail(format!("tokenizer.json: {e}")))?;
        // Padding is done here, per pass (texts sorted by length).
        tokenizer.with_padding(None);
        let weights = dir.join("model.safetensors");
        // Safety: the file is memory-mapped read-only; it must not be changed while in use
        // (the model directory is ours or the user's, not rewritten during a run).
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu) }
                .map_err(|e| fail(format!("model.safetensors: {e}")))?;
        let bert = BertModel::load(vb, &config)
            .map_err(|e| fail(format!("model.safetensors does not hold this BERT: {e}")))?;
        Ok(LocalModel {
            bert,
            tokenizer,
            max_seq_length,
            normalize,
            dimensions: config.hidden_size,
            dir: dir.to_path_buf(),
            name: dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(crate::embed::locate::MODEL_NAME)
                .to_string(),
        })
    }

    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The model's name as stored with its vectors: its directory's name
    /// (`all-MiniLM-L6-v2` wherever `pipe` unpacks the wheel).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Embeds `texts` (CPU-bound: call it from a blocking thread).
    pub fn embed(&self, texts: &[&str]) -> Result<Embedding, StageError> {
        let fail = |what: String| StageError::record(format!("local embedding model: {what}"));
        // sentence-transformers strips every text before tokenising.
        let stripped: Vec<&str> = texts.iter().map(|t| t.trim()).collect();
        let encodings = self
            .tokenizer
            .encode_batch(stripped, true)
            .map_err(|e| fail(format!("tokenizer: {e}")))?;
        let truncated = encodings
            .iter()
            .filter(|e| !e.get_overflowing().is_empty())
            .count();
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let mut vectors = vec![Vec::new(); encodings.len()];
        for pass in order.chunks(SEQUENCES_PER_PASS) {
            let ids: Vec<&[u32]> = pass.iter().map(|&i| encodings[i].get_ids()).collect();
            let pooled = self.forward(&ids).map_err(|e| fail(e.to_string()))?;
            for (&i, vector) in pass.iter().zip(pooled) {
                vectors[i] = vector;
            }
        }
        Ok(Embedding { vectors, truncated })
    }

    /// One forward pass over sequences padded to the longest, then mean pooling over the real
    /// tokens and (for models that normalise) L2 normalisation.
    fn forward(&self, sequences: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let rows = sequences.len();
        let width = sequences.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0u32; rows * width];
        let mut mask = vec![0u32; rows * width];
        for (row, sequence) in sequences.iter().enumerate() {
            ids[row * width..row * width + sequence.len()].copy_from_slice(sequence);
            mask[row * width..row * width + sequence.len()].fill(1);
        }
        let device = &Device::Cpu;
        let ids = Tensor::from_vec(ids, (rows, width), device)?;
        let mask = Tensor::from_vec(mask, (rows, width), device)?;
        let token_types = ids.zeros_like()?;
        let hidden = self.bert.forward(&ids, &token_types, Some(&mask))?;
        // Mean over the real tokens: padding is masked out of the sum and the count.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1e-9, f32::MAX)?;
        let mut pooled = summed.broadcast_div(&counts)?;
        if self.normalize {
            // torch.nn.functional.normalize: x / max(||x||, 1e-12).
            let norms = pooled
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .clamp(1e-12, f32::MAX)?;
            pooled = pooled.broadcast_div(&norms)?;
        }
        pooled.to_vec2::<f32>()
    }
}
