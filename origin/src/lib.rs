pub mod ts;
pub mod segmenter;
