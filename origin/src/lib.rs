pub mod ts;
