//! The stable codes of health problems: what scripts match on, what convert refuses.

use serde::{Serialize, Serializer};

/// One kind of health problem. Serialized (and printed) as its snake_case name, which is stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemCode {
    ConfigInvalid,
    ConfigMissing,
    ConfigModelTypeMissing,
    ConvertIncomplete,
    DownloadIncomplete,
    FileMissing,
    FileUnreadable,
    GgufInvalid,
    IndexEmpty,
    IndexInvalid,
    IndexKeyExtra,
    IndexKeyMissing,
    IndexKeyWrongShard,
    IndexMissing,
    IndexShardMissing,
    IndexShardUnlisted,
    IndexTotalSizeFileConvention,
    IndexTotalSizeMismatch,
    LfsPointer,
    LinkEscapesCache,
    ProcessorConfigMissing,
    SentinelInvalid,
    ShardHeaderInvalid,
    ShardHeaderTooLarge,
    ShardSetIncomplete,
    ShardTrailingBytes,
    ShardTruncated,
    TensorDuplicated,
    TokenizerInvalid,
    TokenizerMissing,
    WeightsEmpty,
    WeightsMissing,
}

impl ProblemCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemCode::ConfigInvalid => "config_invalid",
            ProblemCode::ConfigMissing => "config_missing",
            ProblemCode::ConfigModelTypeMissing => "config_model_type_missing",
            ProblemCode::ConvertIncomplete => "convert_incomplete",
            ProblemCode::DownloadIncomplete => "download_incomplete",
            ProblemCode::FileMissing => "file_missing",
            ProblemCode::FileUnreadable => "file_unreadable",
            ProblemCode::GgufInvalid => "gguf_invalid",
            ProblemCode::IndexEmpty => "index_empty",
            ProblemCode::IndexInvalid => "index_invalid",
            ProblemCode::IndexKeyExtra => "index_key_extra",
            ProblemCode::IndexKeyMissing => "index_key_missing",
            ProblemCode::IndexKeyWrongShard => "index_key_wrong_shard",
            ProblemCode::IndexMissing => "index_missing",
            ProblemCode::IndexShardMissing => "index_shard_missing",
            ProblemCode::IndexShardUnlisted => "index_shard_unlisted",
            ProblemCode::IndexTotalSizeFileConvention => "index_total_size_file_convention",
            ProblemCode::IndexTotalSizeMismatch => "index_total_size_mismatch",
            ProblemCode::LfsPointer => "lfs_pointer",
            ProblemCode::LinkEscapesCache => "link_escapes_cache",
            ProblemCode::ProcessorConfigMissing => "processor_config_missing",
            ProblemCode::SentinelInvalid => "sentinel_invalid",
            ProblemCode::ShardHeaderInvalid => "shard_header_invalid",
            ProblemCode::ShardHeaderTooLarge => "shard_header_too_large",
            ProblemCode::ShardSetIncomplete => "shard_set_incomplete",
            ProblemCode::ShardTrailingBytes => "shard_trailing_bytes",
            ProblemCode::ShardTruncated => "shard_truncated",
            ProblemCode::TensorDuplicated => "tensor_duplicated",
            ProblemCode::TokenizerInvalid => "tokenizer_invalid",
            ProblemCode::TokenizerMissing => "tokenizer_missing",
            ProblemCode::WeightsEmpty => "weights_empty",
            ProblemCode::WeightsMissing => "weights_missing",
        }
    }

    /// A problem of the index file alone: `--repair-index` cures it, and the mount serves a
    /// rebuilt index over it.
    pub fn is_index(self) -> bool {
        matches!(
            self,
            ProblemCode::IndexEmpty
                | ProblemCode::IndexInvalid
                | ProblemCode::IndexKeyExtra
                | ProblemCode::IndexKeyMissing
                | ProblemCode::IndexKeyWrongShard
                | ProblemCode::IndexMissing
                | ProblemCode::IndexShardMissing
                | ProblemCode::IndexShardUnlisted
                | ProblemCode::IndexTotalSizeFileConvention
                | ProblemCode::IndexTotalSizeMismatch
        )
    }

    /// A problem of the source that no convert can cure: converting would only copy it.
    pub fn blocks_convert(self) -> bool {
        matches!(
            self,
            ProblemCode::DownloadIncomplete
                | ProblemCode::FileMissing
                | ProblemCode::LinkEscapesCache
                | ProblemCode::FileUnreadable
                | ProblemCode::LfsPointer
                | ProblemCode::ConfigMissing
                | ProblemCode::ConfigInvalid
                | ProblemCode::WeightsMissing
                | ProblemCode::WeightsEmpty
                | ProblemCode::ShardTruncated
                | ProblemCode::ShardHeaderInvalid
                | ProblemCode::ShardHeaderTooLarge
                | ProblemCode::ShardTrailingBytes
                | ProblemCode::TensorDuplicated
                | ProblemCode::ConvertIncomplete
        )
    }
}

impl std::fmt::Display for ProblemCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ProblemCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
