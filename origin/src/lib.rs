pub mod ts;
pub mod segmenter;
pub mod playlist;
pub mod channel;
pub mod metrics;
pub mod config;
pub mod keys;
